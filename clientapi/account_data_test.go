package clientapi_test

import (
	"context"
	"net/url"
	"strings"
	"testing"

	"maunium.net/go/mautrix/id"
)

func TestAccountDataRoundTrip(t *testing.T) {
	forEachEngine(t, func(t *testing.T, s *testServer) {
		ctx := context.Background()
		alice := s.newUser(t, "alice")
		cli := alice.Client
		direct := map[string]any{"@bob:test.local": []any{"!dm:test.local"}}
		if err := cli.SetAccountData(ctx, "m.direct", direct); err != nil {
			t.Fatal(err)
		}
		var got map[string]any
		if err := cli.GetAccountData(ctx, "m.direct", &got); err != nil {
			t.Fatal(err)
		}
		if list, _ := got["@bob:test.local"].([]any); len(got) != 1 || len(list) != 1 || list[0] != "!dm:test.local" {
			t.Fatalf("m.direct %v", got)
		}
		room := id.RoomID("!room:test.local")
		if err := cli.SetRoomAccountData(ctx, room, "m.tag", map[string]any{"tags": map[string]any{"u.work": map[string]any{"order": 0.5}}}); err != nil {
			t.Fatal(err)
		}
		got = nil
		if err := cli.GetRoomAccountData(ctx, room, "m.tag", &got); err != nil {
			t.Fatal(err)
		}
		if got["tags"].(map[string]any)["u.work"].(map[string]any)["order"] != 0.5 {
			t.Fatalf("m.tag %v", got)
		}
		// Global and room data do not fall back to each other (spec: Client Config).
		s.call(t, "GET", "/user/"+alice.UserID+"/account_data/m.tag", alice.Token, nil).expectError(t, 404, "M_NOT_FOUND")
		s.call(t, "GET", "/user/"+alice.UserID+"/rooms/"+string(room)+"/account_data/m.direct", alice.Token, nil).expectError(t, 404, "M_NOT_FOUND")

		// Content is stored as sent (compacted), any object, empty too; a
		// second PUT replaces the first.
		path := "/user/" + alice.UserID + "/account_data/org.example.settings"
		s.call(t, "PUT", path, alice.Token, `{ "b" : [1, 2.5, null],  "a": {"x": "y"} }`).expect(t, 200)
		if r := s.call(t, "GET", path, alice.Token, nil).expect(t, 200); string(r.Body) != `{"b":[1,2.5,null],"a":{"x":"y"}}` {
			t.Fatalf("stored %s", r.Body)
		}
		s.call(t, "PUT", path, alice.Token, `{}`).expect(t, 200)
		if r := s.call(t, "GET", path, alice.Token, nil).expect(t, 200); string(r.Body) != `{}` {
			t.Fatalf("replaced %s", r.Body)
		}

		// Server-managed types stay readable when the server has written them.
		if _, err := s.DB.PutAccountData(ctx, alice.Localpart, string(room), "m.fully_read", []byte(`{"event_id":"$e"}`)); err != nil {
			t.Fatal(err)
		}
		if r := s.call(t, "GET", "/user/"+alice.UserID+"/rooms/"+string(room)+"/account_data/m.fully_read", alice.Token, nil).expect(t, 200); string(r.Body) != `{"event_id":"$e"}` {
			t.Fatalf("m.fully_read %s", r.Body)
		}

		// Escaped ids and types in the path, as clients send them.
		s.call(t, "PUT", "/user/"+url.PathEscape(alice.UserID)+"/rooms/"+url.PathEscape("!a/b:test.local")+"/account_data/"+url.PathEscape("org.example/slash"),
			alice.Token, `{"ok":true}`).expect(t, 200)
		if c, err := s.DB.AccountDataContent(ctx, alice.Localpart, "!a/b:test.local", "org.example/slash"); err != nil || string(c) != `{"ok":true}` {
			t.Fatalf("escaped path stored as %s, %v", c, err)
		}
	})
}

// TestAccountDataStreamsWrites checks that each write through the API lands
// on the account data stream, in order, for /sync to read.
func TestAccountDataStreamsWrites(t *testing.T) {
	forEachEngine(t, func(t *testing.T, s *testServer) {
		ctx := context.Background()
		alice := s.newUser(t, "alice")
		start, err := s.DB.AccountDataPosition(ctx)
		if err != nil {
			t.Fatal(err)
		}
		s.call(t, "PUT", "/user/"+alice.UserID+"/account_data/a.one", alice.Token, `{"n":1}`).expect(t, 200)
		s.call(t, "PUT", "/user/"+alice.UserID+"/rooms/!r:test.local/account_data/a.two", alice.Token, `{"n":2}`).expect(t, 200)
		s.call(t, "PUT", "/user/"+alice.UserID+"/account_data/a.one", alice.Token, `{"n":3}`).expect(t, 200)
		got, err := s.DB.AccountDataSince(ctx, alice.Localpart, start)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 || got[0].Type != "a.two" || got[0].RoomID != "!r:test.local" || got[1].Type != "a.one" || string(got[1].Content) != `{"n":3}` {
			t.Fatalf("stream after %d: %+v", start, got)
		}
		if got[1].StreamPos != start+3 {
			t.Fatalf("three writes moved the stream to %d, want %d", got[1].StreamPos, start+3)
		}
	})
}

func TestAccountDataErrors(t *testing.T) {
	forEachEngine(t, func(t *testing.T, s *testServer) {
		alice := s.newUser(t, "alice")
		bob := s.newUser(t, "bob")
		guest := s.newGuest(t, "guest1")
		global := "/user/" + alice.UserID + "/account_data/"
		inRoom := "/user/" + alice.UserID + "/rooms/!room:test.local/account_data/"
		for _, c := range []struct {
			name, method, path, token string
			body                      any
			status                    int
			code                      string
		}{
			{"get without token", "GET", global + "m.direct", "", nil, 401, "M_MISSING_TOKEN"},
			{"put without token", "PUT", global + "m.direct", "", `{}`, 401, "M_MISSING_TOKEN"},
			{"room get without token", "GET", inRoom + "m.tag", "", nil, 401, "M_MISSING_TOKEN"},
			{"get another user's", "GET", global + "m.direct", bob.Token, nil, 403, "M_FORBIDDEN"},
			{"put another user's", "PUT", global + "m.direct", bob.Token, `{}`, 403, "M_FORBIDDEN"},
			{"room get another user's", "GET", inRoom + "m.tag", bob.Token, nil, 403, "M_FORBIDDEN"},
			{"room put another user's", "PUT", inRoom + "m.tag", bob.Token, `{}`, 403, "M_FORBIDDEN"},
			{"guest put", "PUT", "/user/" + guest.UserID + "/account_data/m.direct", guest.Token, `{}`, 403, "M_GUEST_ACCESS_FORBIDDEN"},
			{"guest get", "GET", "/user/" + guest.UserID + "/account_data/m.direct", guest.Token, nil, 403, "M_GUEST_ACCESS_FORBIDDEN"},
			{"unset type", "GET", global + "m.direct", alice.Token, nil, 404, "M_NOT_FOUND"},
			{"unset room type", "GET", inRoom + "m.tag", alice.Token, nil, 404, "M_NOT_FOUND"},
			// Spec: 405 M_BAD_JSON for the types the server manages.
			{"set m.fully_read", "PUT", global + "m.fully_read", alice.Token, `{"event_id":"$x"}`, 405, "M_BAD_JSON"},
			{"set m.push_rules", "PUT", global + "m.push_rules", alice.Token, `{}`, 405, "M_BAD_JSON"},
			{"room set m.fully_read", "PUT", inRoom + "m.fully_read", alice.Token, `{"event_id":"$x"}`, 405, "M_BAD_JSON"},
			{"room set m.push_rules", "PUT", inRoom + "m.push_rules", alice.Token, `{}`, 405, "M_BAD_JSON"},
			{"content not json", "PUT", global + "m.direct", alice.Token, `{"a":`, 400, "M_NOT_JSON"},
			{"content empty", "PUT", global + "m.direct", alice.Token, ``, 400, "M_NOT_JSON"},
			{"content a list", "PUT", global + "m.direct", alice.Token, `[1,2]`, 400, "M_BAD_JSON"},
			{"content a string", "PUT", global + "m.direct", alice.Token, `"x"`, 400, "M_BAD_JSON"},
			{"content null", "PUT", inRoom + "m.tag", alice.Token, `null`, 400, "M_BAD_JSON"},
			{"room id an alias", "PUT", "/user/" + alice.UserID + "/rooms/%23alias:test.local/account_data/m.tag", alice.Token, `{}`, 400, "M_INVALID_PARAM"},
			{"room id a user", "GET", "/user/" + alice.UserID + "/rooms/@bob:test.local/account_data/m.tag", alice.Token, nil, 400, "M_INVALID_PARAM"},
			{"room id without domain", "GET", "/user/" + alice.UserID + "/rooms/!short/account_data/m.tag", alice.Token, nil, 400, "M_INVALID_PARAM"},
			{"room id too long", "PUT", "/user/" + alice.UserID + "/rooms/!" + strings.Repeat("r", 250) + ":test.local/account_data/m.tag", alice.Token, `{}`, 400, "M_INVALID_PARAM"},
			{"type too long", "PUT", global + strings.Repeat("t", 256), alice.Token, `{}`, 400, "M_INVALID_PARAM"},
			{"wrong method", "POST", global + "m.direct", alice.Token, `{}`, 405, "M_UNRECOGNIZED"},
		} {
			t.Run(c.name, func(t *testing.T) {
				s.call(t, c.method, c.path, c.token, c.body).expectError(t, c.status, c.code)
			})
		}
		// Nothing refused was stored.
		all, err := s.DB.AccountDataSince(context.Background(), alice.Localpart, 0)
		if err != nil || len(all) != 0 {
			t.Fatalf("refused writes stored: %+v, %v", all, err)
		}
		// A body past the server's limit is 413 M_TOO_LARGE.
		big := `{"x":"` + strings.Repeat("a", int(s.Config.Client.MaxBodyBytes)) + `"}`
		s.call(t, "PUT", global+"m.direct", alice.Token, big).expectError(t, 413, "M_TOO_LARGE")
	})
}
