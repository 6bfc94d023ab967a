package clientapi_test

import (
	"testing"
)

func backupKey(fmi, fwd int, verified bool, data string) map[string]any {
	return map[string]any{"first_message_index": fmi, "forwarded_count": fwd, "is_verified": verified, "session_data": map[string]string{"ciphertext": data}}
}

func TestKeyBackupRoundTrip(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, s *testServer) {
		alice := s.newUser(t, "alice")
		tok := alice.Token
		s.call(t, "GET", "/room_keys/version", tok, nil).expectError(t, 404, "M_NOT_FOUND")
		s.call(t, "GET", "/room_keys/version/1", tok, nil).expectError(t, 404, "M_NOT_FOUND")
		s.call(t, "GET", "/room_keys/version/junk", tok, nil).expectError(t, 404, "M_NOT_FOUND")
		s.call(t, "POST", "/room_keys/version", tok, map[string]any{"auth_data": map[string]any{}}).expectError(t, 400, "M_MISSING_PARAM")

		alg := "m.megolm_backup.v1.curve25519-aes-sha2"
		var v struct {
			Version string `json:"version"`
		}
		s.call(t, "POST", "/room_keys/version", tok, map[string]any{"algorithm": alg, "auth_data": map[string]any{"public_key": "abc"}}).expect(t, 200).JSON(t, &v)
		type info struct {
			Algorithm string         `json:"algorithm"`
			AuthData  map[string]any `json:"auth_data"`
			Count     int            `json:"count"`
			ETag      string         `json:"etag"`
			Version   string         `json:"version"`
		}
		var cur info
		s.call(t, "GET", "/room_keys/version", tok, nil).expect(t, 200).JSON(t, &cur)
		if cur.Version != v.Version || cur.Algorithm != alg || cur.Count != 0 || cur.AuthData["public_key"] != "abc" {
			t.Fatalf("version %+v", cur)
		}
		etag0 := cur.ETag

		type counts struct {
			ETag  string `json:"etag"`
			Count int    `json:"count"`
		}
		var c counts
		path := "/room_keys/keys/!room:test.local/sess1?version=" + v.Version
		s.call(t, "PUT", path, tok, backupKey(5, 1, false, "a")).expect(t, 200).JSON(t, &c)
		if c.Count != 1 || c.ETag == etag0 {
			t.Fatalf("after first put %+v (etag before %s)", c, etag0)
		}
		get := func() map[string]any {
			return s.call(t, "GET", path, tok, nil).expect(t, 200).Object(t)
		}
		// The spec's rules: a worse key is ignored and the etag stays.
		etag1 := c.ETag
		s.call(t, "PUT", path, tok, backupKey(6, 0, false, "worse")).expect(t, 200).JSON(t, &c)
		if c.ETag != etag1 || get()["session_data"].(map[string]any)["ciphertext"] != "a" {
			t.Fatalf("a higher first_message_index replaced the key: %+v %v", c, get())
		}
		s.call(t, "PUT", path, tok, backupKey(5, 0, false, "fewer forwards")).expect(t, 200).JSON(t, &c)
		if c.ETag == etag1 || get()["session_data"].(map[string]any)["ciphertext"] != "fewer forwards" {
			t.Fatalf("a lower forwarded_count did not replace the key: %v", get())
		}
		s.call(t, "PUT", path, tok, backupKey(1, 0, false, "lower index")).expect(t, 200)
		if get()["session_data"].(map[string]any)["ciphertext"] != "lower index" {
			t.Fatalf("a lower first_message_index did not replace the key: %v", get())
		}
		s.call(t, "PUT", path, tok, backupKey(9, 3, true, "verified")).expect(t, 200)
		s.call(t, "PUT", path, tok, backupKey(0, 0, false, "unverified")).expect(t, 200)
		if got := get(); got["session_data"].(map[string]any)["ciphertext"] != "verified" || got["is_verified"] != true {
			t.Fatalf("verification did not win: %v", got)
		}

		// Whole-backup and per-room shapes.
		s.call(t, "PUT", "/room_keys/keys?version="+v.Version, tok, map[string]any{"rooms": map[string]any{
			"!other:test.local": map[string]any{"sessions": map[string]any{"s2": backupKey(0, 0, true, "b"), "s3": backupKey(0, 0, true, "c")}},
		}}).expect(t, 200).JSON(t, &c)
		if c.Count != 3 {
			t.Fatalf("count %+v", c)
		}
		all := s.call(t, "GET", "/room_keys/keys?version="+v.Version, tok, nil).expect(t, 200).Object(t)
		if rooms := all["rooms"].(map[string]any); len(rooms) != 2 {
			t.Fatalf("all keys %v", all)
		}
		room := s.call(t, "GET", "/room_keys/keys/!other:test.local?version="+v.Version, tok, nil).expect(t, 200).Object(t)
		if len(room["sessions"].(map[string]any)) != 2 {
			t.Fatalf("room keys %v", room)
		}
		empty := s.call(t, "GET", "/room_keys/keys/!none:test.local?version="+v.Version, tok, nil).expect(t, 200).Object(t)
		if len(empty["sessions"].(map[string]any)) != 0 {
			t.Fatalf("empty room %v", empty)
		}
		s.call(t, "GET", "/room_keys/keys/!none:test.local/nope?version="+v.Version, tok, nil).expectError(t, 404, "M_NOT_FOUND")
		s.call(t, "DELETE", "/room_keys/keys/!other:test.local/s2?version="+v.Version, tok, nil).expect(t, 200).JSON(t, &c)
		if c.Count != 2 {
			t.Fatalf("after delete %+v", c)
		}

		// Auth data updates: the algorithm and version must match.
		s.call(t, "PUT", "/room_keys/version/"+v.Version, tok, map[string]any{"algorithm": alg, "auth_data": map[string]any{"public_key": "def"}, "version": "99"}).expectError(t, 400, "M_INVALID_PARAM")
		s.call(t, "PUT", "/room_keys/version/"+v.Version, tok, map[string]any{"algorithm": "other", "auth_data": map[string]any{}}).expectError(t, 400, "M_INVALID_PARAM")
		s.call(t, "PUT", "/room_keys/version/"+v.Version, tok, map[string]any{"algorithm": alg, "auth_data": map[string]any{"public_key": "def"}}).expect(t, 200)

		// A new version becomes current; writes to the old one are refused.
		old := v.Version
		s.call(t, "POST", "/room_keys/version", tok, map[string]any{"algorithm": alg, "auth_data": map[string]any{"public_key": "ghi"}}).expect(t, 200).JSON(t, &v)
		if v.Version == old {
			t.Fatal("version reused")
		}
		r := s.call(t, "PUT", path, tok, backupKey(0, 0, true, "x"))
		r.expectError(t, 403, "M_WRONG_ROOM_KEYS_VERSION")
		if r.Object(t)["current_version"] != v.Version {
			t.Fatalf("wrong version answer %s", r.Body)
		}
		s.call(t, "PUT", "/room_keys/keys/!r:test.local/s?version=", tok, backupKey(0, 0, true, "x")).expectError(t, 400, "M_MISSING_PARAM")
		var oldInfo info
		s.call(t, "GET", "/room_keys/version/"+old, tok, nil).expect(t, 200).JSON(t, &oldInfo)
		if oldInfo.Count != 2 || oldInfo.AuthData["public_key"] != "def" {
			t.Fatalf("old version %+v", oldInfo)
		}
		s.call(t, "DELETE", "/room_keys/version/"+old, tok, nil).expect(t, 200)
		s.call(t, "DELETE", "/room_keys/version/"+old, tok, nil).expectError(t, 404, "M_NOT_FOUND")
		s.call(t, "GET", "/room_keys/keys?version="+old, tok, nil).expectError(t, 404, "M_NOT_FOUND")
		// Others' backups are invisible.
		bob := s.newUser(t, "bob")
		s.call(t, "GET", "/room_keys/version/"+v.Version, bob.Token, nil).expectError(t, 404, "M_NOT_FOUND")
	})
}
