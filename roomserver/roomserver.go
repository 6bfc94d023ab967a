package roomserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/bounded"
	"github.com/weft-chat/weft/internal/bus"
	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/internal/serverkey"
	"github.com/weft-chat/weft/sql"
)

// Roomserver builds, checks and stores room events.
//
// Lock order: room locks (rooms.lock(roomID)), then groupCommit.mu, then
// the caches' own mutexes, never the other way round. Only an input batch
// holds several room locks, taken in the order it meets the rooms; the
// batches of different shards never share a room and every other holder
// takes one room lock, so no cycle can form. The dispatcher's mutex is
// never held together with any other.
type Roomserver struct {
	db         *sql.DB
	bus        *bus.Bus // nil: outputs are not published (tests of the pipeline alone)
	serverName spec.ServerName
	key        serverkey.Key
	log        *slog.Logger
	now        func() time.Time
	// Other servers, for remote input; nil until UseFederation.
	fetch  Fetcher
	join   Joiner
	invite Inviter

	rooms  roomLocks
	views  *bounded.Map[string, *roomView]
	events *eventCache
	recent *bounded.Map[string, recentEvent] // see CommittedEvent
	tails  *bounded.Map[int64, roomTail]     // see RecentTimeline
	group  groupCommit
}

// commitSlots is how many group transactions may run at once. Each runs
// as one round trip that takes the events stream's position lock at its
// end and holds it through the commit, so a second one could only send
// its statements early and then wait on that lock; measured on
// PostgreSQL, it made groups half as large, and costlier per event on
// both sides, for no gain in throughput. SQLite has one writer anyway.
const commitSlots = 1

// New makes a roomserver. Start its consumers with Serve.
func New(db *sql.DB, b *bus.Bus, serverName string, key serverkey.Key, log *slog.Logger) *Roomserver {
	rs := &Roomserver{db: db, bus: b, serverName: spec.ServerName(serverName), key: key, log: log, now: time.Now,
		views: bounded.New[string, *roomView](viewCacheMax), events: newEventCache(),
		recent: bounded.New[string, recentEvent](recentMax), tails: bounded.New[int64, roomTail](tailRooms)}
	rs.group.slots = commitSlots
	return rs
}

// UseFederation lets the roomserver reach other servers: remote events
// and joins through them fail without it. Call it before Serve.
func (rs *Roomserver) UseFederation(f Fetcher, j Joiner) {
	rs.fetch, rs.join = f, j
}

// UseInviter lets local users invite users of other servers. Call it
// before Serve.
func (rs *Roomserver) UseInviter(i Inviter) { rs.invite = i }

// HandleInput handles one input: in-process callers come through here and
// the bus consumer through handleInputs. Inputs for one room are
// serialised by the room lock; across processes the bus shards make this
// process the room's only writer, and the room row's check at commit
// (sql.ErrStale) catches a writer that is not.
func (rs *Roomserver) HandleInput(ctx context.Context, req InputRequest) (InputResponse, error) {
	r := rs.handleInputs(ctx, []InputRequest{req})[0]
	return r.resp, r.err
}

// inputResult is the outcome of one input.
type inputResult struct {
	resp InputResponse
	err  error
}

// handleInputs handles a batch of inputs, in order, and returns their
// results in the same order. The new events of the batch are built one
// after the other, each on the ones before, and committed together in one
// transaction; nothing is replied before that commit.
func (rs *Roomserver) handleInputs(ctx context.Context, reqs []InputRequest) []inputResult {
	res := make([]inputResult, len(reqs))
	// Inputs already handled (a client's retry, a redelivery) are caught
	// by the commit (errInputDone) and answered with what they made then
	// (see send). A repeat within the batch gets what the first made.
	first := make(map[string]int)
	repeats := make(map[int]int)
	var sends []int
	for i, req := range reqs {
		if req.InputID != "" {
			if j, ok := first[req.InputID]; ok {
				repeats[i] = j
				continue
			}
			first[req.InputID] = i
		}
		switch {
		case req.CreateRoom != nil:
			// New rooms first, before the batch takes any room lock: a
			// room's lock is not reentrant.
			res[i].resp, res[i].err = rs.createRoom(ctx, req.InputID, req.CreateRoom)
		case req.NewEvent != nil:
			sends = append(sends, i)
		case req.Remote != nil:
			// One at a time: each may wait on other servers.
			res[i].resp, res[i].err = rs.receive(ctx, req)
		case req.JoinRemote != nil:
			res[i].resp, res[i].err = rs.joinRemote(ctx, req)
		case req.Invite != nil:
			res[i].resp, res[i].err = rs.receiveInvite(ctx, req)
		case req.LeaveRemote != nil:
			res[i].resp, res[i].err = rs.leaveRemote(ctx, req)
		case req.KnockRemote != nil:
			res[i].resp, res[i].err = rs.knockRemote(ctx, req)
		case req.Backfill != nil:
			res[i].resp, res[i].err = rs.backfill(ctx, req)
		default:
			res[i].err = mxhttp.BadJSON("empty room input")
		}
	}
	rs.send(ctx, reqs, sends, res)
	for i, j := range repeats {
		res[i] = res[j]
	}
	return res
}

// roomLocks serialises the inputs of each room within this process.
type roomLocks struct {
	mu    sync.Mutex
	locks map[string]*roomLock
}

type roomLock struct {
	mu   sync.Mutex
	refs int
}

func (l *roomLocks) lock(roomID string) (unlock func()) {
	l.mu.Lock()
	if l.locks == nil {
		l.locks = make(map[string]*roomLock)
	}
	rl := l.locks[roomID]
	if rl == nil {
		rl = &roomLock{}
		l.locks[roomID] = rl
	}
	rl.refs++
	l.mu.Unlock()
	rl.mu.Lock()
	return func() {
		rl.mu.Unlock()
		l.mu.Lock()
		if rl.refs--; rl.refs == 0 {
			delete(l.locks, roomID)
		}
		l.mu.Unlock()
	}
}

// roomView is the writer's cached view of a room: its row and current
// state, as of its last commit. The writer trusts it without reading the
// row again; if another process wrote the room meanwhile, the commit finds
// the row moved (sql.ErrStale), drops the view and the input is built
// again on a fresh one.
type roomView struct {
	info  sql.RoomInfo
	state sql.StateMap
}

// viewCacheMax bounds the views kept.
const viewCacheMax = 10_000

// version is the room's version, a 400 M_UNSUPPORTED_ROOM_VERSION for one
// this server does not implement.
func (v *roomView) version() (gomatrixserverlib.IRoomVersion, error) {
	ver, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(v.info.Version))
	if err != nil {
		return nil, mxhttp.Errorf(400, "M_UNSUPPORTED_ROOM_VERSION", "Unsupported room version %s", v.info.Version)
	}
	return ver, nil
}

// view returns the current view of a room (404 M_NOT_FOUND for an unknown
// room). Called with the room lock held.
func (rs *Roomserver) view(ctx context.Context, roomID string) (*roomView, error) {
	if v, ok := rs.views.Get(roomID); ok {
		return v, nil
	}
	info, err := rs.db.Room(ctx, roomID)
	if errors.Is(err, sql.ErrNotFound) {
		return nil, mxhttp.NotFound("Unknown room %s", roomID)
	}
	if err != nil {
		return nil, fmt.Errorf("load room %s: %w", roomID, err)
	}
	state, err := rs.db.CurrentState(ctx, info.NID)
	if err != nil {
		return nil, fmt.Errorf("load state of %s: %w", roomID, err)
	}
	v := &roomView{info: info, state: state}
	rs.views.Put(roomID, v)
	return v, nil
}

// eventCacheMax bounds the parsed events kept. Events never change
// except by redaction, which evicts them.
const eventCacheMax = 50_000

// pdus loads the events with the given NIDs, from the cache where it can.
func (rs *Roomserver) pdus(ctx context.Context, q *sql.Queries, nids []int64) (map[int64]gomatrixserverlib.PDU, error) {
	out := make(map[int64]gomatrixserverlib.PDU, len(nids))
	var missing []int64
	for _, n := range nids {
		if e, ok := rs.events.Get(n); ok {
			out[n] = e
		} else {
			missing = append(missing, n)
		}
	}
	if len(missing) == 0 {
		return out, nil
	}
	gen := rs.events.generation()
	stored, err := q.EventsByNID(ctx, missing)
	if err != nil {
		return nil, err
	}
	for _, s := range stored {
		pdu, err := ParseStored(s)
		if err != nil {
			return nil, err
		}
		rs.events.put(gen, s.NID, pdu)
		out[s.NID] = pdu
	}
	return out, nil
}

// ParseStored parses a stored event in its room's version.
func ParseStored(s sql.Event) (gomatrixserverlib.PDU, error) {
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(s.RoomVersion))
	if err != nil {
		return nil, err
	}
	pdu, err := verImpl.NewEventFromTrustedJSONWithEventID(s.EventID, s.JSON, s.RedactedBy != "")
	if err != nil {
		return nil, fmt.Errorf("parse stored event %s: %w", s.EventID, err)
	}
	return pdu, nil
}

// userIDForSender maps sender ids to user ids; they are the same in every
// room version Weft supports (no pseudonymous ids).
func userIDForSender(_ spec.RoomID, senderID spec.SenderID) (*spec.UserID, error) {
	return spec.NewUserID(string(senderID), true)
}
