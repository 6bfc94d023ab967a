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

// SyncHead reads a sync's head. The branches of the query share their
// columns: s1-s3 text, i1-i7 integers, b a boolean, each branch saying in
// k what its row is.
func (t *Queries) SyncHead(ctx context.Context, r SyncHeadRequest) (SyncHead, error) {
	args := []any{r.UserID, r.Localpart, r.DeviceID, flag(r.WantCountChanges), r.CountsSince, r.ToDeviceSince,
		flag(r.WantUnread), r.UnreadSince}
	for _, typ := range r.AccountDataTypes {
		args = append(args, typ)
	}
	branches := []string{
		fmt.Sprintf(`SELECT %d AS k, stream AS s1, '' AS s2, '' AS s3, pos AS i1, 0 AS i2, 0 AS i3, 0 AS i4, 0 AS i5, 0 AS i6, 0 AS i7, FALSE AS b
			FROM stream_positions`, headPosition),
		fmt.Sprintf(`SELECT %d, r.room_id, r.room_version, m.membership, r.room_nid, m.event_nid, m.stream_pos, r.last_stream_pos, 0, 0, 0, m.forgotten
			FROM room_members m JOIN rooms r ON r.room_nid = m.room_nid WHERE m.user_id = $1`, headMembership),
		fmt.Sprintf(`SELECT %d, r.room_id, '', '', 0, 0, 0, 0, 0, 0, 0, FALSE
			FROM push_count_changes c JOIN rooms r ON r.room_nid = c.room_nid
			WHERE $4 = 1 AND c.user_id = $1 AND `+headCountChanged, headCountChange),
		// The summaries of the rooms unreadCovered names: both must pick the
		// same rooms.
		fmt.Sprintf(`SELECT %d, r.room_id, s.thread_id, '', s.room_nid, s.notifications, s.highlights, s.first_pos, s.last_pos,
			`+summaryMarker+`, m.stream_pos, FALSE
			FROM push_summaries s JOIN room_members m ON m.room_nid = s.room_nid AND m.user_id = s.user_id
			JOIN rooms r ON r.room_nid = s.room_nid
			WHERE $7 = 1 AND s.user_id = $1 AND s.notifications > 0 AND m.membership = 'join' AND (r.last_stream_pos > $8
				OR ($4 = 1 AND EXISTS (SELECT 1 FROM push_count_changes c WHERE c.user_id = $1 AND c.room_nid = s.room_nid
					AND `+headCountChanged+`)))`, headSummary),
		fmt.Sprintf(`SELECT %d, algorithm, '', '', COUNT(*), 0, 0, 0, 0, 0, 0, FALSE
			FROM e2e_one_time_keys WHERE localpart = $2 AND device_id = $3 GROUP BY algorithm`, headOneTimeKeys),
		fmt.Sprintf(`SELECT %d, algorithm, '', '', 0, 0, 0, 0, 0, 0, 0, FALSE
			FROM e2e_fallback_keys WHERE localpart = $2 AND device_id = $3 AND used = FALSE`, headFallbackKey),
		fmt.Sprintf(`SELECT %d, '', '', '',
			(SELECT COUNT(*) FROM (SELECT 1 FROM to_device_messages WHERE localpart = $2 AND device_id = $3 AND pos <= $6 LIMIT 1) x),
			(SELECT COUNT(*) FROM (SELECT 1 FROM to_device_messages WHERE localpart = $2 AND device_id = $3 AND pos > $6
				AND pos <= (SELECT pos FROM stream_positions WHERE stream = '`+ToDeviceStream+`') LIMIT 1) y),
			0, 0, 0, 0, 0, FALSE`, headToDevice),
	}
	if len(r.AccountDataTypes) > 0 {
		branches = append(branches, fmt.Sprintf(`SELECT %d, type, content, '', 0, 0, 0, 0, 0, 0, 0, FALSE
			FROM account_data WHERE localpart = $2 AND room_id = '' AND type IN (`+placeholders(9, len(r.AccountDataTypes))+`)`,
			headAccountData))
	}
	rows, err := t.q.QueryContext(ctx, strings.Join(branches, " UNION ALL "), args...)
	if err != nil {
		return SyncHead{}, fmt.Errorf("sync head: %w", err)
	}
	defer rows.Close()
	h := SyncHead{AccountData: make(map[string][]byte), OneTimeKeys: make(map[string]int), FallbackKeys: []string{}}
	positions := h.Positions.fields()
	var sums []summary
	for rows.Next() {
		var k int
		var s1, s2, s3 string
		var i1, i2, i3, i4, i5, i6, i7 int64
		var b bool
		if err := rows.Scan(&k, &s1, &s2, &s3, &i1, &i2, &i3, &i4, &i5, &i6, &i7, &b); err != nil {
			return SyncHead{}, fmt.Errorf("sync head: %w", err)
		}
		switch k {
		case headPosition:
			if f := positions[s1]; f != nil {
				*f = i1
			}
		case headMembership:
			h.Memberships = append(h.Memberships, SyncMembership{RoomID: s1, RoomVersion: s2, Membership: s3, RoomNID: i1,
				EventNID: i2, StreamPos: i3, RoomLastStreamPos: i4, Forgotten: b})
		case headCountChange:
			h.CountChanges = append(h.CountChanges, s1)
		case headAccountData:
			h.AccountData[s1] = []byte(s2)
		case headOneTimeKeys:
			h.OneTimeKeys[s1] = int(i1)
		case headFallbackKey:
			h.FallbackKeys = append(h.FallbackKeys, s1)
		case headToDevice:
			h.ToDeviceToAck, h.ToDeviceNew = i1 > 0, i2 > 0
		case headSummary:
			sums = append(sums, newSummary(s1, i1, s2, i2, i3, i4, i5, i6, i7))
		}
	}
	if err := rows.Err(); err != nil {
		return SyncHead{}, fmt.Errorf("sync head: %w", err)
	}
	// As SyncMemberships and DeviceKeyCounts order them.
	slices.SortFunc(h.Memberships, func(a, b SyncMembership) int { return strings.Compare(a.RoomID, b.RoomID) })
	slices.Sort(h.FallbackKeys)
	if r.WantUnread {
		h.Unread = h.unreadCovered(r.UnreadSince, sums)
	}
	return h, nil
}

// headCountChanged is the window of count changes a head reads, for a
// push_count_changes row c.
const headCountChanged = `c.stream_pos > $5
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
