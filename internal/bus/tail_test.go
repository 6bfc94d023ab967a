package bus

import (
	"context"
	"testing"
)

// TestTail: a tail sees what is published after it starts, in order, and
// not what came before; each tail sees everything (no shared position);
// stop ends it.
func TestTail(t *testing.T) {
	b := openTest(t, Config{})
	subject := RoomOutputSubject("!tail:x")
	if err := Publish(t.Context(), b, subject, testEvent{N: -1}); err != nil {
		t.Fatal(err)
	}
	tail := func() (<-chan testEvent, func()) {
		ch := make(chan testEvent, 16)
		stop, err := Tail(t.Context(), b, StreamRoomOutput, RoomOutputSubjects, func(_ context.Context, ev testEvent) { ch <- ev })
		if err != nil {
			t.Fatalf("Tail: %v", err)
		}
		t.Cleanup(stop)
		return ch, stop
	}
	first, stop := tail()
	second, _ := tail()
	none(t, first)
	for n := range 3 {
		if err := Publish(t.Context(), b, subject, testEvent{N: n}); err != nil {
			t.Fatal(err)
		}
	}
	for _, ch := range []<-chan testEvent{first, second} {
		for n := range 3 {
			if got := recv(t, ch); got.N != n {
				t.Fatalf("got %d, want %d", got.N, n)
			}
		}
	}
	stop()
	stop()
	if err := Publish(t.Context(), b, subject, testEvent{N: 3}); err != nil {
		t.Fatal(err)
	}
	none(t, first)
	if got := recv(t, second); got.N != 3 {
		t.Fatalf("second tail got %d after the first stopped", got.N)
	}
}
