package clientapi_test

import (
	"context"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
)

// filterExample is filter.yaml's example with an unknown key, which the
// schema allows and a round trip must keep.
const filterExample = `{
	"room": {
		"state": {"types": ["m.room.*"], "not_rooms": ["!726s6s6q:example.com"]},
		"timeline": {"limit": 10, "types": ["m.room.message"], "not_rooms": ["!726s6s6q:example.com"], "not_senders": ["@spam:example.com"]},
		"ephemeral": {"types": ["m.receipt", "m.typing"], "not_rooms": ["!726s6s6q:example.com"], "not_senders": ["@spam:example.com"]}
	},
	"presence": {"types": ["m.presence"], "not_senders": ["@alice:example.com"]},
	"event_format": "client",
	"event_fields": ["type", "content", "sender"],
	"org.example.extension": {"z": 1, "a": [true, null, "é"]}
}`

func TestFilterRoundTrip(t *testing.T) {
	forEachEngine(t, func(t *testing.T, s *testServer) {
		alice := s.newUser(t, "alice")
		var created struct {
			FilterID *string `json:"filter_id"`
		}
		s.call(t, "POST", "/user/"+alice.UserID+"/filter", alice.Token, filterExample).expect(t, 200).JSON(t, &created)
		if created.FilterID == nil || *created.FilterID == "" || strings.HasPrefix(*created.FilterID, "{") {
			t.Fatalf("filter_id %v: must be a string not starting with {", created.FilterID)
		}
		got := s.call(t, "GET", "/user/"+alice.UserID+"/filter/"+*created.FilterID, alice.Token, nil).expect(t, 200)
		var want, have any
		if err := json.Unmarshal([]byte(filterExample), &want); err != nil {
			t.Fatal(err)
		}
		got.JSON(t, &have)
		if !reflect.DeepEqual(want, have) {
			t.Fatalf("round trip changed the filter:\n sent %v\n  got %s", want, got.Body)
		}
		// Kept as canonical JSON: sorted keys, no spaces, UTF-8 as is.
		if !strings.HasPrefix(string(got.Body), `{"event_fields":["type","content","sender"],"event_format":"client","org.example.extension":{"a":[true,null,"é"],"z":1},`) {
			t.Fatalf("not canonical JSON: %s", got.Body)
		}

		// The same filter again gets the same id; a different one a new id.
		var again, other struct {
			FilterID string `json:"filter_id"`
		}
		s.call(t, "POST", "/user/"+alice.UserID+"/filter", alice.Token, filterExample).expect(t, 200).JSON(t, &again)
		if again.FilterID != *created.FilterID {
			t.Fatalf("same filter: id %s, then %s", *created.FilterID, again.FilterID)
		}
		s.call(t, "POST", "/user/"+alice.UserID+"/filter", alice.Token, `{}`).expect(t, 200).JSON(t, &other)
		if other.FilterID == again.FilterID {
			t.Fatal("different filters share an id")
		}
		if r := s.call(t, "GET", "/user/"+alice.UserID+"/filter/"+other.FilterID, alice.Token, nil).expect(t, 200); string(r.Body) != `{}` {
			t.Fatalf("empty filter read back as %s", r.Body)
		}
	})
}

func TestFilterWithClient(t *testing.T) {
	forEachEngine(t, func(t *testing.T, s *testServer) {
		ctx := context.Background()
		alice := s.newUser(t, "alice")
		// mautrix's own default sync filter.
		f := &mautrix.Filter{Room: &mautrix.RoomFilter{Timeline: &mautrix.FilterPart{Limit: 50, LazyLoadMembers: true}}}
		resp, err := alice.Client.CreateFilter(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		var got mautrix.Filter
		s.call(t, "GET", "/user/"+alice.UserID+"/filter/"+resp.FilterID, alice.Token, nil).expect(t, 200).JSON(t, &got)
		if got.Room == nil || got.Room.Timeline == nil || got.Room.Timeline.Limit != 50 || !got.Room.Timeline.LazyLoadMembers {
			t.Fatalf("filter read back as %+v", got)
		}
	})
}

func TestFilterErrors(t *testing.T) {
	forEachEngine(t, func(t *testing.T, s *testServer) {
		alice := s.newUser(t, "alice")
		bob := s.newUser(t, "bob")
		guest := s.newGuest(t, "guest1")
		var created struct {
			FilterID string `json:"filter_id"`
		}
		s.call(t, "POST", "/user/"+alice.UserID+"/filter", alice.Token, `{"room":{"timeline":{"limit":5}}}`).expect(t, 200).JSON(t, &created)
		mine := "/user/" + alice.UserID + "/filter"
		for _, c := range []struct {
			name, method, path, token string
			body                      any
			status                    int
			code                      string
		}{
			{"create without token", "POST", mine, "", `{}`, 401, "M_MISSING_TOKEN"},
			{"get without token", "GET", mine + "/" + created.FilterID, "", nil, 401, "M_MISSING_TOKEN"},
			{"create for another user", "POST", mine, bob.Token, `{}`, 403, "M_FORBIDDEN"},
			{"get another user's", "GET", mine + "/" + created.FilterID, bob.Token, nil, 403, "M_FORBIDDEN"},
			// Bob asking under his own id for alice's filter id: not his.
			{"get another user's id as own", "GET", "/user/" + bob.UserID + "/filter/" + created.FilterID, bob.Token, nil, 404, "M_NOT_FOUND"},
			{"unknown id", "GET", mine + "/99999", alice.Token, nil, 404, "M_NOT_FOUND"},
			{"id not a number", "GET", mine + "/abc", alice.Token, nil, 404, "M_NOT_FOUND"},
			{"id signed", "GET", mine + "/-" + created.FilterID, alice.Token, nil, 404, "M_NOT_FOUND"},
			{"id past int64", "GET", mine + "/99999999999999999999999", alice.Token, nil, 404, "M_NOT_FOUND"},
			{"id inline json", "GET", mine + "/%7B%7D", alice.Token, nil, 404, "M_NOT_FOUND"},
			{"body not json", "POST", mine, alice.Token, `{"room":`, 400, "M_NOT_JSON"},
			{"body not an object", "POST", mine, alice.Token, `[]`, 400, "M_BAD_JSON"},
			{"limit a string", "POST", mine, alice.Token, `{"room":{"timeline":{"limit":"10"}}}`, 400, "M_BAD_JSON"},
			{"limit zero", "POST", mine, alice.Token, `{"room":{"timeline":{"limit":0}}}`, 400, "M_BAD_JSON"},
			{"limit negative", "POST", mine, alice.Token, `{"presence":{"limit":-1}}`, 400, "M_BAD_JSON"},
			{"limit fractional", "POST", mine, alice.Token, `{"account_data":{"limit":2.5}}`, 400, "M_BAD_JSON"},
			{"event_format unknown", "POST", mine, alice.Token, `{"event_format":"json"}`, 400, "M_BAD_JSON"},
			{"event_fields not strings", "POST", mine, alice.Token, `{"event_fields":[1]}`, 400, "M_BAD_JSON"},
			{"room not an object", "POST", mine, alice.Token, `{"room":[]}`, 400, "M_BAD_JSON"},
			{"types not a list", "POST", mine, alice.Token, `{"room":{"state":{"types":"m.room.*"}}}`, 400, "M_BAD_JSON"},
			{"bad room id", "POST", mine, alice.Token, `{"room":{"rooms":["room"]}}`, 400, "M_BAD_JSON"},
			{"bad sender", "POST", mine, alice.Token, `{"room":{"timeline":{"senders":["bob"]}}}`, 400, "M_BAD_JSON"},
			{"include_leave not a boolean", "POST", mine, alice.Token, `{"room":{"include_leave":1}}`, 400, "M_BAD_JSON"},
		} {
			t.Run(c.name, func(t *testing.T) {
				s.call(t, c.method, c.path, c.token, c.body).expectError(t, c.status, c.code)
			})
		}
		// Guests sync too, so they may keep filters (as in Synapse).
		var g struct {
			FilterID string `json:"filter_id"`
		}
		s.call(t, "POST", "/user/"+guest.UserID+"/filter", guest.Token, `{"room":{"timeline":{"limit":1}}}`).expect(t, 200).JSON(t, &g)
		s.call(t, "GET", "/user/"+guest.UserID+"/filter/"+g.FilterID, guest.Token, nil).expect(t, 200)
	})
}
