package sql

import "context"

// SetMembership records a user's current membership of a room.
func (t *Queries) SetMembership(ctx context.Context, roomNID int64, userID, membership string, eventNID, streamPos int64) error {
	_, err := t.q.ExecContext(ctx, `INSERT INTO room_members (room_nid, user_id, membership, event_nid, stream_pos) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (room_nid, user_id) DO UPDATE SET membership = excluded.membership, event_nid = excluded.event_nid,
			stream_pos = excluded.stream_pos, forgotten = FALSE`, roomNID, userID, membership, eventNID, streamPos)
	return err
}

// Membership returns a user's current membership of a room ("" when none).
func (t *Queries) Membership(ctx context.Context, roomID, userID string) (string, error) {
	var m string
	err := t.q.QueryRowContext(ctx, `SELECT m.membership FROM room_members m JOIN rooms r ON r.room_nid = m.room_nid
		WHERE r.room_id = $1 AND m.user_id = $2`, roomID, userID).Scan(&m)
	if err := noRows(err); err == ErrNotFound {
		return "", nil
	} else if err != nil {
		return "", err
	}
	return m, nil
}

// RoomsWithMembership lists the rooms where the user's membership is
// membership, leaving out forgotten rooms.
func (t *Queries) RoomsWithMembership(ctx context.Context, userID, membership string) ([]string, error) {
	rows, err := t.q.QueryContext(ctx, `SELECT r.room_id FROM room_members m JOIN rooms r ON r.room_nid = m.room_nid
		WHERE m.user_id = $1 AND m.membership = $2 AND NOT m.forgotten ORDER BY r.room_id`, userID, membership)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out = append(out, id)
	}
	return out, rows.Err()
}

// RoomMembers lists a room's users with the given membership.
func (t *Queries) RoomMembers(ctx context.Context, roomID, membership string) ([]string, error) {
	rows, err := t.q.QueryContext(ctx, `SELECT m.user_id FROM room_members m JOIN rooms r ON r.room_nid = m.room_nid
		WHERE r.room_id = $1 AND m.membership = $2 ORDER BY m.user_id`, roomID, membership)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out = append(out, id)
	}
	return out, rows.Err()
}

// ForgetRoom hides a room the user has left from their room lists.
func (t *Queries) ForgetRoom(ctx context.Context, roomID, userID string) error {
	return expectRow(t.q.ExecContext(ctx, `UPDATE room_members SET forgotten = TRUE
		WHERE user_id = $1 AND room_nid = (SELECT room_nid FROM rooms WHERE room_id = $2)`, userID, roomID))
}
