package syncapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/weft-chat/weft/homeserver/hstest"
	"github.com/weft-chat/weft/sql/sqltest"
)

// TestSyncMautrix: a real client's initial and incremental syncs see the
// rooms it created and the messages sent in them, in order, each once.
func TestSyncMautrix(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		ctx := context.Background()
		alice := h.user(t, "alice")
		roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{Name: "Chat"})
		for _, b := range []string{"one", "two", "three"} {
			send(t, alice, roomID, b, nil)
		}
		resp, err := alice.SyncRequest(ctx, 0, "", "", false, "")
		if err != nil {
			t.Fatal(err)
		}
		room := resp.Rooms.Join[id.RoomID(roomID)]
		if room == nil {
			t.Fatalf("initial sync has no room %s: %+v", roomID, resp.Rooms)
		}
		var got []string
		for _, ev := range room.Timeline.Events {
			if ev.Type == event.EventMessage {
				got = append(got, ev.Content.Raw["body"].(string))
			}
		}
		if !slices.Equal(got, []string{"one", "two", "three"}) {
			t.Fatalf("timeline messages %v", got)
		}
		// The room's creation fits in the timeline limit (10) only in part:
		// what did not fit is in the state, so name and members are known.
		all := append(slices.Clone(room.State.Events), room.Timeline.Events...)
		if !slices.ContainsFunc(all, func(e *event.Event) bool { return e.Type == event.StateRoomName }) ||
			!slices.ContainsFunc(all, func(e *event.Event) bool { return e.Type == event.StateCreate }) {
			t.Fatal("state and timeline together miss the room's name or create event")
		}

		// Nothing new: an incremental sync returns no room.
		next, err := alice.SyncRequest(ctx, 0, resp.NextBatch, "", false, "")
		if err != nil {
			t.Fatal(err)
		}
		if len(next.Rooms.Join) != 0 {
			t.Fatalf("incremental sync with nothing new has rooms: %+v", next.Rooms.Join)
		}
		send(t, alice, roomID, "four", nil)
		next2, err := alice.SyncRequest(ctx, 0, next.NextBatch, "", false, "")
		if err != nil {
			t.Fatal(err)
		}
		r2 := next2.Rooms.Join[id.RoomID(roomID)]
		if r2 == nil || len(r2.Timeline.Events) != 1 || r2.Timeline.Events[0].Content.Raw["body"] != "four" || r2.Timeline.Limited {
			t.Fatalf("incremental sync after one message: %+v", r2)
		}
		if r2.Timeline.Events[0].RoomID != "" {
			// sync.yaml: ClientEventWithoutRoomID.
			t.Errorf("timeline event carries room_id %s", r2.Timeline.Events[0].RoomID)
		}
	})
}

// TestSyncTransactionID: the sending device sees its transaction id on
// its own events; another device of the same user does not.
func TestSyncTransactionID(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		ctx := context.Background()
		alice := h.user(t, "alice")
		roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{})
		if _, err := alice.SendMessageEvent(ctx, id.RoomID(roomID), msgType, map[string]any{"msgtype": "m.text", "body": "hi"},
			mautrix.ReqSendEvent{TransactionID: "txn-42"}); err != nil {
			t.Fatal(err)
		}
		other, err := mautrix.NewClient(h.ClientURL, "", "")
		if err != nil {
			t.Fatal(err)
		}
		login, err := other.Login(ctx, &mautrix.ReqLogin{Type: mautrix.AuthTypePassword,
			Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "alice"}, Password: "password"})
		if err != nil {
			t.Fatal(err)
		}
		other.SetCredentials(login.UserID, login.AccessToken)
		for _, c := range []struct {
			cli  *mautrix.Client
			want string
		}{{alice, "txn-42"}, {other, ""}} {
			j, _ := h.sync(t, c.cli, nil).joined(roomID)
			evs := j.Timeline.Events
			last := evs[len(evs)-1]
			if last.body() != "hi" || last.Unsigned.TransactionID != c.want {
				t.Errorf("device %s: last event %q with transaction_id %q, want %q", c.cli.DeviceID, last.body(), last.Unsigned.TransactionID, c.want)
			}
		}
	})
}

// TestSyncLongPoll: a long-polling sync answers within moments of an
// event for the user (a message in their room, an invite, account data),
// not for events elsewhere, and after its timeout when nothing comes.
func TestSyncLongPoll(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		ctx := context.Background()
		alice, bob, carol := h.user(t, "alice"), h.user(t, "bob"), h.user(t, "carol")
		shared := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		join(t, bob, shared)
		other := createRoom(t, carol, &mautrix.ReqCreateRoom{})
		since := h.sync(t, bob, nil).NextBatch

		// A message in a room bob is not in does not wake him; one in his
		// room does, within moments.
		waiting := h.syncAsync(t, bob, since, 20*time.Second)
		time.Sleep(100 * time.Millisecond)
		send(t, carol, other, "not for bob", nil)
		stillWaiting(t, waiting, "a message in another room")
		sent := time.Now()
		send(t, alice, shared, "wake up", nil)
		r := await(t, waiting, 5*time.Second)
		t.Logf("woken %s after the send returned", r.done.Sub(sent))
		if r.done.Sub(sent) > 2*time.Second {
			t.Errorf("woken %s after the message, want well under the 20 s timeout", r.done.Sub(sent))
		}
		j, ok := r.resp.joined(shared)
		if !ok || !slices.Equal(bodies(j.Timeline.Events), []string{"wake up"}) {
			t.Fatalf("woken sync: %+v", r.resp.Rooms)
		}
		since = r.resp.NextBatch

		// An invite to a room bob has never been in wakes him.
		waiting = h.syncAsync(t, bob, since, 20*time.Second)
		time.Sleep(100 * time.Millisecond)
		invite(t, carol, other, bob)
		r = await(t, waiting, 5*time.Second)
		for range 5 {
			if _, ok := r.resp.invited(other); ok {
				break
			}
			// What "wake up" set off may come first: its unread counts
			// (the push counter runs behind the room) and alice's
			// presence (sending is activity).
			if !countsOnly(r.resp) && r.resp.Presence == nil {
				break
			}
			r = await(t, h.syncAsync(t, bob, r.resp.NextBatch, 20*time.Second), 5*time.Second)
		}
		if _, ok := r.resp.invited(other); !ok {
			t.Fatalf("sync woken by an invite has no invite: %+v", r.resp.Rooms)
		}
		since = r.resp.NextBatch

		// Account data wakes its owner.
		waiting = h.syncAsync(t, bob, since, 20*time.Second)
		time.Sleep(100 * time.Millisecond)
		if err := bob.SetAccountData(ctx, "org.example.settings", map[string]any{"theme": "dark"}); err != nil {
			t.Fatal(err)
		}
		r = await(t, waiting, 5*time.Second)
		if r.resp.AccountData == nil || len(r.resp.AccountData.Events) != 1 ||
			!strings.Contains(string(r.resp.AccountData.Events[0]), `"theme":"dark"`) {
			t.Fatalf("sync woken by account data: %+v", r.resp.AccountData)
		}
		since = r.resp.NextBatch

		// Nothing for bob: the timeout is honoured, and the answer is empty
		// with a token to go on from.
		start := time.Now()
		send(t, carol, createRoom(t, carol, &mautrix.ReqCreateRoom{}), "elsewhere", nil)
		r = await(t, h.syncAsync(t, bob, since, 400*time.Millisecond), 5*time.Second)
		if took := time.Since(start); took < 400*time.Millisecond {
			t.Errorf("answered after %s, before the 400 ms timeout", took)
		}
		if !r.resp.noRooms() || r.resp.AccountData != nil {
			t.Errorf("empty long-poll answered %+v", r.resp)
		}
		if r.resp.NextBatch == "" {
			t.Error("no next_batch")
		}
		// The token moved past what did not concern bob and still misses
		// nothing that did.
		send(t, alice, shared, "after", nil)
		j, _ = h.syncSince(t, bob, r.resp.NextBatch).joined(shared)
		if !slices.Equal(bodies(j.Timeline.Events), []string{"after"}) {
			t.Fatalf("sync from the timed-out token: %v", bodies(j.Timeline.Events))
		}
	})
}

// TestSyncLongPollShutdown: a waiting long-poll answers as soon as the
// server shuts down, not at its timeout.
func TestSyncLongPollShutdown(t *testing.T) {
	srv := hstest.StartEngine(t, sqltest.Engines()[0])
	h := hs{srv}
	alice := h.user(t, "alice")
	since := h.sync(t, alice, nil).NextBatch
	waiting := h.syncAsync(t, alice, since, 60*time.Second)
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-waiting:
	case <-time.After(10 * time.Second):
		t.Fatal("the long-poll outlived the shutdown")
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("shutdown took %s with a long-poll waiting", took)
	}
}

// TestSyncFullStateDoesNotWait: full_state answers at once with every
// joined room's whole state, even when nothing changed.
func TestSyncFullStateDoesNotWait(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		alice := h.user(t, "alice")
		roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{Name: "Named", Topic: "A topic"})
		since := h.sync(t, alice, nil).NextBatch
		start := time.Now()
		resp := h.sync(t, alice, url.Values{"since": {since}, "timeout": {"10000"}, "full_state": {"true"}})
		if time.Since(start) > 5*time.Second {
			t.Fatal("full_state waited for the timeout")
		}
		j, ok := resp.joined(roomID)
		if !ok {
			t.Fatal("full_state sync without the room")
		}
		all := append(stateOf(j), j.Timeline.Events...)
		for _, typ := range []string{"m.room.create", "m.room.name", "m.room.topic", "m.room.power_levels", "m.room.join_rules"} {
			if !hasState(all, typ, "") {
				t.Errorf("full state misses %s", typ)
			}
		}
		if !hasState(all, "m.room.member", alice.UserID.String()) {
			t.Error("full state misses the user's own membership")
		}
		if len(j.Timeline.Events) != 0 {
			t.Errorf("the timeline is still bounded by since: %v", types(j.Timeline.Events))
		}
	})
}

// TestSyncBadRequests: malformed parameters are 4xx Matrix errors.
func TestSyncBadRequests(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		alice := h.user(t, "alice")
		const path = "/_matrix/client/v3/sync"
		for _, c := range []struct {
			q    url.Values
			code string
		}{
			{url.Values{"since": {"garbage"}}, "M_INVALID_PARAM"},
			{url.Values{"since": {"t5_6"}}, "M_INVALID_PARAM"},
			{url.Values{"since": {"s12_x"}}, "M_INVALID_PARAM"},
			{url.Values{"since": {"s-1_0"}}, "M_INVALID_PARAM"},
			{url.Values{"timeout": {"soon"}}, "M_INVALID_PARAM"},
			{url.Values{"timeout": {"-5"}}, "M_INVALID_PARAM"},
			{url.Values{"full_state": {"yes"}}, "M_INVALID_PARAM"},
			{url.Values{"use_state_after": {"maybe"}}, "M_INVALID_PARAM"},
			{url.Values{"set_presence": {"busy"}}, "M_INVALID_PARAM"},
			{url.Values{"filter": {"12345"}}, "M_INVALID_PARAM"},
			{url.Values{"filter": {"nope"}}, "M_INVALID_PARAM"},
			{url.Values{"filter": {"{not json"}}, "M_NOT_JSON"},
			{url.Values{"filter": {`{"room":{"timeline":{"limit":0}}}`}}, "M_BAD_JSON"},
			{url.Values{"filter": {`{"event_format":"xml"}`}}, "M_BAD_JSON"},
		} {
			wantError(t, c.q.Encode(), h.get(t, alice, path, c.q), http.StatusBadRequest, c.code)
		}
		wantError(t, "no token", h.get(t, nil, path, nil), http.StatusUnauthorized, "M_MISSING_TOKEN")
		// Every presence value is accepted (and ignored until presence
		// exists).
		for _, p := range []string{"online", "offline", "unavailable"} {
			h.sync(t, alice, url.Values{"set_presence": {p}})
		}
		// Another user's filter id is unknown to this one.
		bob := h.user(t, "bob")
		f, err := bob.CreateFilter(context.Background(), &mautrix.Filter{Room: &mautrix.RoomFilter{Timeline: &mautrix.FilterPart{Limit: 1}}})
		if err != nil {
			t.Fatal(err)
		}
		wantError(t, "someone else's filter", h.get(t, alice, path, url.Values{"filter": {f.FilterID}}), http.StatusBadRequest, "M_INVALID_PARAM")
		h.sync(t, bob, url.Values{"filter": {f.FilterID}})
	})
}

// TestSyncTokenCompatibility: the next_batch token works as a /messages
// token, and tokens with fewer or more stream positions than today's are
// accepted (older and newer servers' tokens).
func TestSyncTokenCompatibility(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		alice := h.user(t, "alice")
		roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{})
		send(t, alice, roomID, "before", nil)
		next := h.sync(t, alice, nil).NextBatch
		send(t, alice, roomID, "after", nil)
		// spec (Syncing): the gap is filled with /messages from the since
		// token; backwards from next_batch gives what came before it.
		back := h.messages(t, alice, roomID, url.Values{"dir": {"b"}, "from": {next}, "limit": {"1"}})
		if len(back.Chunk) != 1 || back.Chunk[0].body() != "before" {
			t.Fatalf("/messages back from next_batch: %s", describe(back.Chunk))
		}
		fwd := h.messages(t, alice, roomID, url.Values{"dir": {"f"}, "from": {next}})
		if !slices.Equal(bodies(fwd.Chunk), []string{"after"}) {
			t.Fatalf("/messages forwards from next_batch: %s", describe(fwd.Chunk))
		}
		events, _, _ := strings.Cut(strings.TrimPrefix(next, "s"), "_")
		for _, tok := range []string{"s" + events, next + "_7_8_9"} {
			j, _ := h.syncSince(t, alice, tok).joined(roomID)
			if !slices.Equal(bodies(j.Timeline.Events), []string{"after"}) {
				t.Errorf("since %s: %v", tok, bodies(j.Timeline.Events))
			}
		}
	})
}

// TestSyncAccountData: global account data at the top, room account data
// in its room, each new write once in the next incremental sync.
func TestSyncAccountData(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		ctx := context.Background()
		alice := h.user(t, "alice")
		roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{})
		if err := alice.SetAccountData(ctx, "org.example.a", map[string]any{"v": 1}); err != nil {
			t.Fatal(err)
		}
		if err := alice.SetRoomAccountData(ctx, id.RoomID(roomID), "org.example.r", map[string]any{"v": 2}); err != nil {
			t.Fatal(err)
		}
		first := h.sync(t, alice, nil)
		if first.AccountData == nil || !containsType(first.AccountData.Events, "org.example.a") {
			t.Fatalf("initial sync account data: %+v", first.AccountData)
		}
		j, _ := first.joined(roomID)
		if j.AccountData == nil || !containsType(j.AccountData.Events, "org.example.r") {
			t.Fatalf("initial sync room account data: %+v", j.AccountData)
		}
		if containsType(first.AccountData.Events, "org.example.r") {
			t.Error("room account data in the global section")
		}
		if err := alice.SetRoomAccountData(ctx, id.RoomID(roomID), "org.example.r", map[string]any{"v": 3}); err != nil {
			t.Fatal(err)
		}
		next := h.syncSince(t, alice, first.NextBatch)
		if next.AccountData != nil {
			t.Errorf("unchanged global account data sent again: %+v", next.AccountData)
		}
		j, ok := next.joined(roomID)
		if !ok || len(j.AccountData.Events) != 1 || !strings.Contains(string(j.AccountData.Events[0]), `"v":3`) {
			t.Fatalf("incremental room account data: %+v", j.AccountData)
		}
		if len(j.Timeline.Events) != 0 {
			t.Errorf("account data change came with timeline events %v", types(j.Timeline.Events))
		}
		// The account data filter applies.
		filtered := h.sync(t, alice, url.Values{"filter": {`{"account_data":{"not_types":["org.example.*"]},"room":{"account_data":{"types":["m.tag"]}}}`}})
		if filtered.AccountData != nil && containsType(filtered.AccountData.Events, "org.example.a") {
			t.Error("account_data not_types let org.example.a through")
		}
		if j, _ := filtered.joined(roomID); containsType(j.AccountData.Events, "org.example.r") {
			t.Error("room.account_data types let org.example.r through")
		}
	})
}

func containsType(evs []json.RawMessage, typ string) bool {
	for _, raw := range evs {
		var e struct {
			Type string `json:"type"`
		}
		_ = json.Unmarshal(raw, &e)
		if e.Type == typ {
			return true
		}
	}
	return false
}

// TestSyncOmitsUnbuiltFeatures: sections of features that do not exist
// yet are left out rather than filled with empty data a client would read
// as "nothing changed" (to-device, device lists);
// the one-time key counts are in every response, empty long-polls too.
func TestSyncOmitsUnbuiltFeatures(t *testing.T) {
	h := hs{hstest.StartEngine(t, sqltest.Engines()[0])}
	alice := h.user(t, "alice")
	roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{})
	raw := h.get(t, alice, "/_matrix/client/v3/sync", nil)
	for _, key := range []string{`"to_device"`, `"device_lists"`} {
		if strings.Contains(string(raw.body), key) {
			t.Errorf("sync has %s: %s", key, raw.body)
		}
	}
	var resp syncResp
	if err := json.Unmarshal(raw.body, &resp); err != nil {
		t.Fatal(err)
	}
	j, _ := resp.joined(roomID)
	if j.Ephemeral == nil || len(j.Ephemeral.Events) != 0 {
		t.Errorf("ephemeral %+v, want an empty list", j.Ephemeral)
	}
	empty := h.get(t, alice, "/_matrix/client/v3/sync", url.Values{"since": {resp.NextBatch}, "timeout": {"10"}})
	for _, r := range []reply{raw, empty} {
		var keys struct {
			Counts    map[string]int `json:"device_one_time_keys_count"`
			Fallbacks []string       `json:"device_unused_fallback_key_types"`
		}
		if err := json.Unmarshal(r.body, &keys); err != nil {
			t.Fatal(err)
		}
		if n, ok := keys.Counts["signed_curve25519"]; !ok || n != 0 || keys.Fallbacks == nil {
			t.Errorf("key counts %v, fallback types %v: %s", keys.Counts, keys.Fallbacks, r.body)
		}
	}
}
