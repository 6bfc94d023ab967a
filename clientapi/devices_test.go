package clientapi_test

import (
	"strings"
	"testing"
)

// passwordAuthDict is the spec's m.login.password auth dict.
func passwordAuthDict(session, user, password string) map[string]any {
	return map[string]any{
		"type":       "m.login.password",
		"session":    session,
		"identifier": map[string]string{"type": "m.id.user", "user": user},
		"password":   password,
	}
}

// uiaChallenge checks the spec's first 401 of user-interactive auth, with
// the password flow Weft offers signed-in users, and returns its session.
func uiaChallenge(t testing.TB, r response) string {
	t.Helper()
	r.expect(t, 401)
	var c struct {
		Flows []struct {
			Stages []string `json:"stages"`
		} `json:"flows"`
		Session string `json:"session"`
		Code    string `json:"errcode"`
	}
	r.JSON(t, &c)
	if len(c.Flows) != 1 || len(c.Flows[0].Stages) != 1 || c.Flows[0].Stages[0] != "m.login.password" || c.Session == "" || c.Code != "" {
		t.Fatalf("UIA challenge %s", r.Body)
	}
	return c.Session
}

// uiaRoundTrip makes the request without auth, checks the challenge, and
// makes it again with the password; it returns the second answer.
func uiaRoundTrip(t testing.TB, s *testServer, method, path, token string, body map[string]any, user, password string) response {
	t.Helper()
	var first any // a nil map would go out as "null"
	if body != nil {
		first = body
	}
	sess := uiaChallenge(t, s.call(t, method, path, token, first))
	withAuth := map[string]any{"auth": passwordAuthDict(sess, user, password)}
	for k, v := range body {
		withAuth[k] = v
	}
	return s.call(t, method, path, token, withAuth)
}

func TestDevicesListGetRename(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, s *testServer) {
		newPasswordUser(t, s, "alice", "wonderland")
		phone := login(t, s, passwordLogin("alice", "wonderland", map[string]any{"initial_device_display_name": "phone"}))
		laptop := login(t, s, passwordLogin("alice", "wonderland", nil))
		bob := s.newUser(t, "bob")

		var list struct {
			Devices []map[string]any `json:"devices"`
		}
		s.call(t, "GET", "/devices", phone.AccessToken, nil).expect(t, 200).JSON(t, &list)
		if len(list.Devices) != 2 {
			t.Fatalf("devices %v", list.Devices)
		}
		byID := map[string]map[string]any{}
		for _, d := range list.Devices {
			byID[d["device_id"].(string)] = d
		}
		// The device that made the request has been seen; the other has
		// no name and has not, and absent values are left out.
		p := byID[phone.DeviceID]
		if p["display_name"] != "phone" || p["last_seen_ip"] != "127.0.0.1" || p["last_seen_ts"].(float64) <= 0 {
			t.Fatalf("phone %v", p)
		}
		if l := byID[laptop.DeviceID]; len(l) != 1 {
			t.Fatalf("laptop %v, want only device_id", l)
		}

		s.call(t, "PUT", "/devices/"+laptop.DeviceID, phone.AccessToken, map[string]string{"display_name": "laptop"}).expect(t, 200)
		got := s.call(t, "GET", "/devices/"+laptop.DeviceID, phone.AccessToken, nil).expect(t, 200).Object(t)
		if got["device_id"] != laptop.DeviceID || got["display_name"] != "laptop" {
			t.Fatalf("renamed device %v", got)
		}
		// Without display_name nothing changes.
		s.call(t, "PUT", "/devices/"+laptop.DeviceID, phone.AccessToken, map[string]any{}).expect(t, 200)
		if got := s.call(t, "GET", "/devices/"+laptop.DeviceID, phone.AccessToken, nil).Object(t); got["display_name"] != "laptop" {
			t.Fatalf("empty PUT changed the device: %v", got)
		}

		// Errors.
		s.call(t, "GET", "/devices/NOPE", phone.AccessToken, nil).expectError(t, 404, "M_NOT_FOUND")
		s.call(t, "GET", "/devices/"+bob.DeviceID, phone.AccessToken, nil).expectError(t, 404, "M_NOT_FOUND")
		s.call(t, "PUT", "/devices/NOPE", phone.AccessToken, map[string]string{"display_name": "x"}).expectError(t, 404, "M_NOT_FOUND")
		s.call(t, "PUT", "/devices/NOPE", phone.AccessToken, map[string]any{}).expectError(t, 404, "M_NOT_FOUND")
		s.call(t, "PUT", "/devices/"+bob.DeviceID, phone.AccessToken, map[string]string{"display_name": "x"}).expectError(t, 404, "M_NOT_FOUND")
		s.call(t, "PUT", "/devices/"+laptop.DeviceID, phone.AccessToken, map[string]string{"display_name": strings.Repeat("x", 101)}).expectError(t, 400, "M_TOO_LARGE")
		s.call(t, "PUT", "/devices/"+laptop.DeviceID, phone.AccessToken, "{").expectError(t, 400, "M_NOT_JSON")
		s.call(t, "PUT", "/devices/"+laptop.DeviceID, phone.AccessToken, map[string]any{"display_name": 5}).expectError(t, 400, "M_BAD_JSON")
		s.call(t, "GET", "/devices", "", nil).expectError(t, 401, "M_MISSING_TOKEN")
		s.call(t, "GET", "/devices/"+phone.DeviceID, "wft_forged", nil).expectError(t, 401, "M_UNKNOWN_TOKEN")
		// Device ids travel percent-encoded.
		s.call(t, "GET", "/devices/A%2FB", phone.AccessToken, nil).expectError(t, 404, "M_NOT_FOUND")

		// An empty list is a list.
		if body := string(s.call(t, "GET", "/devices", bob.Token, nil).expect(t, 200).Body); !strings.Contains(body, `"device_id":"`+bob.DeviceID+`"`) {
			t.Fatalf("bob's devices %s", body)
		}
	})
}

func TestDeleteDevice(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, s *testServer) {
		newPasswordUser(t, s, "alice", "wonderland")
		me := login(t, s, passwordLogin("alice", "wonderland", nil))
		old := login(t, s, passwordLogin("alice", "wonderland", map[string]any{"refresh_token": true}))
		path := "/devices/" + old.DeviceID

		// Without a body (older clients) the answer is the challenge.
		sess := uiaChallenge(t, s.call(t, "DELETE", path, me.AccessToken, nil))
		// A wrong password: 401 with M_FORBIDDEN, flows and the session.
		wrong := s.call(t, "DELETE", path, me.AccessToken, map[string]any{"auth": passwordAuthDict(sess, "alice", "nope")})
		wrong.expectError(t, 401, "M_FORBIDDEN")
		if body := wrong.Object(t); body["session"] != sess || body["flows"] == nil {
			t.Fatalf("wrong password body %v", body)
		}
		s.call(t, "GET", "/account/whoami", old.AccessToken, nil).expect(t, 200)
		// Someone else's password does not do.
		newPasswordUser(t, s, "mallory", "mallory")
		s.call(t, "DELETE", path, me.AccessToken, map[string]any{"auth": passwordAuthDict(sess, "mallory", "mallory")}).expectError(t, 401, "M_FORBIDDEN")

		s.call(t, "DELETE", path, me.AccessToken, map[string]any{"auth": passwordAuthDict(sess, "alice", "wonderland")}).expect(t, 200)
		s.call(t, "GET", "/account/whoami", old.AccessToken, nil).expectError(t, 401, "M_UNKNOWN_TOKEN")
		s.call(t, "POST", "/refresh", "", map[string]string{"refresh_token": old.RefreshToken}).expectError(t, 401, "M_UNKNOWN_TOKEN")
		s.call(t, "GET", path, me.AccessToken, nil).expectError(t, 404, "M_NOT_FOUND")
		// The session is spent.
		s.call(t, "DELETE", path, me.AccessToken, map[string]any{"auth": passwordAuthDict(sess, "alice", "wonderland")}).expectError(t, 401, "M_UNKNOWN")
		// The spec: deleting a device that is already gone succeeds.
		uiaRoundTrip(t, s, "DELETE", path, me.AccessToken, nil, "alice", "wonderland").expect(t, 200)

		s.call(t, "DELETE", path, me.AccessToken, "{").expectError(t, 400, "M_NOT_JSON")
		s.call(t, "DELETE", path, me.AccessToken, map[string]any{"auth": "x"}).expectError(t, 400, "M_BAD_JSON")
		s.call(t, "DELETE", path, "", nil).expectError(t, 401, "M_MISSING_TOKEN")
		g := s.newGuest(t, "5555")
		s.call(t, "DELETE", "/devices/"+g.DeviceID, g.Token, nil).expectError(t, 403, "M_GUEST_ACCESS_FORBIDDEN")
	})
}

func TestDeleteDevices(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, s *testServer) {
		newPasswordUser(t, s, "alice", "wonderland")
		me := login(t, s, passwordLogin("alice", "wonderland", nil))
		a := login(t, s, passwordLogin("alice", "wonderland", nil))
		b := login(t, s, passwordLogin("alice", "wonderland", nil))
		bob := s.newUser(t, "bob")

		s.call(t, "POST", "/delete_devices", me.AccessToken, map[string]any{}).expectError(t, 400, "M_MISSING_PARAM")
		s.call(t, "POST", "/delete_devices", me.AccessToken, map[string]any{"devices": "A"}).expectError(t, 400, "M_BAD_JSON")
		body := map[string]any{"devices": []string{a.DeviceID, b.DeviceID, bob.DeviceID, "NEVER"}}
		uiaRoundTrip(t, s, "POST", "/delete_devices", me.AccessToken, body, "alice", "wonderland").expect(t, 200)
		for _, tok := range []string{a.AccessToken, b.AccessToken} {
			s.call(t, "GET", "/account/whoami", tok, nil).expectError(t, 401, "M_UNKNOWN_TOKEN")
		}
		s.call(t, "GET", "/account/whoami", me.AccessToken, nil).expect(t, 200)
		// Only the caller's own devices: bob's is untouched.
		s.call(t, "GET", "/account/whoami", bob.Token, nil).expect(t, 200)
	})
}

// TestUIASessionBoundToRequestOverHTTP: a session started to delete one
// device cannot authorise a password change or another deletion.
func TestUIASessionBoundToRequestOverHTTP(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, s *testServer) {
		newPasswordUser(t, s, "alice", "wonderland")
		me := login(t, s, passwordLogin("alice", "wonderland", nil))
		a := login(t, s, passwordLogin("alice", "wonderland", nil))
		sess := uiaChallenge(t, s.call(t, "DELETE", "/devices/"+a.DeviceID, me.AccessToken, map[string]any{}))
		auth := passwordAuthDict(sess, "alice", "wonderland")

		s.call(t, "POST", "/account/password", me.AccessToken, map[string]any{"new_password": "hijacked", "auth": auth}).expectError(t, 403, "M_FORBIDDEN")
		s.call(t, "DELETE", "/devices/"+me.DeviceID, me.AccessToken, map[string]any{"auth": auth}).expectError(t, 403, "M_FORBIDDEN")
		s.call(t, "POST", "/delete_devices", me.AccessToken, map[string]any{"devices": []string{me.DeviceID}, "auth": auth}).expectError(t, 403, "M_FORBIDDEN")
		s.call(t, "POST", "/login", "", passwordLogin("alice", "wonderland", nil)).expect(t, 200)
		s.call(t, "GET", "/account/whoami", me.AccessToken, nil).expect(t, 200)
	})
}
