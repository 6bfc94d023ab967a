package roomserver

import (
	"context"
	"fmt"
	"reflect"
	"testing"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// TestRecentTimeline: the room's tail in memory gives what the database
// gives for every window it claims, and claims none that holds an event
// it lacks: past its bound, after another process wrote to the room, or
// before an event that changes older rows (an edit, a redaction).
func TestRecentTimeline(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		rs, other := newPipeline(t, db), newPipeline(t, db)
		roomID := newRoom(t, rs, "tail")
		n := 0
		send := func(rs *Roomserver, in InputRequest) string {
			t.Helper()
			resp, err := rs.HandleInput(ctx, in)
			if err != nil {
				t.Fatal(err)
			}
			return resp.EventIDs[0]
		}
		say := func(rs *Roomserver) string {
			n++
			return send(rs, msg(roomID, pAlice, fmt.Sprintf("m%d", n), fmt.Sprintf("message %d", n)))
		}
		last := func() (nid, pos int64) {
			t.Helper()
			info, err := db.Room(ctx, roomID)
			if err != nil {
				t.Fatal(err)
			}
			return info.NID, info.LastStreamPos
		}
		// check compares every window (lo, hi] of the newest positions
		// with the database, and reports the lowest lo the tail served.
		check := func() int64 {
			t.Helper()
			nid, hi := last()
			lowest := hi
			for lo := max(hi-30, 0); lo <= hi; lo++ {
				for _, limit := range []int{1, 3, 100} {
					mem, ok := rs.RecentTimeline(nid, lo, hi, limit, hi)
					if !ok {
						continue
					}
					lowest = min(lowest, lo)
					stored, err := db.RoomEventsByStream(ctx, nid, lo, hi, limit)
					if err != nil {
						t.Fatal(err)
					}
					if len(mem) == 0 && len(stored) == 0 {
						continue
					}
					if !reflect.DeepEqual(mem, stored) {
						t.Fatalf("(%d, %d] limit %d:\nin memory %+v\nstored    %+v", lo, hi, limit, mem, stored)
					}
				}
			}
			return lowest
		}

		early := say(rs)
		for _, r := range rs.handleInputs(ctx, []InputRequest{msg(roomID, pAlice, "b1", "one"), msg(roomID, pAlice, "b2", "two")}) {
			if r.err != nil {
				t.Fatal(r.err)
			}
		}
		nid, hi := last()
		// The room's creation and messages so far: all of them.
		if lo := check(); lo != 0 {
			t.Fatalf("the tail serves windows from %d, want all of the room's", lo)
		}
		// A sync whose head saw a newer event of the room is not served.
		if _, ok := rs.RecentTimeline(nid, hi-1, hi, 10, hi+1); ok {
			t.Fatal("served with the room past the tail")
		}

		// Past its bound it holds the newest tailRows events.
		for range tailRows + 4 {
			say(rs)
		}
		if _, hi := last(); check() != hi-tailRows {
			t.Fatalf("the tail serves windows from %d, want %d", check(), hi-tailRows)
		}

		// Another process writes: the tail no longer holds the room's
		// newest event, then starts again after it.
		say(other)
		_, hi = last()
		if _, ok := rs.RecentTimeline(nid, hi-1, hi, 10, hi); ok {
			t.Fatal("served a window holding another process's event")
		}
		say(rs)
		if lo := check(); lo != hi {
			t.Fatalf("after another process wrote at %d, the tail serves windows from %d", hi, lo)
		}

		relate := func(input, relType, parent string) {
			t.Helper()
			send(rs, InputRequest{InputID: input, RoomID: roomID, NewEvent: &NewEvent{Sender: pAlice, Type: "m.room.message",
				Content: js(map[string]any{"msgtype": "m.text", "body": input, "m.relates_to": map[string]string{"rel_type": relType, "event_id": parent}})}})
		}
		// A reaction is not bundled, and an edit of an event the tail no
		// longer holds changes none of its rows: the tail goes on.
		target := say(rs)
		relate("reaction", "m.annotation", target)
		relate("old edit", "m.replace", early)
		if _, hi := last(); check() != hi-4 {
			t.Fatalf("after a reaction and an edit of an old event, the tail serves windows from %d, want %d", check(), hi-4)
		}
		// An edit gives a row of the tail a bundled child; a redaction
		// changes an older row: the tail starts again after each.
		say(rs)
		relate("edit", "m.replace", target)
		say(rs)
		if _, hi := last(); check() != hi-1 {
			t.Fatalf("after an edit at %d, the tail serves windows from %d", hi-1, check())
		}
		target = say(rs)
		send(rs, InputRequest{InputID: "redact", RoomID: roomID, NewEvent: &NewEvent{Sender: pAlice, Type: "m.room.redaction", Redacts: target, Content: js(map[string]any{})}})
		say(rs)
		if _, hi := last(); check() != hi-1 {
			t.Fatalf("after a redaction at %d, the tail serves windows from %d", hi-1, check())
		}
	})
}
