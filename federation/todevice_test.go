package federation_test

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/weft-chat/weft/homeserver/hstest"
	"github.com/weft-chat/weft/internal/testclient"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

var pingType = event.Type{Type: "org.weft.ping", Class: event.ToDeviceEventType}

// toDeviceEvent is a to-device event as /sync serves it.
type toDeviceEvent struct {
	Type    string         `json:"type"`
	Sender  string         `json:"sender"`
	Content map[string]any `json:"content"`
}

// syncToDevice long-polls cli's /sync from since and returns the
// to-device events of the first response that has any, and its
// next_batch; it fails after within.
func syncToDevice(t *testing.T, cli *mautrix.Client, since string, within time.Duration) ([]toDeviceEvent, string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		evs, next := syncOnce(t, cli, since, 1000)
		since = next
		if len(evs) > 0 {
			return evs, since
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no to-device event within %v", cli.UserID, within)
		}
	}
}

func syncOnce(t *testing.T, cli *mautrix.Client, since string, timeoutMS int) ([]toDeviceEvent, string) {
	t.Helper()
	q := map[string]string{"timeout": strconv.Itoa(timeoutMS)}
	if since != "" {
		q["since"] = since
	}
	var resp struct {
		NextBatch string `json:"next_batch"`
		ToDevice  struct {
			Events []toDeviceEvent `json:"events"`
		} `json:"to_device"`
	}
	u := cli.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "sync"}, q)
	if _, err := cli.MakeRequest(context.Background(), http.MethodGet, u, nil, &resp); err != nil {
		t.Fatalf("%s sync: %v", cli.UserID, err)
	}
	return resp.ToDevice.Events, resp.NextBatch
}

func ping(t *testing.T, from *mautrix.Client, to id.UserID, device id.DeviceID, n int) {
	t.Helper()
	_, err := from.SendToDevice(context.Background(), pingType, &mautrix.ReqSendToDevice{
		Messages: map[id.UserID]map[id.DeviceID]*event.Content{to: {device: {Raw: map[string]any{"n": n}}}},
	})
	if err != nil {
		t.Fatalf("%s sends to %s: %v", from.UserID, to, err)
	}
}

func checkPing(t *testing.T, evs []toDeviceEvent, sender id.UserID, n int) {
	t.Helper()
	if len(evs) != 1 || evs[0].Type != pingType.Type || evs[0].Sender != string(sender) || evs[0].Content["n"] != float64(n) {
		t.Fatalf("to-device events %+v, want one %s from %s with n=%d", evs, pingType.Type, sender, n)
	}
}

// TestToDeviceOverFederation: alice on A sends to-device messages to bob
// on B through A's queue, B's /send and the m.direct_to_device EDU; bob's
// /sync gets each exactly once. With B stopped, a message waits in A's
// queue (backing off); when B is back and sends A a transaction of its
// own, A knows B is up and delivers at once rather than after its
// back-off.
func TestToDeviceOverFederation(t *testing.T) {
	for _, engine := range sqltest.Engines() {
		t.Run(string(engine), func(t *testing.T) {
			ctx := context.Background()
			cfgA, cfgB := hstest.FederationConfig(t, engine), hstest.FederationConfig(t, engine)
			servers := hstest.StartFederated(t, cfgA, cfgB)
			a, b := servers[0], servers[1]
			nameB := spec.ServerName(cfgB.ServerName)
			dbA := openDB(t, cfgA.Database.URL)

			alice := testclient.Register(t, a.ClientURL, "alice")
			bob := testclient.Register(t, b.ClientURL, "bob")
			_, bobSince := syncOnce(t, bob, "", 0)
			_, aliceSince := syncOnce(t, alice, "", 0)

			// A message too large for one EDU is refused as a whole.
			_, err := alice.SendToDevice(ctx, pingType, &mautrix.ReqSendToDevice{Messages: map[id.UserID]map[id.DeviceID]*event.Content{
				bob.UserID:   {bob.DeviceID: {Raw: map[string]any{"blob": strings.Repeat("x", 70<<10)}}},
				alice.UserID: {alice.DeviceID: {Raw: map[string]any{"n": 0}}},
			}})
			if err == nil || !strings.Contains(err.Error(), "M_TOO_LARGE") {
				t.Fatalf("oversized remote message: %v", err)
			}

			ping(t, alice, bob.UserID, bob.DeviceID, 1)
			evs, bobSince := syncToDevice(t, bob, bobSince, 15*time.Second)
			checkPing(t, evs, alice.UserID, 1)
			// Exactly once: the next sync acknowledges it and has nothing.
			if evs, _ := syncOnce(t, bob, bobSince, 300); len(evs) != 0 {
				t.Fatalf("delivered again: %+v", evs)
			}
			waitQueueEmpty(t, dbA, nameB)

			// B goes away; alice's next message (to all bob's devices)
			// waits in A's queue, which backs off after a failed attempt.
			if err := b.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
			ping(t, alice, bob.UserID, "*", 2)
			deadline := time.Now().Add(10 * time.Second)
			for {
				st, err := dbA.FederationDestinationState(ctx, string(nameB))
				if err == nil && st.RetryAtTS > time.Now().UnixMilli() {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("A recorded no back-off for B: %+v %v", st, err)
				}
				time.Sleep(20 * time.Millisecond)
			}
			if queued, _ := dbA.FederationQueued(ctx, string(nameB)); !queued {
				t.Fatal("nothing queued for B")
			}

			// B starts again on its database and keys.
			b = hstest.Start(t, b.Config)
			bob.HomeserverURL, _ = url.Parse(b.ClientURL)
			ping(t, bob, alice.UserID, alice.DeviceID, 3)
			// (The refused request's message to alice herself was not
			// stored: her first to-device event is bob's.)
			evs, _ = syncToDevice(t, alice, aliceSince, 15*time.Second)
			checkPing(t, evs, bob.UserID, 3)
			// A's back-off for B is 10 s; B's transaction ended it.
			start := time.Now()
			evs, bobSince = syncToDevice(t, bob, bobSince, 8*time.Second)
			checkPing(t, evs, alice.UserID, 2)
			t.Logf("queued message delivered %v after B was back", time.Since(start).Round(time.Millisecond))
			if evs, _ := syncOnce(t, bob, bobSince, 300); len(evs) != 0 {
				t.Fatalf("delivered again: %+v", evs)
			}
			waitQueueEmpty(t, dbA, nameB)
		})
	}
}

func waitQueueEmpty(t *testing.T, db *sql.DB, dest spec.ServerName) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		queued, err := db.FederationQueued(context.Background(), string(dest))
		if err != nil {
			t.Fatal(err)
		}
		if !queued {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("items for %s still queued", dest)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
