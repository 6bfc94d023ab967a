package clientapi_test

import (
	"context"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/weft-chat/weft/sql"
)

// ephemeralRoom makes a room that owner creates with the given presets
// and that each of joiners joins, and returns its id.
func ephemeralRoom(t *testing.T, owner *testUser, req *mautrix.ReqCreateRoom, joiners ...*testUser) string {
	t.Helper()
	ctx := context.Background()
	if req == nil {
		req = &mautrix.ReqCreateRoom{Preset: "public_chat"}
	}
	resp, err := owner.Client.CreateRoom(ctx, req)
	if err != nil {
		t.Fatalf("create room: %v", err)
	}
	for _, u := range joiners {
		if _, err := u.Client.JoinRoomByID(ctx, resp.RoomID); err != nil {
			t.Fatalf("%s joins: %v", u.UserID, err)
		}
	}
	return resp.RoomID.String()
}

// sendText sends a message as u and returns its event id.
func sendText(t *testing.T, u *testUser, roomID string, content map[string]any) string {
	t.Helper()
	if content == nil {
		content = map[string]any{"msgtype": "m.text", "body": "hi"}
	}
	resp, err := u.Client.SendMessageEvent(context.Background(), id.RoomID(roomID), event.EventMessage, content)
	if err != nil {
		t.Fatalf("%s sends: %v", u.UserID, err)
	}
	return resp.EventID.String()
}

// receiptsOf reads the receipts u may see in every room, keyed by
// "type user thread".
func receiptsOf(t *testing.T, s *testServer, u *testUser) map[string]sql.Receipt {
	t.Helper()
	pos, err := s.DB.SyncPositions(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	rs, err := s.DB.SyncReceipts(context.Background(), u.UserID, 0, pos.Receipts)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]sql.Receipt{}
	for _, r := range rs {
		out[r.Type+" "+r.UserID+" "+r.ThreadID] = r
	}
	return out
}

func TestReceiptErrors(t *testing.T) {
	forEachEngine(t, func(t *testing.T, s *testServer) {
		alice, bob, eve := s.newUser(t, "alice"), s.newUser(t, "bob"), s.newUser(t, "eve")
		room := ephemeralRoom(t, alice, nil, bob)
		other := ephemeralRoom(t, eve, nil)
		ev := sendText(t, alice, room, nil)
		otherEv := sendText(t, eve, other, nil)
		path := func(roomID, typ, eventID string) string {
			return "/rooms/" + pathEsc(roomID) + "/receipt/" + pathEsc(typ) + "/" + pathEsc(eventID)
		}
		guest := s.newGuest(t, "guest")
		for _, c := range []struct {
			name, token, path string
			body              any
			status            int
			code              string
		}{
			{"no token", "", path(room, "m.read", ev), `{}`, 401, "M_MISSING_TOKEN"},
			{"unknown receipt type", bob.Token, path(room, "m.unknown", ev), `{}`, 400, "M_INVALID_PARAM"},
			{"not an event id", bob.Token, path(room, "m.read", "nope"), `{}`, 400, "M_INVALID_PARAM"},
			{"not a room id", bob.Token, path("nope", "m.read", ev), `{}`, 400, "M_INVALID_PARAM"},
			{"not json", bob.Token, path(room, "m.read", ev), `{`, 400, "M_NOT_JSON"},
			{"not an object", bob.Token, path(room, "m.read", ev), `[]`, 400, "M_BAD_JSON"},
			{"thread_id not a string", bob.Token, path(room, "m.read", ev), `{"thread_id": 5}`, 400, "M_INVALID_PARAM"},
			{"thread_id empty", bob.Token, path(room, "m.read", ev), `{"thread_id": ""}`, 400, "M_INVALID_PARAM"},
			{"thread_id on m.fully_read", bob.Token, path(room, "m.fully_read", ev), `{"thread_id": "main"}`, 400, "M_INVALID_PARAM"},
			{"not joined", eve.Token, path(room, "m.read", ev), `{}`, 403, "M_FORBIDDEN"},
			{"guest", guest.Token, path(room, "m.read", ev), `{}`, 403, "M_GUEST_ACCESS_FORBIDDEN"},
			{"unknown event", bob.Token, path(room, "m.read", "$nope:test.local"), `{}`, 404, "M_NOT_FOUND"},
			{"another room's event", bob.Token, path(room, "m.read", otherEv), `{}`, 404, "M_NOT_FOUND"},
			{"unknown event, private", bob.Token, path(room, "m.read.private", "$nope"), `{}`, 404, "M_NOT_FOUND"},
			{"unknown event, fully read", bob.Token, path(room, "m.fully_read", "$nope"), `{}`, 404, "M_NOT_FOUND"},
		} {
			t.Run(c.name, func(t *testing.T) {
				s.call(t, "POST", c.path, c.token, c.body).expectError(t, c.status, c.code)
			})
		}
		if got := receiptsOf(t, s, bob); len(got) != 0 {
			t.Fatalf("failed receipts stored: %v", got)
		}
		// A body is optional: clients send none.
		s.call(t, "POST", path(room, "m.read", ev), bob.Token, nil).expect(t, 200)
		if got := receiptsOf(t, s, bob)["m.read "+bob.UserID+" "]; got.EventID != ev || got.TS == 0 {
			t.Fatalf("bob's receipt: %+v", got)
		}
	})
}

// TestReceiptHiddenEvent: an event the caller may not see is not found,
// as GET /event answers (history visibility "joined", sent before they
// joined).
func TestReceiptHiddenEvent(t *testing.T) {
	forEachEngine(t, func(t *testing.T, s *testServer) {
		alice, bob := s.newUser(t, "alice"), s.newUser(t, "bob")
		room := ephemeralRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", InitialState: []*event.Event{{
			Type: event.StateHistoryVisibility, Content: event.Content{Raw: map[string]any{"history_visibility": "joined"}}}}})
		before := sendText(t, alice, room, nil)
		if _, err := bob.Client.JoinRoomByID(context.Background(), id.RoomID(room)); err != nil {
			t.Fatal(err)
		}
		after := sendText(t, alice, room, nil)
		base := "/rooms/" + pathEsc(room) + "/receipt/m.read/"
		s.call(t, "POST", base+pathEsc(before), bob.Token, `{}`).expectError(t, 404, "M_NOT_FOUND")
		s.call(t, "POST", base+pathEsc(after), bob.Token, `{}`).expect(t, 200)
	})
}

// TestReceiptsMoveForward: a receipt for an event before the current one
// is ignored (as Synapse does), per type and thread.
func TestReceiptsMoveForward(t *testing.T) {
	forEachEngine(t, func(t *testing.T, s *testServer) {
		alice, bob := s.newUser(t, "alice"), s.newUser(t, "bob")
		room := ephemeralRoom(t, alice, nil, bob)
		e1, e2 := sendText(t, alice, room, nil), sendText(t, alice, room, nil)
		post := func(typ, ev, body string) {
			t.Helper()
			s.call(t, "POST", "/rooms/"+pathEsc(room)+"/receipt/"+typ+"/"+pathEsc(ev), bob.Token, body).expect(t, 200)
		}
		post("m.read", e2, `{}`)
		post("m.read", e1, `{}`)
		post("m.read.private", e1, `{}`)
		post("m.read", e1, `{"thread_id": "main"}`)
		got := receiptsOf(t, s, bob)
		for key, want := range map[string]string{
			"m.read " + bob.UserID + " ":         e2,
			"m.read.private " + bob.UserID + " ": e1,
			"m.read " + bob.UserID + " main":     e1,
		} {
			if got[key].EventID != want {
				t.Errorf("%s = %q, want %q", key, got[key].EventID, want)
			}
		}
		if len(got) != 3 {
			t.Fatalf("receipts: %v", got)
		}
	})
}

// TestReceiptThreads checks thread_id against the event's thread (spec:
// 400 when "the event_id is not related to the thread_id").
func TestReceiptThreads(t *testing.T) {
	forEachEngine(t, func(t *testing.T, s *testServer) {
		alice, bob := s.newUser(t, "alice"), s.newUser(t, "bob")
		room := ephemeralRoom(t, alice, nil, bob)
		root := sendText(t, alice, room, nil)
		plain := sendText(t, alice, room, nil)
		reply := sendText(t, alice, room, map[string]any{"msgtype": "m.text", "body": "in thread",
			"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": root}})
		reaction, err := alice.Client.SendMessageEvent(context.Background(), id.RoomID(room), event.EventReaction, map[string]any{
			"m.relates_to": map[string]any{"rel_type": "m.annotation", "event_id": reply, "key": "👍"}})
		if err != nil {
			t.Fatal(err)
		}
		rootReaction, err := alice.Client.SendMessageEvent(context.Background(), id.RoomID(room), event.EventReaction, map[string]any{
			"m.relates_to": map[string]any{"rel_type": "m.annotation", "event_id": root, "key": "👍"}})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			name, event, thread string
			ok                  bool
		}{
			{"main on a main event", plain, "main", true},
			{"main on the root", root, "main", true},
			{"main on a reaction to the root", rootReaction.EventID.String(), "main", true},
			{"main on a thread reply", reply, "main", false},
			{"main on a reaction in the thread", reaction.EventID.String(), "main", false},
			{"thread on its reply", reply, root, true},
			{"thread on a reaction in it", reaction.EventID.String(), root, true},
			{"thread on its root", root, root, true},
			{"thread on a reaction to its root", rootReaction.EventID.String(), root, true},
			{"thread on a main event", plain, root, false},
			{"a non-thread as thread", plain, plain, false},
			{"an unknown thread", reply, "$nope", false},
		} {
			t.Run(c.name, func(t *testing.T) {
				r := s.call(t, "POST", "/rooms/"+pathEsc(room)+"/receipt/m.read.private/"+pathEsc(c.event), bob.Token,
					map[string]string{"thread_id": c.thread})
				if c.ok {
					r.expect(t, 200)
				} else {
					r.expectError(t, 400, "M_INVALID_PARAM")
				}
			})
		}
		if got := receiptsOf(t, s, bob)["m.read.private "+bob.UserID+" "+root]; got.EventID == "" {
			t.Fatal("no receipt stored in the thread")
		}
	})
}

func TestReadMarkers(t *testing.T) {
	forEachEngine(t, func(t *testing.T, s *testServer) {
		alice, bob, eve := s.newUser(t, "alice"), s.newUser(t, "bob"), s.newUser(t, "eve")
		room := ephemeralRoom(t, alice, nil, bob)
		e1, e2 := sendText(t, alice, room, nil), sendText(t, alice, room, nil)
		path := "/rooms/" + pathEsc(room) + "/read_markers"
		fullyRead := func() string {
			t.Helper()
			r := s.call(t, "GET", "/user/"+pathEsc(bob.UserID)+"/rooms/"+pathEsc(room)+"/account_data/m.fully_read", bob.Token, nil)
			if r.Status == 404 {
				return ""
			}
			var c struct {
				EventID string `json:"event_id"`
			}
			r.expect(t, 200).JSON(t, &c)
			return c.EventID
		}
		for _, c := range []struct {
			name, token string
			body        any
			status      int
			code        string
		}{
			{"not json", bob.Token, `{`, 400, "M_NOT_JSON"},
			{"not a string", bob.Token, `{"m.fully_read": 5}`, 400, "M_BAD_JSON"},
			{"not an event id", bob.Token, `{"m.fully_read": "nope"}`, 400, "M_INVALID_PARAM"},
			{"not joined", eve.Token, map[string]string{"m.fully_read": e1}, 403, "M_FORBIDDEN"},
			// One bad event: nothing is written, the good one included.
			{"unknown event", bob.Token, map[string]string{"m.fully_read": e1, "m.read": "$nope"}, 404, "M_NOT_FOUND"},
		} {
			t.Run(c.name, func(t *testing.T) {
				s.call(t, "POST", path, c.token, c.body).expectError(t, c.status, c.code)
			})
		}
		if got := fullyRead(); got != "" {
			t.Fatalf("a failed request set the marker to %s", got)
		}
		if got := receiptsOf(t, s, bob); len(got) != 0 {
			t.Fatalf("a failed request stored receipts: %v", got)
		}

		// All three at once.
		s.call(t, "POST", path, bob.Token, map[string]string{"m.fully_read": e2, "m.read": e1, "m.read.private": e2}).expect(t, 200)
		if got := fullyRead(); got != e2 {
			t.Fatalf("fully read = %q, want %q", got, e2)
		}
		got := receiptsOf(t, s, bob)
		if got["m.read "+bob.UserID+" "].EventID != e1 || got["m.read.private "+bob.UserID+" "].EventID != e2 {
			t.Fatalf("receipts: %v", got)
		}
		// The marker does not move back (as in Synapse), nor through the
		// receipt endpoint.
		s.call(t, "POST", path, bob.Token, map[string]string{"m.fully_read": e1}).expect(t, 200)
		s.call(t, "POST", "/rooms/"+pathEsc(room)+"/receipt/m.fully_read/"+pathEsc(e1), bob.Token, `{}`).expect(t, 200)
		if got := fullyRead(); got != e2 {
			t.Fatalf("fully read moved back to %q", got)
		}
		// Forward through the receipt endpoint; m.fully_read is no receipt.
		e3 := sendText(t, alice, room, nil)
		s.call(t, "POST", "/rooms/"+pathEsc(room)+"/receipt/m.fully_read/"+pathEsc(e3), bob.Token, `{}`).expect(t, 200)
		if got := fullyRead(); got != e3 {
			t.Fatalf("fully read = %q, want %q", got, e3)
		}
		if _, ok := receiptsOf(t, s, bob)["m.fully_read "+bob.UserID+" "]; ok {
			t.Fatal("m.fully_read stored as a receipt")
		}
		// Empty and absent fields change nothing; so does an empty body.
		s.call(t, "POST", path, bob.Token, map[string]string{"m.fully_read": ""}).expect(t, 200)
		s.call(t, "POST", path, bob.Token, `{}`).expect(t, 200)
		if got := fullyRead(); got != e3 {
			t.Fatalf("fully read = %q after empty requests", got)
		}
	})
}
