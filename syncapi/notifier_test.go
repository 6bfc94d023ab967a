package syncapi

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/weft-chat/weft/internal/wake"
	"github.com/weft-chat/weft/roomserver"
	"github.com/weft-chat/weft/sql"
)

// fakeMemberships serves memberships from a map, optionally failing.
type fakeMemberships struct {
	mu    sync.Mutex
	rows  map[string][]sql.SyncMembership
	fail  error
	loads int
}

func (f *fakeMemberships) SyncMemberships(_ context.Context, userID string) ([]sql.SyncMembership, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.loads++
	if f.fail != nil {
		return nil, f.fail
	}
	return f.rows[userID], nil
}

func woken(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func member(room, user, membership string, pos int64) roomserver.OutputEvent {
	return roomserver.OutputEvent{RoomID: room, EventID: "$m" + user, StreamPos: pos, Type: "m.room.member", StateKey: &user, Sender: user, Membership: membership}
}

func message(room string, pos int64) roomserver.OutputEvent {
	return roomserver.OutputEvent{RoomID: room, EventID: "$x", StreamPos: pos, Type: "m.room.message", Sender: "@someone:x"}
}

func listen(t *testing.T, n *Notifier, user string) (<-chan struct{}, func()) {
	t.Helper()
	w, release, err := n.Listen(context.Background(), user)
	if err != nil {
		t.Fatal(err)
	}
	return w, release
}

// TestNotifierWakesOnlyMembers: an event wakes the syncs of the room's
// joined and invited users and nobody else; a membership event wakes its
// target, also for a room they were not in (an invite); after a leave the
// room's events no longer wake the user.
func TestNotifierWakesOnlyMembers(t *testing.T) {
	db := &fakeMemberships{rows: map[string][]sql.SyncMembership{
		"@a:x": {{RoomID: "!r1:x", Membership: "join", StreamPos: 5}, {RoomID: "!old:x", Membership: "leave", StreamPos: 3}},
		"@b:x": {{RoomID: "!r2:x", Membership: "invite", StreamPos: 6}},
	}}
	n := NewNotifier(db, slog.New(slog.DiscardHandler))
	wa, ra := listen(t, n, "@a:x")
	wb, rb := listen(t, n, "@b:x")
	defer ra()
	defer rb()

	n.OnRoomEvent(message("!old:x", 10))
	n.OnRoomEvent(message("!elsewhere:x", 11))
	if woken(wa) || woken(wb) {
		t.Fatal("events in rooms the users are not in woke them")
	}
	n.OnRoomEvent(message("!r1:x", 12))
	if !woken(wa) || woken(wb) {
		t.Fatalf("message in !r1: a woken %v (want true), b woken %v (want false)", woken(wa), woken(wb))
	}
	n.OnRoomEvent(message("!r2:x", 13))
	if !woken(wb) {
		t.Fatal("an invited user was not woken by their room's event")
	}

	// An invite to a new room wakes a, and then that room's events do.
	wa2, ra2 := listen(t, n, "@a:x")
	defer ra2()
	n.OnRoomEvent(member("!new:x", "@a:x", "invite", 14))
	if !woken(wa2) {
		t.Fatal("an invite did not wake its target")
	}
	wa3, ra3 := listen(t, n, "@a:x")
	defer ra3()
	n.OnRoomEvent(message("!new:x", 15))
	if !woken(wa3) {
		t.Fatal("an event in a room the user was invited to did not wake them")
	}

	// Leaving wakes the user once, then the room is silent for them.
	wa4, ra4 := listen(t, n, "@a:x")
	defer ra4()
	n.OnRoomEvent(member("!r1:x", "@a:x", "leave", 16))
	if !woken(wa4) {
		t.Fatal("the user's own leave did not wake them")
	}
	wa5, ra5 := listen(t, n, "@a:x")
	defer ra5()
	n.OnRoomEvent(message("!r1:x", 17))
	if woken(wa5) {
		t.Fatal("an event in a room the user left woke them")
	}

	// Account data wakes its owner only.
	n.Wake(wake.Message{Users: []string{"@a:x"}})
	if !woken(wa5) {
		t.Fatal("Wake did not wake the user")
	}
}

// TestNotifierOrderIndependent: the database load and the stream may
// deliver memberships in either order; the newest position wins.
func TestNotifierOrderIndependent(t *testing.T) {
	db := &fakeMemberships{rows: map[string][]sql.SyncMembership{
		"@a:x": {{RoomID: "!r:x", Membership: "join", StreamPos: 20}},
	}}
	n := NewNotifier(db, slog.New(slog.DiscardHandler))
	w, release := listen(t, n, "@a:x")
	defer release()
	// A leave older than the join the database gave arrives late.
	n.OnRoomEvent(member("!r:x", "@a:x", "leave", 10))
	w2, release2 := listen(t, n, "@a:x")
	defer release2()
	_ = w
	n.OnRoomEvent(message("!r:x", 21))
	if !woken(w2) {
		t.Fatal("a stale leave from the stream undid the newer join from the database")
	}
}

// TestNotifierLoadFailure: a failed load fails the sync and is retried
// by the next one.
func TestNotifierLoadFailure(t *testing.T) {
	db := &fakeMemberships{fail: errors.New("db down")}
	n := NewNotifier(db, slog.New(slog.DiscardHandler))
	if _, _, err := n.Listen(context.Background(), "@a:x"); err == nil {
		t.Fatal("Listen succeeded with a failing database")
	}
	db.mu.Lock()
	db.fail = nil
	db.rows = map[string][]sql.SyncMembership{"@a:x": {{RoomID: "!r:x", Membership: "join", StreamPos: 1}}}
	db.mu.Unlock()
	w, release := listen(t, n, "@a:x")
	defer release()
	n.OnRoomEvent(message("!r:x", 2))
	if !woken(w) {
		t.Fatal("the retried load did not index the user's room")
	}
	if db.loads != 2 {
		t.Fatalf("%d loads, want 2", db.loads)
	}
	// A second listener of a loaded user does not read the database again.
	_, r2 := listen(t, n, "@a:x")
	r2()
	if db.loads != 2 {
		t.Fatalf("%d loads after a second Listen, want 2", db.loads)
	}
}

// TestNotifierClose: Close ends every wait and later Listens see it.
func TestNotifierClose(t *testing.T) {
	n := NewNotifier(&fakeMemberships{}, slog.New(slog.DiscardHandler))
	_, release := listen(t, n, "@a:x")
	defer release()
	n.Close()
	n.Close()
	if !woken(n.Done()) {
		t.Fatal("Done not closed after Close")
	}
}

// TestNotifierForgetsIdleUsers: past the bound, users nobody syncs for
// are forgotten (with their room index entries), users with a waiting
// sync are kept.
func TestNotifierForgetsIdleUsers(t *testing.T) {
	db := &fakeMemberships{rows: map[string][]sql.SyncMembership{
		"@busy:x": {{RoomID: "!r:x", Membership: "join", StreamPos: 1}},
		"@idle:x": {{RoomID: "!r:x", Membership: "join", StreamPos: 2}},
	}}
	n := NewNotifier(db, slog.New(slog.DiscardHandler))
	w, release := listen(t, n, "@busy:x")
	defer release()
	_, r := listen(t, n, "@idle:x")
	r()
	n.mu.Lock()
	n.forgetIdleLocked()
	_, idleKept := n.users["@idle:x"]
	_, idleIndexed := n.rooms["!r:x"]["@idle:x"]
	n.mu.Unlock()
	if idleKept || idleIndexed {
		t.Fatal("an idle user was kept")
	}
	n.OnRoomEvent(message("!r:x", 3))
	if !woken(w) {
		t.Fatal("a user with a waiting sync was forgotten")
	}
}

// TestNotifierWaitsForCounts: fed by the counter, the notifier holds a
// room event's wake-up until the room is counted up to it, so members sync
// once for the event and its counts; it wakes at once for what is counted
// already; a counter that misses the deadline is not waited for again
// until it catches up.
func TestNotifierWaitsForCounts(t *testing.T) {
	db := &fakeMemberships{rows: map[string][]sql.SyncMembership{
		"@a:x": {{RoomID: "!r:x", Membership: "join", StreamPos: 1}},
	}}
	n := NewNotifier(db, slog.New(slog.DiscardHandler))
	n.countWait = time.Hour
	defer n.Close()

	w, release := listen(t, n, "@a:x")
	n.OnRoomEvent(message("!r:x", 10))
	n.OnRoomEvent(message("!r:x", 11))
	n.OnCounted("!r:x", 10, nil)
	if woken(w) {
		t.Fatal("woken before the counter counted the newest event")
	}
	n.OnCounted("!other:x", 11, nil)
	if woken(w) {
		t.Fatal("woken by another room's count")
	}
	n.OnCounted("!r:x", 11, nil)
	if !woken(w) {
		t.Fatal("not woken once the room was counted")
	}
	release()

	// Counted before the notifier sees the event (they travel apart).
	w, release = listen(t, n, "@a:x")
	n.OnCounted("!r:x", 12, nil)
	n.OnRoomEvent(message("!r:x", 12))
	if !woken(w) {
		t.Fatal("an event counted already was held")
	}
	release()

	// An invite's target is held and released with the room.
	w, release = listen(t, n, "@a:x")
	n.OnRoomEvent(member("!new:x", "@a:x", "invite", 13))
	if woken(w) {
		t.Fatal("the invite was not held")
	}
	n.OnCounted("!new:x", 13, nil)
	if !woken(w) {
		t.Fatal("the invite's target was not woken with its room")
	}
	release()

	// A counter that misses the deadline.
	n.mu.Lock()
	n.countWait = 20 * time.Millisecond
	n.mu.Unlock()
	w, release = listen(t, n, "@a:x")
	n.OnRoomEvent(message("!r:x", 14))
	if woken(w) {
		t.Fatal("not held")
	}
	select {
	case <-w:
	case <-time.After(5 * time.Second):
		t.Fatal("not woken after the deadline")
	}
	release()
	w, release = listen(t, n, "@a:x")
	n.OnRoomEvent(message("!r:x", 15))
	if !woken(w) {
		t.Fatal("held while the counter lags")
	}
	release()
	n.OnCounted("!r:x", 15, nil)
	w, release = listen(t, n, "@a:x")
	defer release()
	n.OnRoomEvent(message("!r:x", 16))
	if woken(w) {
		t.Fatal("not held again once the counter caught up")
	}
	n.OnCounted("!r:x", 16, nil)
	if !woken(w) {
		t.Fatal("not woken once counted")
	}
}

// TestNotifierQuiet: a mark stays quiet until a wake-up of its user comes,
// whether or not anyone listens then; ListenFuncIfQuiet registers only on
// a quiet mark, and what it registers is woken as ListenFunc's is. A user
// forgotten and loaded again, or a closed notifier, is never quiet.
func TestNotifierQuiet(t *testing.T) {
	db := &fakeMemberships{rows: map[string][]sql.SyncMembership{
		"@a:x": {{RoomID: "!r:x", Membership: "join", StreamPos: 1}},
	}}
	n := NewNotifier(db, slog.New(slog.DiscardHandler))
	ctx := context.Background()
	release, mark, err := n.ListenFunc(ctx, "@a:x", func() {})
	if err != nil {
		t.Fatal(err)
	}
	release()
	if !n.Quiet("@a:x", mark) || n.Quiet("@b:x", mark) || n.Quiet("@a:x", Mark{}) {
		t.Fatal("Quiet is wrong before any wake-up")
	}
	n.OnRoomEvent(message("!other:x", 2))
	if !n.Quiet("@a:x", mark) {
		t.Fatal("another room's event broke the quiet")
	}
	// Nobody listens: the wake-up still counts.
	n.OnRoomEvent(message("!r:x", 3))
	if n.Quiet("@a:x", mark) {
		t.Fatal("quiet after an event of the user's room")
	}
	if _, ok := n.ListenFuncIfQuiet("@a:x", mark, func() {}); ok {
		t.Fatal("registered on a stale mark")
	}

	got := make(chan struct{}, 1)
	release, mark, err = n.ListenFunc(ctx, "@a:x", func() {})
	if err != nil {
		t.Fatal(err)
	}
	release()
	release, ok := n.ListenFuncIfQuiet("@a:x", mark, func() { got <- struct{}{} })
	if !ok {
		t.Fatal("a fresh mark was not quiet")
	}
	n.Wake(wake.Message{Users: []string{"@a:x"}})
	select {
	case <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("a quiet registration was not woken")
	}
	release()

	_, mark, _ = n.ListenFunc(ctx, "@a:x", func() {})
	n.mu.Lock()
	n.users["@a:x"].listeners = 0
	n.forgetIdleLocked()
	n.mu.Unlock()
	r, _, _ := n.ListenFunc(ctx, "@a:x", func() {})
	defer r()
	if n.Quiet("@a:x", mark) {
		t.Fatal("a mark of a forgotten user is quiet")
	}
	_, mark, _ = n.ListenFunc(ctx, "@a:x", func() {})
	n.Close()
	if n.Quiet("@a:x", mark) {
		t.Fatal("quiet after Close")
	}
}

// TestNotifierCountedUsers: the users an announcement names are woken
// once: a member of the room by the room's released wake-up alone, a user
// outside the room, or any named user when nothing was held, by the name.
func TestNotifierCountedUsers(t *testing.T) {
	db := &fakeMemberships{rows: map[string][]sql.SyncMembership{
		"@a:x": {{RoomID: "!r:x", Membership: "join", StreamPos: 1}},
		"@b:x": {{RoomID: "!s:x", Membership: "join", StreamPos: 1}},
	}}
	n := NewNotifier(db, slog.New(slog.DiscardHandler))
	n.countWait = time.Hour
	defer n.Close()
	ctx := context.Background()
	mark := func(user string) Mark {
		t.Helper()
		release, m, err := n.ListenFunc(ctx, user, func() {})
		if err != nil {
			t.Fatal(err)
		}
		release()
		return m
	}
	gens := func(user string, m Mark) uint64 {
		n.mu.Lock()
		defer n.mu.Unlock()
		return n.users[user].gen - m.gen
	}
	a, b := mark("@a:x"), mark("@b:x")
	n.OnRoomEvent(message("!r:x", 10))
	n.OnCounted("!r:x", 10, []string{"@a:x", "@b:x"})
	if got := gens("@a:x", a); got != 1 {
		t.Errorf("a member was woken %d times, want once", got)
	}
	if got := gens("@b:x", b); got != 1 {
		t.Errorf("a named user outside the room was woken %d times, want once", got)
	}
	// Counted before the event is seen: nothing held, the names wake.
	a = mark("@a:x")
	n.OnCounted("!r:x", 11, []string{"@a:x"})
	if got := gens("@a:x", a); got != 1 {
		t.Errorf("a named member with nothing held was woken %d times, want once", got)
	}
}

// TestNotifierDefersCountWakes: a wake-up for counts alone waits, and any
// other wake-up of its user meanwhile stands for it; one nothing else
// stood for comes at its deadline, once however many changes it covers.
func TestNotifierDefersCountWakes(t *testing.T) {
	newNotifier := func(wait time.Duration) *Notifier {
		db := &fakeMemberships{rows: map[string][]sql.SyncMembership{
			"@a:x": {{RoomID: "!r:x", Membership: "join", StreamPos: 1}},
			"@b:x": {{RoomID: "!s:x", Membership: "join", StreamPos: 1}},
		}}
		n := NewNotifier(db, slog.New(slog.DiscardHandler))
		n.countDefer = wait
		t.Cleanup(n.Close)
		return n
	}
	mark := func(n *Notifier, user string) Mark {
		t.Helper()
		release, m, err := n.ListenFunc(context.Background(), user, func() {})
		if err != nil {
			t.Fatal(err)
		}
		release()
		return m
	}
	gens := func(n *Notifier, user string, m Mark) uint64 {
		n.mu.Lock()
		defer n.mu.Unlock()
		return n.users[user].gen - m.gen
	}

	// Nothing held (the notifier is not fed by a counter): the event
	// woke the room at once, so its counts are news of their own.
	n := newNotifier(time.Hour)
	a, b := mark(n, "@a:x"), mark(n, "@b:x")
	n.OnRoomEvent(message("!r:x", 10))
	n.OnCounted("!r:x", 10, []string{"@a:x"})
	n.OnCounted("!s:x", 11, []string{"@b:x"})
	if got := gens(n, "@a:x", a); got != 1 {
		t.Errorf("a was woken %d times before the deadline, want once (the event)", got)
	}
	if got := gens(n, "@b:x", b); got != 0 {
		t.Errorf("b was woken %d times before the deadline, want none", got)
	}

	// Another wake-up stands for the deferred one.
	n = newNotifier(20 * time.Millisecond)
	b = mark(n, "@b:x")
	n.OnCounted("!s:x", 11, []string{"@b:x"})
	n.OnRoomEvent(message("!s:x", 12))
	time.Sleep(100 * time.Millisecond)
	if got := gens(n, "@b:x", b); got != 1 {
		t.Errorf("b was woken %d times, want once (the event stands for the counts)", got)
	}

	// Nothing stands for it: one wake-up at the deadline.
	a = mark(n, "@a:x")
	w, release := listen(t, n, "@a:x")
	defer release()
	n.OnCounted("!r:x", 14, []string{"@a:x"})
	n.OnCounted("!r:x", 15, []string{"@a:x"})
	select {
	case <-w:
	case <-time.After(5 * time.Second):
		t.Fatal("not woken at the deadline")
	}
	time.Sleep(100 * time.Millisecond)
	if got := gens(n, "@a:x", a); got != 1 {
		t.Errorf("a was woken %d times for two count changes, want once", got)
	}
}
