package federation_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/homeserver/hstest"
	"github.com/weft-chat/weft/internal/serverkey"
	"github.com/weft-chat/weft/internal/testclient"
	"github.com/weft-chat/weft/sql/sqltest"
)

// TestTwoServersDeviceListResync: alice of A (Weft) shares a room with
// three users of B, which sends A device-list updates that A cannot
// apply (it never fetched their lists). B is then played by a stand-in
// whose GET /user/devices hangs, then fails, then answers, and which
// answers no /user/keys/query. A transaction of such updates is answered
// at once, however slow B is; A fetches the lists in the background once
// B answers and serves /keys/query from them; and a /keys/query of a
// stale list fetches it on demand (past the background's backoff), or
// asks B directly when that fails.
func TestTwoServersDeviceListResync(t *testing.T) {
	for _, engine := range sqltest.Engines() {
		t.Run(string(engine), func(t *testing.T) {
			ctx := context.Background()
			cfgA, cfgB := hstest.FederationConfig(t, engine), hstest.FederationConfig(t, engine)
			servers := startTrusting(t, []config.Config{cfgA, cfgB}, cfgA, cfgB)
			a, b := servers[0], servers[1]
			nameA, nameB := spec.ServerName(cfgA.ServerName), spec.ServerName(cfgB.ServerName)
			keyB, err := serverkey.LoadOrGenerate(cfgB.SigningKeyPath)
			if err != nil {
				t.Fatal(err)
			}
			alice := testclient.Register(t, a.ClientURL, "alice")
			room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
			if err != nil {
				t.Fatal(err)
			}
			users := []id.UserID{id.UserID("@bob:" + nameB), id.UserID("@bert:" + nameB), id.UserID("@bea:" + nameB)}
			for _, u := range users {
				join(t, cfgA, room.RoomID.String(), u.String())
			}
			fcB := b.FederationClient()
			send := func(txn string, edus ...any) time.Duration {
				t.Helper()
				start := time.Now()
				code, body := signedRequest(t, fcB, keyB, nameA, "PUT", "/_matrix/federation/v1/send/"+txn,
					map[string]any{"origin": nameB, "origin_server_ts": time.Now().UnixMilli(), "pdus": []any{}, "edus": edus})
				if code != 200 {
					t.Fatalf("transaction %s: %d %s", txn, code, body)
				}
				return time.Since(start)
			}
			update := func(user id.UserID, stream int) any {
				return map[string]any{"edu_type": "m.device_list_update", "content": map[string]any{
					"user_id": user, "device_id": "OLD", "stream_id": stream, "prev_id": []int{stream - 1}}}
			}
			// A learns B's signing key while B is up; then B's stand-in
			// takes its place.
			send("t0")
			b.Stop(t)
			standIn := startDeviceStandIn(t, cfgB)
			query := func(who ...id.UserID) *mautrix.RespQueryKeys {
				t.Helper()
				req := mautrix.DeviceKeysRequest{}
				for _, u := range who {
					req[u] = mautrix.DeviceIDList{}
				}
				keys, err := alice.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: req})
				if err != nil {
					t.Fatal(err)
				}
				return keys
			}
			hasDevice := func(keys *mautrix.RespQueryKeys, device id.DeviceID, who ...id.UserID) bool {
				for _, u := range who {
					if _, ok := keys.DeviceKeys[u][device]; !ok {
						return false
					}
				}
				return len(keys.Failures) == 0
			}

			// B hangs: the transaction is answered at once all the same
			// (fetching inline took up to 10 s a user).
			var edus []any
			for _, u := range users {
				edus = append(edus, update(u, 5))
			}
			if took := send("t1", edus...); took > 3*time.Second {
				t.Fatalf("a transaction of updates to fetch took %v", took)
			}
			standIn.waitCalls(t, len(users))
			// B answers: the background's fetches end with the lists,
			// which /keys/query serves without asking B (which would
			// fail).
			standIn.answerWith("NEW1")
			deadline := time.Now().Add(20 * time.Second)
			for !hasDevice(query(users...), "NEW1", users...) {
				if time.Now().After(deadline) {
					t.Fatalf("the fetched lists never served: %+v", query(users...))
				}
				time.Sleep(100 * time.Millisecond)
			}
			if n := standIn.count(); n != len(users) {
				t.Errorf("%d fetches of %d users' lists", n, len(users))
			}

			// B fails: the background's fetch fails and waits; a
			// /keys/query fetches again at once, fails, and asks B
			// directly, which fails too.
			standIn.fail()
			bob := users[0]
			send("t2", update(bob, 12))
			standIn.waitCalls(t, len(users)+1)
			if keys := query(bob); hasDevice(keys, "NEW1", bob) || keys.Failures[string(nameB)] == nil {
				t.Fatalf("bob's keys with a stale list and B failing: %+v", keys)
			}
			// B answers again: /keys/query fetches bob's list at once,
			// long before the background's retry.
			standIn.answerWith("NEW2")
			before := standIn.count()
			if keys := query(bob); !hasDevice(keys, "NEW2", bob) || standIn.count() != before+1 {
				t.Fatalf("bob's keys once B answers, after %d fetches: %+v", standIn.count()-before, keys)
			}
		})
	}
}

// deviceStandIn plays a server whose GET /user/devices hangs until told
// to fail or to answer with one device; it answers nothing else.
type deviceStandIn struct {
	mu      sync.Mutex
	calls   int
	device  string // "": fail
	decided chan struct{}
}

// startDeviceStandIn serves the stand-in on cfg's federation address
// with its certificate until the test ends.
func startDeviceStandIn(t *testing.T, cfg config.Config) *deviceStandIn {
	t.Helper()
	s := &deviceStandIn{decided: make(chan struct{})}
	serveStandIn(t, cfg, s.serve)
	return s
}

func (s *deviceStandIn) serve(w http.ResponseWriter, r *http.Request) {
	const prefix = "/_matrix/federation/v1/user/devices/"
	if r.Method != http.MethodGet || !strings.HasPrefix(r.URL.Path, prefix) {
		http.NotFound(w, r)
		return
	}
	user := strings.TrimPrefix(r.URL.Path, prefix)
	s.mu.Lock()
	s.calls++
	decided := s.decided
	s.mu.Unlock()
	select {
	case <-decided:
	case <-r.Context().Done():
		return
	}
	s.mu.Lock()
	device := s.device
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	if device == "" {
		w.WriteHeader(http.StatusInternalServerError)
		_, _ = w.Write([]byte(`{"errcode":"M_UNKNOWN","error":"down"}`))
		return
	}
	keys := map[string]any{"user_id": user, "device_id": device, "algorithms": []string{"m.olm.v1.curve25519-aes-sha2"},
		"keys": map[string]string{"ed25519:" + device: "pub", "curve25519:" + device: "pub"}, "signatures": map[string]any{}}
	_ = json.NewEncoder(w).Encode(map[string]any{"user_id": user, "stream_id": 10,
		"devices": []any{map[string]any{"device_id": device, "keys": keys}}})
}

// answerWith makes the hanging and later fetches answer with device.
func (s *deviceStandIn) answerWith(device string) { s.decide(device) }

// fail makes the hanging and later fetches fail.
func (s *deviceStandIn) fail() { s.decide("") }

func (s *deviceStandIn) decide(device string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.device = device
	select {
	case <-s.decided:
	default:
		close(s.decided)
	}
}

func (s *deviceStandIn) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// waitCalls waits until the stand-in was asked n times.
func (s *deviceStandIn) waitCalls(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for s.count() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d fetches, want %d", s.count(), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
