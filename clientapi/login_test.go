package clientapi_test

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/homeserver/hstest"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// newPasswordUser creates an account with a password, as registration
// would, and no session.
func newPasswordUser(t testing.TB, s *testServer, localpart, password string) {
	t.Helper()
	createPasswordAccount(t, s.DB, s.Users.HashPassword, sql.Account{Localpart: localpart}, password)
}

func createPasswordAccount(t testing.TB, db *sql.DB, hash func(string) (string, error), acc sql.Account, password string) {
	t.Helper()
	h, err := hash(password)
	if err != nil {
		t.Fatal(err)
	}
	acc.PasswordHash = h
	ctx := context.Background()
	if err := db.WithTx(ctx, func(q *sql.Queries) error { return q.CreateAccount(ctx, acc) }); err != nil {
		t.Fatalf("create account %s: %v", acc.Localpart, err)
	}
}

// passwordLogin is the spec's m.login.password body with an m.id.user
// identifier, plus extra fields.
func passwordLogin(user, password string, extra map[string]any) map[string]any {
	body := map[string]any{
		"type":       "m.login.password",
		"identifier": map[string]string{"type": "m.id.user", "user": user},
		"password":   password,
	}
	for k, v := range extra {
		body[k] = v
	}
	return body
}

type loginResult struct {
	UserID       string `json:"user_id"`
	AccessToken  string `json:"access_token"`
	DeviceID     string `json:"device_id"`
	HomeServer   string `json:"home_server"`
	RefreshToken string `json:"refresh_token"`
	ExpiresInMS  int64  `json:"expires_in_ms"`
}

func login(t testing.TB, s *testServer, body any) loginResult {
	t.Helper()
	var res loginResult
	s.call(t, "POST", "/login", "", body).expect(t, 200).JSON(t, &res)
	if res.AccessToken == "" || res.DeviceID == "" {
		t.Fatalf("login answer %+v", res)
	}
	return res
}

func TestLoginFlows(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, config.SQLite)
	got := s.call(t, "GET", "/login", "", nil).expect(t, 200)
	// Only the types that work: password, and token with get_token.
	want := `{"flows":[{"type":"m.login.password"},{"type":"m.login.token","get_login_token":true}]}`
	if string(got.Body) != want {
		t.Fatalf("GET /login = %s, want %s", got.Body, want)
	}
	s.call(t, "GET", "/_matrix/client/r0/login", "", nil).expect(t, 200)
}

func TestPasswordLogin(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, s *testServer) {
		newPasswordUser(t, s, "alice", "wonderland")
		userID := "@alice:" + testServerName

		res := login(t, s, passwordLogin("alice", "wonderland", map[string]any{"initial_device_display_name": "Alice's phone"}))
		if res.UserID != userID || res.HomeServer != testServerName || res.RefreshToken != "" || res.ExpiresInMS != 0 {
			t.Fatalf("login %+v", res)
		}
		raw := s.call(t, "POST", "/login", "", passwordLogin("alice", "wonderland", nil)).expect(t, 200).Object(t)
		for _, absent := range []string{"refresh_token", "expires_in_ms"} {
			if _, ok := raw[absent]; ok {
				t.Fatalf("login without refresh_token answered %s: %v", absent, raw)
			}
		}
		var who struct {
			UserID   string `json:"user_id"`
			DeviceID string `json:"device_id"`
			IsGuest  *bool  `json:"is_guest"`
		}
		s.call(t, "GET", "/account/whoami", res.AccessToken, nil).expect(t, 200).JSON(t, &who)
		if who.UserID != userID || who.DeviceID != res.DeviceID || who.IsGuest == nil || *who.IsGuest {
			t.Fatalf("whoami %+v", who)
		}
		var dev struct {
			DisplayName string `json:"display_name"`
		}
		s.call(t, "GET", "/devices/"+res.DeviceID, res.AccessToken, nil).expect(t, 200).JSON(t, &dev)
		if dev.DisplayName != "Alice's phone" {
			t.Fatalf("device name %q", dev.DisplayName)
		}

		// The user may be named by full id, in any case, or by the
		// deprecated top-level field.
		login(t, s, passwordLogin(userID, "wonderland", nil))
		login(t, s, passwordLogin("ALICE", "wonderland", nil))
		login(t, s, map[string]any{"type": "m.login.password", "user": "alice", "password": "wonderland"})

		// Reusing a device id keeps the device and ends its old session.
		again := login(t, s, passwordLogin("alice", "wonderland", map[string]any{"device_id": res.DeviceID, "initial_device_display_name": "ignored"}))
		if again.DeviceID != res.DeviceID || again.AccessToken == res.AccessToken {
			t.Fatalf("reuse %+v after %+v", again, res)
		}
		s.call(t, "GET", "/account/whoami", res.AccessToken, nil).expectError(t, 401, "M_UNKNOWN_TOKEN")
		s.call(t, "GET", "/devices/"+res.DeviceID, again.AccessToken, nil).expect(t, 200).JSON(t, &dev)
		if dev.DisplayName != "Alice's phone" {
			t.Fatalf("initial_device_display_name renamed a known device to %q", dev.DisplayName)
		}

		// A client-chosen device id.
		mine := login(t, s, passwordLogin("alice", "wonderland", map[string]any{"device_id": "MYDEVICE"}))
		if mine.DeviceID != "MYDEVICE" {
			t.Fatalf("device id %q", mine.DeviceID)
		}
	})
}

func TestLoginErrors(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, s *testServer) {
		newPasswordUser(t, s, "alice", "wonderland")
		newPasswordUser(t, s, "gone", "password")
		createPasswordAccount(t, s.DB, s.Users.HashPassword, sql.Account{Localpart: "guest1", IsGuest: true}, "guestpw")
		if err := s.Users.Deactivate(context.Background(), "gone", false); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name   string
			body   any
			status int
			code   string
		}{
			{"unknown type", map[string]any{"type": "m.login.bogus"}, 400, "M_UNKNOWN"},
			{"sso is not offered", map[string]any{"type": "m.login.sso"}, 400, "M_UNKNOWN"},
			{"missing type", map[string]any{"password": "x"}, 400, "M_MISSING_PARAM"},
			{"not json", "{nope", 400, "M_NOT_JSON"},
			{"empty body", "", 400, "M_NOT_JSON"},
			{"array body", "[]", 400, "M_BAD_JSON"},
			{"password of the wrong type", map[string]any{"type": "m.login.password", "user": "alice", "password": 7}, 400, "M_BAD_JSON"},
			{"wrong password", passwordLogin("alice", "wrong", nil), 403, "M_FORBIDDEN"},
			{"no password", map[string]any{"type": "m.login.password", "user": "alice"}, 403, "M_FORBIDDEN"},
			{"unknown user", passwordLogin("nobody", "wonderland", nil), 403, "M_FORBIDDEN"},
			{"remote user", passwordLogin("@alice:elsewhere.test", "wonderland", nil), 403, "M_FORBIDDEN"},
			{"no user", map[string]any{"type": "m.login.password", "password": "wonderland"}, 400, "M_MISSING_PARAM"},
			{"unknown 3pid", map[string]any{"type": "m.login.password", "password": "wonderland",
				"identifier": map[string]string{"type": "m.id.thirdparty", "medium": "email", "address": "a@example.org"}}, 403, "M_FORBIDDEN"},
			{"legacy 3pid", map[string]any{"type": "m.login.password", "password": "wonderland", "medium": "email", "address": "a@example.org"}, 403, "M_FORBIDDEN"},
			{"unknown identifier type", map[string]any{"type": "m.login.password", "password": "wonderland",
				"identifier": map[string]string{"type": "x.custom"}}, 400, "M_UNKNOWN"},
			{"deactivated", passwordLogin("gone", "password", nil), 403, "M_USER_DEACTIVATED"},
			{"guest", passwordLogin("guest1", "guestpw", nil), 403, "M_FORBIDDEN"},
			{"bad login token", map[string]any{"type": "m.login.token", "token": "wfl_forged"}, 403, "M_FORBIDDEN"},
			{"missing login token", map[string]any{"type": "m.login.token"}, 400, "M_MISSING_PARAM"},
			{"long device id", passwordLogin("alice", "wonderland", map[string]any{"device_id": strings.Repeat("D", 513)}), 400, "M_INVALID_PARAM"},
			{"device id of the wrong type", passwordLogin("alice", "wonderland", map[string]any{"device_id": 5}), 400, "M_BAD_JSON"},
			{"long device name", passwordLogin("alice", "wonderland", map[string]any{"initial_device_display_name": strings.Repeat("x", 101)}), 400, "M_TOO_LARGE"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				s.call(t, "POST", "/login", "", tc.body).expectError(t, tc.status, tc.code)
			})
		}
		// No device is left behind by a failed login.
		if n := len(mustDevices(t, s, "alice")); n != 0 {
			t.Fatalf("failed logins made %d devices", n)
		}
	})
}

func mustDevices(t testing.TB, s *testServer, localpart string) []sql.Device {
	t.Helper()
	ds, err := s.Users.Devices(context.Background(), localpart)
	if err != nil {
		t.Fatal(err)
	}
	return ds
}

// TestLoginRateLimits drives the real handler in-process so requests can
// come from different addresses: both the per-address and the per-account
// bucket must hold.
func TestLoginRateLimits(t *testing.T) {
	t.Parallel()
	for _, e := range sqltest.Engines() {
		t.Run(string(e), func(t *testing.T) {
			env := newAcctEnv(t, e, func(c *config.Config) {
				c.RateLimits.Enabled = true
				c.RateLimits.Login = config.Bucket{Rate: 0.001, Burst: 2}
			})
			createPasswordAccount(t, env.DB, env.Users.HashPassword, sql.Account{Localpart: "alice"}, "wonderland")
			try := func(ip, user, password string) *httptest.ResponseRecorder {
				body, _ := json.Marshal(passwordLogin(user, password, nil))
				r := httptest.NewRequest("POST", "/_matrix/client/v3/login", strings.NewReader(string(body)))
				r.RemoteAddr = ip + ":1234"
				w := httptest.NewRecorder()
				env.Handler.ServeHTTP(w, r)
				return w
			}
			wantLimited := func(w *httptest.ResponseRecorder) {
				t.Helper()
				var e struct {
					Code       string `json:"errcode"`
					RetryAfter int64  `json:"retry_after_ms"`
				}
				_ = json.Unmarshal(w.Body.Bytes(), &e)
				if w.Code != 429 || e.Code != "M_LIMIT_EXCEEDED" || e.RetryAfter <= 0 {
					t.Fatalf("got %d %s, want 429 M_LIMIT_EXCEEDED with retry_after_ms", w.Code, w.Body)
				}
				if s, err := strconv.Atoi(w.Header().Get("Retry-After")); err != nil || s <= 0 {
					t.Fatalf("Retry-After %q", w.Header().Get("Retry-After"))
				}
			}

			// One address, many accounts: the address bucket.
			for _, user := range []string{"nobody1", "nobody2"} {
				if w := try("10.0.0.1", user, "x"); w.Code != 403 {
					t.Fatalf("attempt for %s: %d %s", user, w.Code, w.Body)
				}
			}
			wantLimited(try("10.0.0.1", "nobody3", "x"))

			// Many addresses, one account: the account bucket, which also
			// stops the right password once spent.
			if w := try("10.0.1.1", "alice", "guess1"); w.Code != 403 {
				t.Fatalf("%d %s", w.Code, w.Body)
			}
			if w := try("10.0.1.2", "alice", "wonderland"); w.Code != 200 {
				t.Fatalf("%d %s", w.Code, w.Body)
			}
			wantLimited(try("10.0.1.3", "alice", "wonderland"))
			// Other accounts from fresh addresses are unaffected.
			if w := try("10.0.2.1", "bob", "x"); w.Code != 403 {
				t.Fatalf("%d %s", w.Code, w.Body)
			}
		})
	}
}

func TestLogout(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, s *testServer) {
		newPasswordUser(t, s, "alice", "wonderland")
		a := login(t, s, passwordLogin("alice", "wonderland", nil))
		b := login(t, s, passwordLogin("alice", "wonderland", nil))
		c := login(t, s, passwordLogin("alice", "wonderland", nil))

		s.call(t, "POST", "/logout", a.AccessToken, nil).expect(t, 200)
		s.call(t, "GET", "/account/whoami", a.AccessToken, nil).expectError(t, 401, "M_UNKNOWN_TOKEN")
		// A logged-out token is dead, not soft-logged-out.
		if body := s.call(t, "GET", "/account/whoami", a.AccessToken, nil).Object(t); body["soft_logout"] == true {
			t.Fatalf("logout answered soft_logout: %v", body)
		}
		s.call(t, "POST", "/logout", a.AccessToken, nil).expectError(t, 401, "M_UNKNOWN_TOKEN")
		s.call(t, "GET", "/devices/"+a.DeviceID, b.AccessToken, nil).expectError(t, 404, "M_NOT_FOUND")
		s.call(t, "GET", "/account/whoami", b.AccessToken, nil).expect(t, 200)

		s.call(t, "POST", "/logout/all", b.AccessToken, map[string]any{}).expect(t, 200)
		for _, tok := range []string{b.AccessToken, c.AccessToken} {
			s.call(t, "GET", "/account/whoami", tok, nil).expectError(t, 401, "M_UNKNOWN_TOKEN")
		}
		if n := len(mustDevices(t, s, "alice")); n != 0 {
			t.Fatalf("%d devices after logout/all", n)
		}
		s.call(t, "POST", "/logout", "", nil).expectError(t, 401, "M_MISSING_TOKEN")
		s.call(t, "POST", "/logout/all", "", nil).expectError(t, 401, "M_MISSING_TOKEN")
	})
}

func TestWhoami(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, s *testServer) {
		u := s.newUser(t, "alice")
		s.call(t, "GET", "/account/whoami", "", nil).expectError(t, 401, "M_MISSING_TOKEN")
		s.call(t, "GET", "/account/whoami", "wft_forged", nil).expectError(t, 401, "M_UNKNOWN_TOKEN")
		// The deprecated query parameter still works (the spec: servers
		// MUST support both).
		got := s.call(t, "GET", "/account/whoami?access_token="+u.Token, "", nil).expect(t, 200).Object(t)
		if got["user_id"] != u.UserID || got["device_id"] != u.DeviceID || got["is_guest"] != false {
			t.Fatalf("whoami %v", got)
		}
		g := s.newGuest(t, "1234")
		got = s.call(t, "GET", "/account/whoami", g.Token, nil).expect(t, 200).Object(t)
		if got["is_guest"] != true {
			t.Fatalf("guest whoami %v", got)
		}
	})
}

func TestGetLoginToken(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, s *testServer) {
		newPasswordUser(t, s, "alice", "wonderland")
		a := login(t, s, passwordLogin("alice", "wonderland", nil))
		const path = "/_matrix/client/v1/login/get_token"

		res := uiaRoundTrip(t, s, "POST", path, a.AccessToken, map[string]any{}, "alice", "wonderland").expect(t, 200)
		var tok struct {
			LoginToken  string `json:"login_token"`
			ExpiresInMS int64  `json:"expires_in_ms"`
		}
		res.JSON(t, &tok)
		if tok.LoginToken == "" || tok.ExpiresInMS != 120000 {
			t.Fatalf("get_token %s", res.Body)
		}

		other := login(t, s, map[string]any{"type": "m.login.token", "token": tok.LoginToken, "initial_device_display_name": "new laptop"})
		if other.UserID != "@alice:"+testServerName || other.DeviceID == a.DeviceID {
			t.Fatalf("token login %+v", other)
		}
		s.call(t, "GET", "/account/whoami", other.AccessToken, nil).expect(t, 200)
		// Single use.
		s.call(t, "POST", "/login", "", map[string]any{"type": "m.login.token", "token": tok.LoginToken}).expectError(t, 403, "M_FORBIDDEN")

		// The spec: servers MUST re-prompt for every token, so a second
		// request without auth is a fresh challenge.
		s.call(t, "POST", path, a.AccessToken, map[string]any{}).expect(t, 401)
		// No body at all is taken as {}.
		s.call(t, "POST", path, a.AccessToken, nil).expect(t, 401)
		s.call(t, "POST", path, "", map[string]any{}).expectError(t, 401, "M_MISSING_TOKEN")
		// Only under /v1.
		s.call(t, "POST", "/login/get_token", a.AccessToken, map[string]any{}).expectError(t, 404, "M_UNRECOGNIZED")

		g := s.newGuest(t, "4321")
		s.call(t, "POST", path, g.Token, map[string]any{}).expectError(t, 403, "M_GUEST_ACCESS_FORBIDDEN")
	})
}

// TestRefreshTokens runs the whole server with access tokens that expire
// after two seconds.
func TestRefreshTokens(t *testing.T) {
	t.Parallel()
	for _, e := range sqltest.Engines() {
		t.Run(string(e), func(t *testing.T) {
			cfg := hstest.Config(t, e)
			cfg.Auth.RefreshableTokenExpiry = 2 * time.Second
			srv := hstest.Start(t, cfg)
			hs := hsClient{t: t, url: srv.ClientURL}
			hsPasswordAccount(t, srv, "alice", "wonderland")

			var first loginResult
			hs.do("POST", "/login", "", passwordLogin("alice", "wonderland", map[string]any{"refresh_token": true})).expect(t, 200).JSON(t, &first)
			if first.RefreshToken == "" || first.ExpiresInMS != 2000 {
				t.Fatalf("login with refresh_token %+v", first)
			}
			hs.do("GET", "/account/whoami", first.AccessToken, nil).expect(t, 200)

			// Wait for the expiry: 401 M_UNKNOWN_TOKEN with soft_logout.
			deadline := time.Now().Add(10 * time.Second)
			var expired response
			for {
				expired = hs.do("GET", "/account/whoami", first.AccessToken, nil)
				if expired.Status != 200 || time.Now().After(deadline) {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			expired.expectError(t, 401, "M_UNKNOWN_TOKEN")
			if body := expired.Object(t); body["soft_logout"] != true {
				t.Fatalf("expired token without soft_logout: %v", body)
			}

			var next struct {
				AccessToken  string `json:"access_token"`
				RefreshToken string `json:"refresh_token"`
				ExpiresInMS  int64  `json:"expires_in_ms"`
			}
			hs.do("POST", "/refresh", "", map[string]string{"refresh_token": first.RefreshToken}).expect(t, 200).JSON(t, &next)
			if next.AccessToken == "" || next.RefreshToken == "" || next.RefreshToken == first.RefreshToken || next.ExpiresInMS != 2000 {
				t.Fatalf("refresh %+v", next)
			}
			who := hs.do("GET", "/account/whoami", next.AccessToken, nil).expect(t, 200).Object(t)
			if who["device_id"] != first.DeviceID {
				t.Fatalf("refreshed token is for device %v, want %s", who["device_id"], first.DeviceID)
			}
			// The old refresh token is spent.
			hs.do("POST", "/refresh", "", map[string]string{"refresh_token": first.RefreshToken}).expectError(t, 401, "M_UNKNOWN_TOKEN")
			// The new one works once more.
			hs.do("POST", "/refresh", "", map[string]string{"refresh_token": next.RefreshToken}).expect(t, 200)

			hs.do("POST", "/refresh", "", map[string]string{"refresh_token": "wfr_forged"}).expectError(t, 401, "M_UNKNOWN_TOKEN")
			hs.do("POST", "/refresh", "", map[string]string{}).expectError(t, 400, "M_MISSING_PARAM")
			hs.do("POST", "/refresh", "", "nope").expectError(t, 400, "M_NOT_JSON")

			// Soft logout: logging in again with the same device id keeps
			// the device.
			var again loginResult
			hs.do("POST", "/login", "", passwordLogin("alice", "wonderland", map[string]any{"device_id": first.DeviceID})).expect(t, 200).JSON(t, &again)
			if again.DeviceID != first.DeviceID || again.RefreshToken != "" {
				t.Fatalf("re-login %+v", again)
			}
		})
	}
}
