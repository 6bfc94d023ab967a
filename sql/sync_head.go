package sql

import (
	"context"
	"fmt"
	"slices"
	"strings"
)

// SyncHead is what every /sync reads before anything else, in one query
// (one round trip, and one snapshot of the database, so the rest is
// consistent with the positions): the streams' positions, the caller's
// memberships, the rooms whose unread counts changed since the caller's
// token, their unread count summaries in the joined rooms the sync will
// likely serve, some of their global account data, and their device's
// key counts.
type SyncHead struct {
	Positions   StreamPositions
	Memberships []SyncMembership
	// CountChanges are the rooms (by id) whose counts changed in
	// (SyncHeadRequest.CountsSince, Positions.Notifications].
	CountChanges []string
	// Unread holds the unread count summaries of the joined rooms with
	// events after SyncHeadRequest.UnreadSince or with count changes, for
	// UnreadCountsInRooms (nil unless WantUnread).
	Unread *UnreadSummaries
	// AccountData holds the global account data of the types asked for,
	// by type.
	AccountData map[string][]byte
	// OneTimeKeys and FallbackKeys are as DeviceKeyCounts gives them.
	OneTimeKeys  map[string]int
	FallbackKeys []string
	// ToDeviceToAck says whether the device has to-device messages at or
	// before SyncHeadRequest.ToDeviceSince (which a sync from there
	// acknowledges), ToDeviceNew whether it has some after it.
	ToDeviceToAck, ToDeviceNew bool
}

// SyncHeadRequest says whose head to read.
type SyncHeadRequest struct {
	UserID, Localpart, DeviceID string
	// CountsSince is the notifications position of the caller's token;
	// count changes are read only when WantCountChanges.
	CountsSince      int64
	WantCountChanges bool
	// UnreadSince is the events position of the caller's token (0 for an
	// initial sync); the summaries are read only when WantUnread.
	UnreadSince int64
	WantUnread  bool
	// ToDeviceSince is the to-device position of the caller's token.
	ToDeviceSince    int64
	AccountDataTypes []string
}

// The kinds of rows of the head query.
const (
	headPosition = iota
	headMembership
	headCountChange
	headAccountData
	headOneTimeKeys
	headFallbackKey
	headToDevice
	headSummary
)

// MaxSyncHeads is the most heads SyncHeads reads at once.
const MaxSyncHeads = 64

// SyncHeads reads the heads of several syncs in one query: syncs woken
// together (a room's members) share its round trip and fixed costs, and
// each head is as a query of its own would read it. The requests' rows
// come in a CTE, req, which every branch joins. The branches share their
// columns: q the request's index (-1 for the positions, which all
// share), s1-s3 text, i1-i7 integers, b a boolean, each branch saying in
// k what its row is. req comes first in every join (CROSS JOIN keeps
// SQLite to that order): without statistics SQLite would rather scan a
// table.
func (t *Queries) SyncHeads(ctx context.Context, rs []SyncHeadRequest) ([]SyncHead, error) {
	if len(rs) == 0 || len(rs) > MaxSyncHeads {
		return nil, fmt.Errorf("sync heads: %d requests", len(rs))
	}
	query, args, err := t.syncHeadsQuery(rs)
	if err != nil {
		return nil, fmt.Errorf("sync head: %w", err)
	}
	rows, err := t.q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("sync head: %w", err)
	}
	defer rows.Close()
	heads := make([]SyncHead, len(rs))
	for i := range heads {
		heads[i] = SyncHead{AccountData: make(map[string][]byte), OneTimeKeys: make(map[string]int), FallbackKeys: []string{}}
	}
	var positions StreamPositions
	fields := positions.fields()
	sums := make([][]summary, len(rs))
	for rows.Next() {
		var k, q int
		var s1, s2, s3 string
		var i1, i2, i3, i4, i5, i6, i7 int64
		var b bool
		if err := rows.Scan(&k, &q, &s1, &s2, &s3, &i1, &i2, &i3, &i4, &i5, &i6, &i7, &b); err != nil {
			return nil, fmt.Errorf("sync head: %w", err)
		}
		if k == headPosition {
			if f := fields[s1]; f != nil {
				*f = i1
			}
			continue
		}
		h := &heads[q]
		switch k {
		case headMembership:
			h.Memberships = append(h.Memberships, SyncMembership{RoomID: s1, RoomVersion: s2, Membership: s3, RoomNID: i1,
				EventNID: i2, StreamPos: i3, RoomLastStreamPos: i4, Forgotten: b})
		case headCountChange:
			h.CountChanges = append(h.CountChanges, s1)
		case headAccountData:
			if slices.Contains(rs[q].AccountDataTypes, s1) {
				h.AccountData[s1] = []byte(s2)
			}
		case headOneTimeKeys:
			h.OneTimeKeys[s1] = int(i1)
		case headFallbackKey:
			h.FallbackKeys = append(h.FallbackKeys, s1)
		case headToDevice:
			h.ToDeviceToAck, h.ToDeviceNew = i1 > 0, i2 > 0
		case headSummary:
			sums[q] = append(sums[q], newSummary(s1, i1, s2, i2, i3, i4, i5, i6, i7))
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sync head: %w", err)
	}
	for q := range heads {
		h := &heads[q]
		h.Positions = positions
		// As SyncMemberships and DeviceKeyCounts order them.
		slices.SortFunc(h.Memberships, func(a, b SyncMembership) int { return strings.Compare(a.RoomID, b.RoomID) })
		slices.Sort(h.FallbackKeys)
		if rs[q].WantUnread {
			h.Unread = h.unreadCovered(rs[q].UnreadSince, sums[q])
		}
	}
	return heads, nil
}

// syncHeadsQuery is the query of SyncHeads and its arguments. The
// requests come as one JSON array, so the text is the same for any number
// of them (it varies only with the account data types asked for): each
// connection prepares it once, where a text per batch size had the first
// batch of each size on each connection wait for its preparation (on
// SQLite 2 ms for 64 requests, 15 ms under load). req is materialized, so
// the array is read once for all the branches: 50 heads then take 0.6 ms
// on SQLite, against 0.9 ms for a VALUES list (BenchmarkSyncHeads).
func (t *Queries) syncHeadsQuery(rs []SyncHeadRequest) (string, []any, error) {
	var types []string
	for _, r := range rs {
		for _, typ := range r.AccountDataTypes {
			if !slices.Contains(types, typ) {
				types = append(types, typ)
			}
		}
	}
	arg, err := jsonArg(rs, func(r SyncHeadRequest) []any {
		return []any{r.UserID, r.Localpart, r.DeviceID, flag(r.WantCountChanges), r.CountsSince, r.ToDeviceSince,
			flag(r.WantUnread), r.UnreadSince}
	})
	if err != nil {
		return "", nil, err
	}
	args := []any{arg}
	for _, typ := range types {
		args = append(args, typ)
	}
	const typesFrom = 2
	branches := []string{
		fmt.Sprintf(`SELECT %d AS k, -1 AS q, stream AS s1, '' AS s2, '' AS s3, pos AS i1, 0 AS i2, 0 AS i3, 0 AS i4, 0 AS i5,
			0 AS i6, 0 AS i7, FALSE AS b
			FROM stream_positions`, headPosition),
		fmt.Sprintf(`SELECT %d, req.i, r.room_id, r.room_version, m.membership, r.room_nid, m.event_nid, m.stream_pos,
			r.last_stream_pos, 0, 0, 0, m.forgotten
			FROM req CROSS JOIN room_members m JOIN rooms r ON r.room_nid = m.room_nid
			WHERE m.user_id = req.user_id`, headMembership),
		fmt.Sprintf(`SELECT %d, req.i, r.room_id, '', '', 0, 0, 0, 0, 0, 0, 0, FALSE
			FROM req CROSS JOIN push_count_changes c JOIN rooms r ON r.room_nid = c.room_nid
			WHERE c.user_id = req.user_id AND req.want_cc = 1 AND `+headCountChanged, headCountChange),
		// The summaries of the rooms unreadCovered names: both must pick the
		// same rooms.
		fmt.Sprintf(`SELECT %d, req.i, r.room_id, s.thread_id, '', s.room_nid, s.notifications, s.highlights, s.first_pos,
			s.last_pos, `+summaryMarker+`, m.stream_pos, FALSE
			FROM req CROSS JOIN push_summaries s
			JOIN room_members m ON m.room_nid = s.room_nid AND m.user_id = s.user_id
			JOIN rooms r ON r.room_nid = s.room_nid
			WHERE s.user_id = req.user_id AND req.want_unread = 1 AND s.notifications > 0 AND m.membership = 'join'
				AND (r.last_stream_pos > req.unread_since OR (req.want_cc = 1 AND EXISTS (SELECT 1 FROM push_count_changes c WHERE c.user_id = req.user_id
					AND c.room_nid = s.room_nid AND `+headCountChanged+`)))`, headSummary),
		fmt.Sprintf(`SELECT %d, req.i, o.algorithm, '', '', COUNT(*), 0, 0, 0, 0, 0, 0, FALSE
			FROM req CROSS JOIN e2e_one_time_keys o WHERE o.localpart = req.localpart AND o.device_id = req.device_id
			GROUP BY req.i, o.algorithm`, headOneTimeKeys),
		fmt.Sprintf(`SELECT %d, req.i, f.algorithm, '', '', 0, 0, 0, 0, 0, 0, 0, FALSE
			FROM req CROSS JOIN e2e_fallback_keys f
			WHERE f.localpart = req.localpart AND f.device_id = req.device_id AND f.used = FALSE`, headFallbackKey),
		fmt.Sprintf(`SELECT %d, req.i, '', '', '',
			CASE WHEN EXISTS (SELECT 1 FROM to_device_messages t WHERE t.localpart = req.localpart AND t.device_id = req.device_id
				AND t.pos <= req.todev_since) THEN 1 ELSE 0 END,
			CASE WHEN EXISTS (SELECT 1 FROM to_device_messages t WHERE t.localpart = req.localpart AND t.device_id = req.device_id
				AND t.pos > req.todev_since
				AND t.pos <= (SELECT pos FROM stream_positions WHERE stream = '`+ToDeviceStream+`')) THEN 1 ELSE 0 END,
			0, 0, 0, 0, 0, FALSE
			FROM req`, headToDevice),
	}
	if len(types) > 0 {
		branches = append(branches, fmt.Sprintf(`SELECT %d, req.i, a.type, a.content, '', 0, 0, 0, 0, 0, 0, 0, FALSE
			FROM req CROSS JOIN account_data a
			WHERE a.localpart = req.localpart AND a.room_id = '' AND a.type IN (`+placeholders(typesFrom, len(types))+`)`, headAccountData))
	}
	return `WITH req(i, user_id, localpart, device_id, want_cc, counts_since, todev_since, want_unread, unread_since) AS MATERIALIZED (
		SELECT CAST(key AS BIGINT), ` + jsonColumns("TEXT", "TEXT", "TEXT", "BIGINT", "BIGINT", "BIGINT", "BIGINT", "BIGINT") + `
		FROM ` + t.dialect.jsonElements + `) ` + strings.Join(branches, " UNION ALL "), args, nil
}

// headCountChanged is the window of count changes a head reads, for a
// push_count_changes row c.
const headCountChanged = `c.stream_pos > req.counts_since
	AND c.stream_pos <= (SELECT pos FROM stream_positions WHERE stream = '` + NotificationsStream + `')`

// unreadCovered gives the rooms whose summaries the head read, as the
// summary branch picks them: the joined rooms with events after since, or
// with count changes. A room without summaries there has no unread
// notifications.
func (h *SyncHead) unreadCovered(since int64, sums []summary) *UnreadSummaries {
	changed := make(map[string]bool, len(h.CountChanges))
	for _, id := range h.CountChanges {
		changed[id] = true
	}
	u := &UnreadSummaries{rooms: make(map[int64][]summary)}
	for _, m := range h.Memberships {
		if m.Membership == "join" && (m.RoomLastStreamPos > since || changed[m.RoomID]) {
			u.rooms[m.RoomNID] = nil
		}
	}
	for _, s := range sums {
		u.rooms[s.roomNID] = append(u.rooms[s.roomNID], s)
	}
	return u
}

// flag is a boolean as the head query's integer parameters take it.
func flag(b bool) int {
	if b {
		return 1
	}
	return 0
}
