package bus

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"
)

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

// Messages that queue up while a batch is handled come as one batch, in
// order, each once, no batch larger than asked, all acked.
func TestConsumeBatchGroupsQueuedMessages(t *testing.T) {
	b := openTest(t, Config{})
	subj := RoomInputSubject("!batch:example.org", 4)
	const total, maxBatch = 40, 8

	var (
		mu      sync.Mutex
		seen    []int
		batches []int
	)
	release := make(chan struct{})
	done := make(chan struct{})
	stop, err := ConsumeBatch(t.Context(), b, StreamRoomInput, "batch", subj, maxBatch, func(_ context.Context, evs []testEvent) error {
		mu.Lock()
		first := len(batches) == 0
		batches = append(batches, len(evs))
		for _, ev := range evs {
			seen = append(seen, ev.N)
		}
		finished := len(seen) == total
		mu.Unlock()
		if first {
			<-release // the rest queue up meanwhile
		}
		if finished {
			close(done)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("ConsumeBatch: %v", err)
	}
	defer stop()
	for i := 1; i <= total; i++ {
		if err := Publish(t.Context(), b, subj, testEvent{N: i}); err != nil {
			t.Fatalf("Publish: %v", err)
		}
	}
	time.Sleep(200 * time.Millisecond) // let the reader fill the batch
	close(release)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("timed out")
	}
	mu.Lock()
	defer mu.Unlock()
	for i, n := range seen {
		if n != i+1 {
			t.Fatalf("handled %v, want 1..%d in order, once each", seen, total)
		}
	}
	if slices.Max(batches) > maxBatch {
		t.Fatalf("batches %v exceed %d", batches, maxBatch)
	}
	if len(batches) < 2 || batches[1] < 2 {
		t.Fatalf("batches %v: the messages queued behind the first batch were not grouped", batches)
	}
	waitEmpty(t, b, StreamRoomInput)
}

// A failed batch is redelivered whole and in order, after which the
// stream goes on.
func TestConsumeBatchErrorRedeliversBatch(t *testing.T) {
	b := openTest(t, Config{})
	subj := RoomInputSubject("!batchretry:example.org", 4)
	const total = 10
	for i := 1; i <= total; i++ {
		if err := Publish(t.Context(), b, subj, testEvent{N: i}); err != nil {
			t.Fatalf("Publish: %v", err)
		}
	}
	var (
		mu     sync.Mutex
		failed bool
		good   []int
		tries  int
	)
	done := make(chan struct{})
	stop, err := ConsumeBatch(t.Context(), b, StreamRoomInput, "batchretry", subj, 4, func(_ context.Context, evs []testEvent) error {
		mu.Lock()
		defer mu.Unlock()
		tries++
		if !failed && slices.ContainsFunc(evs, func(ev testEvent) bool { return ev.N == 3 }) {
			failed = true
			return errors.New("transient")
		}
		for _, ev := range evs {
			good = append(good, ev.N)
		}
		if len(good) >= total {
			close(done)
		}
		return nil
	}, NakDelay(20*time.Millisecond))
	if err != nil {
		t.Fatalf("ConsumeBatch: %v", err)
	}
	defer stop()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("timed out with %v handled in %d tries", good, tries)
	}
	mu.Lock()
	defer mu.Unlock()
	// Messages after the failed batch may have been handled before its
	// redelivery (MaxAckPending above 1), but none is lost or doubled.
	got := slices.Clone(good)
	slices.Sort(got)
	for i, n := range got {
		if n != i+1 || len(got) != total {
			t.Fatalf("handled %v, want each of 1..%d once", good, total)
		}
	}
	if !failed || tries < 2 {
		t.Fatalf("the failing batch was not retried (%d tries)", tries)
	}
	waitEmpty(t, b, StreamRoomInput)
}

// Stopping returns while messages are still queued, and hands them back:
// none is lost. (One the server had on its way when the consumer stopped
// listening comes back only after AckWait, short here.)
func TestConsumeBatchStop(t *testing.T) {
	b := openTest(t, Config{})
	subj := RoomInputSubject("!batchstop:example.org", 4)
	for i := 1; i <= 5; i++ {
		if err := Publish(t.Context(), b, subj, testEvent{N: i}); err != nil {
			t.Fatalf("Publish: %v", err)
		}
	}
	started := make(chan struct{}, 10)
	unblock := make(chan struct{})
	stop, err := ConsumeBatch(t.Context(), b, StreamRoomInput, "batchstop", subj, 2, func(ctx context.Context, evs []testEvent) error {
		started <- struct{}{}
		<-unblock
		return ctx.Err()
	}, AckWait(2*time.Second))
	if err != nil {
		t.Fatalf("ConsumeBatch: %v", err)
	}
	recv(t, started)
	stopped := make(chan struct{})
	go func() { stop(); stop(); close(stopped) }()
	time.Sleep(50 * time.Millisecond)
	close(unblock)
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("stop did not return")
	}

	// Nothing was acked: another consumer on the durable gets all five.
	var mu sync.Mutex
	var got []int
	all := make(chan struct{})
	stop2, err := ConsumeBatch(t.Context(), b, StreamRoomInput, "batchstop", subj, 8, func(_ context.Context, evs []testEvent) error {
		mu.Lock()
		defer mu.Unlock()
		for _, ev := range evs {
			got = append(got, ev.N)
		}
		if len(got) == 5 {
			close(all)
		}
		return nil
	}, AckWait(2*time.Second))
	if err != nil {
		t.Fatalf("ConsumeBatch: %v", err)
	}
	defer stop2()
	select {
	case <-all:
	case <-time.After(10 * time.Second):
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("after stop, got %v of the 5 messages", got)
	}
}

// With MemoryState, a consumer that dies with messages taken but not acked
// finds them again when it is back, and not the ones it acked; a durable
// that kept its state on disk before is taken over.
func TestConsumeBatchMemoryStateAfterRestart(t *testing.T) {
	dir := t.TempDir()
	subj := RoomInputSubject("!memstate:example.org", 4)
	b := openTest(t, Config{StoreDir: dir})
	// A durable from before MemoryState, with its state on disk.
	stopOld, err := ConsumeBatch(t.Context(), b, StreamRoomInput, "memstate", subj, 4, func(context.Context, []testEvent) error { return nil })
	if err != nil {
		t.Fatalf("ConsumeBatch: %v", err)
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
	stuck := make(chan struct{})
	defer close(stuck)
	_, err = ConsumeBatch(t.Context(), b, StreamRoomInput, "memstate", subj, 2, func(_ context.Context, evs []testEvent) error {
		if evs[0].N >= 3 {
			<-stuck // dies with these taken
			return errors.New("gone")
		}
		for _, ev := range evs {
			acked <- ev.N
		}
		return nil
	}, MemoryState())
	if err != nil {
		t.Fatalf("ConsumeBatch with MemoryState over a durable with disk state: %v", err)
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
	stop, err := ConsumeBatch(t.Context(), b, StreamRoomInput, "memstate", subj, 8, func(_ context.Context, evs []testEvent) error {
		for _, ev := range evs {
			again <- ev.N
		}
		return nil
	}, MemoryState())
	if err != nil {
		t.Fatalf("ConsumeBatch after restart: %v", err)
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
