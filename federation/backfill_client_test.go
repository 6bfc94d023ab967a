package federation

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/serverkey"
	"github.com/weft-chat/weft/roomserver"
)

// fakeBackfillRooms stands for the roomserver: it says where to backfill
// from, and places every event of the inputs it is given.
type fakeBackfillRooms struct {
	from []string
	// entered is signalled, and release awaited, by Input when set.
	entered, release chan struct{}

	mu     sync.Mutex
	inputs []roomserver.BackfillRequest
}

func (f *fakeBackfillRooms) BackfillFrom(context.Context, string) (string, []string, error) {
	return "10", f.from, nil
}

func (f *fakeBackfillRooms) Input(_ context.Context, req roomserver.InputRequest) (roomserver.InputResponse, error) {
	if f.entered != nil {
		f.entered <- struct{}{}
		<-f.release
	}
	f.mu.Lock()
	f.inputs = append(f.inputs, *req.Backfill)
	f.mu.Unlock()
	resp := roomserver.InputResponse{RoomID: req.RoomID}
	for _, raw := range req.Backfill.Events {
		resp.EventIDs = append(resp.EventIDs, string(raw)) // only their number counts
	}
	return resp, nil
}

// inputIDs lists the event ids of each input, in order.
func (f *fakeBackfillRooms) inputIDs(t *testing.T) [][]string {
	t.Helper()
	ver := gomatrixserverlib.MustGetRoomVersion("10")
	var out [][]string
	for _, in := range f.inputs {
		var ids []string
		for _, raw := range in.Events {
			ev, err := ver.NewEventFromUntrustedJSON(raw)
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, ev.EventID())
		}
		out = append(out, ids)
	}
	return out
}

type serverList []string

func (s serverList) JoinedServersByAge(context.Context, string) ([]string, error) { return s, nil }

// TestBackfiller: a round asks the servers in the room, ours skipped,
// one after the other until one answers; what it answers is checked as
// every PDU received is (bad signatures and other rooms dropped, bad
// hashes redacted) and goes to the roomserver newest first, in inputs
// small enough for the bus.
func TestBackfiller(t *testing.T) {
	e := newPDUEnv(t)
	ctx := context.Background()
	room := "!room:remote.example"
	ver := gomatrixserverlib.MustGetRoomVersion("10")
	at := func(depth int64, body string) gomatrixserverlib.PDU {
		ev, err := ver.NewEventBuilderFromProtoEvent(&gomatrixserverlib.ProtoEvent{SenderID: "@bob:remote.example", RoomID: room,
			Type: "m.room.message", Content: spec.RawJSON(`{"body":"` + body + `"}`), PrevEvents: []string{"$p"}, AuthEvents: []string{"$a"},
			Depth: depth, Version: ver}).Build(time.Now(), "remote.example", e.remote.keys.Key.ID, e.remote.keys.Key.Private)
		if err != nil {
			t.Fatal(err)
		}
		return ev
	}
	newest, tampered, older := at(9, "newest"), at(8, "tampered"), at(7, "older")
	forged := e.forge(room)
	elsewhere := e.build("10", e.remote, gomatrixserverlib.ProtoEvent{RoomID: "!elsewhere:remote.example"})
	txn := func(pdus ...gomatrixserverlib.PDU) map[string]any {
		raws := make([]json.RawMessage, len(pdus))
		for i, p := range pdus {
			raws[i] = p.JSON()
		}
		if i := slices.Index(pdus, tampered); i >= 0 {
			raws[i] = withContent(t, tampered, `{"body":"evil"}`)
		}
		return map[string]any{"origin": "remote.example", "origin_server_ts": 1, "pdus": raws}
	}
	backfillPath := "GET /_matrix/federation/v1/backfill/" + room
	origin := fakeOrigin(t, map[string]any{backfillPath: txn(older, forged, newest, elsewhere, tampered)})
	down := httptest.NewTLSServer(http.NotFoundHandler())
	down.Close()
	key, _ := serverkey.Generate()
	client := testClient(t, key)

	rooms := &fakeBackfillRooms{from: []string{"$from"}}
	b := NewBackfiller(client, e.ring, serverList{string(ours), down.Listener.Addr().String(), string(origin)}, rooms, nil)
	n, err := b.Backfill(ctx, room)
	if err != nil || n != 3 {
		t.Fatalf("Backfill = %d, %v; want 3 events", n, err)
	}
	got := rooms.inputIDs(t)
	if want := [][]string{{newest.EventID(), tampered.EventID(), older.EventID()}}; len(got) != 1 || !slices.Equal(got[0], want[0]) ||
		rooms.inputs[0].Origin != string(origin) {
		t.Errorf("inputs %v from %s, want %v from %s", got, rooms.inputs[0].Origin, want, origin)
	}
	if tamp, _ := ver.NewEventFromUntrustedJSON(rooms.inputs[0].Events[1]); !tamp.Redacted() {
		t.Error("the event whose content hash failed was not redacted")
	}

	// Nothing to ask for, or not in the room: no round, no error.
	for name, b := range map[string]*Backfiller{
		"no backward extremities": NewBackfiller(client, e.ring, serverList{string(ours), string(origin)}, &fakeBackfillRooms{}, nil),
		"not in the room":         NewBackfiller(client, e.ring, serverList{string(origin)}, rooms, nil),
		"alone in the room":       NewBackfiller(client, e.ring, serverList{string(ours)}, rooms, nil),
	} {
		if n, err := b.Backfill(ctx, room); n != 0 || err != nil {
			t.Errorf("%s: %d, %v", name, n, err)
		}
	}
	if len(rooms.inputs) != 1 {
		t.Errorf("%d inputs, want still 1", len(rooms.inputs))
	}

	// Every server failing: the error says what each did.
	empty := fakeOrigin(t, map[string]any{backfillPath: txn(forged)})
	b = NewBackfiller(client, e.ring, serverList{string(ours), down.Listener.Addr().String(), string(empty)}, rooms, nil)
	if n, err := b.Backfill(ctx, room); n != 0 || err == nil || !strings.Contains(err.Error(), string(empty)+" answered no usable events") ||
		!strings.Contains(err.Error(), down.Listener.Addr().String()) {
		t.Errorf("every server failing: %d, %v", n, err)
	}

	// An answer larger than an input may be goes in several, newest
	// first.
	var big []gomatrixserverlib.PDU
	for i := range 12 {
		big = append(big, at(int64(100+i), strings.Repeat("x", 60_000)))
	}
	slices.Reverse(big)
	rooms = &fakeBackfillRooms{from: []string{"$from"}}
	b = NewBackfiller(client, e.ring, serverList{string(ours), string(fakeOrigin(t, map[string]any{backfillPath: txn(big...)}))}, rooms, nil)
	if n, err := b.Backfill(ctx, room); n != len(big) || err != nil {
		t.Fatalf("big answer: %d, %v", n, err)
	}
	got = rooms.inputIDs(t)
	var all []string
	for _, in := range rooms.inputs {
		size := 0
		for _, raw := range in.Events {
			size += len(raw)
		}
		if size > backfillInputBytes {
			t.Errorf("an input of %d bytes", size)
		}
	}
	for _, ids := range got {
		all = append(all, ids...)
	}
	var want []string
	for _, ev := range big {
		want = append(want, ev.EventID())
	}
	if len(got) < 2 || !slices.Equal(all, want) {
		t.Errorf("big answer in %d inputs, %v; want several, newest first", len(got), all)
	}
}

// Rounds asked for in a room while one runs there share its result: the
// history is fetched and placed once.
func TestBackfillerOneRoundAtATime(t *testing.T) {
	e := newPDUEnv(t)
	ctx := context.Background()
	room := "!room:remote.example"
	ev := e.build("10", e.remote, gomatrixserverlib.ProtoEvent{RoomID: room})
	origin := fakeOrigin(t, map[string]any{"GET /_matrix/federation/v1/backfill/" + room: map[string]any{
		"origin": "remote.example", "origin_server_ts": 1, "pdus": []json.RawMessage{ev.JSON()}}})
	key, _ := serverkey.Generate()
	rooms := &fakeBackfillRooms{from: []string{"$from"}, entered: make(chan struct{}, 2), release: make(chan struct{})}
	b := NewBackfiller(testClient(t, key), e.ring, serverList{string(ours), string(origin)}, rooms, nil)
	results := make(chan int, 2)
	go func() { n, _ := b.Backfill(ctx, room); results <- n }()
	<-rooms.entered
	go func() { n, _ := b.Backfill(ctx, room); results <- n }()
	// The second waits for the first, whose input is held.
	select {
	case n := <-results:
		t.Fatalf("a round ended (%d) while the first was held", n)
	case <-time.After(300 * time.Millisecond):
	}
	close(rooms.release)
	for range 2 {
		if n := <-results; n != 1 {
			t.Errorf("a round placed %d, want the shared 1", n)
		}
	}
	if len(rooms.inputs) != 1 {
		t.Errorf("%d inputs, want 1", len(rooms.inputs))
	}
}
