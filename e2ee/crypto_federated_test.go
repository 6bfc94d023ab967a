//go:build goolm

package e2ee_test

import (
	"context"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/weft-chat/weft/homeserver/hstest"
	"github.com/weft-chat/weft/internal/testclient"
	"github.com/weft-chat/weft/sql/sqltest"
)

// TestEncryptedMessagesAcrossServers: the E2EE clients of
// TestEncryptedMessagesBetweenRealClients on two federated servers. Every
// step a client takes crosses the federation: alice's /keys/query and
// /keys/claim for bob's devices go to B (federation user/keys/query and
// user/keys/claim), her room key reaches bob as an m.direct_to_device EDU,
// and the Megolm events travel as PDUs. Then bob signs in a second device:
// B tells A with an m.device_list_update EDU, alice's sync lists bob in
// device_lists.changed, her client drops the outbound session (mautrix
// rotates it when a member's devices change) and her next message is
// decryptable by the new device, which answers her in turn.
func TestEncryptedMessagesAcrossServers(t *testing.T) {
	for _, e := range sqltest.Engines() {
		t.Run(string(e), func(t *testing.T) {
			ctx := context.Background()
			servers := hstest.StartFederated(t, hstest.FederationConfig(t, e), hstest.FederationConfig(t, e))
			a, b := servers[0], servers[1]
			alice := newCryptoClient(t, testclient.Register(t, a.ClientURL, "alice"))
			bob := newCryptoClient(t, testclient.Register(t, b.ClientURL, "bob"))

			room, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{
				Preset: "private_chat",
				Invite: []id.UserID{bob.cli.UserID},
				InitialState: []*event.Event{{Type: event.StateEncryption,
					Content: event.Content{Parsed: &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}}}},
			})
			if err != nil {
				t.Fatal(err)
			}
			// B holds the invite once createRoom answers (A's /invite is
			// synchronous), so bob joins through alice's server at once.
			if _, err := bob.cli.JoinRoomByID(ctx, room.RoomID); err != nil {
				t.Fatalf("bob joins over federation: %v", err)
			}
			members := []id.UserID{alice.cli.UserID, bob.cli.UserID}
			joined := func(c *cryptoClient) func() bool {
				return func() bool {
					return c.state.IsMembership(ctx, room.RoomID, bob.cli.UserID, event.MembershipJoin)
				}
			}
			alice.syncUntil("bob's join", joined(alice))
			bob.syncUntil("the room", joined(bob))
			for _, c := range []*cryptoClient{alice, bob} {
				if enc, _ := c.state.IsEncrypted(ctx, room.RoomID); !enc {
					t.Fatalf("%s's client does not see the room as encrypted", c.cli.UserID)
				}
			}

			alice.send(room.RoomID, members, "hello bob on B, this is secret")
			bob.syncUntil("alice's message", func() bool { return bob.hasText("hello bob on B, this is secret") })
			bob.send(room.RoomID, members, "hello alice on A, secret too")
			alice.syncUntil("bob's reply", func() bool { return alice.hasText("hello alice on A, secret too") })

			// Both servers saw ciphertext only.
			for _, cli := range []*mautrix.Client{alice.cli, bob.cli} {
				if n := len(encryptedEvents(t, cli, room.RoomID)); n != 2 {
					t.Fatalf("%d encrypted events in the room on %s's server, want 2", n, cli.UserID)
				}
			}

			// bob's second device. Alice's client learns of it from her
			// own server's sync alone: nothing in the test asks B.
			bob2 := newCryptoClient(t, login(t, b.ClientURL, "bob"))
			alice.syncUntil("bob's new device", func() bool {
				devices, err := alice.mach.CryptoStore.GetDevices(ctx, bob.cli.UserID)
				if err != nil {
					t.Fatal(err)
				}
				_, ok := devices[bob2.cli.DeviceID]
				return ok
			})
			alice.send(room.RoomID, members, "hello to both of bob's devices")
			bob2.syncUntil("alice's message on the new device", func() bool { return bob2.hasText("hello to both of bob's devices") })
			bob.syncUntil("alice's message on the first device", func() bool { return bob.hasText("hello to both of bob's devices") })

			// The new device writes back: it fetches alice's keys through B
			// and shares its own session with her.
			bob2.send(room.RoomID, members, "bob's second device says hi")
			alice.syncUntil("the reply of bob's new device", func() bool { return alice.hasText("bob's second device says hi") })
		})
	}
}
