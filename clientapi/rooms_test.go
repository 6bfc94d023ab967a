package clientapi_test

import (
	"context"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/weft-chat/weft/homeserver/hstest"
	"github.com/weft-chat/weft/internal/testclient"
	"github.com/weft-chat/weft/sql/sqltest"
)

// TestSendAndGetEvent: PUT /send and GET /event end to end, the client
// event format, transaction ids and who may send and read.
func TestSendAndGetEvent(t *testing.T) {
	forEachHS(t, func(t *testing.T, h *roomsHS) {
		ctx := context.Background()
		alice, bob := h.user(t, "alice"), h.user(t, "bob")
		roomID := h.createRoom(t, alice, map[string]any{"preset": "private_chat"})
		rid := id.RoomID(roomID)

		t.Run("client format and transaction id", func(t *testing.T) {
			resp, err := alice.SendMessageEvent(ctx, rid, event.EventMessage, map[string]any{"msgtype": "m.text", "body": "hello"},
				mautrix.ReqSendEvent{TransactionID: "txn-1"})
			if err != nil {
				t.Fatal(err)
			}
			ev := h.event(t, alice, roomID, resp.EventID.String())
			if ev.EventID != resp.EventID.String() || ev.Type != "m.room.message" || ev.Sender != alice.UserID.String() ||
				ev.RoomID != roomID || ev.Content["body"] != "hello" || ev.StateKey != nil || ev.OriginServerTS == 0 {
				t.Fatalf("event %+v", ev)
			}
			if ev.Unsigned.Age == nil || *ev.Unsigned.Age < 0 {
				t.Fatalf("unsigned.age %v", ev.Unsigned.Age)
			}
			// Spec: transaction_id only for the client that sent the event.
			if ev.Unsigned.TransactionID != "txn-1" {
				t.Fatalf("sending device sees transaction_id %q, want txn-1", ev.Unsigned.TransactionID)
			}
			other := h.device(t, alice)
			if got := h.event(t, other, roomID, ev.EventID).Unsigned.TransactionID; got != "" {
				t.Fatalf("another device of the sender sees transaction_id %q", got)
			}
			// mautrix reads it back the same.
			got, err := alice.GetEvent(ctx, rid, resp.EventID)
			if err != nil || got.Content.Raw["body"] != "hello" || got.Unsigned.TransactionID != "txn-1" {
				t.Fatalf("mautrix GetEvent: %+v %v", got, err)
			}
		})

		t.Run("transaction ids", func(t *testing.T) {
			put := func(cli *mautrix.Client, room, typ, txn, body string) string {
				t.Helper()
				var r struct {
					EventID string `json:"event_id"`
				}
				h.do(t, cli, "PUT", "/rooms/"+pathEsc(room)+"/send/"+typ+"/"+txn, map[string]any{"msgtype": "m.text", "body": body}).
					expect(t, 200).JSON(t, &r)
				return r.EventID
			}
			first := put(alice, roomID, "m.room.message", "t", "first")
			// The same request again is a retransmission: same event, no new one.
			if again := put(alice, roomID, "m.room.message", "t", "second"); again != first {
				t.Fatalf("retransmission made %s, want %s", again, first)
			}
			if body := h.event(t, alice, roomID, first).Content["body"]; body != "first" {
				t.Fatalf("retransmission changed the event: body %v", body)
			}
			// The scope is one device and one path.
			other := h.device(t, alice)
			ids := map[string]bool{first: true}
			for name, got := range map[string]string{
				"other device": put(other, roomID, "m.room.message", "t", "x"),
				"other type":   put(alice, roomID, "org.example.msg", "t", "x"),
				"other room":   put(alice, h.createRoom(t, alice, nil), "m.room.message", "t", "x"),
			} {
				if ids[got] {
					t.Fatalf("%s with the same transaction id gave an event already made", name)
				}
				ids[got] = true
			}
		})

		t.Run("non-members", func(t *testing.T) {
			msg := h.send(t, alice, roomID, "private")
			_, err := bob.SendMessageEvent(ctx, rid, event.EventMessage, map[string]any{"msgtype": "m.text", "body": "let me in"})
			wantMxErr(t, err, 403, "M_FORBIDDEN")
			// Not visible and unknown look the same (rooms.yaml: 404).
			h.do(t, bob, "GET", "/rooms/"+pathEsc(roomID)+"/event/"+pathEsc(msg), nil).expectError(t, 404, "M_NOT_FOUND")
		})

		t.Run("not found", func(t *testing.T) {
			msg := h.send(t, alice, roomID, "here")
			h.do(t, alice, "GET", "/rooms/"+pathEsc(roomID)+"/event/"+pathEsc("$nope"), nil).expectError(t, 404, "M_NOT_FOUND")
			// An event looked up through another room is not found there.
			other := h.createRoom(t, alice, nil)
			h.do(t, alice, "GET", "/rooms/"+pathEsc(other)+"/event/"+pathEsc(msg), nil).expectError(t, 404, "M_NOT_FOUND")
			_, err := alice.SendMessageEvent(ctx, id.RoomID("!unknown:"+h.srv.Config.ServerName), event.EventMessage, map[string]any{"body": "x"})
			wantMxErr(t, err, 404, "M_NOT_FOUND")
		})

		t.Run("bad bodies", func(t *testing.T) {
			path := "/rooms/" + pathEsc(roomID) + "/send/m.room.message/"
			h.do(t, alice, "PUT", path+"b1", `["not", "an", "object"]`).expectError(t, 400, "M_BAD_JSON")
			h.do(t, alice, "PUT", path+"b2", `{nope`).expectError(t, 400, "M_NOT_JSON")
			h.do(t, alice, "PUT", path+"b3", ``).expectError(t, 400, "M_NOT_JSON")
			// Spec (Size limits): a whole event over 65536 bytes is refused.
			big := map[string]any{"msgtype": "m.text", "body": strings.Repeat("a", 65536)}
			h.do(t, alice, "PUT", path+"b4", big).expectError(t, 413, "M_TOO_LARGE")
			// And types over 255 bytes.
			h.do(t, alice, "PUT", "/rooms/"+pathEsc(roomID)+"/send/"+strings.Repeat("t", 256)+"/b5", map[string]any{}).
				expectError(t, 413, "M_TOO_LARGE")
			h.do(t, alice, "PUT", "/rooms/nope/send/m.room.message/b6", map[string]any{}).expectError(t, 400, "M_INVALID_PARAM")
			h.do(t, nil, "PUT", path+"b7", map[string]any{}).expectError(t, 401, "M_MISSING_TOKEN")
		})
	})
}

// TestSendRateLimit: sends count against the message rate limit per user;
// retransmissions do not.
func TestSendRateLimit(t *testing.T) {
	for _, e := range sqltest.Engines() {
		t.Run(string(e), func(t *testing.T) {
			cfg := hstest.Config(t, e)
			cfg.RateLimits.Enabled = true
			cfg.RateLimits.Registration.Rate, cfg.RateLimits.Registration.Burst = 100, 100
			cfg.RateLimits.Login.Rate, cfg.RateLimits.Login.Burst = 100, 100
			// createRoom takes one token, then two sends.
			cfg.RateLimits.Message.Rate, cfg.RateLimits.Message.Burst = 0.001, 3
			h := startRoomsHS(t, cfg)
			alice, bob := h.user(t, "alice"), h.user(t, "bob")
			roomID := h.createRoom(t, alice, map[string]any{"preset": "public_chat"})
			path := "/rooms/" + pathEsc(roomID) + "/send/m.room.message/"
			body := map[string]any{"msgtype": "m.text", "body": "x"}
			first := h.do(t, alice, "PUT", path+"1", body).expect(t, 200).Object(t)["event_id"]
			h.do(t, alice, "PUT", path+"2", body).expect(t, 200)
			limited := h.do(t, alice, "PUT", path+"3", body)
			limited.expectError(t, 429, "M_LIMIT_EXCEEDED")
			if ms, _ := limited.Object(t)["retry_after_ms"].(float64); ms <= 0 {
				t.Fatalf("429 without retry_after_ms: %s", limited.Body)
			}
			if again := h.do(t, alice, "PUT", path+"1", body).expect(t, 200).Object(t)["event_id"]; again != first {
				t.Fatalf("retransmission gave %v, want %v", again, first)
			}
			h.do(t, alice, "POST", "/createRoom", map[string]any{}).expectError(t, 429, "M_LIMIT_EXCEEDED")
			// The limit is per user.
			h.join(t, bob, roomID)
			h.do(t, bob, "PUT", path+"1", body).expect(t, 200)
		})
	}
}

// TestRoomState: PUT and GET of state, the three path shapes of the empty
// state key, ?format=event, and who may read and write.
func TestRoomState(t *testing.T) {
	forEachHS(t, func(t *testing.T, h *roomsHS) {
		ctx := context.Background()
		alice, bob, carol := h.user(t, "alice"), h.user(t, "bob"), h.user(t, "carol")
		roomID := h.createRoom(t, alice, map[string]any{"preset": "public_chat", "name": "before"})
		rid := id.RoomID(roomID)
		base := "/rooms/" + pathEsc(roomID) + "/state/"

		t.Run("empty state key paths", func(t *testing.T) {
			// room_state.yaml: with an empty state key the trailing slash is optional.
			a := h.do(t, alice, "PUT", base+"m.room.topic", map[string]any{"topic": "one"}).expect(t, 200).Object(t)["event_id"]
			for _, p := range []string{"m.room.topic", "m.room.topic/"} {
				if got := h.do(t, alice, "GET", base+p, nil).expect(t, 200).Object(t)["topic"]; got != "one" {
					t.Fatalf("GET %s: topic %v", p, got)
				}
			}
			b := h.do(t, alice, "PUT", base+"m.room.topic/", map[string]any{"topic": "two"}).expect(t, 200).Object(t)["event_id"]
			if a == b {
				t.Fatal("a new topic reused the old event")
			}
			var ev roomEvent
			h.do(t, alice, "GET", base+"m.room.topic?format=event", nil).expect(t, 200).JSON(t, &ev)
			if ev.EventID != b || ev.StateKey == nil || *ev.StateKey != "" || ev.Content["topic"] != "two" || ev.RoomID != roomID {
				t.Fatalf("format=event: %+v", ev)
			}
			h.do(t, alice, "GET", base+"m.room.topic?format=nope", nil).expectError(t, 400, "M_INVALID_PARAM")
		})

		t.Run("state keys", func(t *testing.T) {
			// mautrix escapes the state key; "/" must survive as part of it.
			if _, err := alice.SendStateEvent(ctx, rid, event.NewEventType("org.example.state"), "a/b c", map[string]any{"n": 1}); err != nil {
				t.Fatal(err)
			}
			var content map[string]any
			if err := alice.StateEvent(ctx, rid, event.NewEventType("org.example.state"), "a/b c", &content); err != nil || content["n"] != float64(1) {
				t.Fatalf("state a/b c: %v %v", content, err)
			}
			// A state key naming another user is theirs alone (auth rules).
			_, err := alice.SendStateEvent(ctx, rid, event.NewEventType("org.example.state"), bob.UserID.String(), map[string]any{})
			wantMxErr(t, err, 403, "M_FORBIDDEN")
			h.do(t, alice, "GET", base+"org.example.unset/x", nil).expectError(t, 404, "M_NOT_FOUND")
			h.do(t, alice, "GET", base+"org.example.unset", nil).expectError(t, 404, "M_NOT_FOUND")
			h.do(t, alice, "PUT", base+"org.example.state/"+strings.Repeat("k", 256), map[string]any{}).expectError(t, 413, "M_TOO_LARGE")
			h.do(t, alice, "PUT", base+"org.example.state/k", `[]`).expectError(t, 400, "M_BAD_JSON")
		})

		t.Run("same state again", func(t *testing.T) {
			// Like Synapse: re-sending the state the user already set makes
			// no new event.
			put := func(v string) any {
				return h.do(t, alice, "PUT", base+"org.example.same", map[string]any{"v": v}).expect(t, 200).Object(t)["event_id"]
			}
			a, b, c := put("x"), put("x"), put("y")
			if a != b || b == c {
				t.Fatalf("event ids %v %v %v: want the first two equal, the third new", a, b, c)
			}
		})

		t.Run("whole state", func(t *testing.T) {
			state := h.state(t, alice, roomID)
			for _, k := range [][2]string{{"m.room.create", ""}, {"m.room.member", alice.UserID.String()}, {"m.room.power_levels", ""},
				{"m.room.join_rules", ""}, {"m.room.history_visibility", ""}, {"m.room.name", ""}, {"m.room.topic", ""}} {
				if _, ok := state[k]; !ok {
					t.Fatalf("state has no %v", k)
				}
			}
			if got := state[[2]string{"m.room.name", ""}].Content["name"]; got != "before" {
				t.Fatalf("name %v", got)
			}
			mstate, err := alice.State(ctx, rid)
			if err != nil || mstate[event.StateRoomName][""] == nil {
				t.Fatalf("mautrix State: %v %v", mstate, err)
			}
		})

		t.Run("power", func(t *testing.T) {
			h.join(t, bob, roomID)
			// public_chat: m.room.name needs 50, bob has 0.
			_, err := bob.SendStateEvent(ctx, rid, event.StateRoomName, "", map[string]any{"name": "bob's"})
			wantMxErr(t, err, 403, "M_FORBIDDEN")
			// Not a member at all.
			_, err = carol.SendStateEvent(ctx, rid, event.NewEventType("org.example.state"), "", map[string]any{})
			wantMxErr(t, err, 403, "M_FORBIDDEN")
		})

		t.Run("visibility", func(t *testing.T) {
			// Never a member: 403, for the room and each piece of its state.
			h.do(t, carol, "GET", "/rooms/"+pathEsc(roomID)+"/state", nil).expectError(t, 403, "M_FORBIDDEN")
			h.do(t, carol, "GET", base+"m.room.name", nil).expectError(t, 403, "M_FORBIDDEN")
			h.do(t, carol, "GET", "/rooms/"+pathEsc("!unknown:"+h.srv.Config.ServerName)+"/state", nil).expectError(t, 403, "M_FORBIDDEN")

			// rooms.yaml: a user who left reads the state as it was when they left.
			h.join(t, carol, roomID)
			if _, err := carol.LeaveRoom(ctx, rid); err != nil {
				t.Fatal(err)
			}
			if _, err := alice.SendStateEvent(ctx, rid, event.StateRoomName, "", map[string]any{"name": "after"}); err != nil {
				t.Fatal(err)
			}
			if got := h.do(t, carol, "GET", base+"m.room.name", nil).expect(t, 200).Object(t)["name"]; got != "before" {
				t.Fatalf("departed user reads name %v, want the name at their leave", got)
			}
			state := h.state(t, carol, roomID)
			if got := state[[2]string{"m.room.name", ""}].Content["name"]; got != "before" {
				t.Fatalf("departed user's state has name %v", got)
			}
			if m := state[[2]string{"m.room.member", carol.UserID.String()}].Content["membership"]; m != "leave" {
				t.Fatalf("departed user's own membership %v, want their leave", m)
			}
			if got := h.state(t, alice, roomID)[[2]string{"m.room.name", ""}].Content["name"]; got != "after" {
				t.Fatalf("member reads name %v", got)
			}

			// World-readable rooms are readable by anyone.
			dave := h.user(t, "dave")
			h.do(t, dave, "GET", base+"m.room.name", nil).expectError(t, 403, "M_FORBIDDEN")
			if _, err := alice.SendStateEvent(ctx, rid, event.StateHistoryVisibility, "", map[string]any{"history_visibility": "world_readable"}); err != nil {
				t.Fatal(err)
			}
			if got := h.do(t, dave, "GET", base+"m.room.name", nil).expect(t, 200).Object(t)["name"]; got != "after" {
				t.Fatalf("world-readable name %v", got)
			}
			if len(h.state(t, dave, roomID)) == 0 {
				t.Fatal("world-readable room shows no state")
			}
		})
	})
}

// TestCanonicalAlias: room_state.yaml's checks on m.room.canonical_alias.
func TestCanonicalAlias(t *testing.T) {
	forEachHS(t, func(t *testing.T, h *roomsHS) {
		alice := h.user(t, "alice")
		roomID := h.createRoom(t, alice, nil)
		other := h.createRoom(t, alice, nil)
		server := h.srv.Config.ServerName
		for alias, room := range map[string]string{"#here:" + server: roomID, "#there:" + server: other} {
			h.do(t, alice, "PUT", "/directory/room/"+pathEsc(alias), map[string]any{"room_id": room}).expect(t, 200)
		}
		path := "/rooms/" + pathEsc(roomID) + "/state/m.room.canonical_alias"
		h.do(t, alice, "PUT", path, map[string]any{"alias": "#nowhere:" + server}).expectError(t, 400, "M_BAD_ALIAS")
		h.do(t, alice, "PUT", path, map[string]any{"alias": "#there:" + server}).expectError(t, 400, "M_BAD_ALIAS")
		h.do(t, alice, "PUT", path, map[string]any{"alt_aliases": []string{"#nowhere:" + server}}).expectError(t, 400, "M_BAD_ALIAS")
		h.do(t, alice, "PUT", path, map[string]any{"alias": "no-hash"}).expectError(t, 400, "M_INVALID_PARAM")
		h.do(t, alice, "PUT", path, map[string]any{"alt_aliases": []any{5}}).expectError(t, 400, "M_INVALID_PARAM")
		h.do(t, alice, "PUT", path, map[string]any{"alias": "#here:" + server, "alt_aliases": []string{"#here:" + server}}).expect(t, 200)
		// Aliases already in the event are not checked again: an alias
		// gone from the directory (behind its back, so the event keeps it)
		// does not block other changes.
		if _, err := h.db.DeleteAlias(context.Background(), "#here:"+server); err != nil {
			t.Fatal(err)
		}
		h.do(t, alice, "PUT", path, map[string]any{"alias": "#here:" + server, "alt_aliases": []string{"#far:elsewhere.example"}}).expect(t, 200)
		h.do(t, alice, "PUT", path, map[string]any{}).expect(t, 200)
	})
}

// TestRedaction: PUT /redact by the sender and by a moderator, refusals,
// idempotency, and how redacted events are served.
func TestRedaction(t *testing.T) {
	forEachHS(t, func(t *testing.T, h *roomsHS) {
		ctx := context.Background()
		alice, bob, carol, mod := h.user(t, "alice"), h.user(t, "bob"), h.user(t, "carol"), h.user(t, "mod")
		roomID := h.createRoom(t, alice, map[string]any{"preset": "public_chat",
			"power_level_content_override": map[string]any{"users": map[string]int{mod.UserID.String(): 50}}})
		rid := id.RoomID(roomID)
		for _, c := range []*mautrix.Client{bob, carol, mod} {
			h.join(t, c, roomID)
		}
		redact := func(cli *mautrix.Client, target, txn string) (string, error) {
			resp, err := cli.RedactEvent(ctx, rid, id.EventID(target), mautrix.ReqRedact{Reason: "because", TxnID: txn})
			if err != nil {
				return "", err
			}
			return resp.EventID.String(), nil
		}

		t.Run("own event", func(t *testing.T) {
			msg := h.send(t, bob, roomID, "oops")
			rid1, err := redact(bob, msg, "r1")
			if err != nil {
				t.Fatal(err)
			}
			ev := h.event(t, alice, roomID, msg)
			if len(ev.Content) != 0 {
				t.Fatalf("redacted event still has content %v", ev.Content)
			}
			rb := ev.Unsigned.RedactedBecause
			if rb == nil || rb.EventID != rid1 || rb.Type != "m.room.redaction" || rb.Redacts != msg || rb.Content["reason"] != "because" || rb.Sender != bob.UserID.String() {
				t.Fatalf("redacted_because %+v", rb)
			}
			again, err := redact(bob, msg, "r1")
			if err != nil || again != rid1 {
				t.Fatalf("retransmitted redaction gave %s %v, want %s", again, err, rid1)
			}
			if got := h.event(t, bob, roomID, rid1); got.Redacts != msg || got.Unsigned.TransactionID != "r1" {
				t.Fatalf("redaction event %+v", got)
			}
		})

		t.Run("moderator", func(t *testing.T) {
			msg := h.send(t, carol, roomID, "spam")
			if _, err := redact(mod, msg, "m1"); err != nil {
				t.Fatal(err)
			}
			if ev := h.event(t, carol, roomID, msg); len(ev.Content) != 0 || ev.Unsigned.RedactedBecause == nil {
				t.Fatalf("moderator's redaction not applied: %+v", ev)
			}
			// A moderator may redact events the server has not seen (Synapse).
			if _, err := redact(mod, "$unknown", "m2"); err != nil {
				t.Fatal(err)
			}
		})

		t.Run("refused", func(t *testing.T) {
			msg := h.send(t, alice, roomID, "keep")
			_, err := redact(carol, msg, "c1")
			wantMxErr(t, err, 403, "M_FORBIDDEN")
			// Through /send too (spec v1.18).
			h.do(t, carol, "PUT", "/rooms/"+pathEsc(roomID)+"/send/m.room.redaction/c2", map[string]any{"redacts": msg}).
				expectError(t, 403, "M_FORBIDDEN")
			if ev := h.event(t, alice, roomID, msg); ev.Content["body"] != "keep" {
				t.Fatalf("refused redaction changed the event: %+v", ev)
			}
			_, err = redact(carol, "$unknown", "c3")
			wantMxErr(t, err, 404, "M_NOT_FOUND")
			create := h.state(t, alice, roomID)[[2]string{"m.room.create", ""}].EventID
			_, err = redact(alice, create, "c4")
			wantMxErr(t, err, 403, "M_FORBIDDEN")
			dave := h.user(t, "dave")
			_, err = redact(dave, msg, "c5")
			wantMxErr(t, err, 403, "M_FORBIDDEN")
			path := "/rooms/" + pathEsc(roomID) + "/redact/" + pathEsc(msg) + "/"
			h.do(t, alice, "PUT", path+"c6", `[]`).expectError(t, 400, "M_BAD_JSON")
			h.do(t, alice, "PUT", path+"c7", map[string]any{"reason": 5}).expectError(t, 400, "M_BAD_JSON")
			h.do(t, alice, "PUT", "/rooms/"+pathEsc(roomID)+"/send/m.room.redaction/c8", map[string]any{}).expectError(t, 400, "M_BAD_JSON")
		})

		t.Run("state event", func(t *testing.T) {
			resp, err := alice.SendStateEvent(ctx, rid, event.StateTopic, "", map[string]any{"topic": "secret"})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := redact(alice, resp.EventID.String(), "s1"); err != nil {
				t.Fatal(err)
			}
			var ev roomEvent
			h.do(t, bob, "GET", "/rooms/"+pathEsc(roomID)+"/state/m.room.topic?format=event", nil).expect(t, 200).JSON(t, &ev)
			if len(ev.Content) != 0 || ev.Unsigned.RedactedBecause == nil {
				t.Fatalf("redacted state served as %+v", ev)
			}
			if st := h.state(t, bob, roomID)[[2]string{"m.room.topic", ""}]; st.Unsigned.RedactedBecause == nil {
				t.Fatalf("GET /state serves the redacted topic as %+v", st)
			}
		})
	})
}

// TestGuestsInRooms: guests may not create rooms or redact (spec: Guest
// access lists the endpoints open to them).
func TestGuestsInRooms(t *testing.T) {
	cfg := hstest.Config(t, sqltest.Engines()[0])
	cfg.Registration.AllowGuests = true
	h := startRoomsHS(t, cfg)
	guest := testclient.RegisterGuest(t, h.srv.ClientURL)
	h.do(t, guest, "POST", "/createRoom", map[string]any{}).expectError(t, 403, "M_GUEST_ACCESS_FORBIDDEN")
	alice := h.user(t, "alice")
	roomID := h.createRoom(t, alice, map[string]any{"preset": "public_chat"})
	msg := h.send(t, alice, roomID, "hi")
	h.do(t, guest, "PUT", "/rooms/"+pathEsc(roomID)+"/redact/"+pathEsc(msg)+"/g", map[string]any{}).
		expectError(t, 403, "M_GUEST_ACCESS_FORBIDDEN")
}
