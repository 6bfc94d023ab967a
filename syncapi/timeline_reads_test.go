package syncapi

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// TestTimelineWindowServe: a later window is served from the room's last
// read exactly when the read holds all of it and the room has nothing
// newer than the read.
func TestTimelineWindowServe(t *testing.T) {
	rows := func(pos ...int64) []sql.Event {
		var out []sql.Event
		for _, p := range pos {
			out = append(out, sql.Event{StreamPos: p})
		}
		return out
	}
	whole := &timelineWindow{lo: 2, hi: 10, whole: true, rows: rows(10, 8, 5, 3)}
	cut := &timelineWindow{lo: 2, hi: 10, rows: rows(10, 8)} // more lie below 8
	for _, c := range []struct {
		name     string
		w        *timelineWindow
		lo, hi   int64
		n        int
		roomLast int64
		want     []int64 // nil: not served
	}{
		{"the same window", whole, 2, 10, 5, 10, []int64{10, 8, 5, 3}},
		{"the same window, fewer", whole, 2, 10, 2, 10, []int64{10, 8}},
		{"a later since", whole, 5, 10, 5, 10, []int64{10, 8}},
		{"a lower bound", whole, 2, 8, 5, 10, []int64{8, 5, 3}},
		{"a higher bound, nothing newer in the room", whole, 2, 12, 5, 10, []int64{10, 8, 5, 3}},
		{"an empty window", whole, 10, 10, 5, 10, []int64{}},
		{"an event of the room past the read", whole, 2, 12, 5, 11, nil},
		{"an earlier since than the read's", whole, 1, 10, 5, 10, nil},
		{"a cut read, as many as it holds", cut, 2, 10, 2, 10, []int64{10, 8}},
		{"a cut read, more than it holds", cut, 2, 10, 3, 10, nil},
		{"a cut read, a since at its oldest row", cut, 8, 10, 3, 10, []int64{10}},
		{"a cut read, a since below its oldest row", cut, 7, 10, 3, 10, nil},
	} {
		got, ok := c.w.serve(c.lo, c.hi, c.n, c.roomLast)
		if ok != (c.want != nil) {
			t.Errorf("%s: served %v, want %v", c.name, ok, c.want != nil)
			continue
		}
		var pos []int64
		for _, e := range got {
			pos = append(pos, e.StreamPos)
		}
		if ok && !slices.Equal(pos, c.want) && !(len(pos) == 0 && len(c.want) == 0) {
			t.Errorf("%s: %v, want %v", c.name, pos, c.want)
		}
	}
}

// TestTimelineReadsReadOn: a sync whose window starts past the end of the
// room's last read reads on from that end, so a member whose window
// starts earlier than the first reader's is served from memory.
func TestTimelineReadsReadOn(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		room, err := db.CreateRoom(ctx, "!r:test", "11")
		if err != nil {
			t.Fatal(err)
		}
		other, err := db.CreateRoom(ctx, "!o:test", "11")
		if err != nil {
			t.Fatal(err)
		}
		add := func(roomNID, pos int64) {
			t.Helper()
			if _, err := db.InsertEvent(ctx, sql.Event{RoomNID: roomNID, EventID: fmt.Sprintf("$e%d", pos), Type: "m.room.message",
				Sender: "@u:test", StreamPos: pos, JSON: []byte(`{}`)}); err != nil {
				t.Fatal(err)
			}
		}
		positions := func(rows []sql.Event) []int64 {
			var out []int64
			for _, e := range rows {
				out = append(out, e.StreamPos)
			}
			return out
		}
		add(room, 3)
		reads := newTimelineReads(noRecentTimeline)
		if rows, err := reads.read(ctx, db, room, 1, 3, 10, 3); err != nil || !slices.Equal(positions(rows), []int64{3}) {
			t.Fatalf("first read: %v %v", positions(rows), err)
		}
		add(other, 5)
		add(room, 7)
		// The first member woken synced last at 6.
		if rows, err := reads.read(ctx, db, room, 6, 7, 10, 7); err != nil || !slices.Equal(positions(rows), []int64{7}) {
			t.Fatalf("read on: %v %v", positions(rows), err)
		}
		// Another synced last at 4: served without a read (which a
		// cancelled context would fail).
		gone, cancel := context.WithCancel(ctx)
		cancel()
		if rows, err := reads.read(gone, db, room, 4, 7, 10, 7); err != nil || !slices.Equal(positions(rows), []int64{7}) {
			t.Fatalf("second member: %v %v", positions(rows), err)
		}
		// One that synced last before the room's previous event reads it.
		if rows, err := reads.read(ctx, db, room, 2, 7, 10, 7); err != nil || !slices.Equal(positions(rows), []int64{7, 3}) {
			t.Fatalf("an older since: %v %v", positions(rows), err)
		}
	})
}

// noRecentTimeline is a roomserver memory that holds no room's events.
func noRecentTimeline(int64, int64, int64, int, int64) ([]sql.Event, bool) { return nil, false }
