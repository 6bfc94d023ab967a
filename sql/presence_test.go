package sql_test

import (
	"context"
	"slices"
	"sync"
	"testing"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// putPresence writes p over what the user has (read first), taking a
// position, and returns the stored row.
func putPresence(t *testing.T, db *sql.DB, p sql.Presence) sql.Presence {
	t.Helper()
	ctx := context.Background()
	prev, err := db.PresenceOf(ctx, p.UserID)
	if err != nil && err != sql.ErrNotFound {
		t.Fatal(err)
	}
	applied, err := db.ApplyPresence(ctx, []sql.PresenceChange{{Prev: prev, Next: p, Notify: true}})
	if err != nil || !applied[0] {
		t.Fatalf("write %+v: applied %v, %v", p, applied, err)
	}
	got, err := db.PresenceOf(ctx, p.UserID)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func users(ps []sql.Presence) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.UserID)
	}
	return out
}

func TestPresenceWrites(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		if _, err := db.PresenceOf(ctx, "@a:x"); err != sql.ErrNotFound {
			t.Fatalf("no row: %v, want ErrNotFound", err)
		}
		start, err := db.StreamPos(ctx, sql.PresenceStream)
		if err != nil {
			t.Fatal(err)
		}
		want := sql.Presence{UserID: "@a:x", State: "online", StatusMsg: "hi", LastActiveTS: 10, LastSyncTS: 40,
			CurrentlyActive: true, TimerTS: 70}
		got := putPresence(t, db, want)
		want.StreamPos = start + 1
		if got != want {
			t.Fatalf("stored %+v, want %+v", got, want)
		}

		// A plain write keeps the position and takes none.
		plain := got
		plain.LastSyncTS = 90
		applied, err := db.ApplyPresence(ctx, []sql.PresenceChange{{Prev: got, Next: plain}})
		if err != nil || !applied[0] {
			t.Fatalf("plain write: %v %v", applied, err)
		}
		if p, _ := db.PresenceOf(ctx, "@a:x"); p != plain {
			t.Fatalf("after a plain write %+v, want %+v", p, plain)
		}
		if pos, _ := db.StreamPos(ctx, sql.PresenceStream); pos != start+1 {
			t.Fatalf("a plain write moved the stream to %d", pos)
		}

		// A writer that read the row before the plain write loses: its
		// change does not apply, and the row stays as it is.
		stale := got
		stale.State = "offline"
		applied, err = db.ApplyPresence(ctx, []sql.PresenceChange{{Prev: got, Next: stale, Notify: true}})
		if err != nil || applied[0] {
			t.Fatalf("stale write applied (%v, %v)", applied, err)
		}
		if p, _ := db.PresenceOf(ctx, "@a:x"); p != plain {
			t.Fatalf("stale write changed the row to %+v", p)
		}
		// So does one that thinks the row does not exist yet.
		applied, err = db.ApplyPresence(ctx, []sql.PresenceChange{{Prev: sql.Presence{UserID: "@a:x"}, Next: stale, Notify: true}})
		if err != nil || applied[0] {
			t.Fatalf("insert over an existing row applied (%v, %v)", applied, err)
		}

		// A batch: each change applies on its own.
		b := putPresence(t, db, sql.Presence{UserID: "@b:x", State: "online", TimerTS: 5})
		cur, _ := db.PresenceOf(ctx, "@a:x")
		nextA, nextB := cur, b
		nextA.State, nextA.TimerTS = "unavailable", 0
		nextB.State, nextB.TimerTS = "offline", 0
		applied, err = db.ApplyPresence(ctx, []sql.PresenceChange{
			{Prev: cur, Next: nextA, Notify: true},
			{Prev: got, Next: nextA, Notify: true}, // stale
			{Prev: b, Next: nextB, Notify: true},
		})
		if err != nil || !slices.Equal(applied, []bool{true, false, true}) {
			t.Fatalf("batch applied %v, %v", applied, err)
		}
		pa, _ := db.PresenceOf(ctx, "@a:x")
		pb, _ := db.PresenceOf(ctx, "@b:x")
		if pa.State != "unavailable" || pb.State != "offline" || pa.StreamPos == pb.StreamPos || pa.StreamPos <= b.StreamPos {
			t.Fatalf("after the batch: %+v %+v", pa, pb)
		}
	})
}

// TestPresenceConcurrentWriters: writers that read the same row never
// both move it, on either engine.
func TestPresenceConcurrentWriters(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		base := putPresence(t, db, sql.Presence{UserID: "@a:x", State: "online", LastActiveTS: 1, TimerTS: 1})
		const writers = 8
		results := make([]bool, writers)
		var wg sync.WaitGroup
		for i := range writers {
			wg.Go(func() {
				next := base
				next.State, next.TimerTS = "offline", 0
				applied, err := db.ApplyPresence(ctx, []sql.PresenceChange{{Prev: base, Next: next, Notify: true}})
				if err != nil {
					t.Error(err)
					return
				}
				results[i] = applied[0]
			})
		}
		wg.Wait()
		n := 0
		for _, ok := range results {
			if ok {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("%d of %d writers moved the row, want exactly 1", n, writers)
		}
	})
}

func TestPresenceDue(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		putPresence(t, db, sql.Presence{UserID: "@late:x", State: "online", TimerTS: 300})
		putPresence(t, db, sql.Presence{UserID: "@early:x", State: "online", TimerTS: 100})
		putPresence(t, db, sql.Presence{UserID: "@later:x", State: "online", TimerTS: 900})
		putPresence(t, db, sql.Presence{UserID: "@off:x", State: "offline"})
		due, err := db.DuePresence(ctx, 300, 10)
		if err != nil {
			t.Fatal(err)
		}
		if got := users(due); !slices.Equal(got, []string{"@early:x", "@late:x"}) {
			t.Fatalf("due at 300: %v", got)
		}
		if due, _ := db.DuePresence(ctx, 1000, 1); len(due) != 1 || due[0].UserID != "@early:x" {
			t.Fatalf("limit 1: %v", users(due))
		}
	})
}

// presenceRooms makes !shared (alice, bob joined; dave invited) and
// !other (carol joined, erin left).
func presenceRooms(t *testing.T, db *sql.DB) (shared, other int64) {
	t.Helper()
	ctx := context.Background()
	var err error
	if shared, err = db.CreateRoom(ctx, "!shared:x", "11"); err != nil {
		t.Fatal(err)
	}
	if other, err = db.CreateRoom(ctx, "!other:x", "11"); err != nil {
		t.Fatal(err)
	}
	for _, m := range []struct {
		room       int64
		user, mm   string
		event, pos int64
	}{
		{shared, "@alice:x", "join", 1, 1},
		{shared, "@bob:x", "join", 2, 2},
		{shared, "@dave:x", "invite", 3, 3},
		{other, "@carol:x", "join", 4, 4},
		{other, "@alice:x", "leave", 5, 5},
		{other, "@erin:x", "leave", 6, 6},
	} {
		if err := db.SetMembership(ctx, m.room, m.user, m.mm, m.event, m.pos); err != nil {
			t.Fatal(err)
		}
	}
	return shared, other
}

// TestPresenceVisibility: a user sees their own presence and that of the
// users joined to a room they are joined to; an invite or a past
// membership is not enough.
func TestPresenceVisibility(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		presenceRooms(t, db)
		var rows []sql.Presence
		for _, u := range []string{"@alice:x", "@bob:x", "@carol:x", "@dave:x", "@erin:x"} {
			rows = append(rows, putPresence(t, db, sql.Presence{UserID: u, State: "online"}))
		}
		upper := rows[len(rows)-1].StreamPos
		changed, err := db.PresenceChanged(ctx, "@alice:x", 0, upper, 10)
		if err != nil {
			t.Fatal(err)
		}
		if got := users(changed); !slices.Equal(got, []string{"@alice:x", "@bob:x"}) {
			t.Fatalf("alice sees %v", got)
		}
		// The window bounds it: bob changed at rows[1].
		if changed, _ := db.PresenceChanged(ctx, "@alice:x", rows[0].StreamPos, rows[1].StreamPos, 10); !slices.Equal(users(changed), []string{"@bob:x"}) {
			t.Fatalf("alice's window (a, b]: %v", users(changed))
		}
		if changed, _ := db.PresenceChanged(ctx, "@alice:x", rows[1].StreamPos, upper, 10); len(changed) != 0 {
			t.Fatalf("alice sees strangers: %v", users(changed))
		}
		if changed, _ := db.PresenceChanged(ctx, "@carol:x", 0, upper, 10); !slices.Equal(users(changed), []string{"@carol:x"}) {
			t.Fatalf("carol sees %v", users(changed))
		}
		// dave is only invited: himself.
		if changed, _ := db.PresenceChanged(ctx, "@dave:x", 0, upper, 10); !slices.Equal(users(changed), []string{"@dave:x"}) {
			t.Fatalf("dave sees %v", users(changed))
		}
		for _, c := range []struct {
			a, b string
			want bool
		}{
			{"@alice:x", "@bob:x", true}, {"@bob:x", "@alice:x", true},
			{"@alice:x", "@carol:x", false}, {"@alice:x", "@dave:x", false}, {"@alice:x", "@erin:x", false},
			{"@alice:x", "@nobody:x", false},
		} {
			if got, err := db.SharesJoinedRoom(ctx, c.a, c.b); err != nil || got != c.want {
				t.Errorf("SharesJoinedRoom(%s, %s) = %v, %v", c.a, c.b, got, err)
			}
		}
		rooms, err := db.JoinedRoomsOf(ctx, []string{"@alice:x", "@bob:x", "@erin:x"})
		if err != nil || !slices.Equal(rooms, []string{"!shared:x"}) {
			t.Fatalf("JoinedRoomsOf = %v, %v", rooms, err)
		}
	})
}

func TestPresenceOfPeers(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		shared, _ := presenceRooms(t, db)
		putPresence(t, db, sql.Presence{UserID: "@alice:x", State: "offline"})
		putPresence(t, db, sql.Presence{UserID: "@carol:x", State: "online"})
		b := putPresence(t, db, sql.Presence{UserID: "@bob:x", State: "unavailable"})
		got, err := db.PresenceOfPeers(ctx, "@alice:x", b.StreamPos, 10)
		if err != nil || !slices.Equal(users(got), []string{"@bob:x"}) {
			t.Fatalf("alice's peers: %v, %v (offline and strangers left out)", users(got), err)
		}
		// Changed after upper: the next sync's.
		if got, _ := db.PresenceOfPeers(ctx, "@alice:x", b.StreamPos-1, 10); len(got) != 0 {
			t.Fatalf("rows past upper: %v", users(got))
		}
		// Newly shared rooms: frank joins !shared at events position 10.
		f := putPresence(t, db, sql.Presence{UserID: "@frank:x", State: "online"})
		if err := db.SetMembership(ctx, shared, "@frank:x", "join", 10, 10); err != nil {
			t.Fatal(err)
		}
		got, err = db.PresenceOfNewPeers(ctx, "@alice:x", 9, 10, f.StreamPos, 10)
		if err != nil || !slices.Equal(users(got), []string{"@frank:x"}) {
			t.Fatalf("alice's new peers in (9, 10]: %v, %v", users(got), err)
		}
		// Frank himself joined in the window: everyone in the room is new
		// to him (bob; alice is offline).
		got, _ = db.PresenceOfNewPeers(ctx, "@frank:x", 9, 10, f.StreamPos, 10)
		if !slices.Equal(users(got), []string{"@bob:x"}) {
			t.Fatalf("frank's new peers: %v", users(got))
		}
		if got, _ := db.PresenceOfNewPeers(ctx, "@alice:x", 10, 20, f.StreamPos, 10); len(got) != 0 {
			t.Fatalf("nothing joined in (10, 20], got %v", users(got))
		}
	})
}
