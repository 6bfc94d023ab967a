package sql

import (
	"context"
	"fmt"
)

// Read receipts (migration 0010_receipts_typing.sql).

// Receipt types stored in receipts. m.fully_read is room account data.
const (
	ReceiptRead        = "m.read"
	ReceiptReadPrivate = "m.read.private"
)

// Receipt is a user's latest receipt of one type in one thread of a room.
type Receipt struct {
	RoomNID int64
	Type    string
	UserID  string
	// ThreadID is "" for an unthreaded receipt, "main" or a thread root's
	// event id for a threaded one.
	ThreadID string
	EventID  string
	// EventPos is the position of EventID in the room event stream.
	EventPos int64
	// TS is when the server received the receipt, in ms since the epoch.
	TS int64
	// StreamPos is the receipts stream position of the write (set by
	// PutReceipt).
	StreamPos int64
}

// PutReceipt stores r as the user's receipt of its type in its thread,
// unless the one stored is for an event at or after r's (as Synapse
// does: receipts only move forward). stored reports whether r was
// stored; pos is the receipts stream position it took.
func (t *Queries) PutReceipt(ctx context.Context, r Receipt) (pos int64, stored bool, err error) {
	err = t.ensureTx(ctx, func(q *Queries) error {
		// The conditional upsert takes the row lock and judges against the
		// latest committed receipt, so concurrent receipts of one user
		// cannot move it backwards. The position comes after, so that the
		// counter, which serialises every receipt writer, is held briefly.
		n, err := rowsAffected(q.q.ExecContext(ctx, `INSERT INTO receipts (room_nid, receipt_type, user_id, thread_id, event_id, event_pos, ts, stream_pos)
			VALUES ($1, $2, $3, $4, $5, $6, $7, 0)
			ON CONFLICT (room_nid, receipt_type, user_id, thread_id) DO UPDATE
			SET event_id = excluded.event_id, event_pos = excluded.event_pos, ts = excluded.ts
			WHERE receipts.event_pos < excluded.event_pos`,
			r.RoomNID, r.Type, r.UserID, r.ThreadID, r.EventID, r.EventPos, r.TS))
		if err != nil || n == 0 {
			return err
		}
		if pos, err = q.AllocStreamPos(ctx, ReceiptsStream); err != nil {
			return err
		}
		stored = true
		_, err = q.q.ExecContext(ctx, `UPDATE receipts SET stream_pos = $5
			WHERE room_nid = $1 AND receipt_type = $2 AND user_id = $3 AND thread_id = $4`,
			r.RoomNID, r.Type, r.UserID, r.ThreadID, pos)
		return err
	})
	if err != nil {
		return 0, false, fmt.Errorf("put receipt: %w", err)
	}
	return pos, stored, nil
}

// SyncReceipts returns the receipts written in (since, upper] in the rooms
// userID is joined to, oldest write first, in one query for every room of
// a sync. Other users' m.read.private receipts are never returned (spec:
// servers MUST NOT send them to anyone but their owner).
func (t *Queries) SyncReceipts(ctx context.Context, userID string, since, upper int64) ([]Receipt, error) {
	rows, err := t.q.QueryContext(ctx, `SELECT r.room_nid, r.receipt_type, r.user_id, r.thread_id, r.event_id, r.event_pos, r.ts, r.stream_pos
		FROM receipts r JOIN room_members m ON m.room_nid = r.room_nid
		WHERE m.user_id = $1 AND m.membership = 'join' AND r.stream_pos > $2 AND r.stream_pos <= $3
			AND (r.receipt_type <> 'm.read.private' OR r.user_id = $1)
		ORDER BY r.stream_pos`, userID, since, upper)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Receipt
	for rows.Next() {
		var r Receipt
		if err := rows.Scan(&r.RoomNID, &r.Type, &r.UserID, &r.ThreadID, &r.EventID, &r.EventPos, &r.TS, &r.StreamPos); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// HasThreadReplies reports whether an event of the room is a thread root:
// some event relates to it with m.thread.
func (t *Queries) HasThreadReplies(ctx context.Context, roomNID int64, eventID string) (bool, error) {
	var n int
	err := t.q.QueryRowContext(ctx, `SELECT COUNT(*) FROM (SELECT 1 FROM event_relations
		WHERE relates_to_id = $1 AND rel_type = 'm.thread' AND room_nid = $2 LIMIT 1) x`, eventID, roomNID).Scan(&n)
	return n > 0, err
}
