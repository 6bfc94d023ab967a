package sql

import (
	"context"
	"strings"
)

// StateKey names a piece of room state.
type StateKey struct {
	Type     string
	StateKey string
}

// StateMap maps each piece of state to the NID of the event that set it.
type StateMap map[StateKey]int64

// AddSnapshot stores a snapshot made of base plus entries and returns its
// NID; base 0 with all entries makes a full snapshot.
func (t *Queries) AddSnapshot(ctx context.Context, roomNID, base int64, chainLength int, entries StateMap) (int64, error) {
	var nid int64
	if err := t.q.QueryRowContext(ctx, `INSERT INTO state_snapshots (room_nid, base_nid, chain_length) VALUES ($1, $2, $3) RETURNING snapshot_nid`,
		roomNID, base, chainLength).Scan(&nid); err != nil {
		return 0, err
	}
	// Full snapshots of big rooms have thousands of entries: insert them
	// in chunks of many rows per statement.
	const chunk = 500
	rows := make([]string, 0, min(len(entries), chunk))
	args := make([]any, 0, 4*cap(rows))
	flush := func() error {
		if len(rows) == 0 {
			return nil
		}
		_, err := t.q.ExecContext(ctx, `INSERT INTO state_snapshot_entries (snapshot_nid, type, state_key, event_nid) VALUES `+strings.Join(rows, ", "), args...)
		rows, args = rows[:0], args[:0]
		return err
	}
	for k, ev := range entries {
		rows = append(rows, "("+placeholders(len(args)+1, 4)+")")
		args = append(args, nid, k.Type, k.StateKey, ev)
		if len(rows) == chunk {
			if err := flush(); err != nil {
				return 0, err
			}
		}
	}
	if err := flush(); err != nil {
		return 0, err
	}
	return nid, nil
}

// SnapshotChainLength returns how many snapshots a snapshot stands on.
func (t *Queries) SnapshotChainLength(ctx context.Context, nid int64) (int, error) {
	if nid == 0 {
		return 0, nil
	}
	var n int
	err := t.q.QueryRowContext(ctx, `SELECT chain_length FROM state_snapshots WHERE snapshot_nid = $1`, nid).Scan(&n)
	return n, noRows(err)
}

// chainOf is the recursive part of the queries over a snapshot's chain,
// newest snapshot at n = 0; $1 is the snapshot.
const chainOf = `WITH RECURSIVE chain (nid, n) AS (
		SELECT snapshot_nid, 0 FROM state_snapshots WHERE snapshot_nid = $1
		UNION ALL
		SELECT s.base_nid, c.n + 1 FROM state_snapshots s JOIN chain c ON s.snapshot_nid = c.nid WHERE s.base_nid <> 0
	) `

// snapshotChain is the query over a snapshot's entries, through its
// chain. The IN repeats the join's condition for SQLite: without it, not
// knowing how short the chain is, it scans the entries of every snapshot
// of every room (millions in a big room, which has a full snapshot every
// few state changes) rather than look up the chain's own.
const snapshotChain = chainOf + `SELECT e.type, e.state_key, e.event_nid
	FROM chain c JOIN state_snapshot_entries e ON e.snapshot_nid = c.nid AND e.snapshot_nid IN (SELECT nid FROM chain) `

// Snapshot returns the full state of a snapshot: its chain applied from
// the oldest base up, in one query.
func (t *Queries) Snapshot(ctx context.Context, nid int64) (StateMap, error) {
	return t.snapshot(ctx, nid, snapshotChain+`ORDER BY c.n DESC`, nid)
}

// SnapshotKey returns the NID of the event holding one piece of state in a
// snapshot, or 0 when the snapshot does not have it.
func (t *Queries) SnapshotKey(ctx context.Context, nid int64, k StateKey) (int64, error) {
	state, err := t.snapshot(ctx, nid, snapshotChain+`WHERE e.type = $2 AND e.state_key = $3 ORDER BY c.n DESC`, nid, k.Type, k.StateKey)
	return state[k], err
}

func (t *Queries) snapshot(ctx context.Context, nid int64, query string, args ...any) (StateMap, error) {
	state := make(StateMap)
	if nid == 0 {
		return state, nil
	}
	rows, err := t.q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var k StateKey
		var ev int64
		if err := rows.Scan(&k.Type, &k.StateKey, &ev); err != nil {
			return nil, err
		}
		state[k] = ev
	}
	return state, rows.Err()
}

// SnapshotEvents returns the events of a snapshot's state, in no set
// order, in one query: the entries of its whole chain with their events,
// of which the newest entry of each piece of state is kept.
func (t *Queries) SnapshotEvents(ctx context.Context, nid int64) ([]Event, error) {
	if nid == 0 {
		return nil, nil
	}
	// The IN as in snapshotChain.
	rows, err := t.q.QueryContext(ctx, chainOf+`SELECT c.n, s.type, s.state_key, `+eventColumns+`
		FROM chain c JOIN state_snapshot_entries s ON s.snapshot_nid = c.nid AND s.snapshot_nid IN (SELECT nid FROM chain)
		JOIN events e ON e.event_nid = s.event_nid JOIN rooms r ON r.room_nid = e.room_nid`, nid)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	type entry struct {
		n  int
		ev Event
	}
	newest := make(map[StateKey]entry)
	for rows.Next() {
		var n int
		var k StateKey
		ev, err := scanEvent(prefixScanner{rows, []any{&n, &k.Type, &k.StateKey}})
		if err != nil {
			return nil, err
		}
		if e, ok := newest[k]; !ok || n < e.n {
			newest[k] = entry{n, ev}
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	out := make([]Event, 0, len(newest))
	for _, e := range newest {
		out = append(out, e.ev)
	}
	return out, nil
}

// CurrentState returns a room's current state.
func (t *Queries) CurrentState(ctx context.Context, roomNID int64) (StateMap, error) {
	rows, err := t.q.QueryContext(ctx, `SELECT type, state_key, event_nid FROM current_state WHERE room_nid = $1`, roomNID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	state := make(StateMap)
	for rows.Next() {
		var k StateKey
		var ev int64
		if err := rows.Scan(&k.Type, &k.StateKey, &ev); err != nil {
			return nil, err
		}
		state[k] = ev
	}
	return state, rows.Err()
}

// CurrentStateEvent returns the event holding one piece of a room's
// current state, or ErrNotFound.
func (t *Queries) CurrentStateEvent(ctx context.Context, roomID string, k StateKey) (Event, error) {
	e, err := scanEvent(t.q.QueryRowContext(ctx, `SELECT `+eventColumns+eventFrom+`
		JOIN current_state c ON c.event_nid = e.event_nid
		WHERE r.room_id = $1 AND c.type = $2 AND c.state_key = $3`, roomID, k.Type, k.StateKey))
	return e, noRows(err)
}

// CurrentStateEvents returns every event of a room's current state.
func (t *Queries) CurrentStateEvents(ctx context.Context, roomID string) ([]Event, error) {
	return t.queryEvents(ctx, `SELECT `+eventColumns+eventFrom+`
		JOIN current_state c ON c.event_nid = e.event_nid WHERE r.room_id = $1`, roomID)
}

// Snapshot is a state snapshot a pipeline adds: NID from SnapshotNIDs,
// made of Base plus Entries (Base 0 with all entries makes a full one).
type Snapshot struct {
	NID, RoomNID, Base int64
	ChainLength        int
	Entries            StateMap
}

// AddSnapshots is Queries.AddSnapshot for several snapshots.
func (p *Pipeline) AddSnapshots(snaps []Snapshot) {
	rest := snaps
	for _, n := range chunkSizes(len(rest), 64) {
		part := rest[:n]
		rest = rest[n:]
		args := make([]any, 0, 4*n)
		for _, s := range part {
			args = append(args, s.NID, s.RoomNID, s.Base, s.ChainLength)
		}
		p.exec(errPipelineStmt("state snapshots"),
			`INSERT INTO state_snapshots (snapshot_nid, room_nid, base_nid, chain_length) VALUES `+valuesRows("?, ?, ?, ?", 1, n), args...)
	}
	type entry struct {
		snap int64
		k    StateKey
		ev   int64
	}
	var entries []entry
	for _, s := range snaps {
		for k, ev := range s.Entries {
			entries = append(entries, entry{s.NID, k, ev})
		}
	}
	// Full snapshots of big rooms have thousands of entries.
	if p.copyRows(errPipelineStmt("state snapshot entries"), "state_snapshot_entries", []string{"snapshot_nid", "type", "state_key", "event_nid"},
		len(entries), func(i int) []any {
			return []any{entries[i].snap, entries[i].k.Type, entries[i].k.StateKey, entries[i].ev}
		}) {
		return
	}
	for _, n := range chunkSizes(len(entries), 256) {
		part := entries[:n]
		entries = entries[n:]
		args := make([]any, 0, 4*n)
		for _, e := range part {
			args = append(args, e.snap, e.k.Type, e.k.StateKey, e.ev)
		}
		p.exec(errPipelineStmt("state snapshot entries"),
			`INSERT INTO state_snapshot_entries (snapshot_nid, type, state_key, event_nid) VALUES `+valuesRows("?, ?, ?, ?", 1, n), args...)
	}
}

// StateChange is an event that now holds a piece of a room's current
// state.
type StateChange struct {
	RoomNID  int64
	Key      StateKey
	EventNID int64
}

// DeleteCurrentState removes pieces of rooms' current state (state
// resolution may leave a piece unset); EventNID is not used.
func (p *Pipeline) DeleteCurrentState(gone []StateChange) {
	for _, c := range gone {
		p.exec(errPipelineStmt("delete current state"), `DELETE FROM current_state WHERE room_nid = $1 AND type = $2 AND state_key = $3`,
			c.RoomNID, c.Key.Type, c.Key.StateKey)
	}
}

// SetCurrentState records the events that now hold pieces of rooms'
// current state; of several changes of one piece, the last wins.
func (p *Pipeline) SetCurrentState(changes []StateChange) {
	type key struct {
		room int64
		k    StateKey
	}
	rows := lastOfEach(changes, func(c StateChange) key { return key{c.RoomNID, c.Key} })
	for _, n := range chunkSizes(len(rows), 64) {
		part := rows[:n]
		rows = rows[n:]
		args := make([]any, 0, 4*n)
		for _, c := range part {
			args = append(args, c.RoomNID, c.Key.Type, c.Key.StateKey, c.EventNID)
		}
		p.exec(errPipelineStmt("current state"), `INSERT INTO current_state (room_nid, type, state_key, event_nid) VALUES `+valuesRows("?, ?, ?, ?", 1, n)+`
			ON CONFLICT (room_nid, type, state_key) DO UPDATE SET event_nid = excluded.event_nid`, args...)
	}
}
