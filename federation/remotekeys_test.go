package federation_test

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"maunium.net/go/mautrix"

	"github.com/weft-chat/weft/homeserver/hstest"
	"github.com/weft-chat/weft/internal/testclient"
	"github.com/weft-chat/weft/sql/sqltest"
)

// keysAnswer is a /keys/query or /keys/claim answer.
type keysAnswer struct {
	DeviceKeys      map[string]map[string]json.RawMessage            `json:"device_keys"`
	MasterKeys      map[string]json.RawMessage                       `json:"master_keys"`
	SelfSigningKeys map[string]json.RawMessage                       `json:"self_signing_keys"`
	UserSigningKeys map[string]json.RawMessage                       `json:"user_signing_keys"`
	OneTimeKeys     map[string]map[string]map[string]json.RawMessage `json:"one_time_keys"`
	Failures        map[string]map[string]any                        `json:"failures"`
}

func keysCall(t *testing.T, cli *mautrix.Client, endpoint string, body any) keysAnswer {
	t.Helper()
	var out keysAnswer
	if _, err := cli.MakeRequest(context.Background(), http.MethodPost, cli.BuildClientURL("v3", "keys", endpoint), body, &out); err != nil {
		t.Fatalf("%s /keys/%s: %v", cli.UserID, endpoint, err)
	}
	return out
}

// uploadDevice uploads cli's self-signed device keys, with a field the
// server does not know (which the signature covers: a server that
// re-encoded the keys through its own types would break it), and
// one-time keys.
func uploadDevice(t *testing.T, cli *mautrix.Client, otks ...string) keyPair {
	t.Helper()
	dev := newPair(t)
	user, device := string(cli.UserID), string(cli.DeviceID)
	body := map[string]any{
		"device_keys": dev.sign(t, user, "ed25519:"+device, map[string]any{
			"user_id": user, "device_id": device,
			"algorithms":    []string{"m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"},
			"keys":          map[string]string{"ed25519:" + device: dev.pub, "curve25519:" + device: "curve" + device},
			"org.weft.test": "kept",
		}),
	}
	if len(otks) > 0 {
		m := map[string]json.RawMessage{}
		for i, k := range otks {
			m["signed_curve25519:K"+string(rune('A'+i))] = dev.sign(t, user, "ed25519:"+device, map[string]any{"key": k})
		}
		body["one_time_keys"] = m
	}
	clientPost(t, cli, []any{"keys", "upload"}, body)
	return dev
}

func verifies(t *testing.T, obj json.RawMessage, userID, keyID, pub string) bool {
	t.Helper()
	b, err := base64.RawStdEncoding.DecodeString(pub)
	if err != nil {
		t.Fatal(err)
	}
	return gomatrixserverlib.VerifyJSON(userID, gomatrixserverlib.KeyID(keyID), ed25519.PublicKey(b), obj) == nil
}

// hangingServer accepts connections and never answers, as an overloaded
// server; its name is "127.0.0.1:<port>".
func hangingServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

// TestRemoteKeysQueryAndClaim: alice on A asks for the keys of bob on B
// through A (spec: POST /keys/query and /keys/claim, which a homeserver
// answers for remote users by asking their servers). She gets bob's
// device keys as he signed them, his master and self-signing keys but
// never his user-signing key, and a different one-time key on each
// claim. A server that is unreachable, too slow or down lands in
// "failures" within the request's timeout, and the rest of the answer is
// still there.
func TestRemoteKeysQueryAndClaim(t *testing.T) {
	for _, engine := range sqltest.Engines() {
		t.Run(string(engine), func(t *testing.T) {
			ctx := context.Background()
			cfgA, cfgB := hstest.FederationConfig(t, engine), hstest.FederationConfig(t, engine)
			servers := hstest.StartFederated(t, cfgA, cfgB)
			a, b := servers[0], servers[1]
			nameB := cfgB.ServerName

			alice := testclient.Register(t, a.ClientURL, "alice")
			bob := testclient.Register(t, b.ClientURL, "bob")
			aliceDev := uploadDevice(t, alice)
			bobDev := uploadDevice(t, bob, "otk1", "otk2")
			bobID, aliceID := string(bob.UserID), string(alice.UserID)
			master, self, usk := newPair(t), newPair(t), newPair(t)
			csk := func(usage string, k keyPair) json.RawMessage {
				obj := map[string]any{"user_id": bobID, "usage": []string{usage}, "keys": map[string]string{"ed25519:" + k.pub: k.pub}}
				if usage == "master" {
					raw, _ := json.Marshal(obj)
					return raw
				}
				return master.sign(t, bobID, "ed25519:"+master.pub, obj)
			}
			clientPost(t, bob, []any{"keys", "device_signing", "upload"}, map[string]any{
				"master_key": csk("master", master), "self_signing_key": csk("self_signing", self), "user_signing_key": csk("user_signing", usk)})

			q := keysCall(t, alice, "query", map[string]any{"device_keys": map[string][]string{bobID: {}, aliceID: {}}})
			bobKeys := q.DeviceKeys[bobID][string(bob.DeviceID)]
			if bobKeys == nil || !verifies(t, bobKeys, bobID, "ed25519:"+string(bob.DeviceID), bobDev.pub) {
				t.Fatalf("bob's device keys missing or not as he signed them: %s", bobKeys)
			}
			if ak := q.DeviceKeys[aliceID][string(alice.DeviceID)]; !verifies(t, ak, aliceID, "ed25519:"+string(alice.DeviceID), aliceDev.pub) {
				t.Fatalf("alice's own device keys: %s", ak)
			}
			if q.MasterKeys[bobID] == nil || q.SelfSigningKeys[bobID] == nil || q.UserSigningKeys[bobID] != nil || len(q.Failures) != 0 {
				t.Fatalf("cross-signing keys / failures: master %s self %s user %s failures %v",
					q.MasterKeys[bobID], q.SelfSigningKeys[bobID], q.UserSigningKeys[bobID], q.Failures)
			}
			if !verifies(t, q.SelfSigningKeys[bobID], bobID, "ed25519:"+master.pub, master.pub) {
				t.Fatalf("bob's self-signing key lost its signature: %s", q.SelfSigningKeys[bobID])
			}
			// Only the listed devices.
			q = keysCall(t, alice, "query", map[string]any{"device_keys": map[string][]string{bobID: {"NOSUCH"}}})
			if len(q.DeviceKeys[bobID]) != 0 || len(q.Failures) != 0 {
				t.Fatalf("query of an unknown device of bob: %+v", q)
			}

			claim := map[string]any{"one_time_keys": map[string]map[string]string{bobID: {string(bob.DeviceID): "signed_curve25519"}}}
			var got []string
			for range 2 {
				c := keysCall(t, alice, "claim", claim)
				keys := c.OneTimeKeys[bobID][string(bob.DeviceID)]
				if len(keys) != 1 || len(c.Failures) != 0 {
					t.Fatalf("claim of bob's key: %+v", c)
				}
				for id, k := range keys {
					var obj struct{ Key string }
					_ = json.Unmarshal(k, &obj)
					if !verifies(t, k, bobID, "ed25519:"+string(bob.DeviceID), bobDev.pub) {
						t.Fatalf("claimed key %s %s does not verify", id, k)
					}
					got = append(got, obj.Key)
				}
			}
			if got[0] == got[1] {
				t.Fatalf("the same one-time key twice: %v", got)
			}

			// Unreachable and hanging servers fail within the timeout; the
			// reachable users are still answered.
			hang := hangingServer(t)
			start := time.Now()
			q = keysCall(t, alice, "query", map[string]any{"timeout": 1000, "device_keys": map[string][]string{
				bobID: {}, aliceID: {}, "@x:127.0.0.1:1": {}, "@y:" + hang: {}}})
			if took := time.Since(start); took > 5*time.Second {
				t.Fatalf("query took %v with a 1 s timeout", took)
			}
			if q.Failures["127.0.0.1:1"] == nil || q.Failures[hang] == nil || q.Failures[hang]["status"] != float64(503) ||
				q.DeviceKeys[bobID][string(bob.DeviceID)] == nil || q.DeviceKeys[aliceID][string(alice.DeviceID)] == nil || len(q.Failures) != 2 {
				t.Fatalf("query with unreachable servers: devices %v failures %v", q.DeviceKeys, q.Failures)
			}
			start = time.Now()
			c := keysCall(t, alice, "claim", map[string]any{"timeout": 500, "one_time_keys": map[string]map[string]string{
				"@y:" + hang: {"D": "signed_curve25519"}}})
			if took := time.Since(start); took > 5*time.Second || c.Failures[hang] == nil {
				t.Fatalf("claim from a hanging server: %v, %+v", took, c)
			}

			// B goes down.
			if err := b.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
			q = keysCall(t, alice, "query", map[string]any{"device_keys": map[string][]string{bobID: {}, aliceID: {}}})
			if q.Failures[nameB] == nil || q.DeviceKeys[bobID] != nil || q.DeviceKeys[aliceID][string(alice.DeviceID)] == nil {
				t.Fatalf("query with B down: devices %v failures %v", q.DeviceKeys, q.Failures)
			}
			c = keysCall(t, alice, "claim", claim)
			if c.Failures[nameB] == nil || c.OneTimeKeys[bobID] != nil {
				t.Fatalf("claim with B down: %+v", c)
			}
			// A negative timeout is refused.
			_, err := alice.MakeRequest(ctx, http.MethodPost, alice.BuildClientURL("v3", "keys", "query"),
				map[string]any{"timeout": -1, "device_keys": map[string][]string{}}, nil)
			if !isMautrixError(err, 400, "M_INVALID_PARAM") {
				t.Fatalf("negative timeout: %v", err)
			}
		})
	}
}
