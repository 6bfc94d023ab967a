package syncapi_test

import (
	"context"
	"encoding/json"
	"net/url"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// ephemeralEvent is an event of a joined room's ephemeral section.
type ephemeralEvent struct {
	Type    string          `json:"type"`
	Content json.RawMessage `json:"content"`
}

// receiptsView is an m.receipt content: event id, receipt type, user.
type receiptsView map[string]map[string]map[string]struct {
	TS       int64  `json:"ts"`
	ThreadID string `json:"thread_id"`
}

// ephemeral returns a joined room's ephemeral events (nil when the room
// is not in the response).
func ephemeral(t *testing.T, r syncResp, roomID string) []ephemeralEvent {
	t.Helper()
	j, ok := r.joined(roomID)
	if !ok {
		return nil
	}
	if j.Ephemeral == nil {
		t.Fatalf("joined room %s without an ephemeral section", roomID)
	}
	var out []ephemeralEvent
	for _, raw := range j.Ephemeral.Events {
		var e ephemeralEvent
		if err := json.Unmarshal(raw, &e); err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
	return out
}

// typingOf returns the m.typing user list of a room in a response, and
// whether there was one; it fails on more than one.
func typingOf(t *testing.T, r syncResp, roomID string) ([]string, bool) {
	t.Helper()
	var users []string
	found := false
	for _, e := range ephemeral(t, r, roomID) {
		if e.Type != "m.typing" {
			continue
		}
		if found {
			t.Fatalf("two m.typing events in %s", roomID)
		}
		found = true
		var c struct {
			UserIDs []string `json:"user_ids"`
		}
		if err := json.Unmarshal(e.Content, &c); err != nil || c.UserIDs == nil {
			t.Fatalf("m.typing content %s: %v (user_ids is required)", e.Content, err)
		}
		users = c.UserIDs
	}
	slices.Sort(users)
	return users, found
}

// receiptsOf returns the m.receipt content of a room in a response (nil
// when there is none); it fails on more than one.
func receiptsOf(t *testing.T, r syncResp, roomID string) receiptsView {
	t.Helper()
	var out receiptsView
	for _, e := range ephemeral(t, r, roomID) {
		if e.Type != "m.receipt" {
			continue
		}
		if out != nil {
			t.Fatalf("two m.receipt events in %s", roomID)
		}
		if err := json.Unmarshal(e.Content, &out); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// has reports whether the content holds user's receipt of typ on eventID.
func (v receiptsView) has(eventID, typ, user string) bool {
	_, ok := v[eventID][typ][user]
	return ok
}

// hasType reports whether any receipt of typ is in the content.
func (v receiptsView) hasType(typ string) bool {
	for _, byType := range v {
		if _, ok := byType[typ]; ok {
			return true
		}
	}
	return false
}

func typing(t *testing.T, cli *mautrix.Client, roomID string, on bool, timeout time.Duration) {
	t.Helper()
	if _, err := cli.UserTyping(context.Background(), id.RoomID(roomID), on, timeout); err != nil {
		t.Fatalf("%s typing %v: %v", cli.UserID, on, err)
	}
}

func receipt(t *testing.T, cli *mautrix.Client, roomID, eventID string, typ event.ReceiptType, body any) {
	t.Helper()
	if body == nil {
		body = struct{}{}
	}
	if err := cli.SendReceipt(context.Background(), id.RoomID(roomID), id.EventID(eventID), typ, body); err != nil {
		t.Fatalf("%s %s receipt: %v", cli.UserID, typ, err)
	}
}

func TestSyncTyping(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		alice, bob := h.user(t, "alice"), h.user(t, "bob")
		room := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		quiet := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		join(t, bob, room)
		join(t, bob, quiet)

		first := h.sync(t, bob, nil)
		if _, ok := typingOf(t, first, room); ok {
			t.Fatal("m.typing in an initial sync with nobody typing")
		}
		typing(t, alice, room, true, 30*time.Second)
		r1 := h.syncSince(t, bob, first.NextBatch)
		if users, ok := typingOf(t, r1, room); !ok || !slices.Equal(users, []string{alice.UserID.String()}) {
			t.Fatalf("after alice started: %v %v", users, ok)
		}
		if _, ok := r1.joined(quiet); ok {
			t.Fatal("the other room came with the typing of this one")
		}
		// Exactly once: the next window has nothing.
		if r := h.syncSince(t, bob, r1.NextBatch); !r.noRooms() {
			t.Fatalf("the typing came again: %+v", r.Rooms)
		}
		// Renewing changes nothing anyone sees.
		typing(t, alice, room, true, 30*time.Second)
		if r := h.syncSince(t, bob, r1.NextBatch); !r.noRooms() {
			t.Fatalf("a renewal came down: %+v", r.Rooms)
		}
		// Initial syncs list who types now, alice's own included (as
		// Synapse does).
		for _, cli := range []*mautrix.Client{alice, bob} {
			if users, ok := typingOf(t, h.sync(t, cli, nil), room); !ok || !slices.Equal(users, []string{alice.UserID.String()}) {
				t.Fatalf("%s's initial sync: %v %v", cli.UserID, users, ok)
			}
		}
		typing(t, bob, room, true, 30*time.Second)
		typing(t, alice, room, false, 0)
		r2 := h.syncSince(t, bob, r1.NextBatch)
		if users, ok := typingOf(t, r2, room); !ok || !slices.Equal(users, []string{bob.UserID.String()}) {
			t.Fatalf("after alice stopped: %v %v", users, ok)
		}
		typing(t, bob, room, false, 0)
		r3 := h.syncSince(t, bob, r2.NextBatch)
		if users, ok := typingOf(t, r3, room); !ok || len(users) != 0 {
			t.Fatalf("after both stopped: %v %v", users, ok)
		}

		// A long-poll wakes on a start, then on the expiry, which comes
		// down as an empty list.
		wait := h.syncAsync(t, bob, r3.NextBatch, 20*time.Second)
		stillWaiting(t, wait, "before typing")
		typing(t, alice, room, true, 700*time.Millisecond)
		r4 := await(t, wait, 5*time.Second).resp
		if users, ok := typingOf(t, r4, room); !ok || !slices.Equal(users, []string{alice.UserID.String()}) {
			t.Fatalf("woken by the start: %v %v", users, ok)
		}
		start := time.Now()
		r5 := await(t, h.syncAsync(t, bob, r4.NextBatch, 20*time.Second), 10*time.Second)
		if users, ok := typingOf(t, r5.resp, room); !ok || len(users) != 0 {
			t.Fatalf("woken by the expiry: %v %v", users, ok)
		}
		if since := time.Since(start); since > 8*time.Second {
			t.Fatalf("the expiry came after %s", since)
		}
	})
}

func TestSyncReceipts(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		alice, bob := h.user(t, "alice"), h.user(t, "bob")
		room := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		other := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		join(t, bob, room)
		join(t, bob, other)
		e1 := send(t, alice, room, "one", nil)
		a0 := h.sync(t, alice, nil)
		b0 := h.sync(t, bob, nil)

		receipt(t, bob, room, e1, event.ReceiptTypeRead, nil)
		a1 := h.syncSince(t, alice, a0.NextBatch)
		got := receiptsOf(t, a1, room)
		if !got.has(e1, "m.read", bob.UserID.String()) || got[e1]["m.read"][bob.UserID.String()].TS == 0 {
			t.Fatalf("alice's receipts after bob's m.read: %v", got)
		}
		if got[e1]["m.read"][bob.UserID.String()].ThreadID != "" {
			t.Fatal("an unthreaded receipt came with a thread_id")
		}
		if _, ok := a1.joined(other); ok {
			t.Fatal("the other room came with this one's receipt")
		}
		// Exactly once.
		if r := h.syncSince(t, alice, a1.NextBatch); !r.noRooms() {
			t.Fatalf("the receipt came again: %+v", r.Rooms)
		}

		// A private receipt reaches bob's syncs, never alice's.
		e2 := send(t, alice, room, "two", nil)
		a2 := h.syncSince(t, alice, a1.NextBatch)
		receipt(t, bob, room, e2, event.ReceiptTypeReadPrivate, nil)
		a3 := h.syncSince(t, alice, a2.NextBatch)
		if got := receiptsOf(t, a3, room); got.hasType("m.read.private") {
			t.Fatalf("alice got bob's private receipt: %v", got)
		}
		if got := receiptsOf(t, h.sync(t, alice, nil), room); got.hasType("m.read.private") || !got.has(e1, "m.read", bob.UserID.String()) {
			t.Fatalf("alice's initial sync: %v", got)
		}
		b1 := h.syncSince(t, bob, b0.NextBatch)
		if got := receiptsOf(t, b1, room); !got.has(e2, "m.read.private", bob.UserID.String()) || !got.has(e1, "m.read", bob.UserID.String()) {
			t.Fatalf("bob's incremental sync: %v", got)
		}
		if got := receiptsOf(t, h.sync(t, bob, nil), room); !got.has(e2, "m.read.private", bob.UserID.String()) {
			t.Fatalf("bob's initial sync: %v", got)
		}

		// A threaded receipt carries its thread; a long-poll wakes on a
		// receipt.
		wait := h.syncAsync(t, alice, a3.NextBatch, 20*time.Second)
		stillWaiting(t, wait, "before the receipt")
		receipt(t, bob, room, e2, event.ReceiptTypeRead, map[string]string{"thread_id": "main"})
		a4 := await(t, wait, 5*time.Second).resp
		if got := receiptsOf(t, a4, room); got[e2]["m.read"][bob.UserID.String()].ThreadID != "main" {
			t.Fatalf("threaded receipt: %v", got)
		}
		// Bob's private receipt wakes nobody but him: alice's long-poll
		// sleeps through it.
		e3 := send(t, alice, room, "three", nil)
		a5 := h.syncSince(t, alice, a4.NextBatch)
		wait = h.syncAsync(t, alice, a5.NextBatch, 20*time.Second)
		stillWaiting(t, wait, "before the private receipt")
		receipt(t, bob, room, e3, event.ReceiptTypeReadPrivate, nil)
		stillWaiting(t, wait, "after bob's private receipt")
		send(t, bob, room, "four", nil)
		a6 := await(t, wait, 5*time.Second).resp
		if got := receiptsOf(t, a6, room); got.hasType("m.read.private") {
			t.Fatalf("alice got bob's private receipt: %v", got)
		}
	})
}

func TestSyncEphemeralFilters(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		alice, bob, carol := h.user(t, "alice"), h.user(t, "bob"), h.user(t, "carol")
		room := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		join(t, bob, room)
		join(t, carol, room)
		ev := send(t, alice, room, "hello", nil)
		receipt(t, bob, room, ev, event.ReceiptTypeRead, nil)
		receipt(t, carol, room, ev, event.ReceiptTypeRead, nil)
		typing(t, carol, room, true, 60*time.Second)
		bobID, carolID := bob.UserID.String(), carol.UserID.String()

		initial := func(eph map[string]any) syncResp {
			t.Helper()
			return h.sync(t, alice, url.Values{"filter": {filterJSON(map[string]any{"room": map[string]any{"ephemeral": eph}})}})
		}
		types := func(r syncResp) []string {
			var out []string
			for _, e := range ephemeral(t, r, room) {
				out = append(out, e.Type)
			}
			return out
		}
		if got := types(initial(map[string]any{})); !slices.Equal(got, []string{"m.typing", "m.receipt"}) {
			t.Fatalf("no filter: %v", got)
		}
		if got := types(initial(map[string]any{"not_types": []string{"m.receipt"}})); !slices.Equal(got, []string{"m.typing"}) {
			t.Fatalf("not_types m.receipt: %v", got)
		}
		if got := types(initial(map[string]any{"types": []string{"m.rec*"}})); !slices.Equal(got, []string{"m.receipt"}) {
			t.Fatalf("types m.rec*: %v", got)
		}
		if got := types(initial(map[string]any{"limit": 1})); !slices.Equal(got, []string{"m.typing"}) {
			t.Fatalf("limit 1: %v", got)
		}
		if got := types(initial(map[string]any{"not_rooms": []string{room}})); len(got) != 0 {
			t.Fatalf("not_rooms: %v", got)
		}
		// Senders apply to the users the events are about.
		r := initial(map[string]any{"senders": []string{bobID}})
		if got := receiptsOf(t, r, room); !got.has(ev, "m.read", bobID) || got.has(ev, "m.read", carolID) {
			t.Fatalf("senders bob: %v", got)
		}
		if _, ok := typingOf(t, r, room); ok {
			t.Fatal("senders bob: carol's typing came down")
		}
		r = initial(map[string]any{"not_senders": []string{bobID}})
		if got := receiptsOf(t, r, room); got.has(ev, "m.read", bobID) || !got.has(ev, "m.read", carolID) {
			t.Fatalf("not_senders bob: %v", got)
		}
		if users, _ := typingOf(t, r, room); !slices.Equal(users, []string{carolID}) {
			t.Fatalf("not_senders bob: typing %v", users)
		}

		// Ignored users are left out of both.
		if err := alice.SetAccountData(context.Background(), "m.ignored_user_list",
			map[string]any{"ignored_users": map[string]any{carolID: map[string]any{}}}); err != nil {
			t.Fatal(err)
		}
		r = h.sync(t, alice, nil)
		if got := receiptsOf(t, r, room); got.has(ev, "m.read", carolID) || !got.has(ev, "m.read", bobID) {
			t.Fatalf("with carol ignored: %v", got)
		}
		if _, ok := typingOf(t, r, room); ok {
			t.Fatal("with carol ignored: her typing came down")
		}
		// In an incremental sync the typing change comes as a list without her.
		typing(t, bob, room, true, 60*time.Second)
		inc := h.syncSince(t, alice, r.NextBatch)
		if users, ok := typingOf(t, inc, room); !ok || !slices.Equal(users, []string{bobID}) {
			t.Fatalf("incremental with carol ignored: %v %v", users, ok)
		}
	})
}
