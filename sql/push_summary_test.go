package sql_test

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"testing"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// TestUnreadCountsSummaryModel runs random notifications, receipts,
// redactions, leaves and joins, in and out of stream order (a redelivered
// event, a receipt ahead of the counter), and checks after each step that
// the counts UnreadCountsInRooms reads (from the summaries, or counted
// where a summary cannot tell) are those a plain model of the rules gives,
// from the summaries it reads and from those a sync's head read (of the
// rooms the user joined, all with count changes here).
func TestUnreadCountsSummaryModel(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		rng := rand.New(rand.NewPCG(1, 2))
		roomIDs := []string{"!a:hs", "!b:hs"}
		var rooms []int64
		for _, id := range roomIDs {
			nid, err := db.CreateRoom(ctx, id, "12")
			if err != nil {
				t.Fatal(err)
			}
			rooms = append(rooms, nid)
		}
		users := []string{"@u0:hs", "@u1:hs", "@u2:hs"}
		threads := []string{"main", "main", "$t1", "$t2"}
		start, err := db.SyncPositions(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, nid := range rooms {
			if _, err := db.NoteCountChanges(ctx, nid, users); err != nil {
				t.Fatal(err)
			}
		}
		m := newCountModel()
		pos := int64(0)
		type eventAt struct {
			room   int
			thread string
		}
		events := make(map[int64]eventAt)
		for step := range 400 {
			room := rng.IntN(len(rooms))
			var what string
			switch op := rng.IntN(20); {
			case op < 11:
				// A new event, or (one in four) an earlier one again or
				// late.
				p := pos + 1
				if rng.IntN(4) == 0 && pos > 0 {
					p = 1 + rng.Int64N(pos)
				} else {
					pos = p
				}
				thread := threads[rng.IntN(len(threads))]
				// An event has one room and one thread, however often
				// it comes.
				if e, ok := events[p]; ok {
					room, thread = e.room, e.thread
				} else {
					events[p] = eventAt{room, thread}
				}
				var ns []sql.PushNotification
				for _, u := range users {
					if rng.IntN(3) > 0 {
						ns = append(ns, sql.PushNotification{UserID: u, ThreadID: thread, Highlight: rng.IntN(3) == 0})
					}
				}
				what = fmt.Sprintf("event %d in %s/%s for %d users", p, roomIDs[room], thread, len(ns))
				if err := db.AddPushNotifications(ctx, rooms[room], p, p, ns); err != nil {
					t.Fatal(err)
				}
				m.add(room, p, ns)
			case op < 14:
				u := users[rng.IntN(len(users))]
				thread := []string{"", "main", "$t1"}[rng.IntN(3)]
				upTo := rng.Int64N(pos + 2)
				what = fmt.Sprintf("receipt of %s in %s/%q at %d", u, roomIDs[room], thread, upTo)
				if err := db.ResetCounts(ctx, u, roomIDs[room], thread, upTo); err != nil {
					t.Fatal(err)
				}
				m.reset(u, room, thread, upTo)
			case op < 16:
				// Several reads at once, as the push counter's batch
				// makes them, some of one user's room and thread.
				var reads []sql.ReadUpTo
				for range 2 + rng.IntN(4) {
					r := rng.IntN(len(rooms))
					read := sql.ReadUpTo{UserID: users[rng.IntN(len(users))], RoomNID: rooms[r],
						ThreadID: []string{"", "main", "$t1"}[rng.IntN(3)], UpTo: rng.Int64N(pos + 2)}
					reads = append(reads, read)
					m.reset(read.UserID, r, read.ThreadID, read.UpTo)
				}
				what = fmt.Sprintf("reads %+v", reads)
				if err := db.ResetCountsIn(ctx, reads); err != nil {
					t.Fatal(err)
				}
			case op < 17:
				nid := 1 + rng.Int64N(pos+1)
				what = fmt.Sprintf("redaction of %d", nid)
				if _, err := db.DeleteEventPushNotifications(ctx, nid); err != nil {
					t.Fatal(err)
				}
				m.redact(nid)
			case op < 18:
				u := users[rng.IntN(len(users))]
				what = fmt.Sprintf("%s leaves %s", u, roomIDs[room])
				if err := db.DeleteRoomPushNotifications(ctx, u, rooms[room]); err != nil {
					t.Fatal(err)
				}
				m.leave(u, room)
			default:
				u := users[rng.IntN(len(users))]
				pos++
				what = fmt.Sprintf("%s joins %s at %d", u, roomIDs[room], pos)
				if err := db.SetMembership(ctx, rooms[room], u, "join", pos, pos); err != nil {
					t.Fatal(err)
				}
				m.member[memberKey{u, room}] = pos
			}
			for _, u := range users {
				upTo := pos - rng.Int64N(3)
				got, err := db.UnreadCountsInRooms(ctx, u, rooms, upTo, nil)
				if err != nil {
					t.Fatal(err)
				}
				want := m.counts(u, roomIDs, upTo)
				if !maps.EqualFunc(got, want, equalCounts) {
					t.Fatalf("step %d (%s): %s up to %d: got %+v, want %+v", step, what, u, upTo, got, want)
				}
				head, err := db.SyncHead(ctx, sql.SyncHeadRequest{UserID: u, CountsSince: start.Notifications, WantCountChanges: true,
					UnreadSince: pos, WantUnread: true})
				if err != nil {
					t.Fatal(err)
				}
				if got, err = db.UnreadCountsInRooms(ctx, u, rooms, upTo, head.Unread); err != nil {
					t.Fatal(err)
				}
				if !maps.EqualFunc(got, want, equalCounts) {
					t.Fatalf("step %d (%s): %s up to %d from the head: got %+v, want %+v", step, what, u, upTo, got, want)
				}
			}
		}
	})
}

// TestUnreadCountsSummaryExact checks that the summaries themselves stay
// exact when the counter goes in stream order, as it does: only then do
// readers take them as they are instead of counting.
func TestUnreadCountsSummaryExact(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		rng := rand.New(rand.NewPCG(3, 4))
		room, err := db.CreateRoom(ctx, "!a:hs", "12")
		if err != nil {
			t.Fatal(err)
		}
		users := []string{"@u0:hs", "@u1:hs"}
		threads := []string{"main", "$t1"}
		m := newCountModel()
		for pos := int64(1); pos <= 150; pos++ {
			switch op := rng.IntN(10); {
			case op < 7:
				thread := threads[rng.IntN(len(threads))]
				var ns []sql.PushNotification
				for _, u := range users {
					if rng.IntN(3) > 0 {
						ns = append(ns, sql.PushNotification{UserID: u, ThreadID: thread, Highlight: rng.IntN(3) == 0})
					}
				}
				if err := db.AddPushNotifications(ctx, room, pos, pos, ns); err != nil {
					t.Fatal(err)
				}
				m.add(0, pos, ns)
			case op < 9:
				u, thread := users[rng.IntN(len(users))], []string{"", "main", "$t1"}[rng.IntN(3)]
				upTo := pos - rng.Int64N(5)
				if err := db.ResetCounts(ctx, u, "!a:hs", thread, upTo); err != nil {
					t.Fatal(err)
				}
				m.reset(u, 0, thread, upTo)
			default:
				nid := 1 + rng.Int64N(pos)
				if _, err := db.DeleteEventPushNotifications(ctx, nid); err != nil {
					t.Fatal(err)
				}
				m.redact(nid)
			}
			for _, u := range users {
				got, err := db.PushSummariesForTest(ctx, u, room)
				if err != nil {
					t.Fatal(err)
				}
				want := map[string][2]int64{}
				c := m.counts(u, []string{"!a:hs"}, pos)["!a:hs"]
				if c.Main.NotificationCount > 0 {
					want["main"] = [2]int64{c.Main.NotificationCount, c.Main.HighlightCount}
				}
				for th, tc := range c.Threads {
					want[th] = [2]int64{tc.NotificationCount, tc.HighlightCount}
				}
				if !maps.Equal(got, want) {
					t.Fatalf("at %d: %s's summaries %v, want %v", pos, u, got, want)
				}
			}
		}
	})
}

func equalCounts(a, b sql.UnreadCounts) bool {
	return a.NotificationCounts == b.NotificationCounts && a.Main == b.Main && maps.Equal(a.Threads, b.Threads)
}

// countModel is what the counts mean, without any of the bookkeeping.
type countModel struct {
	notes  map[noteKey]modelNote
	marker map[markerKey]int64
	member map[memberKey]int64
}

type noteKey struct {
	user string
	nid  int64
}

type modelNote struct {
	room   int
	thread string
	hl     bool
}

type markerKey struct {
	user   string
	room   int
	thread string
}

type memberKey struct {
	user string
	room int
}

func newCountModel() *countModel {
	return &countModel{notes: map[noteKey]modelNote{}, marker: map[markerKey]int64{}, member: map[memberKey]int64{}}
}

// add records an event's notifications; an event id is also its stream
// position here.
func (m *countModel) add(room int, nid int64, ns []sql.PushNotification) {
	for _, n := range ns {
		k := noteKey{n.UserID, nid}
		if _, ok := m.notes[k]; !ok {
			m.notes[k] = modelNote{room, n.ThreadID, n.Highlight}
		}
	}
}

func (m *countModel) reset(user string, room int, thread string, upTo int64) {
	k := markerKey{user, room, thread}
	m.marker[k] = max(m.marker[k], upTo)
	for nk, n := range m.notes {
		if nk.user == user && n.room == room && nk.nid <= upTo && (thread == "" || thread == n.thread) {
			delete(m.notes, nk)
		}
	}
}

func (m *countModel) redact(nid int64) {
	for nk := range m.notes {
		if nk.nid == nid {
			delete(m.notes, nk)
		}
	}
}

func (m *countModel) leave(user string, room int) {
	for nk, n := range m.notes {
		if nk.user == user && n.room == room {
			delete(m.notes, nk)
		}
	}
}

func (m *countModel) counts(user string, roomIDs []string, upTo int64) map[string]sql.UnreadCounts {
	out := map[string]sql.UnreadCounts{}
	for nk, n := range m.notes {
		read := max(m.marker[markerKey{user, n.room, ""}], m.marker[markerKey{user, n.room, n.thread}])
		if n.thread == "main" {
			read = max(read, m.member[memberKey{user, n.room}])
		}
		if nk.user != user || nk.nid > upTo || nk.nid <= read {
			continue
		}
		c := out[roomIDs[n.room]]
		one := sql.NotificationCounts{NotificationCount: 1}
		if n.hl {
			one.HighlightCount = 1
		}
		c.NotificationCount += one.NotificationCount
		c.HighlightCount += one.HighlightCount
		if n.thread == "main" {
			c.Main.NotificationCount += one.NotificationCount
			c.Main.HighlightCount += one.HighlightCount
		} else {
			if c.Threads == nil {
				c.Threads = map[string]sql.NotificationCounts{}
			}
			t := c.Threads[n.thread]
			t.NotificationCount += one.NotificationCount
			t.HighlightCount += one.HighlightCount
			c.Threads[n.thread] = t
		}
		out[roomIDs[n.room]] = c
	}
	return out
}

// BenchmarkUnreadCounts reads a user's counts in 50 rooms of 100 unread
// notifications each, as a sync does: from the summaries, and by counting
// the notifications (UnreadCountsByRoom, what /sync did before them).
func BenchmarkUnreadCounts(b *testing.B) {
	for _, e := range sqltest.Engines() {
		b.Run(string(e), func(b *testing.B) {
			ctx := context.Background()
			db := sqltest.Open(b, e)
			const u = "@alice:hs"
			var rooms []int64
			nid := int64(0)
			for r := range 50 {
				room, err := db.CreateRoom(ctx, fmt.Sprintf("!r%d:hs", r), "12")
				if err != nil {
					b.Fatal(err)
				}
				rooms = append(rooms, room)
				for range 100 {
					nid++
					ns := []sql.PushNotification{{UserID: u, ThreadID: "main"}, {UserID: "@bob:hs", ThreadID: "main"}}
					if err := db.AddPushNotifications(ctx, room, nid, nid, ns); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.Run("summaries", func(b *testing.B) {
				for b.Loop() {
					c, err := db.UnreadCountsInRooms(ctx, u, rooms, nid, nil)
					if err != nil || len(c) != 50 {
						b.Fatal(len(c), err)
					}
				}
			})
			b.Run("counting", func(b *testing.B) {
				for b.Loop() {
					c, err := db.UnreadCountsByRoom(ctx, u)
					if err != nil || len(c) != 50 {
						b.Fatal(len(c), err)
					}
				}
			})
		})
	}
}
