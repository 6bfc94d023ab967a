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

// The roomserver's commit as one pipeline, on both engines: NIDs reserved
// up front, events written once at positions counted back from the
// counter, and every check that must roll back (an input seen before, a
// room moved by another writer, an event or room stored already) failing
// the whole transaction, with nothing of it kept.
func TestPipelineRoomCommit(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		// Something at position 1 and an event stored the ordinary way, so
		// that positions and NIDs do not start from zero.
		if err := db.WithTx(ctx, func(q *sql.Queries) error {
			_, err := q.AllocStreamPositions(ctx, sql.EventsStream, 1)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		old, err := db.CreateRoom(ctx, "!old:test", "12")
		if err != nil {
			t.Fatal(err)
		}
		oldEv, err := db.InsertEvent(ctx, sql.Event{RoomNID: old, EventID: "$old", Type: "m.room.message", Sender: "@a:test", Depth: 1, JSON: []byte(`{}`)})
		if err != nil {
			t.Fatal(err)
		}

		// commit writes a new room with events made of n messages, a
		// state event and a membership, plus a message in !old.
		type result struct {
			room, last int64
			evs        []int64
		}
		commit := func(roomID string, n int, oldPrev int64, inputID string) (result, error) {
			var r result
			err := db.RunPipeline(ctx, func(p *sql.Pipeline) error {
				if err := p.RecordInputs([]sql.InputRecord{{InputID: inputID, RoomID: roomID, EventIDs: []string{"$x"}}}); err != nil {
					return err
				}
				rooms, err := p.RoomNIDs(1)
				if err != nil {
					return err
				}
				r.room = rooms[0]
				if r.evs, err = p.EventNIDs(n + 3); err != nil {
					return err
				}
				snaps, err := p.SnapshotNIDs(2)
				if err != nil {
					return err
				}
				p.CreateRoom(r.room, roomID, "12")
				total := int64(n + 3)
				var evs []sql.PendingEvent
				for i := range n + 2 {
					e := sql.Event{NID: r.evs[i], RoomNID: r.room, EventID: fmt.Sprintf("$%s-%d", roomID, i), Type: "m.room.message",
						Sender: "@a:test", Depth: int64(i + 1), JSON: []byte(`{}`), StateBeforeNID: snaps[0]}
					switch i {
					case n:
						e.Type, e.StateKey = "m.room.name", new("")
					case n + 1:
						e.Type, e.StateKey, e.StateBeforeNID = "m.room.member", new("@a:test"), snaps[1]
					}
					evs = append(evs, sql.PendingEvent{Event: e, Back: total - 1 - int64(i)})
				}
				evs = append(evs, sql.PendingEvent{Event: sql.Event{NID: r.evs[n+2], RoomNID: old, EventID: "$old-" + roomID, Type: "m.room.message",
					Sender: "@a:test", Depth: 2, JSON: []byte(`{}`)}, Back: 0})
				p.AddSnapshots([]sql.Snapshot{
					{NID: snaps[0], RoomNID: r.room, Entries: sql.StateMap{{Type: "m.room.name"}: r.evs[n]}},
					{NID: snaps[1], RoomNID: r.room, Base: snaps[0], ChainLength: 1, Entries: sql.StateMap{{Type: "m.room.member", StateKey: "@a:test"}: r.evs[n+1]}},
				})
				p.SetCurrentState([]sql.StateChange{
					{RoomNID: r.room, Key: sql.StateKey{Type: "m.room.name"}, EventNID: r.evs[0]}, // overridden by the next
					{RoomNID: r.room, Key: sql.StateKey{Type: "m.room.name"}, EventNID: r.evs[n]},
					{RoomNID: r.room, Key: sql.StateKey{Type: "m.room.member", StateKey: "@a:test"}, EventNID: r.evs[n+1]},
				})
				p.IndexRelations([]sql.EventRelation{{EventNID: r.evs[1], RoomNID: r.room,
					DeclaredRelation: sql.DeclaredRelation{RelatesTo: "$parent", RelType: "m.thread"}}})
				p.AddEventTransactions([]sql.EventTransaction{{EventNID: r.evs[0], UserID: "@a:test", DeviceID: "D", TxnID: "t-" + roomID}})
				p.AllocEventPositions(n+3, &r.last)
				p.InsertEvents(evs)
				p.RedactEvent(r.evs[0], []byte(`{"redacted":true}`), "$redacter")
				p.SetMemberships([]sql.MemberChange{
					{RoomNID: r.room, UserID: "@a:test", Membership: "invite", EventNID: r.evs[0], Back: 99}, // overridden by the next
					{RoomNID: r.room, UserID: "@a:test", Membership: "join", EventNID: r.evs[n+1], Back: 1},
				})
				return p.UpdateRooms([]sql.RoomMove{
					{Info: sql.RoomInfo{NID: r.room, SnapshotNID: snaps[1], Extremities: []string{"$new"}, MaxDepth: int64(n + 2)}, Back: 1},
					{Info: sql.RoomInfo{NID: old, Extremities: []string{"$old-" + roomID}, MaxDepth: 2}, PrevStreamPos: oldPrev, Back: 0},
				})
			})
			return r, err
		}

		// More rows than one statement takes, to cross chunks.
		const n = 150
		r, err := commit("!new:test", n, 0, "in1")
		if err != nil {
			t.Fatal(err)
		}
		if r.last != n+4 {
			t.Fatalf("last position %d, want %d", r.last, n+4)
		}
		if slices.Contains(r.evs, oldEv) {
			t.Fatalf("reserved NIDs %v include the NID %d of a stored event", r.evs, oldEv)
		}
		for i := range n + 2 {
			e, err := db.EventByID(ctx, fmt.Sprintf("$!new:test-%d", i))
			if err != nil {
				t.Fatalf("event %d: %v", i, err)
			}
			if e.NID != r.evs[i] || e.StreamPos != int64(i+2) {
				t.Fatalf("event %d: NID %d at %d, want %d at %d", i, e.NID, e.StreamPos, r.evs[i], i+2)
			}
		}
		if e, _ := db.EventByID(ctx, "$!new:test-0"); e.RedactedBy != "$redacter" || string(e.JSON) != `{"redacted":true}` {
			t.Fatalf("redacted event: %+v", e)
		}
		room, err := db.Room(ctx, "!new:test")
		if err != nil || room.NID != r.room || room.LastStreamPos != n+3 || room.MaxDepth != n+2 || room.ChainLength != 1 {
			t.Fatalf("new room %+v (%v)", room, err)
		}
		if o, err := db.Room(ctx, "!old:test"); err != nil || o.LastStreamPos != n+4 || !slices.Equal(o.Extremities, []string{"$old-!new:test"}) {
			t.Fatalf("old room %+v (%v)", o, err)
		}
		state, err := db.Snapshot(ctx, room.SnapshotNID)
		if err != nil || len(state) != 2 || state[sql.StateKey{Type: "m.room.name"}] != r.evs[n] {
			t.Fatalf("snapshot %v (%v)", state, err)
		}
		if cur, err := db.CurrentState(ctx, r.room); err != nil || len(cur) != 2 || cur[sql.StateKey{Type: "m.room.name"}] != r.evs[n] {
			t.Fatalf("current state %v (%v)", cur, err)
		}
		mems, err := db.SyncMemberships(ctx, "@a:test")
		if err != nil || len(mems) != 1 || mems[0].Membership != "join" || mems[0].EventNID != r.evs[n+1] || mems[0].StreamPos != n+3 {
			t.Fatalf("memberships %+v (%v)", mems, err)
		}
		if u, _, txn, err := db.EventTransaction(ctx, r.evs[0]); err != nil || u != "@a:test" || txn != "t-!new:test" {
			t.Fatalf("event transaction %s %s (%v)", u, txn, err)
		}
		if got, err := db.InputResults(ctx, []string{"in1"}); err != nil || got["in1"].RoomID != "!new:test" {
			t.Fatalf("input %+v (%v)", got, err)
		}

		// Each failure rolls everything back, and says what failed.
		pos := r.last
		for _, c := range []struct {
			name, room, input string
			oldPrev           int64
			want              error
		}{
			{"input seen before", "!a:test", "in1", pos, sql.ErrInputRecorded},
			{"room moved by another writer", "!b:test", "in2", pos - 1, sql.ErrStale},
			{"room id taken", "!new:test", "in3", pos, sql.ErrExists},
		} {
			if _, err := commit(c.room, 3, c.oldPrev, c.input); !errors.Is(err, c.want) {
				t.Fatalf("%s: %v, want %v", c.name, err, c.want)
			}
			if p, err := db.StreamPos(ctx, sql.EventsStream); err != nil || p != pos {
				t.Fatalf("%s: events stream at %d (%v), want %d", c.name, p, err, pos)
			}
			if _, err := db.Room(ctx, c.room); c.room != "!new:test" && !errors.Is(err, sql.ErrNotFound) {
				t.Fatalf("%s: room %s exists (%v)", c.name, c.room, err)
			}
			if got, _ := db.InputResults(ctx, []string{c.input}); c.input != "in1" && len(got) != 0 {
				t.Fatalf("%s: input recorded %+v", c.name, got)
			}
		}
		// And the NIDs of a failed pipeline are not handed out again.
		r2, err := commit("!c:test", 1, pos, "in4")
		if err != nil {
			t.Fatal(err)
		}
		if r2.evs[0] <= r.evs[len(r.evs)-1] {
			t.Fatalf("NIDs %v after %v", r2.evs, r.evs)
		}
	})
}

// Statements of any number of rows, split into chunks of a few sizes.
func TestPipelineChunks(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		for _, n := range []int{1, 2, 3, 63, 64, 65, 200} {
			var ins []sql.InputRecord
			for i := range n {
				ins = append(ins, sql.InputRecord{InputID: fmt.Sprintf("chunk-%d-%d", n, i), RoomID: "!r:test"})
			}
			if err := db.RunPipeline(ctx, func(p *sql.Pipeline) error { return p.RecordInputs(ins) }); err != nil {
				t.Fatalf("%d inputs: %v", n, err)
			}
			ids := make([]string, n)
			for i, in := range ins {
				ids[i] = in.InputID
			}
			if got, err := db.InputResults(ctx, ids); err != nil || len(got) != n {
				t.Fatalf("%d inputs: %d recorded (%v)", n, len(got), err)
			}
		}
	})
}

// Thousands of outliers and snapshot entries, as a join through another
// server stores them (on PostgreSQL with COPY, before the statements):
// stored with the rest, rolled back with it when a statement fails, and
// an event stored already fails the pipeline with ErrExists.
func TestPipelineBulkRows(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		roomNID, err := db.CreateRoom(ctx, "!bulk:test", "12")
		if err != nil {
			t.Fatal(err)
		}
		n := sql.CopyMin + 10
		write := func(prefix, inputID string) (snap int64, err error) {
			err = db.RunPipeline(ctx, func(p *sql.Pipeline) error {
				if err := p.RecordInputs([]sql.InputRecord{{InputID: inputID, RoomID: "!bulk:test"}}); err != nil {
					return err
				}
				nids, err := p.EventNIDs(n + 1)
				if err != nil {
					return err
				}
				snaps, err := p.SnapshotNIDs(1)
				if err != nil {
					return err
				}
				snap = snaps[0]
				state := make(sql.StateMap, n)
				evs := make([]sql.PendingEvent, 0, n+1)
				for i := range n {
					k := sql.StateKey{Type: "org.example.bulk", StateKey: fmt.Sprint(i)}
					state[k] = nids[i]
					evs = append(evs, sql.PendingEvent{Event: sql.Event{NID: nids[i], RoomNID: roomNID, EventID: fmt.Sprintf("$%s%d", prefix, i),
						Type: k.Type, StateKey: &k.StateKey, Sender: "@a:test", Depth: int64(i + 1), JSON: []byte(`{}`), Outlier: true, Rejected: i == 0}})
				}
				evs = append(evs, sql.PendingEvent{Event: sql.Event{NID: nids[n], RoomNID: roomNID, EventID: "$" + prefix + "timeline",
					Type: "m.room.message", Sender: "@a:test", Depth: int64(n + 1), JSON: []byte(`{}`), StateBeforeNID: snap}})
				p.AddSnapshots([]sql.Snapshot{{NID: snap, RoomNID: roomNID, Entries: state}})
				p.AllocEventPositions(1, new(int64))
				p.InsertEvents(evs)
				return nil
			})
			return snap, err
		}
		snap, err := write("a", "bulk1")
		if err != nil {
			t.Fatal(err)
		}
		got, err := db.Snapshot(ctx, snap)
		if err != nil || len(got) != n {
			t.Fatalf("snapshot of %d entries, want %d (%v)", len(got), n, err)
		}
		ids := []string{"$a0", fmt.Sprintf("$a%d", n-1), "$atimeline"}
		evs, err := db.EventsByID(ctx, ids)
		if err != nil || len(evs) != 3 {
			t.Fatalf("%d of %v stored (%v)", len(evs), ids, err)
		}
		for _, e := range evs {
			outlier := e.EventID != "$atimeline"
			if e.Outlier != outlier || e.Rejected != (e.EventID == "$a0") || (e.StreamPos == 0) != outlier || (e.StateKey != nil) != outlier {
				t.Fatalf("stored %+v", e)
			}
		}

		// A failing statement (an input recorded already) rolls the rows
		// back; so does an event stored already, with ErrExists.
		if _, err := write("b", "bulk1"); !errors.Is(err, sql.ErrInputRecorded) {
			t.Fatalf("input recorded already: %v", err)
		}
		if _, err := write("a", "bulk2"); !errors.Is(err, sql.ErrExists) {
			t.Fatalf("events stored already: %v", err)
		}
		if evs, err := db.EventsByID(ctx, []string{"$b0", "$b1"}); err != nil || len(evs) != 0 {
			t.Fatalf("rolled back events stored: %d (%v)", len(evs), err)
		}
		if got, err := db.InputResults(ctx, []string{"bulk2"}); err != nil || len(got) != 0 {
			t.Fatalf("rolled back input recorded: %v (%v)", got, err)
		}
	})
}
