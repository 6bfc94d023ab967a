package federation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/e2ee"
	"github.com/weft-chat/weft/internal/serverkey"
	"github.com/weft-chat/weft/presence"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// These tests drive the EDU handlers and senders on a database with rooms
// made by the roomserver (see fedEnv): alice of ours, bob of
// remote.example, joined to one room.

// unstartedQueue is a queue of ours that stores what it is given and
// sends nothing: tests read what was queued with drainQueue.
func unstartedQueue(t *testing.T, db *sql.DB) *Queue {
	t.Helper()
	key, _ := serverkey.Generate()
	q, err := NewQueue(QueueConfig{DB: db, Client: testClient(t, key), Key: key, Origin: ours})
	if err != nil {
		t.Fatal(err)
	}
	return q
}

// drainQueue returns and removes what is queued for dest, as "type
// content" lines.
func drainQueue(t *testing.T, db *sql.DB, dest spec.ServerName) []string {
	t.Helper()
	ctx := context.Background()
	var out []string
	for {
		txn, items, err := db.FederationBatch(ctx, string(dest), newTxnID(), MaxTransactionPDUs, MaxTransactionEDUs)
		if err != nil {
			t.Fatal(err)
		}
		if len(items) == 0 {
			return out
		}
		for _, it := range items {
			out = append(out, it.EDUType+" "+string(it.Content))
		}
		if _, err := db.DeleteFederationBatch(ctx, string(dest), txn); err != nil {
			t.Fatal(err)
		}
	}
}

// sharedRoom makes a room of alice that bob of remote.example joined.
func sharedRoom(t *testing.T, db *sql.DB) (*fedEnv, string) {
	t.Helper()
	e := newFedEnv(t, db)
	roomID, _ := e.createRoom("11", "shared")
	e.member(roomID, fedBob, fedBob, "join")
	return e, roomID
}

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// typingCall is a call of the typing store.
type typingCall struct {
	room, user string
	typing     bool
	timeout    time.Duration
}

// fakeTypingStore records calls and answers joined from the database.
type fakeTypingStore struct {
	db    *sql.DB
	calls []typingCall
}

func (f *fakeTypingStore) SetTyping(ctx context.Context, roomID, userID string, typing bool, timeout time.Duration) (bool, error) {
	_, err := f.db.JoinedRoomNID(ctx, roomID, userID)
	if errors.Is(err, sql.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	f.calls = append(f.calls, typingCall{roomID, userID, typing, timeout})
	return true, nil
}

// TestTypingEDUs: an inbound m.typing reaches the typing store with the
// federation timeout; one for a user not of its origin, from a server
// the room's ACL denies, or malformed is dropped without an error.
// Outbound, a local user's typing goes to the room's other servers, less
// those the ACL denies.
func TestTypingEDUs(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		e, roomID := sharedRoom(t, db)
		e.member(roomID, "@carol:other.example", "@carol:other.example", "join")
		e.member(roomID, "@dan:denied.example", "@dan:denied.example", "join")
		store := &fakeTypingStore{db: db}
		r := &TypingReceiver{DB: db, Store: store}
		handle := func(origin spec.ServerName, content string) {
			t.Helper()
			if err := r.Handle(ctx, origin, json.RawMessage(content)); err != nil {
				t.Fatalf("Handle(%s): %v", content, err)
			}
		}
		edu := func(user string, typing bool) string {
			return fmt.Sprintf(`{"room_id":%q,"user_id":%q,"typing":%t}`, roomID, user, typing)
		}
		handle(fedRemote, edu(fedBob, true))
		handle(fedRemote, edu(fedBob, false))
		handle(fedRemote, edu(fedAlice, true))                 // not of the origin
		handle(fedOther, edu(fedBob, true))                    // not of the origin
		handle(fedRemote, edu("@nobody:remote.example", true)) // not joined
		handle(fedRemote, `{"room_id":"`+roomID+`","user_id":"`+fedBob+`"}`)
		handle(fedRemote, `{"room_id":"`+roomID+`","user_id":"`+fedBob+`","typing":"yes"}`)
		handle(fedRemote, `[]`)
		want := []typingCall{{roomID, fedBob, true, RemoteTypingTimeout}, {roomID, fedBob, false, RemoteTypingTimeout}}
		if !slices.Equal(store.calls[:2], want) {
			t.Fatalf("typing stored %v, want %v", store.calls, want)
		}
		if len(store.calls) != 2 {
			t.Fatalf("typing stored %v, want %v", store.calls, want)
		}

		e.state(roomID, fedAlice, "m.room.server_acl", "", map[string]any{"allow": []string{"*"}, "deny": []string{"denied.example"}})
		handle("denied.example", edu("@dan:denied.example", true))
		if len(store.calls) != 2 {
			t.Fatalf("typing from a denied server stored: %v", store.calls)
		}

		q := unstartedQueue(t, db)
		s := &EDUSender{DB: db, Queue: q, ServerName: ours}
		if err := s.SendTyping(ctx, roomID, fedAlice, true); err != nil {
			t.Fatal(err)
		}
		want2 := fmt.Sprintf(`[m.typing {"room_id":%q,"user_id":%q,"typing":true}]`, roomID, fedAlice)
		for _, d := range []spec.ServerName{fedRemote, fedOther} {
			if got := fmt.Sprint(drainQueue(t, db, d)); got != want2 {
				t.Errorf("queued for %s: %s, want %s", d, got, want2)
			}
		}
		if got := drainQueue(t, db, "denied.example"); len(got) != 0 {
			t.Errorf("queued for a denied server: %v", got)
		}
	})
}

// TestReceiptEDUs: inbound m.read receipts become the remote users'
// receipts (moving forward only), which the local members' syncs read;
// private receipt types, users not of the origin or not joined, events
// this server lacks and rooms whose ACL denies the origin are left out.
// Outbound, QueueReceipt queues the receipt for the room's other servers
// in the caller's transaction.
func TestReceiptEDUs(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		e, roomID := sharedRoom(t, db)
		m1 := e.message(roomID, fedAlice, "one")
		m2 := e.message(roomID, fedBob, "two")
		r := &ReceiptReceiver{DB: db}
		handle := func(origin spec.ServerName, content string) {
			t.Helper()
			if err := r.Handle(ctx, origin, json.RawMessage(content)); err != nil {
				t.Fatalf("Handle(%s): %v", content, err)
			}
		}
		receipts := func() string {
			t.Helper()
			rs, err := db.SyncReceipts(ctx, fedAlice, 0, 1<<62)
			if err != nil {
				t.Fatal(err)
			}
			var out []string
			for _, r := range rs {
				out = append(out, fmt.Sprintf("%s %s %s %q %d", r.Type, r.UserID, r.EventID, r.ThreadID, r.TS))
			}
			return fmt.Sprint(out)
		}
		read := func(user, event string, ts int, extra string) string {
			return fmt.Sprintf(`%q:{"event_ids":[%q],"data":{"ts":%d%s}}`, user, event, ts, extra)
		}
		handle(fedRemote, `{"`+roomID+`":{"m.read":{`+read(fedBob, m2, 20, "")+`}}}`)
		handle(fedRemote, `{"`+roomID+`":{"m.read":{`+read(fedBob, m1, 10, "")+`}}}`) // behind: ignored
		handle(fedRemote, `{"`+roomID+`":{"m.read":{`+read(fedBob, m1, 30, `,"thread_id":"main"`)+`}}}`)
		if got, want := receipts(), fmt.Sprintf(`[m.read %s %s "" 20 m.read %s %s "main" 30]`, fedBob, m2, fedBob, m1); got != want {
			t.Fatalf("receipts %s, want %s", got, want)
		}
		before := receipts()
		for _, bad := range []string{
			`{"` + roomID + `":{"m.read.private":{` + read(fedBob, m2, 40, `,"thread_id":"x"`) + `}}}`,
			`{"` + roomID + `":{"m.read":{` + read(fedAlice, m2, 40, `,"thread_id":"y"`) + `}}}`,
			`{"` + roomID + `":{"m.read":{` + read("@nobody:remote.example", m2, 40, "") + `}}}`,
			`{"` + roomID + `":{"m.read":{` + read(fedBob, "$unknown", 40, `,"thread_id":"z"`) + `}}}`,
			`{"` + roomID + `":{"m.read":{"` + fedBob + `":{"event_ids":["` + m2 + `"],"data":{}}}}}`,
			`{"` + roomID + `":{"m.read":{"` + fedBob + `":{"event_ids":[],"data":{"ts":1}}}}}`,
			`{"` + roomID + `":{"m.read":{"` + fedBob + `":"nonsense"}}}`,
			`{"!unknown:remote.example":{"m.read":{` + read(fedBob, m2, 40, `,"thread_id":"w"`) + `}}}`,
			`{"` + roomID + `":"nonsense"}`,
			`[]`,
		} {
			handle(fedRemote, bad)
		}
		if got := receipts(); got != before {
			t.Fatalf("receipts after the bad EDUs %s, want %s", got, before)
		}

		e.state(roomID, fedAlice, "m.room.server_acl", "", map[string]any{"allow": []string{"*"}, "deny": []string{"remote.example"}})
		handle(fedRemote, `{"`+roomID+`":{"m.read":{`+read(fedBob, m1, 50, `,"thread_id":"v"`)+`}}}`)
		if got := receipts(); got != before {
			t.Fatalf("receipts after a denied server's %s, want %s", got, before)
		}

		e.member(roomID, "@carol:other.example", "@carol:other.example", "join")
		q := unstartedQueue(t, db)
		s := &EDUSender{DB: db, Queue: q, ServerName: ours}
		var wakeUp func()
		err := db.WithTx(ctx, func(tx *sql.Queries) error {
			var err error
			wakeUp, err = s.QueueReceipt(ctx, tx, roomID, fedAlice, m2, "", 99)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		wakeUp()
		if got := drainQueue(t, db, fedRemote); len(got) != 0 {
			t.Errorf("queued for the denied server: %v", got)
		}
		want := fmt.Sprintf(`[m.receipt {%q:{"m.read":{%q:{"event_ids":[%q],"data":{"ts":99}}}}}]`, roomID, fedAlice, m2)
		if got := fmt.Sprint(drainQueue(t, db, fedOther)); got != want {
			t.Errorf("queued %s, want %s", got, want)
		}
	})
}

// TestPresenceEDUs: inbound presence of users sharing a room with a local
// user is stored (and shown to local syncs); entries of users not of the
// origin, with unknown states or sharing no room are left out. Outbound,
// only local users' presence goes, to the servers sharing a room with
// them.
func TestPresenceEDUs(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		sharedRoom(t, db)
		svc := presence.New(db, nil, discard())
		r := &PresenceReceiver{DB: db, Store: svc, ServerName: ours}
		push := `{"push":[
			{"user_id":"@bob:remote.example","presence":"online","status_msg":"busy","last_active_ago":1000,"currently_active":true},
			{"user_id":"@carol:remote.example","presence":"online","last_active_ago":0},
			{"user_id":"@alice:ours.example","presence":"online","last_active_ago":0},
			{"user_id":"@bob:remote.example","presence":"dancing","last_active_ago":0},
			"nonsense"]}`
		if err := r.Handle(ctx, fedRemote, json.RawMessage(push)); err != nil {
			t.Fatal(err)
		}
		for _, bad := range []string{`{"push":"x"}`, `[]`} {
			if err := r.Handle(ctx, fedRemote, json.RawMessage(bad)); err != nil {
				t.Fatal(err)
			}
		}
		p, err := db.PresenceOf(ctx, fedBob)
		if err != nil || p.State != presence.Online || p.StatusMsg != "busy" || !p.CurrentlyActive ||
			time.Now().UnixMilli()-p.LastActiveTS < 1000 || time.Now().UnixMilli()-p.LastActiveTS > 60_000 {
			t.Fatalf("bob's presence %+v %v", p, err)
		}
		for _, u := range []string{"@carol:remote.example", fedAlice} {
			if _, err := db.PresenceOf(ctx, u); !errors.Is(err, sql.ErrNotFound) {
				t.Errorf("presence of %s stored: %v", u, err)
			}
		}
		changed, err := db.PresenceChanged(ctx, fedAlice, 0, 1<<62, 10)
		if err != nil || len(changed) != 1 || changed[0].UserID != fedBob {
			t.Fatalf("presence alice's syncs read: %v %v", changed, err)
		}

		q := unstartedQueue(t, db)
		now := time.Now()
		s := &PresenceSender{DB: db, Queue: q, ServerName: ours, now: func() time.Time { return now }}
		ago := int64(5)
		active := true
		s.SendPresence(ctx, []presence.Update{
			{UserID: fedAlice, Content: presence.Content{Presence: presence.Online, LastActiveAgo: &ago, CurrentlyActive: &active}},
			{UserID: fedBob, Content: presence.Content{Presence: presence.Offline}},
			{UserID: "@loner:ours.example", Content: presence.Content{Presence: presence.Online}},
		})
		want := `[m.presence {"push":[{"user_id":"@alice:ours.example","presence":"online","last_active_ago":5,"currently_active":true}]}]`
		if got := fmt.Sprint(drainQueue(t, db, fedRemote)); got != want {
			t.Errorf("queued %s, want %s", got, want)
		}

		// Pings: alice's presence (online, not offline) goes again once
		// this process has not sent it for presencePing; bob's, a remote
		// user's, never does.
		if err := svc.Set(ctx, fedAlice, presence.Online, "pinging"); err != nil {
			t.Fatal(err)
		}
		if err := s.ping(ctx, svc.Content); err != nil {
			t.Fatal(err)
		}
		if got := drainQueue(t, db, fedRemote); len(got) != 0 {
			t.Errorf("ping right after a send: %v", got)
		}
		now = now.Add(presencePing)
		if err := s.ping(ctx, svc.Content); err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprint(drainQueue(t, db, fedRemote)); !strings.Contains(got, `"user_id":"@alice:ours.example","presence":"online"`) || !strings.Contains(got, `"status_msg":"pinging"`) ||
			strings.Contains(got, fedBob) {
			t.Errorf("ping %s", got)
		}
		if err := s.ping(ctx, svc.Content); err != nil {
			t.Fatal(err)
		}
		if got := drainQueue(t, db, fedRemote); len(got) != 0 {
			t.Errorf("second ping at once: %v", got)
		}
	})
}

// fakeDevices answers GET /user/devices for the device-list tests; the
// background fetches, so the fields are read and set under mu.
type fakeDevices struct {
	mu     sync.Mutex
	answer userDevicesAnswer
	err    error
	calls  int
}

func (f *fakeDevices) fetch(_ context.Context, userID spec.UserID) (userDevicesAnswer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	a := f.answer
	a.UserID = userID.String()
	return a, f.err
}

// set changes the answer under the lock.
func (f *fakeDevices) set(change func(f *fakeDevices)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	change(f)
}

func (f *fakeDevices) fetches() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// settle waits until d has no fetch running or due now.
func settle(t *testing.T, d *DeviceLists) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		d.sched.mu.Lock()
		idle := len(d.sched.running) == 0 && len(d.sched.pending) == 0
		d.sched.mu.Unlock()
		if idle {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("device list fetches still running")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// deviceKeysOf is a device's keys as a server sends them.
func deviceKeysOf(user, device string) json.RawMessage {
	return jsonOf(map[string]any{"user_id": user, "device_id": device, "algorithms": []string{"m.olm.v1.curve25519-aes-sha2"},
		"keys": map[string]string{"ed25519:" + device: "pub-" + device}, "signatures": map[string]any{}})
}

func crossKeyOf(user, usage string) json.RawMessage {
	return jsonOf(map[string]any{"user_id": user, "usage": []string{usage}, "keys": map[string]string{"ed25519:" + usage: usage}})
}

// TestDeviceListEDUs follows a remote user's device list: the first
// update fetches the whole list (in the background); updates that follow
// the latest applied are applied without a fetch; a gap in prev_id
// fetches again; a failed fetch leaves the cache stale (unused) until a
// fetch succeeds; signing key updates land in the cache. Every change shows in the local users'
// device_lists.changed, and /keys/query answers from a fresh cache
// without asking the remote server. Updates of users sharing no room,
// not of their origin or malformed change nothing.
func TestDeviceListEDUs(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		sharedRoom(t, db)
		fake := &fakeDevices{}
		d := &DeviceLists{db: db, serverName: ours, log: discard(), fetch: fake.fetch}
		t.Cleanup(d.Start(ctx))
		update := func(origin spec.ServerName, content string) {
			t.Helper()
			if err := d.HandleDeviceListUpdate(ctx, origin, json.RawMessage(content)); err != nil {
				t.Fatalf("update %s: %v", content, err)
			}
			settle(t, d)
		}
		upd := func(stream int, prev string, device string, extra string) string {
			return fmt.Sprintf(`{"user_id":%q,"device_id":%q,"stream_id":%d,"prev_id":%s%s}`, fedBob, device, stream, prev, extra)
		}
		withKeys := func(device string) string { return `,"keys":` + string(deviceKeysOf(fedBob, device)) }
		keys := e2ee.New(db, string(ours))
		cached := func(want string, fetches int) {
			t.Helper()
			res, err := keys.QueryKeys(ctx, fedAlice, map[string][]string{fedBob: {}})
			if err != nil {
				t.Fatal(err)
			}
			got := slices.Sorted(maps.Keys(res.DeviceKeys[fedBob]))
			if _, ok := res.MasterKeys[fedBob]; ok {
				got = append(got, "master")
			}
			if _, ok := res.SelfSigningKeys[fedBob]; ok {
				got = append(got, "self_signing")
			}
			if len(res.Failures) > 0 {
				got = append(got, "failed")
			}
			if fmt.Sprint(got) != want || fake.fetches() != fetches {
				t.Fatalf("keys of bob %v after %d fetches, want %s after %d", got, fake.fetches(), want, fetches)
			}
		}
		changedPos := func() int64 {
			t.Helper()
			pos, err := db.SyncPositions(ctx)
			if err != nil {
				t.Fatal(err)
			}
			return pos.DeviceLists
		}
		seenChange := func(from int64) {
			t.Helper()
			to, err := db.SyncPositions(ctx)
			if err != nil {
				t.Fatal(err)
			}
			lists, err := db.DeviceListChanges(ctx, fedAlice, nil, sql.StreamPositions{DeviceLists: from}, to)
			if err != nil || !slices.Contains(lists.Changed, fedBob) {
				t.Fatalf("alice's device_lists.changed %v %v, want bob", lists.Changed, err)
			}
		}

		// Not tracked yet: no cache, the remote server is asked (here
		// there is none: a failure).
		cached("[failed]", 0)

		// Updates of a user sharing no room, spoofed ones and malformed
		// ones are dropped.
		update(fedRemote, `{"user_id":"@carol:remote.example","device_id":"C1","stream_id":1}`)
		update(fedOther, upd(1, "[]", "B1", ""))
		update(fedRemote, upd(1, "[]", "B1", `,"keys":`+string(deviceKeysOf(fedBob, "OTHER"))))
		update(fedRemote, `{"user_id":"`+fedBob+`","device_id":"B1"}`)
		update(fedRemote, `{"user_id":"`+fedBob+`","stream_id":3}`)
		update(fedRemote, `"nonsense"`)
		if n := fake.fetches(); n != 0 {
			t.Fatalf("%d fetches for dropped updates", n)
		}

		// The first update fetches the list.
		fake.set(func(f *fakeDevices) {
			f.answer = userDevicesAnswer{StreamID: 5, MasterKey: crossKeyOf(fedBob, "master")}
			f.answer.Devices = append(f.answer.Devices, struct {
				DeviceID    string          `json:"device_id"`
				DisplayName string          `json:"device_display_name"`
				Keys        json.RawMessage `json:"keys"`
			}{DeviceID: "B1", Keys: deviceKeysOf(fedBob, "B1")})
		})
		pos := changedPos()
		update(fedRemote, upd(5, "[4]", "B1", withKeys("B1")))
		seenChange(pos)
		cached("[B1 master]", 1)

		// Covered, then following updates: no fetch.
		update(fedRemote, upd(5, "[4]", "B1", withKeys("B1")))
		pos = changedPos()
		update(fedRemote, upd(6, "[5]", "B2", withKeys("B2")))
		seenChange(pos)
		cached("[B1 B2 master]", 1)
		update(fedRemote, upd(7, "[6]", "B1", `,"deleted":true`))
		cached("[B2 master]", 1)

		// A gap: fetched again.
		fake.set(func(f *fakeDevices) { f.answer.StreamID = 9 })
		update(fedRemote, upd(9, "[8]", "B3", withKeys("B3")))
		cached("[B1 master]", 2)

		// A fetch that fails: the cache is stale and not used.
		fake.set(func(f *fakeDevices) { f.err = errors.New("unreachable") })
		pos = changedPos()
		update(fedRemote, upd(11, "[10]", "B4", withKeys("B4")))
		seenChange(pos)
		cached("[failed]", 3)

		// A signing key update on a stale cache fetches; one on a fresh
		// cache is stored.
		fake.set(func(f *fakeDevices) { f.err, f.answer.StreamID = nil, 11 })
		sku := func(extra string) {
			t.Helper()
			if err := d.HandleSigningKeyUpdate(ctx, fedRemote, json.RawMessage(`{"user_id":"`+fedBob+`"`+extra+`}`)); err != nil {
				t.Fatal(err)
			}
			settle(t, d)
		}
		sku(`,"master_key":` + string(crossKeyOf(fedBob, "master")))
		cached("[B1 master]", 4)
		pos = changedPos()
		sku(`,"self_signing_key":` + string(crossKeyOf(fedBob, "self_signing")))
		seenChange(pos)
		cached("[B1 master self_signing]", 4)
		// A key of the wrong type or user, and another origin's update,
		// are dropped.
		sku(`,"self_signing_key":` + string(crossKeyOf(fedBob, "master")))
		sku(`,"master_key":` + string(crossKeyOf("@eve:remote.example", "master")))
		if err := d.HandleSigningKeyUpdate(ctx, fedOther, json.RawMessage(`{"user_id":"`+fedBob+`"}`)); err != nil {
			t.Fatal(err)
		}
		cached("[B1 master self_signing]", 4)
	})
}
