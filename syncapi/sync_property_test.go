package syncapi_test

import (
	"fmt"
	"math/rand/v2"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"maunium.net/go/mautrix"
)

// syncingClient follows a user's timelines the way a client does: an
// initial sync, then long-polling incremental syncs, filling every
// limited gap with /messages from prev_batch back to the previous token.
type syncingClient struct {
	h      hs
	cli    *mautrix.Client
	filter string
	since  string
	// seen is each room's timeline as the client has it, oldest first.
	seen map[string][]string
	// syncs and gaps count the syncs and the limited timelines filled.
	syncs, gaps int
}

func (c *syncingClient) sync(t *testing.T, timeout time.Duration) {
	t.Helper()
	q := url.Values{"filter": {c.filter}, "timeout": {strconv.FormatInt(timeout.Milliseconds(), 10)}}
	if c.since != "" {
		q.Set("since", c.since)
	}
	resp := c.h.sync(t, c.cli, q)
	if resp.Rooms != nil {
		for roomID, j := range resp.Rooms.Join {
			batch := eventIDs(j.Timeline.Events)
			if j.Timeline.Limited {
				c.gaps++
				batch = append(c.fillGap(t, roomID, j.Timeline.PrevBatch), batch...)
			}
			c.seen[roomID] = append(c.seen[roomID], batch...)
		}
	}
	c.since = resp.NextBatch
	c.syncs++
}

// fillGap pages /messages backwards from prev_batch to the client's last
// token (to the room's start after an initial sync) and returns the
// events oldest first.
func (c *syncingClient) fillGap(t *testing.T, roomID, from string) []string {
	t.Helper()
	var gap []string
	for pages := 0; ; pages++ {
		q := url.Values{"dir": {"b"}, "from": {from}, "limit": {"7"}}
		if c.since != "" {
			q.Set("to", c.since)
		}
		page := c.h.messages(t, c.cli, roomID, q)
		for _, e := range page.Chunk {
			gap = append(gap, e.EventID)
		}
		if page.End == "" {
			break
		}
		if pages > 1000 {
			t.Fatal("gap filling does not end")
		}
		from = page.End
	}
	slices.Reverse(gap)
	return gap
}

// TestSyncProperty: 4 users send concurrently into 3 rooms while 3 users
// long-poll with timeline limits 1, 3 and 20. After everything settles,
// each syncing client has every event of every room exactly once, in the
// room's order, once its limited gaps are filled from prev_batch.
func TestSyncProperty(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		owner := h.user(t, "owner")
		var rooms []string
		for range 3 {
			rooms = append(rooms, createRoom(t, owner, &mautrix.ReqCreateRoom{Preset: "public_chat"}))
		}
		var senders []*mautrix.Client
		for i := range 4 {
			s := h.user(t, fmt.Sprint("sender", i))
			for _, r := range rooms {
				join(t, s, r)
			}
			senders = append(senders, s)
		}
		var clients []*syncingClient
		for i, limit := range []int{1, 3, 20} {
			u := h.user(t, fmt.Sprint("reader", i))
			for _, r := range rooms {
				join(t, u, r)
			}
			c := &syncingClient{h: h, cli: u, filter: fmt.Sprintf(`{"room":{"timeline":{"limit":%d}}}`, limit), seen: make(map[string][]string)}
			c.sync(t, 0)
			clients = append(clients, c)
		}

		const perSender = 25
		var sending sync.WaitGroup
		var done atomic.Bool
		for i, s := range senders {
			sending.Go(func() {
				rng := rand.New(rand.NewPCG(uint64(i), 7))
				for n := range perSender {
					send(t, s, rooms[rng.IntN(len(rooms))], fmt.Sprintf("%d-%d", i, n), nil)
				}
			})
		}
		var reading sync.WaitGroup
		for _, c := range clients {
			reading.Go(func() {
				for !done.Load() {
					c.sync(t, 2*time.Second)
				}
			})
		}
		sending.Wait()
		done.Store(true)
		reading.Wait()
		for _, c := range clients {
			c.sync(t, 0) // whatever the last long-poll did not see
		}

		for _, roomID := range rooms {
			want := eventIDs(h.allEvents(t, owner, roomID))
			for i, c := range clients {
				got := c.seen[roomID]
				if roomID == rooms[0] {
					t.Logf("client %d (%s): %d syncs, %d gaps filled", i, c.filter, c.syncs, c.gaps)
				}
				if !slices.Equal(got, want) {
					t.Errorf("client %d (%s), room %s: %d events, want %d\n%s", i, c.filter, roomID, len(got), len(want), diffIDs(got, want))
				}
			}
		}
	})
}

// diffIDs describes how two id lists differ: duplicates, missing, extra,
// and the first position where the order differs.
func diffIDs(got, want []string) string {
	count := map[string]int{}
	for _, id := range got {
		count[id]++
	}
	var dups, missing []string
	for id, n := range count {
		if n > 1 {
			dups = append(dups, id)
		}
	}
	for _, id := range want {
		if count[id] == 0 {
			missing = append(missing, id)
		}
	}
	first := -1
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			first = i
			break
		}
	}
	return fmt.Sprintf("duplicates %v; missing %v; first difference at %d", dups, missing, first)
}
