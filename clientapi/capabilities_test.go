package clientapi_test

import (
	"context"
	"reflect"
	"strconv"
	"testing"
)

func TestCapabilities(t *testing.T) {
	forEachEngine(t, func(t *testing.T, s *testServer) {
		alice := s.newUser(t, "alice")
		var body struct {
			Capabilities map[string]map[string]any `json:"capabilities"`
		}
		s.call(t, "GET", "/capabilities", alice.Token, nil).expect(t, 200).JSON(t, &body)
		caps := body.Capabilities
		for name, want := range map[string]bool{
			"m.change_password": true, "m.set_displayname": true, "m.set_avatar_url": true,
			"m.3pid_changes": false, "m.get_login_token": true, "m.profile_fields": true,
			"m.forget_forced_upon_leave": false,
		} {
			if got, ok := caps[name]["enabled"].(bool); !ok || got != want {
				t.Errorf("%s.enabled = %v, want %v", name, caps[name]["enabled"], want)
			}
		}
		// No allowed/disallowed lists: every profile field may be changed.
		if len(caps["m.profile_fields"]) != 1 {
			t.Errorf("m.profile_fields %v", caps["m.profile_fields"])
		}
		rv := caps["m.room_versions"]
		if rv["default"] != "12" {
			t.Errorf("default room version %v", rv["default"])
		}
		want := map[string]any{}
		for v := 1; v <= 12; v++ {
			want[strconv.Itoa(v)] = "stable"
		}
		if !reflect.DeepEqual(rv["available"], want) {
			t.Errorf("available room versions %v", rv["available"])
		}

		// A real client reads the same.
		c, err := alice.Client.Capabilities(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if c.RoomVersions == nil || c.RoomVersions.Default != "12" || !c.ChangePassword.IsEnabled() || c.ThreePIDChanges.IsEnabled() {
			t.Fatalf("mautrix capabilities %+v", c)
		}
	})
}

// TestCapabilitiesGuest checks that a guest is told what it may change: its
// display name only (spec: guest access), and so, for older clients, that
// it cannot set an avatar (spec: m.set_avatar_url).
func TestCapabilitiesGuest(t *testing.T) {
	forEachEngine(t, func(t *testing.T, s *testServer) {
		guest := s.newGuest(t, "guest1")
		var body struct {
			Capabilities map[string]map[string]any `json:"capabilities"`
		}
		s.call(t, "GET", "/capabilities", guest.Token, nil).expect(t, 200).JSON(t, &body)
		pf := body.Capabilities["m.profile_fields"]
		if pf["enabled"] != true || !reflect.DeepEqual(pf["allowed"], []any{"displayname"}) {
			t.Fatalf("guest m.profile_fields %v", pf)
		}
		if body.Capabilities["m.set_avatar_url"]["enabled"] != false || body.Capabilities["m.set_displayname"]["enabled"] != true {
			t.Fatalf("guest capabilities %v", body.Capabilities)
		}
	})
}

func TestCapabilitiesNeedToken(t *testing.T) {
	forEachEngine(t, func(t *testing.T, s *testServer) {
		s.call(t, "GET", "/capabilities", "", nil).expectError(t, 401, "M_MISSING_TOKEN")
		s.call(t, "GET", "/capabilities", "wrong", nil).expectError(t, 401, "M_UNKNOWN_TOKEN")
		s.call(t, "POST", "/capabilities", "", `{}`).expectError(t, 405, "M_UNRECOGNIZED")
	})
}
