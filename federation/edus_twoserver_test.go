package federation_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/homeserver/hstest"
	"github.com/weft-chat/weft/internal/serverkey"
	"github.com/weft-chat/weft/internal/testclient"
	"github.com/weft-chat/weft/roomserver"
	"github.com/weft-chat/weft/sql/sqltest"
)

// TestTwoServersEDUs runs two Weft servers, A (alice) and B (bob), and a
// recorder C standing for a third server, which notes every EDU sent to
// it. Rooms are shared by putting the other server's user in them
// directly (no federated join is needed for EDUs): A's room holds alice,
// bob and carol of C; B's room holds bob and alice.
//
// It checks the remote profile lookup; inbound typing and receipts in
// signed transactions from B, with the EDUs the spec says to ignore in
// the same transactions; alice's typing, receipts (not private ones),
// presence and device keys sent to C; and, between A and B for real,
// presence and device lists both ways, with /keys/query answered from
// the device-list cache once A is gone.
func TestTwoServersEDUs(t *testing.T) {
	for _, engine := range sqltest.Engines() {
		t.Run(string(engine), func(t *testing.T) {
			ctx := context.Background()
			cfgA, cfgB, cfgC := hstest.FederationConfig(t, engine), hstest.FederationConfig(t, engine), hstest.FederationConfig(t, engine)
			servers := startTrusting(t, []config.Config{cfgA, cfgB, cfgC}, cfgA, cfgB)
			a, b := servers[0], servers[1]
			c := startRecorder(t, cfgC)
			nameA, nameB, nameC := spec.ServerName(cfgA.ServerName), spec.ServerName(cfgB.ServerName), spec.ServerName(cfgC.ServerName)
			keyB, err := serverkey.LoadOrGenerate(cfgB.SigningKeyPath)
			if err != nil {
				t.Fatal(err)
			}
			alice := testclient.Register(t, a.ClientURL, "alice")
			bob := testclient.Register(t, b.ClientURL, "bob")
			if err := bob.SetDisplayName(ctx, "Bob"); err != nil {
				t.Fatal(err)
			}

			// Remote profiles, through B's query/profile.
			prof, err := alice.GetProfile(ctx, bob.UserID)
			if err != nil || prof.DisplayName != "Bob" {
				t.Fatalf("bob's profile from A: %+v %v", prof, err)
			}
			if name, err := alice.GetDisplayName(ctx, bob.UserID); err != nil || name.DisplayName != "Bob" {
				t.Fatalf("bob's display name from A: %+v %v", name, err)
			}
			_, err = alice.MakeRequest(ctx, http.MethodGet, alice.BuildClientURL("v3", "profile", bob.UserID, "avatar_url"), nil, nil)
			if !isMautrixError(err, 404, "M_NOT_FOUND") {
				t.Errorf("bob's unset avatar from A: %v", err)
			}
			if _, err := alice.GetProfile(ctx, id.UserID("@nobody:"+string(nameB))); !isMautrixError(err, 404, "M_NOT_FOUND") {
				t.Errorf("unknown user of B: %v", err)
			}
			// Nothing listens on port 1: Synapse's 502.
			if _, err := alice.GetProfile(ctx, "@x:127.0.0.1:1"); !isMautrixError(err, 502, "M_UNKNOWN") {
				t.Errorf("user of an unreachable server: %v", err)
			}

			room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
			if err != nil {
				t.Fatal(err)
			}
			roomA := room.RoomID
			carolC := "@carol:" + string(nameC)
			join(t, cfgA, roomA.String(), bob.UserID.String(), carolC)
			room, err = bob.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
			if err != nil {
				t.Fatal(err)
			}
			roomB := room.RoomID
			join(t, cfgB, roomB.String(), alice.UserID.String())

			// Inbound typing from B; the spoofed, misplaced and malformed
			// EDUs of the same transaction are ignored, and it is 200.
			fcB := b.FederationClient()
			send := func(txn string, edus ...map[string]any) {
				t.Helper()
				code, body := signedRequest(t, fcB, keyB, nameA, "PUT", "/_matrix/federation/v1/send/"+txn,
					map[string]any{"origin": nameB, "origin_server_ts": time.Now().UnixMilli(), "pdus": []any{}, "edus": edus})
				if code != 200 {
					t.Fatalf("transaction %s: %d %s", txn, code, body)
				}
			}
			edu := func(typ string, content any) map[string]any {
				return map[string]any{"edu_type": typ, "content": content}
			}
			send("t1",
				edu("m.typing", map[string]any{"room_id": roomA, "user_id": alice.UserID, "typing": true}),
				edu("m.typing", map[string]any{"room_id": roomB, "user_id": bob.UserID, "typing": true}),
				edu("m.typing", "not an object"),
				edu("m.typing", map[string]any{"room_id": roomA}),
				edu("m.typing", map[string]any{"room_id": roomA, "user_id": bob.UserID, "typing": true}),
			)
			aliceSince := syncUntil(t, alice, "", "bob typing", func(r *mautrix.RespSync) bool {
				return ephemeral(r, roomA, event.EphemeralEventTyping.Type) == `{"user_ids":["`+bob.UserID.String()+`"]}`
			})
			m1, err := alice.SendText(ctx, roomA, "hello")
			if err != nil {
				t.Fatal(err)
			}
			send("t2", edu("m.receipt", map[string]any{roomA.String(): map[string]any{"m.read": map[string]any{
				bob.UserID.String():   map[string]any{"event_ids": []string{m1.EventID.String()}, "data": map[string]any{"ts": 1234}},
				alice.UserID.String(): map[string]any{"event_ids": []string{m1.EventID.String()}, "data": map[string]any{"ts": 1234}},
			}}}))
			syncUntil(t, alice, aliceSince, "bob's receipt", func(r *mautrix.RespSync) bool {
				return ephemeral(r, roomA, event.EphemeralEventReceipt.Type) ==
					`{"`+m1.EventID.String()+`":{"m.read":{"`+bob.UserID.String()+`":{"ts":1234}}}}`
			})

			// Alice's typing and public receipt reach C; her private
			// receipt does not.
			if _, err := alice.UserTyping(ctx, roomA, true, 20*time.Second); err != nil {
				t.Fatal(err)
			}
			c.wait(t, "alice's typing", func(e recordedEDU) bool {
				var typing struct {
					RoomID id.RoomID `json:"room_id"`
					UserID id.UserID `json:"user_id"`
					Typing bool      `json:"typing"`
				}
				return e.Type == "m.typing" && json.Unmarshal([]byte(e.Content), &typing) == nil &&
					typing.RoomID == roomA && typing.UserID == alice.UserID && typing.Typing
			})
			if err := alice.SendReceipt(ctx, roomA, m1.EventID, event.ReceiptTypeReadPrivate, nil); err != nil {
				t.Fatal(err)
			}
			if err := alice.SendReceipt(ctx, roomA, m1.EventID, event.ReceiptTypeRead, nil); err != nil {
				t.Fatal(err)
			}
			c.wait(t, "alice's receipt", func(e recordedEDU) bool {
				return e.Type == "m.receipt" && strings.Contains(e.Content, `"m.read":{"`+alice.UserID.String()+`"`)
			})
			if n := c.count("m.receipt"); n != 1 {
				t.Errorf("%d receipts sent to C, want the public one", n)
			}

			// Presence, A to B for real (and to C).
			bobSince := syncUntil(t, bob, "", "a first sync", func(*mautrix.RespSync) bool { return true })
			if err := alice.SetPresence(ctx, mautrix.ReqPresence{Presence: event.PresenceOnline, StatusMsg: "on federation"}); err != nil {
				t.Fatal(err)
			}
			bobSince = syncUntil(t, bob, bobSince, "alice's presence on B", func(r *mautrix.RespSync) bool {
				return presenceOf(r, alice.UserID, `"status_msg":"on federation"`)
			})
			c.wait(t, "alice's presence", func(e recordedEDU) bool {
				return e.Type == "m.presence" && strings.Contains(e.Content, `"status_msg":"on federation"`)
			})

			// Device lists both ways: a new device's keys reach the other
			// server's syncs; B fetches alice's list from A and then
			// answers /keys/query from its cache.
			if _, err := alice.UploadKeys(ctx, &mautrix.ReqUploadKeys{DeviceKeys: testclient.SignedDeviceKeys(t, alice)}); err != nil {
				t.Fatal(err)
			}
			syncUntil(t, bob, bobSince, "alice in bob's device_lists.changed", func(r *mautrix.RespSync) bool {
				return slices.Contains(r.DeviceLists.Changed, alice.UserID)
			})
			c.wait(t, "alice's device list update", func(e recordedEDU) bool {
				return e.Type == "m.device_list_update" && strings.Contains(e.Content, `"device_id":"`+alice.DeviceID.String()+`"`) &&
					strings.Contains(e.Content, `"stream_id":1`)
			})
			if _, err := bob.UploadKeys(ctx, &mautrix.ReqUploadKeys{DeviceKeys: testclient.SignedDeviceKeys(t, bob)}); err != nil {
				t.Fatal(err)
			}
			syncUntil(t, alice, aliceSince, "bob in alice's device_lists.changed", func(r *mautrix.RespSync) bool {
				return slices.Contains(r.DeviceLists.Changed, bob.UserID)
			})
			queryAlice := func(when string) {
				t.Helper()
				keys, err := bob.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{alice.UserID: {}}})
				if err != nil {
					t.Fatal(err)
				}
				if _, ok := keys.DeviceKeys[alice.UserID][alice.DeviceID]; !ok || len(keys.Failures) > 0 {
					t.Fatalf("alice's keys from B %s: %+v", when, keys)
				}
			}
			queryAlice("with A up")
			if err := a.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
			queryAlice("with A gone (from the cache)")
		})
	}
}

// TestTwoServersEDUsJoined: alice of A and bob of B share a room through
// a federated join; each one's typing, read receipt, presence and new
// device keys reach the other's syncs through the real EDUs.
func TestTwoServersEDUsJoined(t *testing.T) {
	for _, engine := range sqltest.Engines() {
		t.Run(string(engine), func(t *testing.T) {
			ctx := context.Background()
			cfgA, cfgB := hstest.FederationConfig(t, engine), hstest.FederationConfig(t, engine)
			servers := hstest.StartFederated(t, cfgA, cfgB)
			a, b := servers[0], servers[1]
			alice := testclient.Register(t, a.ClientURL, "alice")
			bob := testclient.Register(t, b.ClientURL, "bob")
			created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
			if err != nil {
				t.Fatal(err)
			}
			room := created.RoomID
			if _, err := bob.JoinRoom(ctx, room.String(), &mautrix.ReqJoinRoom{Via: []string{cfgA.ServerName}}); err != nil {
				t.Fatalf("bob joins over federation: %v", err)
			}
			aliceSince := syncUntil(t, alice, "", "bob joined on A", func(r *mautrix.RespSync) bool {
				for _, ev := range r.Rooms.Join[room].Timeline.Events {
					if ev.Type == event.StateMember && ev.GetStateKey() == bob.UserID.String() {
						return true
					}
				}
				return false
			})
			bobSince := syncUntil(t, bob, "", "the room on B", func(r *mautrix.RespSync) bool { return r.Rooms.Join[room] != nil })

			// Bob types: alice sees it.
			if _, err := bob.UserTyping(ctx, room, true, 20*time.Second); err != nil {
				t.Fatal(err)
			}
			aliceSince = syncUntil(t, alice, aliceSince, "bob typing on A", func(r *mautrix.RespSync) bool {
				return ephemeral(r, room, event.EphemeralEventTyping.Type) == `{"user_ids":["`+bob.UserID.String()+`"]}`
			})

			// Alice's message reaches B, and her read receipt of it too.
			sent, err := alice.SendText(ctx, room, "read me")
			if err != nil {
				t.Fatal(err)
			}
			bobSince = syncUntil(t, bob, bobSince, "alice's message on B", func(r *mautrix.RespSync) bool {
				for _, ev := range r.Rooms.Join[room].Timeline.Events {
					if ev.ID == sent.EventID {
						return true
					}
				}
				return false
			})
			if err := alice.SendReceipt(ctx, room, sent.EventID, event.ReceiptTypeRead, nil); err != nil {
				t.Fatal(err)
			}
			bobSince = syncUntil(t, bob, bobSince, "alice's receipt on B", func(r *mautrix.RespSync) bool {
				return strings.Contains(ephemeral(r, room, event.EphemeralEventReceipt.Type),
					`"`+sent.EventID.String()+`":{"m.read":{"`+alice.UserID.String()+`"`)
			})

			// Presence both ways.
			if err := alice.SetPresence(ctx, mautrix.ReqPresence{Presence: event.PresenceUnavailable, StatusMsg: "from A"}); err != nil {
				t.Fatal(err)
			}
			bobSince = syncUntil(t, bob, bobSince, "alice's presence on B", func(r *mautrix.RespSync) bool {
				return presenceOf(r, alice.UserID, `"status_msg":"from A"`)
			})
			if err := bob.SetPresence(ctx, mautrix.ReqPresence{Presence: event.PresenceOnline, StatusMsg: "from B"}); err != nil {
				t.Fatal(err)
			}
			aliceSince = syncUntil(t, alice, aliceSince, "bob's presence on A", func(r *mautrix.RespSync) bool {
				return presenceOf(r, bob.UserID, `"status_msg":"from B"`)
			})

			// New device keys: the other side's device_lists.changed.
			if _, err := alice.UploadKeys(ctx, &mautrix.ReqUploadKeys{DeviceKeys: testclient.SignedDeviceKeys(t, alice)}); err != nil {
				t.Fatal(err)
			}
			syncUntil(t, bob, bobSince, "alice in bob's device_lists.changed", func(r *mautrix.RespSync) bool {
				return slices.Contains(r.DeviceLists.Changed, alice.UserID)
			})
			if _, err := bob.UploadKeys(ctx, &mautrix.ReqUploadKeys{DeviceKeys: testclient.SignedDeviceKeys(t, bob)}); err != nil {
				t.Fatal(err)
			}
			syncUntil(t, alice, aliceSince, "bob in alice's device_lists.changed", func(r *mautrix.RespSync) bool {
				return slices.Contains(r.DeviceLists.Changed, bob.UserID)
			})
			keys, err := alice.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{bob.UserID: {}}})
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := keys.DeviceKeys[bob.UserID][bob.DeviceID]; !ok || len(keys.Failures) > 0 {
				t.Fatalf("bob's keys from A: %+v", keys)
			}
		})
	}
}

// presenceOf reports whether a sync response carries a presence event of
// user whose content holds fragment.
func presenceOf(r *mautrix.RespSync, user id.UserID, fragment string) bool {
	for _, ev := range r.Presence.Events {
		if ev.Sender == user && strings.Contains(string(ev.Content.VeryRaw), fragment) {
			return true
		}
	}
	return false
}

// startTrusting starts a server for each of start, each trusting the
// federation certificates of every config in trusted.
func startTrusting(t *testing.T, trusted []config.Config, start ...config.Config) []*hstest.Server {
	t.Helper()
	var pems []byte
	for _, c := range trusted {
		pem, err := os.ReadFile(filepath.Join(c.DataDir, "federation.crt"))
		if err != nil {
			t.Fatal(err)
		}
		pems = append(pems, pem...)
	}
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pems, 0o600); err != nil {
		t.Fatal(err)
	}
	out := make([]*hstest.Server, len(start))
	for i, c := range start {
		c.Federation.TrustedCAFile = ca
		out[i] = hstest.Start(t, c)
	}
	return out
}

// join puts users in a room of the server of cfg directly, through a
// roomserver on its database, as a federated join would leave them.
func join(t *testing.T, cfg config.Config, roomID string, users ...string) {
	t.Helper()
	key, err := serverkey.LoadOrGenerate(cfg.SigningKeyPath)
	if err != nil {
		t.Fatal(err)
	}
	db := openDB(t, cfg.Database.URL)
	rs := roomserver.New(db, nil, cfg.ServerName, key, slog.New(slog.NewTextHandler(io.Discard, nil)))
	for _, u := range users {
		if _, err := rs.HandleInput(context.Background(), roomserver.InputRequest{RoomID: roomID, NewEvent: &roomserver.NewEvent{
			Sender: u, Type: "m.room.member", StateKey: &u, Content: json.RawMessage(`{"membership":"join"}`)}}); err != nil {
			t.Fatalf("%s joins %s: %v", u, roomID, err)
		}
	}
}

// syncUntil syncs cli from since until a response satisfies ok, and
// returns the next batch after it.
func syncUntil(t *testing.T, cli *mautrix.Client, since, what string, ok func(*mautrix.RespSync) bool) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := cli.FullSyncRequest(context.Background(), mautrix.ReqSync{Since: since, Timeout: 500})
		if err != nil {
			t.Fatalf("sync waiting for %s: %v", what, err)
		}
		since = resp.NextBatch
		if ok(resp) {
			return since
		}
		if time.Now().After(deadline) {
			t.Fatalf("no sync showed %s", what)
		}
	}
}

// ephemeral is the content of the room's ephemeral event of the type in
// a sync response, "" when there is none.
func ephemeral(r *mautrix.RespSync, room id.RoomID, typ string) string {
	jr, ok := r.Rooms.Join[room]
	if !ok {
		return ""
	}
	for _, ev := range jr.Ephemeral.Events {
		if ev.Type.Type == typ {
			return string(ev.Content.VeryRaw)
		}
	}
	return ""
}

// recordedEDU is an EDU the recorder received.
type recordedEDU struct {
	Type    string
	Content string
}

// recorder plays a federation server that accepts every transaction and
// records its EDUs.
type recorder struct {
	mu   sync.Mutex
	edus []recordedEDU
}

// serveStandIn serves h on cfg's federation address with its certificate
// until the test ends: a stand-in for the server cfg configures.
func serveStandIn(t *testing.T, cfg config.Config, h http.HandlerFunc) {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(filepath.Join(cfg.DataDir, "federation.crt"), filepath.Join(cfg.DataDir, "federation.key"))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", cfg.Federation.Listen)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: h}
	go func() {
		_ = srv.Serve(tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}))
	}()
	t.Cleanup(func() { srv.Close() })
}

// startRecorder serves the recorder on cfg's federation address with its
// certificate until the test ends.
func startRecorder(t *testing.T, cfg config.Config) *recorder {
	t.Helper()
	rec := &recorder{}
	serveStandIn(t, cfg, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPut || !strings.HasPrefix(r.URL.Path, "/_matrix/federation/v1/send/") {
			http.NotFound(w, r)
			return
		}
		var body struct {
			EDUs []struct {
				Type    string          `json:"edu_type"`
				Content json.RawMessage `json:"content"`
			} `json:"edus"`
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		rec.mu.Lock()
		for _, e := range body.EDUs {
			rec.edus = append(rec.edus, recordedEDU{e.Type, string(e.Content)})
		}
		rec.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"pdus":{}}`))
	})
	return rec
}

// wait waits until an EDU satisfying ok arrived.
func (r *recorder) wait(t *testing.T, what string, ok func(recordedEDU) bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		r.mu.Lock()
		found := slices.ContainsFunc(r.edus, ok)
		r.mu.Unlock()
		if found {
			return
		}
		if time.Now().After(deadline) {
			r.mu.Lock()
			defer r.mu.Unlock()
			t.Fatalf("C never received %s; it received %v", what, r.edus)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// count is the number of EDUs of the type received.
func (r *recorder) count(typ string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, e := range r.edus {
		if e.Type == typ {
			n++
		}
	}
	return n
}
