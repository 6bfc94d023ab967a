package syncapi

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/nats-io/nats.go"

	"github.com/weft-chat/weft/internal/bus"
	"github.com/weft-chat/weft/internal/wake"
	"github.com/weft-chat/weft/push"
	"github.com/weft-chat/weft/roomserver"
	"github.com/weft-chat/weft/sql"
)

// notifierMaxUsers bounds how many users' room lists the notifier keeps.
// Past it, the users with no sync waiting are forgotten (and read again
// from the database at their next sync).
const notifierMaxUsers = 100_000

// countWait bounds how long the wake-up for a room event waits for the
// push counter to have counted it (see Notifier).
const countWait = 20 * time.Millisecond

// countDefer is how long a wake-up for counts alone waits for another
// wake-up of its user to ride along with (see Notifier).
const countDefer = 500 * time.Millisecond

// countedMax bounds the rooms whose counted position the notifier keeps;
// past it, it starts again empty (a room forgotten there waits for its
// next counted signal, or countWait, once).
const countedMax = 100_000

// notifierLoadTimeout bounds reading a user's memberships. The read is
// shared by every sync of the user that arrives meanwhile, so it does not
// end with the request that started it.
const notifierLoadTimeout = 30 * time.Second

// MembershipStore is what the notifier reads (sql.DB has it).
type MembershipStore interface {
	SyncMemberships(ctx context.Context, userID string) ([]sql.SyncMembership, error)
}

// Notifier wakes the long-polling syncs of the users that a change
// concerns, and only theirs: the members (joined or invited) of a room
// with a new event, the target of a membership event (an invite to a room
// they are not in yet), the owner of new account data.
//
// It never tells a sync what changed: a woken sync reads the database,
// which is the truth. So a sync registers (Listen) before it reads, and
// anything that commits after its read wakes it; a wake-up for nothing
// new only costs a read.
//
// The room index (room → users joined or invited) covers the users that
// synced in this process lately, each loaded from the database at their
// first sync and kept up to date from the membership events on
// room.output. Every membership carries the stream position of its event
// and only a newer one replaces it, so the database load and the stream
// may arrive in either order.
//
// A room event changes the unread counts of its room's members too, but
// only once the push counter, which follows room.output on its own, has
// counted it. Waking the members at the event would have them sync twice:
// for the event, then for the counts. So once fed by Start the notifier
// holds the wake-up of a room event until the counter announces the room
// counted up to it (push.CountedSubject), for at most countWait. A counter
// that misses that deadline is lagging: events then wake at once until it
// has caught up, and their counts need wake-ups of their own.
//
// A wake-up for counts alone waits countDefer for another wake-up of its
// user, which serves the counts too (a sync reads them as they stand):
// the room's next event, typically. Under load the counter lags, and
// waking at once for the counts had each member sync twice per event
// (1.86 syncs per delivery in `weft bench rooms`), which slowed the
// counter further.
//
// Lock order: mu is the only lock, and nothing else is locked or awaited
// while it is held.
type Notifier struct {
	db  MembershipStore
	log *slog.Logger

	mu    sync.Mutex
	users map[string]*notifiedUser
	// rooms maps a room id to the users in users who are joined or
	// invited.
	rooms map[string]map[string]struct{}

	// countWait is how long a room event's wake-up waits for the counter;
	// 0 wakes at once (a notifier not fed by Start).
	countWait time.Duration
	// held are the room wake-ups waiting for the counter, by room.
	held map[string]*heldWake
	// counted is the greatest position counted of each room, as
	// announced; lagBehind, when not 0, is a position the counter missed
	// its deadline for and has not announced yet.
	counted   map[string]int64
	lagBehind int64

	// countDefer is how long a wake-up for counts alone waits (0: not
	// at all); deferred are those waiting, in the order they are due,
	// and deferTimer fires when the first is.
	countDefer time.Duration
	deferred   []deferredWake
	deferTimer *time.Timer

	closed    chan struct{}
	closeOnce sync.Once
	stops     []func()
}

// notifiedUser is what the notifier knows of one user.
type notifiedUser struct {
	// rooms is the user's latest known membership of each room.
	rooms map[string]knownMembership
	// wake is closed to wake the user's syncs, then replaced by the next
	// Listen; nil while nobody listens.
	wake chan struct{}
	// funcs are the ListenFunc registrations waiting for the next wake.
	funcs map[*wakeFunc]struct{}
	// listeners counts the syncs between Listen and their release; users
	// with listeners are never forgotten.
	listeners int
	// ready is closed once rooms was loaded from the database (loadErr
	// says whether that worked).
	ready   chan struct{}
	loadErr error
	// gen counts the user's wake-ups, listened for or not (see Mark).
	gen uint64
	// countsDeferred: a wake-up for the user's counts waits in
	// Notifier.deferred, since their last wake-up, which clears it.
	countsDeferred bool
}

// Mark is where a user's wake-ups stood when a sync registered, before
// it read: while no wake-up of the user comes after it, nothing the user
// would see has committed since that read (ListenFuncIfQuiet).
type Mark struct {
	u   *notifiedUser
	gen uint64
}

// heldWake is a room's wake-up waiting for the counter.
type heldWake struct {
	// pos is the newest event held.
	pos int64
	// targets are the targets of the membership events held, woken with
	// the room's members.
	targets map[string]struct{}
	timer   *time.Timer
}

// deferredWake is a user's wake-up for counts alone, due at due. It
// stands while the user's wake-ups are still at gen: another one served
// the counts (and a later deferral has an entry of its own).
type deferredWake struct {
	u   *notifiedUser
	gen uint64
	due time.Time
}

// deferSlack is how far ahead a deferred wake-up may go out, with those
// due before it: one timer run for the wake-ups due within a few
// milliseconds, while each waits about countDefer, so that they go out
// as spread as they came.
const deferSlack = 5 * time.Millisecond

// knownMembership is a membership and the stream position of its event.
type knownMembership struct {
	membership string
	pos        int64
}

// NewNotifier makes a notifier that reads memberships from db. It wakes
// nobody until it is fed, by Start or by the On* methods.
func NewNotifier(db MembershipStore, log *slog.Logger) *Notifier {
	return &Notifier{db: db, log: log, users: make(map[string]*notifiedUser),
		rooms: make(map[string]map[string]struct{}), held: make(map[string]*heldWake), counted: make(map[string]int64),
		closed: make(chan struct{})}
}

// Start feeds the notifier from the bus: the room events published on
// room.output after they commit, the push counter's announcements of what
// it counted, and the wake-ups of every other write a sync returns
// (package wake). Every process runs its own notifier over the whole
// stream.
func (n *Notifier) Start(ctx context.Context, b *bus.Bus) error {
	counted, err := b.Conn().Subscribe(push.CountedSubject, func(msg *nats.Msg) {
		var c push.Counted
		if json.Unmarshal(msg.Data, &c) == nil {
			n.OnCounted(c.RoomID, c.StreamPos, c.Users)
		}
	})
	if err != nil {
		return fmt.Errorf("notifier: subscribe %s: %w", push.CountedSubject, err)
	}
	n.mu.Lock()
	n.countWait, n.countDefer = countWait, countDefer
	n.mu.Unlock()
	stop, err := bus.Tail(ctx, b, bus.StreamRoomOutput, bus.RoomOutputSubjects, func(_ context.Context, o roomserver.OutputEvent) {
		n.OnRoomEvent(o)
	})
	if err != nil {
		_ = counted.Unsubscribe()
		return fmt.Errorf("notifier: %w", err)
	}
	sub, err := wake.Subscribe(b.Conn(), n.Wake)
	if err != nil {
		stop()
		_ = counted.Unsubscribe()
		return fmt.Errorf("notifier: subscribe %s: %w", wake.Subject, err)
	}
	n.mu.Lock()
	n.stops = append(n.stops, stop, func() { _ = sub.Unsubscribe() }, func() { _ = counted.Unsubscribe() })
	n.mu.Unlock()
	return nil
}

// Close wakes every waiting sync for good (they answer with what they
// have) and stops the feeds. Syncs that arrive after it do not wait. It
// may be called any number of times.
func (n *Notifier) Close() {
	n.closeOnce.Do(func() {
		close(n.closed)
		n.mu.Lock()
		stops := n.stops
		n.stops = nil
		for id, h := range n.held {
			h.timer.Stop()
			n.releaseLocked(id, h)
		}
		n.countWait, n.countDefer = 0, 0
		if n.deferTimer != nil {
			n.deferTimer.Stop()
		}
		// Parked syncs hear of the end through their functions.
		for _, u := range n.users {
			wakeLocked(u)
		}
		n.mu.Unlock()
		for _, s := range stops {
			s()
		}
	})
}

// Done is closed by Close.
func (n *Notifier) Done() <-chan struct{} { return n.closed }

// Listen registers a sync of userID: the channel it returns is closed at
// the next change that concerns the user. Call it before reading what the
// sync returns, and release once done waiting. The first Listen of a user
// reads their memberships from the database (later ones wait for that
// read).
func (n *Notifier) Listen(ctx context.Context, userID string) (wake <-chan struct{}, release func(), err error) {
	wake, _, release, err = n.listen(ctx, userID, nil)
	return wake, release, err
}

// ListenFunc is Listen for a sync that waits without a goroutine of its
// own (a parked one): f runs, on a new goroutine, at the next change that
// concerns the user or when the notifier closes, once; release
// unregisters it. The mark is where the user's wake-ups stood.
func (n *Notifier) ListenFunc(ctx context.Context, userID string, f func()) (release func(), mark Mark, err error) {
	_, mark, release, err = n.listen(ctx, userID, &wakeFunc{f: f})
	return release, mark, err
}

// Quiet reports whether no wake-up of the user came since m.
func (n *Notifier) Quiet(userID string, m Mark) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.quietLocked(userID, m)
}

func (n *Notifier) quietLocked(userID string, m Mark) bool {
	return m.u != nil && n.users[userID] == m.u && m.u.gen == m.gen && !isClosed(n.closed)
}

// ListenFuncIfQuiet is ListenFunc for a sync that skips its read: it
// registers f only if no wake-up of the user came since m, and reports
// whether it did.
func (n *Notifier) ListenFuncIfQuiet(userID string, m Mark, f func()) (release func(), ok bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.quietLocked(userID, m) {
		return nil, false
	}
	return n.addFuncLocked(m.u, &wakeFunc{f: f}), true
}

// addFuncLocked registers wf with u, counted as a listener, and returns
// its release.
func (n *Notifier) addFuncLocked(u *notifiedUser, wf *wakeFunc) (release func()) {
	u.listeners++
	if u.funcs == nil {
		u.funcs = make(map[*wakeFunc]struct{})
	}
	u.funcs[wf] = struct{}{}
	return func() {
		n.mu.Lock()
		u.listeners--
		delete(u.funcs, wf)
		n.mu.Unlock()
	}
}

// wakeFunc is a function registered by ListenFunc.
type wakeFunc struct{ f func() }

func (n *Notifier) listen(ctx context.Context, userID string, wf *wakeFunc) (wake <-chan struct{}, mark Mark, release func(), err error) {
	n.mu.Lock()
	u := n.users[userID]
	load := u == nil
	if load {
		if len(n.users) >= notifierMaxUsers {
			n.forgetIdleLocked()
		}
		u = &notifiedUser{rooms: make(map[string]knownMembership), ready: make(chan struct{})}
		n.users[userID] = u
	}
	mark = Mark{u: u, gen: u.gen}
	if wf != nil && !isClosed(n.closed) {
		release = n.addFuncLocked(u, wf)
	} else {
		u.listeners++
		if wf != nil {
			go wf.f() // closed: no wake-up will come
		} else {
			if u.wake == nil {
				u.wake = make(chan struct{})
			}
			wake = u.wake
		}
		release = func() {
			n.mu.Lock()
			u.listeners--
			n.mu.Unlock()
		}
	}
	n.mu.Unlock()

	if load {
		n.load(ctx, userID, u)
	}
	select {
	case <-u.ready:
	case <-ctx.Done():
		release()
		return nil, Mark{}, nil, ctx.Err()
	}
	if u.loadErr != nil {
		release()
		return nil, Mark{}, nil, u.loadErr
	}
	return wake, mark, release, nil
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// load reads a user's memberships into the index. On failure the user is
// dropped, so that their next sync tries again.
func (n *Notifier) load(ctx context.Context, userID string, u *notifiedUser) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), notifierLoadTimeout)
	defer cancel()
	mems, err := n.db.SyncMemberships(ctx, userID)
	n.mu.Lock()
	defer n.mu.Unlock()
	if err != nil {
		u.loadErr = fmt.Errorf("notifier: memberships of %s: %w", userID, err)
		if n.users[userID] == u {
			n.dropLocked(userID, u)
		}
	} else {
		for _, m := range mems {
			n.learnLocked(userID, u, m.RoomID, m.Membership, m.StreamPos)
		}
	}
	close(u.ready)
}

// OnRoomEvent handles a committed room event: it updates the index with
// a membership event, then wakes the event's target and the room's
// members, at once or once the counter has counted the event.
func (n *Notifier) OnRoomEvent(o roomserver.OutputEvent) {
	n.mu.Lock()
	defer n.mu.Unlock()
	var target string
	if o.Type == spec.MRoomMember && o.StateKey != nil {
		target = *o.StateKey
		if u := n.users[target]; u != nil {
			n.learnLocked(target, u, o.RoomID, o.Membership, o.StreamPos)
		}
	}
	if n.countWait == 0 || n.lagBehind != 0 || n.counted[o.RoomID] >= o.StreamPos {
		if u := n.users[target]; u != nil {
			wakeLocked(u)
		}
		n.wakeRoomLocked(o.RoomID)
		return
	}
	h := n.held[o.RoomID]
	if h == nil {
		h = &heldWake{}
		roomID := o.RoomID
		h.timer = time.AfterFunc(n.countWait, func() { n.countMissed(roomID, h) })
		n.held[o.RoomID] = h
	}
	h.pos = max(h.pos, o.StreamPos)
	if target != "" {
		if h.targets == nil {
			h.targets = make(map[string]struct{})
		}
		h.targets[target] = struct{}{}
	}
}

// OnCounted handles the push counter's announcement that it counted a
// room up to stream position pos: the wake-up held for the room goes out
// if it holds nothing newer. users are those whose counts changed: the
// ones that wake-up did not wake are woken too.
func (n *Notifier) OnCounted(roomID string, pos int64, users []string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if pos >= n.lagBehind {
		n.lagBehind = 0
	}
	released := false
	if pos > n.counted[roomID] {
		if len(n.counted) >= countedMax {
			clear(n.counted)
		}
		n.counted[roomID] = pos
		if h := n.held[roomID]; h != nil && h.pos <= pos {
			h.timer.Stop()
			n.releaseLocked(roomID, h)
			released = true
		}
	}
	members := n.rooms[roomID]
	for _, id := range users {
		if _, woken := members[id]; released && woken {
			continue
		}
		if u := n.users[id]; u != nil {
			n.wakeForCountsLocked(u)
		}
	}
}

// wakeForCountsLocked wakes u for a change of their counts alone: after
// countDefer, unless another wake-up comes first.
func (n *Notifier) wakeForCountsLocked(u *notifiedUser) {
	if n.countDefer == 0 {
		wakeLocked(u)
		return
	}
	if u.countsDeferred {
		return
	}
	u.countsDeferred = true
	n.deferred = append(n.deferred, deferredWake{u: u, gen: u.gen, due: time.Now().Add(n.countDefer)})
	if n.deferTimer == nil {
		n.deferTimer = time.AfterFunc(n.countDefer, n.wakeDeferred)
	}
}

// wakeDeferred wakes the users whose deferred wake-up is due and still
// stands, and sets the timer for the next.
func (n *Notifier) wakeDeferred() {
	n.mu.Lock()
	defer n.mu.Unlock()
	until := time.Now().Add(deferSlack)
	i := 0
	for ; i < len(n.deferred) && !n.deferred[i].due.After(until); i++ {
		if d := n.deferred[i]; d.u.gen == d.gen {
			wakeLocked(d.u)
		}
	}
	n.deferred = n.deferred[i:]
	if len(n.deferred) == 0 || n.countDefer == 0 {
		n.deferred, n.deferTimer = nil, nil
		return
	}
	n.deferTimer.Reset(time.Until(n.deferred[0].due))
}

// countMissed releases a wake-up the counter did not answer in time, and
// stops holding the next ones until it catches up.
func (n *Notifier) countMissed(roomID string, h *heldWake) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.held[roomID] != h {
		return // released meanwhile
	}
	n.lagBehind = max(n.lagBehind, h.pos)
	n.releaseLocked(roomID, h)
	// What else is held would wait just as long.
	for id, other := range n.held {
		other.timer.Stop()
		n.releaseLocked(id, other)
	}
}

func (n *Notifier) releaseLocked(roomID string, h *heldWake) {
	delete(n.held, roomID)
	for userID := range h.targets {
		if u := n.users[userID]; u != nil {
			wakeLocked(u)
		}
	}
	n.wakeRoomLocked(roomID)
}

// wakeRoomLocked wakes the room's joined and invited users.
func (n *Notifier) wakeRoomLocked(roomID string) {
	for userID := range n.rooms[roomID] {
		if u := n.users[userID]; u != nil {
			wakeLocked(u)
		}
	}
}

// Wake wakes the syncs of the users of a wake-up and of the joined
// members of its rooms.
func (n *Notifier) Wake(m wake.Message) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, userID := range m.Users {
		if u := n.users[userID]; u != nil {
			wakeLocked(u)
		}
	}
	for _, roomID := range m.Rooms {
		for userID := range n.rooms[roomID] {
			if u := n.users[userID]; u != nil && u.rooms[roomID].membership == spec.Join {
				wakeLocked(u)
			}
		}
	}
}

// learnLocked records a membership unless a newer one is known, and keeps
// the room index in step.
func (n *Notifier) learnLocked(userID string, u *notifiedUser, roomID, membership string, pos int64) {
	if cur, ok := u.rooms[roomID]; ok && cur.pos >= pos {
		return
	}
	u.rooms[roomID] = knownMembership{membership: membership, pos: pos}
	members := n.rooms[roomID]
	if membership == spec.Join || membership == spec.Invite {
		if members == nil {
			members = make(map[string]struct{})
			n.rooms[roomID] = members
		}
		members[userID] = struct{}{}
		return
	}
	if members != nil {
		delete(members, userID)
		if len(members) == 0 {
			delete(n.rooms, roomID)
		}
	}
}

func wakeLocked(u *notifiedUser) {
	u.gen++
	u.countsDeferred = false
	if u.wake != nil {
		close(u.wake)
		u.wake = nil
	}
	for wf := range u.funcs {
		go wf.f()
	}
	clear(u.funcs)
}

// forgetIdleLocked drops the users nobody syncs for right now.
func (n *Notifier) forgetIdleLocked() {
	for userID, u := range n.users {
		if u.listeners == 0 {
			n.dropLocked(userID, u)
		}
	}
}

func (n *Notifier) dropLocked(userID string, u *notifiedUser) {
	for roomID := range u.rooms {
		if members := n.rooms[roomID]; members != nil {
			delete(members, userID)
			if len(members) == 0 {
				delete(n.rooms, roomID)
			}
		}
	}
	delete(n.users, userID)
}
