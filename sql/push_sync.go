package sql

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// Unread notification counts as /sync serves them: the notifications
// stream of count changes (migration 0012_notification_stream.sql) and the
// counts of the rooms of one response.

// pushCountChangeBatch bounds the rows of one upsert of count changes.
const pushCountChangeBatch = 500

// NoteCountChanges records that the unread counts of the given users in a
// room changed; see NoteCountChangesIn.
func (t *Queries) NoteCountChanges(ctx context.Context, roomNID int64, userIDs []string) (int64, error) {
	return t.NoteCountChangesIn(ctx, map[int64][]string{roomNID: userIDs})
}

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
		for len(rows) > 0 {
			batch := rows[:min(len(rows), pushCountChangeBatch)]
			rows = rows[len(batch):]
			var b strings.Builder
			b.WriteString(`INSERT INTO push_count_changes (user_id, room_nid, stream_pos) VALUES `)
			args := make([]any, 0, 1+2*len(batch))
			args = append(args, pos)
			for i, c := range batch {
				if i > 0 {
					b.WriteString(", ")
				}
				fmt.Fprintf(&b, "($%d, $%d, $1)", 2+2*i, 3+2*i)
				args = append(args, c.user, c.room)
			}
			b.WriteString(` ON CONFLICT (user_id, room_nid) DO UPDATE SET stream_pos = excluded.stream_pos`)
			if _, err := q.q.ExecContext(ctx, b.String(), args...); err != nil {
				return fmt.Errorf("note count changes: %w", err)
			}
		}
		return nil
	})
	return pos, err
}

// HasPushNotificationsUpTo reports whether the user has a notification in
// a room's thread at or before stream position upTo, which reading the
// thread up to there would clear.
func (t *Queries) HasPushNotificationsUpTo(ctx context.Context, userID string, roomNID int64, threadID string, upTo int64) (bool, error) {
	var n int
	err := t.q.QueryRowContext(ctx, `SELECT COUNT(*) FROM (SELECT 1 FROM push_notifications
		WHERE user_id = $1 AND room_nid = $2 AND thread_id = $3 AND stream_pos <= $4 LIMIT 1) x`,
		userID, roomNID, threadID, upTo).Scan(&n)
	return n > 0, err
}
