package sql

import (
	"context"
	"slices"
)

// The reads behind /sync: a user's memberships with what each room's row
// says about its latest change, room events by stream position (the order
// /sync serves them in), the state a window of the stream changed, and the
// room summary. None of them needs an index beyond those of the room
// tables: every scan is bounded by a room and a stream range.

// SyncMembership is one of a user's memberships, as /sync and its notifier
// read them.
type SyncMembership struct {
	RoomNID     int64
	RoomID      string
	RoomVersion string
	Membership  string
	// EventNID and StreamPos are those of the membership event.
	EventNID  int64
	StreamPos int64
	Forgotten bool
	// RoomLastStreamPos is the position of the room's latest event: a room
	// whose latest event is at or before a sync's since has nothing new.
	RoomLastStreamPos int64
}

// SyncMemberships lists every membership the user has, forgotten rooms
// included (the caller decides what they hide), ordered by room id.
func (t *Queries) SyncMemberships(ctx context.Context, userID string) ([]SyncMembership, error) {
	rows, err := t.q.QueryContext(ctx, `SELECT r.room_nid, r.room_id, r.room_version, m.membership, m.event_nid, m.stream_pos,
			m.forgotten, r.last_stream_pos
		FROM room_members m JOIN rooms r ON r.room_nid = m.room_nid
		WHERE m.user_id = $1 ORDER BY r.room_id`, userID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []SyncMembership
	for rows.Next() {
		var m SyncMembership
		if err := rows.Scan(&m.RoomNID, &m.RoomID, &m.RoomVersion, &m.Membership, &m.EventNID, &m.StreamPos,
			&m.Forgotten, &m.RoomLastStreamPos); err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, rows.Err()
}

// RoomEventsByStream returns up to limit timeline events of a room whose
// stream position lies in (lo, hi], newest first, with
// Event.NoBundledChildren.
func (t *Queries) RoomEventsByStream(ctx context.Context, roomNID, lo, hi int64, limit int) ([]Event, error) {
	return t.queryEventsWith(ctx, scanSyncEvent, roomEventsByStream, roomNID, lo, hi, limit)
}

const roomEventsByStream = `SELECT ` + eventColumns + `, ` + noBundledChildren + eventFrom + `WHERE e.room_nid = $1 AND` +
	timelineWhere + `AND e.stream_pos > $2 AND e.stream_pos <= $3 ORDER BY e.stream_pos DESC LIMIT $4`

// noBundledChildren computes Event.NoBundledChildren, in one probe of the
// index event_relations_parent. Most events have no children, and the
// flag spares sync a query for their bundled aggregations. It is a scalar
// subquery, not NOT EXISTS: PostgreSQL costs an EXISTS for every row of
// the room rather than the LIMIT's few, and for a large room hashes the
// whole of event_relations instead of probing it.
//
// It agrees with the sync's stream position: a child at or below the
// upper bound the sync read first committed before it (positions commit
// in order), so before this column was computed; a child above it is the
// next sync's. (A backfilled child takes a position below every bound
// whenever it commits: it races with the sync as it did with the
// aggregation query.) Redacted children and those of another room that
// name the event count too: the flag need only be false whenever there
// may be a bundle.
const noBundledChildren = `(SELECT 1 FROM event_relations rel WHERE rel.relates_to_id = e.event_id
	AND rel.rel_type IN ('` + RelThread + `', '` + RelReference + `', '` + RelReplace + `') LIMIT 1) IS NULL`

// Relation types whose children are bundled with their parent (spec:
// "Aggregations of child events"); m.annotation is deliberately not
// aggregated (spec: "Event annotations and reactions").
const (
	RelThread    = "m.thread"
	RelReplace   = "m.replace"
	RelReference = "m.reference"
)

// Bundled reports whether children of the relation type relType are
// bundled with their parent.
func Bundled(relType string) bool {
	return relType == RelThread || relType == RelReplace || relType == RelReference
}

// scanSyncEvent scans a row of roomEventsByStream.
func scanSyncEvent(s interface{ Scan(...any) error }) (Event, error) {
	var none bool
	e, err := scanEvent(withColumns{s: s, after: []any{&none}})
	e.NoBundledChildren = none
	return e, err
}

// StateKeysChanged returns the pieces of state that the room's timeline
// events in (lo, hi] of the stream set, each once.
func (t *Queries) StateKeysChanged(ctx context.Context, roomNID, lo, hi int64) ([]StateKey, error) {
	rows, err := t.q.QueryContext(ctx, `SELECT DISTINCT e.type, e.state_key FROM events e
		WHERE e.room_nid = $1 AND`+timelineWhere+`AND e.state_key IS NOT NULL AND e.stream_pos > $2 AND e.stream_pos <= $3`,
		roomNID, lo, hi)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []StateKey
	for rows.Next() {
		var k StateKey
		if err := rows.Scan(&k.Type, &k.StateKey); err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	return out, rows.Err()
}

// MemberEventsBetween returns a user's m.room.member events in a room
// whose stream position lies in (lo, hi], oldest first.
func (t *Queries) MemberEventsBetween(ctx context.Context, roomNID int64, userID string, lo, hi int64) ([]Event, error) {
	return t.queryEvents(ctx, `SELECT `+eventColumns+eventFrom+`WHERE e.room_nid = $1 AND`+timelineWhere+`
		AND e.type = 'm.room.member' AND e.state_key = $2 AND e.stream_pos > $3 AND e.stream_pos <= $4
		ORDER BY e.stream_pos`, roomNID, userID, lo, hi)
}

// SnapshotKeys returns the pieces of state among keys that a snapshot
// holds (absent keys are absent from the map), in one query.
func (t *Queries) SnapshotKeys(ctx context.Context, nid int64, keys []StateKey) (StateMap, error) {
	if nid == 0 || len(keys) == 0 {
		return make(StateMap), nil
	}
	// Filter on the types and state keys separately (one list each, so the
	// query stays one text on both engines), then keep the exact pairs.
	var types, stateKeys []string
	for _, k := range keys {
		if !slices.Contains(types, k.Type) {
			types = append(types, k.Type)
		}
		if !slices.Contains(stateKeys, k.StateKey) {
			stateKeys = append(stateKeys, k.StateKey)
		}
	}
	args := []any{nid}
	for _, s := range types {
		args = append(args, s)
	}
	for _, s := range stateKeys {
		args = append(args, s)
	}
	state, err := t.snapshot(ctx, nid, snapshotChain+`WHERE e.type IN (`+placeholders(2, len(types))+`)
		AND e.state_key IN (`+placeholders(2+len(types), len(stateKeys))+`) ORDER BY c.n DESC`, args...)
	if err != nil {
		return nil, err
	}
	want := make(map[StateKey]bool, len(keys))
	for _, k := range keys {
		want[k] = true
	}
	for k := range state {
		if !want[k] {
			delete(state, k)
		}
	}
	return state, nil
}

// SnapshotWithoutMembers returns a snapshot's state except the
// m.room.member events, which lazy-loading clients get one by one.
func (t *Queries) SnapshotWithoutMembers(ctx context.Context, nid int64) (StateMap, error) {
	return t.snapshot(ctx, nid, snapshotChain+`WHERE e.type <> 'm.room.member' ORDER BY c.n DESC`, nid)
}

// RoomMemberCounts counts a room's joined and invited users now.
func (t *Queries) RoomMemberCounts(ctx context.Context, roomNID int64) (joined, invited int, err error) {
	err = t.q.QueryRowContext(ctx, `SELECT
			COALESCE(SUM(CASE WHEN membership = 'join' THEN 1 ELSE 0 END), 0),
			COALESCE(SUM(CASE WHEN membership = 'invite' THEN 1 ELSE 0 END), 0)
		FROM room_members WHERE room_nid = $1`, roomNID).Scan(&joined, &invited)
	return joined, invited, err
}

// Streams /sync reads, as named in stream_positions. Writers take their
// positions with AllocStreamPos in the transaction that writes the data.
const (
	EventsStream        = "events"
	ReceiptsStream      = "receipts"
	TypingStream        = "typing"
	PresenceStream      = "presence"
	ToDeviceStream      = "to_device"
	DeviceListsStream   = "device_lists"
	NotificationsStream = "notifications"
)

// StreamPositions is one position in each stream a sync reads.
type StreamPositions struct {
	Events        int64
	AccountData   int64
	Receipts      int64
	Typing        int64
	Presence      int64
	ToDevice      int64
	DeviceLists   int64
	Notifications int64
}

// fields maps the stream names to p's fields.
func (p *StreamPositions) fields() map[string]*int64 {
	return map[string]*int64{
		EventsStream: &p.Events, AccountDataStream: &p.AccountData, ReceiptsStream: &p.Receipts,
		TypingStream: &p.Typing, PresenceStream: &p.Presence, ToDeviceStream: &p.ToDevice,
		DeviceListsStream: &p.DeviceLists, NotificationsStream: &p.Notifications,
	}
}

// SyncPositions reads the latest committed position of every stream a
// sync reads, in one query.
func (t *Queries) SyncPositions(ctx context.Context) (StreamPositions, error) {
	var p StreamPositions
	fields := p.fields()
	rows, err := t.q.QueryContext(ctx, `SELECT stream, pos FROM stream_positions`)
	if err != nil {
		return p, err
	}
	defer rows.Close()
	for rows.Next() {
		var stream string
		var pos int64
		if err := rows.Scan(&stream, &pos); err != nil {
			return p, err
		}
		if f := fields[stream]; f != nil {
			*f = pos
		}
	}
	return p, rows.Err()
}
