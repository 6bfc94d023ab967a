package roomserver

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"sync"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/roomserver/stateres"
	"github.com/weft-chat/weft/sql"
)

// Events from other servers (spec: server-server API, "Checks performed
// on receipt of a PDU"). The federation layer has checked signatures and
// hashes; here an event is checked against its auth events, the state
// before it and the room's current state, in that order: failing the
// first two rejects it, failing the last soft-fails it (stored, but kept
// out of the timeline and the room's extremities). Prev events we lack
// are asked for with /get_missing_events; where the gap stays open, the
// state at the missing event comes from /state_ids. Forks are merged by
// state resolution.

const (
	// maxMissingEvents is how many events one /get_missing_events asks
	// for (Synapse asks for 10): a longer gap is bridged by /state_ids.
	maxMissingEvents = 10
	// maxFetched bounds the events one input may make the roomserver
	// fetch one by one: a room's state and auth chain at a gap.
	maxFetched = 20_000
	// fetchWorkers is how many /event requests run at once.
	fetchWorkers = 8
	// thisEvent stands for the received event, which has no NID yet, in
	// a remoteFacts.current computed before its commit.
	thisEvent int64 = -1
)

// receiver handles one remote input: the event and whatever it makes the
// roomserver fetch. Called with the room lock held.
type receiver struct {
	rs      *Roomserver
	roomID  string
	ver     gomatrixserverlib.IRoomVersion
	origin  spec.ServerName
	fetched int
}

// receive handles a RemoteEvent input.
func (rs *Roomserver) receive(ctx context.Context, req InputRequest) (InputResponse, error) {
	unlock := rs.rooms.lock(req.RoomID)
	defer unlock()
	v, err := rs.view(ctx, req.RoomID)
	if err != nil {
		return InputResponse{}, err
	}
	ver, err := v.version()
	if err != nil {
		return InputResponse{}, err
	}
	ev, err := ver.NewEventFromUntrustedJSON(req.Remote.Event)
	if err != nil {
		return InputResponse{}, mxhttp.BadJSON("Invalid event: %v", err)
	}
	if ev.RoomID().String() != req.RoomID {
		return InputResponse{}, mxhttp.BadJSON("Event %s is not in room %s", ev.EventID(), req.RoomID)
	}
	r := &receiver{rs: rs, roomID: req.RoomID, ver: ver, origin: spec.ServerName(req.Remote.Origin)}
	if err := r.accept(ctx, ev, true); err != nil {
		return InputResponse{}, err
	}
	return InputResponse{RoomID: req.RoomID, EventIDs: []string{ev.EventID()}}, nil
}

// accept checks ev and stores it. It fails with 403 M_FORBIDDEN when ev
// is rejected (and stores it as such); a soft-failed event is accepted.
// fillGap allows a /get_missing_events round for its prev events.
func (r *receiver) accept(ctx context.Context, ev gomatrixserverlib.PDU, fillGap bool) error {
	known, err := r.rs.db.EventsByID(ctx, []string{ev.EventID()})
	if err != nil {
		return err
	}
	if len(known) > 0 {
		if known[0].Rejected {
			return mxhttp.Forbidden("Event %s was rejected", ev.EventID())
		}
		return nil
	}
	auth, err := r.authEvents(ctx, ev)
	if err != nil {
		return err
	}
	if reason := checkAuthEvents(ev, auth); reason != nil {
		return r.reject(ctx, ev, nil, reason)
	}
	before, onTop, err := r.stateBefore(ctx, ev, fillGap)
	if err != nil {
		return err
	}
	if err := r.allowed(ctx, ev, before); err != nil {
		return r.reject(ctx, ev, before, err)
	}
	v, err := r.rs.view(ctx, r.roomID)
	if err != nil {
		return err
	}
	if onTop {
		// The common case: ev extends the room as it is now.
		return r.commit(ctx, v, pending{pdu: ev})
	}
	if err := r.allowed(ctx, ev, v.state); err != nil {
		// Spec: soft failure. The event passed the checks against its
		// own history but not against the room as it is now: it is kept
		// (later events may reference it) but not shown or built on.
		r.rs.log.Info("soft-failed event from another server", "event_id", ev.EventID(), "origin", r.origin, "err", err)
		return r.commit(ctx, v, pending{pdu: ev, remote: &remoteFacts{outlier: true, before: before}})
	}
	facts := &remoteFacts{before: before}
	if facts.current, err = r.currentAfter(ctx, v, ev, before); err != nil {
		return err
	}
	return r.commit(ctx, v, pending{pdu: ev, remote: facts})
}

// commit stores the pending events on top of v in one transaction.
func (r *receiver) commit(ctx context.Context, v *roomView, evs ...pending) error {
	return r.rs.commit(ctx, []*roomCommit{{v: v, evs: evs}})
}

// reject stores ev as rejected and returns the refusal.
func (r *receiver) reject(ctx context.Context, ev gomatrixserverlib.PDU, before sql.StateMap, reason error) error {
	r.rs.log.Info("rejected event from another server", "event_id", ev.EventID(), "origin", r.origin, "err", reason)
	v, err := r.rs.view(ctx, r.roomID)
	if err != nil {
		return err
	}
	if err := r.commit(ctx, v, pending{pdu: ev, remote: &remoteFacts{outlier: true, rejected: true, before: before}}); err != nil {
		return err
	}
	return mxhttp.Forbidden("Event %s is not allowed: %v", ev.EventID(), reason)
}

// authEvents returns ev's auth events, fetching those we lack from the
// origin. (In room version 12, AuthEventIDs includes the create event,
// which the event no longer lists.)
func (r *receiver) authEvents(ctx context.Context, ev gomatrixserverlib.PDU) ([]gomatrixserverlib.PDU, error) {
	ids := ev.AuthEventIDs()
	evs, err := r.stored(ctx, ids)
	if err != nil {
		return nil, err
	}
	var missing []string
	for _, id := range ids {
		if _, ok := evs[id]; !ok {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		if err := r.fetchOutliers(ctx, missing); err != nil {
			return nil, err
		}
		if evs, err = r.stored(ctx, ids); err != nil {
			return nil, err
		}
	}
	out := make([]gomatrixserverlib.PDU, 0, len(ids))
	for _, id := range ids {
		e, ok := evs[id]
		switch {
		case !ok:
			return nil, r.reject(ctx, ev, nil, fmt.Errorf("auth event %s is unavailable", id))
		case e.rejected:
			return nil, r.reject(ctx, ev, nil, fmt.Errorf("auth event %s was rejected", id))
		}
		out = append(out, e.pdu)
	}
	return out, nil
}

// storedEvent is an event of the room as stored.
type storedEvent struct {
	row      sql.Event
	pdu      gomatrixserverlib.PDU
	rejected bool
}

// stored returns the events among ids that the room has stored.
func (r *receiver) stored(ctx context.Context, ids []string) (map[string]storedEvent, error) {
	gen := r.rs.events.generation()
	rows, err := r.rs.db.EventsByID(ctx, ids)
	if err != nil {
		return nil, err
	}
	out := make(map[string]storedEvent, len(rows))
	for _, row := range rows {
		if row.RoomID != r.roomID {
			continue // an id from another room is as good as unknown
		}
		pdu, err := r.rs.parseCached(gen, row)
		if err != nil {
			return nil, err
		}
		out[row.EventID] = storedEvent{row: row, pdu: pdu, rejected: row.Rejected}
	}
	return out, nil
}

// checkAuthEvents applies auth rules 2 and 3 (v12: 2.1–2.4): the auth
// events must be the right selection for the event, without duplicates,
// and ev must pass the rules against them. gomatrixserverlib.Allowed
// checks the last only.
func checkAuthEvents(ev gomatrixserverlib.PDU, auth []gomatrixserverlib.PDU) error {
	needed := gomatrixserverlib.StateNeededForAuth([]gomatrixserverlib.PDU{ev})
	want := make(map[gomatrixserverlib.StateKeyTuple]bool)
	for _, t := range needed.Tuples() {
		want[t] = true
	}
	seen := make(map[gomatrixserverlib.StateKeyTuple]bool)
	for _, a := range auth {
		if a.StateKey() == nil {
			return fmt.Errorf("auth event %s is not a state event", a.EventID())
		}
		k := gomatrixserverlib.StateKeyTuple{EventType: a.Type(), StateKey: *a.StateKey()}
		if seen[k] {
			return fmt.Errorf("two auth events for (%s, %q)", k.EventType, k.StateKey)
		}
		seen[k] = true
		if !want[k] {
			return fmt.Errorf("auth event %s is not one the auth rules select", a.EventID())
		}
	}
	provider, err := gomatrixserverlib.NewAuthEvents(auth)
	if err != nil {
		return err
	}
	return gomatrixserverlib.Allowed(ev, provider, userIDForSender)
}

// allowed checks ev against the auth rules with the given state.
func (r *receiver) allowed(ctx context.Context, ev gomatrixserverlib.PDU, state sql.StateMap) error {
	needed := gomatrixserverlib.StateNeededForAuth([]gomatrixserverlib.PDU{ev})
	var nids []int64
	for _, t := range needed.Tuples() {
		if nid, ok := state[sql.StateKey{Type: t.EventType, StateKey: t.StateKey}]; ok {
			nids = append(nids, nid)
		}
	}
	evs, err := r.rs.pdus(ctx, &r.rs.db.Queries, nids)
	if err != nil {
		return fmt.Errorf("load auth state: %w", err)
	}
	return allowedBy(ev, slices.Collect(maps.Values(evs)))
}

// allowedBy checks ev against the auth rules with the given state events,
// of which it takes those the rules select.
func allowedBy(ev gomatrixserverlib.PDU, state []gomatrixserverlib.PDU) error {
	want := make(map[gomatrixserverlib.StateKeyTuple]bool)
	for _, t := range gomatrixserverlib.StateNeededForAuth([]gomatrixserverlib.PDU{ev}).Tuples() {
		want[t] = true
	}
	var auth []gomatrixserverlib.PDU
	for _, e := range state {
		if sk := e.StateKey(); sk != nil && want[gomatrixserverlib.StateKeyTuple{EventType: e.Type(), StateKey: *sk}] {
			auth = append(auth, e)
		}
	}
	provider, err := gomatrixserverlib.NewAuthEvents(auth)
	if err != nil {
		return err
	}
	return gomatrixserverlib.Allowed(ev, provider, userIDForSender)
}

// stateBefore returns the state before ev: the state after its prev
// event, or the resolution of the states after each of them. onTop says
// ev's prev events are exactly the room's forward extremities, so the
// state before it is the room's current state (the map returned, which
// must not be changed).
func (r *receiver) stateBefore(ctx context.Context, ev gomatrixserverlib.PDU, fillGap bool) (state sql.StateMap, onTop bool, err error) {
	v, err := r.rs.view(ctx, r.roomID)
	if err != nil {
		return nil, false, err
	}
	prevs := ev.PrevEventIDs()
	if sameSet(prevs, v.info.Extremities) {
		return v.state, true, nil
	}
	evs, err := r.stored(ctx, prevs)
	if err != nil {
		return nil, false, err
	}
	if fillGap && len(unresolved(prevs, evs)) > 0 {
		r.fillGap(ctx, ev, v.info.Extremities)
		if evs, err = r.stored(ctx, prevs); err != nil {
			return nil, false, err
		}
		if v, err = r.rs.view(ctx, r.roomID); err != nil {
			return nil, false, err
		}
		if sameSet(prevs, v.info.Extremities) {
			return v.state, true, nil
		}
	}
	states := make([]sql.StateMap, 0, len(prevs))
	for _, id := range prevs {
		e, ok := evs[id]
		if !ok || !stateKnown(e.row) {
			s, err := r.stateAtGap(ctx, id)
			if err != nil {
				return nil, false, err
			}
			states = append(states, s)
			continue
		}
		s, err := r.stateAfter(ctx, e)
		if err != nil {
			return nil, false, err
		}
		states = append(states, s)
	}
	if len(states) == 0 {
		// Only the create event has no prev events.
		return sql.StateMap{}, false, nil
	}
	s, err := r.resolve(ctx, states, nil)
	return s, false, err
}

// sameSet reports whether a and b hold the same event ids.
func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		if !slices.Contains(b, x) {
			return false
		}
	}
	return true
}

// unresolved returns the ids whose state after them is not known.
func unresolved(ids []string, evs map[string]storedEvent) []string {
	var out []string
	for _, id := range ids {
		if e, ok := evs[id]; !ok || !stateKnown(e.row) {
			out = append(out, id)
		}
	}
	return out
}

// stateKnown reports whether the state before a stored event is known:
// timeline events always have it (0 is the empty state before a create
// event), outliers only when it was worked out.
func stateKnown(e sql.Event) bool {
	return !e.Outlier || e.StateBeforeNID != 0
}

// stateAfter is the state after a stored event: the state before it,
// plus the event unless it is a message or was rejected.
func (r *receiver) stateAfter(ctx context.Context, e storedEvent) (sql.StateMap, error) {
	s := sql.StateMap{}
	if e.row.StateBeforeNID != 0 {
		var err error
		if s, err = r.rs.db.Snapshot(ctx, e.row.StateBeforeNID); err != nil {
			return nil, fmt.Errorf("state before %s: %w", e.row.EventID, err)
		}
	}
	if sk := e.pdu.StateKey(); sk != nil && !e.rejected {
		s[sql.StateKey{Type: e.pdu.Type(), StateKey: *sk}] = e.row.NID
	}
	return s, nil
}

// fillGap asks the origin for the events between the room's extremities
// and ev (spec: /get_missing_events) and takes them in, oldest first.
// Failures are logged: what stays missing is bridged by /state_ids.
func (r *receiver) fillGap(ctx context.Context, ev gomatrixserverlib.PDU, extremities []string) {
	if r.rs.fetch == nil {
		return
	}
	missing, err := r.rs.fetch.MissingEvents(ctx, r.origin, r.roomID, r.ver, extremities, []string{ev.EventID()}, maxMissingEvents, 0)
	if err != nil {
		r.rs.log.Info("get_missing_events failed", "room_id", r.roomID, "origin", r.origin, "err", err)
		return
	}
	sort.SliceStable(missing, func(i, j int) bool { return missing[i].Depth() < missing[j].Depth() })
	for _, m := range missing {
		if m.EventID() == ev.EventID() || m.RoomID().String() != r.roomID {
			continue
		}
		if err := r.accept(ctx, m, false); err != nil {
			r.rs.log.Info("missing event not accepted", "event_id", m.EventID(), "err", err)
		}
	}
}

// stateAtGap works out the state after an event we lack, or lack the
// state of, from the origin (spec: /state_ids): the state and auth chain
// are fetched and stored as outliers, the event too, with the state
// before it.
func (r *receiver) stateAtGap(ctx context.Context, eventID string) (sql.StateMap, error) {
	if r.rs.fetch == nil {
		return nil, fmt.Errorf("prev event %s is unknown and federation is off", eventID)
	}
	stateIDs, chain, err := r.rs.fetch.StateIDs(ctx, r.origin, r.roomID, eventID)
	if err != nil {
		return nil, fmt.Errorf("state at %s from %s: %w", eventID, r.origin, err)
	}
	if err := r.fetchOutliers(ctx, slices.Concat(chain, stateIDs)); err != nil {
		return nil, err
	}
	nids, err := r.rs.db.EventNIDsByID(ctx, stateIDs)
	if err != nil {
		return nil, err
	}
	evs, err := r.stored(ctx, stateIDs)
	if err != nil {
		return nil, err
	}
	before := sql.StateMap{}
	for _, id := range stateIDs {
		e, ok := evs[id]
		if !ok || e.rejected || e.pdu.StateKey() == nil {
			continue
		}
		before[sql.StateKey{Type: e.pdu.Type(), StateKey: *e.pdu.StateKey()}] = nids[id]
	}
	// The event itself, as an outlier with the state before it, so the
	// state after it is known from now on.
	prev, err := r.stored(ctx, []string{eventID})
	if err != nil {
		return nil, err
	}
	e, ok := prev[eventID]
	if !ok {
		pdu, err := r.fetchOne(ctx, eventID)
		if err != nil {
			return nil, err
		}
		if err := r.fetchOutliers(ctx, pdu.AuthEventIDs()); err != nil {
			return nil, err
		}
		v, err := r.rs.view(ctx, r.roomID)
		if err != nil {
			return nil, err
		}
		if err := r.commit(ctx, v, pending{pdu: pdu, remote: &remoteFacts{outlier: true, before: before}}); err != nil {
			return nil, err
		}
		if prev, err = r.stored(ctx, []string{eventID}); err != nil {
			return nil, err
		}
		e = prev[eventID]
	}
	after := maps.Clone(before)
	if sk := e.pdu.StateKey(); sk != nil && !e.rejected {
		after[sql.StateKey{Type: e.pdu.Type(), StateKey: *sk}] = e.row.NID
	}
	return after, nil
}

// fetchOne fetches one event from the origin.
func (r *receiver) fetchOne(ctx context.Context, id string) (gomatrixserverlib.PDU, error) {
	if r.fetched++; r.fetched > maxFetched {
		return nil, fmt.Errorf("more than %d events to fetch", maxFetched)
	}
	pdu, err := r.rs.fetch.Event(ctx, r.origin, r.ver, id)
	if err != nil {
		return nil, fmt.Errorf("fetch %s from %s: %w", id, r.origin, err)
	}
	if pdu.EventID() != id || pdu.RoomID().String() != r.roomID {
		return nil, fmt.Errorf("%s answered %s for event %s", r.origin, pdu.EventID(), id)
	}
	return pdu, nil
}

// fetchOutliers makes sure the events ids, and their auth chains, are
// stored: those the room lacks are fetched from the origin and stored as
// outliers, each checked against its own auth events (rejected if it
// fails them), in one transaction.
func (r *receiver) fetchOutliers(ctx context.Context, ids []string) error {
	if r.rs.fetch == nil {
		return errors.New("events are missing and federation is off")
	}
	have, err := r.rs.db.EventNIDsByID(ctx, ids)
	if err != nil {
		return err
	}
	got := make(map[string]gomatrixserverlib.PDU)
	todo := slices.DeleteFunc(slices.Clone(ids), func(id string) bool { _, ok := have[id]; return ok })
	for len(todo) > 0 {
		evs, err := r.fetchMany(ctx, todo)
		if err != nil {
			return err
		}
		var next []string
		for _, e := range evs {
			got[e.EventID()] = e
			next = append(next, e.AuthEventIDs()...)
		}
		next = slices.Compact(slices.Sorted(slices.Values(next)))
		if have, err = r.rs.db.EventNIDsByID(ctx, next); err != nil {
			return err
		}
		todo = slices.DeleteFunc(next, func(id string) bool {
			_, stored := have[id]
			_, fetched := got[id]
			return stored || fetched
		})
	}
	if len(got) == 0 {
		return nil
	}
	return r.storeOutliers(ctx, slices.Collect(maps.Values(got)))
}

// fetchMany fetches events from the origin, several requests at once.
func (r *receiver) fetchMany(ctx context.Context, ids []string) ([]gomatrixserverlib.PDU, error) {
	out := make([]gomatrixserverlib.PDU, len(ids))
	errs := make([]error, len(ids))
	work := make(chan int)
	var wg sync.WaitGroup
	for range min(fetchWorkers, len(ids)) {
		wg.Go(func() {
			for i := range work {
				out[i], errs[i] = r.rs.fetch.Event(ctx, r.origin, r.ver, ids[i])
			}
		})
	}
	for i := range ids {
		if r.fetched++; r.fetched > maxFetched {
			close(work)
			wg.Wait()
			return nil, fmt.Errorf("more than %d events to fetch", maxFetched)
		}
		work <- i
	}
	close(work)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return nil, fmt.Errorf("fetch %s from %s: %w", ids[i], r.origin, err)
		}
		if out[i].EventID() != ids[i] || out[i].RoomID().String() != r.roomID {
			return nil, fmt.Errorf("%s answered %s for event %s", r.origin, out[i].EventID(), ids[i])
		}
	}
	return out, nil
}

// storeOutliers stores events as outliers, in one transaction: each is
// checked against its auth events (among evs, or stored), and rejected if
// it fails them. Events the room has already are skipped.
func (r *receiver) storeOutliers(ctx context.Context, evs []gomatrixserverlib.PDU) error {
	// One read for the events themselves (those stored are skipped) and
	// their auth events.
	var ids []string
	for _, e := range evs {
		ids = append(append(ids, e.EventID()), e.AuthEventIDs()...)
	}
	have, err := r.stored(ctx, slices.Compact(slices.Sorted(slices.Values(ids))))
	if err != nil {
		return err
	}
	// Auth events come before the events they authorise: they are
	// older, so lower in depth, but a depth is only the sender's claim,
	// so an event whose auth events are not checked yet is rejected.
	evs = slices.Clone(evs)
	sort.SliceStable(evs, func(i, j int) bool { return evs[i].Depth() < evs[j].Depth() })
	checked := make(map[string]storedEvent, len(evs))
	var out []pending
	for _, e := range evs {
		if _, ok := have[e.EventID()]; ok {
			continue
		}
		if _, ok := checked[e.EventID()]; ok {
			continue
		}
		var auth []gomatrixserverlib.PDU
		var reason error
		for _, id := range e.AuthEventIDs() {
			a, ok := checked[id]
			if !ok {
				a, ok = have[id]
			}
			switch {
			case !ok:
				reason = fmt.Errorf("auth event %s is unavailable", id)
			case a.rejected:
				reason = fmt.Errorf("auth event %s was rejected", id)
			}
			if reason != nil {
				break
			}
			auth = append(auth, a.pdu)
		}
		if reason == nil {
			reason = checkAuthEvents(e, auth)
		}
		if reason != nil {
			r.rs.log.Info("rejected fetched event", "event_id", e.EventID(), "origin", r.origin, "err", reason)
		}
		checked[e.EventID()] = storedEvent{pdu: e, rejected: reason != nil}
		out = append(out, pending{pdu: e, remote: &remoteFacts{outlier: true, rejected: reason != nil}})
	}
	if len(out) == 0 {
		return nil
	}
	v, err := r.rs.view(ctx, r.roomID)
	if err != nil {
		return err
	}
	return r.commit(ctx, v, out...)
}

// currentAfter is the room's state once ev is in the timeline: the
// resolution of the states after its forward extremities, of which ev is
// one; nil when ev is the only one (the state is then before plus ev).
func (r *receiver) currentAfter(ctx context.Context, v *roomView, ev gomatrixserverlib.PDU, before sql.StateMap) (sql.StateMap, error) {
	var others []string
	for _, id := range v.info.Extremities {
		if !slices.Contains(ev.PrevEventIDs(), id) {
			others = append(others, id)
		}
	}
	if len(others) == 0 {
		return nil, nil
	}
	after := before
	if sk := ev.StateKey(); sk != nil {
		after = maps.Clone(before)
		after[sql.StateKey{Type: ev.Type(), StateKey: *sk}] = thisEvent
	}
	evs, err := r.stored(ctx, others)
	if err != nil {
		return nil, err
	}
	states := []sql.StateMap{after}
	for _, id := range others {
		e, ok := evs[id]
		if !ok || !stateKnown(e.row) {
			return nil, fmt.Errorf("forward extremity %s has no known state", id)
		}
		s, err := r.stateAfter(ctx, e)
		if err != nil {
			return nil, err
		}
		states = append(states, s)
	}
	return r.resolve(ctx, states, ev)
}

// resolve runs state resolution over states, whose NIDs it translates to
// event ids and back. ev, not stored yet, may appear in them as
// thisEvent.
func (r *receiver) resolve(ctx context.Context, states []sql.StateMap, ev gomatrixserverlib.PDU) (sql.StateMap, error) {
	// Forks that agree need no resolution.
	states = slices.CompactFunc(states, maps.Equal)
	if len(states) == 1 {
		return states[0], nil
	}
	var nids []int64
	for _, s := range states {
		for _, n := range s {
			if n != thisEvent {
				nids = append(nids, n)
			}
		}
	}
	nids = slices.Compact(slices.Sorted(slices.Values(nids)))
	idOf, err := r.rs.db.EventIDsByNID(ctx, nids)
	if err != nil {
		return nil, err
	}
	nidOf := make(map[string]int64, len(idOf))
	for n, id := range idOf {
		nidOf[id] = n
	}
	if ev != nil {
		idOf[thisEvent], nidOf[ev.EventID()] = ev.EventID(), thisEvent
	}
	in := make([]map[stateres.Key]string, len(states))
	for i, s := range states {
		m := make(map[stateres.Key]string, len(s))
		for k, n := range s {
			m[stateres.Key{EventType: k.Type, StateKey: k.StateKey}] = idOf[n]
		}
		in[i] = m
	}
	load := func(ctx context.Context, ids []string) (map[string]gomatrixserverlib.PDU, error) {
		evs, err := r.stored(ctx, ids)
		if err != nil {
			return nil, err
		}
		out := make(map[string]gomatrixserverlib.PDU, len(evs)+1)
		for id, e := range evs {
			if !e.rejected {
				out[id] = e.pdu
			}
		}
		if ev != nil && slices.Contains(ids, ev.EventID()) {
			out[ev.EventID()] = ev
		}
		return out, nil
	}
	resolved, err := stateres.Resolve(ctx, r.ver, in, load)
	if err != nil {
		return nil, fmt.Errorf("state resolution in %s: %w", r.roomID, err)
	}
	out := make(sql.StateMap, len(resolved))
	for k, id := range resolved {
		n, ok := nidOf[id]
		if !ok {
			return nil, fmt.Errorf("state resolution chose unknown event %s", id)
		}
		out[sql.StateKey{Type: k.EventType, StateKey: k.StateKey}] = n
	}
	return out, nil
}
