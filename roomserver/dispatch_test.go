package roomserver

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"
)

func inputFor(room string, n int) envelope {
	return envelope{Reply: fmt.Sprint(n), Req: InputRequest{RoomID: room, InputID: fmt.Sprintf("%s-%d", room, n)}}
}

// Each room's inputs run one batch at a time in the order they came, the
// bus batches they came in are finished once, after all their inputs, and
// with the error any of them had.
func TestDispatcherOrdersEachRoom(t *testing.T) {
	var mu sync.Mutex
	seen := make(map[string][]string)
	running := make(map[string]bool)
	d := newDispatcher(func(_ context.Context, envs []envelope) error {
		room := envs[0].Req.RoomID
		mu.Lock()
		if running[room] {
			t.Errorf("two batches of %s at once", room)
		}
		running[room] = true
		mu.Unlock()
		time.Sleep(time.Duration(rand.IntN(300)) * time.Microsecond)
		mu.Lock()
		defer mu.Unlock()
		running[room] = false
		for _, env := range envs {
			if env.Req.RoomID != room {
				t.Errorf("batch of %s holds an input of %s", room, env.Req.RoomID)
			}
			seen[room] = append(seen[room], env.Reply)
		}
		if room == "!bad" {
			return errors.New("reply failed")
		}
		return nil
	})
	rooms := []string{"!a", "!b", "!c", "!d", "!bad"}
	const perRoom = 200
	var finished sync.WaitGroup
	var fmu sync.Mutex
	finishes := make(map[int][]error)
	next := make(map[string]int)
	for batch := 0; ; batch++ {
		var envs []envelope
		for range 1 + rand.IntN(6) {
			room := rooms[rand.IntN(len(rooms))]
			if next[room] < perRoom {
				envs = append(envs, inputFor(room, next[room]))
				next[room]++
			}
		}
		if len(envs) == 0 {
			done := true
			for _, r := range rooms {
				done = done && next[r] == perRoom
			}
			if done {
				break
			}
			continue
		}
		bad := slices.ContainsFunc(envs, func(e envelope) bool { return e.Req.RoomID == "!bad" })
		finished.Add(1)
		d.handle(t.Context(), envs, func(err error) {
			fmu.Lock()
			finishes[batch] = append(finishes[batch], err)
			fmu.Unlock()
			if (err != nil) != bad {
				t.Errorf("batch %d finished with %v", batch, err)
			}
			finished.Done()
		})
	}
	finished.Wait()
	d.stop()
	for _, room := range rooms {
		want := make([]string, perRoom)
		for i := range want {
			want[i] = fmt.Sprint(i)
		}
		if !slices.Equal(seen[room], want) {
			t.Fatalf("%s ran %v", room, seen[room])
		}
	}
	for b, errs := range finishes {
		if len(errs) != 1 {
			t.Fatalf("batch %d finished %d times", b, len(errs))
		}
	}
}

// A room whose batch is held up does not hold up the others, nor the
// inputs of the same bus batch that are for other rooms.
func TestDispatcherRoomsDoNotWaitForEachOther(t *testing.T) {
	release := make(chan struct{})
	handled := make(chan string, 10)
	d := newDispatcher(func(_ context.Context, envs []envelope) error {
		if envs[0].Req.RoomID == "!slow" {
			<-release
		}
		for _, env := range envs {
			handled <- env.Req.RoomID
		}
		return nil
	})
	finished := make(chan struct{}, 10)
	finish := func(error) { finished <- struct{}{} }
	d.handle(t.Context(), []envelope{inputFor("!slow", 0), inputFor("!fast", 0)}, finish)
	d.handle(t.Context(), []envelope{inputFor("!fast", 1)}, finish)
	d.handle(t.Context(), []envelope{{Req: InputRequest{InputID: "new-room"}}}, finish)
	for range 3 {
		select {
		case r := <-handled:
			if r == "!slow" {
				t.Fatal("the held room ran")
			}
		case <-time.After(5 * time.Second):
			t.Fatal("inputs of other rooms waited for the held one")
		}
	}
	select {
	case <-finished: // the batch of "!fast" 1 or of the new room
	case <-time.After(5 * time.Second):
		t.Fatal("no batch finished")
	}
	close(release)
	stopped := make(chan struct{})
	go func() { d.stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("stop did not return")
	}
	if len(handled) != 1 || <-handled != "!slow" {
		t.Fatal("the held room did not run once released")
	}
}
