package syncapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// TestSyncTimelineLimit: a room with more new events than the limit is
// limited, and /messages from prev_batch back to since fills the gap
// exactly (spec: Syncing).
func TestSyncTimelineLimit(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		alice := h.user(t, "alice")
		roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{})
		f, err := alice.CreateFilter(context.Background(), &mautrix.Filter{Room: &mautrix.RoomFilter{Timeline: &mautrix.FilterPart{Limit: 2}}})
		if err != nil {
			t.Fatal(err)
		}
		since := h.sync(t, alice, url.Values{"filter": {f.FilterID}}).NextBatch
		for i := range 5 {
			send(t, alice, roomID, fmt.Sprint(i), nil)
		}
		resp := h.sync(t, alice, url.Values{"since": {since}, "filter": {f.FilterID}})
		j, _ := resp.joined(roomID)
		if !slices.Equal(bodies(j.Timeline.Events), []string{"3", "4"}) || !j.Timeline.Limited || j.Timeline.PrevBatch == "" {
			t.Fatalf("limited timeline: %v limited=%v prev_batch=%q", bodies(j.Timeline.Events), j.Timeline.Limited, j.Timeline.PrevBatch)
		}
		back := h.messages(t, alice, roomID, url.Values{"dir": {"b"}, "from": {j.Timeline.PrevBatch}, "to": {since}, "limit": {"100"}})
		if got := bodies(back.Chunk); !slices.Equal(got, []string{"2", "1", "0"}) {
			t.Errorf("backwards from prev_batch to since: %v", got)
		}
		fwd := h.messages(t, alice, roomID, url.Values{"dir": {"f"}, "from": {since}, "to": {j.Timeline.PrevBatch}, "limit": {"100"}})
		if got := bodies(fwd.Chunk); !slices.Equal(got, []string{"0", "1", "2"}) {
			t.Errorf("forwards from since to prev_batch: %v", got)
		}
		// Exactly the limit is not limited.
		since = resp.NextBatch
		send(t, alice, roomID, "5", nil)
		send(t, alice, roomID, "6", nil)
		j, _ = h.sync(t, alice, url.Values{"since": {since}, "filter": {f.FilterID}}).joined(roomID)
		if !slices.Equal(bodies(j.Timeline.Events), []string{"5", "6"}) || j.Timeline.Limited {
			t.Errorf("two events with limit 2: %v limited=%v", bodies(j.Timeline.Events), j.Timeline.Limited)
		}
		// The default limit is 10.
		j, _ = h.sync(t, alice, nil).joined(roomID)
		if len(j.Timeline.Events) != 10 || !j.Timeline.Limited {
			t.Errorf("default limit: %d events, limited=%v", len(j.Timeline.Events), j.Timeline.Limited)
		}
	})
}

// TestSyncLimitedStateDelta: the state that changed in the gap of a
// limited timeline is in state, so the client's state is right at the
// start of the timeline (spec: Syncing, "a state delta").
func TestSyncLimitedStateDelta(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		ctx := context.Background()
		alice, bob := h.user(t, "alice"), h.user(t, "bob")
		roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Old name"})
		filter := `{"room":{"timeline":{"limit":2}}}`
		since := h.sync(t, alice, url.Values{"filter": {filter}}).NextBatch
		if _, err := alice.SendStateEvent(ctx, id.RoomID(roomID), event.StateRoomName, "", map[string]any{"name": "New name"}); err != nil {
			t.Fatal(err)
		}
		join(t, bob, roomID)
		for i := range 3 {
			send(t, alice, roomID, fmt.Sprint(i), nil)
		}
		j, _ := h.sync(t, alice, url.Values{"since": {since}, "filter": {filter}}).joined(roomID)
		if !j.Timeline.Limited {
			t.Fatal("not limited")
		}
		st := stateOf(j)
		if !hasState(st, "m.room.name", "") || !hasState(st, "m.room.member", bob.UserID.String()) {
			t.Fatalf("state delta %v misses the name change or bob's join", types(st))
		}
		if hasState(st, "m.room.create", "") || hasState(st, "m.room.member", alice.UserID.String()) {
			t.Errorf("state delta has state unchanged since the last sync: %v", types(st))
		}
		for _, e := range st {
			if e.Type == "m.room.name" && !strings.Contains(string(e.Content), "New name") {
				t.Errorf("state has the old name: %s", e.Content)
			}
		}
		// Not limited: no state, the changes are in the timeline.
		since2 := h.sync(t, alice, url.Values{"filter": {filter}}).NextBatch
		if _, err := alice.SendStateEvent(ctx, id.RoomID(roomID), event.StateTopic, "", map[string]any{"topic": "T"}); err != nil {
			t.Fatal(err)
		}
		j, _ = h.sync(t, alice, url.Values{"since": {since2}, "filter": {filter}}).joined(roomID)
		if j.Timeline.Limited || len(stateOf(j)) != 0 || !hasState(j.Timeline.Events, "m.room.topic", "") {
			t.Errorf("unlimited: limited=%v state %v timeline %v", j.Timeline.Limited, types(stateOf(j)), types(j.Timeline.Events))
		}
	})
}

// TestSyncTimelineFilters: types, not_types, senders, not_senders and
// rooms of the timeline filter; state that a timeline filter leaves out
// still reaches the client through state.
func TestSyncTimelineFilters(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		ctx := context.Background()
		alice, bob := h.user(t, "alice"), h.user(t, "bob")
		roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		other := createRoom(t, alice, &mautrix.ReqCreateRoom{})
		join(t, bob, roomID)
		since := h.sync(t, alice, nil).NextBatch
		send(t, alice, roomID, "from alice", nil)
		send(t, bob, roomID, "from bob", nil)
		sendType(t, alice, roomID, event.Type{Type: "org.example.custom", Class: event.MessageEventType}, "custom", nil)
		if _, err := alice.SendStateEvent(ctx, id.RoomID(roomID), event.StateTopic, "", map[string]any{"topic": "filtered out"}); err != nil {
			t.Fatal(err)
		}
		send(t, alice, other, "other room", nil)

		run := func(f string) (syncJoined, syncResp) {
			resp := h.sync(t, alice, url.Values{"since": {since}, "filter": {f}})
			j, _ := resp.joined(roomID)
			return j, resp
		}
		j, _ := run(`{"room":{"timeline":{"types":["m.room.message"]}}}`)
		if got := types(j.Timeline.Events); !slices.Equal(got, []string{"m.room.message", "m.room.message"}) {
			t.Errorf("types: %v", got)
		}
		if !hasState(stateOf(j), "m.room.topic", "") {
			t.Errorf("a state change the timeline filter left out is not in state: %v", types(stateOf(j)))
		}
		j, _ = run(`{"room":{"timeline":{"not_types":["m.room.*"]}}}`)
		if got := types(j.Timeline.Events); !slices.Equal(got, []string{"org.example.custom"}) {
			t.Errorf("not_types with a wildcard: %v", got)
		}
		j, _ = run(fmt.Sprintf(`{"room":{"timeline":{"senders":[%q],"types":["m.room.message"]}}}`, bob.UserID))
		if got := bodies(j.Timeline.Events); !slices.Equal(got, []string{"from bob"}) {
			t.Errorf("senders: %v", got)
		}
		j, _ = run(fmt.Sprintf(`{"room":{"timeline":{"not_senders":[%q]}}}`, alice.UserID))
		if got := bodies(j.Timeline.Events); !slices.Equal(got, []string{"from bob"}) {
			t.Errorf("not_senders: %v", got)
		}
		_, resp := run(fmt.Sprintf(`{"room":{"rooms":[%q]}}`, other))
		if _, ok := resp.joined(roomID); ok {
			t.Error("room.rooms let another room in")
		}
		if _, ok := resp.joined(other); !ok {
			t.Error("room.rooms left its room out")
		}
		_, resp = run(fmt.Sprintf(`{"room":{"not_rooms":[%q]}}`, other))
		if _, ok := resp.joined(other); ok {
			t.Error("room.not_rooms let its room in")
		}
		// The state filter applies to state.
		j, _ = run(`{"room":{"timeline":{"types":["m.room.message"]},"state":{"not_types":["m.room.topic"]}}}`)
		if hasState(stateOf(j), "m.room.topic", "") {
			t.Error("state not_types let m.room.topic through")
		}
	})
}

// TestSyncLazyLoadMembers: with lazy_load_members the state has the
// member events of the timeline's senders (and the caller's own), not
// every member (spec: Lazy-loading room members).
func TestSyncLazyLoadMembers(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		alice := h.user(t, "alice")
		roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Big room"})
		var users []*mautrix.Client
		for i := range 4 {
			u := h.user(t, fmt.Sprintf("user%d", i))
			join(t, u, roomID)
			users = append(users, u)
		}
		for i := range 4 {
			send(t, alice, roomID, fmt.Sprint("filler ", i), nil)
		}
		send(t, users[1], roomID, "hello", nil)
		send(t, alice, roomID, "hi", nil)
		lazy := `{"room":{"timeline":{"limit":2},"state":{"lazy_load_members":true}}}`
		viewer := users[3]
		j, _ := h.sync(t, viewer, url.Values{"filter": {lazy}}).joined(roomID)
		got := memberKeys(stateOf(j))
		want := []string{alice.UserID.String(), users[1].UserID.String(), viewer.UserID.String()}
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("lazy members %v, want the senders and the caller %v", got, want)
		}
		if !hasState(stateOf(j), "m.room.name", "") || !hasState(stateOf(j), "m.room.create", "") {
			t.Error("lazy loading dropped state that is not membership")
		}
		// Without it, every member.
		j, _ = h.sync(t, viewer, url.Values{"filter": {`{"room":{"timeline":{"limit":2}}}`}}).joined(roomID)
		if n := len(memberKeys(stateOf(j))); n != 5 {
			t.Errorf("%d members without lazy loading, want 5", n)
		}
		// Incremental: the new sender's member event comes with their message.
		since := h.sync(t, viewer, url.Values{"filter": {lazy}}).NextBatch
		send(t, users[2], roomID, "late", nil)
		j, _ = h.sync(t, viewer, url.Values{"since": {since}, "filter": {lazy}}).joined(roomID)
		if got := memberKeys(stateOf(j)); !slices.Equal(got, []string{users[2].UserID.String()}) {
			t.Errorf("incremental lazy members %v", got)
		}
	})
}

// TestSyncUseStateAfter: use_state_after gives state_after (the state at
// the end of the timeline, state events in the timeline included) and no
// state (spec v1.16).
func TestSyncUseStateAfter(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		ctx := context.Background()
		alice := h.user(t, "alice")
		roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{Name: "Before"})
		since := h.sync(t, alice, nil).NextBatch
		if _, err := alice.SendStateEvent(ctx, id.RoomID(roomID), event.StateRoomName, "", map[string]any{"name": "After"}); err != nil {
			t.Fatal(err)
		}
		send(t, alice, roomID, "msg", nil)
		j, _ := h.sync(t, alice, url.Values{"since": {since}, "use_state_after": {"true"}}).joined(roomID)
		if j.State != nil {
			t.Error("state with use_state_after")
		}
		if j.StateAfter == nil || len(j.StateAfter.Events) != 1 || j.StateAfter.Events[0].Type != "m.room.name" ||
			!strings.Contains(string(j.StateAfter.Events[0].Content), "After") {
			t.Fatalf("state_after: %+v", j.StateAfter)
		}
		// A message alone: state_after is present and empty.
		since = h.sync(t, alice, nil).NextBatch
		send(t, alice, roomID, "msg2", nil)
		j, _ = h.sync(t, alice, url.Values{"since": {since}, "use_state_after": {"true"}}).joined(roomID)
		if j.StateAfter == nil || len(j.StateAfter.Events) != 0 {
			t.Errorf("state_after for a message: %+v", j.StateAfter)
		}
		// Initial: the whole state at the end.
		j, _ = h.sync(t, alice, url.Values{"use_state_after": {"true"}}).joined(roomID)
		if j.StateAfter == nil || !hasState(j.StateAfter.Events, "m.room.create", "") || !hasState(j.StateAfter.Events, "m.room.name", "") {
			t.Errorf("initial state_after: %v", j.StateAfter)
		}
	})
}

// TestSyncEventFormat: event_fields keeps the listed fields only;
// event_format federation serves the events as signed.
func TestSyncEventFormat(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		alice := h.user(t, "alice")
		roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{})
		send(t, alice, roomID, "shape", map[string]any{"m.key": "dotted"})
		raw := h.get(t, alice, "/_matrix/client/v3/sync", url.Values{"filter": {`{"event_fields":["type","content.body","content.m\\.key"],"room":{"timeline":{"limit":1}}}`}})
		var resp struct {
			Rooms struct {
				Join map[string]struct {
					Timeline struct {
						Events []map[string]any `json:"events"`
					} `json:"timeline"`
				} `json:"join"`
			} `json:"rooms"`
		}
		if err := json.Unmarshal(raw.body, &resp); err != nil {
			t.Fatal(err)
		}
		evs := resp.Rooms.Join[roomID].Timeline.Events
		if len(evs) != 1 {
			t.Fatalf("timeline %v", evs)
		}
		want := map[string]any{"type": "m.room.message", "content": map[string]any{"body": "shape", "m.key": "dotted"}}
		if fmt.Sprint(evs[0]) != fmt.Sprint(want) {
			t.Errorf("event_fields: %v, want %v", evs[0], want)
		}
		raw = h.get(t, alice, "/_matrix/client/v3/sync", url.Values{"filter": {`{"event_format":"federation","room":{"timeline":{"limit":1}}}`}})
		if err := json.Unmarshal(raw.body, &resp); err != nil {
			t.Fatal(err)
		}
		ev := resp.Rooms.Join[roomID].Timeline.Events[0]
		for _, k := range []string{"signatures", "hashes", "room_id", "depth", "auth_events"} {
			if _, ok := ev[k]; !ok {
				t.Errorf("federation format without %s: %v", k, ev)
			}
		}

		// Both together, in an incremental sync (one room: served on its
		// own, not with the initial sync's batch).
		since := h.sync(t, alice, nil).NextBatch
		send(t, alice, roomID, "later", nil)
		raw = h.get(t, alice, "/_matrix/client/v3/sync", url.Values{"since": {since},
			"filter": {`{"event_format":"federation","event_fields":["type","depth"],"room":{"timeline":{"limit":1}}}`}})
		resp.Rooms.Join = nil
		if err := json.Unmarshal(raw.body, &resp); err != nil {
			t.Fatal(err)
		}
		evs = resp.Rooms.Join[roomID].Timeline.Events
		if len(evs) != 1 || len(evs[0]) != 2 || evs[0]["type"] != "m.room.message" || evs[0]["depth"] == nil {
			t.Errorf("federation format with event_fields: %v", evs)
		}
	})
}
