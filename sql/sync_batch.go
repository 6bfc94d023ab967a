package sql

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/weft-chat/weft/config"
)

// The reads of sync.go for many rooms at once: an initial sync reads the
// same things of every room, and on PostgreSQL a round trip per room and
// read was most of its time.

// syncBatchRooms bounds the rooms of one batched query.
const syncBatchRooms = 100

// RoomsEventsByStream is RoomEventsByStream for several rooms: up to
// limit timeline events of each room in (lo, hi], newest first, by room
// NID. On PostgreSQL the rooms' queries go in one round trip (a pipeline:
// one statement of many branches, each with its own limit, costs more to
// plan than the round trips it saves); on SQLite a query costs no round
// trip.
func (d *DB) RoomsEventsByStream(ctx context.Context, roomNIDs []int64, lo, hi int64, limit int) (map[int64][]Event, error) {
	out := make(map[int64][]Event, len(roomNIDs))
	if d.engine != config.Postgres {
		for _, nid := range roomNIDs {
			evs, err := d.RoomEventsByStream(ctx, nid, lo, hi, limit)
			if err != nil {
				return nil, err
			}
			out[nid] = evs
		}
		return out, nil
	}
	conn, err := d.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("acquire connection: %w", err)
	}
	defer conn.Release()
	b := &pgx.Batch{}
	for _, nid := range roomNIDs {
		b.Queue(roomEventsByStream, nid, lo, hi, limit)
	}
	br := conn.SendBatch(ctx, b)
	defer br.Close()
	for _, nid := range roomNIDs {
		rows, err := br.Query()
		if err != nil {
			return nil, err
		}
		var evs []Event
		for rows.Next() {
			e, err := scanSyncEvent(rows)
			if err != nil {
				rows.Close()
				return nil, err
			}
			evs = append(evs, e)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
		out[nid] = evs
	}
	return out, br.Close()
}

// Snapshots is Snapshot for several snapshots in one query (per 100), by
// snapshot NID.
func (t *Queries) Snapshots(ctx context.Context, nids []int64) (map[int64]StateMap, error) {
	out := make(map[int64]StateMap, len(nids))
	for _, nid := range nids {
		out[nid] = make(StateMap)
	}
	nids = removeZero(nids)
	for len(nids) > 0 {
		batch := nids[:min(len(nids), syncBatchRooms)]
		nids = nids[len(batch):]
		args := make([]any, len(batch))
		for i, nid := range batch {
			args[i] = nid
		}
		// As snapshotChain, with the snapshot each row belongs to.
		rows, err := t.q.QueryContext(ctx, `WITH RECURSIVE chain (root, nid, n) AS (
				SELECT snapshot_nid, snapshot_nid, 0 FROM state_snapshots WHERE snapshot_nid IN (`+placeholders(1, len(batch))+`)
				UNION ALL
				SELECT c.root, s.base_nid, c.n + 1 FROM state_snapshots s JOIN chain c ON s.snapshot_nid = c.nid WHERE s.base_nid <> 0
			)
			SELECT c.root, e.type, e.state_key, e.event_nid FROM chain c JOIN state_snapshot_entries e ON e.snapshot_nid = c.nid
				AND e.snapshot_nid IN (SELECT nid FROM chain)
			ORDER BY c.root, c.n DESC`, args...)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var root, ev int64
			var k StateKey
			if err := rows.Scan(&root, &k.Type, &k.StateKey, &ev); err != nil {
				rows.Close()
				return nil, err
			}
			out[root][k] = ev
		}
		if err := errors.Join(rows.Err(), rows.Close()); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func removeZero(nids []int64) []int64 {
	var out []int64
	for _, n := range nids {
		if n != 0 {
			out = append(out, n)
		}
	}
	return out
}

// MemberCounts are a room's joined and invited users.
type MemberCounts struct{ Joined, Invited int }

// RoomsMemberCounts is RoomMemberCounts for several rooms in one query
// (per 100), by room NID.
func (t *Queries) RoomsMemberCounts(ctx context.Context, roomNIDs []int64) (map[int64]MemberCounts, error) {
	out := make(map[int64]MemberCounts, len(roomNIDs))
	for len(roomNIDs) > 0 {
		batch := roomNIDs[:min(len(roomNIDs), syncBatchRooms)]
		roomNIDs = roomNIDs[len(batch):]
		args := make([]any, len(batch))
		for i, nid := range batch {
			args[i] = nid
		}
		rows, err := t.q.QueryContext(ctx, `SELECT room_nid,
				COALESCE(SUM(CASE WHEN membership = 'join' THEN 1 ELSE 0 END), 0),
				COALESCE(SUM(CASE WHEN membership = 'invite' THEN 1 ELSE 0 END), 0)
			FROM room_members WHERE room_nid IN (`+placeholders(1, len(batch))+`) GROUP BY room_nid`, args...)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var nid int64
			var c MemberCounts
			if err := rows.Scan(&nid, &c.Joined, &c.Invited); err != nil {
				rows.Close()
				return nil, err
			}
			out[nid] = c
		}
		if err := errors.Join(rows.Err(), rows.Close()); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// RoomsCurrentState returns the events of the given types with an empty
// state key in the current state of several rooms, in one query (per 100
// rooms).
func (t *Queries) RoomsCurrentState(ctx context.Context, roomNIDs []int64, types []string) ([]Event, error) {
	var out []Event
	for len(roomNIDs) > 0 {
		batch := roomNIDs[:min(len(roomNIDs), syncBatchRooms)]
		roomNIDs = roomNIDs[len(batch):]
		args := make([]any, 0, len(batch)+len(types))
		for _, nid := range batch {
			args = append(args, nid)
		}
		for _, typ := range types {
			args = append(args, typ)
		}
		evs, err := t.queryEvents(ctx, `SELECT `+eventColumns+eventFrom+`
			JOIN current_state c ON c.event_nid = e.event_nid
			WHERE c.room_nid IN (`+placeholders(1, len(batch))+`) AND c.type IN (`+placeholders(1+len(batch), len(types))+`)
			AND c.state_key = ''`, args...)
		if err != nil {
			return nil, err
		}
		out = append(out, evs...)
	}
	return out, nil
}

// RoomsHeroes returns the heroes of several rooms (spec: room summary
// m.heroes), by room NID, in one query (per 100 rooms): up to limit joined
// or invited members other than exclude, in the order they came; for a
// room with none of those, up to limit who left or were banned.
func (t *Queries) RoomsHeroes(ctx context.Context, roomNIDs []int64, exclude string, limit int) (map[int64][]string, error) {
	out := make(map[int64][]string, len(roomNIDs))
	for len(roomNIDs) > 0 {
		batch := roomNIDs[:min(len(roomNIDs), syncBatchRooms)]
		roomNIDs = roomNIDs[len(batch):]
		args := []any{exclude, limit}
		for _, nid := range batch {
			args = append(args, nid)
		}
		// present is 1 for the members, 0 for those gone; each group is
		// numbered on its own, in the order of the membership events.
		rows, err := t.q.QueryContext(ctx, `SELECT room_nid, user_id, present FROM (
				SELECT room_nid, user_id, present, ROW_NUMBER() OVER (PARTITION BY room_nid, present ORDER BY stream_pos) AS n
				FROM (SELECT room_nid, user_id, stream_pos,
						CASE WHEN membership IN ('join', 'invite') THEN 1 ELSE 0 END AS present
					FROM room_members WHERE room_nid IN (`+placeholders(3, len(batch))+`) AND user_id <> $1
					AND membership IN ('join', 'invite', 'leave', 'ban')) m
			) x WHERE n <= $2 ORDER BY room_nid, present DESC, n`, args...)
		if err != nil {
			return nil, err
		}
		gone := make(map[int64]bool) // rooms whose heroes are who left
		for rows.Next() {
			var nid int64
			var user string
			var present int
			if err := rows.Scan(&nid, &user, &present); err != nil {
				rows.Close()
				return nil, err
			}
			if present == 0 && len(out[nid]) > 0 && !gone[nid] {
				continue // the room has members: they are its heroes
			}
			gone[nid] = present == 0
			out[nid] = append(out[nid], user)
		}
		if err := errors.Join(rows.Err(), rows.Close()); err != nil {
			return nil, err
		}
	}
	return out, nil
}
