package sql_test

import (
	"context"
	"maps"
	"slices"
	"testing"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// TestSnapshotKeys: exactly the pairs asked for, from a delta chain (the
// newest entry wins), even when other pairs share their type or state key.
func TestSnapshotKeys(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		room, err := db.CreateRoom(ctx, "!keys:test", "11")
		if err != nil {
			t.Fatal(err)
		}
		name := sql.StateKey{Type: "m.room.name"}
		alice := sql.StateKey{Type: "m.room.member", StateKey: "@alice:test"}
		bob := sql.StateKey{Type: "m.room.member", StateKey: "@bob:test"}
		odd := sql.StateKey{Type: "org.example", StateKey: "@alice:test"}
		base, err := db.AddSnapshot(ctx, room, 0, 0, sql.StateMap{name: 1, alice: 2, bob: 3, odd: 4})
		if err != nil {
			t.Fatal(err)
		}
		delta, err := db.AddSnapshot(ctx, room, base, 1, sql.StateMap{alice: 5})
		if err != nil {
			t.Fatal(err)
		}
		got, err := db.SnapshotKeys(ctx, delta, []sql.StateKey{name, alice, {Type: "m.room.topic"}})
		if err != nil {
			t.Fatal(err)
		}
		if want := (sql.StateMap{name: 1, alice: 5}); !maps.Equal(got, want) {
			t.Errorf("SnapshotKeys = %v, want %v", got, want)
		}
		noMembers, err := db.SnapshotWithoutMembers(ctx, delta)
		if err != nil {
			t.Fatal(err)
		}
		if want := (sql.StateMap{name: 1, odd: 4}); !maps.Equal(noMembers, want) {
			t.Errorf("SnapshotWithoutMembers = %v, want %v", noMembers, want)
		}
		if empty, err := db.SnapshotKeys(ctx, 0, []sql.StateKey{name}); err != nil || len(empty) != 0 {
			t.Errorf("snapshot 0: %v %v", empty, err)
		}
	})
}

// TestRoomSummaryQueries: member counts and heroes in the stream order of
// their memberships, leaving out the caller.
func TestRoomSummaryQueries(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		room, err := db.CreateRoom(ctx, "!summary:test", "11")
		if err != nil {
			t.Fatal(err)
		}
		for i, m := range []struct{ user, membership string }{
			{"@me:test", "join"}, {"@c:test", "invite"}, {"@a:test", "join"}, {"@gone:test", "leave"}, {"@b:test", "join"},
		} {
			if err := db.SetMembership(ctx, room, m.user, m.membership, int64(100+i), int64(10+i)); err != nil {
				t.Fatal(err)
			}
		}
		joined, invited, err := db.RoomMemberCounts(ctx, room)
		if err != nil || joined != 3 || invited != 1 {
			t.Fatalf("counts %d %d %v", joined, invited, err)
		}
		heroes, err := db.RoomsHeroes(ctx, []int64{room}, "@me:test", 2)
		if err != nil || !slices.Equal(heroes[room], []string{"@c:test", "@a:test"}) {
			t.Errorf("heroes %v %v", heroes, err)
		}
		// A room with nobody else but who left: those are its heroes.
		gone, err := db.CreateRoom(ctx, "!gone:test", "11")
		if err != nil {
			t.Fatal(err)
		}
		for i, m := range []struct{ user, membership string }{{"@me:test", "join"}, {"@x:test", "ban"}, {"@y:test", "leave"}} {
			if err := db.SetMembership(ctx, gone, m.user, m.membership, int64(200+i), int64(20+i)); err != nil {
				t.Fatal(err)
			}
		}
		both, err := db.RoomsHeroes(ctx, []int64{room, gone}, "@me:test", 5)
		if err != nil || !slices.Equal(both[room], []string{"@c:test", "@a:test", "@b:test"}) ||
			!slices.Equal(both[gone], []string{"@x:test", "@y:test"}) {
			t.Errorf("heroes of two rooms %v %v", both, err)
		}
		mems, err := db.SyncMemberships(ctx, "@a:test")
		if err != nil || len(mems) != 1 || mems[0].RoomID != "!summary:test" || mems[0].Membership != "join" || mems[0].StreamPos != 12 {
			t.Errorf("SyncMemberships %+v %v", mems, err)
		}
	})
}

// TestSyncPositions: every counter in one read.
func TestSyncPositions(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		if _, err := db.PutAccountData(ctx, "alice", "", "org.example", []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
		err := db.WithTx(ctx, func(q *sql.Queries) error {
			_, err := q.AllocStreamPos(ctx, "events")
			if err == nil {
				_, err = q.AllocStreamPos(ctx, "events")
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := db.AllocStreamPos(ctx, sql.ToDeviceStream); err != nil {
			t.Fatal(err)
		}
		p, err := db.SyncPositions(ctx)
		want := sql.StreamPositions{Events: 2, AccountData: 1, ToDevice: 1}
		if err != nil || p != want {
			t.Errorf("SyncPositions = %+v, %v; want %+v", p, err, want)
		}
	})
}

// TestSyncTimelineBundledChildren: sync's timeline reads, per room and
// batched, flag the events no thread, reference or edit relates to;
// annotations are not bundled and leave the flag set.
func TestSyncTimelineBundledChildren(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		var stream int64
		room := newTimelineRoom(t, db, "!a:test", &stream)
		other := newTimelineRoom(t, db, "!b:test", &stream)
		for _, id := range []string{"$edited", "$threaded", "$referenced", "$reacted", "$plain"} {
			room.add(storedEvent{id: id, depth: 1})
		}
		room.add(storedEvent{id: "$edit", depth: 2, content: rel(sql.RelReplace, "$edited")})
		room.add(storedEvent{id: "$reply", depth: 2, content: rel(sql.RelThread, "$threaded")})
		room.add(storedEvent{id: "$ref", depth: 2, content: rel(sql.RelReference, "$referenced")})
		room.add(storedEvent{id: "$reaction", depth: 2, typ: "m.reaction", content: map[string]any{
			"m.relates_to": map[string]any{"rel_type": "m.annotation", "event_id": "$reacted", "key": "👍"}}})
		other.add(storedEvent{id: "$elsewhere", depth: 1})
		other.add(storedEvent{id: "$elsewhere-reply", depth: 2, content: rel(sql.RelThread, "$elsewhere")})
		want := map[string]bool{"$edited": false, "$threaded": false, "$referenced": false, "$reacted": true, "$plain": true,
			"$edit": true, "$reply": true, "$ref": true, "$reaction": true, "$elsewhere": false, "$elsewhere-reply": true}
		check := func(how string, evs []sql.Event, n int) {
			t.Helper()
			if len(evs) != n {
				t.Fatalf("%s: %d events, want %d", how, len(evs), n)
			}
			for _, ev := range evs {
				if ev.NoBundledChildren != want[ev.EventID] {
					t.Errorf("%s: %s NoBundledChildren = %v", how, ev.EventID, ev.NoBundledChildren)
				}
			}
		}
		evs, err := db.RoomEventsByStream(ctx, room.nid, 0, stream, 100)
		if err != nil {
			t.Fatal(err)
		}
		check("room", evs, 9)
		batch, err := db.RoomsEventsByStream(ctx, []int64{room.nid, other.nid}, 0, stream, 100)
		if err != nil {
			t.Fatal(err)
		}
		check("batch", batch[room.nid], 9)
		check("batch", batch[other.nid], 2)
		// Other reads do not look.
		if ev, err := db.EventByID(ctx, "$plain"); err != nil || ev.NoBundledChildren {
			t.Fatalf("EventByID: %+v %v", ev, err)
		}
	})
}
