package clientapi_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
)

func TestTags(t *testing.T) {
	forEachEngine(t, func(t *testing.T, s *testServer) {
		alice, bob := s.newUser(t, "alice"), s.newUser(t, "bob")
		guest := s.newGuest(t, "guest")
		room := ephemeralRoom(t, alice, nil)
		tagsPath := func(u *testUser) string {
			return "/user/" + pathEsc(u.UserID) + "/rooms/" + pathEsc(room) + "/tags"
		}
		get := func() map[string]map[string]any {
			t.Helper()
			var resp struct {
				Tags map[string]map[string]any `json:"tags"`
			}
			s.call(t, "GET", tagsPath(alice), alice.Token, nil).expect(t, 200).JSON(t, &resp)
			if resp.Tags == nil {
				t.Fatal("tags missing from the response")
			}
			return resp.Tags
		}
		if tags := get(); len(tags) != 0 {
			t.Fatalf("tags of an untagged room: %v", tags)
		}

		for _, c := range []struct {
			name, method, path, token string
			body                      any
			status                    int
			code                      string
		}{
			{"get another user's", "GET", tagsPath(alice), bob.Token, nil, 403, "M_FORBIDDEN"},
			{"put another user's", "PUT", tagsPath(alice) + "/u.x", bob.Token, `{}`, 403, "M_FORBIDDEN"},
			{"delete another user's", "DELETE", tagsPath(alice) + "/u.x", bob.Token, nil, 403, "M_FORBIDDEN"},
			{"guest", "PUT", tagsPath(guest) + "/u.x", guest.Token, `{}`, 403, "M_GUEST_ACCESS_FORBIDDEN"},
			{"bad room id", "PUT", "/user/" + pathEsc(alice.UserID) + "/rooms/nope/tags/u.x", alice.Token, `{}`, 400, "M_INVALID_PARAM"},
			{"tag too long", "PUT", tagsPath(alice) + "/" + strings.Repeat("x", 256), alice.Token, `{}`, 400, "M_INVALID_PARAM"},
			{"not json", "PUT", tagsPath(alice) + "/u.x", alice.Token, `{`, 400, "M_NOT_JSON"},
			{"not an object", "PUT", tagsPath(alice) + "/u.x", alice.Token, `[1]`, 400, "M_BAD_JSON"},
			{"order not a number", "PUT", tagsPath(alice) + "/u.x", alice.Token, `{"order": "0.5"}`, 400, "M_BAD_JSON"},
			{"order above 1", "PUT", tagsPath(alice) + "/u.x", alice.Token, `{"order": 1.5}`, 400, "M_INVALID_PARAM"},
			{"order below 0", "PUT", tagsPath(alice) + "/u.x", alice.Token, `{"order": -0.1}`, 400, "M_INVALID_PARAM"},
		} {
			t.Run(c.name, func(t *testing.T) {
				s.call(t, c.method, c.path, c.token, c.body).expectError(t, c.status, c.code)
			})
		}
		if tags := get(); len(tags) != 0 {
			t.Fatalf("failed requests left tags: %v", tags)
		}

		// A 255-byte name is fine; extra keys are kept, as Synapse keeps
		// the whole body.
		long := strings.Repeat("y", 255)
		s.call(t, "PUT", tagsPath(alice)+"/"+long, alice.Token, `{}`).expect(t, 200)
		s.call(t, "PUT", tagsPath(alice)+"/m.favourite", alice.Token, `{"order": 0.25}`).expect(t, 200)
		s.call(t, "PUT", tagsPath(alice)+"/u.work", alice.Token, `{"order": 1, "x.extra": true}`).expect(t, 200)
		tags := get()
		if len(tags) != 3 || tags["m.favourite"]["order"] != 0.25 || tags["u.work"]["x.extra"] != true || tags[long] == nil {
			t.Fatalf("tags = %v", tags)
		}
		// Replacing a tag replaces its object.
		s.call(t, "PUT", tagsPath(alice)+"/u.work", alice.Token, `{"order": 0}`).expect(t, 200)
		if tags := get(); tags["u.work"]["order"] != 0.0 || tags["u.work"]["x.extra"] != nil {
			t.Fatalf("replaced tag = %v", tags["u.work"])
		}
		// Stored as the room account data m.tag.
		var content struct {
			Tags map[string]json.RawMessage `json:"tags"`
		}
		s.call(t, "GET", "/user/"+pathEsc(alice.UserID)+"/rooms/"+pathEsc(room)+"/account_data/m.tag", alice.Token, nil).
			expect(t, 200).JSON(t, &content)
		if len(content.Tags) != 3 {
			t.Fatalf("m.tag content: %v", content.Tags)
		}

		// Deleting: an absent tag is a success that writes nothing.
		s.call(t, "DELETE", tagsPath(alice)+"/m.favourite", alice.Token, nil).expect(t, 200)
		before, err := s.DB.AccountDataPosition(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		s.call(t, "DELETE", tagsPath(alice)+"/m.favourite", alice.Token, nil).expect(t, 200)
		s.call(t, "DELETE", tagsPath(alice)+"/u.never", alice.Token, nil).expect(t, 200)
		if after, _ := s.DB.AccountDataPosition(context.Background()); after != before {
			t.Fatalf("deleting absent tags moved account data from %d to %d", before, after)
		}
		if tags := get(); len(tags) != 2 || tags["m.favourite"] != nil {
			t.Fatalf("after delete: %v", tags)
		}
		// Bob's tags of the same room are his own (he need not be in it).
		s.call(t, "PUT", tagsPath(bob)+"/u.bob", bob.Token, `{}`).expect(t, 200)
		if tags := get(); tags["u.bob"] != nil {
			t.Fatalf("bob's tag shows for alice: %v", tags)
		}
	})
}
