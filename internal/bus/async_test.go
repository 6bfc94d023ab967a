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
