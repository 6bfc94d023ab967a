package clientapi_test

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

func TestProfileRoundTrip(t *testing.T) {
	forEachEngine(t, func(t *testing.T, s *testServer) {
		ctx := context.Background()
		alice := s.newUser(t, "alice")
		cli := alice.Client

		// A user with no field set has no profile (spec: 404; Synapse too).
		s.call(t, "GET", "/profile/"+alice.UserID, "", nil).expectError(t, 404, "M_NOT_FOUND")

		if err := cli.SetDisplayName(ctx, "Alice Liddell"); err != nil {
			t.Fatal(err)
		}
		avatar := id.ContentURI{Homeserver: "test.local", FileID: "abc"}
		if err := cli.SetAvatarURL(ctx, avatar); err != nil {
			t.Fatal(err)
		}
		if err := cli.SetProfileField(ctx, "m.tz", "Europe/London"); err != nil {
			t.Fatal(err)
		}
		job := map[string]any{"title": "Queen", "since": float64(1865), "tags": []any{"a", nil}}
		if err := cli.SetProfileField(ctx, "org.example.job", job); err != nil {
			t.Fatal(err)
		}

		// Reading needs no access token.
		anon, err := mautrix.NewClient(s.URL, "", "")
		if err != nil {
			t.Fatal(err)
		}
		prof, err := anon.GetProfile(ctx, id.UserID(alice.UserID))
		if err != nil {
			t.Fatal(err)
		}
		if prof.DisplayName != "Alice Liddell" || prof.AvatarURL != avatar || prof.Extra["m.tz"] != "Europe/London" {
			t.Fatalf("profile %+v", prof)
		}
		if got, _ := prof.Extra["org.example.job"].(map[string]any); got["title"] != "Queen" || got["since"] != float64(1865) {
			t.Fatalf("custom field %v", prof.Extra["org.example.job"])
		}
		name, err := anon.GetDisplayName(ctx, id.UserID(alice.UserID))
		if err != nil || name.DisplayName != "Alice Liddell" {
			t.Fatalf("displayname %+v, %v", name, err)
		}
		if got, err := anon.GetAvatarURL(ctx, id.UserID(alice.UserID)); err != nil || got != avatar {
			t.Fatalf("avatar %v, %v", got, err)
		}
		var field map[string]any
		if err := anon.GetProfileField(ctx, id.UserID(alice.UserID), "org.example.job", &field); err != nil {
			t.Fatal(err)
		}
		if len(field) != 1 || field["org.example.job"].(map[string]any)["title"] != "Queen" {
			t.Fatalf("field %v", field)
		}

		// Replacing, then deleting.
		if err := cli.SetDisplayName(ctx, "Alice"); err != nil {
			t.Fatal(err)
		}
		if name, _ := anon.GetDisplayName(ctx, id.UserID(alice.UserID)); name.DisplayName != "Alice" {
			t.Fatalf("displayname after change %q", name.DisplayName)
		}
		if err := cli.DeleteProfileField(ctx, "org.example.job"); err != nil {
			t.Fatal(err)
		}
		s.call(t, "GET", "/profile/"+alice.UserID+"/org.example.job", "", nil).expectError(t, 404, "M_NOT_FOUND")
		// Deleting a field that is not set succeeds (profile.yaml: "deleted or it doesn't exist").
		s.call(t, "DELETE", "/profile/"+alice.UserID+"/org.example.job", alice.Token, nil).expect(t, 200)
		body := s.call(t, "GET", "/profile/"+alice.UserID, "", nil).expect(t, 200).Object(t)
		if _, ok := body["org.example.job"]; ok || body["displayname"] != "Alice" || len(body) != 3 {
			t.Fatalf("profile after delete %v", body)
		}

		// The r0 prefix serves the same endpoints, for older clients.
		s.call(t, "GET", "/_matrix/client/r0/profile/"+alice.UserID+"/displayname", "", nil).expect(t, 200)
	})
}

func TestProfileCustomValues(t *testing.T) {
	forEachEngine(t, func(t *testing.T, s *testServer) {
		alice := s.newUser(t, "alice")
		path := "/profile/" + alice.UserID + "/com.example.x"
		// Any JSON value, null included: stored, not treated as a deletion.
		for _, v := range []string{`null`, `42`, `"text"`, `[1,{"a":true}]`, `{"nested":{"deep":[]}}`, `false`} {
			s.call(t, "PUT", path, alice.Token, `{"com.example.x": `+v+`, "ignored.extra": 1}`).expect(t, 200)
			got := s.call(t, "GET", path, "", nil).expect(t, 200)
			if want := `{"com.example.x":` + v + `}`; string(got.Body) != want {
				t.Fatalf("stored %s, read back %s", v, got.Body)
			}
		}
		// Keys with hyphens follow the Common Namespaced Identifier Grammar.
		s.call(t, "PUT", "/profile/"+alice.UserID+"/org.my-app.status", alice.Token, `{"org.my-app.status":"busy"}`).expect(t, 200)
		// The extra key of the PUT body was not stored.
		body := s.call(t, "GET", "/profile/"+alice.UserID, "", nil).expect(t, 200).Object(t)
		if _, ok := body["ignored.extra"]; ok {
			t.Fatalf("extra body key stored: %v", body)
		}
	})
}

func TestProfileErrors(t *testing.T) {
	forEachEngine(t, func(t *testing.T, s *testServer) {
		alice := s.newUser(t, "alice")
		bob := s.newUser(t, "bob")
		me := "/profile/" + alice.UserID

		for _, c := range []struct {
			name, method, path, token string
			body                      any
			status                    int
			code                      string
		}{
			{"set without token", "PUT", me + "/displayname", "", `{"displayname":"x"}`, 401, "M_MISSING_TOKEN"},
			{"set with bad token", "PUT", me + "/displayname", "nope", `{"displayname":"x"}`, 401, "M_UNKNOWN_TOKEN"},
			{"delete without token", "DELETE", me + "/displayname", "", nil, 401, "M_MISSING_TOKEN"},
			{"set another user's", "PUT", me + "/displayname", bob.Token, `{"displayname":"x"}`, 403, "M_FORBIDDEN"},
			{"delete another user's", "DELETE", me + "/displayname", bob.Token, nil, 403, "M_FORBIDDEN"},
			{"set a remote user's", "PUT", "/profile/@alice:elsewhere.example/displayname", alice.Token, `{"displayname":"x"}`, 403, "M_FORBIDDEN"},
			{"key missing from body", "PUT", me + "/avatar_url", alice.Token, `{"displayname":"x"}`, 400, "M_MISSING_PARAM"},
			{"body not json", "PUT", me + "/displayname", alice.Token, `{"displayname":`, 400, "M_NOT_JSON"},
			{"body empty", "PUT", me + "/displayname", alice.Token, ``, 400, "M_NOT_JSON"},
			{"body not an object", "PUT", me + "/displayname", alice.Token, `["x"]`, 400, "M_BAD_JSON"},
			{"displayname a number", "PUT", me + "/displayname", alice.Token, `{"displayname":42}`, 400, "M_BAD_JSON"},
			{"displayname null", "PUT", me + "/displayname", alice.Token, `{"displayname":null}`, 400, "M_BAD_JSON"},
			{"avatar_url an object", "PUT", me + "/avatar_url", alice.Token, `{"avatar_url":{}}`, 400, "M_BAD_JSON"},
			{"m.tz a list", "PUT", me + "/m.tz", alice.Token, `{"m.tz":["UTC"]}`, 400, "M_BAD_JSON"},
			// profile.yaml's keyName pattern: displayname, avatar_url, m.tz or namespaced.
			{"key not namespaced", "PUT", me + "/mood", alice.Token, `{"mood":"x"}`, 400, "M_INVALID_PARAM"},
			{"key upper case", "PUT", me + "/Org.Example.X", alice.Token, `{"Org.Example.X":"x"}`, 400, "M_INVALID_PARAM"},
			{"key empty segment", "PUT", me + "/org..x", alice.Token, `{"org..x":"x"}`, 400, "M_INVALID_PARAM"},
			{"key bad on get", "GET", me + "/mood", "", nil, 400, "M_INVALID_PARAM"},
			{"key bad on delete", "DELETE", me + "/DisplayName", alice.Token, nil, 400, "M_INVALID_PARAM"},
			{"key too long", "PUT", me + "/org." + strings.Repeat("k", 252), alice.Token, `{}`, 400, "M_KEY_TOO_LARGE"},
			{"key too long on get", "GET", me + "/org." + strings.Repeat("k", 252), "", nil, 400, "M_KEY_TOO_LARGE"},
			{"unknown local user", "GET", "/profile/@nobody:test.local", "", nil, 404, "M_NOT_FOUND"},
			{"unknown local user field", "GET", "/profile/@nobody:test.local/displayname", "", nil, 404, "M_NOT_FOUND"},
			{"remote user", "GET", "/profile/@alice:elsewhere.example", "", nil, 404, "M_NOT_FOUND"},
			{"remote user field", "GET", "/profile/@alice:elsewhere.example/displayname", "", nil, 404, "M_NOT_FOUND"},
			{"malformed user id", "GET", "/profile/alice", "", nil, 400, "M_INVALID_PARAM"},
			{"unset field", "GET", me + "/avatar_url", "", nil, 404, "M_NOT_FOUND"},
			{"wrong method", "POST", me + "/displayname", alice.Token, `{}`, 405, "M_UNRECOGNIZED"},
		} {
			t.Run(c.name, func(t *testing.T) {
				s.call(t, c.method, c.path, c.token, c.body).expectError(t, c.status, c.code)
			})
		}
		// A key of exactly 255 bytes is allowed.
		long := "org." + strings.Repeat("k", 251)
		s.call(t, "PUT", me+"/"+long, alice.Token, `{"`+long+`":1}`).expect(t, 200)
		// The remote-user answer says why.
		r := s.call(t, "GET", "/profile/@alice:elsewhere.example", "", nil)
		if !strings.Contains(r.Object(t)["error"].(string), "federation") {
			t.Fatalf("remote profile message: %s", r.Body)
		}
		// None of the refused writes changed anything.
		body := s.call(t, "GET", me, "", nil).expect(t, 200).Object(t)
		if len(body) != 1 || body[long] != float64(1) {
			t.Fatalf("profile %v", body)
		}
	})
}

func TestProfileEncodedUserID(t *testing.T) {
	forEachEngine(t, func(t *testing.T, s *testServer) {
		alice := s.newUser(t, "alice")
		// Clients escape the user id in the path (the @ and :).
		path := "/profile/" + url.PathEscape(alice.UserID) + "/displayname"
		s.call(t, "PUT", path, alice.Token, `{"displayname":"A"}`).expect(t, 200)
		s.call(t, "GET", "/profile/%40alice%3Atest.local", "", nil).expect(t, 200)
	})
}

// TestProfileSizeLimit checks the spec's 64 KiB cap on a whole profile
// (profile.yaml: M_PROFILE_TOO_LARGE).
func TestProfileSizeLimit(t *testing.T) {
	forEachEngine(t, func(t *testing.T, s *testServer) {
		alice := s.newUser(t, "alice")
		put := func(key string, n int) response {
			return s.call(t, "PUT", "/profile/"+alice.UserID+"/"+key, alice.Token, `{"`+key+`":"`+strings.Repeat("x", n)+`"}`)
		}
		put("org.example.a", 40000).expect(t, 200)
		put("org.example.b", 30000).expectError(t, 400, "M_PROFILE_TOO_LARGE")
		// A replaced value counts once: the old one goes.
		put("org.example.a", 45000).expect(t, 200)
		put("org.example.b", 15000).expect(t, 200)
		put("displayname", 10000).expectError(t, 400, "M_PROFILE_TOO_LARGE")
		if r := s.call(t, "GET", "/profile/"+alice.UserID+"/displayname", "", nil); r.Status != 404 {
			t.Fatalf("refused write was stored: %d", r.Status)
		}
		// Deleting frees room.
		s.call(t, "DELETE", "/profile/"+alice.UserID+"/org.example.a", alice.Token, nil).expect(t, 200)
		put("displayname", 10000).expect(t, 200)
	})
}

// TestProfileSizeLimitConcurrent checks that two writes racing past the
// limit cannot both pass the check: each round exactly one of two 40 KB
// fields is stored.
func TestProfileSizeLimitConcurrent(t *testing.T) {
	forEachEngine(t, func(t *testing.T, s *testServer) {
		alice := s.newUser(t, "alice")
		for round := range 5 {
			keys := []string{"org.example.a", "org.example.b"}
			statuses := make([]int, 2)
			var wg sync.WaitGroup
			for i, key := range keys {
				wg.Add(1)
				go func() {
					defer wg.Done()
					statuses[i] = s.call(t, "PUT", "/profile/"+alice.UserID+"/"+key, alice.Token,
						`{"`+key+`":"`+strings.Repeat("x", 40000)+`"}`).Status
				}()
			}
			wg.Wait()
			ok := 0
			for _, st := range statuses {
				if st == 200 {
					ok++
				} else if st != 400 {
					t.Fatalf("round %d: status %d", round, st)
				}
			}
			if ok != 1 {
				t.Fatalf("round %d: %d of 2 racing writes stored (statuses %v), want exactly 1", round, ok, statuses)
			}
			for _, key := range keys {
				s.call(t, "DELETE", "/profile/"+alice.UserID+"/"+key, alice.Token, nil).expect(t, 200)
			}
		}
	})
}

// TestProfileGuest checks the spec's guest access rules: a guest may set and
// delete its display name and nothing else.
func TestProfileGuest(t *testing.T) {
	forEachEngine(t, func(t *testing.T, s *testServer) {
		guest := s.newGuest(t, "guest1")
		me := "/profile/" + guest.UserID
		s.call(t, "PUT", me+"/displayname", guest.Token, `{"displayname":"Visitor"}`).expect(t, 200)
		s.call(t, "PUT", me+"/avatar_url", guest.Token, `{"avatar_url":"mxc://test.local/a"}`).expectError(t, 403, "M_GUEST_ACCESS_FORBIDDEN")
		s.call(t, "PUT", me+"/org.example.x", guest.Token, `{"org.example.x":1}`).expectError(t, 403, "M_GUEST_ACCESS_FORBIDDEN")
		s.call(t, "DELETE", me+"/avatar_url", guest.Token, nil).expectError(t, 403, "M_GUEST_ACCESS_FORBIDDEN")
		s.call(t, "DELETE", me+"/displayname", guest.Token, nil).expect(t, 200)
	})
}

// TestProfileClientErrors checks the errors as a real client library sees them.
func TestProfileClientErrors(t *testing.T) {
	forEachEngine(t, func(t *testing.T, s *testServer) {
		ctx := context.Background()
		alice := s.newUser(t, "alice")
		_, err := alice.Client.GetProfile(ctx, "@nobody:test.local")
		if !errors.Is(err, mautrix.MNotFound) {
			t.Fatalf("unknown user: %v", err)
		}
		var httpErr mautrix.HTTPError
		err = alice.Client.SetProfileField(ctx, "nonamespace", "x")
		if !errors.As(err, &httpErr) || httpErr.Response.StatusCode != http.StatusBadRequest || httpErr.RespError.ErrCode != "M_INVALID_PARAM" {
			t.Fatalf("bad key: %v", err)
		}
	})
}
