package roomserver

import (
	"context"
	"errors"
	"fmt"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
)

// The read side: any process may answer these from the database; only
// writes go through the room's writer.

// Event returns a stored event and its parsed form; 404 M_NOT_FOUND if
// unknown.
func (rs *Roomserver) Event(ctx context.Context, eventID string) (sql.Event, gomatrixserverlib.PDU, error) {
	gen := rs.events.generation()
	s, err := rs.db.EventByID(ctx, eventID)
	if errors.Is(err, sql.ErrNotFound) {
		return sql.Event{}, nil, mxhttp.NotFound("Event not found")
	}
	if err != nil {
		return sql.Event{}, nil, fmt.Errorf("load event %s: %w", eventID, err)
	}
	pdu, err := rs.parseCached(gen, s)
	return s, pdu, err
}

// recentMax bounds the events CommittedEvent keeps.
const recentMax = 4096

// recentEvent is an event this process committed, as committed, and
// the device and client transaction that sent it ("" for none).
type recentEvent struct {
	row             sql.Event
	pdu             gomatrixserverlib.PDU
	deviceID, txnID string
	// bundlesInto is the event whose bundle the event joins (a bundled
	// relation, sql.Bundled), "" for none: see extendTail.
	bundlesInto string
	// stateAfter is the state snapshot after the event.
	stateAfter int64
}

// CommittedEvent is Event for the consumers of room.output, which read
// each event soon after its output: one of the last events this process
// built and committed comes from memory, as it was committed, any other
// from the database. A redaction since then is not in it: the consumer
// meets the redaction's own output later.
func (rs *Roomserver) CommittedEvent(ctx context.Context, eventID string) (sql.Event, gomatrixserverlib.PDU, error) {
	if row, pdu, ok := rs.RecentEvent(eventID); ok {
		return row, pdu, nil
	}
	return rs.Event(ctx, eventID)
}

// RecentEvent is one of the last events this process built and
// committed, as committed, from memory only (ok false for any other).
func (rs *Roomserver) RecentEvent(eventID string) (row sql.Event, pdu gomatrixserverlib.PDU, ok bool) {
	e, ok := rs.recent.Get(eventID)
	return e.row, e.pdu, ok
}

// StateAfter is the state snapshot after one of the last events this
// process built and committed, from memory only (ok false for any other
// event): the snapshot the room's next event stands on.
func (rs *Roomserver) StateAfter(eventID string) (snapshotNID int64, ok bool) {
	e, ok := rs.recent.Get(eventID)
	return e.stateAfter, ok
}

// RecentTransaction is who sent one of the last events this process
// built and committed, from which device and in which client transaction
// ("" for none), from memory only (ok false for any other event).
func (rs *Roomserver) RecentTransaction(eventID string) (userID, deviceID, txnID string, ok bool) {
	e, ok := rs.recent.Get(eventID)
	return e.row.Sender, e.deviceID, e.txnID, ok
}

// parseCached parses a stored event, or takes it from the cache; gen is
// the cache's generation from before the row was read (eventCache).
func (rs *Roomserver) parseCached(gen uint64, s sql.Event) (gomatrixserverlib.PDU, error) {
	if pdu, ok := rs.events.Get(s.NID); ok {
		return pdu, nil
	}
	pdu, err := ParseStored(s)
	if err != nil {
		return nil, err
	}
	rs.events.put(gen, s.NID, pdu)
	return pdu, nil
}

// PreviousInput returns what an input already handled made, so that a
// retried client transaction is answered without going to the room's
// writer; found is false for an input not seen yet.
func (rs *Roomserver) PreviousInput(ctx context.Context, inputID string) (resp InputResponse, found bool, err error) {
	roomID, ids, err := rs.db.InputResult(ctx, inputID)
	if errors.Is(err, sql.ErrNotFound) {
		return InputResponse{}, false, nil
	}
	if err != nil {
		return InputResponse{}, false, fmt.Errorf("look up input %s: %w", inputID, err)
	}
	return InputResponse{RoomID: roomID, EventIDs: ids}, true, nil
}

// RoomVersion returns a room's version; 404 M_NOT_FOUND for unknown rooms.
func (rs *Roomserver) RoomVersion(ctx context.Context, roomID string) (string, error) {
	info, err := rs.db.Room(ctx, roomID)
	if errors.Is(err, sql.ErrNotFound) {
		return "", mxhttp.NotFound("Unknown room %s", roomID)
	}
	if err != nil {
		return "", fmt.Errorf("load room %s: %w", roomID, err)
	}
	return info.Version, nil
}

// CurrentStateEvent returns the event holding one piece of a room's
// current state, or nil when that state is not set.
func (rs *Roomserver) CurrentStateEvent(ctx context.Context, roomID, eventType, stateKey string) (gomatrixserverlib.PDU, error) {
	gen := rs.events.generation()
	s, err := rs.db.CurrentStateEvent(ctx, roomID, sql.StateKey{Type: eventType, StateKey: stateKey})
	if errors.Is(err, sql.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load state %s/%s: %w", eventType, stateKey, err)
	}
	return rs.parseCached(gen, s)
}

// CurrentState returns every event of a room's current state.
func (rs *Roomserver) CurrentState(ctx context.Context, roomID string) ([]gomatrixserverlib.PDU, error) {
	gen := rs.events.generation()
	stored, err := rs.db.CurrentStateEvents(ctx, roomID)
	if err != nil {
		return nil, fmt.Errorf("load state of %s: %w", roomID, err)
	}
	out := make([]gomatrixserverlib.PDU, 0, len(stored))
	for _, s := range stored {
		pdu, err := rs.parseCached(gen, s)
		if err != nil {
			return nil, err
		}
		out = append(out, pdu)
	}
	return out, nil
}

// StateBefore returns the room state just before an event.
func (rs *Roomserver) StateBefore(ctx context.Context, ev sql.Event) ([]gomatrixserverlib.PDU, error) {
	state, err := rs.db.Snapshot(ctx, ev.StateBeforeNID)
	if err != nil {
		return nil, fmt.Errorf("state before %s: %w", ev.EventID, err)
	}
	nids := make([]int64, 0, len(state))
	for _, n := range state {
		nids = append(nids, n)
	}
	evs, err := rs.pdus(ctx, &rs.db.Queries, nids)
	if err != nil {
		return nil, err
	}
	out := make([]gomatrixserverlib.PDU, 0, len(evs))
	for _, e := range evs {
		out = append(out, e)
	}
	return out, nil
}

// Membership returns a user's current membership of a room ("" if none).
func (rs *Roomserver) Membership(ctx context.Context, roomID, userID string) (string, error) {
	return rs.db.Membership(ctx, roomID, userID)
}

// RoomsWithMembership lists the rooms where a user has the membership.
func (rs *Roomserver) RoomsWithMembership(ctx context.Context, userID, membership string) ([]string, error) {
	return rs.db.RoomsWithMembership(ctx, userID, membership)
}

// Power returns a room's current power levels.
func (rs *Roomserver) Power(ctx context.Context, roomID string) (Power, error) {
	create, err := rs.CurrentStateEvent(ctx, roomID, "m.room.create", "")
	if err != nil {
		return Power{}, err
	}
	pl, err := rs.CurrentStateEvent(ctx, roomID, "m.room.power_levels", "")
	if err != nil {
		return Power{}, err
	}
	return PowerFrom(create, pl), nil
}
