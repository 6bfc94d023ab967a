package sql

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// Unread notification counts as /sync serves them: the notifications
// stream of count changes (migration 0012_notification_stream.sql) and the
// counts of the rooms of one response.

// NoteCountChangesIn records that the unread counts of users changed, by
// room NID: it takes one position of the notifications stream for all of
// them, so call it last in the transaction that changed the counts (the
// stream's counter row stays locked until that transaction ends). It
// returns the position, 0 when there was nobody to record.
func (t *Queries) NoteCountChangesIn(ctx context.Context, changed map[int64][]string) (int64, error) {
	type change struct {
		room int64
		user string
	}
	var rows []change
	for _, room := range slices.Sorted(maps.Keys(changed)) {
		users := slices.Clone(changed[room])
		slices.Sort(users)
		for _, u := range slices.Compact(users) {
			rows = append(rows, change{room, u})
		}
	}
	if len(rows) == 0 {
		return 0, nil
	}
	var pos int64
	err := t.ensureTx(ctx, func(q *Queries) error {
		var err error
		if pos, err = q.AllocStreamPos(ctx, NotificationsStream); err != nil {
			return err
		}
		arg, err := jsonArg(rows, func(c change) []any { return []any{c.user, c.room, pos} })
		if err != nil {
			return err
		}
		if _, err := q.q.ExecContext(ctx, `INSERT INTO push_count_changes (user_id, room_nid, stream_pos)
			`+q.jsonRows("TEXT", "BIGINT", "BIGINT")+` ON CONFLICT (user_id, room_nid) DO UPDATE SET stream_pos = excluded.stream_pos`,
			arg); err != nil {
			return fmt.Errorf("note count changes: %w", err)
		}
		return nil
	})
	return pos, err
}

// ReadUpTo is a user's reading of a room's thread: the notifications
// after After and at or before UpTo.
type ReadUpTo struct {
	UserID   string
	RoomNID  int64
	ThreadID string
	After    int64
	UpTo     int64
}

// HasPushNotificationsIn reports, for each read, whether its user has a
// notification that reading the thread would clear.
func (t *Queries) HasPushNotificationsIn(ctx context.Context, reads []ReadUpTo) ([]bool, error) {
	out := make([]bool, len(reads))
	start := 0
	for chunk := range chunks(reads) {
		values := make([]string, len(chunk))
		args := make([]any, 0, 5*len(chunk))
		for i, r := range chunk {
			p := 1 + 5*i
			values[i] = fmt.Sprintf("(%d, CAST($%d AS TEXT), CAST($%d AS BIGINT), CAST($%d AS TEXT), CAST($%d AS BIGINT), CAST($%d AS BIGINT))",
				i, p, p+1, p+2, p+3, p+4)
			args = append(args, r.UserID, r.RoomNID, r.ThreadID, r.After, r.UpTo)
		}
		rows, err := t.q.QueryContext(ctx, `WITH r(i, user_id, room_nid, thread_id, after_pos, up_to) AS (VALUES `+strings.Join(values, ", ")+`)
			SELECT r.i FROM r WHERE EXISTS (SELECT 1 FROM push_notifications n WHERE n.user_id = r.user_id AND n.room_nid = r.room_nid
				AND n.thread_id = r.thread_id AND n.stream_pos > r.after_pos AND n.stream_pos <= r.up_to)`, args...)
		if err != nil {
			return nil, fmt.Errorf("notifications to read: %w", err)
		}
		for rows.Next() {
			var i int
			if err := rows.Scan(&i); err != nil {
				rows.Close()
				return nil, err
			}
			out[start+i] = true
		}
		if err := errors.Join(rows.Err(), rows.Close()); err != nil {
			return nil, err
		}
		start += len(chunk)
	}
	return out, nil
}
