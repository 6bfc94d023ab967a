package syncapi

import (
	"context"
	"fmt"
	"slices"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/sql"
)

// stateRef is a room's state at a point of its stream: a snapshot, plus
// the event after it when that event is state (the state after an event
// is the state before it with the event applied). The zero value is the
// empty state of a room before its first event.
type stateRef struct {
	snapshot int64
	event    *sql.Event
}

func stateBefore(ev sql.Event) stateRef { return stateRef{snapshot: ev.StateBeforeNID} }

func stateAfter(ev sql.Event) stateRef {
	if ev.StateKey == nil {
		return stateRef{snapshot: ev.StateBeforeNID}
	}
	return stateRef{snapshot: ev.StateBeforeNID, event: &ev}
}

// stateAfterPos is a room's state after its last event at or before a
// stream position.
func (a *API) stateAfterPos(ctx context.Context, roomNID, pos int64) (stateRef, error) {
	evs, err := a.db.RoomEventsByStream(ctx, roomNID, 0, pos, 1)
	if err != nil {
		return stateRef{}, fmt.Errorf("last event at %d: %w", pos, err)
	}
	if len(evs) == 0 {
		return stateRef{}, nil
	}
	return stateAfter(evs[0]), nil
}

func (r stateRef) key() sql.StateKey {
	return sql.StateKey{Type: r.event.Type, StateKey: *r.event.StateKey}
}

// lookup returns the pieces of state among keys that the state holds.
func (r stateRef) lookup(ctx context.Context, db *sql.DB, keys []sql.StateKey) (sql.StateMap, error) {
	if len(keys) == 0 {
		return make(sql.StateMap), nil
	}
	m, err := db.SnapshotKeys(ctx, r.snapshot, keys)
	if err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	if r.event != nil && slices.Contains(keys, r.key()) {
		m[r.key()] = r.event.NID
	}
	return m, nil
}

// all returns the whole state.
func (r stateRef) all(ctx context.Context, db *sql.DB) (sql.StateMap, error) {
	m, err := db.Snapshot(ctx, r.snapshot)
	if err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	if r.event != nil {
		m[r.key()] = r.event.NID
	}
	return m, nil
}

// withoutMembers returns the state except its member events.
func (r stateRef) withoutMembers(ctx context.Context, db *sql.DB) (sql.StateMap, error) {
	m, err := db.SnapshotWithoutMembers(ctx, r.snapshot)
	if err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	if r.event != nil && r.event.Type != spec.MRoomMember {
		m[r.key()] = r.event.NID
	}
	return m, nil
}

func mergeState(into, from sql.StateMap) {
	for k, v := range from {
		into[k] = v
	}
}

func stateKeysOf(set map[sql.StateKey]bool) []sql.StateKey {
	out := make([]sql.StateKey, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	return out
}

func nidsOf(m sql.StateMap) []int64 {
	out := make([]int64, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

// union joins NID lists without repeats.
func unionNIDs(lists ...[]int64) []int64 {
	seen := make(map[int64]bool)
	var out []int64
	for _, l := range lists {
		for _, n := range l {
			if !seen[n] {
				seen[n] = true
				out = append(out, n)
			}
		}
	}
	return out
}

func withoutNIDs(nids []int64, drop map[int64]bool) []int64 {
	return slices.DeleteFunc(nids, func(n int64) bool { return drop[n] })
}
