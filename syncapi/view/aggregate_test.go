package view_test

import (
	"context"
	"encoding/json"
	"maps"
	"slices"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
	"github.com/weft-chat/weft/syncapi/view"
)

// seeAll is a room where every event is visible.
type seeAll struct{}

func (seeAll) Membership(context.Context, string, string) (string, error) { return "join", nil }
func (seeAll) CurrentStateEvent(context.Context, string, string, string) (gomatrixserverlib.PDU, error) {
	return nil, nil
}
func (seeAll) VisibleTo(context.Context, string, string, sql.Event) (bool, error) { return true, nil }

// countingChildren records the parents each ChildrenOf asks about.
type countingChildren struct {
	*sql.DB
	asked [][]string
}

func (c *countingChildren) ChildrenOf(ctx context.Context, roomNIDs []int64, parentIDs, relTypes, bodies []string) ([]sql.Relation, error) {
	c.asked = append(c.asked, slices.Clone(parentIDs))
	return c.DB.ChildrenOf(ctx, roomNIDs, parentIDs, relTypes, bodies)
}

// TestBundleSkipsChildless: the events sync's timeline read found
// without bundled children join no aggregation query (none at all for a
// timeline of them), and the bundles are those of an unflagged read.
func TestBundleSkipsChildless(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		roomNID, err := db.CreateRoom(ctx, "!a:test", "11")
		if err != nil {
			t.Fatal(err)
		}
		var stream int64
		add := func(id string, content map[string]any) {
			t.Helper()
			c, _ := json.Marshal(content)
			js, _ := json.Marshal(map[string]any{"type": "m.room.message", "sender": "@alice:test", "content": json.RawMessage(c)})
			stream++
			nid, err := db.InsertEvent(ctx, sql.Event{RoomNID: roomNID, EventID: id, Type: "m.room.message", Sender: "@alice:test",
				Depth: stream, StreamPos: stream, JSON: js})
			if err != nil {
				t.Fatal(err)
			}
			if err := db.IndexRelation(ctx, nid, roomNID, c); err != nil {
				t.Fatal(err)
			}
		}
		relates := func(relType, parent string) map[string]any {
			return map[string]any{"body": "x", "m.relates_to": map[string]any{"rel_type": relType, "event_id": parent}}
		}
		add("$plain1", map[string]any{"body": "1"})
		add("$plain2", map[string]any{"body": "2"})
		plainUpTo := stream
		add("$root", map[string]any{"body": "root"})
		add("$edited", map[string]any{"body": "v0"})
		add("$reply", relates(view.RelThread, "$root"))
		edit := relates(view.RelReplace, "$edited")
		edit["m.new_content"] = map[string]any{"body": "v1"}
		add("$edit", edit)

		v := view.ForSync(seeAll{}, "!a:test", "@alice:test", "join", nil)
		bundle := func(evs []sql.Event) (view.Bundles, [][]string) {
			t.Helper()
			c := &countingChildren{DB: db}
			b, err := view.BundleRooms(ctx, c, func(int64) *view.Viewer { return v }, evs)
			if err != nil {
				t.Fatal(err)
			}
			return b, c.asked
		}

		plain, err := db.RoomEventsByStream(ctx, roomNID, 0, plainUpTo, 10)
		if err != nil {
			t.Fatal(err)
		}
		if b, asked := bundle(plain); len(b) != 0 || len(asked) != 0 {
			t.Fatalf("plain timeline: bundles %v, ChildrenOf asked %v", b, asked)
		}

		timeline, err := db.RoomEventsByStream(ctx, roomNID, 0, stream, 10)
		if err != nil {
			t.Fatal(err)
		}
		flagged, asked := bundle(timeline)
		if len(asked) == 0 || !slices.Equal(sorted(asked[0]), []string{"$edited", "$root"}) {
			t.Fatalf("ChildrenOf asked %v, want [$edited $root] first", asked)
		}
		if th := flagged["$root"].Thread; th == nil || th.Latest.EventID != "$reply" || th.Count != 1 {
			t.Fatalf("thread of $root: %+v", th)
		}
		if ed := flagged["$edited"].Replace; ed == nil || ed.EventID != "$edit" {
			t.Fatalf("edit of $edited: %+v", ed)
		}

		ids := make([]string, len(timeline))
		for i, ev := range timeline {
			ids[i] = ev.EventID
		}
		unflagged, err := db.EventsByID(ctx, ids)
		if err != nil {
			t.Fatal(err)
		}
		all, asked := bundle(unflagged)
		if len(asked) == 0 || len(asked[0]) != len(ids) {
			t.Fatalf("unflagged events: ChildrenOf asked %v", asked)
		}
		if !slices.Equal(sorted(slices.Collect(maps.Keys(all))), sorted(slices.Collect(maps.Keys(flagged)))) {
			t.Fatalf("bundles of unflagged events %v, of flagged %v", all, flagged)
		}
	})
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}
