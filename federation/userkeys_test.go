package federation

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"net/url"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/weft-chat/weft/e2ee"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// keyPair signs JSON as the spec's "Signing JSON".
type keyPair struct {
	pub  string
	priv ed25519.PrivateKey
}

func newKeyPair(t *testing.T) keyPair {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	return keyPair{pub: base64.RawStdEncoding.EncodeToString(pub), priv: priv}
}

func (k keyPair) sign(t *testing.T, userID, keyID string, obj any) json.RawMessage {
	t.Helper()
	signed, err := gomatrixserverlib.SignJSON(userID, gomatrixserverlib.KeyID(keyID), k.priv, jsonOf(obj))
	if err != nil {
		t.Fatal(err)
	}
	return signed
}

// TestFederationUserKeys serves a user's devices and keys to another
// server: device keys without display names, master and self-signing
// keys but not the user-signing key, and one-time keys then the fallback
// key on claims.
func TestFederationUserKeys(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		e := newFedEnv(t, db)
		if err := db.CreateAccount(ctx, sql.Account{Localpart: "alice"}); err != nil {
			t.Fatal(err)
		}
		if err := db.UpsertDevice(ctx, "alice", "PHONE", "Alice's phone"); err != nil {
			t.Fatal(err)
		}
		keys := e2ee.New(db, string(ours))
		caller := e2ee.Caller{UserID: fedAlice, Localpart: "alice", DeviceID: "PHONE"}
		dev := newKeyPair(t)
		deviceKeys := dev.sign(t, fedAlice, "ed25519:PHONE", map[string]any{
			"user_id": fedAlice, "device_id": "PHONE",
			"algorithms": []string{"m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"},
			"keys":       map[string]string{"ed25519:PHONE": dev.pub, "curve25519:PHONE": "curve"},
		})
		if _, err := keys.UploadKeys(ctx, caller, e2ee.Upload{DeviceKeys: deviceKeys,
			OneTimeKeys:  map[string]json.RawMessage{"signed_curve25519:AAAA": dev.sign(t, fedAlice, "ed25519:PHONE", map[string]any{"key": "otk1"})},
			FallbackKeys: map[string]json.RawMessage{"signed_curve25519:FFFF": dev.sign(t, fedAlice, "ed25519:PHONE", map[string]any{"key": "fb", "fallback": true})},
		}); err != nil {
			t.Fatal(err)
		}
		master, self, user := newKeyPair(t), newKeyPair(t), newKeyPair(t)
		csk := func(usage string, k keyPair) json.RawMessage {
			obj := map[string]any{"user_id": fedAlice, "usage": []string{usage}, "keys": map[string]string{"ed25519:" + k.pub: k.pub}}
			if usage == "master" {
				return jsonOf(obj)
			}
			return master.sign(t, fedAlice, "ed25519:"+master.pub, obj)
		}
		if err := keys.UploadCrossSigningKeys(ctx, caller, e2ee.CrossSigningUpload{MasterKey: csk("master", master),
			SelfSigningKey: csk("self_signing", self), UserSigningKey: csk("user_signing", user)}, func() error { return nil }); err != nil {
			t.Fatal(err)
		}
		// The stream_id is that of the updates sent about alice (see
		// TestDeviceListSender); none were in this test.
		stream, err := db.DeviceListStreamID(ctx, fedAlice)
		if err != nil {
			t.Fatalf("device list stream id %d %v", stream, err)
		}

		// /user/devices.
		code, out := e.call(fedRemote, "GET", "/_matrix/federation/v1/user/devices/"+url.PathEscape(fedAlice), nil)
		if code != 200 {
			t.Fatalf("user/devices: %d %s", code, out)
		}
		var devices struct {
			UserID   string `json:"user_id"`
			StreamID int64  `json:"stream_id"`
			Devices  []struct {
				DeviceID    string         `json:"device_id"`
				Keys        map[string]any `json:"keys"`
				DisplayName *string        `json:"device_display_name"`
			} `json:"devices"`
			MasterKey      map[string]any `json:"master_key"`
			SelfSigningKey map[string]any `json:"self_signing_key"`
		}
		raw, _ := json.Marshal(out)
		_ = json.Unmarshal(raw, &devices)
		if devices.UserID != fedAlice || devices.StreamID != stream || len(devices.Devices) != 1 ||
			devices.Devices[0].DeviceID != "PHONE" || devices.Devices[0].DisplayName != nil || devices.Devices[0].Keys["unsigned"] != nil ||
			devices.MasterKey == nil || devices.SelfSigningKey == nil || out["user_signing_key"] != nil {
			t.Fatalf("user/devices: %s", raw)
		}
		// The keys are the device's own, still verifiable.
		if err := gomatrixserverlib.VerifyJSON(fedAlice, "ed25519:PHONE", mustKey(t, dev.pub), jsonOf(devices.Devices[0].Keys)); err != nil {
			t.Errorf("served device keys do not verify: %v", err)
		}
		// A user without devices has an empty list; a user elsewhere is 400.
		code, out = e.call(fedRemote, "GET", "/_matrix/federation/v1/user/devices/"+url.PathEscape("@nobody:ours.example"), nil)
		if code != 200 || string(out["devices"]) != "[]" || string(out["stream_id"]) != "0" {
			t.Errorf("user/devices of nobody: %d %s", code, out)
		}
		e.expectError(fedRemote, "GET", "/_matrix/federation/v1/user/devices/"+url.PathEscape("@bob:remote.example"), nil, 400, "M_INVALID_PARAM")
		e.expectError(fedRemote, "GET", "/_matrix/federation/v1/user/devices/alice", nil, 400, "M_INVALID_PARAM")

		// /user/keys/query.
		code, out = e.call(fedRemote, "POST", "/_matrix/federation/v1/user/keys/query", map[string]any{"device_keys": map[string]any{fedAlice: []string{}}})
		if code != 200 {
			t.Fatalf("keys/query: %d %s", code, out)
		}
		var query struct {
			DeviceKeys      map[string]map[string]map[string]any `json:"device_keys"`
			MasterKeys      map[string]any                       `json:"master_keys"`
			SelfSigningKeys map[string]any                       `json:"self_signing_keys"`
		}
		raw, _ = json.Marshal(out)
		_ = json.Unmarshal(raw, &query)
		if query.DeviceKeys[fedAlice]["PHONE"] == nil || query.DeviceKeys[fedAlice]["PHONE"]["unsigned"] != nil ||
			query.MasterKeys[fedAlice] == nil || query.SelfSigningKeys[fedAlice] == nil || out["user_signing_keys"] != nil || out["failures"] != nil {
			t.Fatalf("keys/query: %s", raw)
		}
		code, out = e.call(fedRemote, "POST", "/_matrix/federation/v1/user/keys/query", map[string]any{"device_keys": map[string]any{fedAlice: []string{"OTHER"}}})
		raw, _ = json.Marshal(out)
		_ = json.Unmarshal(raw, &query)
		if code != 200 || len(query.DeviceKeys[fedAlice]) != 0 {
			t.Errorf("keys/query of an unknown device: %d %s", code, raw)
		}
		for _, body := range []any{
			map[string]any{"device_keys": map[string]any{"@bob:remote.example": []string{}}},
			map[string]any{"device_keys": map[string]any{"bob": []string{}}},
		} {
			e.expectError(fedRemote, "POST", "/_matrix/federation/v1/user/keys/query", body, 400, "M_INVALID_PARAM")
		}
		e.expectError(fedRemote, "POST", "/_matrix/federation/v1/user/keys/query", map[string]any{}, 400, "M_BAD_JSON")
		e.expectError(fedRemote, "POST", "/_matrix/federation/v1/user/keys/query", map[string]any{"device_keys": []string{}}, 400, "M_BAD_JSON")

		// /user/keys/claim: the one-time key, then the fallback key, twice.
		claim := func() map[string]any {
			t.Helper()
			code, out := e.call(fedRemote, "POST", "/_matrix/federation/v1/user/keys/claim",
				map[string]any{"one_time_keys": map[string]any{fedAlice: map[string]string{"PHONE": "signed_curve25519", "OTHER": "signed_curve25519"}}})
			if code != 200 {
				t.Fatalf("keys/claim: %d %s", code, out)
			}
			var got struct {
				OneTimeKeys map[string]map[string]map[string]any `json:"one_time_keys"`
			}
			raw, _ := json.Marshal(out)
			_ = json.Unmarshal(raw, &got)
			if len(got.OneTimeKeys[fedAlice]) != 1 {
				t.Fatalf("keys/claim: %s", raw)
			}
			return got.OneTimeKeys[fedAlice]["PHONE"]
		}
		if k := claim(); k["signed_curve25519:AAAA"] == nil {
			t.Errorf("first claim: %v, want the one-time key", k)
		}
		for range 2 {
			if k := claim(); k["signed_curve25519:FFFF"] == nil {
				t.Errorf("later claim: %v, want the fallback key", k)
			}
		}
		e.expectError(fedRemote, "POST", "/_matrix/federation/v1/user/keys/claim",
			map[string]any{"one_time_keys": map[string]any{"@bob:remote.example": map[string]string{"X": "signed_curve25519"}}}, 400, "M_INVALID_PARAM")
		e.expectError(fedRemote, "POST", "/_matrix/federation/v1/user/keys/claim", map[string]any{}, 400, "M_BAD_JSON")
		e.expectError(fedRemote, "POST", "/_matrix/federation/v1/user/keys/claim", nil, 400, "M_NOT_JSON")
	})
}

func mustKey(t *testing.T, b64 string) ed25519.PublicKey {
	t.Helper()
	b, err := base64.RawStdEncoding.DecodeString(b64)
	if err != nil {
		t.Fatal(err)
	}
	return ed25519.PublicKey(b)
}

// TestFederationOpenIDAndThirdParty covers openid/userinfo (tokens come
// from the client API; here straight from the table) and the honest
// refusal of exchange_third_party_invite.
func TestFederationOpenIDAndThirdParty(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		e := newFedEnv(t, db)
		for _, lp := range []string{"alice", "gone"} {
			if err := db.CreateAccount(ctx, sql.Account{Localpart: lp}); err != nil {
				t.Fatal(err)
			}
		}
		future := int64(1) << 50
		if err := db.AddOpenIDToken(ctx, "live", "alice", fedAlice, future); err != nil {
			t.Fatal(err)
		}
		if err := db.AddOpenIDToken(ctx, "expired", "alice", fedAlice, 1); err != nil {
			t.Fatal(err)
		}
		if err := db.AddOpenIDToken(ctx, "deactivated", "gone", "@gone:ours.example", future); err != nil {
			t.Fatal(err)
		}
		if err := db.Deactivate(ctx, "gone"); err != nil {
			t.Fatal(err)
		}
		// No origin: services call it unsigned.
		code, out := e.call("", "GET", "/_matrix/federation/v1/openid/userinfo?access_token=live", nil)
		if code != 200 || string(out["sub"]) != `"`+fedAlice+`"` {
			t.Errorf("userinfo: %d %s", code, out)
		}
		for _, tok := range []string{"expired", "deactivated", "nope"} {
			e.expectError("", "GET", "/_matrix/federation/v1/openid/userinfo?access_token="+tok, nil, 401, "M_UNKNOWN_TOKEN")
		}
		e.expectError("", "GET", "/_matrix/federation/v1/openid/userinfo", nil, 401, "M_MISSING_TOKEN")

		roomID, _ := e.createRoom("10", "shared")
		invite := func(room string) map[string]any {
			return map[string]any{"type": "m.room.member", "room_id": room, "sender": fedAlice, "state_key": fedBob,
				"content": map[string]any{"membership": "invite", "third_party_invite": map[string]any{"display_name": "b",
					"signed": map[string]any{"mxid": fedBob, "token": "abc", "signatures": map[string]any{}}}}}
		}
		path := "/_matrix/federation/v1/exchange_third_party_invite/"
		e.expectError(fedRemote, "PUT", path+esc(roomID), invite(roomID), 404, "M_UNRECOGNIZED")
		e.expectError(fedRemote, "PUT", path+esc("!nope:ours.example"), invite("!nope:ours.example"), 404, "M_NOT_FOUND")
		e.expectError(fedRemote, "PUT", path+esc(roomID), invite("!other:ours.example"), 400, "M_BAD_JSON")
		bad := invite(roomID)
		bad["content"] = map[string]any{"membership": "join"}
		e.expectError(fedRemote, "PUT", path+esc(roomID), bad, 400, "M_BAD_JSON")
		e.expectError(fedRemote, "PUT", path+"notaroom", invite("notaroom"), 400, "M_INVALID_PARAM")
		e.expectError(fedRemote, "PUT", path+esc(roomID), nil, 400, "M_NOT_JSON")
	})
}
