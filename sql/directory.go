package sql

import "context"

// SetRoomPublished adds a room to the published room directory (public)
// or takes it out (private). Either is a no-op when already so.
func (t *Queries) SetRoomPublished(ctx context.Context, roomID string, public bool) error {
	if public {
		_, err := t.q.ExecContext(ctx, `INSERT INTO room_directory (room_id, published_ts) VALUES ($1, $2)
			ON CONFLICT (room_id) DO NOTHING`, roomID, nowMillis())
		return err
	}
	_, err := t.q.ExecContext(ctx, `DELETE FROM room_directory WHERE room_id = $1`, roomID)
	return err
}

// RoomPublished reports whether a room is in the published room directory.
func (t *Queries) RoomPublished(ctx context.Context, roomID string) (bool, error) {
	var n int
	err := t.q.QueryRowContext(ctx, `SELECT COUNT(*) FROM room_directory WHERE room_id = $1`, roomID).Scan(&n)
	return n > 0, err
}

// PublishedRoom is a room of the published directory with the stream
// position of its latest event, which changes whenever anything about the
// room (state, members) does: readers cache per room on it.
type PublishedRoom struct {
	RoomID        string
	LastStreamPos int64
}

// PublishedRooms lists the published rooms this server knows, by room id.
func (t *Queries) PublishedRooms(ctx context.Context) ([]PublishedRoom, error) {
	rows, err := t.q.QueryContext(ctx, `SELECT d.room_id, r.last_stream_pos FROM room_directory d
		JOIN rooms r ON r.room_id = d.room_id ORDER BY d.room_id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []PublishedRoom
	for rows.Next() {
		var p PublishedRoom
		if err := rows.Scan(&p.RoomID, &p.LastStreamPos); err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, rows.Err()
}

// JoinedMemberCount counts a room's joined members (0 for unknown rooms).
func (t *Queries) JoinedMemberCount(ctx context.Context, roomID string) (int, error) {
	var n int
	err := t.q.QueryRowContext(ctx, `SELECT COUNT(*) FROM room_members m JOIN rooms r ON r.room_nid = m.room_nid
		WHERE r.room_id = $1 AND m.membership = 'join'`, roomID).Scan(&n)
	return n, err
}
