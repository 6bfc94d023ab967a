package bench

import (
	"context"
	"fmt"
	"net/http"
	"time"
)

// runRegister measures registrations: N new users, C at a time. With the
// dummy stage a registration may take two requests (the UIA session
// first); its latency covers both.
func runRegister(ctx context.Context, r *runner) (*Result, error) {
	o := r.o
	res := &Result{Params: map[string]any{"users": o.Users, "concurrency": o.Concurrency,
		"shared_secret": o.SharedSecret != ""}}
	if err := r.files(o.Concurrency, res); err != nil {
		return nil, err
	}
	mem, err := r.watchMemory()
	if err != nil {
		return nil, err
	}
	r.logf("measuring: %d registrations", o.Users)
	var lat recorder
	l, err := r.loop(ctx, o.Users, o.Concurrency, 0, func(ctx context.Context, i int) error {
		t0 := time.Now()
		if _, err := r.registerUser(ctx, i); err != nil {
			return err
		}
		lat.add(time.Since(t0))
		return nil
	})
	if err != nil {
		return nil, err
	}
	res.finish(l.ok, l.elapsed)
	res.LatencyMS = lat.latency()
	l.report(res, "registrations")
	return res, mem.done(res)
}

// runSend measures sends into one room: M messages from S senders (all
// members of the room), C in flight.
func runSend(ctx context.Context, r *runner) (*Result, error) {
	o := r.o
	res := &Result{Params: map[string]any{"messages": o.Messages, "senders": o.Senders, "concurrency": o.Concurrency}}
	if err := r.files(o.Concurrency, res); err != nil {
		return nil, err
	}
	users, err := r.registerUsers(ctx, 0, o.Senders)
	if err != nil {
		return nil, err
	}
	members := make([]int, len(users))
	for i := range members {
		members[i] = i
	}
	rooms, err := r.makeRooms(ctx, users, [][]int{members})
	if err != nil {
		return nil, err
	}
	mem, err := r.watchMemory()
	if err != nil {
		return nil, err
	}
	r.logf("measuring: %d sends", o.Messages)
	var lat recorder
	l, err := r.loop(ctx, o.Messages, o.Concurrency, 0, func(ctx context.Context, i int) error {
		t0 := time.Now()
		if err := r.c.send(ctx, users[i%len(users)], rooms[0], r.run, i); err != nil {
			return err
		}
		lat.add(time.Since(t0))
		return nil
	})
	if err != nil {
		return nil, err
	}
	res.finish(l.ok, l.elapsed)
	res.LatencyMS = lat.latency()
	l.report(res, "sends")
	return res, mem.done(res)
}

// initialSyncTarget is the goal for a full initial sync.
const initialSyncTarget = 100 * time.Millisecond

// runInitialSync measures a full initial /sync (no filter, as a client
// logging in makes it) of one user in R rooms of E messages each, Repeat
// times one after the other.
func runInitialSync(ctx context.Context, r *runner) (*Result, error) {
	o := r.o
	res := &Result{Params: map[string]any{"rooms": o.Rooms, "events": o.Events, "repeat": o.Repeat}}
	if err := r.files(setupConcurrency, res); err != nil {
		return nil, err
	}
	users, err := r.registerUsers(ctx, 0, 1)
	if err != nil {
		return nil, err
	}
	members := make([][]int, o.Rooms)
	for i := range members {
		members[i] = []int{0}
	}
	rooms, err := r.makeRooms(ctx, users, members)
	if err != nil {
		return nil, err
	}
	r.logf("setup: %d messages", o.Rooms*o.Events)
	err = parallel(ctx, o.Rooms*o.Events, setupConcurrency, func(ctx context.Context, i int) error {
		return r.c.setup(ctx, func() error { return r.c.send(ctx, users[0], rooms[i%o.Rooms], r.run, i) })
	})
	if err != nil {
		return nil, fmt.Errorf("setup: send: %w", err)
	}
	if _, err := r.settle(ctx, res, "the setup"); err != nil {
		return nil, err
	}
	mem, err := r.watchMemory()
	if err != nil {
		return nil, err
	}
	r.logf("measuring: %d initial syncs", o.Repeat)
	var (
		lat  recorder
		size int
	)
	l, err := r.loop(ctx, o.Repeat, 1, 0, func(ctx context.Context, i int) error {
		var out syncResponse
		t0 := time.Now()
		at, err := r.c.do(ctx, request{method: http.MethodGet, path: clientPrefix + "/sync", token: users[0].Token, out: &out, size: &size})
		if err != nil {
			return err
		}
		if len(out.Rooms.Join) != o.Rooms {
			return fmt.Errorf("initial sync has %d joined rooms, want %d", len(out.Rooms.Join), o.Rooms)
		}
		lat.add(at.Sub(t0))
		return nil
	})
	if err != nil {
		return nil, err
	}
	res.finish(l.ok, l.elapsed)
	res.LatencyMS = lat.latency()
	l.report(res, "initial syncs")
	if res.LatencyMS != nil {
		res.target(fmt.Sprintf("p99 <= %d ms", initialSyncTarget.Milliseconds()), res.LatencyMS.P99 <= float64(initialSyncTarget.Milliseconds()))
		res.note("initial sync response: %.1f KiB", float64(size)/1024)
	}
	return res, mem.done(res)
}
