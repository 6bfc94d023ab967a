package clientapi_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

func TestChangePassword(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, s *testServer) {
		newPasswordUser(t, s, "alice", "wonderland")
		me := login(t, s, passwordLogin("alice", "wonderland", nil))
		other := login(t, s, passwordLogin("alice", "wonderland", nil))

		// logout_devices false keeps every session.
		uiaRoundTrip(t, s, "POST", "/account/password", me.AccessToken,
			map[string]any{"new_password": "second", "logout_devices": false}, "alice", "wonderland").expect(t, 200)
		s.call(t, "GET", "/account/whoami", other.AccessToken, nil).expect(t, 200)
		s.call(t, "POST", "/login", "", passwordLogin("alice", "wonderland", nil)).expectError(t, 403, "M_FORBIDDEN")
		third := login(t, s, passwordLogin("alice", "second", nil))

		// logout_devices defaults to true and spares only the caller.
		uiaRoundTrip(t, s, "POST", "/account/password", me.AccessToken,
			map[string]any{"new_password": "third"}, "alice", "second").expect(t, 200)
		s.call(t, "GET", "/account/whoami", me.AccessToken, nil).expect(t, 200)
		for _, tok := range []string{other.AccessToken, third.AccessToken} {
			s.call(t, "GET", "/account/whoami", tok, nil).expectError(t, 401, "M_UNKNOWN_TOKEN")
		}
		if ds := mustDevices(t, s, "alice"); len(ds) != 1 || ds[0].DeviceID != me.DeviceID {
			t.Fatalf("devices after change: %+v", ds)
		}
		login(t, s, passwordLogin("alice", "third", nil))
	})
}

func TestChangePasswordErrors(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, s *testServer) {
		newPasswordUser(t, s, "alice", "wonderland")
		me := login(t, s, passwordLogin("alice", "wonderland", nil))
		// Bad requests fail before user-interactive auth starts.
		s.call(t, "POST", "/account/password", me.AccessToken, map[string]any{}).expectError(t, 400, "M_MISSING_PARAM")
		s.call(t, "POST", "/account/password", me.AccessToken, map[string]any{"new_password": ""}).expectError(t, 400, "M_MISSING_PARAM")
		s.call(t, "POST", "/account/password", me.AccessToken, map[string]any{"new_password": strings.Repeat("x", 513)}).expectError(t, 400, "M_WEAK_PASSWORD")
		s.call(t, "POST", "/account/password", me.AccessToken, map[string]any{"new_password": 1}).expectError(t, 400, "M_BAD_JSON")
		s.call(t, "POST", "/account/password", me.AccessToken, nil).expectError(t, 400, "M_NOT_JSON")
		s.call(t, "POST", "/account/password", "", map[string]any{"new_password": "x"}).expectError(t, 401, "M_MISSING_TOKEN")

		sess := uiaChallenge(t, s.call(t, "POST", "/account/password", me.AccessToken, map[string]any{"new_password": "x"}))
		s.call(t, "POST", "/account/password", me.AccessToken, map[string]any{"new_password": "x",
			"auth": passwordAuthDict(sess, "alice", "wrong")}).expectError(t, 401, "M_FORBIDDEN")
		// Stages must be ones the flows offer.
		s.call(t, "POST", "/account/password", me.AccessToken, map[string]any{"new_password": "x",
			"auth": map[string]any{"type": "m.login.dummy", "session": sess}}).expectError(t, 401, "M_UNRECOGNIZED")
		login(t, s, passwordLogin("alice", "wonderland", nil))

		g := s.newGuest(t, "7777")
		s.call(t, "POST", "/account/password", g.Token, map[string]any{"new_password": "x"}).expectError(t, 403, "M_GUEST_ACCESS_FORBIDDEN")
	})
}

func TestDeactivate(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, s *testServer) {
		newPasswordUser(t, s, "alice", "wonderland")
		me := login(t, s, passwordLogin("alice", "wonderland", nil))
		other := login(t, s, passwordLogin("alice", "wonderland", map[string]any{"refresh_token": true}))
		bob := s.newUser(t, "bob")

		res := uiaRoundTrip(t, s, "POST", "/account/deactivate", me.AccessToken, map[string]any{}, "alice", "wonderland").expect(t, 200)
		// Weft binds no 3PID on an identity server, and the spec says
		// "success" when there is nothing to unbind.
		if body := res.Object(t); body["id_server_unbind_result"] != "success" {
			t.Fatalf("deactivate %v", body)
		}
		for _, tok := range []string{me.AccessToken, other.AccessToken} {
			s.call(t, "GET", "/account/whoami", tok, nil).expectError(t, 401, "M_UNKNOWN_TOKEN")
		}
		s.call(t, "POST", "/refresh", "", map[string]string{"refresh_token": other.RefreshToken}).expectError(t, 401, "M_UNKNOWN_TOKEN")
		s.call(t, "POST", "/login", "", passwordLogin("alice", "wonderland", nil)).expectError(t, 403, "M_USER_DEACTIVATED")
		if n := len(mustDevices(t, s, "alice")); n != 0 {
			t.Fatalf("%d devices left", n)
		}
		s.call(t, "GET", "/account/whoami", bob.Token, nil).expect(t, 200)
	})
}

func TestDeactivateErrors(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, s *testServer) {
		newPasswordUser(t, s, "alice", "wonderland")
		me := login(t, s, passwordLogin("alice", "wonderland", nil))
		s.call(t, "POST", "/account/deactivate", "", map[string]any{}).expectError(t, 401, "M_MISSING_TOKEN")
		s.call(t, "POST", "/account/deactivate", me.AccessToken, map[string]any{"erase": "yes"}).expectError(t, 400, "M_BAD_JSON")
		// No body at all is the first step of auth, not an error.
		sess := uiaChallenge(t, s.call(t, "POST", "/account/deactivate", me.AccessToken, nil))
		s.call(t, "POST", "/account/deactivate", me.AccessToken, map[string]any{"auth": passwordAuthDict(sess, "alice", "nope")}).expectError(t, 401, "M_FORBIDDEN")
		s.call(t, "GET", "/account/whoami", me.AccessToken, nil).expect(t, 200)
		g := s.newGuest(t, "8888")
		s.call(t, "POST", "/account/deactivate", g.Token, map[string]any{}).expectError(t, 403, "M_GUEST_ACCESS_FORBIDDEN")
	})
}

// TestDeactivateErase clears the profile. The profile endpoints belong to
// another part of the client API; when they are not built the erasure
// itself is covered by the storage and userapi tests.
func TestDeactivateErase(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, s *testServer) {
		newPasswordUser(t, s, "alice", "wonderland")
		me := login(t, s, passwordLogin("alice", "wonderland", nil))
		userID := "@alice:" + testServerName
		set := s.call(t, "PUT", "/profile/"+userID+"/displayname", me.AccessToken, map[string]string{"displayname": "Alice"})
		profileBuilt := set.Status != 404 || !strings.Contains(string(set.Body), "M_UNRECOGNIZED")
		if !profileBuilt {
			t.Log("PUT /profile/{userId}/displayname is not built: erasure checked without it")
		} else {
			set.expect(t, 200)
		}
		uiaRoundTrip(t, s, "POST", "/account/deactivate", me.AccessToken, map[string]any{"erase": true}, "alice", "wonderland").expect(t, 200)
		if profileBuilt {
			got := s.call(t, "GET", "/profile/"+userID+"/displayname", "", nil)
			if got.Status == 200 && got.Object(t)["displayname"] != nil {
				t.Fatalf("erased profile still answers %s", got.Body)
			}
		}
	})
}

// TestUIAPasswordAttemptsAreRateLimited: password stages draw on the same
// per-account bucket as logins, so a stolen access token is no faster a
// way to guess the password.
func TestUIAPasswordAttemptsAreRateLimited(t *testing.T) {
	t.Parallel()
	for _, e := range sqltest.Engines() {
		t.Run(string(e), func(t *testing.T) {
			env := newAcctEnv(t, e, func(c *config.Config) {
				c.RateLimits.Enabled = true
				c.RateLimits.Login = config.Bucket{Rate: 0.001, Burst: 2}
			})
			createPasswordAccount(t, env.DB, env.Users.HashPassword, sql.Account{Localpart: "alice"}, "wonderland")
			sess, err := env.Users.StartSession(context.Background(), "alice", "", "", false)
			if err != nil {
				t.Fatal(err)
			}
			path := "/devices/" + sess.DeviceID
			// The auth-less first request costs nothing.
			uia := uiaChallenge(t, env.call(t, "DELETE", path, sess.AccessToken, nil))
			uiaChallenge(t, env.call(t, "DELETE", path, sess.AccessToken, nil))
			for range 2 {
				env.call(t, "DELETE", path, sess.AccessToken, map[string]any{"auth": passwordAuthDict(uia, "alice", "guess")}).expectError(t, 401, "M_FORBIDDEN")
			}
			env.call(t, "DELETE", path, sess.AccessToken, map[string]any{"auth": passwordAuthDict(uia, "alice", "wonderland")}).expectError(t, 429, "M_LIMIT_EXCEEDED")
			// And logins for the account are held back too.
			env.call(t, "POST", "/login", "", passwordLogin("alice", "wonderland", nil)).expectError(t, 429, "M_LIMIT_EXCEEDED")
		})
	}
}

func TestUIAExpiredSessionOverHTTP(t *testing.T) {
	t.Parallel()
	for _, e := range sqltest.Engines() {
		t.Run(string(e), func(t *testing.T) {
			env := newAcctEnv(t, e, func(c *config.Config) { c.Auth.UIASessionExpiry = 300 * time.Millisecond })
			createPasswordAccount(t, env.DB, env.Users.HashPassword, sql.Account{Localpart: "alice"}, "wonderland")
			sess, err := env.Users.StartSession(context.Background(), "alice", "", "", false)
			if err != nil {
				t.Fatal(err)
			}
			body := map[string]any{"new_password": "new"}
			uia := uiaChallenge(t, env.call(t, "POST", "/account/password", sess.AccessToken, body))
			time.Sleep(400 * time.Millisecond)
			body["auth"] = passwordAuthDict(uia, "alice", "wonderland")
			got := env.call(t, "POST", "/account/password", sess.AccessToken, body)
			got.expectError(t, 401, "M_UNKNOWN")
			if o := got.Object(t); o["session"] != nil || o["flows"] == nil {
				t.Fatalf("expired session answer %s", got.Body)
			}
			env.call(t, "POST", "/login", "", passwordLogin("alice", "wonderland", nil)).expect(t, 200)
		})
	}
}
