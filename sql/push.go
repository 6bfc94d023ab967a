package sql

import (
	"context"
	stdsql "database/sql"
	"errors"
	"fmt"
	"maps"
	"slices"
)

// Push rules and unread notification counts (migration 0007_push.sql).

// PushRule is a rule a user defined.
type PushRule struct {
	Kind   string
	RuleID string
	// Conditions is a JSON array for override and underride rules, nil
	// for the other kinds.
	Conditions []byte
	// Pattern is a content rule's glob.
	Pattern *string
	// Actions is a JSON array.
	Actions []byte
	Enabled bool
}

// PushRuleSetting is a user's change to a server-default rule.
type PushRuleSetting struct {
	Kind   string
	RuleID string
	// Enabled is nil when the default's applies.
	Enabled *bool
	// Actions is a JSON array, nil when the default's apply.
	Actions []byte
}

// ErrPushRuleAnchor is returned by PutPushRule when before or after names
// no rule of the user's of that kind.
var ErrPushRuleAnchor = errors.New("before/after rule not found")

// PushRules returns the rules the user defined, ordered by kind and, within
// a kind, most important first, and the user's settings of server-default
// rules.
func (t *Queries) PushRules(ctx context.Context, userID string) ([]PushRule, []PushRuleSetting, error) {
	rows, err := t.q.QueryContext(ctx, `SELECT kind, rule_id, conditions, pattern, actions, enabled FROM push_rules
		WHERE user_id = $1 ORDER BY kind, priority DESC, rule_id`, userID)
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	var rules []PushRule
	for rows.Next() {
		var r PushRule
		var conds, pattern stdsql.NullString
		var actions string
		if err := rows.Scan(&r.Kind, &r.RuleID, &conds, &pattern, &actions, &r.Enabled); err != nil {
			return nil, nil, err
		}
		if conds.Valid {
			r.Conditions = []byte(conds.String)
		}
		if pattern.Valid {
			r.Pattern = &pattern.String
		}
		r.Actions = []byte(actions)
		rules = append(rules, r)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, err
	}
	srows, err := t.q.QueryContext(ctx, `SELECT kind, rule_id, enabled, actions FROM push_rule_settings WHERE user_id = $1`, userID)
	if err != nil {
		return nil, nil, err
	}
	defer srows.Close()
	var settings []PushRuleSetting
	for srows.Next() {
		var s PushRuleSetting
		var enabled stdsql.NullBool
		var actions stdsql.NullString
		if err := srows.Scan(&s.Kind, &s.RuleID, &enabled, &actions); err != nil {
			return nil, nil, err
		}
		if enabled.Valid {
			s.Enabled = &enabled.Bool
		}
		if actions.Valid {
			s.Actions = []byte(actions.String)
		}
		settings = append(settings, s)
	}
	return rules, settings, srows.Err()
}

// PutPushRule creates or replaces one of the user's rules. A new rule is
// enabled and, without before or after, the most important of its kind; an
// existing one keeps its enabled state and, without before or after, its
// place. before puts the rule just above the rule it names, after just
// below it (before wins when both are given); ErrPushRuleAnchor when that
// rule does not exist.
func (t *Queries) PutPushRule(ctx context.Context, userID string, r PushRule, before, after string) error {
	return t.ensureTx(ctx, func(q *Queries) error {
		var conds any
		if r.Conditions != nil {
			conds = string(r.Conditions)
		}
		anchor, above := before, true
		if anchor == "" {
			anchor, above = after, false
		}
		var priority int64
		var havePriority bool
		if anchor != "" {
			var p int64
			err := q.q.QueryRowContext(ctx, `SELECT priority FROM push_rules WHERE user_id = $1 AND kind = $2 AND rule_id = $3`,
				userID, r.Kind, anchor).Scan(&p)
			if errors.Is(err, stdsql.ErrNoRows) {
				return ErrPushRuleAnchor
			}
			if err != nil {
				return err
			}
			// Make room next to the anchor by shifting the rules beyond it.
			if above {
				_, err = q.q.ExecContext(ctx, `UPDATE push_rules SET priority = priority + 1
					WHERE user_id = $1 AND kind = $2 AND priority > $3`, userID, r.Kind, p)
				priority = p + 1
			} else {
				_, err = q.q.ExecContext(ctx, `UPDATE push_rules SET priority = priority - 1
					WHERE user_id = $1 AND kind = $2 AND priority < $3`, userID, r.Kind, p)
				priority = p - 1
			}
			if err != nil {
				return err
			}
			havePriority = true
		}
		res, err := q.q.ExecContext(ctx, `UPDATE push_rules SET conditions = $4, pattern = $5, actions = $6,
				priority = CASE WHEN $7 THEN $8 ELSE priority END
			WHERE user_id = $1 AND kind = $2 AND rule_id = $3`,
			userID, r.Kind, r.RuleID, conds, r.Pattern, string(r.Actions), havePriority, priority)
		if err := expectRow(res, err); errors.Is(err, ErrNotFound) {
			if !havePriority {
				if err := q.q.QueryRowContext(ctx, `SELECT COALESCE(MAX(priority), 0) + 1 FROM push_rules
					WHERE user_id = $1 AND kind = $2`, userID, r.Kind).Scan(&priority); err != nil {
					return err
				}
			}
			if _, err := q.q.ExecContext(ctx, `INSERT INTO push_rules (user_id, kind, rule_id, priority, conditions, pattern, actions, enabled)
				VALUES ($1, $2, $3, $4, $5, $6, $7, TRUE)`,
				userID, r.Kind, r.RuleID, priority, conds, r.Pattern, string(r.Actions)); err != nil {
				return err
			}
		} else if err != nil {
			return err
		}
		return q.bumpPushRulesVersion(ctx, userID)
	})
}

// DeletePushRule deletes one of the user's rules; ErrNotFound when there is
// no such rule.
func (t *Queries) DeletePushRule(ctx context.Context, userID, kind, ruleID string) error {
	return t.ensureTx(ctx, func(q *Queries) error {
		if err := expectRow(q.q.ExecContext(ctx, `DELETE FROM push_rules WHERE user_id = $1 AND kind = $2 AND rule_id = $3`,
			userID, kind, ruleID)); err != nil {
			return err
		}
		return q.bumpPushRulesVersion(ctx, userID)
	})
}

// SetPushRuleEnabled enables or disables one of the user's rules;
// ErrNotFound when there is no such rule.
func (t *Queries) SetPushRuleEnabled(ctx context.Context, userID, kind, ruleID string, enabled bool) error {
	return t.updatePushRule(ctx, userID, `UPDATE push_rules SET enabled = $4 WHERE user_id = $1 AND kind = $2 AND rule_id = $3`,
		kind, ruleID, enabled)
}

// SetPushRuleActions sets the actions (a JSON array) of one of the user's
// rules; ErrNotFound when there is no such rule.
func (t *Queries) SetPushRuleActions(ctx context.Context, userID, kind, ruleID string, actions []byte) error {
	return t.updatePushRule(ctx, userID, `UPDATE push_rules SET actions = $4 WHERE user_id = $1 AND kind = $2 AND rule_id = $3`,
		kind, ruleID, string(actions))
}

func (t *Queries) updatePushRule(ctx context.Context, userID, query, kind, ruleID string, v any) error {
	return t.ensureTx(ctx, func(q *Queries) error {
		if err := expectRow(q.q.ExecContext(ctx, query, userID, kind, ruleID, v)); err != nil {
			return err
		}
		return q.bumpPushRulesVersion(ctx, userID)
	})
}

// SetDefaultPushRuleEnabled records that the user enabled or disabled a
// server-default rule. The caller checks that the rule exists.
func (t *Queries) SetDefaultPushRuleEnabled(ctx context.Context, userID, kind, ruleID string, enabled bool) error {
	return t.setDefaultPushRule(ctx, userID, `INSERT INTO push_rule_settings (user_id, kind, rule_id, enabled) VALUES ($1, $2, $3, $4)
		ON CONFLICT (user_id, kind, rule_id) DO UPDATE SET enabled = excluded.enabled`, kind, ruleID, enabled)
}

// SetDefaultPushRuleActions records the user's actions (a JSON array) for
// a server-default rule. The caller checks that the rule exists.
func (t *Queries) SetDefaultPushRuleActions(ctx context.Context, userID, kind, ruleID string, actions []byte) error {
	return t.setDefaultPushRule(ctx, userID, `INSERT INTO push_rule_settings (user_id, kind, rule_id, actions) VALUES ($1, $2, $3, $4)
		ON CONFLICT (user_id, kind, rule_id) DO UPDATE SET actions = excluded.actions`, kind, ruleID, string(actions))
}

func (t *Queries) setDefaultPushRule(ctx context.Context, userID, query, kind, ruleID string, v any) error {
	return t.ensureTx(ctx, func(q *Queries) error {
		if _, err := q.q.ExecContext(ctx, query, userID, kind, ruleID, v); err != nil {
			return err
		}
		return q.bumpPushRulesVersion(ctx, userID)
	})
}

func (t *Queries) bumpPushRulesVersion(ctx context.Context, userID string) error {
	_, err := t.q.ExecContext(ctx, `INSERT INTO push_rules_versions (user_id, version) VALUES ($1, 1)
		ON CONFLICT (user_id) DO UPDATE SET version = push_rules_versions.version + 1`, userID)
	if err != nil {
		return fmt.Errorf("bump push rules version: %w", err)
	}
	return nil
}

// PushRulesVersion is the version of the user's rules: 0 while they have
// never changed them, then bumped by every change.
func (t *Queries) PushRulesVersion(ctx context.Context, userID string) (int64, error) {
	var v int64
	err := t.q.QueryRowContext(ctx, `SELECT version FROM push_rules_versions WHERE user_id = $1`, userID).Scan(&v)
	if errors.Is(err, stdsql.ErrNoRows) {
		return 0, nil
	}
	return v, err
}

// PushMember is a member of a room whose notifications the push counter
// may have to count.
type PushMember struct {
	UserID     string
	Membership string
	// StreamPos and EventNID are those of the membership event.
	StreamPos int64
	EventNID  int64
	// RulesVersion is the version of the user's push rules.
	RulesVersion int64
}

// PushMembers lists a room's joined and invited members on the server
// serverName, with their push rules versions, and counts the room's joined
// members on every server (0 when none is local: nobody to count for), in
// one query.
func (t *Queries) PushMembers(ctx context.Context, roomNID int64, serverName string) (members []PushMember, joined int64, err error) {
	suffix := ":" + serverName
	// The count rides along with every row.
	rows, err := t.q.QueryContext(ctx, `SELECT m.user_id, m.membership, m.stream_pos, m.event_nid, COALESCE(v.version, 0),
			(SELECT COUNT(*) FROM room_members j WHERE j.room_nid = $1 AND j.membership = 'join')
		FROM room_members m LEFT JOIN push_rules_versions v ON v.user_id = m.user_id
		WHERE m.room_nid = $1 AND m.membership IN ('join', 'invite') AND `+localSuffix("m.user_id", 2),
		roomNID, suffix, len(suffix))
	if err != nil {
		return nil, 0, err
	}
	defer rows.Close()
	for rows.Next() {
		var m PushMember
		if err := rows.Scan(&m.UserID, &m.Membership, &m.StreamPos, &m.EventNID, &m.RulesVersion, &joined); err != nil {
			return nil, 0, err
		}
		members = append(members, m)
	}
	return members, joined, rows.Err()
}

// EventRelation returns the relation an event declares (m.relates_to with
// rel_type and event_id) as indexed when it was stored; ErrNotFound when
// the event is unknown, redacted or declares none.
func (t *Queries) EventRelation(ctx context.Context, eventID string) (relType, parentID string, err error) {
	err = t.q.QueryRowContext(ctx, `SELECT er.rel_type, er.relates_to_id FROM events e
		JOIN event_relations er ON er.event_nid = e.event_nid
		WHERE e.event_id = $1 AND e.redacted_by IS NULL`, eventID).Scan(&relType, &parentID)
	return relType, parentID, noRows(err)
}

// PushNotification is an event notifying one user.
type PushNotification struct {
	UserID string
	// ThreadID is "main" or the event id of the thread root.
	ThreadID  string
	Highlight bool
}

// EventNotifications are the users one event notifies.
type EventNotifications struct {
	RoomNID, EventNID, StreamPos int64
	Notes                        []PushNotification
}

// AddEventsPushNotifications records the users events notify and adds
// them to the users' counts (push_summaries), a few statements for all
// the events. Adding an event's notifications again changes nothing; a
// user whose read marker is already at or past the event (a receipt that
// came before the counter got to the event) is not notified.
func (t *Queries) AddEventsPushNotifications(ctx context.Context, evs []EventNotifications) error {
	first := make(map[int64]int64) // the earliest event of each room
	for _, ev := range evs {
		if len(ev.Notes) > 0 {
			if p, ok := first[ev.RoomNID]; !ok || ev.StreamPos < p {
				first[ev.RoomNID] = ev.StreamPos
			}
		}
	}
	if len(first) == 0 {
		return nil
	}
	return t.ensureTx(ctx, func(q *Queries) error {
		read, err := q.readMarkersFrom(ctx, first)
		if err != nil {
			return err
		}
		var rows []notificationRow
		for _, ev := range evs {
			for _, n := range ev.Notes {
				k := readerKey{ev.RoomNID, n.UserID, ""}
				if read[k] >= ev.StreamPos {
					continue
				}
				if k.thread = n.ThreadID; read[k] >= ev.StreamPos {
					continue
				}
				rows = append(rows, notificationRow{room: ev.RoomNID, event: ev.EventNID, pos: ev.StreamPos, PushNotification: n})
			}
		}
		if len(rows) == 0 {
			return nil
		}
		added, err := q.insertNotifications(ctx, rows)
		if err != nil {
			return err
		}
		return q.addToSummaries(ctx, added)
	})
}

// notificationRow is a row of push_notifications.
type notificationRow struct {
	room, event, pos int64
	PushNotification
}

// insertNotifications inserts rows and returns those that were new: only
// those are new to the counts.
func (t *Queries) insertNotifications(ctx context.Context, rows []notificationRow) ([]notificationRow, error) {
	arg, err := jsonArg(rows, func(r notificationRow) []any {
		return []any{r.UserID, r.room, r.ThreadID, r.event, r.pos, r.Highlight}
	})
	if err != nil {
		return nil, err
	}
	out, err := t.q.QueryContext(ctx, `INSERT INTO push_notifications (user_id, room_nid, thread_id, event_nid, stream_pos, highlight)
		`+t.jsonRows("TEXT", "BIGINT", "TEXT", "BIGINT", "BIGINT", "BOOLEAN")+`
		ON CONFLICT (user_id, room_nid, stream_pos) DO NOTHING RETURNING user_id, room_nid, thread_id, stream_pos, highlight`, arg)
	if err != nil {
		return nil, fmt.Errorf("add push notifications: %w", err)
	}
	defer out.Close()
	var added []notificationRow
	for out.Next() {
		var r notificationRow
		if err := out.Scan(&r.UserID, &r.room, &r.ThreadID, &r.pos, &r.Highlight); err != nil {
			return nil, err
		}
		added = append(added, r)
	}
	return added, out.Err()
}

// readerKey is a user's read marker in a room's thread ("" for
// unthreaded).
type readerKey struct {
	room         int64
	user, thread string
}

// readMarkersFrom returns the read markers of rooms at or past a stream
// position, by room NID, with their positions: usually none, since the
// counter runs only a little behind the rooms.
func (t *Queries) readMarkersFrom(ctx context.Context, from map[int64]int64) (map[readerKey]int64, error) {
	var out map[readerKey]int64
	for batch := range chunks(slices.Sorted(maps.Keys(from))) {
		args := make([]any, 0, 2*len(batch))
		for _, room := range batch {
			args = append(args, room, from[room])
		}
		rows, err := t.q.QueryContext(ctx, `WITH f(room_nid, pos) AS (VALUES `+valuesRows("CAST(? AS BIGINT), CAST(? AS BIGINT)", 1, len(batch))+`)
			SELECT k.room_nid, k.user_id, k.thread_id, k.read_pos FROM f
			CROSS JOIN push_read_markers k WHERE k.room_nid = f.room_nid AND k.read_pos >= f.pos`, args...)
		if err != nil {
			return nil, fmt.Errorf("read markers: %w", err)
		}
		for rows.Next() {
			var k readerKey
			var pos int64
			if err := rows.Scan(&k.room, &k.user, &k.thread, &pos); err != nil {
				rows.Close()
				return nil, err
			}
			if out == nil {
				out = make(map[readerKey]int64)
			}
			out[k] = pos
		}
		if err := errors.Join(rows.Err(), rows.Close()); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// ResetCounts marks a user's notifications in a room as read up to and
// including stream position upTo: the receipt code calls it when the
// user's m.read or m.read.private receipt moves to the event at upTo, and
// the push counter when the user sends an event. threadID is the
// receipt's: "" for an unthreaded receipt, which reads every thread, "main"
// for the main timeline, or a thread root's event id. A receipt behind an
// earlier one changes nothing (spec: the further of m.read and
// m.read.private counts). An unknown room changes nothing.
func (t *Queries) ResetCounts(ctx context.Context, userID, roomID, threadID string, upTo int64) error {
	var roomNID int64
	err := t.q.QueryRowContext(ctx, `SELECT room_nid FROM rooms WHERE room_id = $1`, roomID).Scan(&roomNID)
	if errors.Is(err, stdsql.ErrNoRows) {
		return nil
	}
	if err != nil {
		return err
	}
	return t.ResetCountsNID(ctx, userID, roomNID, threadID, upTo)
}

// ResetCountsNID is ResetCounts for a room NID.
func (t *Queries) ResetCountsNID(ctx context.Context, userID string, roomNID int64, threadID string, upTo int64) error {
	return t.ResetCountsIn(ctx, []ReadUpTo{{UserID: userID, RoomNID: roomNID, ThreadID: threadID, UpTo: upTo}})
}

// ResetCountsIn is ResetCountsNID for several reads (their After is not
// used) in a few statements however many they are: the push counter
// resets the counts of all its batch's senders together.
func (t *Queries) ResetCountsIn(ctx context.Context, reads []ReadUpTo) error {
	if len(reads) == 0 {
		return nil
	}
	// One marker row per user, room and thread, at the furthest read: a
	// statement may not upsert a row twice.
	type marker struct {
		user   string
		room   int64
		thread string
	}
	furthest := make(map[marker]int64)
	var markers []marker
	type userRoom struct {
		user string
		room int64
	}
	var pairs []userRoom
	paired := make(map[userRoom]bool)
	for _, r := range reads {
		k := marker{r.UserID, r.RoomNID, r.ThreadID}
		pos, seen := furthest[k]
		if !seen {
			markers = append(markers, k)
		}
		furthest[k] = max(pos, r.UpTo)
		if p := (userRoom{k.user, k.room}); !paired[p] {
			paired[p] = true
			pairs = append(pairs, p)
		}
	}
	markerArg, err := jsonArg(markers, func(k marker) []any { return []any{k.user, k.room, k.thread, furthest[k]} })
	if err != nil {
		return err
	}
	pairArg, err := jsonArg(pairs, func(p userRoom) []any { return []any{p.user, p.room} })
	if err != nil {
		return err
	}
	return t.ensureTx(ctx, func(q *Queries) error {
		if _, err := q.q.ExecContext(ctx, `INSERT INTO push_read_markers (user_id, room_nid, thread_id, read_pos)
			`+q.jsonRows("TEXT", "BIGINT", "TEXT", "BIGINT")+` ON CONFLICT (user_id, room_nid, thread_id) DO UPDATE SET read_pos =
			CASE WHEN excluded.read_pos > push_read_markers.read_pos THEN excluded.read_pos ELSE push_read_markers.read_pos END`,
			markerArg); err != nil {
			return fmt.Errorf("move read markers: %w", err)
		}
		// Then, for each user and room, every notification the markers
		// now cover goes, and the summaries of every thread are recounted
		// (exactly, so a thread the reads left alone keeps its count).
		// Both engines seek the tables' keys from the pairs (checked with
		// EXPLAIN on 300,000 analyzed notifications on PostgreSQL).
		sel := summarySelection{`(user_id, room_nid) IN (` + q.jsonRows("TEXT", "BIGINT") + `)`,
			[]any{pairArg}}
		if err := q.lockSummaries(ctx, sel); err != nil {
			return err
		}
		if _, err := q.q.ExecContext(ctx, `DELETE FROM push_notifications WHERE `+sel.where+`
			AND EXISTS (SELECT 1 FROM push_read_markers k WHERE k.user_id = push_notifications.user_id
				AND k.room_nid = push_notifications.room_nid AND k.thread_id IN ('', push_notifications.thread_id)
				AND k.read_pos >= push_notifications.stream_pos)`, sel.args...); err != nil {
			return fmt.Errorf("clear read notifications: %w", err)
		}
		return q.recountSummaries(ctx, sel)
	})
}

// DeleteRoomPushNotifications drops a user's notifications in a room (the
// user left it).
func (t *Queries) DeleteRoomPushNotifications(ctx context.Context, userID string, roomNID int64) error {
	return t.ensureTx(ctx, func(q *Queries) error {
		if _, err := q.q.ExecContext(ctx, `DELETE FROM push_notifications WHERE user_id = $1 AND room_nid = $2`, userID, roomNID); err != nil {
			return err
		}
		_, err := q.q.ExecContext(ctx, `DELETE FROM push_summaries WHERE user_id = $1 AND room_nid = $2`, userID, roomNID)
		return err
	})
}

// DeleteEventPushNotifications drops every user's notification for an
// event (it was redacted) and returns the users it notified, whose counts
// changed.
func (t *Queries) DeleteEventPushNotifications(ctx context.Context, eventNID int64) ([]string, error) {
	var users []string
	err := t.ensureTx(ctx, func(q *Queries) error {
		rows, err := q.q.QueryContext(ctx, `SELECT user_id, room_nid, thread_id FROM push_notifications WHERE event_nid = $1`, eventNID)
		if err != nil {
			return err
		}
		// One event has one room and, as the counter records it, one
		// thread: one selection each, usually just one.
		var threads []roomThread
		byThread := make(map[roomThread][]string)
		for rows.Next() {
			var u string
			var k roomThread
			if err := rows.Scan(&u, &k.roomNID, &k.thread); err != nil {
				rows.Close()
				return err
			}
			users = append(users, u)
			if _, ok := byThread[k]; !ok {
				threads = append(threads, k)
			}
			byThread[k] = append(byThread[k], u)
		}
		if err := errors.Join(rows.Err(), rows.Close()); err != nil {
			return err
		}
		sels := make([]summarySelection, len(threads))
		for i, k := range threads {
			sels[i] = threadSelection(k.roomNID, k.thread, byThread[k])
		}
		for _, sel := range sels {
			if err := q.lockSummaries(ctx, sel); err != nil {
				return err
			}
		}
		if _, err := q.q.ExecContext(ctx, `DELETE FROM push_notifications WHERE event_nid = $1`, eventNID); err != nil {
			return err
		}
		for _, sel := range sels {
			if err := q.recountSummaries(ctx, sel); err != nil {
				return err
			}
		}
		return nil
	})
	return users, err
}

// SetPushCountedIn records that rooms' events up to stream positions
// were counted, by room NID; a room's position never moves back.
func (t *Queries) SetPushCountedIn(ctx context.Context, counted map[int64]int64) error {
	for batch := range chunks(slices.Sorted(maps.Keys(counted))) {
		args := make([]any, 0, 2*len(batch))
		for _, room := range batch {
			args = append(args, room, counted[room])
		}
		if _, err := t.q.ExecContext(ctx, `INSERT INTO push_counted_rooms (room_nid, stream_pos) VALUES `+valuesRows("?, ?", 1, len(batch))+`
			ON CONFLICT (room_nid) DO UPDATE SET stream_pos =
			CASE WHEN excluded.stream_pos > push_counted_rooms.stream_pos THEN excluded.stream_pos ELSE push_counted_rooms.stream_pos END`,
			args...); err != nil {
			return fmt.Errorf("set push counted: %w", err)
		}
	}
	return nil
}

// PushCountedUpTo is the stream position up to which the room's events
// have been counted (0: none yet). The counter runs behind the room: a sync
// that wants the counts of the events it returns can compare this with the
// position of the room's latest event.
func (t *Queries) PushCountedUpTo(ctx context.Context, roomID string) (int64, error) {
	var pos int64
	err := t.q.QueryRowContext(ctx, `SELECT c.stream_pos FROM push_counted_rooms c JOIN rooms r ON r.room_nid = c.room_nid
		WHERE r.room_id = $1`, roomID).Scan(&pos)
	if errors.Is(err, stdsql.ErrNoRows) {
		return 0, nil
	}
	return pos, err
}

// NotificationCounts are the spec's unread notification counts.
type NotificationCounts struct {
	NotificationCount int64 `json:"notification_count"`
	HighlightCount    int64 `json:"highlight_count"`
}

// UnreadCounts are a user's unread notification counts in one room.
type UnreadCounts struct {
	// Total counts every thread: unread_notifications for a sync whose
	// filter does not ask for unread_thread_notifications.
	NotificationCounts
	// Main counts the main timeline only: unread_notifications when the
	// filter asks for unread_thread_notifications.
	Main NotificationCounts
	// Threads counts each thread with unread notifications, by thread
	// root: unread_thread_notifications. Nil when there are none.
	Threads map[string]NotificationCounts
}

// unreadQuery counts unread notifications per room and thread; a row at or
// before a read marker of its thread, or an unthreaded one, is read even
// if it was counted after the marker moved.
const unreadQuery = `SELECT r.room_id, n.thread_id, COUNT(*), SUM(CASE WHEN n.highlight THEN 1 ELSE 0 END)
	FROM push_notifications n JOIN rooms r ON r.room_nid = n.room_nid
	WHERE n.user_id = $1 %s AND NOT EXISTS (SELECT 1 FROM push_read_markers k
		WHERE k.user_id = n.user_id AND k.room_nid = n.room_nid AND k.thread_id IN ('', n.thread_id) AND k.read_pos >= n.stream_pos)
	GROUP BY r.room_id, n.thread_id`

// UnreadCounts returns the user's unread notification counts in a room
// (zeros for a room without any).
func (t *Queries) UnreadCounts(ctx context.Context, userID, roomID string) (UnreadCounts, error) {
	m, err := t.unreadCounts(ctx, fmt.Sprintf(unreadQuery, "AND r.room_id = $2"), userID, roomID)
	return m[roomID], err
}

// UnreadCountsByRoom returns the user's unread notification counts in
// every room where they have some, by room id: one query for a whole sync.
func (t *Queries) UnreadCountsByRoom(ctx context.Context, userID string) (map[string]UnreadCounts, error) {
	return t.unreadCounts(ctx, fmt.Sprintf(unreadQuery, ""), userID)
}

func (t *Queries) unreadCounts(ctx context.Context, query string, args ...any) (map[string]UnreadCounts, error) {
	rows, err := t.q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]UnreadCounts{}
	for rows.Next() {
		var roomID, thread string
		var c NotificationCounts
		if err := rows.Scan(&roomID, &thread, &c.NotificationCount, &c.HighlightCount); err != nil {
			return nil, err
		}
		addCounts(out, roomID, thread, c)
	}
	return out, rows.Err()
}

// addCounts adds a thread's counts to its room's.
func addCounts(out map[string]UnreadCounts, roomID, thread string, c NotificationCounts) {
	u := out[roomID]
	u.NotificationCount += c.NotificationCount
	u.HighlightCount += c.HighlightCount
	if thread == mainThread {
		u.Main = c
	} else {
		if u.Threads == nil {
			u.Threads = map[string]NotificationCounts{}
		}
		u.Threads[thread] = c
	}
	out[roomID] = u
}
