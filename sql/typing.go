package sql

import (
	"context"
	stdsql "database/sql"
	"fmt"
)

// Typing notifications (migration 0010_receipts_typing.sql). Every change
// of a room's typing list (a start, a stop, an expiry) takes a typing
// stream position in its own transaction and records it as the room's
// latest, which is what /sync compares with its window. Renewing a typing
// user's expiry changes nothing a client sees, so it takes no position.
//
// Lock order, in every writer: the typing row, then the typing counter,
// then the room's typing_rooms row (taken only by the counter's holder).

// SetTyping marks userID as typing in the room until expiresTS (ms since
// the epoch). changed reports whether the room's typing list changed:
// false when the user was already typing (their expiry is only renewed),
// as in Synapse, which sends nothing for a renewal.
func (t *Queries) SetTyping(ctx context.Context, roomNID int64, userID string, now, expiresTS int64) (changed bool, err error) {
	err = t.ensureTx(ctx, func(q *Queries) error {
		// Renew a live row only: one whose expiry has passed counts as
		// stopped (a sync no longer lists it), so typing again is a change.
		// Updating first also settles a race with an expiry in another
		// process: whichever takes the row lock first, the other sees its
		// result.
		res, err := q.q.ExecContext(ctx, `UPDATE typing SET expires_ts = $3 WHERE room_nid = $1 AND user_id = $2 AND expires_ts > $4`,
			roomNID, userID, expiresTS, now)
		if n, err := rowsAffected(res, err); err != nil || n > 0 {
			return err
		}
		if _, err := q.q.ExecContext(ctx, `INSERT INTO typing (room_nid, user_id, expires_ts) VALUES ($1, $2, $3)
			ON CONFLICT (room_nid, user_id) DO UPDATE SET expires_ts = excluded.expires_ts`, roomNID, userID, expiresTS); err != nil {
			return err
		}
		changed = true
		return q.bumpTyping(ctx, roomNID)
	})
	if err != nil {
		return false, fmt.Errorf("set typing: %w", err)
	}
	return changed, nil
}

// StopTyping marks userID as no longer typing in the room. changed is
// false when they were not typing.
func (t *Queries) StopTyping(ctx context.Context, roomNID int64, userID string) (changed bool, err error) {
	return t.deleteTyping(ctx, `DELETE FROM typing WHERE room_nid = $1 AND user_id = $2`, roomNID, userID)
}

// ExpireTyping ends userID's typing in the room if its expiry is at or
// before now. changed is false when the row is gone or was renewed, so
// that of two processes expiring the same row only one reports it.
func (t *Queries) ExpireTyping(ctx context.Context, roomNID int64, userID string, now int64) (changed bool, err error) {
	return t.deleteTyping(ctx, `DELETE FROM typing WHERE room_nid = $1 AND user_id = $2 AND expires_ts <= $3`, roomNID, userID, now)
}

func (t *Queries) deleteTyping(ctx context.Context, query string, roomNID int64, args ...any) (changed bool, err error) {
	err = t.ensureTx(ctx, func(q *Queries) error {
		n, err := rowsAffected(q.q.ExecContext(ctx, query, append([]any{roomNID}, args...)...))
		if err != nil || n == 0 {
			return err
		}
		changed = true
		return q.bumpTyping(ctx, roomNID)
	})
	if err != nil {
		return false, fmt.Errorf("stop typing: %w", err)
	}
	return changed, nil
}

// bumpTyping records a change of the room's typing list at a new position.
func (t *Queries) bumpTyping(ctx context.Context, roomNID int64) error {
	pos, err := t.AllocStreamPos(ctx, TypingStream)
	if err != nil {
		return err
	}
	_, err = t.q.ExecContext(ctx, `INSERT INTO typing_rooms (room_nid, stream_pos) VALUES ($1, $2)
		ON CONFLICT (room_nid) DO UPDATE SET stream_pos = excluded.stream_pos`, roomNID, pos)
	return err
}

// TypingEntry is a user typing in a room.
type TypingEntry struct {
	RoomNID   int64
	RoomID    string
	UserID    string
	ExpiresTS int64
}

// ExpiredTyping lists the typing rows whose expiry is at or before now,
// for the sweep that expires what a stopped process left behind.
func (t *Queries) ExpiredTyping(ctx context.Context, now int64) ([]TypingEntry, error) {
	rows, err := t.q.QueryContext(ctx, `SELECT t.room_nid, r.room_id, t.user_id, t.expires_ts FROM typing t
		JOIN rooms r ON r.room_nid = t.room_nid WHERE t.expires_ts <= $1`, now)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []TypingEntry
	for rows.Next() {
		var e TypingEntry
		if err := rows.Scan(&e.RoomNID, &e.RoomID, &e.UserID, &e.ExpiresTS); err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// SyncTyping returns, for each room userID is joined to whose typing list
// last changed in (since, upper], the users typing there at now (joined,
// not expired), by room NID; a room whose list is empty maps to nil. One
// query for every room of a sync.
func (t *Queries) SyncTyping(ctx context.Context, userID string, since, upper, now int64) (map[int64][]string, error) {
	rows, err := t.q.QueryContext(ctx, `SELECT tr.room_nid, tu.user_id FROM typing_rooms tr
		JOIN room_members m ON m.room_nid = tr.room_nid
		LEFT JOIN (SELECT t.room_nid, t.user_id FROM typing t
			JOIN room_members tm ON tm.room_nid = t.room_nid AND tm.user_id = t.user_id
			WHERE tm.membership = 'join' AND t.expires_ts > $4) tu ON tu.room_nid = tr.room_nid
		WHERE m.user_id = $1 AND m.membership = 'join' AND tr.stream_pos > $2 AND tr.stream_pos <= $3
		ORDER BY tr.room_nid, tu.user_id`, userID, since, upper, now)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := make(map[int64][]string)
	for rows.Next() {
		var roomNID int64
		var user *string
		if err := rows.Scan(&roomNID, &user); err != nil {
			return nil, err
		}
		if user == nil {
			out[roomNID] = nil
			continue
		}
		out[roomNID] = append(out[roomNID], *user)
	}
	return out, rows.Err()
}

// JoinedRoomNID returns the NID of a room userID is joined to, or
// ErrNotFound when they are not joined to it (or it is unknown).
func (t *Queries) JoinedRoomNID(ctx context.Context, roomID, userID string) (int64, error) {
	var nid int64
	err := t.q.QueryRowContext(ctx, `SELECT r.room_nid FROM rooms r JOIN room_members m ON m.room_nid = r.room_nid
		WHERE r.room_id = $1 AND m.user_id = $2 AND m.membership = 'join'`, roomID, userID).Scan(&nid)
	return nid, noRows(err)
}

// rowsAffected is the row count of a statement's result.
func rowsAffected(res stdsql.Result, err error) (int64, error) {
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}
