package sql

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
)

// Device-list tracking (spec: "Tracking the device list for a user"): the
// device_lists stream records whose devices or keys changed, and
// DeviceListChanges turns a window of it, with the membership changes of
// the same window of the event stream, into a sync's device_lists.
//
// A user's devices and keys concern the users who share a room with them
// (both joined, as Synapse counts it) and the user themself, whose other
// devices track their own list.

// DeviceListChange is a recorded change of a user's device list and whom
// to wake for it: the user, and the joined members of Rooms.
type DeviceListChange struct {
	UserID string
	Pos    int64
	Rooms  []string
}

// AddDeviceListChange records that userID's devices or keys changed, at a
// new device_lists position taken in the same transaction (its own when
// not inside WithTx). The caller wakes the change's users and rooms after
// the commit.
//
// This is where an outbound m.device_list_update for the servers of the
// users sharing a room with a local user plugs in, and where an inbound
// one for a remote user is recorded.
func (t *Queries) AddDeviceListChange(ctx context.Context, userID string) (*DeviceListChange, error) {
	ch := &DeviceListChange{UserID: userID}
	err := t.ensureTx(ctx, func(q *Queries) error {
		var err error
		if ch.Rooms, err = q.RoomsWithMembership(ctx, userID, "join"); err != nil {
			return fmt.Errorf("rooms of %s: %w", userID, err)
		}
		ch.Pos, err = q.putDeviceListChange(ctx, userID, "")
		return err
	})
	if err != nil {
		return nil, err
	}
	return ch, nil
}

// AddSignatureChange records that observer signed keys of each of the
// target users (a user-signing key over their master keys): only
// observer's devices see those users as changed, since nobody else sees
// observer's signatures (Synapse's user signature stream). The caller
// wakes observer.
func (t *Queries) AddSignatureChange(ctx context.Context, observer string, targets []string) error {
	return t.ensureTx(ctx, func(q *Queries) error {
		for _, target := range targets {
			if _, err := q.putDeviceListChange(ctx, target, observer); err != nil {
				return err
			}
		}
		return nil
	})
}

func (t *Queries) putDeviceListChange(ctx context.Context, userID, observer string) (int64, error) {
	pos, err := t.AllocStreamPos(ctx, DeviceListsStream)
	if err != nil {
		return 0, err
	}
	_, err = t.q.ExecContext(ctx, `INSERT INTO device_list_changes (user_id, observer, pos) VALUES ($1, $2, $3)
		ON CONFLICT (user_id, observer) DO UPDATE SET pos = excluded.pos`, userID, observer, pos)
	if err != nil {
		return 0, fmt.Errorf("record device list change of %s: %w", userID, err)
	}
	return pos, nil
}

// DevicesDeleted does what the deletion of devices means beyond the
// device rows and their keys: their to-device inboxes and transaction ids
// go, a dehydrated device among them is forgotten, and the user's device
// list changes. deviceIDs nil means every device of the user (account
// deactivation). Call it in the transaction that deletes the devices, and
// wake the change's users and rooms after the commit.
func (t *Queries) DevicesDeleted(ctx context.Context, userID, localpart string, deviceIDs []string) (*DeviceListChange, error) {
	var ch *DeviceListChange
	err := t.ensureTx(ctx, func(q *Queries) error {
		if err := q.dropInboxes(ctx, localpart, deviceIDs); err != nil {
			return err
		}
		if err := q.forgetDehydratedDevice(ctx, localpart, deviceIDs); err != nil {
			return err
		}
		var err error
		ch, err = q.AddDeviceListChange(ctx, userID)
		return err
	})
	return ch, err
}

// DeviceLists is the device_lists section of a sync: the users whose
// devices the caller should fetch again, and those the caller no longer
// shares a room with.
type DeviceLists struct {
	Changed []string
	Left    []string
}

// DeviceListChanges computes what changed for userID's device tracking
// between two sync positions, from the device_lists window (from, to] and
// the event window (from, to]. mems are the user's memberships (as
// SyncMemberships returns them). Changed holds:
//
//   - the users sharing a room with userID now, and userID, whose devices
//     or keys changed in the window, and the users whose keys userID
//     signed;
//   - the joined members of the rooms userID joined in the window (they
//     may have changed devices while not sharing a room, spec note in
//     "Tracking the device list for a user");
//   - the users who joined, were invited to or knocked on one of userID's
//     joined rooms in the window (clients encrypt for invited members too;
//     Synapse counts them).
//
// Left holds the users who left a room userID is in, or were in a room
// userID left, in the window and share no room with userID now.
//
// Memberships are read as they are now: a change after to shows up in the
// next window, so a client following its tokens misses nothing.
func (t *Queries) DeviceListChanges(ctx context.Context, userID string, mems []SyncMembership, from, to StreamPositions) (DeviceLists, error) {
	changed := map[string]bool{}
	leftCandidates := map[string]bool{}
	if from.DeviceLists < to.DeviceLists {
		users, err := t.devicesChangedFor(ctx, userID, from.DeviceLists, to.DeviceLists)
		if err != nil {
			return DeviceLists{}, err
		}
		for _, u := range users {
			changed[u] = true
		}
	}
	if from.Events < to.Events {
		var active []int64
		var mine []SyncMembership
		for _, m := range mems {
			if m.StreamPos > from.Events && m.StreamPos <= to.Events {
				mine = append(mine, m)
			}
			if m.Membership == "join" && m.RoomLastStreamPos > from.Events {
				active = append(active, m.RoomNID)
			}
		}
		if err := t.membersChangedIn(ctx, userID, active, from.Events, to.Events, changed, leftCandidates); err != nil {
			return DeviceLists{}, err
		}
		joined, left, err := t.ownMembershipChanges(ctx, userID, mine, from.Events, to.Events)
		if err != nil {
			return DeviceLists{}, err
		}
		if err := t.joinedMembersOf(ctx, userID, joined, changed); err != nil {
			return DeviceLists{}, err
		}
		if err := t.joinedMembersOf(ctx, userID, left, leftCandidates); err != nil {
			return DeviceLists{}, err
		}
	}
	var out DeviceLists
	for u := range changed {
		out.Changed = append(out.Changed, u)
	}
	var candidates []string
	for u := range leftCandidates {
		if !changed[u] && u != userID {
			candidates = append(candidates, u)
		}
	}
	if len(candidates) > 0 {
		sharing, err := t.sharingAmong(ctx, userID, candidates)
		if err != nil {
			return DeviceLists{}, err
		}
		for _, u := range candidates {
			if !sharing[u] {
				out.Left = append(out.Left, u)
			}
		}
	}
	slices.Sort(out.Changed)
	slices.Sort(out.Left)
	return out, nil
}

// sharesRoomWith is an SQL condition: the user in the column userCol and
// the user $1 are both joined to some room.
func sharesRoomWith(userCol string) string {
	return `EXISTS (SELECT 1 FROM room_members a JOIN room_members b ON b.room_nid = a.room_nid
		WHERE a.user_id = $1 AND a.membership = 'join' AND b.user_id = ` + userCol + ` AND b.membership = 'join')`
}

// devicesChangedFor lists the users whose device-list changes in
// (from, to] userID sees.
func (t *Queries) devicesChangedFor(ctx context.Context, userID string, from, to int64) ([]string, error) {
	rows, err := t.q.QueryContext(ctx, `SELECT DISTINCT c.user_id FROM device_list_changes c
		WHERE c.pos > $2 AND c.pos <= $3 AND (c.observer = $1
			OR (c.observer = '' AND (c.user_id = $1 OR `+sharesRoomWith("c.user_id")+`)))`, userID, from, to)
	if err != nil {
		return nil, fmt.Errorf("device list changes: %w", err)
	}
	return scanStrings(rows)
}

// membersChangedIn reads the membership changes of other users in the
// rooms (userID's joined rooms with events in the window) whose latest
// membership event is in (from, to]: joins, invites and knocks to
// changed, leaves and bans to left.
func (t *Queries) membersChangedIn(ctx context.Context, userID string, rooms []int64, from, to int64, changed, left map[string]bool) error {
	for chunk := range slices.Chunk(rooms, 500) {
		args := []any{userID, from, to}
		for _, r := range chunk {
			args = append(args, r)
		}
		rows, err := t.q.QueryContext(ctx, `SELECT user_id, membership FROM room_members
			WHERE room_nid IN (`+placeholders(4, len(chunk))+`) AND user_id <> $1 AND stream_pos > $2 AND stream_pos <= $3`, args...)
		if err != nil {
			return fmt.Errorf("membership changes: %w", err)
		}
		for rows.Next() {
			var u, m string
			if err := rows.Scan(&u, &m); err != nil {
				rows.Close()
				return err
			}
			switch m {
			case "join", "invite", "knock":
				changed[u] = true
			default:
				left[u] = true
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
	}
	return nil
}

// ownMembershipChanges sorts the rooms where userID's membership changed
// in (from, to] into those they newly joined (joined now, not joined at
// from) and those they newly left (not joined now, but joined at from or
// at some point in the window), as Synapse does. A join over a join (a
// profile change) is neither.
func (t *Queries) ownMembershipChanges(ctx context.Context, userID string, mine []SyncMembership, from, to int64) (joined, left []int64, err error) {
	if len(mine) == 0 {
		return nil, nil, nil
	}
	type window struct {
		firstStateBefore int64
		hasJoin, seen    bool
	}
	windows := make(map[int64]*window, len(mine))
	for chunk := range slices.Chunk(mine, 500) {
		args := []any{userID, from, to}
		for _, m := range chunk {
			args = append(args, m.RoomNID)
		}
		rows, err := t.q.QueryContext(ctx, `SELECT e.room_nid, e.state_before_nid, e.json FROM events e
			WHERE e.room_nid IN (`+placeholders(4, len(chunk))+`) AND`+timelineWhere+`AND e.type = 'm.room.member'
			AND e.state_key = $1 AND e.stream_pos > $2 AND e.stream_pos <= $3 ORDER BY e.stream_pos`, args...)
		if err != nil {
			return nil, nil, fmt.Errorf("own membership events: %w", err)
		}
		for rows.Next() {
			var room, before int64
			var js string
			if err := rows.Scan(&room, &before, &js); err != nil {
				rows.Close()
				return nil, nil, err
			}
			w := windows[room]
			if w == nil {
				w = &window{firstStateBefore: before}
				windows[room] = w
			}
			w.seen = true
			if membershipOf([]byte(js)) == "join" {
				w.hasJoin = true
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, nil, err
		}
	}
	// The membership at from is the one in the state before the first
	// event of the window.
	key := StateKey{Type: "m.room.member", StateKey: userID}
	prevNIDs := map[int64]int64{}
	var nids []int64
	for _, m := range mine {
		w := windows[m.RoomNID]
		if w == nil || (m.Membership != "join" && w.hasJoin) {
			continue // nothing in the window, or known to have left a join
		}
		nid, err := t.SnapshotKey(ctx, w.firstStateBefore, key)
		if err != nil {
			return nil, nil, fmt.Errorf("membership before the window: %w", err)
		}
		if nid != 0 {
			prevNIDs[m.RoomNID] = nid
			nids = append(nids, nid)
		}
	}
	prevEvents, err := t.EventsByNID(ctx, nids)
	if err != nil {
		return nil, nil, err
	}
	prevMembership := map[int64]string{}
	for _, e := range prevEvents {
		prevMembership[e.NID] = membershipOf(e.JSON)
	}
	for _, m := range mine {
		w := windows[m.RoomNID]
		if w == nil {
			continue
		}
		wasJoined := prevMembership[prevNIDs[m.RoomNID]] == "join"
		switch {
		case m.Membership == "join" && !wasJoined:
			joined = append(joined, m.RoomNID)
		case m.Membership != "join" && (wasJoined || w.hasJoin):
			left = append(left, m.RoomNID)
		}
	}
	return joined, left, nil
}

// joinedMembersOf adds the users joined to the rooms, other than userID,
// to into.
func (t *Queries) joinedMembersOf(ctx context.Context, userID string, rooms []int64, into map[string]bool) error {
	for chunk := range slices.Chunk(rooms, 500) {
		args := []any{userID}
		for _, r := range chunk {
			args = append(args, r)
		}
		rows, err := t.q.QueryContext(ctx, `SELECT DISTINCT user_id FROM room_members
			WHERE room_nid IN (`+placeholders(2, len(chunk))+`) AND membership = 'join' AND user_id <> $1`, args...)
		if err != nil {
			return fmt.Errorf("members of rooms: %w", err)
		}
		users, err := scanStrings(rows)
		if err != nil {
			return err
		}
		for _, u := range users {
			into[u] = true
		}
	}
	return nil
}

// sharingAmong reports which of the users share a room with userID now.
func (t *Queries) sharingAmong(ctx context.Context, userID string, users []string) (map[string]bool, error) {
	out := map[string]bool{}
	for chunk := range slices.Chunk(users, 500) {
		args := []any{userID}
		for _, u := range chunk {
			args = append(args, u)
		}
		rows, err := t.q.QueryContext(ctx, `SELECT DISTINCT b.user_id FROM room_members a JOIN room_members b ON b.room_nid = a.room_nid
			WHERE a.user_id = $1 AND a.membership = 'join' AND b.membership = 'join'
			AND b.user_id IN (`+placeholders(2, len(chunk))+`)`, args...)
		if err != nil {
			return nil, fmt.Errorf("users sharing a room: %w", err)
		}
		shared, err := scanStrings(rows)
		if err != nil {
			return nil, err
		}
		for _, u := range shared {
			out[u] = true
		}
	}
	return out, nil
}

// membershipOf reads content.membership of an m.room.member event.
func membershipOf(js []byte) string {
	var e struct {
		Content struct {
			Membership string `json:"membership"`
		} `json:"content"`
	}
	_ = json.Unmarshal(js, &e)
	return e.Content.Membership
}

// scanStrings reads one string column of every row and closes rows.
func scanStrings(rows interface {
	Next() bool
	Scan(...any) error
	Close() error
	Err() error
}) ([]string, error) {
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, rows.Err()
}
