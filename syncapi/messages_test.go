package syncapi_test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// paginateAll pages through /messages from the given start until end is
// absent, checking each page's shape, and returns every event in the
// order served.
func (h hs) paginateAll(t *testing.T, cli *mautrix.Client, roomID, dir string, limit int, filter, from string) []clientEvent {
	t.Helper()
	var out []clientEvent
	for pages := 0; ; pages++ {
		q := url.Values{"dir": {dir}, "limit": {strconv.Itoa(limit)}}
		if filter != "" {
			q.Set("filter", filter)
		}
		if from != "" {
			q.Set("from", from)
		}
		resp := h.messages(t, cli, roomID, q)
		if from != "" && resp.Start != from {
			t.Fatalf("start %q, want the from token %q", resp.Start, from)
		}
		if len(resp.Chunk) > limit {
			t.Fatalf("page of %d events with limit %d", len(resp.Chunk), limit)
		}
		out = append(out, resp.Chunk...)
		if resp.End == "" {
			return out
		}
		// A full page unless the room has ended: nothing was skipped to
		// make a short one.
		if len(resp.Chunk) != limit {
			t.Fatalf("page of %d events with limit %d, and end %q", len(resp.Chunk), limit, resp.End)
		}
		if pages > 1000 {
			t.Fatal("pagination does not end")
		}
		from = resp.End
	}
}

// TestMessagesPaginationProperty: for every limit from 1 to N, paging
// backwards from the end and forwards from the start serves each event
// exactly once, in order, with and without filters (spec: /messages, "end
// ... omitted" when no further events).
func TestMessagesPaginationProperty(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		alice, bob := h.user(t, "alice"), h.user(t, "bob")
		roomID := roomWithVisibility(t, alice, "shared")
		join(t, bob, roomID)
		const n = 30
		var sent []string
		for i := range n {
			who := alice
			if i%3 == 2 {
				who = bob
			}
			if i%5 == 4 {
				sent = append(sent, sendType(t, who, roomID, event.Type{Type: "org.example.custom", Class: event.MessageEventType}, fmt.Sprint(i), nil))
			} else {
				sent = append(sent, send(t, who, roomID, fmt.Sprint(i), nil))
			}
		}
		all := h.allEvents(t, alice, roomID)
		allIDs := eventIDs(all)
		// The room's own events first, then the messages in send order.
		if got := allIDs[len(allIDs)-n:]; !slices.Equal(got, sent) {
			t.Fatalf("timeline ends with %v, want the sent events %v", got, sent)
		}
		if dup := slices.Compact(slices.Sorted(slices.Values(allIDs))); len(dup) != len(allIDs) {
			t.Fatalf("duplicate events in %v", allIDs)
		}
		pick := func(keep func(clientEvent) bool) []string {
			var out []string
			for _, e := range all {
				if keep(e) {
					out = append(out, e.EventID)
				}
			}
			return out
		}
		filters := []struct {
			name   string
			filter string
			want   []string
		}{
			{"none", "", allIDs},
			{"types", filterJSON(map[string]any{"types": []string{"m.room.message"}}),
				pick(func(e clientEvent) bool { return e.Type == "m.room.message" })},
			{"wildcard types", filterJSON(map[string]any{"types": []string{"org.example.*"}}),
				pick(func(e clientEvent) bool { return e.Type == "org.example.custom" })},
			{"not_types", filterJSON(map[string]any{"not_types": []string{"m.room.message", "m.room.member"}}),
				pick(func(e clientEvent) bool { return e.Type != "m.room.message" && e.Type != "m.room.member" })},
			{"senders", filterJSON(map[string]any{"senders": []string{bob.UserID.String()}}),
				pick(func(e clientEvent) bool { return e.Sender == bob.UserID.String() })},
			{"not_senders and types", filterJSON(map[string]any{"not_senders": []string{bob.UserID.String()}, "types": []string{"m.room.message"}}),
				pick(func(e clientEvent) bool { return e.Sender != bob.UserID.String() && e.Type == "m.room.message" })},
		}
		for _, f := range filters {
			if len(f.want) == 0 {
				t.Fatalf("filter %s selects nothing: a useless test", f.name)
			}
			for limit := 1; limit <= n; limit++ {
				fwd := eventIDs(h.paginateAll(t, alice, roomID, "f", limit, f.filter, ""))
				if !slices.Equal(fwd, f.want) {
					t.Fatalf("filter %s, limit %d forwards:\n got %v\nwant %v", f.name, limit, fwd, f.want)
				}
				back := eventIDs(h.paginateAll(t, alice, roomID, "b", limit, f.filter, ""))
				slices.Reverse(back)
				if !slices.Equal(back, f.want) {
					t.Fatalf("filter %s, limit %d backwards (reversed):\n got %v\nwant %v", f.name, limit, back, f.want)
				}
			}
		}
	})
}

// TestMessagesTokensCompose: tokens from one direction work in the other,
// to bounds a range, a later event shows up when paging forwards from an
// old start, and /sync-style stream tokens are accepted.
func TestMessagesTokensCompose(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		alice := h.user(t, "alice")
		roomID := roomWithVisibility(t, alice, "shared")
		var sent []string
		for i := range 6 {
			sent = append(sent, send(t, alice, roomID, fmt.Sprint(i), nil))
		}
		first := h.messages(t, alice, roomID, url.Values{"dir": {"b"}, "limit": {"2"}})
		if got := eventIDs(first.Chunk); !slices.Equal(got, []string{sent[5], sent[4]}) {
			t.Fatalf("first page %v", got)
		}
		// Forwards from the end of a backwards page: the page's events again,
		// and nothing before them.
		again := h.messages(t, alice, roomID, url.Values{"dir": {"f"}, "from": {first.End}, "limit": {"10"}})
		if got := eventIDs(again.Chunk); !slices.Equal(got, []string{sent[4], sent[5]}) || again.End != "" {
			t.Fatalf("forwards from a backwards end: %v, end %q", got, again.End)
		}
		// to bounds the range: backwards from the start token to the end
		// of a later page.
		second := h.messages(t, alice, roomID, url.Values{"dir": {"b"}, "from": {first.End}, "limit": {"2"}})
		bounded := h.messages(t, alice, roomID, url.Values{"dir": {"b"}, "from": {first.Start}, "to": {second.End}, "limit": {"10"}})
		if got := eventIDs(bounded.Chunk); !slices.Equal(got, []string{sent[5], sent[4], sent[3], sent[2]}) || bounded.End != "" {
			t.Fatalf("bounded by to: %v, end %q", got, bounded.End)
		}
		// The start of a backwards page from the end is the room's end
		// then: new events come after it.
		later := send(t, alice, roomID, "later", nil)
		fresh := h.messages(t, alice, roomID, url.Values{"dir": {"f"}, "from": {first.Start}})
		if got := eventIDs(fresh.Chunk); !slices.Equal(got, []string{later}) {
			t.Fatalf("forwards from an old start: %v", got)
		}
		// A stream token (the leading part of a /sync next_batch) and one
		// of position 0.
		stream := h.messages(t, alice, roomID, url.Values{"dir": {"b"}, "from": {"s999999_3_4"}, "limit": {"1"}})
		if got := eventIDs(stream.Chunk); !slices.Equal(got, []string{later}) || stream.Start != "s999999_3_4" {
			t.Fatalf("backwards from a stream token: %v start %q", got, stream.Start)
		}
		if zero := h.messages(t, alice, roomID, url.Values{"dir": {"b"}, "from": {"s0"}}); len(zero.Chunk) != 0 || zero.End != "" {
			t.Fatalf("backwards from stream position 0: %v end %q", eventIDs(zero.Chunk), zero.End)
		}
		// limit=0: nothing, and a token to go on with.
		if none := h.messages(t, alice, roomID, url.Values{"dir": {"b"}, "limit": {"0"}}); len(none.Chunk) != 0 || none.End == "" {
			t.Fatalf("limit 0: %v end %q", eventIDs(none.Chunk), none.End)
		}
	})
}

// TestMessagesLazyMembers: with lazy_load_members, state carries the
// member events of the chunk's senders, as they stood at the chunk.
func TestMessagesLazyMembers(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		alice, bob, carol := h.user(t, "alice"), h.user(t, "bob"), h.user(t, "carol")
		roomID := roomWithVisibility(t, alice, "shared")
		join(t, bob, roomID)
		join(t, carol, roomID)
		send(t, bob, roomID, "from bob", nil)
		send(t, alice, roomID, "from alice", nil)
		lazy := filterJSON(map[string]any{"lazy_load_members": true, "include_redundant_members": true})
		resp := h.messages(t, carol, roomID, url.Values{"dir": {"b"}, "limit": {"2"}, "filter": {lazy}})
		var members []string
		for _, e := range resp.State {
			if e.Type != "m.room.member" {
				t.Fatalf("lazy state has a %s", e.Type)
			}
			members = append(members, *e.StateKey)
		}
		want := []string{alice.UserID.String(), bob.UserID.String()}
		slices.Sort(want)
		if !slices.Equal(members, want) {
			t.Fatalf("lazy members %v, want the senders %v", members, want)
		}
		// Without lazy loading, no state.
		if plain := h.messages(t, carol, roomID, url.Values{"dir": {"b"}, "limit": {"2"}}); len(plain.State) != 0 {
			t.Fatalf("state without lazy loading: %v", describe(plain.State))
		}
	})
}

// TestMessagesIgnoredUsers: messages from ignored users are hidden, their
// state events are not (spec: Ignoring Users).
func TestMessagesIgnoredUsers(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		alice, bob := h.user(t, "alice"), h.user(t, "bob")
		roomID := roomWithVisibility(t, alice, "shared")
		join(t, bob, roomID)
		hidden := send(t, bob, roomID, "spam", nil)
		kept := send(t, alice, roomID, "hello", nil)
		if err := alice.SetAccountData(t.Context(), "m.ignored_user_list", map[string]any{"ignored_users": map[string]any{bob.UserID.String(): map[string]any{}}}); err != nil {
			t.Fatal(err)
		}
		ids := eventIDs(h.allEvents(t, alice, roomID))
		if slices.Contains(ids, hidden) || !slices.Contains(ids, kept) {
			t.Fatalf("ignoring bob: %v (hidden %s, kept %s)", ids, hidden, kept)
		}
		bobJoin := membershipEventID(t, h.allEvents(t, bob, roomID), bob.UserID.String(), 0)
		if !slices.Contains(ids, bobJoin) {
			t.Fatalf("bob's join (a state event) is hidden from alice")
		}
		// Bob still sees his own message; /context on it is 404 for alice.
		if !slices.Contains(eventIDs(h.allEvents(t, bob, roomID)), hidden) {
			t.Fatal("bob does not see his own message")
		}
		wantError(t, "context of an ignored user's event", h.get(t, alice, roomPath("v3", roomID, "/context/"+esc(hidden)), nil), http.StatusNotFound, "M_NOT_FOUND")
	})
}

// TestMessagesErrors: bad parameters are 400 M_INVALID_PARAM (never a
// 500), bad filters M_NOT_JSON or M_BAD_JSON, and users outside the room
// 403 M_FORBIDDEN.
func TestMessagesErrors(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		alice, mallory := h.user(t, "alice"), h.user(t, "mallory")
		roomID := roomWithVisibility(t, alice, "shared")
		path := roomPath("v3", roomID, "/messages")
		for _, c := range []struct {
			name   string
			q      url.Values
			status int
			code   string
		}{
			{"no dir", url.Values{}, 400, "M_INVALID_PARAM"},
			{"bad dir", url.Values{"dir": {"x"}}, 400, "M_INVALID_PARAM"},
			{"bad limit", url.Values{"dir": {"b"}, "limit": {"ten"}}, 400, "M_INVALID_PARAM"},
			{"negative limit", url.Values{"dir": {"b"}, "limit": {"-1"}}, 400, "M_INVALID_PARAM"},
			{"filter not json", url.Values{"dir": {"b"}, "filter": {"{nope"}}, 400, "M_NOT_JSON"},
			{"filter wrong shape", url.Values{"dir": {"b"}, "filter": {`{"types": "m.room.message"}`}}, 400, "M_BAD_JSON"},
			{"filter bad sender", url.Values{"dir": {"b"}, "filter": {`{"senders": ["not a user"]}`}}, 400, "M_BAD_JSON"},
		} {
			wantError(t, c.name, h.get(t, alice, path, c.q), c.status, c.code)
		}
		for _, tok := range []string{"x", "t", "t1", "t1_", "t_1", "t-1_2", "t1_--2", "tabc_1", "t1_2_3", "t+1_2", "s", "s--1", "sx", "t99999999999999999999_1", "12_3"} {
			for _, param := range []string{"from", "to"} {
				wantError(t, param+" "+tok, h.get(t, alice, path, url.Values{"dir": {"b"}, param: {tok}}), 400, "M_INVALID_PARAM")
			}
		}
		wantError(t, "no access token", h.get(t, nil, path, url.Values{"dir": {"b"}}), 401, "M_MISSING_TOKEN")
		wantError(t, "not a member", h.get(t, mallory, path, url.Values{"dir": {"b"}}), 403, "M_FORBIDDEN")
		wantError(t, "unknown room", h.get(t, alice, roomPath("v3", "!nope:localhost", "/messages"), url.Values{"dir": {"b"}}), 403, "M_FORBIDDEN")
	})
}

// TestMessagesRedactedAfterServed: an event /messages served once is
// served redacted after its redaction (the parsed events syncs keep are
// those of the row as read).
func TestMessagesRedactedAfterServed(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		alice := h.user(t, "alice")
		roomID := roomWithVisibility(t, alice, "shared")
		msg := send(t, alice, roomID, "oops", nil)
		body := func() string {
			t.Helper()
			for _, e := range h.messages(t, alice, roomID, url.Values{"dir": {"b"}, "limit": {"5"}}).Chunk {
				if e.EventID == msg {
					return e.body()
				}
			}
			t.Fatalf("%s not served", msg)
			return ""
		}
		if got := body(); got != "oops" {
			t.Fatalf("before the redaction: %q", got)
		}
		if _, err := alice.RedactEvent(context.Background(), id.RoomID(roomID), id.EventID(msg)); err != nil {
			t.Fatal(err)
		}
		if got := body(); got != "" {
			t.Fatalf("after the redaction: %q", got)
		}
	})
}
