package federation

import (
	"context"
	"sync"
	"time"

	"github.com/weft-chat/weft/e2ee"
)

// The background fetches of stale device lists. An inbound update that
// reveals a gap only marks the user's list stale (markStale): fetching
// it inline would hold the transaction for up to resyncTimeout per user,
// and a transaction carries up to 100 EDUs, so the sending server would
// time out and retry the whole transaction (Synapse resyncs in the
// background too). A /keys/query of a stale user fetches it at once
// (ResyncStale).

const (
	// resyncConcurrency bounds the fetches the background runs at once.
	resyncConcurrency = 4
	// maxResyncs bounds the fetches running at once when /keys/query
	// asks for some; the others wait for the background.
	maxResyncs = 32
	// resyncRetryMin is the wait after a first failed fetch; it doubles
	// with each failure up to resyncRetryMax.
	resyncRetryMin = 30 * time.Second
	resyncRetryMax = time.Hour
	// resyncPoll is how often the database is read for stale lists this
	// process did not mark (before a restart, or another process).
	resyncPoll = time.Minute
	// resyncPage is how many stale users one read of the database takes.
	resyncPage = 500
)

// resyncSchedule is the state of the background fetches; until Start,
// nothing is fetched. Its lock is taken last: nothing else is locked,
// and no I/O is done, while holding it.
type resyncSchedule struct {
	mu  sync.Mutex
	ctx context.Context // the background's; nil before Start
	// pending are the users to fetch as soon as a slot is free.
	pending map[string]bool
	running map[string]*resyncRun
	// retry holds the users whose latest fetch failed, until one works.
	retry map[string]resyncRetry
	// kick asks the loop for a pass; one pending kick covers any number.
	kick     chan struct{}
	retryMin time.Duration
	wg       sync.WaitGroup
}

// resyncRun is one fetch of a user's list.
type resyncRun struct {
	// done is closed when the fetch ends, whatever its outcome.
	done chan struct{}
	// again is set when the list was marked stale during the fetch,
	// whose answer may predate the update that did it.
	again bool
}

// resyncRetry is the backoff of a user whose fetch failed.
type resyncRetry struct {
	failures int
	at       time.Time
}

// Start fetches stale lists in the background until ctx ends or stop is
// called: the users marked here at once, at most resyncConcurrency at a
// time; those whose fetch failed again after a backoff (resyncRetryMin
// doubling to resyncRetryMax, or at once when another update of theirs
// comes); and those the database holds stale, at Start and every
// resyncPoll.
func (d *DeviceLists) Start(ctx context.Context) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	s := &d.sched
	s.mu.Lock()
	s.ctx = ctx
	s.pending, s.running, s.retry = map[string]bool{}, map[string]*resyncRun{}, map[string]resyncRetry{}
	s.kick = make(chan struct{}, 1)
	if s.retryMin == 0 {
		s.retryMin = resyncRetryMin
	}
	s.mu.Unlock()
	s.wg.Go(func() {
		var lastScan time.Time
		for {
			scan := time.Since(lastScan) >= resyncPoll
			if scan {
				lastScan = time.Now()
			}
			next := min(d.resyncPass(ctx, scan), resyncPoll-time.Since(lastScan))
			t := time.NewTimer(next)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-s.kick:
			case <-t.C:
			}
			t.Stop()
		}
	})
	return func() {
		s.mu.Lock()
		s.ctx = nil
		s.mu.Unlock()
		cancel()
		s.wg.Wait()
	}
}

// schedule has the background fetch userID's list now (or again after
// the running fetch).
func (d *DeviceLists) schedule(userID string) {
	s := &d.sched
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ctx == nil {
		return
	}
	if r, ok := s.running[userID]; ok {
		r.again = true
		return
	}
	s.pending[userID] = true
	s.nudge()
}

// nudge asks the loop for a pass; s.mu is held.
func (s *resyncSchedule) nudge() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// resyncPass adds the stale users of the database to the pending ones
// when scan is set, and the users whose backoff ended, then starts
// fetches while slots are free. It returns how long until the next
// backoff ends.
func (d *DeviceLists) resyncPass(ctx context.Context, scan bool) time.Duration {
	s := &d.sched
	for after := ""; scan; {
		users, err := d.db.StaleRemoteDeviceLists(ctx, after, resyncPage)
		if err != nil {
			if ctx.Err() == nil {
				d.log.ErrorContext(ctx, "federation: read stale device lists", "err", err)
			}
			break
		}
		s.mu.Lock()
		for _, u := range users {
			if _, failed := s.retry[u]; !failed && s.running[u] == nil {
				s.pending[u] = true
			}
		}
		s.mu.Unlock()
		if len(users) < resyncPage {
			break
		}
		after = users[len(users)-1]
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	next := resyncRetryMax
	for u, r := range s.retry {
		switch {
		case s.running[u] != nil || s.pending[u]:
			// Its fetch comes anyway.
		case !r.at.After(now):
			s.pending[u] = true
		default:
			next = min(next, r.at.Sub(now))
		}
	}
	for u := range s.pending {
		if len(s.running) >= resyncConcurrency {
			break
		}
		delete(s.pending, u)
		d.startResync(u)
	}
	return next
}

// startResync starts fetching userID's list and returns its run; s.mu is
// held and no fetch of theirs is running.
func (d *DeviceLists) startResync(userID string) *resyncRun {
	s := &d.sched
	r := &resyncRun{done: make(chan struct{})}
	s.running[userID] = r
	ctx := s.ctx
	s.wg.Go(func() {
		err := d.resync(ctx, userID)
		s.mu.Lock()
		delete(s.running, userID)
		switch {
		case err == nil:
			delete(s.retry, userID)
		case ctx.Err() == nil:
			f := s.retry[userID].failures + 1
			wait := min(s.retryMin<<min(f-1, 16), resyncRetryMax)
			s.retry[userID] = resyncRetry{failures: f, at: time.Now().Add(wait)}
			d.log.WarnContext(ctx, "federation: fetching a remote user's device list failed; their cache stays stale",
				"user_id", userID, "retry_in", wait, "err", err)
		}
		if r.again {
			s.pending[userID] = true
		}
		s.nudge()
		s.mu.Unlock()
		close(r.done)
	})
	return r
}

// ResyncStale fetches the lists of those of the users whose cache is
// stale, at once whatever their backoff, and waits for them until ctx
// ends; read the cache after. Past maxResyncs fetches running, the others
// are left to the background, unwaited. Before Start (and after stop) it
// does nothing.
func (d *DeviceLists) ResyncStale(ctx context.Context, userIDs []string) error {
	s := &d.sched
	s.mu.Lock()
	started := s.ctx != nil
	s.mu.Unlock()
	if !started || len(userIDs) == 0 {
		return nil
	}
	stale, err := d.db.StaleAmong(ctx, userIDs)
	if err != nil || len(stale) == 0 {
		return err
	}
	var runs []*resyncRun
	s.mu.Lock()
	if s.ctx == nil {
		s.mu.Unlock()
		return nil
	}
	for _, u := range stale {
		r := s.running[u]
		switch {
		case r != nil:
		case len(s.running) < maxResyncs:
			delete(s.pending, u)
			r = d.startResync(u)
		default:
			s.pending[u] = true
			s.nudge()
			continue
		}
		runs = append(runs, r)
	}
	s.mu.Unlock()
	for _, r := range runs {
		select {
		case <-r.done:
		case <-ctx.Done():
			return nil
		}
	}
	return nil
}

var _ e2ee.DeviceListResync = (*DeviceLists)(nil)
