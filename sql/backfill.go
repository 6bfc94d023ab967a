package sql

import (
	"context"
	"fmt"
	"strings"
)

// History older than a room's timeline, fetched from other servers
// (backfill), is stored with negative stream positions, as Synapse does:
// each round of it takes a block below every position handed out so far,
// from a counter of its own. The events stream's readers serve positions
// above a since token, which is never negative, so /sync never shows
// such events; /messages orders a room by (depth, stream position), where
// they take their place by depth.

// BackfillStream names the counter of historical positions in
// stream_positions. Its row holds the lowest position handed out (0:
// none yet) and is added by the first allocation, so it needs no
// migration.
const BackfillStream = "backfill"

// AllocBackfillPositions takes n positions below every historical
// position handed out so far and returns the lowest: the block is first
// … first+n-1, all negative. A round of backfill takes its block before
// it commits its events one by one, oldest first, so that within a round
// the older events get the lower positions; positions of events not kept
// are skipped.
func (t *Queries) AllocBackfillPositions(ctx context.Context, n int) (int64, error) {
	var pos int64
	err := t.q.QueryRowContext(ctx, `INSERT INTO stream_positions (stream, pos) VALUES ($1, $2)
		ON CONFLICT (stream) DO UPDATE SET pos = stream_positions.pos + excluded.pos RETURNING pos`, BackfillStream, -int64(n)).Scan(&pos)
	if err != nil {
		return 0, fmt.Errorf("allocate %d backfill positions: %w", n, err)
	}
	return pos, nil
}

// PlaceOutliers puts events stored as outliers into the timeline, each
// at its StreamPos with StateBeforeNID as the state before it: history
// that backfill reaches holds events stored earlier only for the room's
// state or auth chain (the state this server joined with, the create
// event). Rejected events stay out.
func (p *Pipeline) PlaceOutliers(evs []PendingEvent) {
	for _, e := range evs {
		p.exec(errPipelineStmt("place outlier in the timeline"), `UPDATE events SET outlier = FALSE, stream_pos = $1, state_before_nid = $2
			WHERE event_nid = $3 AND outlier AND NOT rejected`, e.StreamPos, e.StateBeforeNID, e.NID)
	}
}

// JoinedServersByAge lists the servers with users joined to a room, the
// server whose joined user's membership event is the oldest (by depth)
// first: the servers longest in the room, likeliest to hold its early
// history (Synapse's get_current_hosts_in_room_ordered).
func (t *Queries) JoinedServersByAge(ctx context.Context, roomID string) ([]string, error) {
	rows, err := t.q.QueryContext(ctx, `SELECT m.user_id FROM room_members m JOIN rooms r ON r.room_nid = m.room_nid
		JOIN events e ON e.event_nid = m.event_nid
		WHERE r.room_id = $1 AND m.membership = 'join' ORDER BY e.depth, e.event_nid`, roomID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	seen := make(map[string]bool)
	var out []string
	for rows.Next() {
		var user string
		if err := rows.Scan(&user); err != nil {
			return nil, err
		}
		if _, server, ok := strings.Cut(user, ":"); ok && !seen[server] {
			seen[server] = true
			out = append(out, server)
		}
	}
	return out, rows.Err()
}
