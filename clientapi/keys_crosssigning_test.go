package clientapi_test

import (
	"testing"
)

// crossSigningKey is a CrossSigningKey object of usage for u, signed by
// master unless master is nil.
func crossSigningKey(t testing.TB, userID, usage string, k signer, master *signer) map[string]any {
	obj := map[string]any{"user_id": userID, "usage": []string{usage}, "keys": map[string]string{"ed25519:" + k.pub: k.pub}}
	if master == nil {
		return obj
	}
	return master.sign(t, userID, "ed25519:"+master.pub, obj)
}

func TestCrossSigningAndSignatures(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, s *testServer) {
		newPasswordUser(t, s, "alice", "wonderland")
		l := login(t, s, passwordLogin("alice", "wonderland", nil))
		alice := &testUser{UserID: "@alice:" + testServerName, Localpart: "alice", DeviceID: l.DeviceID, Token: l.AccessToken}
		bob := s.newUser(t, "bob")
		dev := newSigner(t)
		s.call(t, "POST", "/keys/upload", alice.Token, map[string]any{"device_keys": deviceKeys(t, alice, dev)}).expect(t, 200)

		master, self, user := newSigner(t), newSigner(t), newSigner(t)
		up := map[string]any{
			"master_key":       crossSigningKey(t, alice.UserID, "master", master, nil),
			"self_signing_key": crossSigningKey(t, alice.UserID, "self_signing", self, &master),
			"user_signing_key": crossSigningKey(t, alice.UserID, "user_signing", user, &master),
		}
		// Bad keys: not signed by the master key, wrong usage, wrong user.
		s.call(t, "POST", "/keys/device_signing/upload", alice.Token, map[string]any{
			"master_key":       up["master_key"],
			"self_signing_key": crossSigningKey(t, alice.UserID, "self_signing", self, &user),
		}).expectError(t, 400, "M_INVALID_SIGNATURE")
		s.call(t, "POST", "/keys/device_signing/upload", alice.Token, map[string]any{
			"master_key": crossSigningKey(t, alice.UserID, "self_signing", master, nil),
		}).expectError(t, 400, "M_INVALID_PARAM")
		s.call(t, "POST", "/keys/device_signing/upload", alice.Token, map[string]any{
			"master_key": crossSigningKey(t, bob.UserID, "master", master, nil),
		}).expectError(t, 400, "M_INVALID_PARAM")
		s.call(t, "POST", "/keys/device_signing/upload", alice.Token, map[string]any{
			"self_signing_key": up["self_signing_key"],
		}).expectError(t, 400, "M_MISSING_PARAM")

		// The first upload needs no auth; a repeat neither.
		s.call(t, "POST", "/keys/device_signing/upload", alice.Token, up).expect(t, 200)
		s.call(t, "POST", "/keys/device_signing/upload", alice.Token, up).expect(t, 200)

		// The self-signing key signs the device; bob's upload of a signature
		// by alice's key is refused, as is a bad signature.
		signedDev := self.sign(t, alice.UserID, "ed25519:"+self.pub, deviceKeys(t, alice, dev))
		forged := newSigner(t).sign(t, alice.UserID, "ed25519:"+self.pub, deviceKeys(t, alice, dev))
		var res struct {
			Failures map[string]map[string]map[string]any `json:"failures"`
		}
		s.call(t, "POST", "/keys/signatures/upload", alice.Token, map[string]any{alice.UserID: map[string]any{alice.DeviceID: forged}}).expect(t, 200).JSON(t, &res)
		if res.Failures[alice.UserID][alice.DeviceID]["errcode"] != "M_INVALID_SIGNATURE" {
			t.Fatalf("forged signature: %v", res.Failures)
		}
		res.Failures = nil
		s.call(t, "POST", "/keys/signatures/upload", alice.Token, map[string]any{alice.UserID: map[string]any{
			alice.DeviceID: signedDev, "NOPE": signedDev,
		}}).expect(t, 200).JSON(t, &res)
		if len(res.Failures[alice.UserID]) != 1 || res.Failures[alice.UserID]["NOPE"] == nil {
			t.Fatalf("failures %v", res.Failures)
		}

		// Bob signs alice's master key with his user-signing key.
		bm, bu := newSigner(t), newSigner(t)
		s.call(t, "POST", "/keys/device_signing/upload", bob.Token, map[string]any{
			"master_key":       crossSigningKey(t, bob.UserID, "master", bm, nil),
			"user_signing_key": crossSigningKey(t, bob.UserID, "user_signing", bu, &bm),
		}).expect(t, 200)
		res.Failures = nil
		s.call(t, "POST", "/keys/signatures/upload", bob.Token, map[string]any{alice.UserID: map[string]any{
			master.pub: bu.sign(t, bob.UserID, "ed25519:"+bu.pub, up["master_key"]),
		}}).expect(t, 200).JSON(t, &res)
		if len(res.Failures) != 0 {
			t.Fatalf("failures %v", res.Failures)
		}

		// Queries show the signatures; only the owner sees the user-signing
		// key and only the signer sees its signature over another's key.
		type queryRes struct {
			DeviceKeys      map[string]map[string]map[string]any `json:"device_keys"`
			MasterKeys      map[string]map[string]any            `json:"master_keys"`
			SelfSigningKeys map[string]map[string]any            `json:"self_signing_keys"`
			UserSigningKeys map[string]map[string]any            `json:"user_signing_keys"`
		}
		query := func(token string) queryRes {
			var q queryRes
			s.call(t, "POST", "/keys/query", token, map[string]any{"device_keys": map[string][]string{alice.UserID: {}}}).expect(t, 200).JSON(t, &q)
			return q
		}
		sigsOf := func(obj map[string]any, user string) map[string]any {
			sigs, _ := obj["signatures"].(map[string]any)
			m, _ := sigs[user].(map[string]any)
			return m
		}
		qb := query(bob.Token)
		if sigsOf(qb.DeviceKeys[alice.UserID][alice.DeviceID], alice.UserID)["ed25519:"+self.pub] == nil {
			t.Fatalf("device signature missing: %v", qb.DeviceKeys)
		}
		if sigsOf(qb.MasterKeys[alice.UserID], bob.UserID)["ed25519:"+bu.pub] == nil || qb.SelfSigningKeys[alice.UserID] == nil {
			t.Fatalf("master key for bob: %v", qb.MasterKeys)
		}
		if qb.UserSigningKeys[alice.UserID] != nil {
			t.Fatal("bob sees alice's user-signing key")
		}
		qa := query(alice.Token)
		if qa.UserSigningKeys[alice.UserID] == nil || sigsOf(qa.MasterKeys[alice.UserID], bob.UserID) != nil {
			t.Fatalf("alice's view: %v %v", qa.UserSigningKeys, qa.MasterKeys)
		}

		// Replacing the keys needs the password.
		master2 := newSigner(t)
		r := uiaRoundTrip(t, s, "POST", "/keys/device_signing/upload", alice.Token,
			map[string]any{"master_key": crossSigningKey(t, alice.UserID, "master", master2, nil)}, "alice", "wonderland")
		r.expect(t, 200)
		if q := query(alice.Token); q.MasterKeys[alice.UserID]["keys"].(map[string]any)["ed25519:"+master2.pub] == nil {
			t.Fatalf("master key not replaced: %v", q.MasterKeys)
		}
	})
}
