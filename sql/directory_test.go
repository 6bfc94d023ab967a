package sql_test

import (
	"context"
	"testing"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

func TestRoomDirectory(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		nid1, err := db.CreateRoom(ctx, "!r1:hs", "12")
		if err != nil {
			t.Fatal(err)
		}
		nid2, err := db.CreateRoom(ctx, "!r2:hs", "12")
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			nid        int64
			user, memb string
		}{
			{nid1, "@a:hs", "join"}, {nid1, "@b:hs", "join"}, {nid1, "@c:hs", "leave"}, {nid1, "@d:hs", "invite"},
			{nid2, "@a:hs", "join"},
		} {
			if err := db.SetMembership(ctx, c.nid, c.user, c.memb, 1, 1); err != nil {
				t.Fatal(err)
			}
		}
		for room, want := range map[string]int{"!r1:hs": 2, "!r2:hs": 1, "!unknown:hs": 0} {
			if n, err := db.JoinedMemberCount(ctx, room); err != nil || n != want {
				t.Fatalf("JoinedMemberCount(%s) = %d, %v; want %d", room, n, err, want)
			}
		}

		if pub, err := db.RoomPublished(ctx, "!r1:hs"); err != nil || pub {
			t.Fatalf("new room published = %v, %v", pub, err)
		}
		// Publishing twice and unpublishing an unpublished room are no-ops.
		for _, step := range []struct {
			room   string
			public bool
		}{{"!r1:hs", true}, {"!r1:hs", true}, {"!r2:hs", true}, {"!r2:hs", false}, {"!r2:hs", false}} {
			if err := db.SetRoomPublished(ctx, step.room, step.public); err != nil {
				t.Fatal(err)
			}
		}
		if pub, err := db.RoomPublished(ctx, "!r1:hs"); err != nil || !pub {
			t.Fatalf("!r1 published = %v, %v", pub, err)
		}
		if pub, err := db.RoomPublished(ctx, "!r2:hs"); err != nil || pub {
			t.Fatalf("!r2 published = %v, %v", pub, err)
		}
		// A published room the server holds no row for (not possible
		// through the API) is left out rather than listed half-known.
		if err := db.SetRoomPublished(ctx, "!ghost:hs", true); err != nil {
			t.Fatal(err)
		}
		info, err := db.Room(ctx, "!r1:hs")
		if err != nil {
			t.Fatal(err)
		}
		info.LastStreamPos = 42
		if err := db.UpdateRoom(ctx, info); err != nil {
			t.Fatal(err)
		}
		got, err := db.PublishedRooms(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || got[0] != (sql.PublishedRoom{RoomID: "!r1:hs", LastStreamPos: 42}) {
			t.Fatalf("PublishedRooms = %+v", got)
		}
	})
}
