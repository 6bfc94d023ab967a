package bench

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
)

// setupConcurrency is how many setup requests run at once: enough to keep
// a server's cores busy, few enough not to queue for long.
const setupConcurrency = 16

// parallel calls f(ctx, i) for i in [0, n) from up to workers goroutines
// and returns the first error, after which no new call starts.
func parallel(ctx context.Context, n, workers int, f func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next     atomic.Int64
		once     sync.Once
		firstErr error
		wg       sync.WaitGroup
	)
	for range min(workers, n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := f(ctx, i); err != nil {
					once.Do(func() { firstErr = err; cancel() })
					return
				}
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	return ctx.Err()
}

// localpart names user i of the run.
func (r *runner) localpart(i int) string { return fmt.Sprintf("weftbench_%s_%d", r.run, i) }

func (r *runner) password() string { return "weft-bench-" + r.run }

// registerUser creates user i of the run, through shared-secret
// registration when a secret was given.
func (r *runner) registerUser(ctx context.Context, i int) (*user, error) {
	if r.o.SharedSecret != "" {
		return r.c.registerShared(ctx, r.o.SharedSecret, r.localpart(i), r.password())
	}
	return r.c.register(ctx, r.localpart(i), r.password())
}

// registerUsers creates users [from, from+n) in setup.
func (r *runner) registerUsers(ctx context.Context, from, n int) ([]*user, error) {
	r.logf("setup: registering %d users", n)
	users := make([]*user, n)
	err := parallel(ctx, n, setupConcurrency, func(ctx context.Context, i int) error {
		return r.c.setup(ctx, func() (err error) {
			users[i], err = r.registerUser(ctx, from+i)
			return err
		})
	})
	if err != nil {
		return nil, fmt.Errorf("setup: register: %w", err)
	}
	return users, nil
}

// makeRooms creates len(members) rooms, room i by members[i][0], and
// joins the other members to it.
func (r *runner) makeRooms(ctx context.Context, users []*user, members [][]int) ([]string, error) {
	r.logf("setup: creating %d rooms", len(members))
	rooms := make([]string, len(members))
	err := parallel(ctx, len(members), setupConcurrency, func(ctx context.Context, i int) error {
		return r.c.setup(ctx, func() (err error) {
			rooms[i], err = r.c.createRoom(ctx, users[members[i][0]], fmt.Sprintf("%s-%d", r.run, i))
			return err
		})
	})
	if err != nil {
		return nil, fmt.Errorf("setup: create room: %w", err)
	}
	type joiner struct{ room, user int }
	var joins []joiner
	for i, m := range members {
		for _, u := range m[1:] {
			joins = append(joins, joiner{i, u})
		}
	}
	if len(joins) > 0 {
		r.logf("setup: %d joins", len(joins))
	}
	err = parallel(ctx, len(joins), setupConcurrency, func(ctx context.Context, i int) error {
		j := joins[i]
		return r.c.setup(ctx, func() error { return r.c.join(ctx, users[j.user], rooms[j.room]) })
	})
	if err != nil {
		return nil, fmt.Errorf("setup: join: %w", err)
	}
	return rooms, nil
}

// uploadFilters stores filter(i) as a filter of user i and returns their
// ids.
func (r *runner) uploadFilters(ctx context.Context, users []*user, filter func(i int) any) ([]string, error) {
	r.logf("setup: %d filters", len(users))
	ids := make([]string, len(users))
	err := parallel(ctx, len(users), setupConcurrency, func(ctx context.Context, i int) error {
		return r.c.setup(ctx, func() error {
			var err error
			ids[i], err = r.c.uploadFilter(ctx, users[i], filter(i))
			return err
		})
	})
	if err != nil {
		return nil, fmt.Errorf("setup: filter: %w", err)
	}
	return ids, nil
}

// initialSyncs gives every user a since token for filter(i).
func (r *runner) initialSyncs(ctx context.Context, users []*user, filter func(i int) string) ([]string, error) {
	r.logf("setup: %d initial syncs", len(users))
	tokens := make([]string, len(users))
	err := parallel(ctx, len(users), setupConcurrency, func(ctx context.Context, i int) error {
		return r.c.setup(ctx, func() error {
			res, _, err := r.c.sync(ctx, users[i], "", filter(i), 0, nil)
			tokens[i] = res.NextBatch
			return err
		})
	})
	if err != nil {
		return nil, fmt.Errorf("setup: initial sync: %w", err)
	}
	return tokens, nil
}
