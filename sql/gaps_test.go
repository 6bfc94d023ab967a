package sql_test

import (
	"context"
	"slices"
	"testing"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// A gap is recorded at a timeline event for each prev event that is
// neither in the timeline nor rejected nor of another room (unknown, or
// an outlier); GapsIn lists a room's gaps in a range, newest first; a
// claimed gap backs off; a gap goes when its prev event is cleared or its
// event dropped.
func TestGaps(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		var stream int64
		room := newTimelineRoom(t, db, "!a:test", &stream)
		other := newTimelineRoom(t, db, "!b:test", &stream)
		room.add(storedEvent{id: "$a", depth: 1})
		b := room.add(storedEvent{id: "$b", depth: 2})
		room.add(storedEvent{id: "$out", depth: 3, outlier: true})
		room.add(storedEvent{id: "$rej", depth: 3, outlier: true, rejected: true})
		other.add(storedEvent{id: "$x", depth: 3})
		c := room.add(storedEvent{id: "$c", depth: 5})
		d := room.add(storedEvent{id: "$d", depth: 6})
		record := func() {
			t.Helper()
			var rows []sql.GapRow
			for _, prev := range []string{"$b", "$missing", "$out", "$rej", "$x"} {
				rows = append(rows, sql.GapRow{RoomNID: room.nid, EventNID: c.NID, Prev: prev})
			}
			rows = append(rows, sql.GapRow{RoomNID: room.nid, EventNID: d.NID, Prev: "$c"}, sql.GapRow{RoomNID: room.nid, EventNID: d.NID, Prev: "$missing2"})
			if err := db.RunPipeline(ctx, func(p *sql.Pipeline) error { p.RecordGaps(rows); return nil }); err != nil {
				t.Fatal(err)
			}
		}
		record()
		record() // twice: still once
		gaps := func(lo, hi sql.TopoPos) []string {
			t.Helper()
			gs, err := db.GapsIn(ctx, room.nid, lo, hi, 10)
			if err != nil {
				t.Fatal(err)
			}
			var out []string
			for _, g := range gs {
				ev := map[int64]string{c.NID: "$c", d.NID: "$d"}[g.EventNID]
				if want := map[int64]sql.TopoPos{c.NID: c.Key(), d.NID: d.Key()}[g.EventNID]; g.Key != want {
					t.Errorf("gap at %s has position %v, want %v", ev, g.Key, want)
				}
				out = append(out, ev+"<"+g.Prev)
			}
			return out
		}
		if got, want := gaps(sql.TopoStart, sql.TopoEnd), []string{"$d<$missing2", "$c<$missing", "$c<$out"}; !slices.Equal(got, want) {
			t.Fatalf("gaps %v, want %v", got, want)
		}
		// (lo, hi], by the events' positions.
		if got := gaps(b.Key(), c.Key()); !slices.Equal(got, []string{"$c<$missing", "$c<$out"}) {
			t.Errorf("gaps up to $c: %v", got)
		}
		if got := gaps(c.Key(), d.Key()); !slices.Equal(got, []string{"$d<$missing2"}) {
			t.Errorf("gaps after $c: %v", got)
		}
		if gs, err := db.GapsIn(ctx, other.nid, sql.TopoStart, sql.TopoEnd, 10); err != nil || len(gs) != 0 {
			t.Errorf("the other room's gaps: %v, %v", gs, err)
		}

		// Claimed gaps back off: listed no more, not claimed again, but
		// still recorded. Another room's claim takes none of them.
		if gs, err := db.ClaimGaps(ctx, other.nid, []string{"$missing"}); err != nil || len(gs) != 0 {
			t.Errorf("claimed from another room: %v, %v", gs, err)
		}
		claimed, err := db.ClaimGaps(ctx, room.nid, []string{"$missing", "$missing2", "$nope"})
		if err != nil || len(claimed) != 2 {
			t.Fatalf("claimed %v, %v; want 2", claimed, err)
		}
		if got := gaps(sql.TopoStart, sql.TopoEnd); !slices.Equal(got, []string{"$c<$out"}) {
			t.Errorf("gaps after a claim: %v", got)
		}
		if again, err := db.ClaimGaps(ctx, room.nid, []string{"$missing"}); err != nil || len(again) != 0 {
			t.Errorf("claimed twice: %v, %v", again, err)
		}
		prevs := func(ids ...string) []string {
			t.Helper()
			got, err := db.GapPrevs(ctx, room.nid, ids)
			if err != nil {
				t.Fatal(err)
			}
			return got
		}
		if got := prevs("$missing", "$missing2", "$out", "$b", "$zzz"); !slices.Equal(got, []string{"$missing", "$missing2", "$out"}) {
			t.Errorf("recorded prevs %v", got)
		}

		// Clearing a prev event ends its gaps; dropping an event's gaps
		// ends them all.
		if err := db.RunPipeline(ctx, func(p *sql.Pipeline) error { p.ClearGaps([]string{"$missing", "$unknown"}); return nil }); err != nil {
			t.Fatal(err)
		}
		if got := prevs("$missing", "$missing2", "$out"); !slices.Equal(got, []string{"$missing2", "$out"}) {
			t.Errorf("after clearing $missing: %v", got)
		}
		if err := db.DropGaps(ctx, []int64{d.NID}); err != nil {
			t.Fatal(err)
		}
		if got := prevs("$missing", "$missing2", "$out"); !slices.Equal(got, []string{"$out"}) {
			t.Errorf("after dropping $d's: %v", got)
		}
	})
}
