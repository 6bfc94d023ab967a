package roomserver

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/bus"
	"github.com/weft-chat/weft/sql"
)

// maxSnapshotChain bounds how many delta snapshots a snapshot stands on,
// so reading any state costs one short recursive query.
const maxSnapshotChain = 16

// eventsStream names the room event stream in stream_positions.
const eventsStream = "events"

// pending is a built event waiting to be committed.
type pending struct {
	pdu gomatrixserverlib.PDU
	ne  *NewEvent
}

// commit stores events, in order, in one transaction: each event with its
// stream position and the state before it, the state snapshots and current
// state they change, memberships, redactions, the new forward extremities,
// and the input id. A view with NID 0 is a new room, created here too. Only
// after the commit are the outputs published and the cached view replaced.
func (rs *Roomserver) commit(ctx context.Context, v *roomView, inputID string, evs []pending) error {
	info := v.info
	info.Extremities = slices.Clone(info.Extremities)
	state, cloned := v.state, false
	var outputs []OutputEvent
	var redacted []int64
	err := rs.db.WithTx(ctx, func(q *sql.Queries) error {
		if info.NID == 0 {
			nid, err := q.CreateRoom(ctx, info.RoomID, info.Version)
			if err != nil {
				return fmt.Errorf("create room row: %w", err)
			}
			info.NID = nid
		}
		chain, err := q.SnapshotChainLength(ctx, info.SnapshotNID)
		if err != nil {
			return err
		}
		for _, p := range evs {
			ev := p.pdu
			pos, err := q.AllocStreamPos(ctx, eventsStream)
			if err != nil {
				return err
			}
			nid, err := q.InsertEvent(ctx, sql.Event{
				RoomNID: info.NID, EventID: ev.EventID(), Type: ev.Type(), StateKey: ev.StateKey(),
				Sender: string(ev.SenderID()), Depth: ev.Depth(), OriginServerTS: int64(ev.OriginServerTS()),
				StreamPos: pos, StateBeforeNID: info.SnapshotNID, JSON: ev.JSON(),
			})
			if err != nil {
				return fmt.Errorf("insert event %s: %w", ev.EventID(), err)
			}
			if p.ne != nil && p.ne.TxnID != "" {
				if err := q.AddEventTransaction(ctx, nid, p.ne.Sender, p.ne.DeviceID, p.ne.TxnID); err != nil {
					return err
				}
			}
			out := OutputEvent{RoomID: info.RoomID, EventID: ev.EventID(), StreamPos: pos, Type: ev.Type(), StateKey: ev.StateKey(), Sender: string(ev.SenderID())}
			if sk := ev.StateKey(); sk != nil {
				k := sql.StateKey{Type: ev.Type(), StateKey: *sk}
				if !cloned {
					// Copy on the first state change only: message events
					// leave the cached state as it is.
					state, cloned = maps.Clone(v.state), true
				}
				state[k] = nid
				base, entries := info.SnapshotNID, sql.StateMap{k: nid}
				if chain >= maxSnapshotChain || base == 0 {
					base, entries, chain = 0, state, 0
				} else {
					chain++
				}
				if info.SnapshotNID, err = q.AddSnapshot(ctx, info.NID, base, chain, entries); err != nil {
					return fmt.Errorf("state snapshot: %w", err)
				}
				if err := q.SetCurrentState(ctx, info.NID, k, nid); err != nil {
					return err
				}
				if ev.Type() == spec.MRoomMember {
					m, err := ev.Membership()
					if err != nil {
						return fmt.Errorf("membership of %s: %w", ev.EventID(), err)
					}
					if err := q.SetMembership(ctx, info.NID, *sk, m, nid, pos); err != nil {
						return err
					}
					out.Membership = m
				}
			}
			if ev.Type() == spec.MRoomRedaction {
				target, err := rs.applyRedaction(ctx, q, info, state, ev)
				if err != nil {
					return err
				}
				if target != 0 {
					redacted = append(redacted, target)
				}
			}
			info.Extremities = nextExtremities(info.Extremities, ev)
			info.MaxDepth = max(info.MaxDepth, ev.Depth())
			info.LastStreamPos = pos
			outputs = append(outputs, out)
		}
		if err := q.UpdateRoom(ctx, info); err != nil {
			return fmt.Errorf("update room: %w", err)
		}
		if inputID != "" {
			ids := make([]string, len(evs))
			for i, p := range evs {
				ids[i] = p.pdu.EventID()
			}
			if err := q.RecordInput(ctx, inputID, info.RoomID, ids); err != nil {
				return fmt.Errorf("record input: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		rs.views.drop(info.RoomID)
		return err
	}
	for _, nid := range redacted {
		rs.events.drop(nid)
	}
	rs.views.put(info.RoomID, &roomView{info: info, state: state})
	rs.publish(ctx, outputs)
	return nil
}

// nextExtremities drops the new event's prev events from the extremities
// and adds the event.
func nextExtremities(ext []string, ev gomatrixserverlib.PDU) []string {
	prev := ev.PrevEventIDs()
	out := ext[:0]
	for _, id := range ext {
		if !slices.Contains(prev, id) {
			out = append(out, id)
		}
	}
	return append(out, ev.EventID())
}

// applyRedaction strips the redacted event, if the redaction is effective:
// the spec lets a redaction into the room on its auth rules, but the target
// is only redacted when the redacter sent it or has the power to redact.
// It returns the NID of the event it redacted, or 0.
func (rs *Roomserver) applyRedaction(ctx context.Context, q *sql.Queries, info sql.RoomInfo, state sql.StateMap, redaction gomatrixserverlib.PDU) (int64, error) {
	target, err := q.EventByID(ctx, redaction.Redacts())
	if errors.Is(err, sql.ErrNotFound) {
		return 0, nil // the spec allows redacting events this server has not seen
	}
	if err != nil {
		return 0, err
	}
	if target.RoomNID != info.NID || target.RedactedBy != "" {
		return 0, nil
	}
	if target.Sender != string(redaction.SenderID()) {
		allowed, err := rs.canRedactOthers(ctx, q, state, redaction)
		if err != nil || !allowed {
			return 0, err
		}
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(info.Version))
	if err != nil {
		return 0, err
	}
	stripped, err := verImpl.RedactEventJSON(target.JSON)
	if err != nil {
		return 0, fmt.Errorf("redact %s: %w", target.EventID, err)
	}
	if err := q.RedactEvent(ctx, target.NID, stripped, redaction.EventID()); err != nil {
		return 0, err
	}
	return target.NID, nil
}

// canRedactOthers reports whether the redaction's sender has the redact
// power level in the room's current state.
func (rs *Roomserver) canRedactOthers(ctx context.Context, q *sql.Queries, state sql.StateMap, redaction gomatrixserverlib.PDU) (bool, error) {
	var plEvent, createEvent gomatrixserverlib.PDU
	nids := []int64{}
	if n, ok := state[sql.StateKey{Type: spec.MRoomPowerLevels}]; ok {
		nids = append(nids, n)
	}
	if n, ok := state[sql.StateKey{Type: spec.MRoomCreate}]; ok {
		nids = append(nids, n)
	}
	evs, err := rs.pdus(ctx, q, nids)
	if err != nil {
		return false, err
	}
	for _, e := range evs {
		switch e.Type() {
		case spec.MRoomPowerLevels:
			plEvent = e
		case spec.MRoomCreate:
			createEvent = e
		}
	}
	level, redactLevel := powerOf(createEvent, plEvent, string(redaction.SenderID()))
	return level >= redactLevel, nil
}

// publish announces committed events on room.output. The database already
// holds them, so a failure here only delays consumers, which catch up from
// the database; it is logged, not returned.
func (rs *Roomserver) publish(ctx context.Context, outputs []OutputEvent) {
	if rs.bus == nil {
		return
	}
	for _, o := range outputs {
		if err := bus.Publish(ctx, rs.bus, bus.RoomOutputSubject(o.RoomID), o); err != nil {
			rs.log.Warn("publish room output", "room_id", o.RoomID, "event_id", o.EventID, "err", err)
		}
	}
}
