package roomserver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weft-chat/weft/internal/bus"
	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/internal/serverkey"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// Tests of the write pipeline's inside: batches, group commits, stale
// views. No bus: inputs go straight to handleInputs, as the shard
// consumers hand them over.

const (
	pAlice = "@alice:test.local"
	pBob   = "@bob:test.local"
)

func newPipeline(t *testing.T, db *sql.DB) *Roomserver {
	t.Helper()
	key, err := serverkey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return New(db, nil, "test.local", key, slog.New(slog.NewTextHandler(io.Discard, nil)))
}

func js(v any) json.RawMessage {
	b, _ := json.Marshal(v)
	return b
}

func ptr(s string) *string { return &s }

// newRoom makes a version 10 room with alice as its creator, invite only.
func newRoom(t *testing.T, rs *Roomserver, id string) string {
	t.Helper()
	resp, err := rs.HandleInput(context.Background(), InputRequest{InputID: "create-" + id, CreateRoom: &CreateRoom{RoomVersion: "10", Events: []NewEvent{
		{Sender: pAlice, Type: "m.room.create", StateKey: ptr(""), Content: js(map[string]any{"creator": pAlice, "room_version": "10"})},
		{Sender: pAlice, Type: "m.room.member", StateKey: ptr(pAlice), Content: js(map[string]any{"membership": "join"})},
		{Sender: pAlice, Type: "m.room.power_levels", StateKey: ptr(""), Content: js(map[string]any{"users": map[string]int{pAlice: 100}})},
		{Sender: pAlice, Type: "m.room.join_rules", StateKey: ptr(""), Content: js(map[string]any{"join_rule": "invite"})},
	}}})
	if err != nil {
		t.Fatalf("create room: %v", err)
	}
	return resp.RoomID
}

func msg(roomID, sender, input, body string) InputRequest {
	return InputRequest{InputID: input, RoomID: roomID, NewEvent: &NewEvent{Sender: sender, Type: "m.room.message",
		Content: js(map[string]any{"msgtype": "m.text", "body": body})}}
}

func member(roomID, sender, target, input, membership string) InputRequest {
	return InputRequest{InputID: input, RoomID: roomID, NewEvent: &NewEvent{Sender: sender, Type: "m.room.member", StateKey: ptr(target),
		Content: js(map[string]any{"membership": membership})}}
}

// One batch: each event is built on the ones before it in the batch (bob
// may speak once his join, not yet committed, is in), a refusal fails
// alone, a repeated input gets the first one's answer, and the stored
// events form one chain with consecutive stream positions, each with the
// state before it.
func TestBatchBuildsOnPendingEvents(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		rs := newPipeline(t, db)
		roomID := newRoom(t, rs, "batch")
		old, err := rs.HandleInput(ctx, msg(roomID, pAlice, "old", "to be redacted"))
		if err != nil {
			t.Fatal(err)
		}
		reqs := []InputRequest{
			msg(roomID, pAlice, "a", "first"),
			member(roomID, pAlice, pBob, "invite", "invite"),
			member(roomID, pBob, pBob, "join", "join"),
			msg(roomID, pBob, "b", "bob speaks"),
			msg(roomID, "@mallory:test.local", "m", "not a member"),
			{InputID: "red", RoomID: roomID, NewEvent: &NewEvent{Sender: pAlice, Type: "m.room.redaction", Redacts: old.EventIDs[0], Content: js(map[string]any{})}},
			msg(roomID, pAlice, "a", "first, retried"),
			msg(roomID, pAlice, "", "no input id"),
		}
		res := rs.handleInputs(ctx, reqs)
		var me *mxhttp.Error
		if !errors.As(res[4].err, &me) || me.Status != 403 {
			t.Fatalf("mallory's message: %v, want 403", res[4].err)
		}
		var ids []string
		for i, r := range res {
			if i == 4 {
				continue
			}
			if r.err != nil || len(r.resp.EventIDs) != 1 || r.resp.RoomID != roomID {
				t.Fatalf("input %d: %+v %v", i, r.resp, r.err)
			}
			if i != 6 {
				ids = append(ids, r.resp.EventIDs[0])
			}
		}
		if res[6].resp.EventIDs[0] != res[0].resp.EventIDs[0] {
			t.Fatalf("repeated input made %s, the first made %s", res[6].resp.EventIDs[0], res[0].resp.EventIDs[0])
		}

		var prev sql.Event
		for i, id := range append([]string{old.EventIDs[0]}, ids...) {
			stored, pdu, err := rs.Event(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if i > 0 {
				if stored.StreamPos != prev.StreamPos+1 || stored.Depth != prev.Depth+1 {
					t.Errorf("event %d at position %d depth %d, after %d %d", i, stored.StreamPos, stored.Depth, prev.StreamPos, prev.Depth)
				}
				if p := pdu.PrevEventIDs(); len(p) != 1 || p[0] != prev.EventID {
					t.Errorf("event %d: prev events %v, want [%s]", i, p, prev.EventID)
				}
			}
			prev = stored
		}
		storedB, _, err := rs.Event(ctx, res[3].resp.EventIDs[0])
		if err != nil {
			t.Fatal(err)
		}
		before, err := db.Snapshot(ctx, storedB.StateBeforeNID)
		if err != nil {
			t.Fatal(err)
		}
		joinEv, _, err := rs.Event(ctx, res[2].resp.EventIDs[0])
		if err != nil {
			t.Fatal(err)
		}
		if before[sql.StateKey{Type: "m.room.member", StateKey: pBob}] != joinEv.NID {
			t.Errorf("the state before bob's message does not hold his join")
		}
		storedA, _, err := rs.Event(ctx, res[0].resp.EventIDs[0])
		if err != nil {
			t.Fatal(err)
		}
		if a, err := db.Snapshot(ctx, storedA.StateBeforeNID); err != nil || a[sql.StateKey{Type: "m.room.member", StateKey: pBob}] != 0 {
			t.Errorf("the state before alice's first message holds bob (%v)", err)
		}
		mems, err := db.SyncMemberships(ctx, pBob)
		if err != nil || len(mems) != 1 || mems[0].Membership != "join" || mems[0].StreamPos != joinEv.StreamPos || mems[0].EventNID != joinEv.NID {
			t.Errorf("bob's membership row %+v (%v), want join at %d", mems, err, joinEv.StreamPos)
		}
		redacted, _, err := rs.Event(ctx, old.EventIDs[0])
		if err != nil || redacted.RedactedBy != res[5].resp.EventIDs[0] {
			t.Errorf("old message redacted by %q (%v)", redacted.RedactedBy, err)
		}
		info, err := db.Room(ctx, roomID)
		if err != nil {
			t.Fatal(err)
		}
		last := ids[len(ids)-1]
		lastEv, _, _ := rs.Event(ctx, last)
		if len(info.Extremities) != 1 || info.Extremities[0] != last || info.LastStreamPos != lastEv.StreamPos {
			t.Errorf("room row %+v, want extremity %s at %d", info, last, lastEv.StreamPos)
		}
	})
}

// Two writers of one room (as two processes would be, each with its own
// cached view): each commit finds out when the other moved the room and
// builds again on the room as it is, so the graph stays one chain.
func TestStaleViewIsRebuilt(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		one, two := newPipeline(t, db), newPipeline(t, db)
		roomID := newRoom(t, one, "stale")
		for i := range 6 {
			rs := one
			if i%2 == 1 {
				rs = two
			}
			if _, err := rs.HandleInput(ctx, msg(roomID, pAlice, fmt.Sprintf("s%d", i), "hi")); err != nil {
				t.Fatalf("send %d: %v", i, err)
			}
		}
		info, err := db.Room(ctx, roomID)
		if err != nil {
			t.Fatal(err)
		}
		if len(info.Extremities) != 1 {
			t.Fatalf("%d forward extremities, want 1", len(info.Extremities))
		}
		evs, err := db.TimelineEvents(ctx, info.NID, sql.TopoStart, sql.TopoEnd, false, 100)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) != 4+6 {
			t.Fatalf("%d events, want 10", len(evs))
		}
		for i := 1; i < len(evs); i++ {
			if evs[i].Depth != evs[i-1].Depth+1 || evs[i].StreamPos <= evs[i-1].StreamPos {
				t.Fatalf("event %d: depth %d position %d after %d %d", i, evs[i].Depth, evs[i].StreamPos, evs[i-1].Depth, evs[i-1].StreamPos)
			}
		}
	})
}

// Units committed in one group transaction stay apart when one of them
// fails: the others commit, the failing one alone gets the error.
func TestGroupCommitIsolatesFailures(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		rs := newPipeline(t, db)
		taken := newRoom(t, rs, "taken")
		create := &CreateRoom{RoomVersion: "10", Events: []NewEvent{
			{Sender: pAlice, Type: "m.room.create", StateKey: ptr(""), Content: js(map[string]any{"creator": pAlice, "room_version": "10"})},
			{Sender: pAlice, Type: "m.room.member", StateKey: ptr(pAlice), Content: js(map[string]any{"membership": "join"})},
		}}
		good, err := rs.buildRoom(ctx, create, rs.now())
		if err != nil {
			t.Fatal(err)
		}
		clash, err := rs.buildRoom(ctx, create, rs.now())
		if err != nil {
			t.Fatal(err)
		}
		clash.v.info.RoomID = taken
		units := []*commitUnit{{rcs: []*roomCommit{good}}, {rcs: []*roomCommit{clash}}}
		rs.commitUnits(ctx, units)
		if units[0].err != nil || !units[0].done {
			t.Fatalf("the good unit: %v", units[0].err)
		}
		if !errors.Is(units[1].err, sql.ErrExists) || !units[1].done {
			t.Fatalf("the clashing unit: %v, want ErrExists", units[1].err)
		}
		if _, err := db.Room(ctx, good.v.info.RoomID); err != nil {
			t.Fatalf("the good room was not committed: %v", err)
		}
	})
}

// Many rooms written at once through group commits: every input
// commits, and a reader that sees the stream at position N finds every
// position up to N, at every moment (positions commit in order).
func TestGroupCommitPositionsInOrder(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		rs := newPipeline(t, db)
		const rooms, writers, each = 6, 12, 10
		var roomIDs []string
		var nids []int64
		for i := range rooms {
			id := newRoom(t, rs, fmt.Sprint(i))
			info, err := db.Room(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			roomIDs, nids = append(roomIDs, id), append(nids, info.NID)
		}
		stop := make(chan struct{})
		readerDone := make(chan error, 1)
		go func() {
			for checks := 0; ; checks++ {
				select {
				case <-stop:
					readerDone <- nil
					return
				default:
				}
				n, err := db.StreamPos(ctx, sql.EventsStream)
				if err != nil {
					readerDone <- err
					return
				}
				seen := make(map[int64]bool)
				for _, nid := range nids {
					evs, err := db.RoomEventsByStream(ctx, nid, 0, n, 10_000)
					if err != nil {
						readerDone <- err
						return
					}
					for _, e := range evs {
						seen[e.StreamPos] = true
					}
				}
				for p := int64(1); p <= n; p++ {
					if !seen[p] {
						readerDone <- fmt.Errorf("the stream is at %d but position %d is missing", n, p)
						return
					}
				}
			}
		}()
		var wg sync.WaitGroup
		errs := make(chan error, writers*each)
		for w := range writers {
			wg.Go(func() {
				for i := range each {
					roomID := roomIDs[(w+i)%rooms]
					if _, err := rs.HandleInput(ctx, msg(roomID, pAlice, fmt.Sprintf("w%d-%d", w, i), "x")); err != nil {
						errs <- err
					}
				}
			})
		}
		wg.Wait()
		close(stop)
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		if err := <-readerDone; err != nil {
			t.Fatal(err)
		}
		n, err := db.StreamPos(ctx, sql.EventsStream)
		if want := int64(rooms*4 + writers*each); err != nil || n != want {
			t.Fatalf("stream at %d (%v), want %d", n, err, want)
		}
		for _, id := range roomIDs {
			info, err := db.Room(ctx, id)
			if err != nil || len(info.Extremities) != 1 {
				t.Fatalf("room %s: %+v %v", id, info, err)
			}
		}
	})
}

// A retried input gets the event its first try made, and only one event
// is stored: retried after it committed, retried when the same input
// would now be refused (its sender left), and submitted twice at once.
func TestRetriedInputs(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		rs := newPipeline(t, db)
		roomID := newRoom(t, rs, "retry")
		for _, req := range []InputRequest{member(roomID, pAlice, pBob, "inv", "invite"), member(roomID, pBob, pBob, "join", "join")} {
			if _, err := rs.HandleInput(ctx, req); err != nil {
				t.Fatal(err)
			}
		}
		first, err := rs.HandleInput(ctx, msg(roomID, pAlice, "m1", "hi"))
		if err != nil {
			t.Fatal(err)
		}
		again, err := rs.HandleInput(ctx, msg(roomID, pAlice, "m1", "hi"))
		if err != nil || again.EventIDs[0] != first.EventIDs[0] {
			t.Fatalf("retried message: %v %v, want %s", again, err, first.EventIDs[0])
		}
		// In a batch with a new input: the commit finds the retry done,
		// and the new input commits again with the batch's others, not
		// alone.
		var logs bytes.Buffer
		rs.log = slog.New(slog.NewTextHandler(&logs, nil))
		batch := rs.handleInputs(ctx, []InputRequest{msg(roomID, pAlice, "m1", "hi"), msg(roomID, pAlice, "m2", "new"), msg(roomID, pAlice, "m3", "newer")})
		if batch[0].err != nil || batch[0].resp.EventIDs[0] != first.EventIDs[0] || batch[1].err != nil || batch[2].err != nil {
			t.Fatalf("batch with a retry: %+v", batch)
		}
		if strings.Contains(logs.String(), "one by one") {
			t.Fatalf("the batch's inputs were retried one by one: %s", logs.String())
		}
		bobs, err := rs.HandleInput(ctx, msg(roomID, pBob, "b1", "bob"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := rs.HandleInput(ctx, member(roomID, pBob, pBob, "leave", "leave")); err != nil {
			t.Fatal(err)
		}
		if _, err := rs.HandleInput(ctx, msg(roomID, pBob, "b2", "bob again")); err == nil {
			t.Fatal("bob may still send after leaving: the retry below proves nothing")
		}
		bobsAgain, err := rs.HandleInput(ctx, msg(roomID, pBob, "b1", "bob"))
		if err != nil || bobsAgain.EventIDs[0] != bobs.EventIDs[0] {
			t.Fatalf("bob's message retried after he left: %v %v, want %s", bobsAgain, err, bobs.EventIDs[0])
		}

		// Twice at once, from two writers as from two shards' batches.
		const racers = 6
		ids := make([]string, racers)
		errs := make([]error, racers)
		var wg sync.WaitGroup
		for r := range racers {
			wg.Go(func() {
				var resp InputResponse
				resp, errs[r] = rs.HandleInput(ctx, msg(roomID, pAlice, "race", "once"))
				if errs[r] == nil {
					ids[r] = resp.EventIDs[0]
				}
			})
		}
		wg.Wait()
		for r := range racers {
			if errs[r] != nil || ids[r] != ids[0] {
				t.Fatalf("racer %d: %s %v, racer 0 got %s", r, ids[r], errs[r], ids[0])
			}
		}
		info, err := db.Room(ctx, roomID)
		if err != nil {
			t.Fatal(err)
		}
		evs, err := db.TimelineEvents(ctx, info.NID, sql.TopoStart, sql.TopoEnd, false, 100)
		if err != nil {
			t.Fatal(err)
		}
		bodies := make(map[string]int)
		for _, e := range evs {
			var ev struct {
				Content struct{ Body string }
			}
			if err := json.Unmarshal(e.JSON, &ev); err != nil {
				t.Fatal(err)
			}
			if ev.Content.Body != "" {
				bodies[ev.Content.Body]++
			}
		}
		if bodies["hi"] != 1 || bodies["once"] != 1 || bodies["bob"] != 1 || bodies["new"] != 1 || bodies["newer"] != 1 {
			t.Fatalf("stored messages %v, want each once", bodies)
		}
	})
}

// Every committed event is announced on room.output once, and each room's
// announcements come in stream order, batches and group commits
// notwithstanding.
func TestOutputsInOrder(t *testing.T) {
	db := sqltest.Open(t, "sqlite")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b, err := bus.Open(ctx, bus.Config{StoreDir: t.TempDir()}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	rs := newPipeline(t, db)
	rs.bus = b
	stop, err := rs.Serve(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	client := NewClient(b)
	rooms := []string{newRoom(t, rs, "out1"), newRoom(t, rs, "out2")}
	const each = 40
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range each / 4 {
				roomID := rooms[(w+i)%2]
				if _, err := client.Input(ctx, msg(roomID, pAlice, fmt.Sprintf("o%d-%d", w, i), "x")); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	for r, roomID := range rooms {
		got := make(chan OutputEvent, 100)
		stopOut, err := bus.Consume(ctx, b, bus.StreamRoomOutput, fmt.Sprint("outputs-", r), bus.RoomOutputSubject(roomID), func(_ context.Context, o OutputEvent) error {
			got <- o
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		var last int64
		for n := 0; n < 4+each; n++ {
			select {
			case o := <-got:
				if o.RoomID != roomID || o.StreamPos <= last {
					t.Fatalf("output %d of %s: %+v after position %d", n, roomID, o, last)
				}
				last = o.StreamPos
			case <-time.After(10 * time.Second):
				t.Fatalf("%s: %d outputs, want %d", roomID, n, 4+each)
			}
		}
		stopOut()
	}
}

// TestIdenticalCreatesInOneMillisecond: room version 12 derives the room
// id from the create event, so the same creator creating two rooms with
// the same content at the same instant would make one id; each request
// still gets a room of its own (the clock is frozen here).
func TestIdenticalCreatesInOneMillisecond(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		rs := newPipeline(t, db)
		frozen := time.UnixMilli(1_800_000_000_000)
		rs.now = func() time.Time { return frozen }
		create := func(id string) string {
			t.Helper()
			resp, err := rs.HandleInput(context.Background(), InputRequest{InputID: id, CreateRoom: &CreateRoom{RoomVersion: "12", Events: []NewEvent{
				{Sender: pAlice, Type: "m.room.create", StateKey: ptr(""), Content: js(map[string]any{"room_version": "12"})},
				{Sender: pAlice, Type: "m.room.member", StateKey: ptr(pAlice), Content: js(map[string]any{"membership": "join"})},
			}}})
			if err != nil {
				t.Fatalf("create %s: %v", id, err)
			}
			return resp.RoomID
		}
		a, b := create("first"), create("second")
		if a == b {
			t.Fatalf("two creates made one room %s", a)
		}
		if again := create("first"); again != a {
			t.Fatalf("a retried input made room %s, first time %s", again, a)
		}
	})
}

// CommittedEvent gives the events this process built as the database
// holds them: a message and a state event of one batch, with their stream
// positions; another process reads them from the database.
func TestCommittedEventAsStored(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		rs, other := newPipeline(t, db), newPipeline(t, db)
		roomID := newRoom(t, rs, "recent")
		res := rs.handleInputs(ctx, []InputRequest{
			msg(roomID, pAlice, "r1", "hello"),
			member(roomID, pAlice, pBob, "r2", "invite"),
		})
		for _, r := range res {
			if r.err != nil {
				t.Fatal(r.err)
			}
			id := r.resp.EventIDs[0]
			if _, ok := rs.recent.Get(id); !ok {
				t.Fatalf("%s is not kept in memory", id)
			}
			mem, pdu, err := rs.CommittedEvent(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			stored, storedPDU, err := other.CommittedEvent(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(mem, stored) || string(pdu.JSON()) != string(storedPDU.JSON()) {
				mem.JSON, stored.JSON = nil, nil
				t.Errorf("%s:\nin memory %+v\nstored    %+v", id, mem, stored)
			}
		}
	})
}
