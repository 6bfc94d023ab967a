package syncapi

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/clientapi"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/syncapi/view"
)

// An initial sync reads the same things of every room it serves: the
// newest events, the state at the start of the timeline, the member
// counts, the name, then it loads and formats the events. Done room by
// room that was ~10 round trips per room, most of an initial sync on
// PostgreSQL. prefetch reads the first four for every joined room at once
// before the rooms are built, and the rooms of full windows leave their
// events to servePending, which loads and formats those of every room at
// once after. Each room's code stays as it was: what was prefetched stands
// in for its own reads when it asks for exactly that, and it reads for
// itself otherwise (a timeline filter that needs more events, lazy-loaded
// members, a timeline that starts elsewhere).

// prefetch is what an initial sync read of all its joined rooms at once.
type prefetch struct {
	// timelines holds the first page readTimeline reads of each room:
	// limit+1 events in (0, hi], newest first.
	hi, n     int64
	timelines map[int64][]sql.Event
	// snapshots are the full states of likely timeline starts.
	snapshots map[int64]sql.StateMap
	counts    map[int64]sql.MemberCounts
	// named says which rooms have a name or a canonical alias now;
	// heroes are the heroes of the others.
	named  map[int64]bool
	heroes map[int64][]string
}

// maxHeroes is how many heroes a room summary names, as Synapse's.
const maxHeroes = 5

// prefetchInitial reads, for the rooms an initial sync will serve as
// joined, what each would read first.
func (b *syncBuilder) prefetchInitial(ctx context.Context, mems []sql.SyncMembership) error {
	var rooms []int64
	for _, m := range mems {
		if m.Membership == spec.Join && m.StreamPos <= b.upper.Events && b.req.filter.room(m.RoomID) {
			rooms = append(rooms, m.RoomNID)
		}
	}
	if len(rooms) < 2 {
		return nil // nothing to share
	}
	limit := b.req.filter.timelineLimit
	p := &prefetch{hi: b.upper.Events, n: int64(min(limit+1, maxBatch))}
	var err error
	if p.timelines, err = b.a.db.RoomsEventsByStream(ctx, rooms, 0, p.hi, int(p.n)); err != nil {
		return fmt.Errorf("timelines: %w", err)
	}
	if !b.req.filter.lazyMembers {
		// The timeline starts at its oldest event served: the limit-th
		// newest, unless filters or visibility hide some.
		var starts []int64
		for _, nid := range rooms {
			if evs := p.timelines[nid]; len(evs) > 0 {
				starts = append(starts, evs[min(limit, len(evs))-1].StateBeforeNID)
			}
		}
		if p.snapshots, err = b.a.db.Snapshots(ctx, starts); err != nil {
			return fmt.Errorf("states: %w", err)
		}
	}
	if p.counts, err = b.a.db.RoomsMemberCounts(ctx, rooms); err != nil {
		return fmt.Errorf("member counts: %w", err)
	}
	names, err := b.a.db.RoomsCurrentState(ctx, rooms, []string{spec.MRoomName, spec.MRoomCanonicalAlias})
	if err != nil {
		return fmt.Errorf("room names: %w", err)
	}
	p.named = make(map[int64]bool, len(rooms))
	for _, ev := range names {
		field := "name"
		if ev.Type == spec.MRoomCanonicalAlias {
			field = "alias"
		}
		if contentString(ev, field) != "" {
			p.named[ev.RoomNID] = true
		}
	}
	var unnamed []int64
	for _, nid := range rooms {
		if !p.named[nid] {
			unnamed = append(unnamed, nid)
		}
	}
	if p.heroes, err = b.a.db.RoomsHeroes(ctx, unnamed, b.req.dev.UserID, maxHeroes); err != nil {
		return fmt.Errorf("heroes: %w", err)
	}
	for _, nid := range rooms {
		if _, ok := p.timelines[nid]; !ok {
			p.timelines[nid] = nil // read: the room has no event
		}
	}
	b.pre = p
	return nil
}

// countsOf returns the prefetched member counts of a room (p may be nil).
func (p *prefetch) countsOf(roomNID int64) (sql.MemberCounts, bool) {
	if p == nil || p.counts == nil {
		return sql.MemberCounts{}, false
	}
	if _, read := p.timelines[roomNID]; !read {
		return sql.MemberCounts{}, false
	}
	return p.counts[roomNID], true
}

// heroesOf returns the prefetched heroes of an unnamed room (p may be
// nil).
func (p *prefetch) heroesOf(roomNID int64) ([]string, bool) {
	if _, ok := p.countsOf(roomNID); !ok {
		return nil, false
	}
	return p.heroes[roomNID], true
}

// prefetched returns the first page of a room's timeline if that is what
// was prefetched.
func (b *syncBuilder) prefetched(roomNID, lo, hi int64, n int) ([]sql.Event, bool) {
	if b.pre == nil || lo != 0 || hi != b.pre.hi || int64(n) != b.pre.n {
		return nil, false
	}
	evs, ok := b.pre.timelines[roomNID]
	return evs, ok
}

// fullState is ref.all, from the prefetched states when it is one.
func (b *syncBuilder) fullState(ctx context.Context, ref stateRef) (sql.StateMap, error) {
	if b.pre != nil {
		if m, ok := b.pre.snapshots[ref.snapshot]; ok {
			m = maps.Clone(m) // the caller adds to it
			if ref.event != nil {
				m[ref.key()] = ref.event.NID
			}
			return m, nil
		}
	}
	return ref.all(ctx, b.a.db)
}

// contentString reads a string field of an event's content.
func contentString(ev sql.Event, field string) string {
	var e struct {
		Content map[string]any `json:"content"`
	}
	_ = json.Unmarshal(ev.JSON, &e)
	s, _ := e.Content[field].(string)
	return s
}

// pendingRoom is a room of a full window whose events servePending loads
// and formats.
type pendingRoom struct {
	v      *view.Viewer
	roomID string
	// timeline are the timeline's events, oldest first, for *timelineTo;
	// stateNIDs the state section's events, for stateTo.
	timeline   []sql.Event
	timelineTo *[]any
	stateNIDs  []int64
	stateTo    *eventList
}

// defer reports whether a room's events wait for servePending: those of
// full windows in an initial sync, which always go in the response.
func (b *syncBuilder) deferServing(w roomWindow) bool {
	return b.pre != nil && w.full
}

// servePending loads and formats the events of the pending rooms, a few
// queries for them all.
func (b *syncBuilder) servePending(ctx context.Context) error {
	if len(b.pending) == 0 {
		return nil
	}
	pending := b.pending
	b.pending = nil

	// The state sections: loaded at once, filtered and ordered per room.
	var nids []int64
	for _, p := range pending {
		nids = append(nids, p.stateNIDs...)
	}
	loaded, err := b.a.db.EventsByNID(ctx, nids)
	if err != nil {
		return fmt.Errorf("state events: %w", err)
	}
	byNID := make(map[int64]sql.Event, len(loaded))
	for _, ev := range loaded {
		byNID[ev.NID] = ev
	}
	var stateEvs []sql.Event
	stateOf := make([][]sql.Event, len(pending))
	for i, p := range pending {
		var evs []sql.Event
		for _, nid := range p.stateNIDs {
			if ev, ok := byNID[nid]; ok {
				evs = append(evs, ev)
			}
		}
		stateOf[i] = b.stateSection(p.roomID, evs)
		stateEvs = append(stateEvs, stateOf[i]...)
	}
	state, err := b.formatState(ctx, stateEvs)
	if err != nil {
		return err
	}

	// The timelines: served together, each room with its viewer.
	var timelineEvs []sql.Event
	viewers := make(map[int64]*view.Viewer, len(pending))
	for _, p := range pending {
		timelineEvs = append(timelineEvs, p.timeline...)
		if len(p.timeline) > 0 {
			viewers[p.timeline[0].RoomNID] = p.v
		}
	}
	var timelines []any
	if b.req.filter.federation {
		timelines = rawEvents(timelineEvs)
	} else {
		ces, err := b.a.serveRooms(ctx, func(nid int64) *view.Viewer { return viewers[nid] }, b.req.dev, timelineEvs, serveOptions{bundle: true})
		if err != nil {
			return err
		}
		timelines = inRoom(ces)
	}

	for i, p := range pending {
		evs, err := b.project(timelines[:len(p.timeline):len(p.timeline)])
		if err != nil {
			return err
		}
		timelines = timelines[len(p.timeline):]
		*p.timelineTo = orEmpty(evs)
		st, err := b.project(state[:len(stateOf[i]):len(stateOf[i])])
		if err != nil {
			return err
		}
		state = state[len(stateOf[i]):]
		p.stateTo.Events = orEmpty(st)
	}
	return nil
}

// formatState serves state events in the client format (or as stored,
// for the federation format), without room_id.
func (b *syncBuilder) formatState(ctx context.Context, evs []sql.Event) ([]any, error) {
	if b.req.filter.federation {
		return rawEvents(evs), nil
	}
	pdus := make([]gomatrixserverlib.PDU, len(evs))
	for i, ev := range evs {
		var err error
		if pdus[i], err = b.a.parsed.pdu(ev); err != nil {
			return nil, err
		}
	}
	ces, err := clientapi.ClientEvents(ctx, b.a.events, pdus, b.req.dev, time.Now())
	if err != nil {
		return nil, err
	}
	out := make([]any, len(ces))
	for i := range ces {
		ces[i].RoomID = ""
		out[i] = ces[i]
	}
	return out, nil
}

func orEmpty(evs []any) []any {
	if evs == nil {
		return []any{}
	}
	return evs
}
