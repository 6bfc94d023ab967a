// Package periodic runs background work at an interval.
package periodic

import (
	"context"
	"sync"
	"time"
)

// Start calls f every interval until ctx ends or the returned stop is
// called; stop waits for a call in progress. f gets a context that ends
// at stop.
func Start(ctx context.Context, interval time.Duration, f func(context.Context)) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			f(ctx)
		}
	})
	return func() { cancel(); wg.Wait() }
}
