package sql_test

import (
	"context"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

func TestPushCountChanges(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		r1, err := db.CreateRoom(ctx, "!a:hs", "12")
		if err != nil {
			t.Fatal(err)
		}
		r2, err := db.CreateRoom(ctx, "!b:hs", "12")
		if err != nil {
			t.Fatal(err)
		}
		const u, v = "@alice:hs", "@bob:hs"
		note := func(room int64, users ...string) int64 {
			t.Helper()
			pos, err := db.NoteCountChanges(ctx, room, users)
			if err != nil {
				t.Fatal(err)
			}
			return pos
		}
		// The rooms whose counts changed after position after, up to now,
		// as a sync's head reads them.
		changes := func(user string, after int64) []string {
			t.Helper()
			head, err := db.SyncHead(ctx, sql.SyncHeadRequest{UserID: user, CountsSince: after, WantCountChanges: true})
			if err != nil {
				t.Fatal(err)
			}
			slices.Sort(head.CountChanges)
			return head.CountChanges
		}
		start, err := db.SyncPositions(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if pos := note(r1); pos != 0 {
			t.Fatalf("nobody to note took position %d", pos)
		}
		p1 := note(r1, u, v, u) // a user twice is one row
		if got := changes(u, start.Notifications); !slices.Equal(got, []string{"!a:hs"}) {
			t.Fatalf("alice's changes up to %d: %v", p1, got)
		}
		p2 := note(r2, u)
		if p1 != start.Notifications+1 || p2 != p1+1 {
			t.Fatalf("positions %d, %d after %d", p1, p2, start.Notifications)
		}
		if now, _ := db.SyncPositions(ctx); now.Notifications != p2 {
			t.Fatalf("stream at %d, want %d", now.Notifications, p2)
		}
		if got := changes(u, start.Notifications); !slices.Equal(got, []string{"!a:hs", "!b:hs"}) {
			t.Fatalf("alice's changes %v", got)
		}
		if got := changes(u, p1); !slices.Equal(got, []string{"!b:hs"}) {
			t.Fatalf("alice's changes after %d: %v", p1, got)
		}
		if got := changes(v, p1); len(got) != 0 {
			t.Fatalf("bob's changes after %d: %v", p1, got)
		}
		// A later change moves the room's row to the later window.
		p3 := note(r1, v)
		if got := changes(v, p2); !slices.Equal(got, []string{"!a:hs"}) {
			t.Fatalf("bob's changes after %d: %v", p2, got)
		}
		if got := changes(v, p3); len(got) != 0 {
			t.Fatalf("bob's changes after %d: %v", p3, got)
		}
		// Changes in several rooms take one position together.
		p4, err := db.NoteCountChangesIn(ctx, map[int64][]string{r1: {v}, r2: {v, u}})
		if err != nil || p4 != p3+1 {
			t.Fatalf("changes in two rooms at %d (%v), want %d", p4, err, p3+1)
		}
		if got := changes(v, p3); !slices.Equal(got, []string{"!a:hs", "!b:hs"}) {
			t.Fatalf("bob's changes after %d: %v", p3, got)
		}
		if got := changes(u, p3); !slices.Equal(got, []string{"!b:hs"}) {
			t.Fatalf("alice's changes after %d: %v", p3, got)
		}
		// Not asked for, not read.
		if head, err := db.SyncHead(ctx, sql.SyncHeadRequest{UserID: v}); err != nil || len(head.CountChanges) != 0 {
			t.Fatalf("count changes not asked for: %v %v", head.CountChanges, err)
		}
	})
}

func TestUnreadCountsInRooms(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		var rooms []int64
		for _, id := range []string{"!a:hs", "!b:hs", "!c:hs"} {
			nid, err := db.CreateRoom(ctx, id, "12")
			if err != nil {
				t.Fatal(err)
			}
			rooms = append(rooms, nid)
		}
		const u = "@alice:hs"
		add := func(room, pos int64, thread string, hl bool) {
			t.Helper()
			if err := db.AddPushNotifications(ctx, room, pos, pos, []sql.PushNotification{{UserID: u, ThreadID: thread, Highlight: hl}}); err != nil {
				t.Fatal(err)
			}
		}
		add(rooms[0], 1, "main", false)
		add(rooms[0], 2, "$root", true)
		add(rooms[1], 3, "main", true)
		add(rooms[2], 4, "main", false)
		add(rooms[0], 5, "main", false)
		nc := func(n, h int64) sql.NotificationCounts {
			return sql.NotificationCounts{NotificationCount: n, HighlightCount: h}
		}

		got, err := db.UnreadCountsInRooms(ctx, u, rooms[:2], 4, nil)
		if err != nil {
			t.Fatal(err)
		}
		// Room c was not asked for; the event at 5 lies beyond upTo.
		if len(got) != 2 || got["!a:hs"].NotificationCounts != nc(2, 1) || got["!a:hs"].Main != nc(1, 0) ||
			got["!a:hs"].Threads["$root"] != nc(1, 1) || got["!b:hs"].NotificationCounts != nc(1, 1) {
			t.Fatalf("counts %+v", got)
		}
		// Read markers apply as in UnreadCounts.
		if err := db.ResetCounts(ctx, u, "!a:hs", "main", 5); err != nil {
			t.Fatal(err)
		}
		if got, err = db.UnreadCountsInRooms(ctx, u, rooms, 5, nil); err != nil {
			t.Fatal(err)
		}
		if len(got) != 3 || got["!a:hs"].NotificationCounts != nc(1, 1) || got["!a:hs"].Main != nc(0, 0) || got["!c:hs"].NotificationCounts != nc(1, 0) {
			t.Fatalf("after the receipt: %+v", got)
		}
		// The user's membership event reads the main timeline up to it
		// (their join, before the counter gets to it): the invite at 6
		// no longer counts once they join at 7; a thread does.
		add(rooms[1], 6, "main", false)
		add(rooms[1], 7, "$t", false)
		if err := db.SetMembership(ctx, rooms[1], u, "invite", 6, 6); err != nil {
			t.Fatal(err)
		}
		if err := db.SetMembership(ctx, rooms[1], u, "join", 8, 8); err != nil {
			t.Fatal(err)
		}
		add(rooms[1], 9, "main", false)
		if got, err = db.UnreadCountsInRooms(ctx, u, rooms[1:2], 9, nil); err != nil {
			t.Fatal(err)
		}
		if got["!b:hs"].NotificationCounts != nc(2, 0) || got["!b:hs"].Main != nc(1, 0) || got["!b:hs"].Threads["$t"] != nc(1, 0) {
			t.Fatalf("after joining: %+v", got)
		}
		if got, err = db.UnreadCountsInRooms(ctx, u, nil, 5, nil); err != nil || len(got) != 0 {
			t.Fatalf("no rooms: %+v %v", got, err)
		}
	})
}

// TestUnreadCountsFromHead: the summaries a sync's head reads (the joined
// rooms with events after the token, or with count changes) give the
// counts UnreadCountsInRooms reads itself, without reading them again:
// all read, counted exactly, counted past upTo, in threads, and none at
// all; a room the head did not cover is still read.
func TestUnreadCountsFromHead(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		const u = "@alice:hs"
		const since, upTo = 5, 10
		start, err := db.SyncPositions(ctx)
		if err != nil {
			t.Fatal(err)
		}
		nids := map[string]int64{}
		// Each room: the last position of its events, the user's join.
		for _, r := range []struct {
			id         string
			last, join int64
		}{
			{"!all:hs", upTo, 8},      // invited at 6, joined at 8
			{"!inexact:hs", upTo, 2},  // joined between its notifications
			{"!after:hs", upTo, 0},    // counted past upTo
			{"!none:hs", upTo, 0},     // nothing to count
			{"!quiet:hs", since, 0},   // no news: not covered
			{"!changed:hs", since, 0}, // no events, but count changes
		} {
			nid, err := db.CreateRoom(ctx, r.id, "12")
			if err != nil {
				t.Fatal(err)
			}
			info, err := db.Room(ctx, r.id)
			if err != nil {
				t.Fatal(err)
			}
			info.Extremities, info.LastStreamPos = []string{}, r.last
			if err := db.UpdateRoom(ctx, info); err != nil {
				t.Fatal(err)
			}
			if err := db.SetMembership(ctx, nid, u, "join", r.join, r.join); err != nil {
				t.Fatal(err)
			}
			nids[r.id] = nid
		}
		add := func(room string, pos int64, thread string, hl bool) {
			t.Helper()
			if err := db.AddPushNotifications(ctx, nids[room], pos, pos, []sql.PushNotification{{UserID: u, ThreadID: thread, Highlight: hl}}); err != nil {
				t.Fatal(err)
			}
		}
		add("!inexact:hs", 1, "main", false)
		add("!inexact:hs", 3, "main", false)
		add("!after:hs", 4, "main", false)
		add("!after:hs", 5, "$t", true)
		add("!all:hs", 6, "main", false)
		add("!quiet:hs", 7, "main", false)
		add("!changed:hs", 9, "$u", false)
		add("!after:hs", 11, "main", false)
		if _, err := db.NoteCountChanges(ctx, nids["!changed:hs"], []string{u}); err != nil {
			t.Fatal(err)
		}

		head, err := db.SyncHead(ctx, sql.SyncHeadRequest{UserID: u, CountsSince: start.Notifications, WantCountChanges: true,
			UnreadSince: since, WantUnread: true})
		if err != nil {
			t.Fatal(err)
		}
		nc := func(n, h int64) sql.NotificationCounts {
			return sql.NotificationCounts{NotificationCount: n, HighlightCount: h}
		}
		want := map[string]sql.UnreadCounts{
			"!inexact:hs": {NotificationCounts: nc(1, 0), Main: nc(1, 0)},
			"!after:hs":   {NotificationCounts: nc(2, 1), Main: nc(1, 0), Threads: map[string]sql.NotificationCounts{"$t": nc(1, 1)}},
			"!quiet:hs":   {NotificationCounts: nc(1, 0), Main: nc(1, 0)},
			"!changed:hs": {NotificationCounts: nc(1, 0), Threads: map[string]sql.NotificationCounts{"$u": nc(1, 0)}},
		}
		covered := []int64{nids["!all:hs"], nids["!inexact:hs"], nids["!after:hs"], nids["!none:hs"], nids["!changed:hs"]}
		all := append(slices.Clone(covered), nids["!quiet:hs"])
		for _, c := range []struct {
			what      string
			rooms     []int64
			summaries int
		}{
			{"the covered rooms", covered, 0},
			{"every room", all, 1},
		} {
			q, queries := db.RecordingForTest()
			got, err := q.UnreadCountsInRooms(ctx, u, c.rooms, upTo, head.Unread)
			if err != nil {
				t.Fatal(err)
			}
			old, err := db.UnreadCountsInRooms(ctx, u, c.rooms, upTo, nil)
			if err != nil {
				t.Fatal(err)
			}
			wantHere := maps.Clone(want)
			if c.summaries == 0 {
				delete(wantHere, "!quiet:hs")
			}
			if !maps.EqualFunc(got, wantHere, equalCounts) || !maps.EqualFunc(old, wantHere, equalCounts) {
				t.Errorf("%s: counts from the head %+v, read %+v, want %+v", c.what, got, old, wantHere)
			}
			read := 0
			for _, q := range *queries {
				if strings.Contains(q, "FROM push_summaries") {
					read++
				}
			}
			// The exact count and the notifications after upTo run in
			// both.
			if read != c.summaries || len(*queries) != c.summaries+2 {
				t.Errorf("%s: %d summary reads, want %d, in %q", c.what, read, c.summaries, *queries)
			}
		}
	})
}
