package syncapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/weft-chat/weft/sql"
)

// Unread notification counts in /sync (spec: sync.yaml unread_notifications
// and unread_thread_notifications; push.md "Receiving notifications" and
// the default rules of v1.19).

// counts is a room's (or a thread's) notification and highlight counts.
type counts struct{ n, h int }

// countsPoll is how long each sync of the counts tests waits for news,
// and countsWithin how long a count may take to reach the client: well
// below countsPoll, so a count that only comes at a sync's timeout (the
// counter did not wake the sync) fails the test.
const (
	countsPoll   = 30 * time.Second
	countsWithin = 15 * time.Second
)

// countsJoined is the part of a joined room the counts tests read.
type countsJoined struct {
	Timeline struct {
		Events []clientEvent `json:"events"`
	} `json:"timeline"`
	UnreadNotifications *struct {
		Highlight     int `json:"highlight_count"`
		Notifications int `json:"notification_count"`
	} `json:"unread_notifications"`
	UnreadThreadNotifications map[string]struct {
		Highlight     int `json:"highlight_count"`
		Notifications int `json:"notification_count"`
	} `json:"unread_thread_notifications"`
}

type countsResp struct {
	NextBatch string `json:"next_batch"`
	Rooms     struct {
		Join map[string]countsJoined `json:"join"`
	} `json:"rooms"`
}

// follower follows one user's /sync as a client does: it keeps each
// room's latest counts (a room missing from a response keeps its counts)
// and the events it has seen.
type follower struct {
	t   *testing.T
	h   hs
	db  *sql.DB
	cli *mautrix.Client
	// threaded syncs with unread_thread_notifications, reading the raw
	// body; otherwise the sync goes through mautrix's own client.
	threaded bool
	since    string
	total    map[string]counts
	threads  map[string]map[string]counts
	seen     map[string]bool
}

func newFollower(t *testing.T, h hs, db *sql.DB, cli *mautrix.Client, threaded bool) *follower {
	t.Helper()
	f := &follower{t: t, h: h, db: db, cli: cli, threaded: threaded,
		total: map[string]counts{}, threads: map[string]map[string]counts{}, seen: map[string]bool{}}
	f.poll(0) // the initial sync
	return f
}

// poll runs one sync (long-polling up to timeout after the first) and
// records what it says.
func (f *follower) poll(timeout time.Duration) {
	f.t.Helper()
	if f.threaded {
		q := url.Values{"timeout": {strconv.FormatInt(timeout.Milliseconds(), 10)},
			"filter": {`{"room":{"timeline":{"unread_thread_notifications":true}}}`}}
		if f.since != "" {
			q.Set("since", f.since)
		}
		var resp countsResp
		f.h.getJSON(f.t, f.cli, "/_matrix/client/v3/sync", q, &resp)
		for roomID, jr := range resp.Rooms.Join {
			for _, e := range jr.Timeline.Events {
				f.seen[e.EventID] = true
			}
			if jr.UnreadNotifications == nil {
				f.t.Fatalf("%s: joined room %s without unread_notifications", f.cli.UserID, roomID)
			}
			f.total[roomID] = counts{jr.UnreadNotifications.Notifications, jr.UnreadNotifications.Highlight}
			th := map[string]counts{}
			for root, c := range jr.UnreadThreadNotifications {
				th[root] = counts{c.Notifications, c.Highlight}
			}
			f.threads[roomID] = th
		}
		f.since = resp.NextBatch
		return
	}
	resp, err := f.cli.FullSyncRequest(context.Background(), mautrix.ReqSync{Since: f.since, Timeout: int(timeout.Milliseconds())})
	if err != nil {
		f.t.Fatalf("%s syncs: %v", f.cli.UserID, err)
	}
	for roomID, jr := range resp.Rooms.Join {
		for _, e := range jr.Timeline.Events {
			f.seen[e.ID.String()] = true
		}
		if jr.UnreadNotifications == nil {
			f.t.Fatalf("%s: joined room %s without unread_notifications", f.cli.UserID, roomID)
		}
		f.total[roomID.String()] = counts{jr.UnreadNotifications.NotificationCount, jr.UnreadNotifications.HighlightCount}
	}
	f.since = resp.NextBatch
}

// expect syncs until the client has seen eventID and the room's counts
// are want (and, for a threaded follower, its threads' are threads),
// failing when that takes longer than countsWithin. Then, once the
// counter has counted the event, one more sync checks that the counts
// stay there.
func (f *follower) expect(what, roomID, eventID string, want counts, threads map[string]counts) {
	f.t.Helper()
	ok := func() bool {
		if !f.seen[eventID] || f.total[roomID] != want {
			return false
		}
		if !f.threaded {
			return true
		}
		got := f.threads[roomID]
		if len(got) != len(threads) {
			return false
		}
		for root, c := range threads {
			if got[root] != c {
				return false
			}
		}
		return true
	}
	start := time.Now()
	for !ok() {
		if time.Since(start) > countsWithin {
			f.t.Fatalf("%s: %s has counts %v threads %v (saw the event: %v) after %s; want %v %v",
				what, f.cli.UserID, f.total[roomID], f.threads[roomID], f.seen[eventID], time.Since(start), want, threads)
		}
		f.poll(countsPoll)
	}
	waitCounted(f.t, f.db, roomID, eventID)
	f.poll(0)
	if !ok() {
		f.t.Fatalf("%s: %s's counts moved on to %v threads %v; want %v %v", what, f.cli.UserID, f.total[roomID], f.threads[roomID], want, threads)
	}
}

// waitCounted waits until the push counter has counted an event.
func waitCounted(t *testing.T, db *sql.DB, roomID, eventID string) {
	t.Helper()
	ctx := context.Background()
	ev, err := db.EventByID(ctx, eventID)
	if err != nil {
		t.Fatalf("event %s: %v", eventID, err)
	}
	for deadline := time.Now().Add(countsWithin); ; {
		pos, err := db.PushCountedUpTo(ctx, roomID)
		if err != nil {
			t.Fatal(err)
		}
		if pos >= ev.StreamPos {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("event %s not counted", eventID)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// openDB opens a second connection to the test server's database.
func openDB(t *testing.T, h hs) *sql.DB {
	t.Helper()
	db, err := sql.Open(context.Background(), h.Config.Database.URL, 2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// putJSON sends an authenticated PUT, expecting 200.
func (h hs) putJSON(t *testing.T, cli *mautrix.Client, path string, body any) {
	t.Helper()
	data, _ := json.Marshal(body)
	req, err := http.NewRequest(http.MethodPut, h.ClientURL+path, strings.NewReader(string(data)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+cli.AccessToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("PUT %s: %d", path, resp.StatusCode)
	}
}

func mentions(userIDs ...string) map[string]any {
	return map[string]any{"m.mentions": map[string]any{"user_ids": userIDs}}
}

var noMentions = map[string]any{"m.mentions": map[string]any{}}

// TestSyncUnreadCountsGroup follows bob's /sync through mautrix in a room
// of three while the default rules decide what notifies him.
func TestSyncUnreadCountsGroup(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		ctx := context.Background()
		db := openDB(t, h)
		alice, bob, carol := h.user(t, "alice"), h.user(t, "bob"), h.user(t, "carol")
		room := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat"})
		for _, c := range []*mautrix.Client{bob, carol} {
			invite(t, alice, room, c)
			join(t, c, room)
		}
		// The invite notified bob, and his join read it: at once, even
		// when the counter has not counted the join yet.
		bf := newFollower(t, h, db, bob, false)
		if got, ok := bf.total[room]; !ok || got != (counts{}) {
			t.Fatalf("initial sync: room counts %v (present %v), want zeros", got, ok)
		}

		// .m.rule.message: an ordinary message in a room of three.
		ev := send(t, alice, room, "hello", noMentions)
		bf.expect("message", room, ev, counts{1, 0}, nil)
		// .m.rule.is_user_mention: highlights.
		ev = send(t, alice, room, "bob, look", mentions(bob.UserID.String()))
		bf.expect("mention by user id", room, ev, counts{2, 1}, nil)
		// .m.rule.is_room_mention needs the sender to have the
		// notifications.room power (50): carol has 0, so her @room only
		// notifies (.m.rule.message)...
		ev = send(t, carol, room, "everyone!", map[string]any{"m.mentions": map[string]any{"room": true}})
		bf.expect("@room without power", room, ev, counts{3, 1}, nil)
		// ...and alice's, the creator's, highlights.
		ev = send(t, alice, room, "everyone!", map[string]any{"m.mentions": map[string]any{"room": true}})
		bf.expect("@room with power", room, ev, counts{4, 2}, nil)
		// .m.rule.suppress_notices: no change.
		ev = sendType(t, alice, room, msgType, "bot", map[string]any{"msgtype": "m.notice", "m.mentions": map[string]any{}})
		bf.expect("notice", room, ev, counts{4, 2}, nil)

		// A redaction takes its event's notification back.
		gone := send(t, alice, room, "oops", noMentions)
		bf.expect("before redaction", room, gone, counts{5, 2}, nil)
		red, err := alice.RedactEvent(ctx, id.RoomID(room), id.EventID(gone))
		if err != nil {
			t.Fatal(err)
		}
		bf.expect("redaction", room, red.EventID.String(), counts{4, 2}, nil)

		// Sending an event reads everything before it.
		ev = send(t, bob, room, "ok, read", noMentions)
		bf.expect("own event", room, ev, counts{0, 0}, nil)
		ev = send(t, alice, room, "again", noMentions)
		bf.expect("after own event", room, ev, counts{1, 0}, nil)

		// An m.read receipt reads the room up to its event; the receipt
		// puts the room in bob's sync, with the counts.
		if err := bob.MarkRead(ctx, id.RoomID(room), id.EventID(ev)); err != nil {
			t.Fatal(err)
		}
		bf.expect("m.read receipt", room, ev, counts{0, 0}, nil)
		// So does m.read.private, which only bob sees.
		first := send(t, alice, room, "one", noMentions)
		ev = send(t, alice, room, "two", mentions(bob.UserID.String()))
		bf.expect("before the private receipt", room, ev, counts{2, 1}, nil)
		if err := bob.SendReceipt(ctx, id.RoomID(room), id.EventID(first), event.ReceiptTypeReadPrivate, nil); err != nil {
			t.Fatal(err)
		}
		bf.expect("m.read.private receipt", room, ev, counts{1, 1}, nil)
	})
}

// TestSyncUnreadCountsDirect checks the one-to-one rules in a room of
// two: dave turns .m.rule.message and .m.rule.encrypted off, so what still
// notifies him is .m.rule.room_one_to_one and
// .m.rule.encrypted_room_one_to_one.
func TestSyncUnreadCountsDirect(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		db := openDB(t, h)
		alice, dave := h.user(t, "alice"), h.user(t, "dave")
		for _, rule := range []string{".m.rule.message", ".m.rule.encrypted"} {
			h.putJSON(t, dave, "/_matrix/client/v3/pushrules/global/underride/"+rule+"/enabled", map[string]any{"enabled": false})
		}
		dm := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "trusted_private_chat", IsDirect: true})
		invite(t, alice, dm, dave)
		join(t, dave, dm)
		// A room of three with the same rules: nothing notifies.
		group := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat"})
		carol := h.user(t, "carol")
		for _, c := range []*mautrix.Client{dave, carol} {
			invite(t, alice, group, c)
			join(t, c, group)
		}
		df := newFollower(t, h, db, dave, false)

		ev := send(t, alice, dm, "hi dave", noMentions)
		df.expect("DM message", dm, ev, counts{1, 0}, nil)
		encrypted := map[string]any{"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "x", "session_id": "s", "sender_key": "k", "device_id": "D"}
		resp, err := alice.SendMessageEvent(context.Background(), id.RoomID(dm), event.EventEncrypted, encrypted)
		if err != nil {
			t.Fatal(err)
		}
		df.expect("encrypted DM", dm, resp.EventID.String(), counts{2, 0}, nil)

		ev = send(t, alice, group, "hi all", noMentions)
		df.expect("group message", group, ev, counts{0, 0}, nil)
		resp, err = alice.SendMessageEvent(context.Background(), id.RoomID(group), event.EventEncrypted, encrypted)
		if err != nil {
			t.Fatal(err)
		}
		df.expect("encrypted group message", group, resp.EventID.String(), counts{0, 0}, nil)
		// The DM kept its counts.
		if df.total[dm] != (counts{2, 0}) {
			t.Errorf("DM counts %v, want {2 0}", df.total[dm])
		}
	})
}

// TestSyncUnreadCountsWake checks that a count reaches a waiting sync
// without waiting for its timeout, even when the sync that served the
// event answered before the counter counted it: the counter's wake-up
// answers the next one.
func TestSyncUnreadCountsWake(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		db := openDB(t, h)
		alice, bob := h.user(t, "alice"), h.user(t, "bob")
		room := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat"})
		carol := h.user(t, "carol")
		for _, c := range []*mautrix.Client{bob, carol} {
			invite(t, alice, room, c)
			join(t, c, room)
		}
		bf := newFollower(t, h, db, bob, false)
		for i := range 5 {
			start := time.Now()
			waiting := make(chan struct{})
			var ev string
			go func() {
				defer close(waiting)
				// Let bob's sync start waiting first.
				time.Sleep(100 * time.Millisecond)
				resp, err := alice.SendMessageEvent(context.Background(), id.RoomID(room), msgType,
					map[string]any{"msgtype": "m.text", "body": "ping", "m.mentions": map[string]any{}})
				if err == nil {
					ev = resp.EventID.String()
				}
			}()
			bf.poll(countsPoll)
			<-waiting
			if ev == "" {
				t.Fatal("alice could not send")
			}
			bf.expect("ping "+strconv.Itoa(i), room, ev, counts{i + 1, 0}, nil)
			if took := time.Since(start); took > countsWithin {
				t.Fatalf("ping %d: the count took %s", i, took)
			}
		}
	})
}

// TestSyncUnreadThreadCounts checks per-thread counts: with the timeline
// filter's unread_thread_notifications, unread_notifications counts the
// main timeline and unread_thread_notifications each thread by root;
// without it, unread_notifications counts them all.
func TestSyncUnreadThreadCounts(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		ctx := context.Background()
		db := openDB(t, h)
		alice, bob, carol := h.user(t, "alice"), h.user(t, "bob"), h.user(t, "carol")
		room := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat"})
		for _, c := range []*mautrix.Client{bob, carol} {
			invite(t, alice, room, c)
			join(t, c, room)
		}
		bf := newFollower(t, h, db, bob, true)
		inThread := func(root string, extra map[string]any) map[string]any {
			m := map[string]any{"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": root}, "m.mentions": map[string]any{}}
			for k, v := range extra {
				m[k] = v
			}
			return m
		}

		root := send(t, alice, room, "root", noMentions)
		bf.expect("root", room, root, counts{1, 0}, nil)
		ev := send(t, carol, room, "reply", inThread(root, nil))
		bf.expect("thread reply", room, ev, counts{1, 0}, map[string]counts{root: {1, 0}})
		mention := send(t, alice, room, "bob?", inThread(root, mentions(bob.UserID.String())))
		bf.expect("thread mention", room, mention, counts{1, 0}, map[string]counts{root: {2, 1}})
		root2 := send(t, alice, room, "second root", noMentions)
		last := send(t, carol, room, "second reply", inThread(root2, nil))
		bf.expect("second thread", room, last, counts{2, 0}, map[string]counts{root: {2, 1}, root2: {1, 0}})

		// Without the flag, the total.
		var plain countsResp
		h.getJSON(t, bob, "/_matrix/client/v3/sync", nil, &plain)
		if c := plain.Rooms.Join[room].UnreadNotifications; c == nil || c.Notifications != 5 || c.Highlight != 1 || plain.Rooms.Join[room].UnreadThreadNotifications != nil {
			t.Errorf("unthreaded sync: %+v %+v; want 5 notifications, 1 highlight, no thread counts", c, plain.Rooms.Join[room].UnreadThreadNotifications)
		}

		// A threaded receipt for the main timeline reads it alone...
		if err := bob.SendReceipt(ctx, id.RoomID(room), id.EventID(root2), event.ReceiptTypeRead, map[string]any{"thread_id": "main"}); err != nil {
			t.Fatal(err)
		}
		bf.expect("main receipt", room, last, counts{0, 0}, map[string]counts{root: {2, 1}, root2: {1, 0}})
		// ...one in a thread that thread alone, which then has no counts
		// left and drops out of the object...
		if err := bob.SendReceipt(ctx, id.RoomID(room), id.EventID(mention), event.ReceiptTypeRead, map[string]any{"thread_id": root}); err != nil {
			t.Fatal(err)
		}
		bf.expect("thread receipt", room, last, counts{0, 0}, map[string]counts{root2: {1, 0}})
		// ...and bob's own reply in the other thread reads that one.
		ev = send(t, bob, room, "my answer", inThread(root2, nil))
		bf.expect("own thread reply", room, ev, counts{0, 0}, nil)
	})
}

// countsOnly reports whether a sync response holds nothing but unread
// counts: what the push counter's wake-up answers when it counts an event
// after the sync that served it.
func countsOnly(r syncResp) bool {
	if r.Rooms == nil || len(r.Rooms.Join) == 0 || len(r.Rooms.Invite)+len(r.Rooms.Knock)+len(r.Rooms.Leave) > 0 ||
		r.AccountData != nil || r.ToDevice != nil || r.DeviceLists != nil || r.Presence != nil {
		return false
	}
	for _, j := range r.Rooms.Join {
		if len(j.Timeline.Events) > 0 || (j.State != nil && len(j.State.Events) > 0) ||
			(j.Ephemeral != nil && len(j.Ephemeral.Events) > 0) || (j.AccountData != nil && len(j.AccountData.Events) > 0) ||
			j.UnreadNotifications == nil {
			return false
		}
	}
	return true
}
