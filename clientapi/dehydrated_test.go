package clientapi_test

import (
	"context"
	"net/http"
	"slices"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/weft-chat/weft/homeserver/hstest"
	"github.com/weft-chat/weft/internal/testclient"
	"github.com/weft-chat/weft/sql/sqltest"
)

const dehydratedPath = "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device"

// dehydratedBody is a PUT body for a dehydrated device of userID, its
// keys signed by dev.
func dehydratedBody(t *testing.T, userID, deviceID string, dev signer) map[string]any {
	t.Helper()
	u := &testUser{UserID: userID, DeviceID: deviceID}
	return map[string]any{
		"device_id":                   deviceID,
		"device_data":                 map[string]any{"algorithm": "org.matrix.msc3814.v1.olm", "device_pickle": "secret-" + deviceID},
		"initial_device_display_name": "Dehydrated device",
		"device_keys":                 deviceKeys(t, u, dev),
		"one_time_keys":               map[string]any{"signed_curve25519:AAAA": otk(t, u, dev, "otk-"+deviceID, false)},
		"fallback_keys":               map[string]any{"signed_curve25519:FFFF": otk(t, u, dev, "fb-"+deviceID, true)},
	}
}

// TestDehydratedDevice: MSC3814 round trip. A dehydrated device is
// stored with its keys, shows up to others as a device of the user,
// receives to-device messages, hands them out in pages through its events
// endpoint (deleting what a later call acknowledges), and is replaced or
// deleted as a whole.
func TestDehydratedDevice(t *testing.T) {
	t.Parallel()
	for _, e := range sqltest.Engines() {
		t.Run(string(e), func(t *testing.T) {
			ctx := context.Background()
			srv := hstest.StartEngine(t, e)
			c := hsClient{t: t, url: srv.ClientURL}
			alice := testclient.Register(t, srv.ClientURL, "alice")
			bob := testclient.Register(t, srv.ClientURL, "bob")
			tok := alice.AccessToken
			uid := alice.UserID.String()

			var versions struct {
				Unstable map[string]bool `json:"unstable_features"`
			}
			c.do("GET", "/_matrix/client/versions", "", nil).JSON(t, &versions)
			if !versions.Unstable["org.matrix.msc3814"] {
				t.Errorf("/versions does not advertise org.matrix.msc3814: %v", versions.Unstable)
			}
			c.do("GET", dehydratedPath, tok, nil).expectError(t, 404, "M_NOT_FOUND")
			c.do("DELETE", dehydratedPath, tok, nil).expectError(t, 404, "M_NOT_FOUND")
			c.do("GET", dehydratedPath, "", nil).expectError(t, 401, "M_MISSING_TOKEN")

			// Bad requests store nothing.
			dev := newSigner(t)
			bad := func(edit func(map[string]any)) map[string]any {
				b := dehydratedBody(t, uid, "DEHY1", dev)
				edit(b)
				return b
			}
			for _, c2 := range []struct {
				name   string
				body   any
				status int
				code   string
			}{
				{"not JSON", "{", 400, "M_NOT_JSON"},
				{"no device_id", bad(func(b map[string]any) { delete(b, "device_id") }), 400, "M_MISSING_PARAM"},
				{"device_id not a string", bad(func(b map[string]any) { b["device_id"] = 7 }), 400, "M_BAD_JSON"},
				{"device_data not an object", bad(func(b map[string]any) { b["device_data"] = "x" }), 400, "M_BAD_JSON"},
				{"device_data without algorithm", bad(func(b map[string]any) { b["device_data"] = map[string]any{} }), 400, "M_BAD_JSON"},
				{"no device_keys", bad(func(b map[string]any) { delete(b, "device_keys") }), 400, "M_MISSING_PARAM"},
				{"keys of another device", bad(func(b map[string]any) {
					b["device_keys"] = deviceKeys(t, &testUser{UserID: uid, DeviceID: "OTHER"}, dev)
				}), 400, "M_INVALID_PARAM"},
				{"keys badly signed", bad(func(b map[string]any) {
					b["device_keys"] = deviceKeys(t, &testUser{UserID: uid, DeviceID: "DEHY1"}, dev)
					b["device_keys"].(map[string]any)["algorithms"] = []string{"changed"}
				}), 400, "M_INVALID_PARAM"},
				{"the id of a signed-in device", dehydratedBody(t, uid, alice.DeviceID.String(), dev), 400, "M_INVALID_PARAM"},
			} {
				r := c.do("PUT", dehydratedPath, tok, c2.body)
				if r.Status != c2.status || errcodeOf(t, r) != c2.code {
					t.Errorf("%s: %d %s, want %d %s", c2.name, r.Status, r.Body, c2.status, c2.code)
				}
			}
			c.do("GET", dehydratedPath, tok, nil).expectError(t, 404, "M_NOT_FOUND")

			put := func(deviceID string, dev signer) {
				t.Helper()
				var got struct {
					DeviceID string `json:"device_id"`
				}
				r := c.do("PUT", dehydratedPath, tok, dehydratedBody(t, uid, deviceID, dev))
				if r.Status != 200 {
					t.Fatalf("PUT %s: %d %s", deviceID, r.Status, r.Body)
				}
				r.JSON(t, &got)
				if got.DeviceID != deviceID {
					t.Fatalf("PUT answered %s", r.Body)
				}
			}
			put("DEHY1", dev)
			var got struct {
				DeviceID   string         `json:"device_id"`
				DeviceData map[string]any `json:"device_data"`
			}
			c.do("GET", dehydratedPath, tok, nil).JSON(t, &got)
			if got.DeviceID != "DEHY1" || got.DeviceData["device_pickle"] != "secret-DEHY1" {
				t.Errorf("GET = %+v", got)
			}

			// Others see the device and its keys, and can claim its keys.
			qk, err := bob.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{alice.UserID: {}}})
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := qk.DeviceKeys[alice.UserID]["DEHY1"]; !ok {
				t.Errorf("/keys/query does not list the dehydrated device: %v", qk.DeviceKeys[alice.UserID])
			}
			claimed, err := bob.ClaimKeys(ctx, &mautrix.ReqClaimKeys{OneTimeKeys: mautrix.OneTimeKeysRequest{alice.UserID: {"DEHY1": id.KeyAlgorithmSignedCurve25519}}})
			if err != nil || len(claimed.OneTimeKeys[alice.UserID]["DEHY1"]) != 1 {
				t.Errorf("claim the dehydrated device's key: %v %v", claimed, err)
			}

			// Messages to "*" reach it; its events endpoint pages them.
			send := func(n int) {
				t.Helper()
				for i := range n {
					if _, err := bob.SendToDevice(ctx, event.Type{Type: "m.room_key", Class: event.ToDeviceEventType}, &mautrix.ReqSendToDevice{
						Messages: map[id.UserID]map[id.DeviceID]*event.Content{alice.UserID: {"*": {Raw: map[string]any{"i": i}}}}}); err != nil {
						t.Fatal(err)
					}
				}
			}
			send(150)
			type page struct {
				Events []struct {
					Type    string         `json:"type"`
					Sender  string         `json:"sender"`
					Content map[string]any `json:"content"`
				} `json:"events"`
				NextBatch string `json:"next_batch"`
			}
			events := func(deviceID string, body map[string]any) page {
				t.Helper()
				r := c.do("POST", dehydratedPath+"/"+deviceID+"/events", tok, body)
				if r.Status != 200 {
					t.Fatalf("events: %d %s", r.Status, r.Body)
				}
				var p page
				r.JSON(t, &p)
				return p
			}
			var seen []float64
			p1 := events("DEHY1", map[string]any{})
			p1again := events("DEHY1", map[string]any{}) // not acknowledged yet: the same page
			if len(p1.Events) != 100 || len(p1again.Events) != 100 || p1.NextBatch != p1again.NextBatch {
				t.Fatalf("first page: %d events (again %d), next %s / %s", len(p1.Events), len(p1again.Events), p1.NextBatch, p1again.NextBatch)
			}
			p2 := events("DEHY1", map[string]any{"next_batch": p1.NextBatch})
			p3 := events("DEHY1", map[string]any{"next_batch": p2.NextBatch})
			for _, p := range []page{p1, p2, p3} {
				for _, ev := range p.Events {
					if ev.Type != "m.room_key" || ev.Sender != bob.UserID.String() {
						t.Fatalf("event %+v", ev)
					}
					seen = append(seen, ev.Content["i"].(float64))
				}
			}
			if len(seen) != 150 || len(p3.Events) != 0 || !slices.IsSorted(seen) {
				t.Errorf("pages gave %d events %v, last page %d", len(seen), seen, len(p3.Events))
			}
			// Acknowledged pages are gone.
			if p := events("DEHY1", map[string]any{}); len(p.Events) != 0 {
				t.Errorf("acknowledged messages served again: %d", len(p.Events))
			}
			c.do("POST", dehydratedPath+"/OTHER/events", tok, map[string]any{}).expectError(t, 403, "M_FORBIDDEN")
			c.do("POST", dehydratedPath+"/DEHY1/events", tok, map[string]any{"next_batch": "s1_2"}).expectError(t, 400, "M_INVALID_PARAM")
			c.do("POST", dehydratedPath+"/DEHY1/events", bob.AccessToken, map[string]any{}).expectError(t, 403, "M_FORBIDDEN")

			// A new dehydrated device replaces the old one, which goes with
			// its keys and its waiting messages.
			send(1)
			put("DEHY2", newSigner(t))
			c.do("GET", dehydratedPath, tok, nil).JSON(t, &got)
			if got.DeviceID != "DEHY2" {
				t.Errorf("after replacing: %+v", got)
			}
			qk, err = bob.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{alice.UserID: {}}})
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := qk.DeviceKeys[alice.UserID]["DEHY1"]; ok {
				t.Error("the replaced dehydrated device's keys are still served")
			}
			if _, ok := qk.DeviceKeys[alice.UserID]["DEHY2"]; !ok {
				t.Error("the new dehydrated device's keys are not served")
			}
			devices, err := alice.GetDevicesInfo(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range devices.Devices {
				if d.DeviceID == "DEHY1" {
					t.Error("the replaced dehydrated device is still a device")
				}
			}
			c.do("POST", dehydratedPath+"/DEHY1/events", tok, map[string]any{}).expectError(t, 403, "M_FORBIDDEN")
			if p := events("DEHY2", map[string]any{}); len(p.Events) != 0 {
				t.Errorf("the new device got %d messages sent before it existed", len(p.Events))
			}

			var deleted struct {
				DeviceID string `json:"device_id"`
			}
			r := c.do("DELETE", dehydratedPath, tok, nil)
			r.JSON(t, &deleted)
			if r.Status != 200 || deleted.DeviceID != "DEHY2" {
				t.Errorf("DELETE: %d %s", r.Status, r.Body)
			}
			c.do("GET", dehydratedPath, tok, nil).expectError(t, 404, "M_NOT_FOUND")
			if r := c.do("GET", "/devices/DEHY2", tok, nil); r.Status != http.StatusNotFound {
				t.Errorf("the deleted dehydrated device is still a device: %d", r.Status)
			}
		})
	}
}

func errcodeOf(t *testing.T, r response) string {
	t.Helper()
	var e struct {
		Errcode string `json:"errcode"`
	}
	r.JSON(t, &e)
	return e.Errcode
}
