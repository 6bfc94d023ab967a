package sql_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"testing"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// TestSyncBatchReads: the reads of several rooms at once give what the
// reads of each room give.
func TestSyncBatchReads(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		var stream int64
		var rooms []int64
		var nids []int64
		for r := range 3 {
			room := newTimelineRoom(t, db, fmt.Sprintf("!r%d:test", r), &stream)
			rooms = append(rooms, room.nid)
			for i := range 2 + 3*r {
				room.add(storedEvent{id: fmt.Sprintf("$r%de%d", r, i), depth: int64(i + 1)})
			}
			room.add(storedEvent{id: fmt.Sprintf("$r%dout", r), depth: 9, outlier: true})
			for i, m := range []string{"join", "join", "invite", "leave"}[:1+r] {
				if err := db.SetMembership(ctx, room.nid, fmt.Sprintf("@u%d:test", i), m, int64(100*r+i), int64(100*r+i)); err != nil {
					t.Fatal(err)
				}
			}
		}
		empty, err := db.CreateRoom(ctx, "!empty:test", "11")
		if err != nil {
			t.Fatal(err)
		}
		rooms = append(rooms, empty)

		for _, w := range []struct{ lo, hi int64 }{{0, stream}, {3, stream - 2}} {
			got, err := db.RoomsEventsByStream(ctx, rooms, w.lo, w.hi, 3)
			if err != nil {
				t.Fatal(err)
			}
			for _, room := range rooms {
				want, err := db.RoomEventsByStream(ctx, room, w.lo, w.hi, 3)
				if err != nil {
					t.Fatal(err)
				}
				if !slices.EqualFunc(got[room], want, func(a, b sql.Event) bool { return a.NID == b.NID }) {
					t.Errorf("room %d in (%d, %d]: got %d events, want %d", room, w.lo, w.hi, len(got[room]), len(want))
				}
			}
		}

		counts, err := db.RoomsMemberCounts(ctx, rooms)
		if err != nil {
			t.Fatal(err)
		}
		for _, room := range rooms {
			j, i, err := db.RoomMemberCounts(ctx, room)
			if err != nil {
				t.Fatal(err)
			}
			if counts[room] != (sql.MemberCounts{Joined: j, Invited: i}) {
				t.Errorf("room %d: counts %+v, want %d joined %d invited", room, counts[room], j, i)
			}
		}

		// Snapshots: a base and a delta on it, and none.
		a := sql.StateKey{Type: "m.room.name"}
		b := sql.StateKey{Type: "m.room.member", StateKey: "@u0:test"}
		base, err := db.AddSnapshot(ctx, rooms[0], 0, 0, sql.StateMap{a: 1, b: 2})
		if err != nil {
			t.Fatal(err)
		}
		delta, err := db.AddSnapshot(ctx, rooms[0], base, 1, sql.StateMap{b: 3})
		if err != nil {
			t.Fatal(err)
		}
		nids = []int64{base, delta, 0}
		snaps, err := db.Snapshots(ctx, nids)
		if err != nil {
			t.Fatal(err)
		}
		for _, nid := range nids {
			want, err := db.Snapshot(ctx, nid)
			if err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(snaps[nid], want) {
				t.Errorf("snapshot %d: %v, want %v", nid, snaps[nid], want)
			}
		}
	})
}
