package sql

import "context"

// Reads and updates of room membership that the client membership
// endpoints need beyond the roomserver's own (members.go).

// LastEventAtOrBefore returns the room's timeline event with the greatest
// stream position not after pos (outliers and rejected events left out);
// ErrNotFound when the room has none.
func (t *Queries) LastEventAtOrBefore(ctx context.Context, roomID string, pos int64) (Event, error) {
	e, err := scanEvent(t.q.QueryRowContext(ctx, `SELECT `+eventColumns+eventFrom+`WHERE r.room_id = $1
		AND e.stream_pos IS NOT NULL AND e.stream_pos <= $2 AND NOT e.rejected
		ORDER BY e.stream_pos DESC LIMIT 1`, roomID, pos))
	return e, noRows(err)
}

// ForgetLeftRoom hides a room from the user's room lists, but only while
// the user's membership is leave or ban, so a join racing with the forget
// is never hidden. It reports whether the membership was such.
func (t *Queries) ForgetLeftRoom(ctx context.Context, roomID, userID string) (bool, error) {
	err := expectRow(t.q.ExecContext(ctx, `UPDATE room_members SET forgotten = TRUE
		WHERE user_id = $1 AND membership IN ('leave', 'ban')
			AND room_nid = (SELECT room_nid FROM rooms WHERE room_id = $2)`, userID, roomID))
	if err == ErrNotFound {
		return false, nil
	}
	return err == nil, err
}
