package sql

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"strings"
)

// TopoPos is a place in a room's topological order: events are ordered by
// depth, and events of equal depth by stream position. As a pagination
// boundary it stands just after the event with that (depth, stream_pos):
// the events "before" it are those whose key is <= it.
type TopoPos struct {
	Depth  int64
	Stream int64
}

// TopoStart is before every event; TopoEnd is after every event.
var (
	TopoStart = TopoPos{}
	TopoEnd   = TopoPos{Depth: math.MaxInt64, Stream: math.MaxInt64}
)

// Key is an event's own position: the boundary just after it.
func (e Event) Key() TopoPos { return TopoPos{Depth: e.Depth, Stream: e.StreamPos} }

// Less orders positions topologically.
func (p TopoPos) Less(o TopoPos) bool {
	return p.Depth < o.Depth || (p.Depth == o.Depth && p.Stream < o.Stream)
}

// timelineWhere keeps the events that are part of a room's timeline:
// outliers have no place in it and rejected events were never accepted.
const timelineWhere = ` e.stream_pos IS NOT NULL AND e.outlier = FALSE AND e.rejected = FALSE `

// TimelineEvents returns up to limit timeline events of a room whose
// position lies in (lo, hi], newest first when backward, oldest first
// otherwise. Row-value comparison keeps the (depth, stream_pos) order in
// one index range on both engines.
func (t *Queries) TimelineEvents(ctx context.Context, roomNID int64, lo, hi TopoPos, backward bool, limit int) ([]Event, error) {
	order := `ASC`
	if backward {
		order = `DESC`
	}
	return t.queryEvents(ctx, `SELECT `+eventColumns+eventFrom+`WHERE e.room_nid = $1 AND`+timelineWhere+`
		AND (e.depth, e.stream_pos) > ($2, $3) AND (e.depth, e.stream_pos) <= ($4, $5)
		ORDER BY e.depth `+order+`, e.stream_pos `+order+` LIMIT $6`,
		roomNID, lo.Depth, lo.Stream, hi.Depth, hi.Stream, limit)
}

// TimelineLast returns the position of a room's newest timeline event
// (TopoStart when it has none): the boundary after everything so far.
func (t *Queries) TimelineLast(ctx context.Context, roomNID int64) (TopoPos, error) {
	return t.topoPos(ctx, `SELECT e.depth, e.stream_pos FROM events e WHERE e.room_nid = $1 AND`+timelineWhere+`
		ORDER BY e.depth DESC, e.stream_pos DESC LIMIT 1`, roomNID)
}

// TopoPosAtStream maps a stream position to the topological position of
// the room's newest timeline event at or below it (TopoStart when none),
// so that a stream token (a /sync next_batch) can bound a /messages page.
func (t *Queries) TopoPosAtStream(ctx context.Context, roomNID, stream int64) (TopoPos, error) {
	return t.topoPos(ctx, `SELECT e.depth, e.stream_pos FROM events e WHERE e.room_nid = $1 AND`+timelineWhere+`
		AND e.stream_pos <= $2 ORDER BY e.stream_pos DESC LIMIT 1`, roomNID, stream)
}

func (t *Queries) topoPos(ctx context.Context, query string, args ...any) (TopoPos, error) {
	var p TopoPos
	err := t.q.QueryRowContext(ctx, query, args...).Scan(&p.Depth, &p.Stream)
	if err := noRows(err); err == ErrNotFound {
		return TopoStart, nil
	} else if err != nil {
		return TopoPos{}, err
	}
	return p, nil
}

// TimelineByTimestamp returns up to limit timeline events of a room in
// (origin_server_ts, stream_pos) order strictly after (ts, stream) when
// forward, strictly before it (newest first) otherwise. Scanning callers
// continue from the last event they got.
func (t *Queries) TimelineByTimestamp(ctx context.Context, roomNID, ts, stream int64, forward bool, limit int) ([]Event, error) {
	cmp, order := `>`, `ASC`
	if !forward {
		cmp, order = `<`, `DESC`
	}
	return t.queryEvents(ctx, `SELECT `+eventColumns+eventFrom+`WHERE e.room_nid = $1 AND`+timelineWhere+`
		AND (e.origin_server_ts, e.stream_pos) `+cmp+` ($2, $3)
		ORDER BY e.origin_server_ts `+order+`, e.stream_pos `+order+` LIMIT $4`, roomNID, ts, stream, limit)
}

// IndexRelation records the relation an event's content declares in
// m.relates_to (see RelationOf). The roomserver calls it in the
// transaction that stores the event.
func (t *Queries) IndexRelation(ctx context.Context, eventNID, roomNID int64, content []byte) error {
	rel, ok := RelationOf(content)
	if !ok {
		return nil
	}
	_, err := t.q.ExecContext(ctx, `INSERT INTO event_relations (event_nid, room_nid, relates_to_id, rel_type, aggregation_key)
		VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_nid) DO NOTHING`, eventNID, roomNID, rel.RelatesTo, rel.RelType, rel.Key)
	return err
}

// DeclaredRelation is a relation an event declares: its parent, the
// relation type and, for annotations, the key.
type DeclaredRelation struct {
	RelatesTo string
	RelType   string
	Key       *string
}

// RelationOf returns the relation content declares in m.relates_to, if it
// has both a rel_type and an event_id. Content that is not an object, or
// a malformed m.relates_to, declares no relation: the spec says to ignore
// relations that break the schema.
func RelationOf(content []byte) (DeclaredRelation, bool) {
	// Most events relate to nothing: skip parsing those. A key can only
	// hide from this test behind a \u escape.
	if !bytes.Contains(content, []byte(`"m.relates_to"`)) && !bytes.Contains(content, []byte(`\u`)) {
		return DeclaredRelation{}, false
	}
	var c struct {
		RelatesTo json.RawMessage `json:"m.relates_to"`
	}
	if json.Unmarshal(content, &c) != nil || len(c.RelatesTo) == 0 {
		return DeclaredRelation{}, false
	}
	var rel struct {
		RelType any `json:"rel_type"`
		EventID any `json:"event_id"`
		Key     any `json:"key"`
	}
	if json.Unmarshal(c.RelatesTo, &rel) != nil {
		return DeclaredRelation{}, false
	}
	relType, _ := rel.RelType.(string)
	parent, _ := rel.EventID.(string)
	if relType == "" || parent == "" {
		return DeclaredRelation{}, false
	}
	var key *string
	if k, ok := rel.Key.(string); ok && relType == "m.annotation" {
		key = &k
	}
	return DeclaredRelation{RelatesTo: parent, RelType: relType, Key: key}, true
}

// RelationQuery selects the children of one parent event for the
// relations API.
type RelationQuery struct {
	RoomNID  int64
	ParentID string
	// RelType and EventType keep only children of that relation type and
	// event type ("" for any). With MaxDepth > 1 they apply at every level:
	// a child reached only through a non-matching event is left out.
	RelType, EventType string
	// MaxDepth is how many relation hops to follow: 1 for direct children.
	MaxDepth int
	// The children returned lie in (Lo, Hi], newest first when Backward.
	Lo, Hi   TopoPos
	Backward bool
	Limit    int
}

// Relations returns the children of a parent in a room, directly or
// through up to MaxDepth hops. Redacted children have lost their
// relation and are left out, as are outliers and rejected events. The
// hop count bounds the recursion even if (in old room versions with
// server-chosen event ids) relations formed a cycle.
func (t *Queries) Relations(ctx context.Context, q RelationQuery) ([]Event, error) {
	order := `ASC`
	if q.Backward {
		order = `DESC`
	}
	const match = ` rel.room_nid = $2 AND ($3 = '' OR rel.rel_type = $3) AND ($4 = '' OR e.type = $4)
		AND e.redacted_by IS NULL AND` + timelineWhere
	return t.queryEvents(ctx, `WITH RECURSIVE tree (event_nid, event_id, hops) AS (
			SELECT e.event_nid, e.event_id, 1 FROM event_relations rel JOIN events e ON e.event_nid = rel.event_nid
			WHERE rel.relates_to_id = $1 AND`+match+`
			UNION
			SELECT e.event_nid, e.event_id, tree.hops + 1 FROM tree
			JOIN event_relations rel ON rel.relates_to_id = tree.event_id
			JOIN events e ON e.event_nid = rel.event_nid
			WHERE tree.hops < $5 AND`+match+`
		)
		SELECT DISTINCT `+eventColumns+` FROM tree JOIN events e ON e.event_nid = tree.event_nid JOIN rooms r ON r.room_nid = e.room_nid
		WHERE (e.depth, e.stream_pos) > ($6, $7) AND (e.depth, e.stream_pos) <= ($8, $9)
		ORDER BY e.depth `+order+`, e.stream_pos `+order+` LIMIT $10`,
		q.ParentID, q.RoomNID, q.RelType, q.EventType, max(q.MaxDepth, 1), q.Lo.Depth, q.Lo.Stream, q.Hi.Depth, q.Hi.Stream, q.Limit)
}

// Relation is a child event and the parent it relates to.
type Relation struct {
	ParentID string
	RelType  string
	Event    Event
}

// ChildrenOf returns the live (unredacted, accepted, in the timeline)
// children with one of relTypes of the given parents, which lie in the
// given rooms, oldest first: one query for the parents of many rooms. Only
// the children whose rel type is in bodies carry their JSON: aggregations
// that only count and order children need not load every body. The
// relations index pairs a child with a parent id in the child's room; with
// several rooms, a caller checks that the child's room is its parent's
// (event ids do not say which room they belong to).
func (t *Queries) ChildrenOf(ctx context.Context, roomNIDs []int64, parentIDs, relTypes, bodies []string) ([]Relation, error) {
	if len(roomNIDs) == 0 || len(parentIDs) == 0 || len(relTypes) == 0 {
		return nil, nil
	}
	var args []any
	list := func(n int) string {
		return placeholders(len(args)+1-n, n)
	}
	for _, b := range bodies {
		args = append(args, b)
	}
	json := `''`
	if len(bodies) > 0 {
		json = `CASE WHEN rel.rel_type IN (` + list(len(bodies)) + `) THEN e.json ELSE '' END`
	}
	for _, nid := range roomNIDs {
		args = append(args, nid)
	}
	rooms := list(len(roomNIDs))
	for _, id := range parentIDs {
		args = append(args, id)
	}
	parents := list(len(parentIDs))
	for _, rt := range relTypes {
		args = append(args, rt)
	}
	types := list(len(relTypes))
	rows, err := t.q.QueryContext(ctx, `SELECT rel.relates_to_id, rel.rel_type, `+strings.Replace(eventColumns, "e.json", json, 1)+eventFrom+`
		JOIN event_relations rel ON rel.event_nid = e.event_nid
		WHERE rel.room_nid IN (`+rooms+`) AND rel.relates_to_id IN (`+parents+`) AND rel.rel_type IN (`+types+`)
		AND e.redacted_by IS NULL AND`+timelineWhere+`ORDER BY e.depth, e.stream_pos`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Relation
	for rows.Next() {
		var r Relation
		var parent, relType string
		ev, err := scanEvent(withColumns{s: rows, before: []any{&parent, &relType}})
		if err != nil {
			return nil, err
		}
		r.ParentID, r.RelType, r.Event = parent, relType, ev
		out = append(out, r)
	}
	return out, rows.Err()
}

// ThreadRoot is a room's thread: its root event and its latest activity.
type ThreadRoot struct {
	RootNID int64
	// Latest is the stream position of the newest live event in the thread.
	Latest int64
}

// ThreadRoots lists a room's threads whose latest activity is at or below
// stream position upTo, most recently active first. A thread is an event
// of the room, not itself a relation (threads cannot nest), with live
// m.thread children. With participant set, only the threads that user
// started or replied in are listed.
func (t *Queries) ThreadRoots(ctx context.Context, roomNID, upTo int64, participant string, limit int) ([]ThreadRoot, error) {
	rows, err := t.q.QueryContext(ctx, `SELECT root.event_nid, MAX(e.stream_pos) AS latest
		FROM event_relations rel
		JOIN events e ON e.event_nid = rel.event_nid
		JOIN events root ON root.event_id = rel.relates_to_id AND root.room_nid = rel.room_nid
		WHERE rel.room_nid = $1 AND rel.rel_type = 'm.thread' AND e.redacted_by IS NULL AND`+timelineWhere+`
			AND root.stream_pos IS NOT NULL AND root.outlier = FALSE AND root.rejected = FALSE
			AND NOT EXISTS (SELECT 1 FROM event_relations rr WHERE rr.event_nid = root.event_nid)
		GROUP BY root.event_nid, root.sender
		HAVING MAX(e.stream_pos) <= $2
			AND ($3 = '' OR root.sender = $3 OR MAX(CASE WHEN e.sender = $3 THEN 1 ELSE 0 END) = 1)
		ORDER BY latest DESC LIMIT $4`, roomNID, upTo, participant, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []ThreadRoot
	for rows.Next() {
		var r ThreadRoot
		if err := rows.Scan(&r.RootNID, &r.Latest); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}
