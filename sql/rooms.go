package sql

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// ErrStale is returned by a conditional update whose row changed since it
// was read: another writer got there first.
var ErrStale = errors.New("row changed since it was read")

// RoomInfo is a room's row: what the room's writer needs to add an event.
type RoomInfo struct {
	NID           int64
	RoomID        string
	Version       string
	SnapshotNID   int64
	Extremities   []string
	MaxDepth      int64
	LastStreamPos int64
	// ChainLength is how many snapshots SnapshotNID stands on, which
	// tells the writer when the next snapshot must be a full one.
	ChainLength int
}

// CreateRoom adds a room; ErrExists when the room id is taken.
func (t *Queries) CreateRoom(ctx context.Context, roomID, version string) (int64, error) {
	var nid int64
	err := t.q.QueryRowContext(ctx, `INSERT INTO rooms (room_id, room_version) VALUES ($1, $2) RETURNING room_nid`, roomID, version).Scan(&nid)
	if isUniqueViolation(err) {
		return 0, ErrExists
	}
	return nid, err
}

// Room returns a room's row, or ErrNotFound.
func (t *Queries) Room(ctx context.Context, roomID string) (RoomInfo, error) {
	r := RoomInfo{RoomID: roomID}
	var ext string
	err := t.q.QueryRowContext(ctx, `SELECT r.room_nid, r.room_version, r.state_snapshot_nid, r.forward_extremities, r.max_depth, r.last_stream_pos,
			COALESCE(s.chain_length, 0)
		FROM rooms r LEFT JOIN state_snapshots s ON s.snapshot_nid = r.state_snapshot_nid
		WHERE r.room_id = $1`, roomID).Scan(&r.NID, &r.Version, &r.SnapshotNID, &ext, &r.MaxDepth, &r.LastStreamPos, &r.ChainLength)
	if err != nil {
		return RoomInfo{}, noRows(err)
	}
	if err := json.Unmarshal([]byte(ext), &r.Extremities); err != nil {
		return RoomInfo{}, fmt.Errorf("room %s extremities: %w", roomID, err)
	}
	return r, nil
}

// UpdateRoom records a room's new current state, extremities and depth.
func (t *Queries) UpdateRoom(ctx context.Context, r RoomInfo) error {
	ext, err := json.Marshal(r.Extremities)
	if err != nil {
		return err
	}
	return expectRow(t.q.ExecContext(ctx, `UPDATE rooms SET state_snapshot_nid = $1, forward_extremities = $2, max_depth = $3, last_stream_pos = $4
		WHERE room_nid = $5`, r.SnapshotNID, string(ext), r.MaxDepth, r.LastStreamPos, r.NID))
}

// RoomUpdate is a room's new row, to be written only if the room's
// last_stream_pos is still PrevStreamPos.
type RoomUpdate struct {
	Info          RoomInfo
	PrevStreamPos int64
}

// UpdateRoomsFrom records the new current state, extremities, depth and
// last stream position of each room in one statement, if every room's
// last_stream_pos is still its PrevStreamPos, and returns ErrStale
// otherwise: a writer's view of a room was out of date, and the caller
// must roll back. The rows stay locked until the transaction ends, so a
// concurrent writer of the same room waits and then finds it changed.
func (t *Queries) UpdateRoomsFrom(ctx context.Context, rooms []RoomUpdate) error {
	if len(rooms) == 0 {
		return nil
	}
	// The CASTs give PostgreSQL types for the parameters of the CASEs,
	// which it cannot infer.
	var snap, ext, depth, pos strings.Builder
	where := make([]string, len(rooms))
	args := make([]any, 0, 6*len(rooms))
	for i, r := range rooms {
		e, err := json.Marshal(r.Info.Extremities)
		if err != nil {
			return err
		}
		n := 6*i + 1
		fmt.Fprintf(&snap, " WHEN $%d THEN CAST($%d AS BIGINT)", n, n+1)
		fmt.Fprintf(&ext, " WHEN $%d THEN CAST($%d AS TEXT)", n, n+2)
		fmt.Fprintf(&depth, " WHEN $%d THEN CAST($%d AS BIGINT)", n, n+3)
		fmt.Fprintf(&pos, " WHEN $%d THEN CAST($%d AS BIGINT)", n, n+4)
		where[i] = fmt.Sprintf("(room_nid = $%d AND last_stream_pos = $%d)", n, n+5)
		args = append(args, r.Info.NID, r.Info.SnapshotNID, string(e), r.Info.MaxDepth, r.Info.LastStreamPos, r.PrevStreamPos)
	}
	res, err := t.q.ExecContext(ctx, `UPDATE rooms SET state_snapshot_nid = CASE room_nid`+snap.String()+` END,
		forward_extremities = CASE room_nid`+ext.String()+` END, max_depth = CASE room_nid`+depth.String()+` END,
		last_stream_pos = CASE room_nid`+pos.String()+` END
		WHERE `+strings.Join(where, " OR "), args...)
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n != int64(len(rooms)) {
		return fmt.Errorf("%d of %d rooms: %w", int64(len(rooms))-n, len(rooms), ErrStale)
	}
	return nil
}

// AllocStreamPos takes the next position of a stream. The counter row is
// locked until the transaction ends, so positions commit in order: a
// reader that sees position N has seen every position below it.
func (t *Queries) AllocStreamPos(ctx context.Context, stream string) (int64, error) {
	var pos int64
	err := t.q.QueryRowContext(ctx, `UPDATE stream_positions SET pos = pos + 1 WHERE stream = $1 RETURNING pos`, stream).Scan(&pos)
	if err != nil {
		return 0, fmt.Errorf("allocate %s stream position: %w", stream, noRows(err))
	}
	return pos, nil
}

// AllocStreamPositions takes the next n positions of a stream and returns
// the first; like AllocStreamPos it locks the counter row until the
// transaction ends. Taking it as late as possible in a transaction keeps
// the lock, which serialises every writer of the stream, short.
func (t *Queries) AllocStreamPositions(ctx context.Context, stream string, n int) (int64, error) {
	var pos int64
	err := t.q.QueryRowContext(ctx, `UPDATE stream_positions SET pos = pos + $2 WHERE stream = $1 RETURNING pos`, stream, n).Scan(&pos)
	if err != nil {
		return 0, fmt.Errorf("allocate %d %s stream positions: %w", n, stream, noRows(err))
	}
	return pos - int64(n) + 1, nil
}

// StreamPos is the latest committed position of a stream.
func (t *Queries) StreamPos(ctx context.Context, stream string) (int64, error) {
	var pos int64
	err := t.q.QueryRowContext(ctx, `SELECT pos FROM stream_positions WHERE stream = $1`, stream).Scan(&pos)
	return pos, noRows(err)
}

// RecordInput remembers the events an input made, for idempotent retries.
func (t *Queries) RecordInput(ctx context.Context, inputID, roomID string, eventIDs []string) error {
	ids, err := json.Marshal(eventIDs)
	if err != nil {
		return err
	}
	_, err = t.q.ExecContext(ctx, `INSERT INTO room_inputs (input_id, room_id, event_ids, created_ts) VALUES ($1, $2, $3, $4)`,
		inputID, roomID, string(ids), nowMillis())
	return err
}

// InputRecord is an input handled and the events it made.
type InputRecord struct {
	InputID  string
	RoomID   string
	EventIDs []string
}

// RecordInputs is RecordInput for several inputs in one statement, except
// that an input already recorded is left as it is: it returns the ids of
// those, for the caller to roll back.
func (t *Queries) RecordInputs(ctx context.Context, inputs []InputRecord) (already []string, err error) {
	if len(inputs) == 0 {
		return nil, nil
	}
	now := nowMillis()
	args := make([]any, 0, 4*len(inputs))
	rows := make([]string, len(inputs))
	for i, in := range inputs {
		ids, err := json.Marshal(in.EventIDs)
		if err != nil {
			return nil, err
		}
		rows[i] = "(" + placeholders(4*i+1, 4) + ")"
		args = append(args, in.InputID, in.RoomID, string(ids), now)
	}
	res, err := t.q.QueryContext(ctx, `INSERT INTO room_inputs (input_id, room_id, event_ids, created_ts) VALUES `+strings.Join(rows, ", ")+`
		ON CONFLICT (input_id) DO NOTHING RETURNING input_id`, args...)
	if err != nil {
		return nil, err
	}
	defer res.Close()
	inserted := make(map[string]bool, len(inputs))
	for res.Next() {
		var id string
		if err := res.Scan(&id); err != nil {
			return nil, err
		}
		inserted[id] = true
	}
	if err := res.Err(); err != nil {
		return nil, err
	}
	for _, in := range inputs {
		if !inserted[in.InputID] {
			already = append(already, in.InputID)
		}
	}
	return already, nil
}

// InputResults returns the inputs among ids already handled, by input id.
func (t *Queries) InputResults(ctx context.Context, ids []string) (map[string]InputRecord, error) {
	out := make(map[string]InputRecord)
	if len(ids) == 0 {
		return out, nil
	}
	args := make([]any, len(ids))
	for i, id := range ids {
		args[i] = id
	}
	rows, err := t.q.QueryContext(ctx, `SELECT input_id, room_id, event_ids FROM room_inputs WHERE input_id IN (`+placeholders(1, len(ids))+`)`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var in InputRecord
		var evs string
		if err := rows.Scan(&in.InputID, &in.RoomID, &evs); err != nil {
			return nil, err
		}
		if err := json.Unmarshal([]byte(evs), &in.EventIDs); err != nil {
			return nil, fmt.Errorf("input %s: %w", in.InputID, err)
		}
		out[in.InputID] = in
	}
	return out, rows.Err()
}

// InputResult returns the room and events of an input already handled, or
// ErrNotFound.
func (t *Queries) InputResult(ctx context.Context, inputID string) (roomID string, eventIDs []string, err error) {
	var ids string
	if err := t.q.QueryRowContext(ctx, `SELECT room_id, event_ids FROM room_inputs WHERE input_id = $1`, inputID).Scan(&roomID, &ids); err != nil {
		return "", nil, noRows(err)
	}
	return roomID, eventIDs, json.Unmarshal([]byte(ids), &eventIDs)
}

// AddEventTransaction links a local event to the client transaction that
// sent it.
func (t *Queries) AddEventTransaction(ctx context.Context, eventNID int64, userID, deviceID, txnID string) error {
	_, err := t.q.ExecContext(ctx, `INSERT INTO event_transactions (event_nid, user_id, device_id, txn_id) VALUES ($1, $2, $3, $4)`,
		eventNID, userID, deviceID, txnID)
	return err
}

// EventTransaction links a local event to the client transaction that
// sent it.
type EventTransaction struct {
	EventNID                int64
	UserID, DeviceID, TxnID string
}

// AddEventTransactions is AddEventTransaction for several events in one
// statement.
func (t *Queries) AddEventTransactions(ctx context.Context, txns []EventTransaction) error {
	if len(txns) == 0 {
		return nil
	}
	args := make([]any, 0, 4*len(txns))
	rows := make([]string, len(txns))
	for i, x := range txns {
		rows[i] = "(" + placeholders(4*i+1, 4) + ")"
		args = append(args, x.EventNID, x.UserID, x.DeviceID, x.TxnID)
	}
	_, err := t.q.ExecContext(ctx, `INSERT INTO event_transactions (event_nid, user_id, device_id, txn_id) VALUES `+strings.Join(rows, ", "), args...)
	return err
}

// EventTransaction returns the transaction behind an event, or ErrNotFound.
func (t *Queries) EventTransaction(ctx context.Context, eventNID int64) (userID, deviceID, txnID string, err error) {
	err = t.q.QueryRowContext(ctx, `SELECT user_id, device_id, txn_id FROM event_transactions WHERE event_nid = $1`, eventNID).
		Scan(&userID, &deviceID, &txnID)
	return userID, deviceID, txnID, noRows(err)
}
