package roomserver

import (
	"context"
	"errors"
	"maps"
	"net/http"
	"slices"
	"sort"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
)

// History missing from a room's timeline (spec: server-server API,
// "Backfilling and retrieving missing events"). A server that joined a
// room through another holds the room's state and auth chain as outliers
// and its join in the timeline, nothing before; a server that left a
// room and joined it again lacks what was said meanwhile; remote input
// bridges long gaps with /state_ids. Each such hole is recorded where an
// event enters the timeline without its prev events (see noteGaps).
// When /messages pages back to one, the federation layer claims it
// (BackfillFrom), asks servers in the room for the events before the
// missing prev events (GET /backfill) and hands them over in a Backfill
// input. Each event is checked as one received live, but for the room's
// current state (history is not soft-failed), and stored as history: at
// a negative stream position (sql.AllocBackfillPositions), which /sync
// never reads, and at its depth, which places it in /messages' order
// between the events around the hole; with the state before it, and
// nothing else of the room changes. Outliers the answer reaches (the
// create event, the state joined with) take their place in the timeline
// there.

const (
	// maxBackfillEvents bounds the events of one Backfill input: the
	// most a server answers to one /backfill (Synapse's limit).
	maxBackfillEvents = 100
	// maxBackwardExtremities bounds the events a backfill starts from,
	// as in Synapse.
	maxBackwardExtremities = 5
)

// historical is how a historical event is stored (remoteFacts.backfill).
type historical struct {
	// pos is its stream position, negative (sql.AllocBackfillPositions).
	pos int64
	// snap is the state before it: Base, plus Entries when there are
	// any, which make a new snapshot (a full one when Base is 0).
	snap sql.Snapshot
	// auth holds the pieces of the state before it that the auth rules
	// read, for the power check of a redaction.
	auth sql.StateMap
	// outlier is its NID when it is stored already, as an outlier.
	outlier int64
}

// BackfillFrom claims a room's gaps at the given missing prev events
// (see sql.GapsIn) for one backfill: it returns those of them to ask
// other servers for, at most five, and the room version to parse what
// comes back in. It leaves out gaps whose backoff has not passed (it
// pushes back those it returns: a gap that is filled is forgotten), and
// forgets gaps before history hidden from this server (see
// serverSeesBefore). 404 M_NOT_FOUND for an unknown room.
func (rs *Roomserver) BackfillFrom(ctx context.Context, roomID string, prevs []string) (version string, from []string, err error) {
	info, err := rs.db.Room(ctx, roomID)
	if errors.Is(err, sql.ErrNotFound) {
		return "", nil, mxhttp.NotFound("Unknown room %s", roomID)
	}
	if err != nil {
		return "", nil, err
	}
	if len(prevs) > maxBackwardExtremities {
		prevs = prevs[:maxBackwardExtremities]
	}
	gaps, err := rs.db.ClaimGaps(ctx, info.NID, prevs)
	if err != nil || len(gaps) == 0 {
		return info.Version, nil, err
	}
	var nids []int64
	for _, g := range gaps {
		if !slices.Contains(nids, g.EventNID) {
			nids = append(nids, g.EventNID)
		}
	}
	after, err := rs.db.EventsByNID(ctx, nids)
	if err != nil {
		return "", nil, err
	}
	visible := make(map[int64]bool, len(after))
	var hidden []int64
	for _, e := range after {
		ok, err := rs.serverSeesBefore(ctx, e)
		if err != nil {
			return "", nil, err
		}
		if visible[e.NID] = ok; !ok {
			hidden = append(hidden, e.NID)
		}
	}
	if err := rs.db.DropGaps(ctx, hidden); err != nil {
		return "", nil, err
	}
	for _, g := range gaps {
		if visible[g.EventNID] && !slices.Contains(from, g.Prev) {
			from = append(from, g.Prev)
		}
	}
	return info.Version, from, nil
}

// serverSeesBefore reports whether this server may see the room's
// history just before ev, by the history visibility rules as they apply
// to servers (as Synapse's filter_events_for_server, which Synapse
// applies before it backfills): world_readable and shared history is
// visible; invited history when one of its users was invited or joined
// then, joined history when one was joined. What the server may not see,
// none of its users may: fetching it would be for nothing.
func (rs *Roomserver) serverSeesBefore(ctx context.Context, ev sql.Event) (bool, error) {
	vis, err := rs.stateContent(ctx, ev.StateBeforeNID, sql.StateKey{Type: spec.MRoomHistoryVisibility}, "history_visibility")
	if err != nil {
		return false, err
	}
	vis = knownVisibility(vis)
	if vis == VisWorldReadable || vis == VisShared {
		return true, nil
	}
	members, err := rs.db.SnapshotServerMembers(ctx, ev.StateBeforeNID, string(rs.serverName))
	if err != nil {
		return false, err
	}
	evs, err := rs.pdus(ctx, &rs.db.Queries, slices.Collect(maps.Values(members)))
	if err != nil {
		return false, err
	}
	for _, e := range evs {
		if m, _ := e.Membership(); m == spec.Join || (m == spec.Invite && vis == VisInvited) {
			return true, nil
		}
	}
	return false, nil
}

// backfill handles a Backfill input.
func (rs *Roomserver) backfill(ctx context.Context, req InputRequest) (InputResponse, error) {
	bf := req.Backfill
	if len(bf.Events) > maxBackfillEvents {
		return InputResponse{}, mxhttp.TooLarge("At most %d events are backfilled at once", maxBackfillEvents)
	}
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
	// What was asked for, and is still missing: anything else is no
	// part of the answer.
	from, err := rs.db.GapPrevs(ctx, v.info.NID, bf.From)
	if err != nil {
		return InputResponse{}, err
	}
	var evs []gomatrixserverlib.PDU
	for _, raw := range bf.Events {
		ev, err := ver.NewEventFromUntrustedJSON(raw)
		if err != nil || ev.RoomID().String() != req.RoomID {
			rs.log.Info("backfilled event dropped", "room_id", req.RoomID, "origin", bf.Origin, "err", err)
			continue
		}
		evs = append(evs, ev)
	}
	evs = preceding(from, evs)
	resp := InputResponse{RoomID: req.RoomID}
	if len(evs) == 0 {
		return resp, nil
	}
	first, err := rs.db.AllocBackfillPositions(ctx, len(evs))
	if err != nil {
		return InputResponse{}, err
	}
	r := &receiver{rs: rs, roomID: req.RoomID, ver: ver, origin: spec.ServerName(bf.Origin)}
	for i, ev := range evs {
		placed, err := r.placeHistorical(ctx, ev, first+int64(i))
		var me *mxhttp.Error
		switch {
		case errors.As(err, &me) && me.Status == http.StatusForbidden:
			// Rejected, stored as such and logged; its descendants
			// among evs are checked on their own.
		case err != nil:
			// What is not placed yet is asked for again next time.
			return resp, err
		case placed:
			resp.EventIDs = append(resp.EventIDs, ev.EventID())
		}
	}
	return resp, nil
}

// preceding keeps the events of evs that fill the gaps: those of from
// (the missing prev events) and, through prev_events, their ancestors
// among evs. Anything else a server sends is no part of what
// was asked. They come back parents before children (depth orders the
// rest), so that the state before each is known by the time it is
// checked.
func preceding(from []string, evs []gomatrixserverlib.PDU) []gomatrixserverlib.PDU {
	byID := make(map[string]gomatrixserverlib.PDU, len(evs))
	for _, e := range evs {
		byID[e.EventID()] = e
	}
	keep := make(map[string]bool)
	todo := slices.Clone(from)
	for len(todo) > 0 {
		id := todo[len(todo)-1]
		todo = todo[:len(todo)-1]
		if e, ok := byID[id]; ok && !keep[id] {
			keep[id] = true
			todo = append(todo, e.PrevEventIDs()...)
		}
	}
	var kept []gomatrixserverlib.PDU
	for id := range keep {
		kept = append(kept, byID[id])
	}
	sort.Slice(kept, func(i, j int) bool {
		if kept[i].Depth() != kept[j].Depth() {
			return kept[i].Depth() < kept[j].Depth()
		}
		return kept[i].EventID() < kept[j].EventID()
	})
	// Depth is only the sender's claim: a depth-first walk of each
	// event's prev events puts parents first whatever it says.
	out := make([]gomatrixserverlib.PDU, 0, len(kept))
	visited := make(map[string]bool, len(kept))
	var visit func(e gomatrixserverlib.PDU)
	visit = func(e gomatrixserverlib.PDU) {
		if visited[e.EventID()] {
			return
		}
		visited[e.EventID()] = true
		for _, id := range e.PrevEventIDs() {
			if keep[id] {
				visit(byID[id])
			}
		}
		out = append(out, e)
	}
	for _, e := range kept {
		visit(e)
	}
	return out
}

// placeHistorical checks a historical event and stores it at pos. It
// reports false when there was nothing to do (the event is in the
// timeline already, or was rejected before) or when an outlier fails the
// checks against the state before it (it stays an outlier); it fails
// with 403 M_FORBIDDEN when it rejects the event, which it stores as
// rejected.
func (r *receiver) placeHistorical(ctx context.Context, ev gomatrixserverlib.PDU, pos int64) (bool, error) {
	known, err := r.stored(ctx, []string{ev.EventID()})
	if err != nil {
		return false, err
	}
	h := &historical{pos: pos}
	k, isKnown := known[ev.EventID()]
	switch {
	case isKnown && (k.rejected || !k.row.Outlier):
		return false, nil
	case isKnown:
		// Checked against its auth events when it was stored.
		h.outlier = k.row.NID
	default:
		auth, err := r.authEvents(ctx, ev)
		if err != nil {
			return false, err
		}
		if reason := checkAuthEvents(ev, auth); reason != nil {
			return false, r.reject(ctx, ev, nil, reason)
		}
	}
	if err := r.historicalState(ctx, ev, k.row, h); err != nil {
		return false, err
	}
	if err := r.allowed(ctx, ev, h.auth); err != nil {
		if h.outlier != 0 {
			r.rs.log.Info("outlier not allowed by the state before it: left out of the history", "event_id", ev.EventID(), "err", err)
			return false, nil
		}
		return false, r.reject(ctx, ev, nil, err)
	}
	v, err := r.rs.view(ctx, r.roomID)
	if err != nil {
		return false, err
	}
	return true, r.commit(ctx, v, pending{pdu: ev, remote: &remoteFacts{backfill: h}})
}

// historicalState works out the state before a historical event: h.snap
// and h.auth. An outlier whose state was worked out at a gap (see
// stateAtGap) keeps it. An event after one stored event, the common case
// (history is mostly a line, and placed parents first), stands on that
// event's snapshot, adding at most that event: reading and writing whole
// states would cost the room's size per event. Otherwise the state comes
// from its prev events as for an event received live, fetched at gaps
// with /state_ids.
func (r *receiver) historicalState(ctx context.Context, ev gomatrixserverlib.PDU, stored sql.Event, h *historical) error {
	keys := authKeys(ev)
	db := r.rs.db
	var err error
	if stored.StateBeforeNID != 0 {
		h.snap.Base = stored.StateBeforeNID
		h.auth, err = db.SnapshotKeys(ctx, h.snap.Base, keys)
		return err
	}
	if prevs := ev.PrevEventIDs(); len(prevs) == 1 {
		evs, err := r.stored(ctx, prevs)
		if err != nil {
			return err
		}
		if p, ok := evs[prevs[0]]; ok && stateKnown(p.row) {
			return r.stateAfterStored(ctx, p, keys, h)
		}
	}
	before, _, err := r.stateBefore(ctx, ev, false)
	if err != nil {
		return err
	}
	h.snap.Entries, h.auth = before, before
	return nil
}

// stateAfterStored sets h to the state after a stored event whose state
// before is known.
func (r *receiver) stateAfterStored(ctx context.Context, p storedEvent, keys []sql.StateKey, h *historical) error {
	db := r.rs.db
	base := p.row.StateBeforeNID
	var err error
	if h.auth, err = db.SnapshotKeys(ctx, base, keys); err != nil {
		return err
	}
	h.snap.Base = base
	sk := p.pdu.StateKey()
	if sk == nil || p.rejected {
		return nil
	}
	k := sql.StateKey{Type: p.pdu.Type(), StateKey: *sk}
	if slices.Contains(keys, k) {
		h.auth[k] = p.row.NID
	}
	chain, err := db.SnapshotChainLength(ctx, base)
	if err != nil {
		return err
	}
	if base != 0 && chain < maxSnapshotChain {
		h.snap.ChainLength, h.snap.Entries = chain+1, sql.StateMap{k: p.row.NID}
		return nil
	}
	full, err := db.Snapshot(ctx, base)
	if err != nil {
		return err
	}
	full[k] = p.row.NID
	h.snap = sql.Snapshot{Entries: full}
	return nil
}

// authKeys lists the pieces of state the auth rules read for ev.
func authKeys(ev gomatrixserverlib.PDU) []sql.StateKey {
	tuples := gomatrixserverlib.StateNeededForAuth([]gomatrixserverlib.PDU{ev}).Tuples()
	keys := make([]sql.StateKey, len(tuples))
	for i, t := range tuples {
		keys[i] = sql.StateKey{Type: t.EventType, StateKey: t.StateKey}
	}
	return keys
}

// stageBackfill is stage for a historical event (remoteFacts.backfill):
// its row at its own position with the state before it, the gaps it
// closes and opens, its relation,
// and its redaction if it is one (the state before it decides the
// redacter's power). The room's state, extremities and row stay as they
// are, and nothing is published.
func (rs *Roomserver) stageBackfill(ctx context.Context, g *groupTx, rc *roomCommit, p pending, nid int64) error {
	info := rc.after.info
	ev, h := p.pdu, p.remote.backfill
	before := h.snap.Base
	if len(h.snap.Entries) > 0 {
		before = g.snapshot(info.NID, h.snap.Base, h.snap.ChainLength, h.snap.Entries)
	}
	row := sql.PendingEvent{Event: sql.Event{NID: nid, RoomNID: info.NID, EventID: ev.EventID(), Type: ev.Type(), StateKey: ev.StateKey(),
		Sender: string(ev.SenderID()), Depth: ev.Depth(), OriginServerTS: int64(ev.OriginServerTS()),
		StreamPos: h.pos, StateBeforeNID: before, JSON: ev.JSON()}}
	if h.outlier != 0 {
		g.placed = append(g.placed, row)
	} else {
		g.events = append(g.events, row)
	}
	g.noteGaps(info.NID, nid, ev, true, nil) // history: none of its prev events is an extremity
	if rel, ok := sql.RelationOf(ev.Content()); ok {
		g.rels = append(g.rels, sql.EventRelation{EventNID: nid, RoomNID: info.NID, DeclaredRelation: rel})
	}
	if ev.Type() == spec.MRoomRedaction {
		target, err := rs.applyRedaction(ctx, g, info, h.auth, ev)
		if err != nil {
			return err
		}
		if target != 0 {
			rc.redacted = append(rc.redacted, target)
		}
	}
	return nil
}
