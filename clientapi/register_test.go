package clientapi_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"

	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/homeserver/hstest"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// End-to-end tests of registration: a whole server per engine, driven over
// HTTP by mautrix and by raw requests where the wire shape matters.

// regStart starts a server on engine with the test config changed by edit.
func regStart(t *testing.T, engine config.Engine, edit func(*config.Config)) *hstest.Server {
	t.Helper()
	cfg := hstest.Config(t, engine)
	if edit != nil {
		edit(&cfg)
	}
	return hstest.Start(t, cfg)
}

// regEngines runs f on each engine.
func regEngines(t *testing.T, f func(t *testing.T, e config.Engine)) {
	for _, e := range sqltest.Engines() {
		t.Run(string(e), func(t *testing.T) { f(t, e) })
	}
}

// regDB opens a second handle on the server's database, to check what
// registration stored.
func regDB(t *testing.T, srv *hstest.Server) *sql.DB {
	t.Helper()
	db, err := sql.Open(context.Background(), srv.Config.Database.URL, 2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// regCall sends a request (body: nil, a string of raw JSON, or a value to
// encode) and returns the status and the decoded JSON object.
func regCall(t *testing.T, method, url, token string, body any) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		data, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("%s %s: status %d, body %q is not a JSON object", method, url, resp.StatusCode, raw)
	}
	return resp.StatusCode, out
}

// regWantError fails unless the response is the Matrix error status/code.
func regWantError(t *testing.T, what string, status int, body map[string]any, wantStatus int, wantCode string) {
	t.Helper()
	if status != wantStatus || body["errcode"] != wantCode {
		t.Errorf("%s: %d %v, want %d %s", what, status, body, wantStatus, wantCode)
	}
}

// regRegister does a whole m.login.dummy registration with raw requests.
func regRegister(t *testing.T, base string, body map[string]any) (int, map[string]any) {
	t.Helper()
	body["auth"] = map[string]any{"type": "m.login.dummy"}
	return regCall(t, "POST", base+"/_matrix/client/v3/register", "", body)
}

// regSharedSecret registers a user the way Synapse's
// register_new_matrix_user does: fetch a nonce, then post the HMAC-SHA1,
// in hex, of nonce NUL user NUL password NUL "admin"|"notadmin", plus NUL
// user_type when there is one. The MAC is computed here, independently of
// the server's code.
func regSharedSecret(t *testing.T, base, secret, user, password string, admin bool, userType string) (int, map[string]any) {
	t.Helper()
	status, got := regCall(t, "GET", base+"/_synapse/admin/v1/register", "", nil)
	if status != 200 {
		t.Fatalf("GET nonce: %d %v", status, got)
	}
	nonce, _ := got["nonce"].(string)
	body := map[string]any{"nonce": nonce, "username": user, "password": password, "admin": admin,
		"mac": regMAC(secret, nonce, user, password, admin, userType)}
	if userType != "" {
		body["user_type"] = userType
	}
	return regCall(t, "POST", base+"/_synapse/admin/v1/register", "", body)
}

func regMAC(secret, nonce, user, password string, admin bool, userType string) string {
	mac := hmac.New(sha1.New, []byte(secret))
	mac.Write([]byte(nonce))
	mac.Write([]byte("\x00"))
	mac.Write([]byte(user))
	mac.Write([]byte("\x00"))
	mac.Write([]byte(password))
	mac.Write([]byte("\x00"))
	if admin {
		mac.Write([]byte("admin"))
	} else {
		mac.Write([]byte("notadmin"))
	}
	if userType != "" {
		mac.Write([]byte("\x00"))
		mac.Write([]byte(userType))
	}
	return hex.EncodeToString(mac.Sum(nil))
}

func regClient(t *testing.T, base string) *mautrix.Client {
	t.Helper()
	cli, err := mautrix.NewClient(base, "", "")
	if err != nil {
		t.Fatal(err)
	}
	return cli
}

func regErrcode(err error) string {
	var he mautrix.HTTPError
	if errors.As(err, &he) && he.RespError != nil {
		return he.RespError.ErrCode
	}
	return ""
}

func TestRegisterWithMautrix(t *testing.T) {
	ctx := context.Background()
	regEngines(t, func(t *testing.T, e config.Engine) {
		srv := regStart(t, e, nil)
		cli := regClient(t, srv.ClientURL)
		avail, err := cli.RegisterAvailable(ctx, "alice")
		if err != nil || !avail.Available {
			t.Fatalf("RegisterAvailable(alice) = %+v, %v", avail, err)
		}
		resp, err := cli.RegisterDummy(ctx, &mautrix.ReqRegister[any]{Username: "alice", Password: "wonderland",
			DeviceID: "ALICEPHONE", InitialDeviceDisplayName: "Alice's phone"})
		if err != nil {
			t.Fatalf("RegisterDummy: %v", err)
		}
		if resp.UserID != "@alice:localhost" || resp.AccessToken == "" || resp.DeviceID != "ALICEPHONE" || resp.HomeServer != "localhost" {
			t.Errorf("register response %+v", resp)
		}
		if resp.RefreshToken != "" || resp.ExpiresInMS != 0 {
			t.Errorf("refresh token without asking: %+v", resp)
		}
		cli.SetCredentials(resp.UserID, resp.AccessToken)
		who, err := cli.Whoami(ctx)
		if err != nil || who.UserID != "@alice:localhost" || who.DeviceID != "ALICEPHONE" {
			t.Errorf("whoami = %+v, %v", who, err)
		}
		// The password works for a fresh login.
		login := regClient(t, srv.ClientURL)
		if _, err := login.Login(ctx, &mautrix.ReqLogin{Type: mautrix.AuthTypePassword,
			Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "alice"}, Password: "wonderland"}); err != nil {
			t.Errorf("login with the registered password: %v", err)
		}
		// The display name defaults to the localpart.
		if name, err := cli.GetOwnDisplayName(ctx); err != nil || name.DisplayName != "alice" {
			t.Errorf("display name = %+v, %v; want alice", name, err)
		}
		if _, err := cli.RegisterAvailable(ctx, "alice"); regErrcode(err) != "M_USER_IN_USE" {
			t.Errorf("RegisterAvailable(taken) = %v, want M_USER_IN_USE", err)
		}
		_, err = regClient(t, srv.ClientURL).RegisterDummy(ctx, &mautrix.ReqRegister[any]{Username: "alice", Password: "x"})
		if regErrcode(err) != "M_USER_IN_USE" {
			t.Errorf("registering a taken name: %v, want M_USER_IN_USE", err)
		}
	})
}

// The spec's UIA section: before any stage is done the 401 carries flows,
// params and session, and no errcode (clients treat an errcode as a failed
// stage).
func TestRegisterUIAChallenge(t *testing.T) {
	regEngines(t, func(t *testing.T, e config.Engine) {
		srv := regStart(t, e, nil)
		for _, prefix := range []string{"/_matrix/client/v3", "/_matrix/client/r0"} {
			status, body := regCall(t, "POST", srv.ClientURL+prefix+"/register", "", `{}`)
			if status != 401 {
				t.Fatalf("%s: status %d %v, want 401", prefix, status, body)
			}
			flows, _ := json.Marshal(body["flows"])
			if string(flows) != `[{"stages":["m.login.dummy"]}]` {
				t.Errorf("flows = %s", flows)
			}
			if p, ok := body["params"].(map[string]any); !ok || len(p) != 0 {
				t.Errorf("params = %v, want {}", body["params"])
			}
			if s, _ := body["session"].(string); s == "" {
				t.Errorf("no session: %v", body)
			}
			for _, k := range []string{"errcode", "error", "completed"} {
				if _, ok := body[k]; ok {
					t.Errorf("challenge has %s: %v", k, body)
				}
			}
		}
		// The session carries on: the second request names it.
		status, body := regCall(t, "POST", srv.ClientURL+"/_matrix/client/v3/register", "", map[string]any{"username": "sess", "password": "pw"})
		if status != 401 {
			t.Fatalf("%d %v", status, body)
		}
		status, body = regCall(t, "POST", srv.ClientURL+"/_matrix/client/v3/register", "", map[string]any{"username": "sess", "password": "pw",
			"auth": map[string]any{"type": "m.login.dummy", "session": body["session"]}})
		if status != 200 || body["user_id"] != "@sess:localhost" {
			t.Errorf("finishing the session: %d %v", status, body)
		}
		// A stage the flows do not offer fails with an errcode, still 401.
		status, body = regCall(t, "POST", srv.ClientURL+"/_matrix/client/v3/register", "", map[string]any{"username": "other", "password": "pw",
			"auth": map[string]any{"type": "m.login.registration_token", "token": "x"}})
		if status != 401 || body["errcode"] == nil || body["flows"] == nil {
			t.Errorf("a stage not offered: %d %v", status, body)
		}
	})
}

func TestRegisterUsernameErrors(t *testing.T) {
	regEngines(t, func(t *testing.T, e config.Engine) {
		srv := regStart(t, e, nil)
		base := srv.ClientURL
		if status, body := regRegister(t, base, map[string]any{"username": "taken", "password": "pw"}); status != 200 {
			t.Fatalf("%d %v", status, body)
		}
		long := strings.Repeat("a", 255-len("@:localhost")+1)
		for _, c := range []struct{ name, username, code string }{
			{"space", "al ice", "M_INVALID_USERNAME"},
			{"colon", "al:ice", "M_INVALID_USERNAME"},
			{"at", "al@ice", "M_INVALID_USERNAME"},
			{"non-ascii", "élodie", "M_INVALID_USERNAME"},
			{"quote", `al"ice`, "M_INVALID_USERNAME"},
			{"too long", long, "M_INVALID_USERNAME"},
			{"numeric", "12345", "M_INVALID_USERNAME"},
			{"leading underscore", "_bridge_bot", "M_INVALID_USERNAME"},
			{"taken", "taken", "M_USER_IN_USE"},
			{"taken in other case", "TAKEN", "M_USER_IN_USE"},
		} {
			// Without auth: the spec wants these errors before UIA, so a
			// 400 comes instead of the 401 challenge.
			status, body := regCall(t, "POST", base+"/_matrix/client/v3/register", "", map[string]any{"username": c.username, "password": "pw"})
			regWantError(t, c.name+" (before auth)", status, body, 400, c.code)
			status, body = regRegister(t, base, map[string]any{"username": c.username, "password": "pw"})
			regWantError(t, c.name, status, body, 400, c.code)
		}
		// The longest legal id registers.
		if status, body := regRegister(t, base, map[string]any{"username": long[1:], "password": "pw"}); status != 200 {
			t.Errorf("255-byte user id: %d %v", status, body)
		}
		// Upper case is lower-cased on registration, as Synapse does (and
		// Complement's "POST /register downcases capitals in usernames"
		// checks); /register/available takes the name as given and refuses
		// upper case.
		status, body := regRegister(t, base, map[string]any{"username": "User-UPPER", "password": "pw"})
		if status != 200 || body["user_id"] != "@user-upper:localhost" {
			t.Errorf("upper case: %d %v", status, body)
		}
		for _, c := range []struct{ username, code string }{
			{"Alice", "M_INVALID_USERNAME"}, {"bad!", "M_INVALID_USERNAME"}, {"12345", "M_INVALID_USERNAME"},
			{long, "M_INVALID_USERNAME"}, {"taken", "M_USER_IN_USE"}, {"user-upper", "M_USER_IN_USE"},
		} {
			status, body := regCall(t, "GET", base+"/_matrix/client/v3/register/available?username="+c.username, "", nil)
			regWantError(t, "available "+c.username, status, body, 400, c.code)
		}
		status, body = regCall(t, "GET", base+"/_matrix/client/v3/register/available", "", nil)
		regWantError(t, "available without username", status, body, 400, "M_MISSING_PARAM")
		status, body = regCall(t, "GET", base+"/_matrix/client/v3/register/available?username=free", "", nil)
		if status != 200 || body["available"] != true {
			t.Errorf("available free: %d %v", status, body)
		}
	})
}

func TestRegisterRequestErrors(t *testing.T) {
	regEngines(t, func(t *testing.T, e config.Engine) {
		srv := regStart(t, e, nil)
		base := srv.ClientURL + "/_matrix/client/v3/register"
		status, body := regCall(t, "POST", base+"?kind=admin", "", `{}`)
		regWantError(t, "unknown kind", status, body, 400, "M_INVALID_PARAM")
		status, body = regCall(t, "POST", base, "", map[string]any{"username": "nopw", "auth": map[string]any{"type": "m.login.dummy"}})
		regWantError(t, "no password", status, body, 400, "M_MISSING_PARAM")
		status, body = regCall(t, "POST", base, "", map[string]any{"username": "longpw", "password": strings.Repeat("p", 513)})
		regWantError(t, "overlong password", status, body, 400, "M_WEAK_PASSWORD")
		status, body = regCall(t, "POST", base, "", `{"username": 5}`)
		regWantError(t, "username not a string", status, body, 400, "M_BAD_JSON")
		status, body = regCall(t, "POST", base, "", `not json`)
		regWantError(t, "not JSON", status, body, 400, "M_NOT_JSON")
		status, body = regCall(t, "POST", base, "", map[string]any{"password": "pw", "auth": "dummy"})
		regWantError(t, "auth not an object", status, body, 400, "M_BAD_JSON")
		// Guests are off by default.
		status, body = regCall(t, "POST", base+"?kind=guest", "", `{}`)
		regWantError(t, "guest", status, body, 403, "M_GUEST_ACCESS_FORBIDDEN")
	})
}

func TestRegisterWithoutUsername(t *testing.T) {
	regEngines(t, func(t *testing.T, e config.Engine) {
		srv := regStart(t, e, nil)
		status, body := regRegister(t, srv.ClientURL, map[string]any{"password": "pw"})
		uid, _ := body["user_id"].(string)
		local := strings.TrimSuffix(strings.TrimPrefix(uid, "@"), ":localhost")
		if status != 200 || local == "" || strings.Trim(local, "abcdefghijklmnopqrstuvwxyz0123456789") != "" ||
			strings.Trim(local, "0123456789") == "" {
			t.Errorf("generated user: %d %v", status, body)
		}
	})
}

func TestRegisterInhibitLoginAndRefresh(t *testing.T) {
	regEngines(t, func(t *testing.T, e config.Engine) {
		srv := regStart(t, e, nil)
		status, body := regRegister(t, srv.ClientURL, map[string]any{"username": "quiet", "password": "pw", "inhibit_login": true})
		if status != 200 || body["user_id"] != "@quiet:localhost" || body["home_server"] != "localhost" || len(body) != 2 {
			t.Errorf("inhibit_login: %d %v, want only user_id and home_server", status, body)
		}
		db := regDB(t, srv)
		if devs, err := db.Devices(context.Background(), "quiet"); err != nil || len(devs) != 0 {
			t.Errorf("inhibit_login made devices %v (%v)", devs, err)
		}

		status, body = regRegister(t, srv.ClientURL, map[string]any{"username": "fresh", "password": "pw", "refresh_token": true})
		if status != 200 {
			t.Fatalf("%d %v", status, body)
		}
		if rt, _ := body["refresh_token"].(string); rt == "" {
			t.Errorf("no refresh_token: %v", body)
		}
		if ms, _ := body["expires_in_ms"].(float64); ms != float64(srv.Config.Auth.RefreshableTokenExpiry.Milliseconds()) {
			t.Errorf("expires_in_ms = %v, want %d", body["expires_in_ms"], srv.Config.Auth.RefreshableTokenExpiry.Milliseconds())
		}
		// The refresh token works.
		status, refreshed := regCall(t, "POST", srv.ClientURL+"/_matrix/client/v3/refresh", "", map[string]any{"refresh_token": body["refresh_token"]})
		if status != 200 || refreshed["access_token"] == nil {
			t.Errorf("refresh: %d %v", status, refreshed)
		}
	})
}

func TestRegisterDisabled(t *testing.T) {
	regEngines(t, func(t *testing.T, e config.Engine) {
		srv := regStart(t, e, func(c *config.Config) { c.Registration.Enabled = false })
		status, body := regRegister(t, srv.ClientURL, map[string]any{"username": "nobody", "password": "pw"})
		regWantError(t, "register", status, body, 403, "M_FORBIDDEN")
		status, body = regCall(t, "POST", srv.ClientURL+"/_matrix/client/v3/register", "", `{}`)
		regWantError(t, "flows", status, body, 403, "M_FORBIDDEN")
		status, body = regCall(t, "GET", srv.ClientURL+"/_matrix/client/v3/register/available?username=nobody", "", nil)
		regWantError(t, "available", status, body, 403, "M_FORBIDDEN")
		status, body = regCall(t, "GET", srv.ClientURL+"/_matrix/client/v1/register/m.login.registration_token/validity?token=abc", "", nil)
		regWantError(t, "validity", status, body, 403, "M_FORBIDDEN")
		// Operators still create accounts with the shared secret.
		if status, body := regSharedSecret(t, srv.ClientURL, "test-secret", "made", "pw", false, ""); status != 200 {
			t.Errorf("shared-secret registration with registration off: %d %v", status, body)
		}
	})
}

func TestRegisterGuest(t *testing.T) {
	ctx := context.Background()
	regEngines(t, func(t *testing.T, e config.Engine) {
		srv := regStart(t, e, func(c *config.Config) { c.Registration.AllowGuests = true; c.Registration.Enabled = false })
		cli := regClient(t, srv.ClientURL)
		// The spec: every field but initial_device_display_name is ignored.
		resp, _, err := cli.RegisterGuest(ctx, &mautrix.ReqRegister[any]{Username: "chosen", Password: "pw", DeviceID: "MINE",
			InhibitLogin: true, InitialDeviceDisplayName: "Guest browser"})
		if err != nil {
			t.Fatal(err)
		}
		local := strings.TrimSuffix(strings.TrimPrefix(string(resp.UserID), "@"), ":localhost")
		if local == "" || strings.Trim(local, "0123456789") != "" {
			t.Errorf("guest user id %s, want a numeric localpart", resp.UserID)
		}
		if resp.AccessToken == "" || resp.DeviceID == "" || resp.DeviceID == "MINE" {
			t.Errorf("guest response %+v", resp)
		}
		db := regDB(t, srv)
		acc, err := db.Account(ctx, local)
		if err != nil || !acc.IsGuest || acc.PasswordHash != "" {
			t.Errorf("guest account %+v, %v", acc, err)
		}
		dev, err := db.Device(ctx, local, string(resp.DeviceID))
		if err != nil || dev.DisplayName != "Guest browser" {
			t.Errorf("guest device %+v, %v", dev, err)
		}
		status, who := regCall(t, "GET", srv.ClientURL+"/_matrix/client/v3/account/whoami", resp.AccessToken, nil)
		if status != 200 || who["user_id"] != string(resp.UserID) || who["is_guest"] != true {
			t.Errorf("guest whoami = %d %v", status, who)
		}
	})
}

func TestRegisterRateLimit(t *testing.T) {
	srv := regStart(t, config.SQLite, func(c *config.Config) {
		c.RateLimits.Enabled = true
		c.RateLimits.Registration = config.Bucket{Rate: 0.001, Burst: 2}
	})
	url := srv.ClientURL + "/_matrix/client/v3/register"
	for i := range 2 {
		if status, body := regCall(t, "POST", url, "", `{}`); status != 401 {
			t.Fatalf("request %d: %d %v", i, status, body)
		}
	}
	// Limited before any work: even a body that does not parse gets 429.
	status, body := regCall(t, "POST", url, "", `not json`)
	regWantError(t, "third request", status, body, 429, "M_LIMIT_EXCEEDED")
	if ms, _ := body["retry_after_ms"].(float64); ms <= 0 {
		t.Errorf("retry_after_ms = %v", body["retry_after_ms"])
	}
	// Checking names and tokens draws on other buckets.
	if status, body := regCall(t, "GET", srv.ClientURL+"/_matrix/client/v3/register/available?username=x1", "", nil); status != 200 {
		t.Errorf("available after the register limit: %d %v", status, body)
	}
	validity := srv.ClientURL + "/_matrix/client/v1/register/m.login.registration_token/validity?token=guess"
	for range 2 {
		regCall(t, "GET", validity, "", nil)
	}
	status, body = regCall(t, "GET", validity, "", nil)
	regWantError(t, "validity guessing", status, body, 429, "M_LIMIT_EXCEEDED")
}

// regTokenRegister registers with m.login.registration_token in two steps,
// as a client does: fetch the session, then send the token.
func regTokenRegister(t *testing.T, base, username, token string) (int, map[string]any) {
	t.Helper()
	url := base + "/_matrix/client/v3/register"
	status, ch := regCall(t, "POST", url, "", map[string]any{"username": username, "password": "pw"})
	if status != 401 {
		return status, ch
	}
	return regCall(t, "POST", url, "", map[string]any{"username": username, "password": "pw",
		"auth": map[string]any{"type": "m.login.registration_token", "token": token, "session": ch["session"]}})
}

func TestRegisterWithRegistrationToken(t *testing.T) {
	ctx := context.Background()
	regEngines(t, func(t *testing.T, e config.Engine) {
		srv := regStart(t, e, func(c *config.Config) { c.Registration.RequiresToken = true })
		base := srv.ClientURL
		// An admin, made with the shared secret, makes the token.
		status, admin := regSharedSecret(t, base, "test-secret", "boss", "pw", true, "")
		if status != 200 {
			t.Fatalf("shared-secret admin: %d %v", status, admin)
		}
		adminToken := admin["access_token"].(string)
		status, tok := regCall(t, "POST", base+"/_synapse/admin/v1/registration_tokens/new", adminToken, map[string]any{"uses_allowed": 2})
		if status != 200 {
			t.Fatalf("new token: %d %v", status, tok)
		}
		token := tok["token"].(string)

		status, ch := regCall(t, "POST", base+"/_matrix/client/v3/register", "", `{}`)
		flows, _ := json.Marshal(ch["flows"])
		if status != 401 || string(flows) != `[{"stages":["m.login.registration_token"]}]` {
			t.Errorf("flows with requires_token: %d %s", status, flows)
		}
		// Dummy auth is not enough.
		status, body := regRegister(t, base, map[string]any{"username": "sneaky", "password": "pw"})
		if status != 401 || body["errcode"] == nil {
			t.Errorf("dummy auth with requires_token: %d %v", status, body)
		}
		status, body = regTokenRegister(t, base, "wrong", "not-a-token")
		regWantError(t, "unknown token", status, body, 401, "M_FORBIDDEN")
		if body["session"] == nil || body["flows"] == nil {
			t.Errorf("a failed stage must still carry the UIA body: %v", body)
		}

		validity := base + "/_matrix/client/v1/register/m.login.registration_token/validity?token="
		if status, body := regCall(t, "GET", validity+token, "", nil); status != 200 || body["valid"] != true {
			t.Errorf("validity of a fresh token: %d %v", status, body)
		}
		if status, body := regCall(t, "GET", validity+"not-a-token", "", nil); status != 200 || body["valid"] != false {
			t.Errorf("validity of an unknown token: %d %v", status, body)
		}
		status, body = regCall(t, "GET", base+"/_matrix/client/v1/register/m.login.registration_token/validity", "", nil)
		regWantError(t, "validity without token", status, body, 400, "M_MISSING_PARAM")

		for _, name := range []string{"first", "second"} {
			if status, body := regTokenRegister(t, base, name, token); status != 200 || body["access_token"] == nil {
				t.Fatalf("%s registration with the token: %d %v", name, status, body)
			}
		}
		status, body = regTokenRegister(t, base, "third", token)
		regWantError(t, "used-up token", status, body, 401, "M_FORBIDDEN")
		if status, body := regCall(t, "GET", validity+token, "", nil); body["valid"] != false {
			t.Errorf("validity of a used-up token: %d %v", status, body)
		}
		status, got := regCall(t, "GET", base+"/_synapse/admin/v1/registration_tokens/"+token, adminToken, nil)
		if status != 200 || got["completed"] != float64(2) || got["uses_allowed"] != float64(2) || got["pending"] != float64(0) {
			t.Errorf("token after two uses: %d %v", status, got)
		}

		// An expired token is refused. The admin API refuses to make one,
		// so it goes straight into the database.
		db := regDB(t, srv)
		if err := db.CreateRegistrationToken(ctx, sql.RegistrationToken{Token: "stale", ExpiryTS: time.Now().Add(-time.Minute).UnixMilli()}); err != nil {
			t.Fatal(err)
		}
		status, body = regTokenRegister(t, base, "late", "stale")
		regWantError(t, "expired token", status, body, 401, "M_FORBIDDEN")
		if status, body := regCall(t, "GET", validity+"stale", "", nil); body["valid"] != false {
			t.Errorf("validity of an expired token: %d %v", status, body)
		}
		for _, name := range []string{"third", "late", "wrong", "sneaky"} {
			if ok, _ := db.AccountExists(ctx, name); ok {
				t.Errorf("%s was registered without a usable token", name)
			}
		}
	})
}

// Many clients racing for the last use of a token: exactly one gets it,
// the others get a UIA 401 with M_FORBIDDEN (from the stage, or from the
// re-check when the account is made) and can start again.
func TestRegisterTokenRace(t *testing.T) {
	ctx := context.Background()
	regEngines(t, func(t *testing.T, e config.Engine) {
		srv := regStart(t, e, func(c *config.Config) { c.Registration.RequiresToken = true })
		db := regDB(t, srv)
		one := int64(1)
		if err := db.CreateRegistrationToken(ctx, sql.RegistrationToken{Token: "last", UsesAllowed: &one}); err != nil {
			t.Fatal(err)
		}
		url := srv.ClientURL + "/_matrix/client/v3/register"
		const n = 8
		sessions := make([]any, n)
		for i := range n {
			_, ch := regCall(t, "POST", url, "", `{}`)
			sessions[i] = ch["session"]
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		won := 0
		for i := range n {
			wg.Go(func() {
				status, body := regCall(t, "POST", url, "", map[string]any{"username": "racer" + string(rune('a'+i)), "password": "pw",
					"auth": map[string]any{"type": "m.login.registration_token", "token": "last", "session": sessions[i]}})
				mu.Lock()
				defer mu.Unlock()
				switch {
				case status == 200:
					won++
				case status == 401 && body["errcode"] == "M_FORBIDDEN" && body["session"] != nil && body["flows"] != nil:
				default:
					t.Errorf("racer %d: %d %v", i, status, body)
				}
			})
		}
		wg.Wait()
		if won != 1 {
			t.Errorf("%d registrations used a one-use token", won)
		}
		if rt, _ := db.RegistrationToken(ctx, "last"); rt.Completed != 1 {
			t.Errorf("completed = %d", rt.Completed)
		}
	})
}
