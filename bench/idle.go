package bench

import (
	"context"
	"fmt"
	"net/http/httptrace"
	"sync"
	"time"
)

// The goal: 10,000 idle long-polls cost the server at most
// 300 MiB; fewer are held to the same share.
const (
	idleTargetMiB   = 300.0
	idleTargetPolls = 10_000
)

// idleSettle is how long the long-polls sit open at least before the memory
// is read, so that the server has finished taking them in (with a pid, the
// bench also waits for the server to go quiet: a request written is not
// yet a request the server has taken in).
const idleSettle = 3 * time.Second

// runIdle opens N /sync long-polls, each on its own connection, spread
// over U users, and reads the server's memory while they all wait. The
// latency is the time to open one: connect and send the request.
func runIdle(ctx context.Context, r *runner) (*Result, error) {
	o := r.o
	res := &Result{Params: map[string]any{"users": o.Users, "connections": o.Connections, "concurrency": o.Concurrency}}
	if err := r.files(o.Connections+setupConcurrency, res); err != nil {
		return nil, err
	}
	users, err := r.registerUsers(ctx, 0, o.Users)
	if err != nil {
		return nil, err
	}
	tokens, err := r.initialSyncs(ctx, users, func(int) string { return "" })
	if err != nil {
		return nil, err
	}
	mem, err := r.watchMemory()
	if err != nil {
		return nil, err
	}

	polls, stopPolls := context.WithCancel(ctx)
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		renewed int // long-polls that timed out and were made again
		failed  int // long-polls that failed after they opened
		lastErr error
		lat     recorder
	)
	defer func() { stopPolls(); wg.Wait() }()
	r.logf("measuring: opening %d long-polls", o.Connections)
	l, err := r.loop(ctx, o.Connections, o.Concurrency, 0, func(ctx context.Context, i int) error {
		u := i % len(users)
		// Synapse answers identical concurrent syncs of a user from one
		// cache entry: a timeout a millisecond apart per poll of a user
		// keeps them distinct, as distinct clients would be.
		timeout := longPoll + time.Duration(i/len(users))*time.Millisecond
		opened := make(chan error, 1)
		report := func(err error) {
			select {
			case opened <- err:
			default: // a retried request may report twice; the first counts
			}
		}
		trace := &httptrace.ClientTrace{WroteRequest: func(w httptrace.WroteRequestInfo) { report(w.Err) }}
		t0 := time.Now()
		wg.Go(func() {
			// As an idle client does, poll again when a long-poll times
			// out, so that all N stay open however long opening takes.
			since := tokens[u]
			for {
				res, _, err := r.c.sync(polls, users[u], since, "", timeout, trace)
				if polls.Err() != nil {
					return
				}
				report(err)
				mu.Lock()
				if err != nil {
					failed++
					lastErr = err
				} else {
					renewed++
				}
				mu.Unlock()
				if err != nil {
					return
				}
				since, trace = res.NextBatch, nil
			}
		})
		select {
		case err := <-opened:
			if err != nil {
				return err
			}
			lat.add(time.Since(t0))
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	if err != nil {
		return nil, err
	}
	r.logf("measuring: %d long-polls open, waiting %s", l.ok, idleSettle)
	settled := time.Now()
	if !sleepUntil(ctx, settled.Add(idleSettle)) {
		return nil, ctx.Err()
	}
	if _, err := r.settle(ctx, res, "the long-polls opened"); err != nil {
		return nil, err
	}
	if err := mem.done(res); err != nil {
		return nil, err
	}
	stopPolls()
	wg.Wait()

	res.finish(l.ok, l.elapsed)
	res.LatencyMS = lat.latency()
	l.report(res, "long-polls")
	res.note("latency is the time to open a long-poll (connect and send the request)")
	// Failures of the first request are the loop's errors already.
	if failed -= l.failed; failed > 0 {
		res.Errors += failed
		res.note("%d long-polls failed after they opened; the last: %v", failed, lastErr)
	}
	if renewed > 0 {
		res.note("%d long-polls timed out and were renewed during the measurement", renewed)
	}
	if m := res.RSSMiB; m != nil {
		limit := idleTargetMiB * float64(o.Connections) / idleTargetPolls
		res.target(fmt.Sprintf("RSS growth <= %.1f MiB (%.0f MiB per %d long-polls)", limit, idleTargetMiB, idleTargetPolls),
			m.After-m.Before <= limit && failed <= 0)
	}
	return res, nil
}
