package sql_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// timelineRoom stores events straight into a room, bypassing the
// roomserver, so that tests control depth, stream position and timestamps.
type timelineRoom struct {
	t      *testing.T
	db     *sql.DB
	nid    int64
	stream *int64 // shared by every room of a database: positions are unique
}

func newTimelineRoom(t *testing.T, db *sql.DB, roomID string, stream *int64) *timelineRoom {
	t.Helper()
	nid, err := db.CreateRoom(context.Background(), roomID, "11")
	if err != nil {
		t.Fatal(err)
	}
	return &timelineRoom{t: t, db: db, nid: nid, stream: stream}
}

type storedEvent struct {
	id, typ, sender string
	depth, ts       int64
	content         map[string]any
	outlier         bool
	rejected        bool
}

// add stores an event with the next stream position and indexes its
// relation as the roomserver's commit does.
func (r *timelineRoom) add(e storedEvent) sql.Event {
	r.t.Helper()
	ctx := context.Background()
	if e.typ == "" {
		e.typ = "m.room.message"
	}
	if e.sender == "" {
		e.sender = "@alice:test"
	}
	if e.content == nil {
		e.content = map[string]any{"body": e.id}
	}
	content, _ := json.Marshal(e.content)
	js, _ := json.Marshal(map[string]any{"type": e.typ, "sender": e.sender, "content": json.RawMessage(content)})
	*r.stream++
	ev := sql.Event{RoomNID: r.nid, EventID: e.id, Type: e.typ, Sender: e.sender, Depth: e.depth, OriginServerTS: e.ts,
		StreamPos: *r.stream, JSON: js, Outlier: e.outlier, Rejected: e.rejected}
	if e.outlier {
		ev.StreamPos = 0
	}
	nid, err := r.db.InsertEvent(ctx, ev)
	if err != nil {
		r.t.Fatal(err)
	}
	if err := r.db.IndexRelation(ctx, nid, r.nid, content); err != nil {
		r.t.Fatal(err)
	}
	ev.NID = nid
	return ev
}

func ids(evs []sql.Event) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.EventID
	}
	return out
}

func rel(relType, parent string) map[string]any {
	return map[string]any{"body": "x", "m.relates_to": map[string]any{"rel_type": relType, "event_id": parent}}
}

func TestTimelineEventsOrderAndBounds(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		var stream int64
		room := newTimelineRoom(t, db, "!a:test", &stream)
		other := newTimelineRoom(t, db, "!b:test", &stream)
		// Depth orders first; stream positions break ties: $d2b arrived
		// before $d2a's sibling $d1late, which sorts before both.
		room.add(storedEvent{id: "$d1", depth: 1})
		room.add(storedEvent{id: "$d2a", depth: 2})
		other.add(storedEvent{id: "$other", depth: 2})
		room.add(storedEvent{id: "$d2b", depth: 2})
		room.add(storedEvent{id: "$out", depth: 3, outlier: true})
		room.add(storedEvent{id: "$rej", depth: 3, rejected: true})
		room.add(storedEvent{id: "$d1late", depth: 1})
		room.add(storedEvent{id: "$d3", depth: 3})

		all, err := db.TimelineEvents(ctx, room.nid, sql.TopoStart, sql.TopoEnd, false, 100)
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"$d1", "$d1late", "$d2a", "$d2b", "$d3"}
		if got := ids(all); !slices.Equal(got, want) {
			t.Fatalf("forward: %v, want %v", got, want)
		}
		back, err := db.TimelineEvents(ctx, room.nid, sql.TopoStart, sql.TopoEnd, true, 100)
		if err != nil {
			t.Fatal(err)
		}
		slices.Reverse(want)
		if got := ids(back); !slices.Equal(got, want) {
			t.Fatalf("backward: %v, want %v", got, want)
		}
		// (lo, hi]: lo excluded, hi included.
		mid, err := db.TimelineEvents(ctx, room.nid, all[1].Key(), all[3].Key(), false, 100)
		if err != nil {
			t.Fatal(err)
		}
		if got := ids(mid); !slices.Equal(got, []string{"$d2a", "$d2b"}) {
			t.Fatalf("range: %v", got)
		}
		if lim, _ := db.TimelineEvents(ctx, room.nid, sql.TopoStart, sql.TopoEnd, true, 2); !slices.Equal(ids(lim), []string{"$d3", "$d2b"}) {
			t.Fatalf("limit: %v", ids(lim))
		}
		last, err := db.TimelineLast(ctx, room.nid)
		if err != nil || last != all[4].Key() {
			t.Fatalf("last %v %v, want %v", last, err, all[4].Key())
		}
		// The stream position of $other maps to $d2a, the room's newest
		// event at that point of the stream.
		at, err := db.TopoPosAtStream(ctx, room.nid, 3)
		if err != nil || at != all[2].Key() {
			t.Fatalf("topo at stream 3: %v %v, want %v", at, err, all[2].Key())
		}
		if at, err := db.TopoPosAtStream(ctx, room.nid, 0); err != nil || at != sql.TopoStart {
			t.Fatalf("topo at stream 0: %v %v", at, err)
		}
		empty := newTimelineRoom(t, db, "!empty:test", &stream)
		if last, err := db.TimelineLast(ctx, empty.nid); err != nil || last != sql.TopoStart {
			t.Fatalf("empty room last %v %v", last, err)
		}
	})
}

func TestTimelineByTimestamp(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		var stream int64
		room := newTimelineRoom(t, db, "!a:test", &stream)
		for i, ts := range []int64{100, 200, 200, 300} {
			room.add(storedEvent{id: fmt.Sprintf("$e%d", i), depth: int64(i + 1), ts: ts})
		}
		fwd, err := db.TimelineByTimestamp(ctx, room.nid, 200, 0, true, 10)
		if err != nil || !slices.Equal(ids(fwd), []string{"$e1", "$e2", "$e3"}) {
			t.Fatalf("forward from 200: %v %v", ids(fwd), err)
		}
		back, err := db.TimelineByTimestamp(ctx, room.nid, 250, 0, false, 10)
		if err != nil || !slices.Equal(ids(back), []string{"$e2", "$e1", "$e0"}) {
			t.Fatalf("backward from 250: %v %v", ids(back), err)
		}
		if none, _ := db.TimelineByTimestamp(ctx, room.nid, 301, 0, true, 10); len(none) != 0 {
			t.Fatalf("after the last event: %v", ids(none))
		}
	})
}

func TestIndexRelation(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		var stream int64
		room := newTimelineRoom(t, db, "!a:test", &stream)
		room.add(storedEvent{id: "$root", depth: 1})
		// Malformed relations are no relations (spec: relationships which
		// do not match the schema are ignored); none of these may fail.
		for i, c := range []map[string]any{
			{"m.relates_to": "nope"},
			{"m.relates_to": map[string]any{"rel_type": "m.thread"}},
			{"m.relates_to": map[string]any{"event_id": "$root"}},
			{"m.relates_to": map[string]any{"rel_type": 5, "event_id": "$root"}},
			{"m.relates_to": map[string]any{"m.in_reply_to": map[string]any{"event_id": "$root"}}},
		} {
			room.add(storedEvent{id: fmt.Sprintf("$bad%d", i), depth: 2, content: c})
		}
		if err := db.IndexRelation(ctx, 999, room.nid, []byte(`not json`)); err != nil {
			t.Fatal(err)
		}
		got, err := db.ChildrenOf(ctx, []int64{room.nid}, []string{"$root"}, []string{"m.thread", "m.annotation"}, []string{"m.thread", "m.annotation"})
		if err != nil || len(got) != 0 {
			t.Fatalf("malformed relations indexed: %+v %v", got, err)
		}
		room.add(storedEvent{id: "$t1", depth: 2, content: rel("m.thread", "$root")})
		room.add(storedEvent{id: "$r1", depth: 3, content: map[string]any{"m.relates_to": map[string]any{"rel_type": "m.annotation", "event_id": "$root", "key": "👍"}}})
		got, err = db.ChildrenOf(ctx, []int64{room.nid}, []string{"$root"}, []string{"m.thread", "m.annotation"}, []string{"m.annotation"})
		if err != nil || len(got) != 2 {
			t.Fatalf("children: %+v %v", got, err)
		}
		// Bodies only for the rel types asked.
		if got[0].Event.EventID != "$t1" || got[0].RelType != "m.thread" || got[0].ParentID != "$root" || len(got[0].Event.JSON) != 0 {
			t.Fatalf("first child %+v", got[0])
		}
		if got[1].Event.EventID != "$r1" || len(got[1].Event.JSON) == 0 {
			t.Fatalf("annotation with JSON: %+v", got[1])
		}
	})
}

func TestRelationsRecursionAndFilters(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		var stream int64
		room := newTimelineRoom(t, db, "!a:test", &stream)
		other := newTimelineRoom(t, db, "!b:test", &stream)
		room.add(storedEvent{id: "$root", depth: 1})
		room.add(storedEvent{id: "$a", depth: 2, content: rel("m.thread", "$root")})
		room.add(storedEvent{id: "$b", depth: 3, content: rel("m.reference", "$root")})
		room.add(storedEvent{id: "$a1", depth: 4, content: rel("m.reference", "$a")})
		room.add(storedEvent{id: "$a1x", depth: 5, typ: "m.reaction", content: rel("m.annotation", "$a1")})
		room.add(storedEvent{id: "$a1xy", depth: 6, content: rel("m.reference", "$a1x")})
		room.add(storedEvent{id: "$b1", depth: 7, typ: "m.reaction", content: rel("m.annotation", "$b")})
		// A child in another room names the same parent: not a relation of
		// this room's event.
		other.add(storedEvent{id: "$foreign", depth: 1, content: rel("m.thread", "$root")})
		redacted := room.add(storedEvent{id: "$gone", depth: 8, content: rel("m.thread", "$root")})
		if err := db.RedactEvent(ctx, redacted.NID, []byte(`{}`), "$redaction"); err != nil {
			t.Fatal(err)
		}
		query := func(q sql.RelationQuery) []string {
			t.Helper()
			q.ParentID, q.RoomNID = "$root", room.nid
			if q.Hi == (sql.TopoPos{}) {
				q.Hi = sql.TopoEnd
			}
			if q.Limit == 0 {
				q.Limit = 100
			}
			evs, err := db.Relations(ctx, q)
			if err != nil {
				t.Fatal(err)
			}
			return ids(evs)
		}
		for _, c := range []struct {
			name string
			q    sql.RelationQuery
			want []string
		}{
			{"direct", sql.RelationQuery{MaxDepth: 1, Backward: true}, []string{"$b", "$a"}},
			{"direct forward", sql.RelationQuery{MaxDepth: 1}, []string{"$a", "$b"}},
			{"rel type", sql.RelationQuery{MaxDepth: 1, RelType: "m.thread"}, []string{"$a"}},
			{"event type", sql.RelationQuery{MaxDepth: 3, EventType: "m.reaction"}, nil},
			{"depth 2", sql.RelationQuery{MaxDepth: 2}, []string{"$a", "$b", "$a1", "$b1"}},
			// Three hops, not four: $a1xy is four relations away.
			{"depth 3", sql.RelationQuery{MaxDepth: 3}, []string{"$a", "$b", "$a1", "$a1x", "$b1"}},
			{"depth 4", sql.RelationQuery{MaxDepth: 4}, []string{"$a", "$b", "$a1", "$a1x", "$a1xy", "$b1"}},
			// Filters apply at every hop: $a1 is a reference, but only
			// reachable through the thread event $a, so it is left out.
			{"recursive rel type", sql.RelationQuery{MaxDepth: 3, RelType: "m.reference"}, []string{"$b"}},
			{"page", sql.RelationQuery{MaxDepth: 3, Backward: true, Limit: 2}, []string{"$b1", "$a1x"}},
			{"bounded", sql.RelationQuery{MaxDepth: 3, Backward: true, Lo: sql.TopoPos{Depth: 2, Stream: 2}, Hi: sql.TopoPos{Depth: 4, Stream: 4}},
				[]string{"$a1", "$b"}},
		} {
			if got := query(c.q); !slices.Equal(got, c.want) {
				t.Errorf("%s: %v, want %v", c.name, got, c.want)
			}
		}
	})
}

func TestThreadRoots(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		var stream int64
		room := newTimelineRoom(t, db, "!a:test", &stream)
		rootA := room.add(storedEvent{id: "$A", depth: 1, sender: "@alice:test"})
		rootB := room.add(storedEvent{id: "$B", depth: 2, sender: "@bob:test"})
		room.add(storedEvent{id: "$a1", depth: 3, sender: "@bob:test", content: rel("m.thread", "$A")})
		lastB := room.add(storedEvent{id: "$b1", depth: 4, sender: "@bob:test", content: rel("m.thread", "$B")})
		lastA := room.add(storedEvent{id: "$a2", depth: 5, sender: "@carol:test", content: rel("m.thread", "$A")})
		// A thread event pointing at a thread event starts no thread, and a
		// thread whose only reply is redacted is no longer listed.
		room.add(storedEvent{id: "$nested", depth: 6, content: rel("m.thread", "$a1")})
		room.add(storedEvent{id: "$C", depth: 7})
		gone := room.add(storedEvent{id: "$c1", depth: 8, content: rel("m.thread", "$C")})
		if err := db.RedactEvent(ctx, gone.NID, []byte(`{}`), "$r"); err != nil {
			t.Fatal(err)
		}
		list := func(upTo int64, who string, limit int) []sql.ThreadRoot {
			t.Helper()
			roots, err := db.ThreadRoots(ctx, room.nid, upTo, who, limit)
			if err != nil {
				t.Fatal(err)
			}
			return roots
		}
		want := []sql.ThreadRoot{{RootNID: rootA.NID, Latest: lastA.StreamPos}, {RootNID: rootB.NID, Latest: lastB.StreamPos}}
		if got := list(1<<62, "", 10); !slices.Equal(got, want) {
			t.Fatalf("all threads: %+v, want %+v", got, want)
		}
		if got := list(lastA.StreamPos-1, "", 10); !slices.Equal(got, want[1:]) {
			t.Fatalf("threads up to %d: %+v", lastA.StreamPos-1, got)
		}
		if got := list(1<<62, "", 1); !slices.Equal(got, want[:1]) {
			t.Fatalf("limit 1: %+v", got)
		}
		// Alice started A; Bob started B and replied in A; Carol replied in
		// A; Dan did nothing.
		for who, w := range map[string][]sql.ThreadRoot{"@alice:test": want[:1], "@bob:test": want, "@carol:test": want[:1], "@dan:test": nil} {
			if got := list(1<<62, who, 10); !slices.Equal(got, w) {
				t.Errorf("participated %s: %+v, want %+v", who, got, w)
			}
		}
	})
}
