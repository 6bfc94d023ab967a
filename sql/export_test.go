package sql

import (
	"context"
	stdsql "database/sql"
)

// MarkSchemaVersionForTest records a schema version as if a newer binary
// had migrated the database.
func (d *DB) MarkSchemaVersionForTest(ctx context.Context, v int) error {
	_, err := d.db.ExecContext(ctx, `INSERT INTO schema_version (version, name, applied_ts) VALUES ($1, 'future', 0)`, v)
	return err
}

// PushSummariesForTest returns a user's non-zero summary rows in a room by
// thread: notifications and highlights.
func (d *DB) PushSummariesForTest(ctx context.Context, userID string, roomNID int64) (map[string][2]int64, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT thread_id, notifications, highlights FROM push_summaries
		WHERE user_id = $1 AND room_nid = $2 AND notifications > 0`, userID, roomNID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string][2]int64{}
	for rows.Next() {
		var thread string
		var n, h int64
		if err := rows.Scan(&thread, &n, &h); err != nil {
			return nil, err
		}
		out[thread] = [2]int64{n, h}
	}
	return out, rows.Err()
}

// CopyMin is copyMin, for tests that cross it.
const CopyMin = copyMin

// RecordingForTest returns the table methods over d, recording the text
// of each query they run.
func (d *DB) RecordingForTest() (*Queries, *[]string) {
	r := &recordingQuerier{querier: d.Queries.q}
	return &Queries{q: r, stmts: d.Queries.stmts, dialect: d.Queries.dialect}, &r.queries
}

type recordingQuerier struct {
	querier
	queries []string
}

func (r *recordingQuerier) ExecContext(ctx context.Context, query string, args ...any) (stdsql.Result, error) {
	r.queries = append(r.queries, query)
	return r.querier.ExecContext(ctx, query, args...)
}

func (r *recordingQuerier) QueryContext(ctx context.Context, query string, args ...any) (*stdsql.Rows, error) {
	r.queries = append(r.queries, query)
	return r.querier.QueryContext(ctx, query, args...)
}

func (r *recordingQuerier) QueryRowContext(ctx context.Context, query string, args ...any) *stdsql.Row {
	r.queries = append(r.queries, query)
	return r.querier.QueryRowContext(ctx, query, args...)
}

// SyncHead reads one sync's head (syncs read theirs in batches: SyncHeads).
func (t *Queries) SyncHead(ctx context.Context, r SyncHeadRequest) (SyncHead, error) {
	heads, err := t.SyncHeads(ctx, []SyncHeadRequest{r})
	if err != nil {
		return SyncHead{}, err
	}
	return heads[0], nil
}

// AddPushNotifications records the users an event notifies; see
// AddEventsPushNotifications.
func (t *Queries) AddPushNotifications(ctx context.Context, roomNID, eventNID, streamPos int64, ns []PushNotification) error {
	return t.AddEventsPushNotifications(ctx, []EventNotifications{{RoomNID: roomNID, EventNID: eventNID, StreamPos: streamPos, Notes: ns}})
}

// SetPushCounted records that the room's events up to stream position pos
// were counted; it never moves back.
func (t *Queries) SetPushCounted(ctx context.Context, roomNID, pos int64) error {
	return t.SetPushCountedIn(ctx, map[int64]int64{roomNID: pos})
}

// NoteCountChanges records that the unread counts of the given users in a
// room changed; see NoteCountChangesIn.
func (t *Queries) NoteCountChanges(ctx context.Context, roomNID int64, userIDs []string) (int64, error) {
	return t.NoteCountChangesIn(ctx, map[int64][]string{roomNID: userIDs})
}

// ExecForTest runs statements on the pool, outside the table methods: a
// test that puts the schema back as an older binary left it.
func (d *DB) ExecForTest(ctx context.Context, query string) error {
	_, err := d.db.ExecContext(ctx, query)
	return err
}

// SyncHeadsQueryForTest is the text of the head query of n requests
// asking for types.
func (d *DB) SyncHeadsQueryForTest(n int, types []string) string {
	rs := make([]SyncHeadRequest, n)
	for i := range rs {
		rs[i].AccountDataTypes = types
	}
	query, _, _ := d.syncHeadsQuery(rs)
	return query
}
