package syncapi

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/syncapi/view"
)

// roomWindow is the part of a room's event stream a sync covers.
type roomWindow struct {
	// lo and hi bound the window: (lo, hi] (lo 0 for an initial sync, hi
	// the caller's leave in a room they left).
	lo, hi int64
	// full: the client has none of the room's state yet (initial sync, a
	// room joined in the window, full_state), so state is all of it.
	full bool
	// onlyOwn: the timeline is the caller's own membership event alone,
	// with no state (a rejected invite: the caller never saw the room).
	onlyOwn bool
	// joined: the caller was joined at every event of the window, which
	// history visibility always lets them see (spec: "the user was
	// joined"), so the events need no visibility check.
	joined bool
	// joinedAfter, when not 0, is the stream position of the join the
	// caller is still joined by: the events after it are seen as in a
	// joined window, those before it are checked.
	joinedAfter int64
}

// roomContent is what a sync serves of a joined or left room.
type roomContent struct {
	timeline timeline
	// state is set for the state section (use_state_after false),
	// stateAfter for state_after.
	state, stateAfter *eventList
	summary           *roomSummary
	// pending holds the events servePending serves, for a room whose
	// serving waits for that (see deferServing).
	pending *pendingRoom
}

// changed reports whether the room has anything for the client.
func (c *roomContent) changed() bool {
	return len(c.timeline.Events) > 0 || (c.state != nil && len(c.state.Events) > 0) ||
		(c.stateAfter != nil && len(c.stateAfter.Events) > 0)
}

// joined puts a joined room in the response if it has anything new.
func (b *syncBuilder) joined(ctx context.Context, m sql.SyncMembership, w roomWindow) error {
	c, err := b.roomContent(ctx, m, spec.Join, w, nil)
	if err != nil {
		return err
	}
	data, err := b.roomAccountData(ctx, m.RoomID, w.full)
	if err != nil {
		return err
	}
	eph := b.ephemeral[m.RoomID]
	if !w.full && !c.changed() && len(data) == 0 && len(eph) == 0 && !b.countsChanged[m.RoomID] {
		return nil
	}
	jr := &joinedRoom{Summary: c.summary, State: c.state, StateAfter: c.stateAfter, Timeline: c.timeline,
		Ephemeral: newEventList(eph), AccountData: newEventList(data)}
	b.addPending(c, &jr.Timeline)
	if err := b.unreadCounts(ctx, m, jr); err != nil {
		return err
	}
	rooms := b.rooms()
	if rooms.Join == nil {
		rooms.Join = make(map[string]*joinedRoom)
	}
	rooms.Join[m.RoomID] = jr
	return nil
}

// left puts a room the caller left (or was banned from) in the response,
// its timeline running up to leave.
func (b *syncBuilder) left(ctx context.Context, m sql.SyncMembership, leave sql.Event, membership string, w roomWindow) error {
	c, err := b.roomContent(ctx, m, membership, w, &leave)
	if err != nil {
		return err
	}
	data, err := b.roomAccountData(ctx, m.RoomID, w.full)
	if err != nil {
		return err
	}
	rooms := b.rooms()
	if rooms.Leave == nil {
		rooms.Leave = make(map[string]*leftRoom)
	}
	lr := &leftRoom{State: c.state, StateAfter: c.stateAfter, Timeline: c.timeline, AccountData: newEventList(data)}
	b.addPending(c, &lr.Timeline)
	rooms.Leave[m.RoomID] = lr
	return nil
}

// addPending queues the serving of a room whose content left it to
// servePending; its timeline goes to tl.
func (b *syncBuilder) addPending(c *roomContent, tl *timeline) {
	if c.pending != nil {
		c.pending.timelineTo = &tl.Events
		b.pending = append(b.pending, c.pending)
	}
}

// roomContent reads a room's timeline in the window and the state that
// goes with it. membership is the caller's at the window's end; own, in a
// room they left, is their leave, which the timeline always shows them.
//
// The state is what the client needs besides the timeline to know the
// room's state (spec: Syncing): the state at the start of the timeline
// that it does not have yet. As in Synapse, that is the state at the
// start and at the end of the timeline, less the state at since (which
// the client has) and less the state events in the timeline: taking the
// end too keeps state events that a timeline filter left out (or that
// the limit cut off on a fork) from being lost. With use_state_after,
// state_after is the state at the end less the state at since.
func (b *syncBuilder) roomContent(ctx context.Context, m sql.SyncMembership, membership string, w roomWindow, own *sql.Event) (*roomContent, error) {
	f := b.req.filter
	v := view.ForSync(b.a.rooms, m.RoomID, b.req.dev.UserID, membership, b.ignored)
	tf := f.timeline(m.RoomID)
	out := &roomContent{}

	// The timeline.
	var read timelineRead
	switch {
	case w.onlyOwn:
		read.newest = own
		if eventPasses(tf, *own) {
			read.evs = []sql.Event{*own}
		}
	case w.full || m.RoomLastStreamPos > w.lo:
		var err error
		if read, err = b.readTimeline(ctx, m, v, w, tf, own); err != nil {
			return nil, err
		}
	default:
		read.complete = true // nothing in the window
	}
	evs, newest := read.evs, read.newest
	if w.joined && read.complete && w.lo == b.since.Events && w.hi == b.upper.Events &&
		!slices.ContainsFunc(read.stateKeys, func(k positionedKey) bool { return k.key.Type == spec.MRoomMember }) {
		if b.membersUnchanged == nil {
			b.membersUnchanged = make(map[int64]bool)
		}
		b.membersUnchanged[m.RoomNID] = true
	}
	if w.full && !b.initial {
		// A room joined in the window, maybe again, through another
		// server: its timeline may span a gap.
		cut, gapped, err := b.a.afterGap(ctx, m.RoomNID, evs)
		if err != nil {
			return nil, err
		}
		evs, read.limited = cut, read.limited || gapped
	}
	out.timeline.Limited = read.limited
	deferred := b.deferServing(w) && !w.onlyOwn
	if deferred {
		out.pending = &pendingRoom{v: v, roomID: m.RoomID, timeline: evs}
	} else {
		served, err := b.timelineEvents(ctx, v, evs)
		if err != nil {
			return nil, err
		}
		out.timeline.Events = served
	}
	if len(evs) > 0 {
		out.timeline.PrevBatch = PrevBatch(evs[0])
	} else {
		at := b.upper
		at.Events = w.hi
		out.timeline.PrevBatch = at.String()
	}

	if w.onlyOwn {
		out.setState(b.req.useStateAfter, nil)
		return out, nil
	}

	// The state at the end and at the start of the timeline.
	var err error
	var end stateRef
	if newest != nil {
		end = stateAfter(*newest)
	} else if w.full || b.req.useStateAfter {
		if end, err = b.a.stateAfterPos(ctx, m.RoomNID, w.hi); err != nil {
			return nil, err
		}
	}
	start := end
	if len(evs) > 0 {
		start = stateBefore(evs[0])
	}
	inTimeline := make(map[int64]bool, len(evs))
	lazy := make(map[sql.StateKey]bool)
	for _, ev := range evs {
		if ev.StateKey != nil {
			inTimeline[ev.NID] = true
		}
		if f.lazyMembers {
			lazy[sql.StateKey{Type: spec.MRoomMember, StateKey: ev.Sender}] = true
		}
	}

	// The state the window changed: between since and the end when the
	// client has state, between the start and the end otherwise. The
	// timeline read saw the events from the end down to its start, and
	// often the whole window.
	var changed []sql.StateKey
	switch {
	case w.full && len(evs) > 0:
		changed = read.keysFrom(evs[0].StreamPos)
	case !w.full && read.complete:
		changed = read.keysFrom(w.lo + 1)
	case !w.full:
		if changed, err = b.a.db.StateKeysChanged(ctx, m.RoomNID, w.lo, w.hi); err != nil {
			return nil, fmt.Errorf("state changed: %w", err)
		}
	}

	if membership == spec.Join && (w.full || summaryChanged(changed)) {
		if out.summary, err = b.summary(ctx, m); err != nil {
			return nil, err
		}
		if f.lazyMembers {
			// Lazy-loading clients get the heroes' member events too
			// (spec: m.heroes).
			for _, h := range out.summary.Heroes {
				lazy[sql.StateKey{Type: spec.MRoomMember, StateKey: h}] = true
			}
		}
	}
	if w.full && f.lazyMembers {
		// Spec: the caller's own member event comes with a join or a full
		// state.
		lazy[sql.StateKey{Type: spec.MRoomMember, StateKey: b.req.dev.UserID}] = true
	}
	lazyKeys := stateKeysOf(lazy)
	if f.lazyMembers && w.full {
		// A lazy full state has only the members asked for.
		changed = slices.DeleteFunc(changed, func(k sql.StateKey) bool { return k.Type == spec.MRoomMember && !lazy[k] })
	}

	stateNIDs, afterNIDs, err := b.stateDelta(ctx, m.RoomNID, w, start, end, changed, lazyKeys)
	if err != nil {
		return nil, err
	}
	nids := stateNIDs
	if b.req.useStateAfter {
		nids = afterNIDs
	} else {
		nids = slices.DeleteFunc(slices.Clone(nids), func(nid int64) bool { return inTimeline[nid] })
	}
	if deferred {
		out.setState(b.req.useStateAfter, nil)
		out.pending.stateNIDs = nids
		out.pending.stateTo = cmp.Or(out.state, out.stateAfter)
		return out, nil
	}
	state, err := b.stateEvents(ctx, m.RoomID, nids)
	if err != nil {
		return nil, err
	}
	out.setState(b.req.useStateAfter, state)
	return out, nil
}

// setState fills the state section the request asked for: state_after
// (present even when empty, spec v1.16) or state.
func (c *roomContent) setState(after bool, evs []any) {
	l := newEventList(evs)
	if after {
		c.stateAfter = &l
	} else {
		c.state = &l
	}
}

// stateDelta computes the NIDs of the state section (before the state
// events of the timeline are taken out) and of state_after, from the
// state at the start and the end of the timeline and the keys the window
// changed (see roomContent). lazyKeys are the member events a
// lazy-loading client gets besides; with them, a full state leaves out
// every other member.
func (b *syncBuilder) stateDelta(ctx context.Context, roomNID int64, w roomWindow, start, end stateRef, changed, lazyKeys []sql.StateKey) (
	stateNIDs, afterNIDs []int64, err error) {
	db := b.a.db
	if w.full {
		var base sql.StateMap
		if b.req.filter.lazyMembers {
			if base, err = start.withoutMembers(ctx, db); err != nil {
				return nil, nil, err
			}
			members, err := start.lookup(ctx, db, lazyKeys)
			if err != nil {
				return nil, nil, err
			}
			mergeState(base, members)
		} else if base, err = b.fullState(ctx, start); err != nil {
			return nil, nil, err
		}
		endVals, err := end.lookup(ctx, db, changed)
		if err != nil {
			return nil, nil, err
		}
		stateNIDs = unionNIDs(nidsOf(base), nidsOf(endVals))
		mergeState(base, endVals)
		return stateNIDs, nidsOf(base), nil
	}

	var startVals, endVals, prevVals sql.StateMap
	if len(changed) > 0 {
		prev, err := b.a.stateAfterPos(ctx, roomNID, w.lo)
		if err != nil {
			return nil, nil, err
		}
		if startVals, err = start.lookup(ctx, db, changed); err != nil {
			return nil, nil, err
		}
		if endVals, err = end.lookup(ctx, db, changed); err != nil {
			return nil, nil, err
		}
		if prevVals, err = prev.lookup(ctx, db, changed); err != nil {
			return nil, nil, err
		}
	}
	known := make(map[int64]bool, len(prevVals))
	for _, nid := range prevVals {
		known[nid] = true
	}
	stateNIDs = withoutNIDs(unionNIDs(nidsOf(startVals), nidsOf(endVals)), known)
	afterNIDs = withoutNIDs(nidsOf(endVals), known)
	if len(lazyKeys) > 0 {
		// Redundant members are sent again: Weft does not remember what
		// each client was sent, which the spec allows.
		startMembers, err := start.lookup(ctx, db, lazyKeys)
		if err != nil {
			return nil, nil, err
		}
		endMembers, err := end.lookup(ctx, db, lazyKeys)
		if err != nil {
			return nil, nil, err
		}
		stateNIDs = unionNIDs(stateNIDs, nidsOf(startMembers))
		afterNIDs = unionNIDs(afterNIDs, nidsOf(endMembers))
	}
	return stateNIDs, afterNIDs, nil
}

// timelineRead is what readTimeline found.
type timelineRead struct {
	// evs are the events to serve, oldest first.
	evs []sql.Event
	// limited says that more such events lie in the window before evs
	// (or that the scan budget ran out before it could tell).
	limited bool
	// newest is the newest event of the window, served or not: the state
	// at the end of the window is the state after it.
	newest *sql.Event
	// complete says that every event of the window was read.
	complete bool
	// stateKeys are the state set by the events read, with the stream
	// position that set it.
	stateKeys []positionedKey
}

type positionedKey struct {
	key sql.StateKey
	pos int64
}

// keysFrom lists the state set by the events read at or after pos, each
// once.
func (r timelineRead) keysFrom(pos int64) []sql.StateKey {
	var out []sql.StateKey
	for _, k := range r.stateKeys {
		if k.pos >= pos && !slices.Contains(out, k.key) {
			out = append(out, k.key)
		}
	}
	return out
}

// readTimeline reads the newest events of a room in the window that pass
// the timeline filter and that the caller may see, up to the filter's
// limit.
func (b *syncBuilder) readTimeline(ctx context.Context, m sql.SyncMembership, v *view.Viewer, w roomWindow, tf *eventFilter, own *sql.Event) (timelineRead, error) {
	roomNID := m.RoomNID
	var r timelineRead
	defer func() { slices.Reverse(r.evs) }()
	limit := b.req.filter.timelineLimit
	cur, n, scanned := w.hi, limit+1, 0
	for {
		n = min(n, maxBatch)
		rows, ok := b.prefetched(roomNID, w.lo, cur, n)
		if !ok {
			var err error
			if rows, err = b.a.timelines.read(ctx, b.a.db, roomNID, w.lo, cur, n, m.RoomLastStreamPos); err != nil {
				return timelineRead{}, fmt.Errorf("timeline: %w", err)
			}
		}
		for i := range rows {
			ev := rows[i]
			if r.newest == nil {
				r.newest = &rows[i]
			}
			scanned++
			cur = ev.StreamPos - 1
			if ev.StateKey != nil {
				r.stateKeys = append(r.stateKeys, positionedKey{sql.StateKey{Type: ev.Type, StateKey: *ev.StateKey}, ev.StreamPos})
			}
			keep, err := b.keep(ctx, v, w, tf, own, ev)
			if err != nil {
				return timelineRead{}, err
			}
			if !keep {
				continue
			}
			if len(r.evs) == limit {
				r.limited = true
				return r, nil
			}
			r.evs = append(r.evs, ev)
		}
		if len(rows) < n {
			r.complete = true
			return r, nil
		}
		if scanned >= scanBudget {
			r.limited = true
			return r, nil
		}
		n *= 2
	}
}

// keep decides whether a timeline event is served: it passes the filter
// and the caller may see it (their own leave always).
func (b *syncBuilder) keep(ctx context.Context, v *view.Viewer, w roomWindow, tf *eventFilter, own *sql.Event, ev sql.Event) (bool, error) {
	switch {
	case !eventPasses(tf, ev):
		return false, nil
	case own != nil && ev.NID == own.NID:
		return true, nil
	case w.joined, w.joinedAfter != 0 && ev.StreamPos > w.joinedAfter:
		return !v.Ignores(ev), nil
	}
	return v.Shows(ctx, ev)
}

// summary is a joined room's summary now: its member counts, and the
// heroes when the room has no name and no canonical alias.
func (b *syncBuilder) summary(ctx context.Context, m sql.SyncMembership) (*roomSummary, error) {
	var s *roomSummary
	var named bool
	if c, ok := b.pre.countsOf(m.RoomNID); ok {
		s = &roomSummary{Joined: c.Joined, Invited: c.Invited}
		named = b.pre.named[m.RoomNID]
	} else {
		joined, invited, err := b.a.db.RoomMemberCounts(ctx, m.RoomNID)
		if err != nil {
			return nil, fmt.Errorf("member counts: %w", err)
		}
		s = &roomSummary{Joined: joined, Invited: invited}
		if named, err = b.named(ctx, m.RoomID); err != nil {
			return nil, err
		}
	}
	if named {
		return s, nil
	}
	heroes, ok := b.pre.heroesOf(m.RoomNID)
	if !ok {
		all, err := b.a.db.RoomsHeroes(ctx, []int64{m.RoomNID}, b.req.dev.UserID, maxHeroes)
		if err != nil {
			return nil, fmt.Errorf("heroes: %w", err)
		}
		heroes = all[m.RoomNID]
	}
	if heroes == nil {
		heroes = []string{}
	}
	s.Heroes = heroes
	return s, nil
}

// named reports whether the room has a non-empty name or canonical alias,
// in which case clients need no heroes.
func (b *syncBuilder) named(ctx context.Context, roomID string) (bool, error) {
	for _, k := range []struct{ typ, field string }{{spec.MRoomName, "name"}, {spec.MRoomCanonicalAlias, "alias"}} {
		ev, err := b.a.rooms.CurrentStateEvent(ctx, roomID, k.typ, "")
		if err != nil {
			return false, err
		}
		if ev == nil {
			continue
		}
		var c map[string]any
		_ = json.Unmarshal(ev.Content(), &c)
		if s, _ := c[k.field].(string); s != "" {
			return true, nil
		}
	}
	return false, nil
}

// summaryChanged reports whether a change of state may change the
// summary.
func summaryChanged(changed []sql.StateKey) bool {
	return slices.ContainsFunc(changed, func(k sql.StateKey) bool {
		return k.Type == spec.MRoomMember || k.Type == spec.MRoomName || k.Type == spec.MRoomCanonicalAlias
	})
}

// timelineEvents serves timeline events: the client format with the
// bundled aggregations and prev_content (what /messages serves), without
// room_id.
func (b *syncBuilder) timelineEvents(ctx context.Context, v *view.Viewer, evs []sql.Event) ([]any, error) {
	if b.req.filter.federation {
		return b.project(rawEvents(evs))
	}
	ces, err := b.a.serve(ctx, v, b.req.dev, evs, serveOptions{bundle: true})
	if err != nil {
		return nil, err
	}
	return b.project(inRoom(ces))
}

// inRoom is events as a room's section of /sync serves them: without
// their room id, which the section's key gives.
func inRoom(ces []ClientEvent) []any {
	out := make([]any, len(ces))
	for i := range ces {
		ces[i].RoomID = ""
		out[i] = ces[i]
	}
	return out
}

// stateEvents loads state events by NID, applies the state filter and
// serves them in stream order. They go out without prev_content: the
// state section says what the state is, not how it changed.
func (b *syncBuilder) stateEvents(ctx context.Context, roomID string, nids []int64) ([]any, error) {
	evs, err := b.a.db.EventsByNID(ctx, nids)
	if err != nil {
		return nil, fmt.Errorf("state events: %w", err)
	}
	out, err := b.formatState(ctx, b.stateSection(roomID, evs))
	if err != nil {
		return nil, err
	}
	return b.project(out)
}

// stateSection keeps the state events the room's state filter passes, in
// stream order.
func (b *syncBuilder) stateSection(roomID string, evs []sql.Event) []sql.Event {
	sf := b.req.filter.state(roomID)
	evs = slices.DeleteFunc(evs, func(ev sql.Event) bool { return !eventPasses(sf, ev) })
	slices.SortFunc(evs, func(x, y sql.Event) int {
		return cmp.Or(cmp.Compare(x.StreamPos, y.StreamPos), cmp.Compare(x.NID, y.NID))
	})
	return evs
}

// rawEvents serves events in the federation format: as stored.
func rawEvents(evs []sql.Event) []any {
	out := make([]any, len(evs))
	for i, ev := range evs {
		out[i] = json.RawMessage(ev.JSON)
	}
	return out
}
