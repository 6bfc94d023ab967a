package federation_test

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/federation"
	"github.com/weft-chat/weft/homeserver/hstest"
	"github.com/weft-chat/weft/internal/serverkey"
	"github.com/weft-chat/weft/internal/testclient"
	"github.com/weft-chat/weft/roomserver"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// forgeJoin puts userID (of another server) into a room of the server
// whose config is cfg the only way it can happen before federated joins:
// a second roomserver on the server's database takes the join as input
// (see TestTwoServersRoomReads). The join is signed by the room's server,
// not the user's, which any other server refuses.
func forgeJoin(t *testing.T, db *sql.DB, serverName, keyPath, roomID, userID string) string {
	t.Helper()
	key, err := serverkey.LoadOrGenerate(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	rs := roomserver.New(db, nil, serverName, key, slog.New(slog.NewTextHandler(io.Discard, nil)))
	resp, err := rs.HandleInput(context.Background(), roomserver.InputRequest{RoomID: roomID, NewEvent: &roomserver.NewEvent{
		Sender: userID, Type: "m.room.member", StateKey: &userID, Content: json.RawMessage(`{"membership":"join"}`)}})
	if err != nil {
		t.Fatalf("%s joins: %v", userID, err)
	}
	return resp.EventIDs[0]
}

// TestTwoServersFetcher: server B's Fetcher reads a room of server A
// over real TLS and checks what A serves against A's keys, fetched by
// B's key ring: A's events pass; the join A forged for B's user, signed
// by A and not by B, is dropped (spec: the sender's server must sign).
// Then B sends A a transaction with a PDU it signed and one whose
// signature it broke: A takes the first (alice reads it as soon as the
// transaction is answered) and refuses the second.
func TestTwoServersFetcher(t *testing.T) {
	for _, engine := range sqltest.Engines() {
		t.Run(string(engine), func(t *testing.T) {
			ctx := context.Background()
			cfgA, cfgB := hstest.FederationConfig(t, engine), hstest.FederationConfig(t, engine)
			servers := hstest.StartFederated(t, cfgA, cfgB)
			a, b := servers[0], servers[1]
			nameA, nameB := spec.ServerName(cfgA.ServerName), spec.ServerName(cfgB.ServerName)
			alice := testclient.Register(t, a.ClientURL, "alice")
			created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
			if err != nil {
				t.Fatal(err)
			}
			roomID := created.RoomID.String()
			text := func(body string) string {
				t.Helper()
				resp, err := alice.SendText(ctx, created.RoomID, body)
				if err != nil {
					t.Fatal(err)
				}
				return resp.EventID.String()
			}
			m1, m2 := text("one"), text("two")
			dbA := openDB(t, cfgA.Database.URL)
			bobID := "@bob:" + string(nameB)
			join := forgeJoin(t, dbA, cfgA.ServerName, cfgA.SigningKeyPath, roomID, bobID)
			m3 := text("three")
			info, err := dbA.Room(ctx, roomID)
			if err != nil {
				t.Fatal(err)
			}
			ver := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(info.Version))

			f := federation.NewFetcher(b.FederationClient(), b.KeyRing(), nil)
			ev, err := f.Event(ctx, nameA, ver, m1)
			if err != nil || ev.EventID() != m1 || ev.Redacted() || !strings.Contains(string(ev.Content()), `"one"`) {
				t.Fatalf("event m1: %v %v", ev, err)
			}
			if _, err := f.Event(ctx, nameA, ver, join); err == nil || !strings.Contains(err.Error(), "signature") {
				t.Errorf("the forged join: %v, want a signature error", err)
			}
			state, chain, err := f.StateIDs(ctx, nameA, roomID, m3)
			if err != nil || !slices.Contains(state, join) || len(chain) == 0 {
				t.Errorf("state_ids at m3: %v %v %v", state, chain, err)
			}
			missing, err := f.MissingEvents(ctx, nameA, roomID, ver, []string{m1}, []string{m3}, 10, 0)
			var ids []string
			for _, ev := range missing {
				ids = append(ids, ev.EventID())
			}
			if err != nil || !slices.Equal(ids, []string{m2}) {
				t.Errorf("missing events between m1 and m3: %v %v, want [m2 %s] (A serves m2 and the join; the join is dropped)", ids, err, m2)
			}

			// B sends A a message of bob's, signed by B, and the same with
			// a broken signature.
			keyB, err := serverkey.LoadOrGenerate(cfgB.SigningKeyPath)
			if err != nil {
				t.Fatal(err)
			}
			last, err := dbA.EventByID(ctx, m3)
			if err != nil {
				t.Fatal(err)
			}
			var auth []string
			keys := []sql.StateKey{{Type: "m.room.power_levels"}, {Type: "m.room.member", StateKey: bobID}}
			if !ver.DomainlessRoomIDs() {
				// Before room version 12 the create event is an auth event.
				keys = append(keys, sql.StateKey{Type: "m.room.create"})
			}
			for _, k := range keys {
				ev, err := dbA.CurrentStateEvent(ctx, roomID, k)
				if err != nil {
					t.Fatal(err)
				}
				auth = append(auth, ev.EventID)
			}
			build := func(body string) gomatrixserverlib.PDU {
				ev, err := ver.NewEventBuilderFromProtoEvent(&gomatrixserverlib.ProtoEvent{SenderID: bobID, RoomID: roomID, Type: "m.room.message",
					Content: spec.RawJSON(`{"msgtype":"m.text","body":"` + body + `"}`), PrevEvents: []string{m3}, AuthEvents: auth,
					Depth: last.Depth + 1, Version: ver}).Build(time.Now(), nameB, keyB.ID, keyB.Private)
				if err != nil {
					t.Fatal(err)
				}
				return ev
			}
			good := build("from B")
			broken := []byte(strings.Replace(string(build("broken").JSON()), `"depth":`, `"depth":1`, 1))
			brokenID, err := ver.NewEventFromUntrustedJSON(broken)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := b.FederationClient().SendTransaction(ctx, gomatrixserverlib.Transaction{TransactionID: "t1", Origin: nameB,
				Destination: nameA, OriginServerTS: spec.AsTimestamp(time.Now()), PDUs: []json.RawMessage{good.JSON(), broken}})
			if err != nil {
				t.Fatal(err)
			}
			if r, ok := resp.PDUs[good.EventID()]; !ok || r.Error != "" || len(resp.PDUs) != 2 {
				t.Errorf("results %+v: want {} for %s", resp.PDUs, good.EventID())
			}
			if r := resp.PDUs[brokenID.EventID()]; !strings.Contains(r.Error, "signature") {
				t.Errorf("broken PDU: %+v, want a signature error", r)
			}
			// Committed before the answer: alice sees bob's message at once.
			msgs, err := alice.Messages(ctx, created.RoomID, "", "", mautrix.DirectionBackward, nil, 5)
			if err != nil {
				t.Fatal(err)
			}
			if len(msgs.Chunk) == 0 || msgs.Chunk[0].ID.String() != good.EventID() || msgs.Chunk[0].Sender.String() != bobID {
				t.Errorf("alice's newest events: %v, want bob's %s first", msgs.Chunk, good.EventID())
			}
			for _, ev := range msgs.Chunk {
				if ev.ID.String() == brokenID.EventID() {
					t.Errorf("the PDU with a broken signature is in the room")
				}
			}
		})
	}
}

// recordingServer is a real HTTPS server on loopback playing another
// homeserver's /send: it records the PDUs of every transaction.
type recordingServer struct {
	name spec.ServerName
	mu   sync.Mutex
	pdus []json.RawMessage
}

func newRecordingServer(t *testing.T) (*recordingServer, *httptest.Server) {
	rec := &recordingServer{}
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPut || !strings.HasPrefix(r.URL.Path, "/_matrix/federation/v1/send/") {
			w.WriteHeader(404)
			w.Write([]byte(`{"errcode":"M_UNRECOGNIZED","error":"no"}`))
			return
		}
		var txn struct {
			PDUs []json.RawMessage `json:"pdus"`
		}
		json.NewDecoder(r.Body).Decode(&txn)
		rec.mu.Lock()
		rec.pdus = append(rec.pdus, txn.PDUs...)
		rec.mu.Unlock()
		w.Write([]byte(`{"pdus":{}}`))
	}))
	t.Cleanup(srv.Close)
	rec.name = spec.ServerName(srv.Listener.Addr().String())
	return rec, srv
}

// received returns the ids of the events received, in order, parsed in
// room version ver.
func (r *recordingServer) received(t *testing.T, ver gomatrixserverlib.IRoomVersion) (ids []string) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, raw := range r.pdus {
		ev, err := ver.NewEventFromUntrustedJSON(raw)
		if err != nil {
			t.Fatalf("PDU %s: %v", raw, err)
		}
		ids = append(ids, ev.EventID())
	}
	return ids
}

// TestOutboundPDUs: a whole server sends its users' events to the other
// servers of the room through its federation sender and queue: a server
// with a joined user gets each message once, in order, and the kick of
// its last user; nothing while none of its users is in the room. (The
// server ACL is in TestSenderDestinations: on loopback every server is
// 127.0.0.1, which an ACL cannot tell apart.)
func TestOutboundPDUs(t *testing.T) {
	for _, engine := range sqltest.Engines() {
		t.Run(string(engine), func(t *testing.T) {
			ctx := context.Background()
			remote, srv := newRecordingServer(t)
			cfg := hstest.FederationConfig(t, engine)
			ca := filepath.Join(t.TempDir(), "ca.pem")
			if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg.Federation.TrustedCAFile = ca
			a := hstest.Start(t, cfg)
			alice := testclient.Register(t, a.ClientURL, "alice")
			created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
			if err != nil {
				t.Fatal(err)
			}
			db := openDB(t, cfg.Database.URL)
			carol := "@carol:" + string(remote.name)
			forgeJoin(t, db, cfg.ServerName, cfg.SigningKeyPath, created.RoomID.String(), carol)
			info, err := db.Room(ctx, created.RoomID.String())
			if err != nil {
				t.Fatal(err)
			}
			ver := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(info.Version))

			var want []string
			for _, body := range []string{"one", "two", "three"} {
				resp, err := alice.SendText(ctx, created.RoomID, body)
				if err != nil {
					t.Fatal(err)
				}
				want = append(want, resp.EventID.String())
			}
			if _, err := alice.KickUser(ctx, created.RoomID, &mautrix.ReqKickUser{UserID: id.UserID(carol)}); err != nil {
				t.Fatal(err)
			}
			kick, err := db.CurrentStateEvent(ctx, created.RoomID.String(), sql.StateKey{Type: "m.room.member", StateKey: carol})
			if err != nil {
				t.Fatal(err)
			}
			want = append(want, kick.EventID)
			waitFor(t, func() bool { return len(remote.received(t, ver)) >= len(want) })
			if got := remote.received(t, ver); !slices.Equal(got, want) {
				t.Fatalf("received %v, want %v", got, want)
			}

			// Nobody of the remote server is in the room: a message is not
			// sent there. Back in, it gets the next one, and the queue keeps
			// a destination's order, so the one before would have come first.
			if _, err := alice.SendText(ctx, created.RoomID, "not for them"); err != nil {
				t.Fatal(err)
			}
			forgeJoin(t, db, cfg.ServerName, cfg.SigningKeyPath, created.RoomID.String(), carol)
			resp, err := alice.SendText(ctx, created.RoomID, "back")
			if err != nil {
				t.Fatal(err)
			}
			want = append(want, resp.EventID.String())
			waitFor(t, func() bool { return len(remote.received(t, ver)) >= len(want) })
			if got := remote.received(t, ver); !slices.Equal(got, want) {
				t.Fatalf("received %v, want %v", got, want)
			}
		})
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// BenchmarkSendPDUs measures inbound /send over real TLS: server B sends
// server A transactions of 50 messages of bob's, each on the one before,
// which A verifies and commits before answering.
func BenchmarkSendPDUs(b *testing.B) {
	for _, engine := range sqltest.Engines() {
		b.Run(string(engine), func(b *testing.B) { benchmarkSendPDUs(b, engine) })
	}
}

func benchmarkSendPDUs(b *testing.B, engine config.Engine) {
	ctx := context.Background()
	cfgA, cfgB := hstest.FederationConfig(b, engine), hstest.FederationConfig(b, engine)
	servers := hstest.StartFederated(b, cfgA, cfgB)
	a, srvB := servers[0], servers[1]
	nameA, nameB := spec.ServerName(cfgA.ServerName), spec.ServerName(cfgB.ServerName)
	alice := testclient.Register(b, a.ClientURL, "alice")
	created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomVersion: "10"})
	if err != nil {
		b.Fatal(err)
	}
	roomID := created.RoomID.String()
	db, err := sql.Open(ctx, cfgA.Database.URL, 2)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	bobID := "@bob:" + string(nameB)
	key, err := serverkey.LoadOrGenerate(cfgA.SigningKeyPath)
	if err != nil {
		b.Fatal(err)
	}
	rs := roomserver.New(db, nil, cfgA.ServerName, key, slog.New(slog.NewTextHandler(io.Discard, nil)))
	joined, err := rs.HandleInput(ctx, roomserver.InputRequest{RoomID: roomID, NewEvent: &roomserver.NewEvent{
		Sender: bobID, Type: "m.room.member", StateKey: &bobID, Content: json.RawMessage(`{"membership":"join"}`)}})
	if err != nil {
		b.Fatal(err)
	}
	keyB, err := serverkey.LoadOrGenerate(cfgB.SigningKeyPath)
	if err != nil {
		b.Fatal(err)
	}
	ver := gomatrixserverlib.MustGetRoomVersion("10")
	var auth []string
	for _, k := range []sql.StateKey{{Type: "m.room.create"}, {Type: "m.room.power_levels"}, {Type: "m.room.member", StateKey: bobID}} {
		ev, err := db.CurrentStateEvent(ctx, roomID, k)
		if err != nil {
			b.Fatal(err)
		}
		auth = append(auth, ev.EventID)
	}
	last, err := db.EventByID(ctx, joined.EventIDs[0])
	if err != nil {
		b.Fatal(err)
	}
	prev, depth := last.EventID, last.Depth
	pdus := make([]json.RawMessage, b.N)
	for i := range pdus {
		depth++
		ev, err := ver.NewEventBuilderFromProtoEvent(&gomatrixserverlib.ProtoEvent{SenderID: bobID, RoomID: roomID, Type: "m.room.message",
			Content: spec.RawJSON(`{"msgtype":"m.text","body":"bench"}`), PrevEvents: []string{prev}, AuthEvents: auth,
			Depth: depth, Version: ver}).Build(time.Now(), nameB, keyB.ID, keyB.Private)
		if err != nil {
			b.Fatal(err)
		}
		pdus[i], prev = ev.JSON(), ev.EventID()
	}
	fc := srvB.FederationClient()
	b.ResetTimer()
	for n := 0; len(pdus) > 0; n++ {
		batch := pdus[:min(len(pdus), federation.MaxTransactionPDUs)]
		pdus = pdus[len(batch):]
		resp, err := fc.SendTransaction(ctx, gomatrixserverlib.Transaction{TransactionID: gomatrixserverlib.TransactionID("b" + strconv.Itoa(n)),
			Origin: nameB, Destination: nameA, OriginServerTS: spec.AsTimestamp(time.Now()), PDUs: batch})
		if err != nil {
			b.Fatal(err)
		}
		for id, r := range resp.PDUs {
			if r.Error != "" {
				b.Fatalf("%s: %s", id, r.Error)
			}
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "PDUs/s")
}
