package sql_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// The statements of the roomserver's group commit, on both engines: many
// rows each, positions set after the insert, a room row written only if
// nobody moved it, inputs recorded once.
func TestRoomWriteStatements(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		err := db.WithTx(ctx, func(q *sql.Queries) error {
			r1, err := q.CreateRoom(ctx, "!one:test", "12")
			if err != nil {
				return err
			}
			r2, err := q.CreateRoom(ctx, "!two:test", "12")
			if err != nil {
				return err
			}
			var evs []sql.Event
			for i := range 250 { // more than one statement's worth
				room := r1
				if i%3 == 0 {
					room = r2
				}
				evs = append(evs, sql.Event{RoomNID: room, EventID: fmt.Sprintf("$e%03d", i), Type: "m.room.message",
					Sender: "@a:test", Depth: int64(i + 1), JSON: []byte(`{}`)})
			}
			nids, err := q.InsertEvents(ctx, evs)
			if err != nil {
				return err
			}
			if len(nids) != len(evs) || !slices.IsSorted(nids) {
				return fmt.Errorf("NIDs %v: not one per event in insertion order", nids)
			}
			if _, err := q.InsertEvents(ctx, evs[:1]); !errors.Is(err, sql.ErrExists) {
				return fmt.Errorf("inserting an event twice: %v, want ErrExists", err)
			}
			return errors.New("rolled back on purpose") // PostgreSQL aborts the transaction after the duplicate
		})
		if err == nil || err.Error() != "rolled back on purpose" {
			t.Fatal(err)
		}

		r1, err := db.CreateRoom(ctx, "!one:test", "12")
		if err != nil {
			t.Fatal(err)
		}
		r2, err := db.CreateRoom(ctx, "!two:test", "12")
		if err != nil {
			t.Fatal(err)
		}
		err = db.WithTx(ctx, func(q *sql.Queries) error {
			nids, err := q.InsertEvents(ctx, []sql.Event{
				{RoomNID: r1, EventID: "$a", Type: "m.room.message", Sender: "@a:test", Depth: 1, JSON: []byte(`{}`)},
				{RoomNID: r2, EventID: "$b", Type: "m.room.message", Sender: "@a:test", Depth: 1, JSON: []byte(`{}`)},
				{RoomNID: r1, EventID: "$c", Type: "m.room.message", Sender: "@a:test", Depth: 2, JSON: []byte(`{}`)},
			})
			if err != nil {
				return err
			}
			first, err := q.AllocStreamPositions(ctx, "events", 3)
			if err != nil {
				return err
			}
			if first != 1 {
				return fmt.Errorf("first position %d, want 1", first)
			}
			if err := q.SetEventPositions(ctx, []sql.EventPosition{
				{NID: nids[0], StreamPos: 1, StateBeforeNID: 7}, {NID: nids[1], StreamPos: 2, StateBeforeNID: 8}, {NID: nids[2], StreamPos: 3, StateBeforeNID: 9},
			}); err != nil {
				return err
			}
			return q.UpdateRoomsFrom(ctx, []sql.RoomUpdate{
				{Info: sql.RoomInfo{NID: r1, RoomID: "!one:test", SnapshotNID: 0, Extremities: []string{"$c"}, MaxDepth: 2, LastStreamPos: 3}},
				{Info: sql.RoomInfo{NID: r2, RoomID: "!two:test", SnapshotNID: 0, Extremities: []string{"$b"}, MaxDepth: 1, LastStreamPos: 2}},
			})
		})
		if err != nil {
			t.Fatal(err)
		}
		c, err := db.EventByID(ctx, "$c")
		if err != nil || c.StreamPos != 3 || c.StateBeforeNID != 9 {
			t.Fatalf("$c at position %d, state before %d (%v)", c.StreamPos, c.StateBeforeNID, err)
		}
		one, err := db.Room(ctx, "!one:test")
		if err != nil || one.LastStreamPos != 3 || !slices.Equal(one.Extremities, []string{"$c"}) || one.MaxDepth != 2 {
			t.Fatalf("room one %+v (%v)", one, err)
		}
		if pos, err := db.StreamPos(ctx, "events"); err != nil || pos != 3 {
			t.Fatalf("events stream at %d (%v)", pos, err)
		}

		// A writer whose view of room two is out of date changes nothing.
		err = db.WithTx(ctx, func(q *sql.Queries) error {
			return q.UpdateRoomsFrom(ctx, []sql.RoomUpdate{
				{Info: sql.RoomInfo{NID: r1, Extremities: []string{"$x"}, LastStreamPos: 4}, PrevStreamPos: 3},
				{Info: sql.RoomInfo{NID: r2, Extremities: []string{"$y"}, LastStreamPos: 5}, PrevStreamPos: 1},
			})
		})
		if !errors.Is(err, sql.ErrStale) {
			t.Fatalf("stale update: %v, want ErrStale", err)
		}
		if one, _ := db.Room(ctx, "!one:test"); one.LastStreamPos != 3 {
			t.Fatalf("room one moved by a failed update: %+v", one)
		}

		// Inputs: recorded once; a second try reports the ones already there.
		in := []sql.InputRecord{{InputID: "i1", RoomID: "!one:test", EventIDs: []string{"$a"}}, {InputID: "i2", RoomID: "!two:test", EventIDs: []string{"$b", "$c"}}}
		if already, err := db.RecordInputs(ctx, in); err != nil || len(already) != 0 {
			t.Fatalf("record inputs: %v %v", already, err)
		}
		if already, err := db.RecordInputs(ctx, []sql.InputRecord{in[1], {InputID: "i3", RoomID: "!one:test", EventIDs: []string{"$c"}}}); err != nil || !slices.Equal(already, []string{"i2"}) {
			t.Fatalf("recording i2 again and i3: already %v (%v), want [i2]", already, err)
		}
		got, err := db.InputResults(ctx, []string{"i2", "i3", "nope"})
		if err != nil || len(got) != 2 || !slices.Equal(got["i2"].EventIDs, []string{"$b", "$c"}) || got["i3"].RoomID != "!one:test" {
			t.Fatalf("input results %+v (%v)", got, err)
		}

		if err := db.AddEventTransactions(ctx, []sql.EventTransaction{{EventNID: c.NID, UserID: "@a:test", DeviceID: "D", TxnID: "t1"}}); err != nil {
			t.Fatal(err)
		}
		if u, d, txn, err := db.EventTransaction(ctx, c.NID); err != nil || u != "@a:test" || d != "D" || txn != "t1" {
			t.Fatalf("event transaction %s %s %s (%v)", u, d, txn, err)
		}
	})
}
