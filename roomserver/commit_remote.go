package roomserver

import (
	"context"
	"fmt"
	"maps"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/sql"
)

// stageRemote is stage for an event from another server that does not
// simply extend the room's current state (see remoteFacts): an outlier,
// or an event on a fork, whose state before is its own, and after which
// the room's state is the resolution of its extremities. state is the
// room's state as the events before it leave it; it returns the state the
// event leaves.
func (rs *Roomserver) stageRemote(ctx context.Context, g *groupTx, rc *roomCommit, p pending, nid int64, state sql.StateMap, back *int64) (sql.StateMap, error) {
	info := &rc.after.info
	ev, f := p.pdu, p.remote
	if f.backfill != nil {
		return state, rs.stageBackfill(ctx, g, rc, p, nid)
	}
	if !f.outlier || f.rejected {
		g.noteGaps(info.NID, nid, ev, !f.outlier, info.Extremities)
	}
	fBefore, err := g.stateOf(f.before, f.beforeFresh)
	if err != nil {
		return nil, fmt.Errorf("state before %s: %w", ev.EventID(), err)
	}
	row := sql.Event{NID: nid, RoomNID: info.NID, EventID: ev.EventID(), Type: ev.Type(), StateKey: ev.StateKey(),
		Sender: string(ev.SenderID()), Depth: ev.Depth(), OriginServerTS: int64(ev.OriginServerTS()),
		JSON: ev.JSON(), Outlier: f.outlier, Rejected: f.rejected}
	before, beforeNID, beforeChain := state, info.SnapshotNID, info.ChainLength
	if fBefore != nil && !maps.Equal(fBefore, state) {
		before, beforeNID, beforeChain = fBefore, g.snapshot(info.NID, 0, 0, maps.Clone(fBefore)), 0
	}
	if f.outlier {
		if fBefore != nil {
			row.StateBeforeNID = beforeNID
		}
		g.events = append(g.events, sql.PendingEvent{Event: row})
		if f.outOfBand {
			*back--
			m, _ := ev.Membership()
			g.members = append(g.members, sql.MemberChange{RoomNID: info.NID, UserID: *ev.StateKey(), Membership: m, EventNID: nid, Back: *back})
			if f.inviteRoomState != nil {
				g.invites = append(g.invites, inviteState{nid: nid, state: f.inviteRoomState})
			}
			rc.outputs = append(rc.outputs, OutputEvent{RoomID: info.RoomID, EventID: ev.EventID(), Type: ev.Type(), StateKey: ev.StateKey(),
				Sender: string(ev.SenderID()), StreamPos: *back, Membership: m})
		}
		return state, nil
	}
	*back--
	row.StateBeforeNID = beforeNID
	g.events = append(g.events, sql.PendingEvent{Event: row, Back: *back})
	if rel, ok := sql.RelationOf(ev.Content()); ok {
		g.rels = append(g.rels, sql.EventRelation{EventNID: nid, RoomNID: info.NID, DeclaredRelation: rel})
	}
	out := OutputEvent{RoomID: info.RoomID, EventID: ev.EventID(), Type: ev.Type(), StateKey: ev.StateKey(), Sender: string(ev.SenderID()),
		StreamPos: *back}

	// The room's state after the event, and its snapshot.
	current, currentNID, chain := f.current, beforeNID, beforeChain
	sk := ev.StateKey()
	switch {
	case current == nil && sk != nil:
		k := sql.StateKey{Type: ev.Type(), StateKey: *sk}
		current = maps.Clone(before)
		current[k] = nid
		if chain >= maxSnapshotChain {
			currentNID, chain = g.snapshot(info.NID, 0, 0, maps.Clone(current)), 0
		} else {
			chain++
			currentNID = g.snapshot(info.NID, beforeNID, chain, sql.StateMap{k: nid})
		}
	case current == nil:
		current = before
	default:
		current = maps.Clone(current)
		for k, n := range current {
			if n == thisEvent {
				current[k] = nid
			}
		}
		currentNID, chain = g.snapshot(info.NID, 0, 0, maps.Clone(current)), 0
	}
	if err := rs.stageStateChange(ctx, g, info.NID, state, current, nid, ev, *back); err != nil {
		return nil, err
	}
	if sk != nil && ev.Type() == spec.MRoomMember && current[sql.StateKey{Type: ev.Type(), StateKey: *sk}] == nid {
		out.Membership, _ = ev.Membership()
	}
	if ev.Type() == spec.MRoomRedaction {
		target, err := rs.applyRedaction(ctx, g, *info, current, ev)
		if err != nil {
			return nil, err
		}
		if target != 0 {
			rc.redacted = append(rc.redacted, target)
		}
	}
	info.SnapshotNID, info.ChainLength = currentNID, chain
	if f.only {
		info.Extremities = []string{ev.EventID()}
	} else {
		info.Extremities = nextExtremities(info.Extremities, ev)
	}
	info.MaxDepth = max(info.MaxDepth, ev.Depth())
	rc.outputs = append(rc.outputs, out)
	return current, nil
}

// snapshots is how many state snapshots the event may add, at most: the
// state before it, after it, and the room's.
func (f *remoteFacts) snapshots() int {
	if f.outlier {
		if f.before == nil && f.beforeFresh == nil {
			return 0
		}
		return 1
	}
	return 3
}

// stateOf is known plus the pieces of fresh, whose events are the
// transaction's, with their NIDs; known itself when fresh is empty.
func (g *groupTx) stateOf(known sql.StateMap, fresh map[sql.StateKey]string) (sql.StateMap, error) {
	if len(fresh) == 0 {
		return known, nil
	}
	out := make(sql.StateMap, len(known)+len(fresh))
	maps.Copy(out, known)
	for k, id := range fresh {
		f, ok := g.byID[id]
		if !ok {
			return nil, fmt.Errorf("event %s is not part of the commit", id)
		}
		out[k] = f.nid
	}
	return out, nil
}

// freshByNID returns the events of the transaction by NID.
func (g *groupTx) freshByNID() map[int64]gomatrixserverlib.PDU {
	if g.byNID == nil {
		g.byNID = make(map[int64]gomatrixserverlib.PDU, len(g.byID))
		for _, f := range g.byID {
			g.byNID[f.nid] = f.pdu
		}
	}
	return g.byNID
}

// snapshot adds a state snapshot to the transaction and returns its NID.
func (g *groupTx) snapshot(roomNID, base int64, chain int, entries sql.StateMap) int64 {
	nid := g.snapNIDs[0]
	g.snapNIDs = g.snapNIDs[1:]
	g.snaps = append(g.snaps, sql.Snapshot{NID: nid, RoomNID: roomNID, Base: base, ChainLength: chain, Entries: entries})
	return nid
}

// stageStateChange writes the change of a room's current state from old
// to current: the current_state rows, and the memberships of the members
// whose event changed, at the stream position of ev (NID nid).
func (rs *Roomserver) stageStateChange(ctx context.Context, g *groupTx, roomNID int64, old, current sql.StateMap, nid int64, ev gomatrixserverlib.PDU, back int64) error {
	// The member events are the transaction's (a join through another
	// server brings the whole state) or stored.
	fresh := g.freshByNID()
	var memberNIDs []int64
	for k, n := range current {
		if old[k] == n {
			continue
		}
		g.current = append(g.current, sql.StateChange{RoomNID: roomNID, Key: k, EventNID: n})
		if _, ok := fresh[n]; k.Type == spec.MRoomMember && !ok {
			memberNIDs = append(memberNIDs, n)
		}
	}
	for k := range old {
		if _, ok := current[k]; !ok {
			g.gone = append(g.gone, sql.StateChange{RoomNID: roomNID, Key: k})
		}
	}
	members, err := rs.pdus(ctx, &rs.db.Queries, memberNIDs)
	if err != nil {
		return fmt.Errorf("load member events: %w", err)
	}
	for k, n := range current {
		if k.Type != spec.MRoomMember || old[k] == n {
			continue
		}
		e, ok := members[n]
		if !ok {
			e, ok = fresh[n]
		}
		if !ok {
			return fmt.Errorf("member event %d of %s is not stored", n, k.StateKey)
		}
		m, err := e.Membership()
		if err != nil {
			return fmt.Errorf("membership of %s: %w", e.EventID(), err)
		}
		g.members = append(g.members, sql.MemberChange{RoomNID: roomNID, UserID: k.StateKey, Membership: m, EventNID: n, Back: back})
	}
	return nil
}
