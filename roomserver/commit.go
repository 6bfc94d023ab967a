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

// pending is a built or received event waiting to be committed.
type pending struct {
	pdu gomatrixserverlib.PDU
	ne  *NewEvent
	// remote is set for an event from another server that does not
	// simply extend the room's state (see remoteFacts); nil otherwise.
	remote *remoteFacts
}

// remoteFacts is what the roomserver worked out about an event from
// another server whose place in the room is not on top of its current
// state.
type remoteFacts struct {
	// outlier: not in the timeline (soft-failed, rejected, or fetched
	// only for its state or auth chain): stored with the state before it
	// where known, but no stream position, and the room's state and
	// extremities stay as they are.
	outlier, rejected bool
	// before is the state before the event; nil: the room's current
	// state (for an outlier: unknown). beforeFresh adds to it pieces held
	// by events of the same commit, by event id, whose NIDs are not known
	// until it is staged (the state a join through another server
	// brings).
	before      sql.StateMap
	beforeFresh map[sql.StateKey]string
	// current is the room's state once the event is in: the resolution
	// of its forward extremities' states; nil: before plus the event.
	current sql.StateMap
	// only: the event becomes the room's only forward extremity (a join
	// through another server, after which our old extremities are stale).
	only bool
	// outOfBand: an outlier that still sets its target's membership (an
	// invite to a room we are not in, or its rejection), with the
	// stripped state shown with an invite.
	outOfBand       bool
	inviteRoomState []byte
	// backfill is set for history older than the room's timeline, which
	// changes nothing of the room (see stageBackfill); the fields above
	// are then unused.
	backfill *historical
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

	after    *roomView // the view once committed
	nids     []int64   // of evs
	outputs  []OutputEvent
	redacted []int64
	// local holds the rows of the new events built here (not received),
	// their stream positions set once committed.
	local []recentEvent
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
			rs.views.Delete(rc.v.info.RoomID)
		}
		return err
	}
	for _, rc := range rcs {
		for i, p := range rc.evs {
			if p.pdu.StateKey() != nil {
				// The next events' auth events are likely among them.
				rs.events.committed(rc.nids[i], p.pdu)
			}
		}
		rs.events.redacted(rc.redacted)
		rs.views.Put(rc.v.info.RoomID, rc.after)
		for _, e := range rc.local {
			rs.recent.Put(e.row.EventID, e)
		}
		rs.extendTail(rc)
	}
	var outputs []OutputEvent
	for _, rc := range rcs {
		outputs = append(outputs, rc.outputs...)
	}
	rs.publish(ctx, outputs)
	return nil
}

// groupTx is what commitTx knows of the whole transaction while it
// stages each room's share.
type groupTx struct {
	// byID finds the events of the transaction, for redactions of them;
	// byNID (see freshByNID) for the state they make.
	byID  map[string]*freshEvent
	byNID map[int64]gomatrixserverlib.PDU
	// redacted holds the events the transaction redacts.
	redacted map[int64]bool
	// What the statements of the transaction write.
	events   []sql.PendingEvent
	snaps    []sql.Snapshot
	current  []sql.StateChange
	gone     []sql.StateChange // pieces of current state to remove
	invites  []inviteState
	members  []sql.MemberChange
	rels     []sql.EventRelation
	placed   []sql.PendingEvent // outliers put into the timeline as history
	gaps     []sql.GapRow       // prev events the timeline may lack (see noteGaps)
	filled   []string           // events that close recorded gaps
	txns     []sql.EventTransaction
	rooms    []sql.RoomMove
	redacts  []redactionRow
	snapNIDs []int64
}

// freshEvent is an event of the transaction.
type freshEvent struct {
	nid, roomNID int64
	pdu          gomatrixserverlib.PDU
}

// inviteState is the stripped state of an out-of-band invite.
type inviteState struct {
	nid   int64
	state []byte
}

// redactionRow is a redacted event's new JSON.
type redactionRow struct {
	nid      int64
	stripped []byte
	by       string
}

// commitTx writes rcs in one transaction, as one pipeline of statements
// for all the rooms together (see sql.Pipeline): on PostgreSQL one round
// trip, which commits. Everything the statements need is worked out
// first, NIDs included. The stream positions are taken last but for
// what needs them (the events themselves, memberships, the rooms' rows):
// the counter row's lock is held from their allocation to the commit,
// which, with no round trip in between, is as short as it gets.
func (rs *Roomserver) commitTx(ctx context.Context, rcs []*roomCommit) error {
	var last int64
	err := rs.db.RunPipeline(ctx, func(p *sql.Pipeline) error {
		return rs.stageTx(ctx, p, rcs, &last)
	})
	if errors.Is(err, sql.ErrInputRecorded) {
		// An input handled already (redelivered, or retried while it was
		// in flight) must not make a second event.
		return fmt.Errorf("%w: %w", errInputDone, err)
	}
	if err != nil {
		return err
	}
	for _, rc := range rcs {
		for i := range rc.outputs {
			// Until now StreamPos held how far before the last
			// position allocated the event's is.
			rc.outputs[i].StreamPos = last - rc.outputs[i].StreamPos
		}
		if len(rc.outputs) > 0 {
			rc.after.info.LastStreamPos = rc.outputs[len(rc.outputs)-1].StreamPos
		}
		for i := range rc.local {
			rc.local[i].row.StreamPos = last - rc.local[i].row.StreamPos
		}
	}
	return nil
}

// stageTx queues the statements of the transaction on p. *last receives
// the last stream position allocated.
func (rs *Roomserver) stageTx(ctx context.Context, p *sql.Pipeline, rcs []*roomCommit, last *int64) error {
	var inputs []sql.InputRecord
	total, states, newRooms := 0, 0, 0
	for _, rc := range rcs {
		inputs = append(inputs, rc.inputs...)
		for _, e := range rc.evs {
			if e.remote == nil || e.remote.backfill == nil && (!e.remote.outlier || e.remote.outOfBand) {
				total++
			}
			switch {
			case e.remote != nil:
				states += e.remote.snapshots()
			case e.pdu.StateKey() != nil:
				states++
			}
		}
		if rc.v.info.NID == 0 {
			newRooms++
		}
	}
	if err := p.RecordInputs(inputs); err != nil {
		return err
	}
	count := 0
	for _, rc := range rcs {
		count += len(rc.evs)
	}
	nids, err := p.EventNIDs(count)
	if err != nil {
		return err
	}
	g := &groupTx{byID: make(map[string]*freshEvent, count), redacted: make(map[int64]bool)}
	if g.snapNIDs, err = p.SnapshotNIDs(states); err != nil {
		return err
	}
	roomNIDs, err := p.RoomNIDs(newRooms)
	if err != nil {
		return err
	}
	for _, rc := range rcs {
		info := rc.v.info
		info.Extremities = slices.Clone(info.Extremities)
		if info.NID == 0 {
			info.NID, roomNIDs = roomNIDs[0], roomNIDs[1:]
			p.CreateRoom(info.NID, info.RoomID, info.Version)
		}
		rc.after = &roomView{info: info, state: rc.v.state}
		rc.nids, nids = nids[:len(rc.evs):len(rc.evs)], nids[len(rc.evs):]
		for i, e := range rc.evs {
			if e.remote != nil && e.remote.backfill != nil && e.remote.backfill.outlier != 0 {
				// Stored already: it keeps its NID, the one reserved
				// goes unused.
				rc.nids[i] = e.remote.backfill.outlier
			}
			g.byID[e.pdu.EventID()] = &freshEvent{nid: rc.nids[i], roomNID: info.NID, pdu: e.pdu}
		}
	}
	back := int64(total)
	for _, rc := range rcs {
		if err := rs.stage(ctx, g, rc, &back); err != nil {
			return err
		}
	}
	// What does not need stream positions goes before they are taken.
	p.AddSnapshots(g.snaps)
	p.SetCurrentState(g.current)
	p.DeleteCurrentState(g.gone)
	p.IndexRelations(g.rels)
	p.AddEventTransactions(g.txns)
	p.AllocEventPositions(total, last)
	// The rooms first: only if no other writer moved them since their
	// views were read, which makes a stale cached view harmless. An event
	// built on a stale view may even be one the other writer stored
	// already (the same sender, content, prev events and millisecond
	// make the same event id): that is staleness too, not a duplicate.
	if err := p.UpdateRooms(g.rooms); err != nil {
		return err
	}
	p.InsertEvents(g.events)
	p.PlaceOutliers(g.placed)
	// After the events, which they look up.
	p.ClearGaps(g.filled)
	p.RecordGaps(g.gaps)
	for _, r := range g.redacts {
		// After the events: the redacted event may be one of them.
		p.RedactEvent(r.nid, r.stripped, r.by)
	}
	p.SetMemberships(g.members)
	for _, x := range g.invites {
		p.AddInviteRoomState(x.nid, x.state)
	}
	return nil
}

// stage works out one room's share of the transaction, its events in
// order: their rows, relations, state snapshots, current state,
// memberships, redactions, and the room's new extremities and depth. It
// fills rc.after (set up by stageTx), rc.outputs and rc.redacted. *back
// counts down the events' distances from the last stream position the
// transaction allocates; outputs carry theirs in StreamPos until the
// commit.
func (rs *Roomserver) stage(ctx context.Context, g *groupTx, rc *roomCommit, back *int64) error {
	info := &rc.after.info
	state, cloned := rc.v.state, false
	rc.outputs, rc.redacted, rc.local = rc.outputs[:0], rc.redacted[:0], rc.local[:0]
	for i, p := range rc.evs {
		ev, nid := p.pdu, rc.nids[i]
		if p.remote != nil {
			var err error
			if state, err = rs.stageRemote(ctx, g, rc, p, nid, state, back); err != nil {
				return err
			}
			cloned = false
			continue
		}
		*back--
		row := sql.Event{
			NID: nid, RoomNID: info.NID, EventID: ev.EventID(), Type: ev.Type(), StateKey: ev.StateKey(),
			Sender: string(ev.SenderID()), Depth: ev.Depth(), OriginServerTS: int64(ev.OriginServerTS()),
			StateBeforeNID: info.SnapshotNID, JSON: ev.JSON(),
		}
		g.events = append(g.events, sql.PendingEvent{Event: row, Back: *back})
		// As the outputs, StreamPos holds the distance back until the
		// commit.
		row.RoomID, row.RoomVersion, row.StreamPos = info.RoomID, info.Version, *back
		recent := recentEvent{row: row, pdu: ev}
		if p.ne != nil && p.ne.TxnID != "" {
			g.txns = append(g.txns, sql.EventTransaction{EventNID: nid, UserID: p.ne.Sender, DeviceID: p.ne.DeviceID, TxnID: p.ne.TxnID})
			recent.deviceID, recent.txnID = p.ne.DeviceID, p.ne.TxnID
		}
		if rel, ok := sql.RelationOf(ev.Content()); ok {
			g.rels = append(g.rels, sql.EventRelation{EventNID: nid, RoomNID: info.NID, DeclaredRelation: rel})
			if sql.Bundled(rel.RelType) {
				recent.bundlesInto = rel.RelatesTo
			}
		}
		rc.local = append(rc.local, recent)
		out := OutputEvent{RoomID: info.RoomID, EventID: ev.EventID(), Type: ev.Type(), StateKey: ev.StateKey(), Sender: string(ev.SenderID()),
			StreamPos: *back}
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
				// A full snapshot holds the state as it is now: a copy,
				// since state goes on changing.
				base, entries, info.ChainLength = 0, maps.Clone(state), 0
			} else {
				info.ChainLength++
			}
			info.SnapshotNID = g.snapshot(info.NID, base, info.ChainLength, entries)
			g.current = append(g.current, sql.StateChange{RoomNID: info.NID, Key: k, EventNID: nid})
			if ev.Type() == spec.MRoomMember {
				m, err := ev.Membership()
				if err != nil {
					return fmt.Errorf("membership of %s: %w", ev.EventID(), err)
				}
				g.members = append(g.members, sql.MemberChange{RoomNID: info.NID, UserID: *sk, Membership: m, EventNID: nid, Back: *back})
				out.Membership = m
			}
		}
		if ev.Type() == spec.MRoomRedaction {
			target, err := rs.applyRedaction(ctx, g, *info, state, ev)
			if err != nil {
				return err
			}
			if target != 0 {
				rc.redacted = append(rc.redacted, target)
			}
		}
		rc.local[len(rc.local)-1].stateAfter = info.SnapshotNID
		info.Extremities = nextExtremities(info.Extremities, ev)
		info.MaxDepth = max(info.MaxDepth, ev.Depth())
		rc.outputs = append(rc.outputs, out)
	}
	rc.after.state = state
	if len(rc.outputs) > 0 {
		// Outliers alone leave the room where it is.
		g.rooms = append(g.rooms, sql.RoomMove{Info: *info, PrevStreamPos: rc.v.info.LastStreamPos, Back: *back})
	}
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
// It returns the NID of the event it redacts, or 0.
//
// The target is read outside the transaction, unless it is one of the
// transaction's: it lies in the room being written (a target elsewhere is
// left alone), whose only writer holds the room's lock through the commit.
func (rs *Roomserver) applyRedaction(ctx context.Context, g *groupTx, info sql.RoomInfo, state sql.StateMap, redaction gomatrixserverlib.PDU) (int64, error) {
	var target sql.Event
	if f, ok := g.byID[redaction.Redacts()]; ok {
		target = sql.Event{NID: f.nid, RoomNID: f.roomNID, EventID: f.pdu.EventID(), Sender: string(f.pdu.SenderID()), JSON: f.pdu.JSON()}
	} else {
		var err error
		target, err = rs.db.EventByID(ctx, redaction.Redacts())
		if errors.Is(err, sql.ErrNotFound) {
			return 0, nil // the spec allows redacting events this server has not seen
		}
		if err != nil {
			return 0, err
		}
	}
	if target.RoomNID != info.NID || target.RedactedBy != "" || g.redacted[target.NID] {
		return 0, nil
	}
	if target.Sender != string(redaction.SenderID()) {
		allowed, err := rs.canRedactOthers(ctx, g, state, redaction)
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
	g.redacted[target.NID] = true
	g.redacts = append(g.redacts, redactionRow{nid: target.NID, stripped: stripped, by: redaction.EventID()})
	return target.NID, nil
}

// canRedactOthers reports whether the redaction's sender has the redact
// power level in the room's current state.
func (rs *Roomserver) canRedactOthers(ctx context.Context, g *groupTx, state sql.StateMap, redaction gomatrixserverlib.PDU) (bool, error) {
	var plEvent, createEvent gomatrixserverlib.PDU
	nids := []int64{}
	var evs []gomatrixserverlib.PDU
	fresh := make(map[int64]gomatrixserverlib.PDU)
	for _, f := range g.byID {
		fresh[f.nid] = f.pdu
	}
	for _, k := range []sql.StateKey{{Type: spec.MRoomPowerLevels}, {Type: spec.MRoomCreate}} {
		if n, ok := state[k]; !ok {
			continue
		} else if e, ok := fresh[n]; ok {
			evs = append(evs, e)
		} else {
			nids = append(nids, n)
		}
	}
	stored, err := rs.pdus(ctx, &rs.db.Queries, nids)
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
// the database; it is logged, not returned. The events go out at once, in
// order since they travel on one connection, and publish returns without
// waiting for the stream's acks: the inputs' replies need not wait for
// them, and nor do the room's next inputs. The acks are checked on the
// side; the client bounds how many may be outstanding.
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
	if len(pending) == 0 {
		return
	}
	go func() {
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
	}()
}
