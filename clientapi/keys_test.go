package clientapi_test

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
)

// signer is an ed25519 key pair that signs JSON as the spec's "Signing JSON".
type signer struct {
	pub  string
	priv ed25519.PrivateKey
}

func newSigner(t testing.TB) signer {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	return signer{pub: base64.RawStdEncoding.EncodeToString(pub), priv: priv}
}

// sign returns obj signed by userID's key keyID.
func (s signer) sign(t testing.TB, userID, keyID string, obj any) map[string]any {
	t.Helper()
	raw, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	signed, err := gomatrixserverlib.SignJSON(userID, gomatrixserverlib.KeyID(keyID), s.priv, raw)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(signed, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// deviceKeys is the user's device's self-signed device_keys.
func deviceKeys(t testing.TB, u *testUser, dev signer) map[string]any {
	return dev.sign(t, u.UserID, "ed25519:"+u.DeviceID, map[string]any{
		"user_id": u.UserID, "device_id": u.DeviceID,
		"algorithms": []string{"m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"},
		"keys":       map[string]string{"ed25519:" + u.DeviceID: dev.pub, "curve25519:" + u.DeviceID: "curvekey" + u.DeviceID},
	})
}

func otk(t testing.TB, u *testUser, dev signer, key string, fallback bool) map[string]any {
	obj := map[string]any{"key": key}
	if fallback {
		obj["fallback"] = true
	}
	return dev.sign(t, u.UserID, "ed25519:"+u.DeviceID, obj)
}

func TestKeysUploadQueryClaim(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, s *testServer) {
		alice, bob := s.newUser(t, "alice"), s.newUser(t, "bob")
		dev := newSigner(t)
		dk := deviceKeys(t, alice, dev)

		// Every malformed device_keys is 400 M_INVALID_PARAM.
		bad := map[string]map[string]any{
			"user id mismatch":   dev.sign(t, alice.UserID, "ed25519:"+alice.DeviceID, map[string]any{"user_id": bob.UserID, "device_id": alice.DeviceID, "algorithms": []string{"a"}, "keys": dk["keys"]}),
			"device mismatch":    dev.sign(t, alice.UserID, "ed25519:"+alice.DeviceID, map[string]any{"user_id": alice.UserID, "device_id": "OTHER", "algorithms": []string{"a"}, "keys": dk["keys"]}),
			"no algorithms":      dev.sign(t, alice.UserID, "ed25519:"+alice.DeviceID, map[string]any{"user_id": alice.UserID, "device_id": alice.DeviceID, "keys": dk["keys"]}),
			"no curve25519 key":  dev.sign(t, alice.UserID, "ed25519:"+alice.DeviceID, map[string]any{"user_id": alice.UserID, "device_id": alice.DeviceID, "algorithms": []string{"a"}, "keys": map[string]string{"ed25519:" + alice.DeviceID: dev.pub}}),
			"bad self-signature": newSigner(t).sign(t, alice.UserID, "ed25519:"+alice.DeviceID, map[string]any{"user_id": alice.UserID, "device_id": alice.DeviceID, "algorithms": []string{"a"}, "keys": dk["keys"]}),
			"unsigned":           {"user_id": alice.UserID, "device_id": alice.DeviceID, "algorithms": []string{"a"}, "keys": dk["keys"]},
		}
		for name, k := range bad {
			r := s.call(t, "POST", "/keys/upload", alice.Token, map[string]any{"device_keys": k})
			if r.Status != 400 {
				t.Fatalf("%s: %d %s", name, r.Status, r.Body)
			}
			r.expectError(t, 400, "M_INVALID_PARAM")
		}
		s.call(t, "POST", "/keys/upload", alice.Token, `{"device_keys": 7}`).expectError(t, 400, "M_INVALID_PARAM")
		s.call(t, "POST", "/keys/upload", alice.Token, map[string]any{"one_time_keys": map[string]any{"nocolon": "x"}}).expectError(t, 400, "M_INVALID_PARAM")

		var counts struct {
			Counts map[string]int `json:"one_time_key_counts"`
		}
		s.call(t, "POST", "/keys/upload", alice.Token, map[string]any{
			"device_keys": dk,
			"one_time_keys": map[string]any{
				"signed_curve25519:A1": otk(t, alice, dev, "k1", false),
				"signed_curve25519:A2": otk(t, alice, dev, "k2", false),
			},
			"fallback_keys": map[string]any{"signed_curve25519:F1": otk(t, alice, dev, "f1", true)},
		}).expect(t, 200).JSON(t, &counts)
		if counts.Counts["signed_curve25519"] != 2 {
			t.Fatalf("counts %v", counts.Counts)
		}
		// The same keys again are fine; other device keys, or another value
		// under a known one-time key id, are not.
		s.call(t, "POST", "/keys/upload", alice.Token, map[string]any{"device_keys": dk,
			"one_time_keys": map[string]any{"signed_curve25519:A1": otk(t, alice, dev, "k1", false)}}).expect(t, 200)
		s.call(t, "POST", "/keys/upload", alice.Token, map[string]any{"device_keys": deviceKeys(t, alice, newSigner(t))}).expectError(t, 400, "M_INVALID_PARAM")
		s.call(t, "POST", "/keys/upload", alice.Token, map[string]any{
			"one_time_keys": map[string]any{"signed_curve25519:A1": otk(t, alice, dev, "other", false)}}).expectError(t, 400, "M_INVALID_PARAM")

		// Query: all devices (empty list), with the display name unsigned;
		// unknown users are absent, remote ones in failures.
		var q struct {
			DeviceKeys map[string]map[string]map[string]any `json:"device_keys"`
			Failures   map[string]any                       `json:"failures"`
		}
		s.call(t, "POST", "/keys/query", bob.Token, map[string]any{"device_keys": map[string][]string{
			alice.UserID: {}, "@nobody:test.local": {}, "@carol:elsewhere.example": {}, "not-a-user": {},
		}}).expect(t, 200).JSON(t, &q)
		got := q.DeviceKeys[alice.UserID][alice.DeviceID]
		if got == nil || got["keys"].(map[string]any)["ed25519:"+alice.DeviceID] != dev.pub {
			t.Fatalf("query %v", q.DeviceKeys)
		}
		if len(q.DeviceKeys["@nobody:test.local"]) != 0 || q.Failures["elsewhere.example"] == nil {
			t.Fatalf("query %+v", q)
		}
		q.DeviceKeys = nil
		s.call(t, "POST", "/keys/query", bob.Token, map[string]any{"device_keys": map[string][]string{alice.UserID: {"NOPE"}}}).expect(t, 200).JSON(t, &q)
		if len(q.DeviceKeys[alice.UserID]) != 0 {
			t.Fatalf("query unknown device %v", q.DeviceKeys)
		}

		// Claims: two one-time keys, then the fallback key, which stays.
		claim := func() map[string]any {
			var c struct {
				Keys map[string]map[string]map[string]any `json:"one_time_keys"`
			}
			s.call(t, "POST", "/keys/claim", bob.Token, map[string]any{"one_time_keys": map[string]any{
				alice.UserID:         map[string]string{alice.DeviceID: "signed_curve25519", "NOPE": "signed_curve25519"},
				"@nobody:test.local": map[string]string{"X": "signed_curve25519"},
			}}).expect(t, 200).JSON(t, &c)
			if len(c.Keys) > 1 || len(c.Keys[alice.UserID]) > 1 {
				t.Fatalf("claimed for unknown users or devices: %v", c.Keys)
			}
			return c.Keys[alice.UserID][alice.DeviceID]
		}
		first, second, third, fourth := claim(), claim(), claim(), claim()
		// Keys uploaded together go in no particular order.
		claimed := slices.Sorted(maps.Keys(first))
		claimed = append(claimed, slices.Sorted(maps.Keys(second))...)
		if slices.Sort(claimed); !slices.Equal(claimed, []string{"signed_curve25519:A1", "signed_curve25519:A2"}) {
			t.Fatalf("claims %v %v: want A1 and A2", first, second)
		}
		if third["signed_curve25519:F1"] == nil || fourth["signed_curve25519:F1"] == nil {
			t.Fatalf("fallback claims %v %v", third, fourth)
		}
		counts.Counts = nil // decoding merges into a map
		s.call(t, "POST", "/keys/upload", alice.Token, map[string]any{}).expect(t, 200).JSON(t, &counts)
		if counts.Counts["signed_curve25519"] != 0 {
			t.Fatalf("counts after claims %v", counts.Counts)
		}
		// A new fallback key replaces the old one.
		s.call(t, "POST", "/keys/upload", alice.Token, map[string]any{
			"fallback_keys": map[string]any{"signed_curve25519:F2": otk(t, alice, dev, "f2", true)}}).expect(t, 200)
		if k := claim(); k["signed_curve25519:F2"] == nil {
			t.Fatalf("claim after new fallback %v", k)
		}

		// Deleting the device deletes its keys.
		if err := s.Users.DeleteDevices(t.Context(), alice.Localpart, []string{alice.DeviceID}); err != nil {
			t.Fatal(err)
		}
		q.DeviceKeys = nil
		s.call(t, "POST", "/keys/query", bob.Token, map[string]any{"device_keys": map[string][]string{alice.UserID: {}}}).expect(t, 200).JSON(t, &q)
		if len(q.DeviceKeys[alice.UserID]) != 0 {
			t.Fatalf("keys of a deleted device %v", q.DeviceKeys)
		}
		if k := claim(); k != nil {
			t.Fatalf("claimed a deleted device's key %v", k)
		}
	})
}

// Two claims never get the same one-time key.
func TestKeysClaimRace(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, s *testServer) {
		alice, bob := s.newUser(t, "alice"), s.newUser(t, "bob")
		dev := newSigner(t)
		const n = 12
		keys := map[string]any{}
		for i := range n {
			keys[fmt.Sprintf("signed_curve25519:K%02d", i)] = otk(t, alice, dev, fmt.Sprint(i), false)
		}
		s.call(t, "POST", "/keys/upload", alice.Token, map[string]any{"device_keys": deviceKeys(t, alice, dev), "one_time_keys": keys}).expect(t, 200)
		var mu sync.Mutex
		seen := map[string]int{}
		var wg sync.WaitGroup
		for range n + 4 {
			wg.Go(func() {
				var c struct {
					Keys map[string]map[string]map[string]any `json:"one_time_keys"`
				}
				s.call(t, "POST", "/keys/claim", bob.Token, map[string]any{"one_time_keys": map[string]any{
					alice.UserID: map[string]string{alice.DeviceID: "signed_curve25519"}}}).expect(t, 200).JSON(t, &c)
				mu.Lock()
				defer mu.Unlock()
				for id := range c.Keys[alice.UserID][alice.DeviceID] {
					seen[id]++
				}
			})
		}
		wg.Wait()
		if len(seen) != n {
			t.Fatalf("claimed %d distinct keys, want %d: %v", len(seen), n, seen)
		}
		for id, c := range seen {
			if c != 1 {
				t.Fatalf("key %s claimed %d times", id, c)
			}
		}
	})
}
