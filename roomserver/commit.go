package roomserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-chat/weft/internal/bus"
	"github.com/weft-chat/weft/sql"
)

// maxSnapshotChain bounds how many delta snapshots a snapshot stands on,
// so reading any state costs one short recursive query.
const maxSnapshotChain = 16

// publishTimeout bounds the wait for the stream's acks of a batch's
// outputs.
const publishTimeout = 5 * time.Second

// errInputDone fails a commit with an input that was handled before: the
// caller answers it with what it made then.
var errInputDone = errors.New("input already handled")

// pending is a built event waiting to be committed.
type pending struct {
	pdu gomatrixserverlib.PDU
	ne  *NewEvent
}

// roomCommit is one room's share of a commit: the events to add, in
// order, on top of the committed view v, and the inputs they answer. A
// view with NID 0 is a new room, created by the commit. commitTx fills in
// the rest; it may run more than once (a group transaction that failed is
// retried submitter by submitter), so it derives all of it from v and evs
// afresh.
type roomCommit struct {
	v      *roomView
	evs    []pending
	inputs []sql.InputRecord

	after       *roomView // the view once committed
	nids        []int64   // of evs
	stateBefore []int64   // snapshot before each of evs
	outputs     []OutputEvent
	members     []memberChange
	redacted    []int64
}

// memberChange is a membership event waiting for its stream position.
type memberChange struct {
	userID, membership string
	nid                int64
	event              int // index in evs
}

// commit stores the events of rcs in one transaction, shared with other
// rooms waiting to commit (see groupCommit): each event with its stream
// position and the state before it, the state snapshots and current state
// they change, memberships, redactions, each room's new forward
// extremities, and the input ids. Only after the commit are the cached
// views replaced and the outputs published. Called with the rooms' locks
// held, which keeps each room's outputs in commit order.
func (rs *Roomserver) commit(ctx context.Context, rcs []*roomCommit) error {
	if err := rs.commitGrouped(ctx, rcs); err != nil {
		for _, rc := range rcs {
			rs.views.drop(rc.v.info.RoomID)
		}
		return err
	}
	for _, rc := range rcs {
		for i, p := range rc.evs {
			if p.pdu.StateKey() != nil {
				// The next events' auth events are likely among them.
				rs.events.put(rc.nids[i], p.pdu)
			}
		}
		for _, nid := range rc.redacted {
			rs.events.drop(nid)
		}
		rs.views.put(rc.v.info.RoomID, rc.after)
	}
	var outputs []OutputEvent
	for _, rc := range rcs {
		outputs = append(outputs, rc.outputs...)
	}
	rs.publish(ctx, outputs)
	return nil
}

// commitTx writes rcs in transaction q, in a few statements for all the
// rooms together: the input ids, the events, then each room's state
// changes and the client transactions. Stream positions come last, with what
// needs them (the events' positions, memberships, the rooms' rows): the
// counter row's lock is held from their allocation to the commit, so the
// less the transaction does after it, the less the other writers wait.
func (rs *Roomserver) commitTx(ctx context.Context, q *sql.Queries, rcs []*roomCommit) error {
	// The input ids first: an input handled already (redelivered, or
	// retried while it was in flight) must not make a second event.
	var inputs []sql.InputRecord
	for _, rc := range rcs {
		inputs = append(inputs, rc.inputs...)
	}
	already, err := q.RecordInputs(ctx, inputs)
	if err != nil {
		return fmt.Errorf("record inputs: %w", err)
	}
	if len(already) > 0 {
		return fmt.Errorf("inputs %v: %w", already, errInputDone)
	}

	var rows []sql.Event
	for _, rc := range rcs {
		info := rc.v.info
		info.Extremities = slices.Clone(info.Extremities)
		if info.NID == 0 {
			nid, err := q.CreateRoom(ctx, info.RoomID, info.Version)
			if err != nil {
				return fmt.Errorf("create room row: %w", err)
			}
			info.NID = nid
		}
		rc.after = &roomView{info: info, state: rc.v.state}
		for _, p := range rc.evs {
			ev := p.pdu
			// The state before is set with the stream position: for
			// events after a state event of the same commit it is a
			// snapshot not written yet.
			rows = append(rows, sql.Event{
				RoomNID: info.NID, EventID: ev.EventID(), Type: ev.Type(), StateKey: ev.StateKey(),
				Sender: string(ev.SenderID()), Depth: ev.Depth(), OriginServerTS: int64(ev.OriginServerTS()),
				StateBeforeNID: info.SnapshotNID, JSON: ev.JSON(),
			})
		}
	}
	nids, err := q.InsertEvents(ctx, rows)
	if err != nil {
		return fmt.Errorf("insert events: %w", err)
	}
	// Events of this transaction, which the event cache must not learn
	// before the commit: a rolled back NID may be handed out again.
	fresh := make(map[int64]gomatrixserverlib.PDU, len(nids))
	var txns []sql.EventTransaction
	for _, rc := range rcs {
		rc.nids, nids = nids[:len(rc.evs):len(rc.evs)], nids[len(rc.evs):]
		for i, p := range rc.evs {
			fresh[rc.nids[i]] = p.pdu
			if p.ne != nil && p.ne.TxnID != "" {
				txns = append(txns, sql.EventTransaction{EventNID: rc.nids[i], UserID: p.ne.Sender, DeviceID: p.ne.DeviceID, TxnID: p.ne.TxnID})
			}
		}
		if err := rs.stage(ctx, q, rc, fresh); err != nil {
			return err
		}
	}
	if err := q.AddEventTransactions(ctx, txns); err != nil {
		return fmt.Errorf("event transactions: %w", err)
	}

	first, err := q.AllocStreamPositions(ctx, sql.EventsStream, len(rows))
	if err != nil {
		return err
	}
	positions := make([]sql.EventPosition, 0, len(rows))
	updates := make([]sql.RoomUpdate, 0, len(rcs))
	pos := first
	for _, rc := range rcs {
		for i := range rc.outputs {
			positions = append(positions, sql.EventPosition{NID: rc.nids[i], StreamPos: pos, StateBeforeNID: rc.stateBefore[i]})
			rc.outputs[i].StreamPos = pos
			pos++
		}
		rc.after.info.LastStreamPos = pos - 1
		updates = append(updates, sql.RoomUpdate{Info: rc.after.info, PrevStreamPos: rc.v.info.LastStreamPos})
	}
	if err := q.SetEventPositions(ctx, positions); err != nil {
		return fmt.Errorf("event positions: %w", err)
	}
	for _, rc := range rcs {
		for _, m := range rc.members {
			if err := q.SetMembership(ctx, rc.after.info.NID, m.userID, m.membership, m.nid, rc.outputs[m.event].StreamPos); err != nil {
				return err
			}
		}
	}
	// Only if no other writer moved the rooms since their views were
	// read, which makes a stale cached view harmless.
	if err := q.UpdateRoomsFrom(ctx, updates); err != nil {
		return fmt.Errorf("update rooms: %w", err)
	}
	return nil
}

// stage applies one room's inserted events in order: relations, state
// snapshots, current state, redactions, extremities and depth, leaving
// memberships for when stream positions are known. It fills rc.after (set
// up by commitTx), rc.stateBefore, rc.outputs, rc.members and rc.redacted.
func (rs *Roomserver) stage(ctx context.Context, q *sql.Queries, rc *roomCommit, fresh map[int64]gomatrixserverlib.PDU) error {
	info := &rc.after.info
	state, cloned := rc.v.state, false
	rc.stateBefore, rc.outputs, rc.members, rc.redacted = rc.stateBefore[:0], rc.outputs[:0], rc.members[:0], rc.redacted[:0]
	for i, p := range rc.evs {
		ev, nid := p.pdu, rc.nids[i]
		rc.stateBefore = append(rc.stateBefore, info.SnapshotNID)
		if err := q.IndexRelation(ctx, nid, info.NID, ev.Content()); err != nil {
			return fmt.Errorf("index relation of %s: %w", ev.EventID(), err)
		}
		out := OutputEvent{RoomID: info.RoomID, EventID: ev.EventID(), Type: ev.Type(), StateKey: ev.StateKey(), Sender: string(ev.SenderID())}
		if sk := ev.StateKey(); sk != nil {
			k := sql.StateKey{Type: ev.Type(), StateKey: *sk}
			if !cloned {
				// Copy on the first state change only: message events
				// leave the cached state as it is.
				state, cloned = maps.Clone(rc.v.state), true
			}
			state[k] = nid
			base, entries := info.SnapshotNID, sql.StateMap{k: nid}
			if info.ChainLength >= maxSnapshotChain || base == 0 {
				base, entries, info.ChainLength = 0, state, 0
			} else {
				info.ChainLength++
			}
			var err error
			if info.SnapshotNID, err = q.AddSnapshot(ctx, info.NID, base, info.ChainLength, entries); err != nil {
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
				rc.members = append(rc.members, memberChange{userID: *sk, membership: m, nid: nid, event: i})
				out.Membership = m
			}
		}
		if ev.Type() == spec.MRoomRedaction {
			target, err := rs.applyRedaction(ctx, q, *info, state, fresh, ev)
			if err != nil {
				return err
			}
			if target != 0 {
				rc.redacted = append(rc.redacted, target)
			}
		}
		info.Extremities = nextExtremities(info.Extremities, ev)
		info.MaxDepth = max(info.MaxDepth, ev.Depth())
		rc.outputs = append(rc.outputs, out)
	}
	rc.after.state = state
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
// fresh holds the events of the transaction, by NID.
func (rs *Roomserver) applyRedaction(ctx context.Context, q *sql.Queries, info sql.RoomInfo, state sql.StateMap, fresh map[int64]gomatrixserverlib.PDU,
	redaction gomatrixserverlib.PDU) (int64, error) {
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
		allowed, err := rs.canRedactOthers(ctx, q, state, fresh, redaction)
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
func (rs *Roomserver) canRedactOthers(ctx context.Context, q *sql.Queries, state sql.StateMap, fresh map[int64]gomatrixserverlib.PDU,
	redaction gomatrixserverlib.PDU) (bool, error) {
	var plEvent, createEvent gomatrixserverlib.PDU
	nids := []int64{}
	var evs []gomatrixserverlib.PDU
	for _, k := range []sql.StateKey{{Type: spec.MRoomPowerLevels}, {Type: spec.MRoomCreate}} {
		if n, ok := state[k]; !ok {
			continue
		} else if e, ok := fresh[n]; ok {
			evs = append(evs, e)
		} else {
			nids = append(nids, n)
		}
	}
	stored, err := rs.pdus(ctx, q, nids)
	if err != nil {
		return false, err
	}
	for _, e := range stored {
		evs = append(evs, e)
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
// the database; it is logged, not returned. The events go out at once and
// their acks are awaited together: one wait per batch, not per event, and
// still in order, since they travel on one connection.
func (rs *Roomserver) publish(ctx context.Context, outputs []OutputEvent) {
	if rs.bus == nil || len(outputs) == 0 {
		return
	}
	js := rs.bus.JetStream()
	type sent struct {
		o OutputEvent
		f jetstream.PubAckFuture
	}
	pending := make([]sent, 0, len(outputs))
	for _, o := range outputs {
		data, err := json.Marshal(o)
		if err == nil {
			var f jetstream.PubAckFuture
			if f, err = js.PublishAsync(bus.RoomOutputSubject(o.RoomID), data); err == nil {
				pending = append(pending, sent{o, f})
				continue
			}
		}
		rs.log.Warn("publish room output", "room_id", o.RoomID, "event_id", o.EventID, "err", err)
	}
	timeout := time.NewTimer(publishTimeout)
	defer timeout.Stop()
	for _, p := range pending {
		select {
		case <-p.f.Ok():
		case err := <-p.f.Err():
			rs.log.Warn("publish room output", "room_id", p.o.RoomID, "event_id", p.o.EventID, "err", err)
		case <-timeout.C:
			rs.log.Warn("publish room output: no ack", "room_id", p.o.RoomID, "event_id", p.o.EventID)
			return
		case <-ctx.Done():
			return
		}
	}
}
