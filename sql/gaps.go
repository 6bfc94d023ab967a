package sql

import (
	"context"
	stdsql "database/sql"
	"time"
)

// Gaps in rooms' timelines (table backward_extremities): a timeline
// event whose prev events are not in the timeline stands after a hole in
// the room's history, which backfill fills when /messages pages back to
// it. Backfilled events take their place by depth (see TimelineEvents),
// at negative stream positions that /sync never reads.

// Backfill attempts at a gap back off, as Synapse's do, from gapBackoff
// doubling up to gapMaxBackoff: a gap that no server fills is asked for
// again only now and then, however often clients page over it.
const (
	gapBackoff    = time.Minute
	gapMaxBackoff = 24 * time.Hour
)

// GapRow records that a timeline event's prev event is missing.
type GapRow struct {
	RoomNID, EventNID int64
	Prev              string
}

// Gap is a recorded hole in a room's history.
type Gap struct {
	// EventNID is the timeline event after the hole; Key its position.
	EventNID int64
	Key      TopoPos
	// Prev is its prev event that the timeline lacks.
	Prev string
}

// RecordGaps records the prev events of timeline events that the
// timeline lacks: each unless the event is stored in the timeline, or
// rejected, or belongs to another room (nothing to fetch then). It runs
// after the pipeline's events are stored, so that it sees them.
func (p *Pipeline) RecordGaps(gaps []GapRow) {
	for _, g := range gaps {
		p.exec(errPipelineStmt("record gap"), `INSERT INTO backward_extremities (room_nid, event_nid, prev_event_id, backoff_ms)
			SELECT CAST($1 AS BIGINT), CAST($2 AS BIGINT), CAST($3 AS TEXT), CAST($4 AS BIGINT)
			WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.event_id = $3 AND (e.room_nid <> $1 OR e.outlier = FALSE OR e.rejected))
			ON CONFLICT DO NOTHING`, g.RoomNID, g.EventNID, g.Prev, gapBackoff.Milliseconds())
	}
}

// ClearGaps forgets the gaps at the given prev events, which took their
// place in the timeline or were rejected: nothing is missing there any
// more.
func (p *Pipeline) ClearGaps(prevs []string) {
	for _, n := range chunkSizes(len(prevs), 64) {
		args := make([]any, n)
		for i, id := range prevs[:n] {
			args[i] = id
		}
		prevs = prevs[n:]
		p.exec(errPipelineStmt("clear gaps"), `DELETE FROM backward_extremities WHERE prev_event_id IN (`+placeholders(1, n)+`)`, args...)
	}
}

// GapsIn returns up to limit gaps of a room that may be asked for now
// (their backoff has passed), whose event lies in (lo, hi], the newest
// first.
func (t *Queries) GapsIn(ctx context.Context, roomNID int64, lo, hi TopoPos, limit int) ([]Gap, error) {
	rows, err := t.q.QueryContext(ctx, `SELECT b.event_nid, e.depth, e.stream_pos, b.prev_event_id
		FROM backward_extremities b JOIN events e ON e.event_nid = b.event_nid
		WHERE b.room_nid = $1 AND b.next_attempt_ts <= $2
		AND (e.depth, e.stream_pos) > ($3, $4) AND (e.depth, e.stream_pos) <= ($5, $6)
		ORDER BY e.depth DESC, e.stream_pos DESC, b.prev_event_id LIMIT $7`,
		roomNID, nowMillis(), lo.Depth, lo.Stream, hi.Depth, hi.Stream, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Gap
	for rows.Next() {
		var g Gap
		if err := rows.Scan(&g.EventNID, &g.Key.Depth, &g.Key.Stream, &g.Prev); err != nil {
			return nil, err
		}
		out = append(out, g)
	}
	return out, rows.Err()
}

// ClaimGaps takes the gaps of a room at the given prev events for one
// backfill attempt: those whose backoff has passed, which it pushes
// back (a gap the attempt fills is forgotten anyway). It returns them,
// without positions.
func (t *Queries) ClaimGaps(ctx context.Context, roomNID int64, prevs []string) ([]Gap, error) {
	if len(prevs) == 0 {
		return nil, nil
	}
	args := []any{roomNID, nowMillis(), gapMaxBackoff.Milliseconds()}
	for _, id := range prevs {
		args = append(args, id)
	}
	rows, err := t.q.QueryContext(ctx, `UPDATE backward_extremities SET next_attempt_ts = $2 + backoff_ms,
			backoff_ms = CASE WHEN backoff_ms * 2 > $3 THEN $3 ELSE backoff_ms * 2 END
		WHERE room_nid = $1 AND next_attempt_ts <= $2 AND prev_event_id IN (`+placeholders(4, len(prevs))+`)
		RETURNING event_nid, prev_event_id`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Gap
	for rows.Next() {
		var g Gap
		if err := rows.Scan(&g.EventNID, &g.Prev); err != nil {
			return nil, err
		}
		out = append(out, g)
	}
	return out, rows.Err()
}

// DropGaps forgets the gaps before the given events: history this
// server may not fetch.
func (t *Queries) DropGaps(ctx context.Context, eventNIDs []int64) error {
	if len(eventNIDs) == 0 {
		return nil
	}
	args := make([]any, len(eventNIDs))
	for i, n := range eventNIDs {
		args[i] = n
	}
	_, err := t.q.ExecContext(ctx, `DELETE FROM backward_extremities WHERE event_nid IN (`+placeholders(1, len(eventNIDs))+`)`, args...)
	return err
}

// GapPrevs returns those of prevs that are missing prev events of a
// room's recorded gaps.
func (t *Queries) GapPrevs(ctx context.Context, roomNID int64, prevs []string) ([]string, error) {
	if len(prevs) == 0 {
		return nil, nil
	}
	args := []any{roomNID}
	for _, id := range prevs {
		args = append(args, id)
	}
	rows, err := t.q.QueryContext(ctx, `SELECT DISTINCT prev_event_id FROM backward_extremities
		WHERE room_nid = $1 AND prev_event_id IN (`+placeholders(2, len(prevs))+`) ORDER BY prev_event_id`, args...)
	if err != nil {
		return nil, err
	}
	return scanStrings(rows)
}

// NewestGapAt returns the stream position of a room's newest timeline
// event in the stream range (lo, hi] that has a recorded gap, claimed or
// not; 0 when none has.
func (t *Queries) NewestGapAt(ctx context.Context, roomNID, lo, hi int64) (int64, error) {
	var pos stdsql.NullInt64
	err := t.q.QueryRowContext(ctx, `SELECT MAX(e.stream_pos) FROM backward_extremities b JOIN events e ON e.event_nid = b.event_nid
		WHERE b.room_nid = $1 AND e.stream_pos > $2 AND e.stream_pos <= $3`, roomNID, lo, hi).Scan(&pos)
	return pos.Int64, err
}
