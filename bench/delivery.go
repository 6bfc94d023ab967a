package bench

import (
	"context"
	"fmt"
	"net/http/httptrace"
	"sync"
	"time"
)

// The goals for the delivery scenarios.
const (
	fanoutTargetP99 = 25 * time.Millisecond
	roomsTargetP99  = 100 * time.Millisecond
	roomsTargetRate = 1000 // messages per second
)

// roomMembers is the size of every room of the rooms scenario.
const roomMembers = 3

// longPoll is the /sync timeout of the long-polls, as clients ask (a
// variable for tests).
var longPoll = 30 * time.Second

// deliveryGrace is how long the members may take, after the last send, to
// receive everything before the missing deliveries count as lost.
const deliveryGrace = 10 * time.Second

// runFanout: U members of one room long-poll; member 0 sends K messages at
// the fixed rate; every member should receive every message.
func runFanout(ctx context.Context, r *runner) (*Result, error) {
	o := r.o
	res := &Result{Params: map[string]any{"users": o.Users, "messages": o.Messages, "rate": o.Rate}}
	if err := r.files(o.Users+o.Concurrency, res); err != nil {
		return nil, err
	}
	room := make([]int, o.Users)
	for i := range room {
		room[i] = i
	}
	p := plan{members: [][]int{room}, sender: func(int) (int, int) { return 0, 0 }}
	if err := r.deliveries(ctx, res, p, o.Users, o.Messages, o.Concurrency, o.Rate); err != nil {
		return nil, err
	}
	if l := res.LatencyMS; l != nil {
		res.target(fmt.Sprintf("p99 <= %d ms", fanoutTargetP99.Milliseconds()),
			l.P99 <= float64(fanoutTargetP99.Milliseconds()) && res.Deliveries.Lost == 0)
	}
	return res, nil
}

// runRooms: R rooms of 3 members, all long-polling; concurrent senders
// send M messages round-robin over the rooms (member i of a room sends its
// i-th, i+3-th, … message), as fast as the server takes them or at -rate.
// With fewer users than 3R, users share rooms.
func runRooms(ctx context.Context, r *runner) (*Result, error) {
	o := r.o
	res := &Result{Params: map[string]any{"rooms": o.Rooms, "users": o.Users, "messages": o.Messages,
		"concurrency": o.Concurrency, "rate": o.Rate}}
	if err := r.files(o.Users+o.Concurrency, res); err != nil {
		return nil, err
	}
	members := make([][]int, o.Rooms)
	for i := range members {
		for j := range roomMembers {
			members[i] = append(members[i], (roomMembers*i+j)%o.Users)
		}
	}
	p := plan{members: members, sender: func(seq int) (int, int) {
		return seq % o.Rooms, seq / o.Rooms % roomMembers
	}}
	if err := r.deliveries(ctx, res, p, o.Users, o.Messages, o.Concurrency, o.Rate); err != nil {
		return nil, err
	}
	if l := res.LatencyMS; l != nil {
		res.target(fmt.Sprintf(">= %d msg/s with p99 <= %d ms", roomsTargetRate, roomsTargetP99.Milliseconds()),
			res.ThroughputPerS >= roomsTargetRate && l.P99 <= float64(roomsTargetP99.Milliseconds()) && res.Deliveries.Lost == 0)
	}
	return res, nil
}

// plan is the rooms of a delivery scenario: members[room] are user
// indexes, and message seq goes to room and is sent by member
// members[room][m], where room, m = sender(seq).
type plan struct {
	members [][]int
	sender  func(seq int) (room, m int)
}

// deliveries registers the users, makes the rooms, starts a long-polling
// sync loop per user and, once they all wait, sends n messages as loop
// does; then it waits for the deliveries and fills res.
func (r *runner) deliveries(ctx context.Context, res *Result, p plan, nUsers, n, workers int, rate float64) error {
	users, err := r.registerUsers(ctx, 0, nUsers)
	if err != nil {
		return err
	}
	rooms, err := r.makeRooms(ctx, users, p.members)
	if err != nil {
		return err
	}
	// Where each user sits in each of its rooms: deliveries are counted by
	// (message, position).
	userRooms := make([][]string, nUsers)
	pos := make([]map[string]int, nUsers)
	stride := 0
	for ri, m := range p.members {
		stride = max(stride, len(m))
		for j, u := range m {
			if pos[u] == nil {
				pos[u] = map[string]int{}
			}
			pos[u][rooms[ri]] = j
			userRooms[u] = append(userRooms[u], rooms[ri])
		}
	}
	filters, err := r.uploadFilters(ctx, users, func(i int) any { return roomFilter(userRooms[i]) })
	if err != nil {
		return err
	}
	tokens, err := r.initialSyncs(ctx, users, func(i int) string { return filters[i] })
	if err != nil {
		return err
	}
	if _, err := r.settle(ctx, res, "the setup"); err != nil {
		return err
	}

	t := newTracker(n, stride)
	loops, stopLoops := context.WithCancel(ctx)
	var wg, waiting sync.WaitGroup
	defer func() { stopLoops(); wg.Wait() }()
	waiting.Add(nUsers)
	for i, u := range users {
		wg.Go(func() {
			r.syncLoop(loops, t, u, tokens[i], filters[i], pos[i], waiting.Done)
		})
	}
	// Wait for every long-poll to be on the wire, and for the server to be
	// done with them, so that the first messages do not also measure the
	// loops starting: a server may read and build each first poll (from a
	// token older than the other members' initial syncs) before it waits,
	// which the first messages would otherwise queue behind.
	waiting.Wait()
	if _, err := r.settle(ctx, res, "the long-polls started"); err != nil {
		return err
	}

	mem, err := r.watchMemory()
	if err != nil {
		return err
	}
	r.logf("measuring: %d messages to %d members", n, nUsers)
	var sendLat recorder
	l, err := r.loop(ctx, n, workers, rate, func(ctx context.Context, seq int) error {
		room, m := p.sender(seq)
		t.sending(seq)
		t0 := time.Now()
		if err := r.c.send(ctx, users[p.members[room][m]], rooms[room], r.run, seq); err != nil {
			return err
		}
		sendLat.add(time.Since(t0))
		t.sent(seq, len(p.members[room]))
		return nil
	})
	if err != nil {
		return err
	}
	select {
	case <-t.sendsDone():
	case <-time.After(deliveryGrace):
		res.note("deliveries still missing %s after the last send", deliveryGrace)
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := mem.done(res); err != nil {
		return err
	}
	stopLoops()
	wg.Wait()
	// Work the messages left behind (counting their notifications, say)
	// is part of their cost: a server that puts it off looks faster over
	// the measured phase than it can keep up with.
	if res.ServerCPUAfterS, err = r.settle(ctx, res, "the last delivery"); err != nil {
		return err
	}
	res.ServerCPUAfterS = round(res.ServerCPUAfterS)

	res.finish(l.ok, l.elapsed)
	res.LatencyMS = t.lat.latency()
	res.SendLatencyMS = sendLat.latency()
	l.report(res, "messages")
	t.report(res)
	return nil
}

// syncLoop long-polls /sync as u until ctx ends and hands the messages of
// the run to t; waiting is called once its first long-poll is on the wire
// (or has failed).
func (r *runner) syncLoop(ctx context.Context, t *tracker, u *user, since, filter string, pos map[string]int, waiting func()) {
	var once sync.Once
	defer once.Do(waiting)
	trace := &httptrace.ClientTrace{WroteRequest: func(httptrace.WroteRequestInfo) { once.Do(waiting) }}
	for ctx.Err() == nil {
		res, at, err := r.c.sync(ctx, u, since, filter, longPoll, trace)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			// The same since again: a failed poll loses nothing.
			t.syncFailed(err)
			once.Do(waiting)
			sleepUntil(ctx, time.Now().Add(200*time.Millisecond))
			continue
		}
		trace = nil
		for roomID, jr := range res.Rooms.Join {
			p, ok := pos[roomID]
			if !ok {
				continue
			}
			if jr.Timeline.Limited {
				t.limitedTimeline()
			}
			for _, ev := range jr.Timeline.Events {
				if tag, ok := parseTag(ev.Content.Tag); ok && tag.Run == r.run {
					t.deliver(tag.Seq, p, at)
				}
			}
		}
		since = res.NextBatch
	}
}
