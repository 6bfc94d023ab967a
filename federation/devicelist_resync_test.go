package federation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// gatedFetch answers fetches of device lists once its gate opens, after
// failing the first failures of them.
type gatedFetch struct {
	mu       sync.Mutex
	gate     chan struct{}
	running  int
	most     int
	calls    map[string]int
	failures int
}

func newGatedFetch() *gatedFetch {
	return &gatedFetch{gate: make(chan struct{}), calls: map[string]int{}}
}

func (g *gatedFetch) fetch(ctx context.Context, user spec.UserID) (userDevicesAnswer, error) {
	g.mu.Lock()
	g.running++
	g.most = max(g.most, g.running)
	g.calls[user.String()]++
	gate := g.gate
	fail := g.failures > 0
	if fail {
		g.failures--
	}
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		g.running--
		g.mu.Unlock()
	}()
	select {
	case <-gate:
	case <-ctx.Done():
		return userDevicesAnswer{}, ctx.Err()
	}
	if fail {
		return userDevicesAnswer{}, errors.New("unreachable")
	}
	return userDevicesAnswer{UserID: user.String(), StreamID: 1}, nil
}

func (g *gatedFetch) open() {
	g.mu.Lock()
	defer g.mu.Unlock()
	close(g.gate)
}

func (g *gatedFetch) state() (running, most int, calls map[string]int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	c := map[string]int{}
	for u, n := range g.calls {
		c[u] = n
	}
	return g.running, g.most, c
}

// TestDeviceListResyncSchedule: updates that need a fetch return at once
// while the fetches hang; at most resyncConcurrency run at once; updates
// of a user whose fetch runs fetch once more after it, not once each; a
// failed fetch is tried again after its backoff; and lists left stale
// before Start (a restart) are fetched.
func TestDeviceListResyncSchedule(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		e, roomID := sharedRoom(t, db)
		users := []string{fedBob}
		for i := range 5 {
			u := fmt.Sprintf("@u%d:remote.example", i)
			e.member(roomID, u, u, "join")
			users = append(users, u)
		}
		g := newGatedFetch()
		d := &DeviceLists{db: db, serverName: ours, log: discard(), fetch: g.fetch}
		// Left stale before Start: fetched by the first pass.
		if err := db.MarkRemoteDeviceListStale(ctx, users[5]); err != nil {
			t.Fatal(err)
		}
		d.sched.retryMin = 20 * time.Millisecond
		t.Cleanup(d.Start(ctx))
		update := func(user string, stream int) {
			t.Helper()
			start := time.Now()
			content := fmt.Sprintf(`{"user_id":%q,"device_id":"D","stream_id":%d,"prev_id":[%d]}`, user, stream, stream-1)
			if err := d.HandleDeviceListUpdate(ctx, fedRemote, json.RawMessage(content)); err != nil {
				t.Fatal(err)
			}
			if took := time.Since(start); took > time.Second {
				t.Fatalf("an update to fetch took %v", took)
			}
		}
		waitFor := func(what string, ok func() bool) {
			t.Helper()
			deadline := time.Now().Add(10 * time.Second)
			for !ok() {
				if time.Now().After(deadline) {
					t.Fatalf("never: %s", what)
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
		running := func(n int) func() bool {
			return func() bool { r, _, _ := g.state(); return r == n }
		}
		waitFor("the stale list's fetch", running(1))
		update(fedBob, 5)
		waitFor("bob's fetch", running(2))
		for _, u := range users[1:5] {
			update(u, 5)
		}
		waitFor("as many fetches as slots", running(resyncConcurrency))
		// Bob's fetch may predate these: it is done once more after.
		update(fedBob, 6)
		update(fedBob, 7)
		g.open()
		settle(t, d)
		_, most, calls := g.state()
		if most != resyncConcurrency {
			t.Errorf("%d fetches at once, want %d", most, resyncConcurrency)
		}
		for _, u := range users {
			want := 1
			if u == fedBob {
				want = 2
			}
			if calls[u] != want {
				t.Errorf("%s fetched %d times, want %d", u, calls[u], want)
			}
			if l, err := db.RemoteDeviceList(ctx, u); err != nil || l.Stale {
				t.Errorf("%s's list %+v %v, want fetched", u, l, err)
			}
		}

		// Two failures, then the fetch works.
		g.mu.Lock()
		g.failures = 2
		g.mu.Unlock()
		update(users[1], 9)
		waitFor("the fetch tried again", func() bool {
			l, err := db.RemoteDeviceList(ctx, users[1])
			return err == nil && !l.Stale
		})
		if _, _, calls := g.state(); calls[users[1]] != 4 {
			t.Errorf("%s fetched %d times, want 4", users[1], calls[users[1]])
		}
	})
}
