//go:build goolm

package e2ee_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/backup"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/weft-chat/weft/homeserver/hstest"
	"github.com/weft-chat/weft/internal/testclient"
	"github.com/weft-chat/weft/sql/sqltest"
)

// cryptoClient is a real E2EE client: mautrix's OlmMachine with the pure
// Go goolm backend, fed by its own /sync loop.
type cryptoClient struct {
	t     *testing.T
	cli   *mautrix.Client
	mach  *crypto.OlmMachine
	state *mautrix.MemoryStateStore
	since string
	// timeline collects the room events of every sync, decrypted where
	// the client could.
	timeline []*event.Event
}

func newCryptoClient(t *testing.T, cli *mautrix.Client) *cryptoClient {
	t.Helper()
	ctx := context.Background()
	state := mautrix.NewMemoryStateStore().(*mautrix.MemoryStateStore)
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	mach := crypto.NewOlmMachine(cli, &log, crypto.NewMemoryStore(nil), state)
	if err := mach.Load(ctx); err != nil {
		t.Fatal(err)
	}
	// Uploads the device keys and a first batch of one-time keys.
	if err := mach.ShareKeys(ctx, -1); err != nil {
		t.Fatalf("%s: share keys: %v", cli.UserID, err)
	}
	c := &cryptoClient{t: t, cli: cli, mach: mach, state: state}
	c.sync(0)
	return c
}

// sync runs one /sync (long-polling up to timeout ms) and hands it to the
// machine the way mautrix's syncer would: state to the state store, the
// to-device events, device lists and key counts to the machine, and the
// timeline decrypted.
func (c *cryptoClient) sync(timeout int) {
	c.t.Helper()
	ctx := context.Background()
	resp, err := c.cli.SyncRequest(ctx, timeout, c.since, "", false, "")
	if err != nil {
		c.t.Fatalf("%s: sync: %v", c.cli.UserID, err)
	}
	for roomID, room := range resp.Rooms.Join {
		for _, evt := range append(append([]*event.Event{}, room.State.Events...), room.Timeline.Events...) {
			evt.RoomID = roomID
			_ = evt.Content.ParseRaw(evt.Type)
			mautrix.UpdateStateStore(ctx, c.state, evt)
		}
	}
	c.mach.ProcessSyncResponse(ctx, resp, c.since)
	for _, room := range resp.Rooms.Join {
		c.timeline = append(c.timeline, room.Timeline.Events...)
	}
	// Events still encrypted are tried again, as clients do when a room
	// key comes: across servers the key (a to-device message) may come
	// after the event. A device without the session (one that joined
	// later) keeps the event encrypted.
	for i, evt := range c.timeline {
		if evt.Type == event.EventEncrypted {
			if dec, err := c.mach.DecryptMegolmEvent(ctx, evt); err == nil {
				c.timeline[i] = dec
			}
		}
	}
	c.since = resp.NextBatch
}

// syncUntil syncs until found reports true, failing after a while.
func (c *cryptoClient) syncUntil(what string, found func() bool) {
	c.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !found() {
		if time.Now().After(deadline) {
			c.t.Fatalf("%s: timed out waiting for %s", c.cli.UserID, what)
		}
		c.sync(1000)
	}
}

// send encrypts and sends a text message, sharing the room's group session
// with its members first when needed.
func (c *cryptoClient) send(roomID id.RoomID, members []id.UserID, body string) id.EventID {
	c.t.Helper()
	ctx := context.Background()
	content := &event.MessageEventContent{MsgType: event.MsgText, Body: body}
	enc, err := c.mach.EncryptMegolmEvent(ctx, roomID, event.EventMessage, content)
	if crypto.IsShareError(err) {
		if err = c.mach.ShareGroupSession(ctx, roomID, members); err != nil {
			c.t.Fatalf("%s: share group session: %v", c.cli.UserID, err)
		}
		enc, err = c.mach.EncryptMegolmEvent(ctx, roomID, event.EventMessage, content)
	}
	if err != nil {
		c.t.Fatalf("%s: encrypt: %v", c.cli.UserID, err)
	}
	resp, err := c.cli.SendMessageEvent(ctx, roomID, event.EventEncrypted, enc)
	if err != nil {
		c.t.Fatalf("%s: send: %v", c.cli.UserID, err)
	}
	return resp.EventID
}

// hasText reports whether the client received a decrypted message with
// that body.
func (c *cryptoClient) hasText(body string) bool {
	for _, evt := range c.timeline {
		if evt.Type == event.EventMessage {
			if m, ok := evt.Content.Parsed.(*event.MessageEventContent); ok && m.Body == body {
				return true
			}
		}
	}
	return false
}

// TestEncryptedMessagesBetweenRealClients: two E2EE clients on one server
// set up Olm sessions through /keys/query, /keys/claim and to-device
// messages, share a Megolm session and exchange messages in an encrypted
// room that each decrypts (spec: End-to-End Encryption).
func TestEncryptedMessagesBetweenRealClients(t *testing.T) {
	for _, e := range sqltest.Engines() {
		t.Run(string(e), func(t *testing.T) {
			ctx := context.Background()
			srv := hstest.StartEngine(t, e)
			alice := newCryptoClient(t, testclient.Register(t, srv.ClientURL, "alice"))
			bob := newCryptoClient(t, testclient.Register(t, srv.ClientURL, "bob"))

			room, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{
				Preset: "private_chat",
				Invite: []id.UserID{bob.cli.UserID},
				InitialState: []*event.Event{{Type: event.StateEncryption,
					Content: event.Content{Parsed: &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}}}},
			})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := bob.cli.JoinRoomByID(ctx, room.RoomID); err != nil {
				t.Fatal(err)
			}
			members := []id.UserID{alice.cli.UserID, bob.cli.UserID}
			joined := func(c *cryptoClient) func() bool {
				return func() bool {
					return c.state.IsMembership(ctx, room.RoomID, bob.cli.UserID, event.MembershipJoin)
				}
			}
			alice.syncUntil("bob's join", joined(alice))
			bob.syncUntil("the room", joined(bob))
			if enc, _ := alice.state.IsEncrypted(ctx, room.RoomID); !enc {
				t.Fatal("alice's client does not see the room as encrypted")
			}

			alice.send(room.RoomID, members, "hello bob, this is secret")
			bob.syncUntil("alice's message", func() bool { return bob.hasText("hello bob, this is secret") })

			bob.send(room.RoomID, members, "hello alice, secret too")
			alice.syncUntil("bob's reply", func() bool { return alice.hasText("hello alice, secret too") })

			// The server saw ciphertext only.
			encrypted := encryptedEvents(t, alice.cli, room.RoomID)
			if len(encrypted) != 2 {
				t.Fatalf("%d encrypted events in the room, want 2", len(encrypted))
			}

			// Key backup round trip (spec: Server-side key backups): alice
			// backs up the session of her message; a new device of hers
			// restores it from the server and decrypts the message.
			key, err := backup.NewMegolmBackupKey()
			if err != nil {
				t.Fatal(err)
			}
			version, err := alice.cli.CreateKeyBackupVersion(ctx, &mautrix.ReqRoomKeysVersionCreate[backup.MegolmAuthData]{
				Algorithm: id.KeyBackupAlgorithmMegolmBackupV1,
				AuthData:  backup.MegolmAuthData{PublicKey: id.Ed25519(base64.RawStdEncoding.EncodeToString(key.PublicKey().Bytes()))},
			})
			if err != nil {
				t.Fatal(err)
			}
			var aliceMsg *event.Event
			for _, evt := range encrypted {
				if evt.Sender == alice.cli.UserID {
					aliceMsg = evt
				}
			}
			sessionID := aliceMsg.Content.AsEncrypted().SessionID
			sess, err := alice.mach.CryptoStore.GetGroupSession(ctx, room.RoomID, sessionID)
			if err != nil || sess == nil {
				t.Fatalf("alice's own group session: %v %v", sess, err)
			}
			first := sess.Internal.FirstKnownIndex()
			exported, err := sess.Internal.Export(first)
			if err != nil {
				t.Fatal(err)
			}
			sealed, err := backup.EncryptSessionData(key, backup.MegolmSessionData{
				Algorithm: id.AlgorithmMegolmV1, SenderKey: sess.SenderKey,
				SenderClaimedKeys: backup.SenderClaimedKeys{Ed25519: sess.SigningKey}, SessionKey: string(exported),
			})
			if err != nil {
				t.Fatal(err)
			}
			sealedJSON, err := json.Marshal(sealed)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := alice.cli.PutKeysInBackupForRoomAndSession(ctx, version.Version, room.RoomID, sessionID,
				&mautrix.ReqKeyBackupData{FirstMessageIndex: int(first), IsVerified: true, SessionData: sealedJSON}); err != nil {
				t.Fatal(err)
			}
			alice2 := newCryptoClient(t, login(t, srv.ClientURL, "alice"))
			if _, err := alice2.mach.DecryptMegolmEvent(ctx, aliceMsg); err == nil {
				t.Fatal("a new device decrypted the message before restoring the backup")
			}
			got, err := alice2.mach.DownloadAndStoreLatestKeyBackup(ctx, key)
			if err != nil || got != version.Version {
				t.Fatalf("restore backup: version %q, %v (want %q)", got, err, version.Version)
			}
			dec, err := alice2.mach.DecryptMegolmEvent(ctx, aliceMsg)
			if err != nil {
				t.Fatalf("decrypt after restoring the backup: %v", err)
			}
			if m, ok := dec.Content.Parsed.(*event.MessageEventContent); !ok || m.Body != "hello bob, this is secret" {
				t.Fatalf("restored plaintext %#v", dec.Content.Parsed)
			}
		})
	}
}

// TestCrossSigningBetweenRealClients: both users bootstrap cross-signing
// (keys/device_signing/upload, signatures/upload, secret storage in
// account data); bob signs alice's master key with his user-signing key,
// after which his client trusts alice's device through the server's
// signatures alone; a second device of alice's restores her keys from
// secret storage with the recovery key and signs itself, and her first
// device then trusts it.
func TestCrossSigningBetweenRealClients(t *testing.T) {
	for _, e := range sqltest.Engines() {
		t.Run(string(e), func(t *testing.T) {
			ctx := context.Background()
			srv := hstest.StartEngine(t, e)
			alice := newCryptoClient(t, testclient.Register(t, srv.ClientURL, "alice"))
			bob := newCryptoClient(t, testclient.Register(t, srv.ClientURL, "bob"))
			recoveryKey, err := alice.mach.GenerateAndVerifyWithRecoveryKey(ctx)
			if err != nil {
				t.Fatalf("alice bootstrap: %v", err)
			}
			if _, err := bob.mach.GenerateAndVerifyWithRecoveryKey(ctx); err != nil {
				t.Fatalf("bob bootstrap: %v", err)
			}

			aliceDevice, err := bob.mach.GetOrFetchDevice(ctx, alice.cli.UserID, alice.cli.DeviceID)
			if err != nil {
				t.Fatal(err)
			}
			if trust := bob.mach.ResolveTrust(aliceDevice); trust == id.TrustStateCrossSignedVerified {
				t.Fatalf("bob trusts alice's device before verifying her: %s", trust)
			}
			keys, err := bob.mach.GetCrossSigningPublicKeys(ctx, alice.cli.UserID)
			if err != nil || keys == nil {
				t.Fatalf("alice's cross-signing keys as bob sees them: %v %v", keys, err)
			}
			if err := bob.mach.SignUser(ctx, alice.cli.UserID, keys.MasterKey); err != nil {
				t.Fatalf("bob signs alice: %v", err)
			}
			// Bob's view is rebuilt from the server.
			if _, err := bob.mach.FetchKeys(ctx, []id.UserID{alice.cli.UserID}, true); err != nil {
				t.Fatal(err)
			}
			if trust := bob.mach.ResolveTrust(aliceDevice); trust != id.TrustStateCrossSignedVerified {
				t.Fatalf("bob's trust in alice's device after signing her master key: %s", trust)
			}

			alice2 := newCryptoClient(t, login(t, srv.ClientURL, "alice"))
			if err := alice2.mach.VerifyWithRecoveryKey(ctx, recoveryKey); err != nil {
				t.Fatalf("second device: verify with recovery key: %v", err)
			}
			if _, err := alice.mach.FetchKeys(ctx, []id.UserID{alice.cli.UserID}, true); err != nil {
				t.Fatal(err)
			}
			second, err := alice.mach.GetOrFetchDevice(ctx, alice.cli.UserID, alice2.cli.DeviceID)
			if err != nil {
				t.Fatal(err)
			}
			if trust := alice.mach.ResolveTrust(second); trust != id.TrustStateCrossSignedVerified {
				t.Fatalf("alice's trust in her second device: %s", trust)
			}
		})
	}
}

// login signs in a new device of an existing user (password "password").
func login(t *testing.T, baseURL, localpart string) *mautrix.Client {
	t.Helper()
	cli, err := mautrix.NewClient(baseURL, "", "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = cli.Login(context.Background(), &mautrix.ReqLogin{Type: mautrix.AuthTypePassword,
		Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: localpart},
		Password:   "password", StoreCredentials: true})
	if err != nil {
		t.Fatalf("login %s: %v", localpart, err)
	}
	return cli
}

// encryptedEvents reads a room's m.room.encrypted events through
// /messages, parsed; it fails on any plaintext message.
func encryptedEvents(t *testing.T, cli *mautrix.Client, roomID id.RoomID) []*event.Event {
	t.Helper()
	msgs, err := cli.Messages(context.Background(), roomID, "", "", mautrix.DirectionBackward, nil, 50)
	if err != nil {
		t.Fatal(err)
	}
	var out []*event.Event
	for _, evt := range msgs.Chunk {
		if evt.Type == event.EventMessage {
			t.Fatalf("a plaintext message reached the server: %s", evt.ID)
		}
		if evt.Type == event.EventEncrypted {
			evt.RoomID = roomID
			if err := evt.Content.ParseRaw(evt.Type); err != nil {
				t.Fatal(err)
			}
			out = append(out, evt)
		}
	}
	return out
}
