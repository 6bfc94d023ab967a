package bench

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// loopResult is how a measured loop went.
type loopResult struct {
	ok, failed int
	firstErr   error
	elapsed    time.Duration
	// capped: the -duration cap stopped the loop before n operations.
	capped bool
}

// loop is the measured phase of most scenarios: op(ctx, i) for i in [0, n)
// from workers goroutines, op i not before start + i/rate when rate > 0.
// A failed op is counted and the loop goes on, except for a rate limit,
// which ends the run: waiting it out would measure the limiter. No op
// starts after the -duration cap; the ones running finish.
func (r *runner) loop(ctx context.Context, n, workers int, rate float64, op func(ctx context.Context, i int) error) (loopResult, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		next, ok, failed atomic.Int64
		capped           atomic.Bool
		mu               sync.Mutex
		firstErr         error
		wg               sync.WaitGroup
	)
	start := time.Now()
	deadline := start.Add(r.o.Duration)
	for range min(workers, n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if rate > 0 {
					at := start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
					if !sleepUntil(ctx, at) {
						return
					}
				}
				if ctx.Err() != nil {
					return
				}
				if time.Now().After(deadline) {
					capped.Store(true)
					return
				}
				err := op(ctx, i)
				switch {
				case err == nil:
					ok.Add(1)
				case ctx.Err() != nil:
					return
				case isStatus(err, http.StatusTooManyRequests):
					cancel(measured(err))
					return
				default:
					failed.Add(1)
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	res := loopResult{ok: int(ok.Load()), failed: int(failed.Load()), firstErr: firstErr,
		elapsed: time.Since(start), capped: capped.Load()}
	// A rate limit's error, or the caller's cancellation.
	return res, context.Cause(ctx)
}

// sleepUntil waits for t; false when ctx ended first.
func sleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-timer.C:
		return true
	}
}

// report puts a loop's counts and remarks into res.
func (l loopResult) report(res *Result, what string) {
	res.Errors = l.failed
	if l.firstErr != nil {
		res.note("first error: %v", l.firstErr)
	}
	if l.capped {
		res.note("stopped by -duration after %d %s", l.ok+l.failed, what)
	}
}

// files checks that n concurrent connections fit in this process's
// open-file limit, and notes when the server's own limit looks too low.
func (r *runner) files(n int, res *Result) error {
	if err := ensureFiles(n + 64); err != nil {
		return err
	}
	if r.o.PID > 0 {
		if lim, err := serverFileLimit(r.o.PID); err == nil && lim < n+64 {
			res.note("the server may open only %d files; %d connections may not fit", lim, n)
		}
	}
	return nil
}
