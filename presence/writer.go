package presence

import (
	"context"
	"sync"
	"time"

	"github.com/weft-chat/weft/sql"
)

// writer applies the presence changes of many callers in one transaction,
// on SQLite. Syncs come in bursts (a message wakes every member of its
// room, and they all come back at once), and one transaction per sync's
// bookkeeping queued that many at SQLite's single writer, ahead of the
// room's next message: its commit waited 15 ms behind 46 of them in
// `weft bench fanout`. Changes that arrive while a batch is written go in
// the next one. PostgreSQL runs writers side by side, and there one
// writer for all made the slowest delivery of `weft bench rooms` slower
// (0.7-1.1 s, from 0.4 s): each caller writes its own.
type writer struct {
	db *sql.DB
	// together is whether changes are written together (SQLite).
	together bool

	mu    sync.Mutex
	queue []*pendingChange
	busy  bool // a goroutine is draining the queue
}

type pendingChange struct {
	c       sql.PresenceChange
	done    chan struct{}
	applied bool
	err     error
}

// writeBatch bounds the changes written in one transaction, and
// writeTimeout how long that transaction may take: it serves callers
// whose contexts differ, so it runs on its own.
const (
	writeBatch   = 256
	writeTimeout = 30 * time.Second
)

// apply writes c with the changes queued beside it and reports whether it
// applied (sql.ApplyPresence). A caller that gives up (ctx) may still see
// its change applied later.
func (w *writer) apply(ctx context.Context, c sql.PresenceChange) (bool, error) {
	if !w.together {
		applied, err := w.db.ApplyPresence(ctx, []sql.PresenceChange{c})
		if err != nil {
			return false, err
		}
		return applied[0], nil
	}
	p := &pendingChange{c: c, done: make(chan struct{})}
	w.mu.Lock()
	w.queue = append(w.queue, p)
	start := !w.busy
	w.busy = true
	w.mu.Unlock()
	if start {
		go w.drain()
	}
	select {
	case <-p.done:
		return p.applied, p.err
	case <-ctx.Done():
		return false, ctx.Err()
	}
}

// drain writes the queue, a batch at a time, until it is empty.
func (w *writer) drain() {
	for {
		w.mu.Lock()
		n := min(len(w.queue), writeBatch)
		if n == 0 {
			w.busy = false
			w.mu.Unlock()
			return
		}
		batch := w.queue[:n:n]
		w.queue = w.queue[n:]
		w.mu.Unlock()
		w.write(batch)
	}
}

func (w *writer) write(batch []*pendingChange) {
	ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
	defer cancel()
	changes := make([]sql.PresenceChange, len(batch))
	for i, p := range batch {
		changes[i] = p.c
	}
	applied, err := w.db.ApplyPresence(ctx, changes)
	for i, p := range batch {
		if err == nil {
			p.applied = applied[i]
		}
		p.err = err
		close(p.done)
	}
}
