package roomserver

import (
	"context"
	"sync"
)

// maxGroupEvents bounds the events of one group transaction.
const maxGroupEvents = 512

// groupCommit merges the commits that arrive while others are running
// into shared transactions, as databases do with their log flushes: one
// transaction, one fsync and one turn on the stream position lock for many
// inputs from many rooms.
//
// Every transaction that adds events takes the one lock on the event
// stream's position counter and holds it through its commit (that is what
// keeps positions committing in order). It takes it as late as it can
// (see commitTx); slots says how many transactions may run at once (see
// commitSlots).
//
// There are no committer goroutines to own: a submitter that finds a free
// slot commits everything queued, its own work included, then hands its
// slot to the first submitter that queued meanwhile. Each submitter leads
// at most one transaction, so no room's writer is held up committing for
// others for long. The transactions running at once never share a room:
// each room's inputs are serialised by its lock, held until the commit.
//
// Submitters hold their rooms' locks while they wait; the group takes no
// room lock, so lock order is room locks, then groupCommit.mu.
type groupCommit struct {
	mu      sync.Mutex
	slots   int           // transactions that may run at once
	queue   []*commitUnit // waiting, not taken by a leader
	running int           // leaders running or promoted
}

// commitUnit is one submitter's work: the rooms of one input batch or one
// new room.
type commitUnit struct {
	rcs  []*roomCommit
	err  error
	done bool
	// lead is set when the unit is to lead its own transaction; leaders
	// do not take such a unit into theirs.
	lead bool
	// wake is signalled once: when the unit is committed (done), or when
	// it is promoted to lead.
	wake chan struct{}
}

// commitGrouped commits rcs, in a transaction shared with whatever other
// rooms are waiting, and returns once it is committed or has failed.
func (rs *Roomserver) commitGrouped(ctx context.Context, rcs []*roomCommit) error {
	g := &rs.group
	u := &commitUnit{rcs: rcs, wake: make(chan struct{}, 1)}
	g.mu.Lock()
	g.queue = append(g.queue, u)
	lead := g.running < max(g.slots, 1)
	if lead {
		g.running++
		u.lead = true
	}
	g.mu.Unlock()
	if !lead {
		<-u.wake
		if u.done {
			return u.err
		}
		// Promoted: u is still queued and leads its own transaction.
	}

	g.mu.Lock()
	var batch, rest []*commitUnit
	events := 0
	for _, o := range g.queue {
		n := o.events()
		if o == u || (!o.lead && events+n <= maxGroupEvents) {
			batch, events = append(batch, o), events+n
		} else {
			rest = append(rest, o)
		}
	}
	g.queue = rest
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
	promoted := false
	for _, o := range g.queue {
		if !o.lead {
			o.lead, promoted = true, true
			o.wake <- struct{}{}
			break
		}
	}
	if !promoted {
		g.running--
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
	err := rs.commitTx(ctx, all)
	if err != nil && len(batch) > 1 {
		for _, u := range batch {
			u.err = rs.commitTx(ctx, u.rcs)
			u.done = true
		}
		return
	}
	for _, u := range batch {
		u.err, u.done = err, true
	}
}
