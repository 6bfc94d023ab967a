package roomserver

import (
	"context"
	"sync"
)

// dispatcher runs the inputs of the shards this process consumes: each
// room's inputs one batch at a time, in the order they came, and
// different rooms' at the same time. A shard's consumer hands its inputs
// over and goes on taking more, so an input does not wait behind the
// commit of another room that happens to share its shard; a room's
// inputs that queue up while one of its batches commits make its next
// batch.
//
// Rooms with inputs waiting are run by a pool of workers that lives as
// long as the dispatcher: a goroutine started per run would have to grow
// its stack again each time (event building and signing go deep).
type dispatcher struct {
	mu    sync.Mutex
	wake  sync.Cond
	rooms map[string][]queuedInput // rooms with inputs running or waiting
	ready []string                 // rooms waiting for a worker
	idle  int                      // workers waiting for a room
	// workers counts the workers started, stopped tells them to end.
	workers int
	stopped bool
	exited  sync.WaitGroup
	// handleRoom handles a batch of one room's inputs and replies to
	// them (Roomserver.handleEnvelopes).
	handleRoom func(context.Context, []envelope) error
}

// maxWorkers bounds the rooms run at once; more wait for a worker. It is
// well above what one group commit takes in (see groupCommit).
const maxWorkers = 128

func newDispatcher(handleRoom func(context.Context, []envelope) error) *dispatcher {
	d := &dispatcher{handleRoom: handleRoom, rooms: make(map[string][]queuedInput)}
	d.wake.L = &d.mu
	return d
}

// stop ends the workers once no room has inputs left; the consumers
// that hand inputs over must have stopped.
func (d *dispatcher) stop() {
	d.mu.Lock()
	d.stopped = true
	d.wake.Broadcast()
	d.mu.Unlock()
	d.exited.Wait()
}

// queuedInput is an input waiting for its room's turn, with the batch of
// the bus it came in.
type queuedInput struct {
	ctx   context.Context
	env   envelope
	batch *busBatch
}

// busBatch is a batch of inputs taken from a shard together, acked
// together once each of its inputs is handled and replied to.
type busBatch struct {
	mu     sync.Mutex
	left   int
	err    error
	finish func(error)
}

func (b *busBatch) done(err error) {
	b.mu.Lock()
	b.left--
	if err != nil && b.err == nil {
		b.err = err
	}
	last, berr := b.left == 0, b.err
	b.mu.Unlock()
	if last {
		b.finish(berr)
	}
}

// roomKey is the key inputs are ordered by: the room, or for a new room
// the input itself, which orders it with nothing.
func roomKey(req InputRequest) string {
	if req.RoomID != "" {
		return req.RoomID
	}
	return "\x00new " + req.InputID
}

// handle queues a shard's batch of inputs, each in its room's queue,
// and wakes or starts workers for the rooms that were idle. It does not
// wait for them.
func (d *dispatcher) handle(ctx context.Context, envs []envelope, finish func(error)) {
	b := &busBatch{left: len(envs), finish: finish}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, env := range envs {
		k := roomKey(env.Req)
		q, busy := d.rooms[k]
		if !busy {
			d.ready = append(d.ready, k)
			if d.idle > 0 {
				d.idle--
				d.wake.Signal()
			} else if d.workers < maxWorkers {
				d.workers++
				d.exited.Add(1)
				go d.work()
			}
		}
		d.rooms[k] = append(q, queuedInput{ctx: ctx, env: env, batch: b})
	}
}

// work runs rooms as they become ready until the dispatcher stops.
func (d *dispatcher) work() {
	defer d.exited.Done()
	d.mu.Lock()
	for {
		for len(d.ready) == 0 {
			if d.stopped {
				d.mu.Unlock()
				return
			}
			// handle counts a worker it signals as no longer idle.
			d.idle++
			d.wake.Wait()
		}
		room := d.ready[0]
		d.ready = d.ready[1:]
		d.mu.Unlock()
		d.run(room)
		d.mu.Lock()
	}
}

// run handles a room's inputs until its queue is empty, up to
// maxInputBatch at a time: those that queued while the previous ones
// were being committed go together, in one transaction.
func (d *dispatcher) run(room string) {
	for {
		d.mu.Lock()
		q := d.rooms[room]
		if len(q) == 0 {
			delete(d.rooms, room)
			d.mu.Unlock()
			return
		}
		n := min(len(q), maxInputBatch)
		batch := q[:n:n]
		d.rooms[room] = q[n:]
		d.mu.Unlock()

		ctx := batch[0].ctx
		if err := ctx.Err(); err != nil {
			// The consumer is stopping: the inputs go back to the bus,
			// for whoever consumes the shard next.
			for _, in := range batch {
				in.batch.done(err)
			}
			continue
		}
		envs := make([]envelope, n)
		for i, in := range batch {
			envs[i] = in.env
		}
		err := d.handleRoom(ctx, envs)
		for _, in := range batch {
			in.batch.done(err)
		}
	}
}
