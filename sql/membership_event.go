package sql

import "context"

// MembershipEvent returns the event behind a user's current membership of
// a room, an out-of-band invite included; ErrNotFound without one.
func (t *Queries) MembershipEvent(ctx context.Context, roomID, userID string) (Event, error) {
	e, err := scanEvent(t.q.QueryRowContext(ctx, `SELECT `+eventColumns+eventFrom+
		`JOIN room_members m ON m.room_nid = e.room_nid AND m.event_nid = e.event_nid
		WHERE r.room_id = $1 AND m.user_id = $2`, roomID, userID))
	return e, noRows(err)
}
