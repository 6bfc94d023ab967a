package syncapi

import (
	"context"
	"runtime"
	"sync"

	"github.com/weft-chat/weft/sql"
)

// headReads reads the heads of syncs that ask at the same time in one
// query (sql.SyncHeads): an event wakes every member of its room at once,
// and each head alone would pay a round trip and the query's fixed costs
// (on PostgreSQL the 50 heads of a room read one by one cost ten times
// what they cost together; BenchmarkSyncHeads).
//
// At most GOMAXPROCS queries run at once; syncs that ask meanwhile wait
// for the next. Every query starts after all of its syncs asked, so each
// head sees everything committed before its sync asked, as a query of
// its own would: the order the notifier and the quiet park rely on.
type headReads struct {
	mu      sync.Mutex
	queue   []*headCall
	running int
}

type headCall struct {
	req  sql.SyncHeadRequest
	done chan struct{}
	head sql.SyncHead
	err  error
}

// read reads r's head, in a batch with the heads asked for meanwhile.
func (h *headReads) read(ctx context.Context, db *sql.DB, r sql.SyncHeadRequest) (sql.SyncHead, error) {
	c := &headCall{req: r, done: make(chan struct{})}
	h.mu.Lock()
	h.queue = append(h.queue, c)
	start := h.running < runtime.GOMAXPROCS(0)
	if start {
		h.running++
	}
	h.mu.Unlock()
	if start {
		go h.drain(db)
	}
	select {
	case <-c.done:
		return c.head, c.err
	case <-ctx.Done():
		return sql.SyncHead{}, ctx.Err()
	}
}

// drain reads the queued heads, a batch at a time, until none is left.
func (h *headReads) drain(db *sql.DB) {
	// The members of a room are woken together, but each asks once it
	// runs: yielding first lets those already runnable join the batch
	// instead of each paying a query of its own.
	runtime.Gosched()
	for {
		h.mu.Lock()
		n := min(len(h.queue), sql.MaxSyncHeads)
		if n == 0 {
			h.running--
			h.queue = nil // let the backing array go
			h.mu.Unlock()
			return
		}
		batch := h.queue[:n:n]
		h.queue = h.queue[n:]
		h.mu.Unlock()
		reqs := make([]sql.SyncHeadRequest, n)
		for i, c := range batch {
			reqs[i] = c.req
		}
		// No one sync's context: its end must not fail the others.
		ctx, cancel := context.WithTimeout(context.Background(), sharedReadTimeout)
		heads, err := db.SyncHeads(ctx, reqs)
		cancel()
		for i, c := range batch {
			if err != nil {
				c.err = err
			} else {
				c.head = heads[i]
			}
			close(c.done)
		}
	}
}
