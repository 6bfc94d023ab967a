package sql

import (
	"context"
	"strings"
)

// Reads of the federation API's room endpoints: whether a server takes
// part in a room, and what its users' memberships were at a point of the
// room's history.

// ServerHasMembership reports whether a user of server has one of the
// memberships in a room now (spec: a server is "in the room" while one of
// its users is joined).
func (t *Queries) ServerHasMembership(ctx context.Context, roomNID int64, server string, memberships ...string) (bool, error) {
	if len(memberships) == 0 {
		return false, nil
	}
	suffix := ":" + server
	args := []any{roomNID, "%" + escapeLike(suffix)}
	for _, m := range memberships {
		args = append(args, m)
	}
	rows, err := t.q.QueryContext(ctx, `SELECT user_id FROM room_members
		WHERE room_nid = $1 AND user_id LIKE $2 ESCAPE '\' AND membership IN (`+placeholders(3, len(memberships))+`)`, args...)
	if err != nil {
		return false, err
	}
	defer rows.Close()
	for rows.Next() {
		var u string
		if err := rows.Scan(&u); err != nil {
			return false, err
		}
		// LIKE is case-insensitive on SQLite: check exactly here.
		if strings.HasSuffix(u, suffix) {
			return true, nil
		}
	}
	return false, rows.Err()
}

// SnapshotServerMembers returns the m.room.member entries of a snapshot
// whose state key is a user of server: what that server's users'
// memberships were at that point.
func (t *Queries) SnapshotServerMembers(ctx context.Context, snapshot int64, server string) (StateMap, error) {
	suffix := ":" + server
	state, err := t.snapshot(ctx, snapshot, snapshotChain+`WHERE e.type = 'm.room.member' AND e.state_key LIKE $2 ESCAPE '\'
		ORDER BY c.n DESC`, snapshot, "%"+escapeLike(suffix))
	if err != nil {
		return nil, err
	}
	for k := range state {
		if !strings.HasSuffix(k.StateKey, suffix) {
			delete(state, k)
		}
	}
	return state, nil
}

// DeviceListStreamID is the stream_id of the latest m.device_list_update
// sent about a local user (0 before the first): the stream_id of GET
// /_matrix/federation/v1/user/devices, which the updates that follow
// name as their prev_id.
func (t *Queries) DeviceListStreamID(ctx context.Context, userID string) (int64, error) {
	var pos int64
	err := t.q.QueryRowContext(ctx, `SELECT stream_id FROM device_list_outbound WHERE user_id = $1`, userID).Scan(&pos)
	if err := noRows(err); err == ErrNotFound {
		return 0, nil
	} else if err != nil {
		return 0, err
	}
	return pos, nil
}
