package sql

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// The unread counts kept per user, room and thread (migration
// 0021_push_summary.sql), so that /sync reads a row per room and thread
// instead of counting notifications.
//
// Writers: the push counter adds an event's notifications
// (addToSummaries); a receipt, the user's own event or a redaction recount
// the threads they touch from push_notifications (lockSummaries, then the
// deletes, then recountSummaries). On PostgreSQL a receipt and the counter
// may run at once: the recount first locks the rows it will recount, so a
// counter transaction that added to them commits before the recount reads
// push_notifications (which then sees its rows), or waits and adds on top
// of the recount. A counter transaction that creates a row meanwhile
// (a thread without one) is not seen by the recount and keeps its count,
// which is right unless the receipt read its event, a case the readers
// detect (first_pos at or before the marker) and count exactly. SQLite runs
// one writer at a time, so none of this arises there.

// summarySelection picks summary rows: a condition on push_summaries'
// columns, with its arguments.
type summarySelection struct {
	where string
	args  []any
}

// threadSelection picks users' rows of a room's thread.
func threadSelection(roomNID int64, threadID string, users []string) summarySelection {
	args := []any{roomNID, threadID}
	for _, u := range users {
		args = append(args, u)
	}
	return summarySelection{`room_nid = $1 AND thread_id = $2 AND user_id IN (` + placeholders(3, len(users)) + `)`, args}
}

// lockSummaries locks the selected rows for the rest of the transaction,
// before it deletes the notifications that recountSummaries recounts.
func (t *Queries) lockSummaries(ctx context.Context, s summarySelection) error {
	if _, err := t.q.ExecContext(ctx, `UPDATE push_summaries SET notifications = notifications WHERE `+s.where, s.args...); err != nil {
		return fmt.Errorf("lock unread counts: %w", err)
	}
	return nil
}

// recountSummaries sets the selected rows from the unread notifications
// they count. It never makes a row (see the comment at the top).
func (t *Queries) recountSummaries(ctx context.Context, s summarySelection) error {
	_, err := t.q.ExecContext(ctx, `UPDATE push_summaries SET (notifications, highlights, first_pos, last_pos) = (
		SELECT COUNT(*), COALESCE(SUM(CASE WHEN n.highlight THEN 1 ELSE 0 END), 0),
			COALESCE(MIN(n.stream_pos), 0), COALESCE(MAX(n.stream_pos), 0)
		FROM push_notifications n
		WHERE n.user_id = push_summaries.user_id AND n.room_nid = push_summaries.room_nid AND n.thread_id = push_summaries.thread_id
		AND NOT EXISTS (SELECT 1 FROM push_read_markers k WHERE k.user_id = n.user_id AND k.room_nid = n.room_nid
			AND k.thread_id IN ('', n.thread_id) AND k.read_pos >= n.stream_pos))
		WHERE `+s.where, s.args...)
	if err != nil {
		return fmt.Errorf("recount unread counts: %w", err)
	}
	return nil
}

// addToSummaries adds new notifications to their users' counts: one
// upsert per summary row, however many of the notifications it takes.
func (t *Queries) addToSummaries(ctx context.Context, added []notificationRow) error {
	type key struct {
		user   string
		room   int64
		thread string
	}
	type sum struct{ n, hl, first, last int64 }
	sums := make(map[key]*sum)
	var keys []key
	for _, r := range added {
		k := key{r.UserID, r.room, r.ThreadID}
		s := sums[k]
		if s == nil {
			s = &sum{first: r.pos, last: r.pos}
			sums[k] = s
			keys = append(keys, k)
		}
		s.n++
		if r.Highlight {
			s.hl++
		}
		s.first, s.last = min(s.first, r.pos), max(s.last, r.pos)
	}
	if len(keys) == 0 {
		return nil
	}
	arg, err := jsonArg(keys, func(k key) []any {
		s := sums[k]
		return []any{k.user, k.room, k.thread, s.n, s.hl, s.first, s.last}
	})
	if err != nil {
		return err
	}
	// A row recounted to nothing starts again at these events.
	_, err = t.q.ExecContext(ctx, `INSERT INTO push_summaries (user_id, room_nid, thread_id, notifications, highlights, first_pos, last_pos)
			`+t.jsonRows("TEXT", "BIGINT", "TEXT", "BIGINT", "BIGINT", "BIGINT", "BIGINT")+` ON CONFLICT (user_id, room_nid, thread_id) DO UPDATE SET
			notifications = push_summaries.notifications + excluded.notifications,
			highlights = push_summaries.highlights + excluded.highlights,
			first_pos = CASE WHEN push_summaries.notifications = 0 OR excluded.first_pos < push_summaries.first_pos
				THEN excluded.first_pos ELSE push_summaries.first_pos END,
			last_pos = CASE WHEN push_summaries.notifications = 0 OR excluded.last_pos > push_summaries.last_pos
				THEN excluded.last_pos ELSE push_summaries.last_pos END`, arg)
	if err != nil {
		return fmt.Errorf("add to unread counts: %w", err)
	}
	return nil
}

// unreadRoomsBatch bounds the rooms of one count query.
const unreadRoomsBatch = 500

// UnreadCountsInRooms returns the user's unread notification counts in the
// given rooms (by NID), counting only the events at or before room stream
// position upTo, by room id; rooms without any are absent. It takes the
// summaries of the rooms that known (which may be nil) holds, and reads
// the others, one query per 500 rooms. A summary that counted events after
// upTo (the counter got ahead of the caller's upper bound) has those taken
// back, read from the few notifications after upTo; the rare room whose
// summary may count notifications that a read marker or the membership
// covers (counted after the marker moved) has its notifications counted.
//
// The user's current membership event reads the main timeline up to it,
// as the push counter will record once it counts that event (a join is
// always the user's own event): so the invite stops counting the moment
// the join commits, not when the counter gets to it, and the counter need
// not send the counts again for it.
func (t *Queries) UnreadCountsInRooms(ctx context.Context, userID string, roomNIDs []int64, upTo int64, known *UnreadSummaries) (map[string]UnreadCounts, error) {
	out := make(map[string]UnreadCounts)
	var exact []int64
	for len(roomNIDs) > 0 {
		batch := roomNIDs[:min(len(roomNIDs), unreadRoomsBatch)]
		roomNIDs = roomNIDs[len(batch):]
		sums, err := t.summariesKnown(ctx, userID, batch, known)
		if err != nil {
			return nil, err
		}
		inexact, err := t.countSummaries(ctx, userID, sums, upTo, out)
		if err != nil {
			return nil, err
		}
		exact = append(exact, inexact...)
	}
	for len(exact) > 0 {
		batch := exact[:min(len(exact), unreadRoomsBatch)]
		exact = exact[len(batch):]
		args := make([]any, 0, 2+len(batch))
		args = append(args, userID, upTo)
		for _, nid := range batch {
			args = append(args, nid)
		}
		m, err := t.unreadCounts(ctx, fmt.Sprintf(unreadQuery,
			"AND n.stream_pos <= $2 AND n.room_nid IN ("+placeholders(3, len(batch))+`)
			AND NOT (n.thread_id = 'main' AND EXISTS (SELECT 1 FROM room_members rm
				WHERE rm.room_nid = n.room_nid AND rm.user_id = n.user_id AND rm.stream_pos >= n.stream_pos))`), args...)
		if err != nil {
			return nil, err
		}
		for roomID, c := range m {
			out[roomID] = c
		}
	}
	return out, nil
}

// countSummaries adds to out the counts of the summaries up to upTo, and
// returns the rooms whose summaries cannot tell, to count exactly.
func (t *Queries) countSummaries(ctx context.Context, userID string, sums []summary, upTo int64, out map[string]UnreadCounts) ([]int64, error) {
	inexact, after := make(map[int64]bool), make(map[int64]bool)
	for _, s := range sums {
		switch {
		case s.last <= s.read:
			// All read.
		case s.first <= s.read || (s.last > upTo && s.read > upTo):
			inexact[s.roomNID] = true
		case s.last > upTo:
			after[s.roomNID] = true
		}
	}
	var ahead []int64
	for nid := range after {
		if !inexact[nid] {
			ahead = append(ahead, nid)
		}
	}
	var late map[roomThread]NotificationCounts
	if len(ahead) > 0 {
		var err error
		if late, err = t.notificationsAfter(ctx, userID, ahead, sums, upTo); err != nil {
			return nil, err
		}
	}
	for _, s := range sums {
		if s.last <= s.read || inexact[s.roomNID] {
			continue
		}
		c := s.counts
		l := late[roomThread{s.roomNID, s.thread}]
		c.NotificationCount -= l.NotificationCount
		c.HighlightCount -= l.HighlightCount
		if c.NotificationCount > 0 {
			addCounts(out, s.roomID, s.thread, c)
		}
	}
	return slices.Collect(maps.Keys(inexact)), nil
}

// UnreadSummaries are a user's unread count summaries in some rooms, read
// ahead (by SyncHead) so that UnreadCountsInRooms need not read them.
type UnreadSummaries struct {
	// rooms holds each room read with its summaries: none when it has no
	// unread notifications.
	rooms map[int64][]summary
}

// summariesKnown returns the user's summaries in the rooms: those known
// holds, and the others read.
func (t *Queries) summariesKnown(ctx context.Context, userID string, roomNIDs []int64, known *UnreadSummaries) ([]summary, error) {
	if known == nil {
		return t.summaries(ctx, userID, roomNIDs)
	}
	var sums []summary
	var unknown []int64
	for _, nid := range roomNIDs {
		if rows, ok := known.rooms[nid]; ok {
			sums = append(sums, rows...)
		} else {
			unknown = append(unknown, nid)
		}
	}
	if len(unknown) == 0 {
		return sums, nil
	}
	read, err := t.summaries(ctx, userID, unknown)
	return append(sums, read...), err
}

// summary is a summary row as a reader sees it: with the position read up
// to in its thread (markers, and for the main timeline the membership).
type summary struct {
	roomID      string
	roomNID     int64
	thread      string
	counts      NotificationCounts
	first, last int64
	read        int64
}

// newSummary makes a summary of a row read with the user's read marker of
// its thread (summaryMarker) and the stream position of their membership.
func newSummary(roomID string, roomNID int64, thread string, notifications, highlights, first, last, marker, member int64) summary {
	s := summary{roomID: roomID, roomNID: roomNID, thread: thread,
		counts: NotificationCounts{NotificationCount: notifications, HighlightCount: highlights},
		first:  first, last: last, read: marker}
	if thread == mainThread {
		s.read = max(s.read, member)
	}
	return s
}

// summaryMarker reads the position a push_summaries row s is read up to by
// the user's markers: the room's, or its thread's.
const summaryMarker = `COALESCE((SELECT MAX(k.read_pos) FROM push_read_markers k
	WHERE k.user_id = s.user_id AND k.room_nid = s.room_nid AND k.thread_id IN ('', s.thread_id)), 0)`

// summaries reads the user's summaries with notifications in the rooms.
func (t *Queries) summaries(ctx context.Context, userID string, roomNIDs []int64) ([]summary, error) {
	args := make([]any, 0, 1+len(roomNIDs))
	args = append(args, userID)
	for _, nid := range roomNIDs {
		args = append(args, nid)
	}
	rows, err := t.q.QueryContext(ctx, `SELECT r.room_id, s.room_nid, s.thread_id, s.notifications, s.highlights, s.first_pos, s.last_pos,
		`+summaryMarker+`, COALESCE(m.stream_pos, 0)
		FROM push_summaries s JOIN rooms r ON r.room_nid = s.room_nid
		LEFT JOIN room_members m ON m.room_nid = s.room_nid AND m.user_id = s.user_id
		WHERE s.user_id = $1 AND s.notifications > 0 AND s.room_nid IN (`+placeholders(2, len(roomNIDs))+`)`, args...)
	if err != nil {
		return nil, fmt.Errorf("unread counts: %w", err)
	}
	defer rows.Close()
	var out []summary
	for rows.Next() {
		var roomID, thread string
		var roomNID, n, h, first, last, marker, member int64
		if err := rows.Scan(&roomID, &roomNID, &thread, &n, &h, &first, &last, &marker, &member); err != nil {
			return nil, err
		}
		out = append(out, newSummary(roomID, roomNID, thread, n, h, first, last, marker, member))
	}
	return out, rows.Err()
}

type roomThread struct {
	roomNID int64
	thread  string
}

// notificationsAfter counts the user's notifications after stream position
// after in the threads of sums in the given rooms, by room and thread.
func (t *Queries) notificationsAfter(ctx context.Context, userID string, roomNIDs []int64, sums []summary, after int64) (map[roomThread]NotificationCounts, error) {
	args := []any{userID, after}
	var where []string
	for _, s := range sums {
		if slices.Contains(roomNIDs, s.roomNID) {
			args = append(args, s.roomNID, s.thread)
			where = append(where, fmt.Sprintf("(room_nid = $%d AND thread_id = $%d)", len(args)-1, len(args)))
		}
	}
	rows, err := t.q.QueryContext(ctx, `SELECT room_nid, thread_id, COUNT(*), SUM(CASE WHEN highlight THEN 1 ELSE 0 END)
		FROM push_notifications WHERE user_id = $1 AND stream_pos > $2 AND (`+strings.Join(where, " OR ")+`)
		GROUP BY room_nid, thread_id`, args...)
	if err != nil {
		return nil, fmt.Errorf("notifications after %d: %w", after, err)
	}
	defer rows.Close()
	out := make(map[roomThread]NotificationCounts)
	for rows.Next() {
		var k roomThread
		var c NotificationCounts
		if err := rows.Scan(&k.roomNID, &k.thread, &c.NotificationCount, &c.HighlightCount); err != nil {
			return nil, err
		}
		out[k] = c
	}
	return out, rows.Err()
}

// mainThread is the thread id of the main timeline.
const mainThread = "main"
