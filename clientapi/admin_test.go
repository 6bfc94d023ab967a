package clientapi_test

import (
	"context"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/weft-chat/weft/config"
)

func TestSharedSecretRegistration(t *testing.T) {
	ctx := context.Background()
	regEngines(t, func(t *testing.T, e config.Engine) {
		srv := regStart(t, e, nil)
		base := srv.ClientURL
		db := regDB(t, srv)

		status, body := regSharedSecret(t, base, "test-secret", "root", "pw", true, "")
		if status != 200 || body["user_id"] != "@root:localhost" || body["home_server"] != "localhost" ||
			body["access_token"] == nil || body["device_id"] == nil {
			t.Fatalf("admin registration: %d %v", status, body)
		}
		rootToken := body["access_token"].(string)
		if acc, err := db.Account(ctx, "root"); err != nil || !acc.IsAdmin {
			t.Errorf("admin flag not stored: %+v %v", acc, err)
		}
		status, body = regSharedSecret(t, base, "test-secret", "plain", "pw", false, "")
		if status != 200 {
			t.Fatalf("user registration: %d %v", status, body)
		}
		plainToken := body["access_token"].(string)
		if acc, _ := db.Account(ctx, "plain"); acc.IsAdmin {
			t.Error("notadmin registration made an admin")
		}
		// The admin flag is what the admin API goes by.
		if status, body := regCall(t, "GET", base+"/_synapse/admin/v1/registration_tokens", rootToken, nil); status != 200 {
			t.Errorf("admin listing tokens: %d %v", status, body)
		}
		status, body = regCall(t, "GET", base+"/_synapse/admin/v1/registration_tokens", plainToken, nil)
		regWantError(t, "non-admin listing tokens", status, body, 403, "M_FORBIDDEN")

		status, body = regSharedSecret(t, base, "test-secret", "robot", "pw", false, "bot")
		if status != 200 {
			t.Fatalf("bot registration: %d %v", status, body)
		}
		if acc, _ := db.Account(ctx, "robot"); acc.UserType != "bot" {
			t.Errorf("user_type = %q, want bot", acc.UserType)
		}
		if name, err := db.ProfileField(ctx, "robot", "displayname"); err != nil || string(name) != `"robot"` {
			t.Errorf("default display name %s %v", name, err)
		}
		// Complement: shared-secret registration lower-cases, and the MAC
		// covers the name as sent.
		status, body = regSharedSecret(t, base, "test-secret", "user-UPPER-shared-SECRET", "pw", false, "")
		if status != 200 || body["user_id"] != "@user-upper-shared-secret:localhost" {
			t.Errorf("upper case: %d %v", status, body)
		}
		status, body = regSharedSecret(t, base, "test-secret", "us,er", "pw", false, "")
		regWantError(t, "symbol in name", status, body, 400, "M_INVALID_USERNAME")
		status, body = regSharedSecret(t, base, "test-secret", "root", "pw", false, "")
		regWantError(t, "taken name", status, body, 400, "M_USER_IN_USE")
		status, body = regSharedSecret(t, base, "test-secret", "wizard", "pw", false, "wizard")
		regWantError(t, "unknown user_type", status, body, 400, "M_INVALID_PARAM")
		status, body = regSharedSecret(t, base, "wrong-secret", "intruder", "pw", true, "")
		regWantError(t, "wrong secret", status, body, 403, "M_FORBIDDEN")
		if ok, _ := db.AccountExists(ctx, "intruder"); ok {
			t.Error("a wrong MAC registered a user")
		}

		// The password created with the shared secret logs in.
		if status, body := regCall(t, "POST", base+"/_matrix/client/v3/login", "", map[string]any{"type": "m.login.password",
			"identifier": map[string]any{"type": "m.id.user", "user": "robot"}, "password": "pw"}); status != 200 {
			t.Errorf("login: %d %v", status, body)
		}
	})
}

func TestSharedSecretNonces(t *testing.T) {
	regEngines(t, func(t *testing.T, e config.Engine) {
		srv := regStart(t, e, nil)
		url := srv.ClientURL + "/_synapse/admin/v1/register"
		nonce := func() string {
			t.Helper()
			status, body := regCall(t, "GET", url, "", nil)
			n, _ := body["nonce"].(string)
			if _, err := hex.DecodeString(n); status != 200 || err != nil || len(n) != 128 {
				t.Fatalf("GET nonce: %d %v", status, body)
			}
			return n
		}
		post := func(n, user string, mac string) (int, map[string]any) {
			return regCall(t, "POST", url, "", map[string]any{"nonce": n, "username": user, "password": "pw", "admin": false, "mac": mac})
		}

		// A wrong MAC uses the nonce up: it cannot be retried.
		n := nonce()
		status, body := post(n, "carol", strings.Repeat("0", 40))
		regWantError(t, "wrong MAC", status, body, 403, "M_FORBIDDEN")
		status, body = post(n, "carol", regMAC("test-secret", n, "carol", "pw", false, ""))
		regWantError(t, "nonce after a wrong MAC", status, body, 400, "M_UNKNOWN")

		n = nonce()
		if status, body := post(n, "dave", regMAC("test-secret", n, "dave", "pw", false, "")); status != 200 {
			t.Fatalf("dave: %d %v", status, body)
		}
		status, body = post(n, "erin", regMAC("test-secret", n, "erin", "pw", false, ""))
		regWantError(t, "reused nonce", status, body, 400, "M_UNKNOWN")
		if body["error"] != "unrecognised nonce" {
			t.Errorf("reused nonce message %v", body["error"])
		}
		status, body = post("deadbeef", "frank", regMAC("test-secret", "deadbeef", "frank", "pw", false, ""))
		regWantError(t, "unknown nonce", status, body, 400, "M_UNKNOWN")

		// The MAC covers admin and user_type: flipping either after signing
		// is refused.
		n = nonce()
		status, body = regCall(t, "POST", url, "", map[string]any{"nonce": n, "username": "gina", "password": "pw", "admin": true,
			"mac": regMAC("test-secret", n, "gina", "pw", false, "")})
		regWantError(t, "admin flipped", status, body, 403, "M_FORBIDDEN")
		n = nonce()
		status, body = regCall(t, "POST", url, "", map[string]any{"nonce": n, "username": "hank", "password": "pw", "user_type": "support",
			"mac": regMAC("test-secret", n, "hank", "pw", false, "")})
		regWantError(t, "user_type added", status, body, 403, "M_FORBIDDEN")

		for _, c := range []struct {
			name string
			body map[string]any
			code string
		}{
			{"no nonce", map[string]any{"username": "x", "password": "pw", "mac": "00"}, "M_BAD_JSON"},
			{"no username", map[string]any{"nonce": nonce(), "password": "pw", "mac": "00"}, "M_BAD_JSON"},
			{"no password", map[string]any{"nonce": nonce(), "username": "x", "mac": "00"}, "M_BAD_JSON"},
			{"no mac", map[string]any{"nonce": nonce(), "username": "x", "password": "pw"}, "M_BAD_JSON"},
			{"NUL in username", map[string]any{"nonce": nonce(), "username": "a\x00b", "password": "pw", "mac": "00"}, "M_INVALID_USERNAME"},
			{"admin not a bool", map[string]any{"nonce": nonce(), "username": "x", "password": "pw", "admin": "yes", "mac": "00"}, "M_BAD_JSON"},
		} {
			status, body := regCall(t, "POST", url, "", c.body)
			regWantError(t, c.name, status, body, 400, c.code)
		}
		status, body = regCall(t, "POST", url, "", `[]`)
		regWantError(t, "array body", status, body, 400, "M_BAD_JSON")
	})
}

func TestSharedSecretDisabled(t *testing.T) {
	srv := regStart(t, config.SQLite, func(c *config.Config) { c.Registration.SharedSecret = "" })
	url := srv.ClientURL + "/_synapse/admin/v1/register"
	status, body := regCall(t, "GET", url, "", nil)
	regWantError(t, "GET nonce", status, body, 400, "M_UNKNOWN")
	status, body = regCall(t, "POST", url, "", map[string]any{"nonce": "n", "username": "x", "password": "pw",
		"mac": regMAC("", "n", "x", "pw", false, "")})
	regWantError(t, "POST", status, body, 400, "M_UNKNOWN")
	if body["error"] != "Shared secret registration is not enabled" {
		t.Errorf("message %v", body["error"])
	}
}

func TestRegistrationTokenAdminAPI(t *testing.T) {
	regEngines(t, func(t *testing.T, e config.Engine) {
		srv := regStart(t, e, nil)
		base := srv.ClientURL + "/_synapse/admin/v1/registration_tokens"
		_, admin := regSharedSecret(t, srv.ClientURL, "test-secret", "admin", "pw", true, "")
		_, user := regSharedSecret(t, srv.ClientURL, "test-secret", "user", "pw", false, "")
		at, ut := admin["access_token"].(string), user["access_token"].(string)

		// Who may call it.
		status, body := regCall(t, "GET", base, "", nil)
		regWantError(t, "no token", status, body, 401, "M_MISSING_TOKEN")
		for _, c := range []struct{ method, path string }{
			{"GET", ""}, {"POST", "/new"}, {"GET", "/abc"}, {"PUT", "/abc"}, {"DELETE", "/abc"},
		} {
			status, body := regCall(t, c.method, base+c.path, ut, `{}`)
			regWantError(t, "non-admin "+c.method+" "+c.path, status, body, 403, "M_FORBIDDEN")
		}

		// Creating, with Synapse's defaults and shapes.
		status, body = regCall(t, "POST", base+"/new", at, `{}`)
		if status != 200 {
			t.Fatalf("new: %d %v", status, body)
		}
		generated, _ := body["token"].(string)
		if len(generated) != 16 || body["uses_allowed"] != nil || body["expiry_time"] != nil || body["pending"] != float64(0) || body["completed"] != float64(0) {
			t.Errorf("default token %v", body)
		}
		for _, k := range []string{"uses_allowed", "expiry_time"} {
			if _, ok := body[k]; !ok {
				t.Errorf("%s missing (Synapse sends null)", k)
			}
		}
		exp := time.Now().Add(time.Hour).UnixMilli()
		status, body = regCall(t, "POST", base+"/new", at, map[string]any{"token": "abc-DEF_1.~", "uses_allowed": 3, "expiry_time": exp})
		if status != 200 || body["token"] != "abc-DEF_1.~" || body["uses_allowed"] != float64(3) || body["expiry_time"] != float64(exp) {
			t.Errorf("chosen token: %d %v", status, body)
		}
		if status, body := regCall(t, "POST", base+"/new", at, map[string]any{"length": 40}); status != 200 || len(body["token"].(string)) != 40 {
			t.Errorf("length 40: %d %v", status, body)
		}
		if status, body := regCall(t, "POST", base+"/new", at, map[string]any{"token": "none-left", "uses_allowed": 0}); status != 200 || body["uses_allowed"] != float64(0) {
			t.Errorf("zero uses: %d %v", status, body)
		}
		for _, c := range []struct {
			name string
			body string
		}{
			{"duplicate", `{"token": "abc-DEF_1.~"}`},
			{"bad characters", `{"token": "no spaces"}`},
			{"empty token", `{"token": ""}`},
			{"token too long", fmt.Sprintf(`{"token": %q}`, strings.Repeat("a", 65))},
			{"token not a string", `{"token": 5}`},
			{"length zero", `{"length": 0}`},
			{"length too big", `{"length": 65}`},
			{"length not an integer", `{"length": "8"}`},
			{"length a float", `{"length": 8.5}`},
			{"negative uses", `{"uses_allowed": -1}`},
			{"uses a string", `{"uses_allowed": "3"}`},
			{"uses a bool", `{"uses_allowed": true}`},
			{"expiry in the past", fmt.Sprintf(`{"expiry_time": %d}`, time.Now().Add(-time.Hour).UnixMilli())},
			{"expiry a string", `{"expiry_time": "soon"}`},
		} {
			status, body := regCall(t, "POST", base+"/new", at, c.body)
			regWantError(t, "new: "+c.name, status, body, 400, "M_INVALID_PARAM")
		}

		// Listing, with the valid filter.
		listed := func(query string) []string {
			t.Helper()
			status, body := regCall(t, "GET", base+query, at, nil)
			if status != 200 {
				t.Fatalf("list%s: %d %v", query, status, body)
			}
			var out []string
			for _, x := range body["registration_tokens"].([]any) {
				out = append(out, x.(map[string]any)["token"].(string))
			}
			return out
		}
		if all := listed(""); len(all) != 4 {
			t.Errorf("all tokens %v", all)
		}
		if v := listed("?valid=false"); len(v) != 1 || v[0] != "none-left" {
			t.Errorf("invalid tokens %v", v)
		}
		if v := listed("?valid=true"); len(v) != 3 {
			t.Errorf("valid tokens %v", v)
		}
		status, body = regCall(t, "GET", base+"?valid=maybe", at, nil)
		regWantError(t, "valid=maybe", status, body, 400, "M_INVALID_PARAM")

		// Reading, updating, deleting one.
		status, body = regCall(t, "GET", base+"/abc-DEF_1.~", at, nil)
		if status != 200 || body["uses_allowed"] != float64(3) || body["completed"] != float64(0) {
			t.Errorf("get: %d %v", status, body)
		}
		status, body = regCall(t, "GET", base+"/nope", at, nil)
		regWantError(t, "get unknown", status, body, 404, "M_NOT_FOUND")
		status, body = regCall(t, "PUT", base+"/abc-DEF_1.~", at, map[string]any{"uses_allowed": 10})
		if status != 200 || body["uses_allowed"] != float64(10) || body["expiry_time"] != float64(exp) {
			t.Errorf("put uses: %d %v", status, body)
		}
		status, body = regCall(t, "PUT", base+"/abc-DEF_1.~", at, map[string]any{"expiry_time": nil, "uses_allowed": nil})
		if status != 200 || body["uses_allowed"] != nil || body["expiry_time"] != nil {
			t.Errorf("put nulls: %d %v", status, body)
		}
		status, body = regCall(t, "PUT", base+"/abc-DEF_1.~", at, `{}`)
		if status != 200 || body["token"] != "abc-DEF_1.~" {
			t.Errorf("put nothing: %d %v", status, body)
		}
		status, body = regCall(t, "PUT", base+"/abc-DEF_1.~", at, map[string]any{"uses_allowed": -2})
		regWantError(t, "put negative", status, body, 400, "M_INVALID_PARAM")
		status, body = regCall(t, "PUT", base+"/abc-DEF_1.~", at, map[string]any{"expiry_time": 1})
		regWantError(t, "put past expiry", status, body, 400, "M_INVALID_PARAM")
		status, body = regCall(t, "PUT", base+"/nope", at, map[string]any{"uses_allowed": 1})
		regWantError(t, "put unknown", status, body, 404, "M_NOT_FOUND")
		// The token made usable again by PUT answers valid.
		status, body = regCall(t, "PUT", base+"/none-left", at, map[string]any{"uses_allowed": 1})
		if status != 200 {
			t.Fatalf("%d %v", status, body)
		}
		if _, body := regCall(t, "GET", srv.ClientURL+"/_matrix/client/v1/register/m.login.registration_token/validity?token=none-left", "", nil); body["valid"] != true {
			t.Errorf("validity after raising uses: %v", body)
		}

		status, body = regCall(t, "DELETE", base+"/abc-DEF_1.~", at, nil)
		if status != 200 || len(body) != 0 {
			t.Errorf("delete: %d %v", status, body)
		}
		status, body = regCall(t, "DELETE", base+"/abc-DEF_1.~", at, nil)
		regWantError(t, "delete again", status, body, 404, "M_NOT_FOUND")
		if all := listed(""); len(all) != 3 {
			t.Errorf("after delete %v", all)
		}
	})
}
