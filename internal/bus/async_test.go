package bus

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"
)

// asyncBatch is a batch handed to a ConsumeAsync handler.
type asyncBatch struct {
	ns     []int
	finish func(error)
}

func consumeAsyncInto(t *testing.T, b *Bus, durable, subj string, maxBatch int, opts ...ConsumeOption) (<-chan asyncBatch, func()) {
	t.Helper()
	ch := make(chan asyncBatch, 64)
	stop, err := ConsumeAsync(t.Context(), b, StreamRoomInput, durable, subj, maxBatch, func(_ context.Context, evs []testEvent, finish func(error)) {
		var ns []int
		for _, ev := range evs {
			ns = append(ns, ev.N)
		}
		ch <- asyncBatch{ns, finish}
	}, opts...)
	if err != nil {
		t.Fatalf("ConsumeAsync: %v", err)
	}
	return ch, stop
}

func publishRange(t *testing.T, b *Bus, subj string, from, to int) {
	t.Helper()
	for i := from; i <= to; i++ {
		if err := Publish(t.Context(), b, subj, testEvent{N: i}); err != nil {
			t.Fatalf("Publish: %v", err)
		}
	}
}

// A batch left unfinished does not hold up the messages behind it, up to
// MaxAckPending of them; batches finish in any order and are all acked.
func TestConsumeAsyncDoesNotWait(t *testing.T) {
	b := openTest(t, Config{})
	subj := RoomInputSubject("!async:example.org", 4)
	batches, stop := consumeAsyncInto(t, b, "async", subj, 4)
	defer stop()

	publishRange(t, b, subj, 1, 1)
	first := recv(t, batches)
	publishRange(t, b, subj, 2, 6)
	var got []int
	var held []asyncBatch
	for len(got) < 3 { // MaxAckPending 4: three more while the first waits
		bt := recv(t, batches)
		got = append(got, bt.ns...)
		held = append(held, bt)
	}
	if !slices.Equal(got, []int{2, 3, 4}) {
		t.Fatalf("while 1 was unfinished got %v, want 2 3 4", got)
	}
	none(t, batches) // 5 and 6 wait for an ack
	for _, bt := range held {
		bt.finish(nil)
	}
	for len(got) < 5 {
		bt := recv(t, batches)
		got = append(got, bt.ns...)
		bt.finish(nil)
	}
	if !slices.Equal(got, []int{2, 3, 4, 5, 6}) {
		t.Fatalf("got %v, want 2 3 4 5 6", got)
	}
	first.finish(nil)
	first.finish(errors.New("a second finish is ignored"))
	waitEmpty(t, b, StreamRoomInput)
}

// A batch finished with an error comes back, and only it.
func TestConsumeAsyncErrorRedelivers(t *testing.T) {
	b := openTest(t, Config{})
	subj := RoomInputSubject("!asyncerr:example.org", 4)
	batches, stop := consumeAsyncInto(t, b, "asyncerr", subj, 4, NakDelay(50*time.Millisecond))
	defer stop()
	publishRange(t, b, subj, 1, 1)
	recv(t, batches).finish(errors.New("try again"))
	again := recv(t, batches)
	if !slices.Equal(again.ns, []int{1}) {
		t.Fatalf("redelivered %v, want 1", again.ns)
	}
	again.finish(nil)
	none(t, batches)
	waitEmpty(t, b, StreamRoomInput)
}

// Stopping waits for the batches handed over; what they did not finish
// well, and what was never handed over, another consumer gets.
func TestConsumeAsyncStop(t *testing.T) {
	b := openTest(t, Config{})
	subj := RoomInputSubject("!asyncstop:example.org", 4)
	batches, stop := consumeAsyncInto(t, b, "asyncstop", subj, 2, AckWait(2*time.Second))
	publishRange(t, b, subj, 1, 5)
	var held []asyncBatch
	n := 0
	for n < 2 {
		bt := recv(t, batches)
		held = append(held, bt)
		n += len(bt.ns)
	}
	stopped := make(chan struct{})
	go func() { stop(); stop(); close(stopped) }()
	select {
	case <-stopped:
		t.Fatal("stop returned with batches unfinished")
	case <-time.After(100 * time.Millisecond):
	}
	// One finishes its work, the others give up as the context ends.
	held[0].finish(nil)
	for _, bt := range held[1:] {
		bt.finish(context.Canceled)
	}
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("stop did not return")
	}

	var mu sync.Mutex
	var got []int
	all := make(chan struct{})
	want := 5 - len(held[0].ns)
	stop2, err := ConsumeAsync(t.Context(), b, StreamRoomInput, "asyncstop", subj, 8, func(_ context.Context, evs []testEvent, finish func(error)) {
		mu.Lock()
		defer mu.Unlock()
		for _, ev := range evs {
			got = append(got, ev.N)
		}
		finish(nil)
		if len(got) == want {
			close(all)
		}
	}, AckWait(2*time.Second))
	if err != nil {
		t.Fatalf("ConsumeAsync: %v", err)
	}
	defer stop2()
	select {
	case <-all:
	case <-time.After(10 * time.Second):
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("after stop, got %v, want the %d not acked", got, want)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, n := range held[0].ns {
		if slices.Contains(got, n) {
			t.Fatalf("message %d was acked and came back: %v", n, got)
		}
	}
}

// waitEmpty waits until the work queue has no message left: every one was
// acked.
func waitEmpty(t *testing.T, b *Bus, stream string) {
	t.Helper()
	s, err := b.JetStream().Stream(t.Context(), stream)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		info, err := s.Info(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still holds %d messages", stream, info.State.Msgs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// With MemoryState, a consumer that dies with messages taken but not acked
// finds them again when it is back, and not the ones it acked; a durable
// that kept its state on disk before is taken over.
func TestConsumeAsyncMemoryStateAfterRestart(t *testing.T) {
	dir := t.TempDir()
	subj := RoomInputSubject("!memstate:example.org", 4)
	b := openTest(t, Config{StoreDir: dir})
	// A durable from before MemoryState, with its state on disk.
	stopOld, err := ConsumeAsync(t.Context(), b, StreamRoomInput, "memstate", subj, 4, func(_ context.Context, _ []testEvent, finish func(error)) { finish(nil) })
	if err != nil {
		t.Fatalf("ConsumeAsync: %v", err)
	}
	stopOld()
	publish := func(from, to int) {
		for i := from; i <= to; i++ {
			if err := Publish(t.Context(), b, subj, testEvent{N: i}); err != nil {
				t.Fatalf("Publish: %v", err)
			}
		}
	}
	publish(1, 2)
	acked := make(chan int, 10)
	_, err = ConsumeAsync(t.Context(), b, StreamRoomInput, "memstate", subj, 2, func(_ context.Context, evs []testEvent, finish func(error)) {
		if evs[0].N >= 3 {
			return // dies with these taken: never finished
		}
		for _, ev := range evs {
			acked <- ev.N
		}
		finish(nil)
	}, MemoryState())
	if err != nil {
		t.Fatalf("ConsumeAsync with MemoryState over a durable with disk state: %v", err)
	}
	var got []int
	for len(got) < 2 {
		got = append(got, recv(t, acked))
	}
	publish(3, 6)
	waitAcked := time.Now().Add(5 * time.Second)
	for {
		s, err := b.JetStream().Stream(t.Context(), StreamRoomInput)
		if err != nil {
			t.Fatal(err)
		}
		info, err := s.Info(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs == 4 {
			break
		}
		if time.Now().After(waitAcked) {
			t.Fatalf("%d messages left, want 4", info.State.Msgs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The process dies: the bus goes without the consumer acking.
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	b = openTest(t, Config{StoreDir: dir})
	again := make(chan int, 10)
	stop, err := ConsumeAsync(t.Context(), b, StreamRoomInput, "memstate", subj, 8, func(_ context.Context, evs []testEvent, finish func(error)) {
		for _, ev := range evs {
			again <- ev.N
		}
		finish(nil)
	}, MemoryState())
	if err != nil {
		t.Fatalf("ConsumeAsync after restart: %v", err)
	}
	defer stop()
	var after []int
	deadline := time.After(10 * time.Second)
	for len(after) < 4 {
		select {
		case n := <-again:
			after = append(after, n)
		case <-deadline:
			t.Fatalf("after restart got %v, want 3 4 5 6", after)
		}
	}
	if !slices.Equal(after, []int{3, 4, 5, 6}) {
		t.Fatalf("after restart got %v, want 3 4 5 6", after)
	}
	none(t, again)
}

// With Pinned, two processes sharing a durable are not handed messages
// side by side: one has them all, in order, until it stops, and then the
// other within pinnedTTL. The durable was made unpinned first, as the
// push counter's was before it batched.
func TestConsumeAsyncPinned(t *testing.T) {
	b := openTest(t, Config{})
	subj := RoomOutputSubject("!pinned:example.org")
	plain, stopPlain := consumeInto(t, b, StreamRoomOutput, "pinned", subj, Ordered())
	publishRange(t, b, subj, 1, 1)
	if got := recv(t, plain); got.N != 1 {
		t.Fatalf("unpinned consumer got %d, want 1", got.N)
	}
	stopPlain()

	type handed struct {
		who string
		ns  []int
	}
	ch := make(chan handed, 256)
	start := func(who string) func() {
		stop, err := ConsumeAsync(t.Context(), b, StreamRoomOutput, "pinned", subj, 8, func(_ context.Context, evs []testEvent, finish func(error)) {
			h := handed{who: who}
			for _, ev := range evs {
				h.ns = append(h.ns, ev.N)
			}
			ch <- h
			finish(nil)
		}, Pinned())
		if err != nil {
			t.Fatalf("ConsumeAsync %s: %v", who, err)
		}
		t.Cleanup(stop)
		return stop
	}
	stops := map[string]func(){"a": start("a"), "b": start("b")}

	// collect waits for messages from..to and returns who had them.
	collect := func(from, to int, wait time.Duration) string {
		t.Helper()
		who, next := "", from
		deadline := time.After(wait)
		for next <= to {
			select {
			case h := <-ch:
				if who == "" {
					who = h.who
				}
				if h.who != who {
					t.Fatalf("%s was handed %v while %s held the pin", h.who, h.ns, who)
				}
				for _, n := range h.ns {
					if n != next {
						t.Fatalf("%s was handed %d, want %d (order)", who, n, next)
					}
					next++
				}
			case <-deadline:
				t.Fatalf("timed out at message %d of %d..%d", next, from, to)
			}
		}
		return who
	}
	publishRange(t, b, subj, 2, 40)
	pinned := collect(2, 40, 5*time.Second)

	stops[pinned]()
	publishRange(t, b, subj, 41, 45)
	if other := collect(41, 45, pinnedTTL+5*time.Second); other == pinned {
		t.Fatalf("%s was handed messages after it stopped", other)
	}
}
