package sql_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// typingRoom makes a room with the given joined members and returns its
// NID.
func typingRoom(t *testing.T, db *sql.DB, roomID string, members ...string) int64 {
	t.Helper()
	ctx := context.Background()
	nid, err := db.CreateRoom(ctx, roomID, "12")
	if err != nil {
		t.Fatal(err)
	}
	for i, u := range members {
		if err := db.SetMembership(ctx, nid, u, "join", int64(1000*nid+int64(i)), int64(1000*nid+int64(i))); err != nil {
			t.Fatal(err)
		}
	}
	return nid
}

func typingPos(t *testing.T, db *sql.DB) int64 {
	t.Helper()
	p, err := db.SyncPositions(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return p.Typing
}

func TestTypingStorage(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		const alice, bob, carol = "@alice:hs", "@bob:hs", "@carol:hs"
		room := typingRoom(t, db, "!r:hs", alice, bob)
		other := typingRoom(t, db, "!other:hs", carol)
		const now = 1_000_000

		if nid, err := db.JoinedRoomNID(ctx, "!r:hs", alice); err != nil || nid != room {
			t.Fatalf("JoinedRoomNID = %d, %v", nid, err)
		}
		if _, err := db.JoinedRoomNID(ctx, "!r:hs", carol); !errors.Is(err, sql.ErrNotFound) {
			t.Fatalf("JoinedRoomNID of a non-member: %v", err)
		}

		// A start takes a position; a renewal does not.
		changed, err := db.SetTyping(ctx, room, alice, now, now+30_000)
		if err != nil || !changed {
			t.Fatalf("start: %v %v", changed, err)
		}
		p1 := typingPos(t, db)
		if p1 != 1 {
			t.Fatalf("typing position after a start = %d", p1)
		}
		if changed, err = db.SetTyping(ctx, room, alice, now+1000, now+31_000); err != nil || changed {
			t.Fatalf("renewal: %v %v", changed, err)
		}
		if p := typingPos(t, db); p != p1 {
			t.Fatalf("a renewal moved the stream to %d", p)
		}
		if _, err := db.SetTyping(ctx, other, carol, now, now+30_000); err != nil {
			t.Fatal(err)
		}

		// Bob sees the room with alice typing; not carol's room.
		got, err := db.SyncTyping(ctx, bob, 0, typingPos(t, db), now+2000)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || !slices.Equal(got[room], []string{alice}) {
			t.Fatalf("bob's typing = %v", got)
		}
		// Nothing in a window after the change.
		if got, _ := db.SyncTyping(ctx, bob, p1, typingPos(t, db), now+2000); len(got) != 0 {
			t.Fatalf("window after the change: %v", got)
		}
		// An expired row is not listed even before it is deleted.
		if got, _ := db.SyncTyping(ctx, bob, 0, typingPos(t, db), now+31_000); got[room] != nil {
			t.Fatalf("expired typing listed: %v", got)
		}

		// A stop is a change; a second stop is not.
		if changed, err = db.StopTyping(ctx, room, alice); err != nil || !changed {
			t.Fatalf("stop: %v %v", changed, err)
		}
		p2 := typingPos(t, db)
		if changed, err = db.StopTyping(ctx, room, alice); err != nil || changed {
			t.Fatalf("second stop: %v %v", changed, err)
		}
		got, _ = db.SyncTyping(ctx, bob, p1, p2, now+2000)
		if l, ok := got[room]; !ok || l != nil {
			t.Fatalf("after the stop: %v (the room must be there with nobody typing)", got)
		}

		// Typing again after the expiry passed is a change, even though the
		// row was still there.
		if _, err := db.SetTyping(ctx, room, bob, now, now+10); err != nil {
			t.Fatal(err)
		}
		p3 := typingPos(t, db)
		if changed, err = db.SetTyping(ctx, room, bob, now+20, now+30_000); err != nil || !changed {
			t.Fatalf("typing again after the expiry: %v %v", changed, err)
		}
		if typingPos(t, db) == p3 {
			t.Fatal("typing again after the expiry took no position")
		}

		// A typing user who left the room is not listed to those still in it.
		if _, err := db.SetTyping(ctx, room, alice, now, now+30_000); err != nil {
			t.Fatal(err)
		}
		if err := db.SetMembership(ctx, room, bob, "leave", 99_999, 99_999); err != nil {
			t.Fatal(err)
		}
		got, _ = db.SyncTyping(ctx, alice, 0, typingPos(t, db), now+100)
		if !slices.Equal(got[room], []string{alice}) {
			t.Fatalf("after bob left: %v", got)
		}
		// And bob, who left, gets nothing of the room.
		if got, _ := db.SyncTyping(ctx, bob, 0, typingPos(t, db), now+100); len(got) != 0 {
			t.Fatalf("bob after leaving: %v", got)
		}
	})
}

func TestTypingExpiry(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		const alice, bob = "@alice:hs", "@bob:hs"
		room := typingRoom(t, db, "!r:hs", alice, bob)
		const now = 5_000_000
		if _, err := db.SetTyping(ctx, room, alice, now, now+1000); err != nil {
			t.Fatal(err)
		}
		// Not expired yet: nothing to sweep, nothing expires.
		if rows, err := db.ExpiredTyping(ctx, now+999); err != nil || len(rows) != 0 {
			t.Fatalf("expired before the expiry: %v %v", rows, err)
		}
		if changed, err := db.ExpireTyping(ctx, room, alice, now+999); err != nil || changed {
			t.Fatalf("expire early: %v %v", changed, err)
		}
		rows, err := db.ExpiredTyping(ctx, now+1000)
		if err != nil || len(rows) != 1 || rows[0].RoomID != "!r:hs" || rows[0].UserID != alice || rows[0].RoomNID != room {
			t.Fatalf("expired rows = %+v, %v", rows, err)
		}
		// A renewal wins over a timer set for the old expiry.
		if _, err := db.SetTyping(ctx, room, alice, now+500, now+2000); err != nil {
			t.Fatal(err)
		}
		if changed, err := db.ExpireTyping(ctx, room, alice, now+1000); err != nil || changed {
			t.Fatalf("expire a renewed row: %v %v", changed, err)
		}
		before := typingPos(t, db)

		// Two processes expiring the same row at once: exactly one reports
		// it, and the stream moves once.
		var wg sync.WaitGroup
		results := make([]bool, 4)
		for i := range results {
			wg.Go(func() {
				changed, err := db.ExpireTyping(ctx, room, alice, now+2000)
				if err != nil {
					t.Error(err)
				}
				results[i] = changed
			})
		}
		wg.Wait()
		n := 0
		for _, c := range results {
			if c {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("%d of the concurrent expiries reported a change", n)
		}
		after := typingPos(t, db)
		if after != before+1 {
			t.Fatalf("typing stream moved from %d to %d", before, after)
		}
		got, err := db.SyncTyping(ctx, bob, before, after, now+2000)
		if err != nil {
			t.Fatal(err)
		}
		if l, ok := got[room]; !ok || len(l) != 0 {
			t.Fatalf("the expiry in the window: %v", got)
		}
	})
}
