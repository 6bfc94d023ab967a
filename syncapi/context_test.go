package syncapi_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"testing"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// TestContext: the limit is shared between before and after, the tokens
// continue /messages without repeating or skipping, the state is the
// state at the last event returned, and the filter applies to everything
// but the event itself (spec: event_context.yaml).
func TestContext(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		alice, bob := h.user(t, "alice"), h.user(t, "bob")
		roomID := roomWithVisibility(t, alice, "shared")
		var sent []string
		for i := range 10 {
			sent = append(sent, send(t, alice, roomID, fmt.Sprint(i), nil))
		}
		join(t, bob, roomID) // after sent[9]
		bobMsg := send(t, bob, roomID, "bob", nil)
		path := func(id string) string { return roomPath("v3", roomID, "/context/"+esc(id)) }

		var c contextResponse
		h.getJSON(t, alice, path(sent[5]), url.Values{"limit": {"4"}}, &c)
		if c.Event.EventID != sent[5] || c.Event.body() != "5" {
			t.Fatalf("event %s %q", c.Event.EventID, c.Event.body())
		}
		if got := eventIDs(c.EventsBefore); !slices.Equal(got, []string{sent[4], sent[3]}) {
			t.Fatalf("events_before %v, want newest first %v", got, []string{sent[4], sent[3]})
		}
		if got := eventIDs(c.EventsAfter); !slices.Equal(got, []string{sent[6], sent[7]}) {
			t.Fatalf("events_after %v", got)
		}
		// The tokens go on with /messages exactly where /context stopped.
		back := h.messages(t, alice, roomID, url.Values{"dir": {"b"}, "from": {c.Start}, "limit": {"2"}})
		if got := eventIDs(back.Chunk); !slices.Equal(got, []string{sent[2], sent[1]}) {
			t.Fatalf("backwards from start: %v", got)
		}
		fwd := h.messages(t, alice, roomID, url.Values{"dir": {"f"}, "from": {c.End}, "limit": {"2"}})
		if got := eventIDs(fwd.Chunk); !slices.Equal(got, []string{sent[8], sent[9]}) {
			t.Fatalf("forwards from end: %v", got)
		}
		// State at sent[7]: alice is joined, bob not yet.
		members := map[string]string{}
		for _, s := range c.State {
			if s.Type == "m.room.member" {
				var m struct{ Membership string }
				_ = json.Unmarshal(s.Content, &m)
				members[*s.StateKey] = m.Membership
			}
		}
		if members[alice.UserID.String()] != "join" || members[bob.UserID.String()] != "" {
			t.Fatalf("state members %v", members)
		}
		if !slices.ContainsFunc(c.State, func(e clientEvent) bool { return e.Type == "m.room.create" }) {
			t.Fatalf("state has no create event: %s", describe(c.State))
		}

		// limit 0: the event alone, with tokens around it.
		var zero contextResponse
		h.getJSON(t, alice, path(sent[5]), url.Values{"limit": {"0"}}, &zero)
		if zero.Event.EventID != sent[5] || len(zero.EventsBefore)+len(zero.EventsAfter) != 0 {
			t.Fatalf("limit 0: %v %v", eventIDs(zero.EventsBefore), eventIDs(zero.EventsAfter))
		}
		after0 := h.messages(t, alice, roomID, url.Values{"dir": {"f"}, "from": {zero.End}, "limit": {"1"}})
		if got := eventIDs(after0.Chunk); !slices.Equal(got, []string{sent[6]}) {
			t.Fatalf("forwards from a limit-0 end: %v", got)
		}

		// The filter: only bob's events around; the event itself is
		// served whatever the filter; lazy loading keeps the members of
		// the senders shown.
		var f contextResponse
		h.getJSON(t, alice, path(sent[9]), url.Values{"limit": {"10"},
			"filter": {filterJSON(map[string]any{"senders": []string{bob.UserID.String()}, "lazy_load_members": true})}}, &f)
		if f.Event.EventID != sent[9] || len(f.EventsBefore) != 0 {
			t.Fatalf("filtered before: %s", describe(f.EventsBefore))
		}
		bobJoin := membershipEventID(t, h.allEvents(t, alice, roomID), bob.UserID.String(), 0)
		if got := eventIDs(f.EventsAfter); !slices.Equal(got, []string{bobJoin, bobMsg}) {
			t.Fatalf("filtered after: %v, want bob's join and message", got)
		}
		for _, s := range f.State {
			if s.Sender != bob.UserID.String() {
				t.Fatalf("filtered state has %s from %s", s.Type, s.Sender)
			}
		}
		var types contextResponse
		h.getJSON(t, alice, path(sent[9]), url.Values{"limit": {"4"},
			"filter": {filterJSON(map[string]any{"not_types": []string{"m.room.message"}, "lazy_load_members": true})}}, &types)
		for _, s := range append(slices.Clone(types.EventsBefore), types.EventsAfter...) {
			if s.Type == "m.room.message" {
				t.Fatalf("not_types let a message through")
			}
		}
		for _, s := range types.State {
			if s.Type == "m.room.member" && *s.StateKey != alice.UserID.String() && *s.StateKey != bob.UserID.String() {
				t.Fatalf("lazy members include %s", *s.StateKey)
			}
		}
	})
}

// TestContextErrors: unknown events, events of other rooms and bad
// parameters.
func TestContextErrors(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		alice, mallory := h.user(t, "alice"), h.user(t, "mallory")
		roomID := roomWithVisibility(t, alice, "shared")
		other := roomWithVisibility(t, alice, "shared")
		ev := send(t, alice, roomID, "hi", nil)
		otherEv := send(t, alice, other, "elsewhere", nil)
		path := func(room, id string) string { return roomPath("v3", room, "/context/"+esc(id)) }
		wantError(t, "unknown event", h.get(t, alice, path(roomID, "$nope"), nil), http.StatusNotFound, "M_NOT_FOUND")
		wantError(t, "event of another room", h.get(t, alice, path(roomID, otherEv), nil), http.StatusNotFound, "M_NOT_FOUND")
		wantError(t, "not a member", h.get(t, mallory, path(roomID, ev), nil), http.StatusForbidden, "M_FORBIDDEN")
		wantError(t, "unknown room", h.get(t, alice, path("!nope:localhost", ev), nil), http.StatusForbidden, "M_FORBIDDEN")
		wantError(t, "bad limit", h.get(t, alice, path(roomID, ev), url.Values{"limit": {"x"}}), http.StatusBadRequest, "M_INVALID_PARAM")
		wantError(t, "bad filter", h.get(t, alice, path(roomID, ev), url.Values{"filter": {"["}}), http.StatusBadRequest, "M_NOT_JSON")
		wantError(t, "no token", h.get(t, nil, path(roomID, ev), nil), http.StatusUnauthorized, "M_MISSING_TOKEN")
		// The state of /context carries prev_content for state it changed.
		if _, err := alice.SendStateEvent(t.Context(), id.RoomID(roomID), event.StateTopic, "", map[string]any{"topic": "one"}); err != nil {
			t.Fatal(err)
		}
		topic2, err := alice.SendStateEvent(t.Context(), id.RoomID(roomID), event.StateTopic, "", map[string]any{"topic": "two"})
		if err != nil {
			t.Fatal(err)
		}
		var c contextResponse
		h.getJSON(t, alice, path(roomID, topic2.EventID.String()), nil, &c)
		if string(c.Event.Unsigned.PrevContent) != `{"topic":"one"}` {
			t.Fatalf("prev_content %s", c.Event.Unsigned.PrevContent)
		}
	})
}
