package syncapi

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/bus"
	"github.com/weft-chat/weft/internal/wake"
	"github.com/weft-chat/weft/roomserver"
	"github.com/weft-chat/weft/sql"
)

// notifierMaxUsers bounds how many users' room lists the notifier keeps.
// Past it, the users with no sync waiting are forgotten (and read again
// from the database at their next sync).
const notifierMaxUsers = 100_000

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
	// listeners counts the syncs between Listen and their release; users
	// with listeners are never forgotten.
	listeners int
	// ready is closed once rooms was loaded from the database (loadErr
	// says whether that worked).
	ready   chan struct{}
	loadErr error
}

// knownMembership is a membership and the stream position of its event.
type knownMembership struct {
	membership string
	pos        int64
}

// NewNotifier makes a notifier that reads memberships from db. It wakes
// nobody until it is fed, by Start or by the On* methods.
func NewNotifier(db MembershipStore, log *slog.Logger) *Notifier {
	return &Notifier{db: db, log: log, users: make(map[string]*notifiedUser),
		rooms: make(map[string]map[string]struct{}), closed: make(chan struct{})}
}

// Start feeds the notifier from the bus: the room events published on
// room.output after they commit, and the wake-ups of every other write a
// sync returns (package wake). Every process runs its own notifier over
// the whole stream.
func (n *Notifier) Start(ctx context.Context, b *bus.Bus) error {
	stop, err := bus.Tail(ctx, b, bus.StreamRoomOutput, bus.RoomOutputSubjects, func(_ context.Context, o roomserver.OutputEvent) {
		n.OnRoomEvent(o)
	})
	if err != nil {
		return fmt.Errorf("notifier: %w", err)
	}
	sub, err := wake.Subscribe(b.Conn(), n.Wake)
	if err != nil {
		stop()
		return fmt.Errorf("notifier: subscribe %s: %w", wake.Subject, err)
	}
	n.mu.Lock()
	n.stops = append(n.stops, stop, func() { _ = sub.Unsubscribe() })
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
	u.listeners++
	if u.wake == nil {
		u.wake = make(chan struct{})
	}
	wake = u.wake
	n.mu.Unlock()
	release = func() {
		n.mu.Lock()
		u.listeners--
		n.mu.Unlock()
	}

	if load {
		n.load(ctx, userID, u)
	}
	select {
	case <-u.ready:
	case <-ctx.Done():
		release()
		return nil, nil, ctx.Err()
	}
	if u.loadErr != nil {
		release()
		return nil, nil, u.loadErr
	}
	return wake, release, nil
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
// members.
func (n *Notifier) OnRoomEvent(o roomserver.OutputEvent) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if o.Type == spec.MRoomMember && o.StateKey != nil {
		target := *o.StateKey
		if u := n.users[target]; u != nil {
			n.learnLocked(target, u, o.RoomID, o.Membership, o.StreamPos)
			wakeLocked(u)
		}
	}
	for userID := range n.rooms[o.RoomID] {
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
	if u.wake != nil {
		close(u.wake)
		u.wake = nil
	}
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
