package roomserver_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/weft-chat/weft/internal/bus"
	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/internal/serverkey"
	"github.com/weft-chat/weft/roomserver"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

type harness struct {
	rs     *roomserver.Roomserver
	client *roomserver.Client
	db     *sql.DB
}

func start(t *testing.T, db *sql.DB) harness {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	b, err := bus.Open(ctx, bus.Config{StoreDir: t.TempDir()}, log)
	if err != nil {
		t.Fatal(err)
	}
	key, err := serverkey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	rs := roomserver.New(db, b, "test.local", key, log)
	stop, err := rs.Serve(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); stop(); b.Close() })
	return harness{rs: rs, client: roomserver.NewClient(b), db: db}
}

func sk(s string) *string { return &s }

func content(v any) json.RawMessage {
	b, _ := json.Marshal(v)
	return b
}

const alice = "@alice:test.local"

func createEvents(version string) []roomserver.NewEvent {
	create := map[string]any{"room_version": version}
	users := map[string]int{alice: 100}
	switch version {
	case "11":
	case "12":
		users = map[string]int{} // v12: creators have infinite power and are not listed
	default:
		create["creator"] = alice
	}
	return []roomserver.NewEvent{
		{Sender: alice, Type: "m.room.create", StateKey: sk(""), Content: content(create)},
		{Sender: alice, Type: "m.room.member", StateKey: sk(alice), Content: content(map[string]any{"membership": "join"})},
		{Sender: alice, Type: "m.room.power_levels", StateKey: sk(""), Content: content(map[string]any{"users": users})},
		{Sender: alice, Type: "m.room.join_rules", StateKey: sk(""), Content: content(map[string]any{"join_rule": "invite"})},
		{Sender: alice, Type: "m.room.history_visibility", StateKey: sk(""), Content: content(map[string]any{"history_visibility": "shared"})},
	}
}

func createRoom(t *testing.T, h harness, version string) string {
	t.Helper()
	resp, err := h.client.Input(context.Background(), roomserver.InputRequest{InputID: "create-" + version + t.Name(),
		CreateRoom: &roomserver.CreateRoom{RoomVersion: version, Events: createEvents(version)}})
	if err != nil {
		t.Fatalf("create room v%s: %v", version, err)
	}
	if len(resp.EventIDs) != 5 {
		t.Fatalf("create made %d events, want 5", len(resp.EventIDs))
	}
	return resp.RoomID
}

func send(ctx context.Context, h harness, roomID, sender, txn, body string) (string, error) {
	resp, err := h.client.Input(ctx, roomserver.InputRequest{InputID: "txn-" + sender + txn, RoomID: roomID, NewEvent: &roomserver.NewEvent{
		Sender: sender, Type: "m.room.message", Content: content(map[string]any{"msgtype": "m.text", "body": body}), DeviceID: "DEV", TxnID: txn}})
	if err != nil {
		return "", err
	}
	return resp.EventIDs[0], nil
}

func TestCreateSendAndAuth(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		h := start(t, db)
		ctx := context.Background()
		for _, version := range []string{"1", "6", "10", "11", "12"} {
			t.Run("v"+version, func(t *testing.T) {
				roomID := createRoom(t, h, version)
				create, err := h.rs.CurrentStateEvent(ctx, roomID, "m.room.create", "")
				if err != nil || create == nil {
					t.Fatalf("create event: %v %v", create, err)
				}
				if version == "12" && roomID != "!"+create.EventID()[1:] {
					// Room version 12: the room id is the create event's hash.
					t.Fatalf("v12 room id %s does not derive from create event %s", roomID, create.EventID())
				}
				id, err := send(ctx, h, roomID, alice, "t1", "hello")
				if err != nil {
					t.Fatalf("send: %v", err)
				}
				again, err := send(ctx, h, roomID, alice, "t1", "hello")
				if err != nil || again != id {
					t.Fatalf("retried input gave %s (%v), want %s", again, err, id)
				}
				stored, pdu, err := h.rs.Event(ctx, id)
				if err != nil {
					t.Fatal(err)
				}
				if stored.StreamPos == 0 || pdu.Type() != "m.room.message" {
					t.Fatalf("stored event %+v", stored)
				}
				_, err = send(ctx, h, roomID, "@mallory:test.local", "t2", "let me in")
				var me *mxhttp.Error
				if !errors.As(err, &me) || me.Status != 403 || me.Code != "M_FORBIDDEN" {
					t.Fatalf("non-member send: %v, want 403 M_FORBIDDEN", err)
				}
				m, err := h.rs.Membership(ctx, roomID, alice)
				if err != nil || m != "join" {
					t.Fatalf("membership %q %v", m, err)
				}
			})
		}
	})
}

func TestUnknownRoomAndVersion(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		h := start(t, db)
		ctx := context.Background()
		_, err := send(ctx, h, "!nope:test.local", alice, "x", "hi")
		var me *mxhttp.Error
		if !errors.As(err, &me) || me.Status != 404 {
			t.Fatalf("send to unknown room: %v", err)
		}
		_, err = h.client.Input(ctx, roomserver.InputRequest{CreateRoom: &roomserver.CreateRoom{RoomVersion: "99", Events: createEvents("10")}})
		if !errors.As(err, &me) || me.Code != "M_UNSUPPORTED_ROOM_VERSION" {
			t.Fatalf("unknown version: %v", err)
		}
	})
}

// Fifty senders at once in one room leave a linear graph: every event
// has one prev event, the one before it, and the room one extremity.
func TestParallelSendersLinearGraph(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		h := start(t, db)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		roomID := createRoom(t, h, "12")
		const senders, each = 50, 4
		var wg sync.WaitGroup
		errs := make(chan error, senders*each)
		for s := range senders {
			wg.Go(func() {
				for i := range each {
					if _, err := send(ctx, h, roomID, alice, fmt.Sprintf("p%d-%d", s, i), "x"); err != nil {
						errs <- err
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		info, err := db.Room(ctx, roomID)
		if err != nil {
			t.Fatal(err)
		}
		if len(info.Extremities) != 1 {
			t.Fatalf("%d forward extremities, want 1", len(info.Extremities))
		}
		// Walk back from the extremity: depths fall by one each step.
		id, depth, count := info.Extremities[0], int64(-1), 0
		for id != "" {
			_, pdu, err := h.rs.Event(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if depth != -1 && pdu.Depth() != depth-1 {
				t.Fatalf("event %s depth %d after depth %d", id, pdu.Depth(), depth)
			}
			depth, count = pdu.Depth(), count+1
			prev := pdu.PrevEventIDs()
			if len(prev) > 1 {
				t.Fatalf("event %s has %d prev events", id, len(prev))
			}
			id = ""
			if len(prev) == 1 {
				id = prev[0]
			}
		}
		if want := 5 + senders*each; count != want {
			t.Fatalf("chain has %d events, want %d", count, want)
		}
	})
}

func TestRedaction(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		h := start(t, db)
		ctx := context.Background()
		roomID := createRoom(t, h, "11")
		id, err := send(ctx, h, roomID, alice, "r1", "secret")
		if err != nil {
			t.Fatal(err)
		}
		_, err = h.client.Input(ctx, roomserver.InputRequest{RoomID: roomID, NewEvent: &roomserver.NewEvent{
			Sender: alice, Type: "m.room.redaction", Redacts: id, Content: content(map[string]any{})}})
		if err != nil {
			t.Fatal(err)
		}
		stored, pdu, err := h.rs.Event(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if stored.RedactedBy == "" || string(pdu.Content()) != "{}" {
			t.Fatalf("event not redacted: %s", pdu.Content())
		}
	})
}

// Inputs in flight when the shard consumers stop are handed back and
// handled by the consumers that start next: every waiting sender gets its
// answer, and every input made exactly one event.
func TestStopHandsInputsOver(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		log := slog.New(slog.NewTextHandler(io.Discard, nil))
		b, err := bus.Open(ctx, bus.Config{StoreDir: t.TempDir()}, log)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		key, err := serverkey.Generate()
		if err != nil {
			t.Fatal(err)
		}
		rs := roomserver.New(db, b, "test.local", key, log)
		stop, err := rs.Serve(ctx)
		if err != nil {
			t.Fatal(err)
		}
		h := harness{rs: rs, client: roomserver.NewClient(b), db: db}
		rooms := make([]string, 8)
		for i := range rooms {
			id := fmt.Sprint("stop-room-", i)
			resp, err := h.client.Input(ctx, roomserver.InputRequest{InputID: id, CreateRoom: uniqueCreate(id)})
			if err != nil {
				t.Fatal(err)
			}
			rooms[i] = resp.RoomID
		}

		const senders, each = 16, 10
		var wg sync.WaitGroup
		var mu sync.Mutex
		ids := make(map[string]string)
		errs := make(chan error, senders*each)
		for s := range senders {
			wg.Go(func() {
				for i := range each {
					txn := fmt.Sprintf("stop%d-%d", s, i)
					id, err := send(ctx, h, rooms[(s+i)%len(rooms)], alice, txn, txn)
					if err != nil {
						errs <- fmt.Errorf("%s: %w", txn, err)
						continue
					}
					mu.Lock()
					ids[txn] = id
					mu.Unlock()
				}
			})
		}
		// Stop in the middle of it, and start again: a restart, or the
		// shards moving to another process.
		answered := func() int {
			mu.Lock()
			defer mu.Unlock()
			return len(ids)
		}
		for answered() < senders {
			time.Sleep(time.Millisecond)
		}
		stop()
		if answered() == senders*each {
			t.Fatal("every input was answered before the stop: nothing was in flight")
		}
		again := roomserver.New(db, b, "test.local", key, log)
		stop2, err := again.Serve(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer stop2()
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		seen := make(map[string]bool)
		for txn, id := range ids {
			stored, pdu, err := again.Event(ctx, id)
			if err != nil {
				t.Fatalf("%s: event %s: %v", txn, id, err)
			}
			var c struct{ Body string }
			if err := json.Unmarshal(pdu.Content(), &c); err != nil || c.Body != txn || stored.StreamPos == 0 {
				t.Fatalf("%s got event %s with body %q at %d", txn, id, c.Body, stored.StreamPos)
			}
			seen[id] = true
		}
		if len(seen) != senders*each {
			t.Fatalf("%d inputs made %d distinct events", senders*each, len(seen))
		}
		// No input made a second event: the rooms hold exactly the
		// events answered, after their five initial ones.
		for _, roomID := range rooms {
			info, err := db.Room(ctx, roomID)
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for id := info.Extremities[0]; id != ""; n++ {
				_, pdu, err := again.Event(ctx, id)
				if err != nil {
					t.Fatal(err)
				}
				id = ""
				if prev := pdu.PrevEventIDs(); len(prev) == 1 {
					id = prev[0]
				}
			}
			if want := 5 + senders*each/len(rooms); n != want {
				t.Fatalf("room %s holds %d events, want %d", roomID, n, want)
			}
		}
	})
}
