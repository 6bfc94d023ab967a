package sql

import (
	"context"
	"errors"
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
	args := []any{roomNID, suffix, len(suffix)}
	for _, m := range memberships {
		args = append(args, m)
	}
	var one int
	err := t.q.QueryRowContext(ctx, `SELECT 1 FROM room_members
		WHERE room_nid = $1 AND `+localSuffix("user_id", 2)+` AND membership IN (`+placeholders(4, len(memberships))+`) LIMIT 1`,
		args...).Scan(&one)
	if errors.Is(noRows(err), ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// SnapshotServerMembers returns the m.room.member entries of a snapshot
// whose state key is a user of server: what that server's users'
// memberships were at that point.
func (t *Queries) SnapshotServerMembers(ctx context.Context, snapshot int64, server string) (StateMap, error) {
	suffix := ":" + server
	return t.snapshot(ctx, snapshot, snapshotChain+`WHERE e.type = 'm.room.member' AND `+localSuffix("e.state_key", 2)+`
		ORDER BY c.n DESC`, snapshot, suffix, len(suffix))
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
