package sql

import (
	"context"
	"encoding/json"
	"fmt"
)

// RoomInfo is a room's row: what the room's writer needs to add an event.
type RoomInfo struct {
	NID           int64
	RoomID        string
	Version       string
	SnapshotNID   int64
	Extremities   []string
	MaxDepth      int64
	LastStreamPos int64
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
	err := t.q.QueryRowContext(ctx, `SELECT room_nid, room_version, state_snapshot_nid, forward_extremities, max_depth, last_stream_pos
		FROM rooms WHERE room_id = $1`, roomID).Scan(&r.NID, &r.Version, &r.SnapshotNID, &ext, &r.MaxDepth, &r.LastStreamPos)
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

// EventTransaction returns the transaction behind an event, or ErrNotFound.
func (t *Queries) EventTransaction(ctx context.Context, eventNID int64) (userID, deviceID, txnID string, err error) {
	err = t.q.QueryRowContext(ctx, `SELECT user_id, device_id, txn_id FROM event_transactions WHERE event_nid = $1`, eventNID).
		Scan(&userID, &deviceID, &txnID)
	return userID, deviceID, txnID, noRows(err)
}
