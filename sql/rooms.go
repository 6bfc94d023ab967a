package sql

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
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

// InputRecord is an input handled and the events it made.
type InputRecord struct {
	InputID  string
	RoomID   string
	EventIDs []string
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

// EventTransaction links a local event to the client transaction that
// sent it.
type EventTransaction struct {
	EventNID                int64
	UserID, DeviceID, TxnID string
}

// EventTransaction returns the transaction behind an event, or ErrNotFound.
func (t *Queries) EventTransaction(ctx context.Context, eventNID int64) (userID, deviceID, txnID string, err error) {
	err = t.q.QueryRowContext(ctx, `SELECT user_id, device_id, txn_id FROM event_transactions WHERE event_nid = $1`, eventNID).
		Scan(&userID, &deviceID, &txnID)
	return userID, deviceID, txnID, noRows(err)
}

// ErrInputRecorded fails a pipeline that records an input already
// recorded: the input was handled before (or is being handled by a
// transaction that committed first).
var ErrInputRecorded = errors.New("input already recorded")

// headPos is the SQL of a position on the events stream counted back from
// the last one the transaction allocated (see AllocEventPositions): a
// pipeline cannot pass the allocated positions to the statements after
// it, so they read them from the counter row, which they see as their own
// transaction left it.
const headPos = `(SELECT pos FROM stream_positions WHERE stream = '` + EventsStream + `') - `

// RecordInputs records inputs as handled; if one was recorded before, the
// pipeline fails with ErrInputRecorded.
func (p *Pipeline) RecordInputs(inputs []InputRecord) error {
	now := nowMillis()
	for _, n := range chunkSizes(len(inputs), 64) {
		part := inputs[:n]
		inputs = inputs[n:]
		args := make([]any, 0, 4*n)
		for _, in := range part {
			ids, err := json.Marshal(in.EventIDs)
			if err != nil {
				return err
			}
			args = append(args, in.InputID, in.RoomID, string(ids), now)
		}
		p.exec(func(err error) error {
			if isUniqueViolation(err) {
				return ErrInputRecorded
			}
			return fmt.Errorf("record inputs: %w", err)
		}, `INSERT INTO room_inputs (input_id, room_id, event_ids, created_ts) VALUES `+valuesRows("?, ?, ?, ?", 1, n), args...)
	}
	return nil
}

// CreateRoom adds a room with a NID from RoomNIDs; the pipeline fails with
// ErrExists when the room id is taken.
func (p *Pipeline) CreateRoom(nid int64, roomID, version string) {
	p.exec(func(err error) error {
		if isUniqueViolation(err) {
			return ErrExists
		}
		return fmt.Errorf("create room %s: %w", roomID, err)
	}, `INSERT INTO rooms (room_nid, room_id, room_version) VALUES ($1, $2, $3)`, nid, roomID, version)
}

// AllocEventPositions takes the next n positions of the events stream and
// sets *last to the last of them once the pipeline has run. It locks the
// counter row until the transaction ends, so positions commit in order:
// queue it after every statement that does not need positions, which
// then run before the lock is taken.
func (p *Pipeline) AllocEventPositions(n int, last *int64) {
	p.queryRow([]any{last}, errPipelineStmt("allocate event positions"),
		`UPDATE stream_positions SET pos = pos + $1 WHERE stream = '`+EventsStream+`' RETURNING pos`, n)
}

// AddEventTransactions links local events to the client transactions
// that sent them (see Queries.EventTransaction).
func (p *Pipeline) AddEventTransactions(txns []EventTransaction) {
	for _, n := range chunkSizes(len(txns), 64) {
		part := txns[:n]
		txns = txns[n:]
		args := make([]any, 0, 4*n)
		for _, x := range part {
			args = append(args, x.EventNID, x.UserID, x.DeviceID, x.TxnID)
		}
		p.exec(errPipelineStmt("event transactions"),
			`INSERT INTO event_transactions (event_nid, user_id, device_id, txn_id) VALUES `+valuesRows("?, ?, ?, ?", 1, n), args...)
	}
}

// MemberChange is a membership set by a membership event at a position
// Back positions before the last one the transaction allocated.
type MemberChange struct {
	RoomNID    int64
	UserID     string
	Membership string
	EventNID   int64
	Back       int64
}

// SetMemberships records the users' new memberships; of several changes
// of one user in one room, the last wins.
func (p *Pipeline) SetMemberships(changes []MemberChange) {
	type key struct {
		room int64
		user string
	}
	rows := lastOfEach(changes, func(c MemberChange) key { return key{c.RoomNID, c.UserID} })
	for _, n := range chunkSizes(len(rows), 64) {
		part := rows[:n]
		rows = rows[n:]
		args := make([]any, 0, 5*n)
		for _, c := range part {
			args = append(args, c.RoomNID, c.UserID, c.Membership, c.EventNID, c.Back)
		}
		p.exec(errPipelineStmt("memberships"),
			`INSERT INTO room_members (room_nid, user_id, membership, event_nid, stream_pos) VALUES `+valuesRows("?, ?, ?, ?, "+headPos+"?", 1, n)+`
			ON CONFLICT (room_nid, user_id) DO UPDATE SET membership = excluded.membership, event_nid = excluded.event_nid,
				stream_pos = excluded.stream_pos, forgotten = FALSE`, args...)
	}
}

// RoomMove is a room's new row: Info without its LastStreamPos, which is
// Back positions before the last one the transaction allocated, written
// only if the room's last_stream_pos is still PrevStreamPos.
type RoomMove struct {
	Info          RoomInfo
	PrevStreamPos int64
	Back          int64
}

// UpdateRooms records the rooms' new current state, extremities, depth
// and last stream position. A room moved by another writer since its
// PrevStreamPos fails the pipeline with ErrStale: its last_stream_pos
// would be set to NULL, which the column refuses, so the check rolls the
// transaction back without a round trip to the caller.
func (p *Pipeline) UpdateRooms(rooms []RoomMove) error {
	for _, n := range chunkSizes(len(rooms), 64) {
		part := rooms[:n]
		rooms = rooms[n:]
		// The CASTs give PostgreSQL types for the parameters of the
		// CASEs, which it cannot infer.
		var snap, ext, depth, pos strings.Builder
		in := make([]string, n)
		args := make([]any, 0, 6*n)
		for i, r := range part {
			e, err := json.Marshal(r.Info.Extremities)
			if err != nil {
				return err
			}
			k := 6*i + 1
			fmt.Fprintf(&snap, " WHEN $%d THEN CAST($%d AS BIGINT)", k, k+1)
			fmt.Fprintf(&ext, " WHEN $%d THEN CAST($%d AS TEXT)", k, k+2)
			fmt.Fprintf(&depth, " WHEN $%d THEN CAST($%d AS BIGINT)", k, k+3)
			fmt.Fprintf(&pos, " WHEN $%d THEN CASE WHEN last_stream_pos = $%d THEN %s$%d END", k, k+4, headPos, k+5)
			in[i] = "$" + strconv.Itoa(k)
			args = append(args, r.Info.NID, r.Info.SnapshotNID, string(e), r.Info.MaxDepth, r.PrevStreamPos, r.Back)
		}
		p.exec(func(err error) error {
			if isNotNullViolation(err) {
				return fmt.Errorf("update rooms: %w", ErrStale)
			}
			return fmt.Errorf("update rooms: %w", err)
		}, `UPDATE rooms SET state_snapshot_nid = CASE room_nid`+snap.String()+` END,
			forward_extremities = CASE room_nid`+ext.String()+` END, max_depth = CASE room_nid`+depth.String()+` END,
			last_stream_pos = CASE room_nid`+pos.String()+` END
			WHERE room_nid IN (`+strings.Join(in, ", ")+`)`, args...)
	}
	return nil
}
