package roomserver

import (
	"context"
	"sync"

	"github.com/weft-chat/weft/sql"
)

// maxGroupEvents bounds the events of one group transaction, which holds
// the event stream's position lock while it commits.
const maxGroupEvents = 512

// groupCommit merges the commits that arrive while one is running into the
// next transaction, as databases do with their log flushes. Every
// transaction that adds events takes the one lock on the event stream's
// position counter and holds it through its commit (that is what keeps
// positions committing in order), so transactions of different rooms
// cannot commit in parallel anyway: one transaction for all the rooms that
// are waiting costs one turn on the lock and one fsync instead of one
// each. With fsync on, that is most of the cost of an event.
//
// There is no committer goroutine to own: the first submitter that finds
// no commit running commits everything queued, its own work included, then
// hands the turn to the first submitter that queued meanwhile. Each
// submitter leads at most one transaction, so no room's writer is held up
// committing for others for long.
//
// Submitters hold their rooms' locks while they wait; the group takes no
// room lock, so lock order is room locks, then groupCommit.mu.
type groupCommit struct {
	mu      sync.Mutex
	queue   []*commitUnit
	running bool // a submitter is committing or about to
}

// commitUnit is one submitter's work: the rooms of one input batch or one
// new room.
type commitUnit struct {
	rcs  []*roomCommit
	err  error
	done bool
	// wake is signalled once: when the unit is committed (done), or when
	// it is the unit's turn to lead, at the head of the queue.
	wake chan struct{}
}

// commitGrouped commits rcs, in a transaction shared with whatever other
// rooms are waiting, and returns once it is committed or has failed.
func (rs *Roomserver) commitGrouped(ctx context.Context, rcs []*roomCommit) error {
	g := &rs.group
	u := &commitUnit{rcs: rcs, wake: make(chan struct{}, 1)}
	g.mu.Lock()
	g.queue = append(g.queue, u)
	lead := !g.running
	g.running = true
	g.mu.Unlock()
	if !lead {
		<-u.wake
		if u.done {
			return u.err
		}
		// Our turn: u is at the head of the queue.
	}

	g.mu.Lock()
	n, events := 0, 0
	for n < len(g.queue) && (n == 0 || events+g.queue[n].events() <= maxGroupEvents) {
		events += g.queue[n].events()
		n++
	}
	batch := g.queue[:n:n]
	g.queue = g.queue[n:]
	g.mu.Unlock()

	// The transaction is everyone's, not only the leader's: it is not
	// abandoned when the leader's request goes away.
	rs.commitUnits(context.WithoutCancel(ctx), batch)
	for _, o := range batch {
		if o != u {
			o.wake <- struct{}{}
		}
	}

	g.mu.Lock()
	if len(g.queue) > 0 {
		g.queue[0].wake <- struct{}{}
	} else {
		g.running = false
	}
	g.mu.Unlock()
	return u.err
}

func (u *commitUnit) events() int {
	n := 0
	for _, rc := range u.rcs {
		n += len(rc.evs)
	}
	return n
}

// commitUnits commits the units in one transaction. If it fails, each unit
// is committed alone, so that one unit's failure (a room id already taken,
// a room written by another process) is that unit's only.
func (rs *Roomserver) commitUnits(ctx context.Context, batch []*commitUnit) {
	var all []*roomCommit
	for _, u := range batch {
		all = append(all, u.rcs...)
	}
	err := rs.db.WithTx(ctx, func(q *sql.Queries) error { return rs.commitTx(ctx, q, all) })
	if err != nil && len(batch) > 1 {
		for _, u := range batch {
			u.err = rs.db.WithTx(ctx, func(q *sql.Queries) error { return rs.commitTx(ctx, q, u.rcs) })
			u.done = true
		}
		return
	}
	for _, u := range batch {
		u.err, u.done = err, true
	}
}
