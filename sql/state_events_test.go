package sql_test

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// TestSnapshotEventsAndKnownEvents: a snapshot's events through its delta
// chain (the newest entry of a piece wins), and the reads by id of
// batches bigger than one statement takes.
func TestSnapshotEventsAndKnownEvents(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		room, err := db.CreateRoom(ctx, "!snap:test", "10")
		if err != nil {
			t.Fatal(err)
		}
		other, err := db.CreateRoom(ctx, "!other:test", "10")
		if err != nil {
			t.Fatal(err)
		}
		insert := func(roomNID int64, id string, k sql.StateKey, rejected bool) int64 {
			t.Helper()
			nid, err := db.InsertEvent(ctx, sql.Event{RoomNID: roomNID, EventID: id, Type: k.Type, StateKey: &k.StateKey, Sender: "@a:test",
				JSON: []byte(`{}`), Outlier: true, Rejected: rejected})
			if err != nil {
				t.Fatal(err)
			}
			return nid
		}
		name, topic := sql.StateKey{Type: "m.room.name"}, sql.StateKey{Type: "m.room.topic"}
		alice := sql.StateKey{Type: "m.room.member", StateKey: "@a:test"}
		base, err := db.AddSnapshot(ctx, room, 0, 0, sql.StateMap{
			name: insert(room, "$name1", name, false), topic: insert(room, "$topic", topic, false), alice: insert(room, "$alice", alice, false)})
		if err != nil {
			t.Fatal(err)
		}
		top, err := db.AddSnapshot(ctx, room, base, 1, sql.StateMap{name: insert(room, "$name2", name, false)})
		if err != nil {
			t.Fatal(err)
		}
		ids := func(evs []sql.Event) []string {
			var out []string
			for _, e := range evs {
				out = append(out, e.EventID)
			}
			slices.Sort(out)
			return out
		}
		for snap, want := range map[int64][]string{top: {"$alice", "$name2", "$topic"}, base: {"$alice", "$name1", "$topic"}, 0: nil} {
			got, err := db.SnapshotEvents(ctx, snap)
			if err != nil || !slices.Equal(ids(got), want) {
				t.Errorf("SnapshotEvents(%d) = %v %v, want %v", snap, ids(got), err, want)
			}
		}

		rejected := insert(room, "$rejected", sql.StateKey{Type: "m.room.power_levels"}, true)
		elsewhere := insert(other, "$elsewhere", name, false)
		asked := []string{"$rejected", "$elsewhere", "$topic"}
		for i := range 1100 {
			asked = append(asked, fmt.Sprintf("$unknown%d", i))
		}
		known, err := db.KnownEvents(ctx, room, asked)
		if err != nil {
			t.Fatal(err)
		}
		if len(known) != 2 || known["$rejected"] != (sql.KnownEvent{NID: rejected, Rejected: true}) || known["$topic"].Rejected {
			t.Errorf("KnownEvents = %v", known)
		}
		evs, err := db.EventsByID(ctx, asked)
		if err != nil {
			t.Fatal(err)
		}
		if got := ids(evs); !slices.Equal(got, []string{"$elsewhere", "$rejected", "$topic"}) {
			t.Errorf("EventsByID = %v", got)
		}
		byNID, err := db.EventsByNID(ctx, append([]int64{rejected, elsewhere}, make([]int64, 700)...))
		if err != nil || !slices.Equal(ids(byNID), []string{"$elsewhere", "$rejected"}) {
			t.Errorf("EventsByNID = %v %v", ids(byNID), err)
		}
	})
}
