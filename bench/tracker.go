package bench

import (
	"sync"
	"time"
)

// tracker counts the deliveries of the messages of a run: one expected per
// (message, member of its room), with the member identified by its
// position in the room. A message is expected once its send succeeded; it
// may arrive before the send returns.
type tracker struct {
	lat recorder

	mu     sync.Mutex
	stride int
	// By message seq: when its send started, whether it succeeded, how
	// many members it should reach and how many it reached.
	sentAt   []time.Time
	acked    []bool
	want     []int
	distinct []int
	// arrivals[seq*stride+pos] counts the arrivals at one member.
	arrivals []uint16
	// pending is the unseen (acked message, member) pairs; when it is 0
	// after the last send, done closes.
	pending  int
	finished bool
	done     chan struct{}

	limited, unknown, syncErrors int
	firstSyncErr                 error
}

func newTracker(n, stride int) *tracker {
	return &tracker{stride: stride, sentAt: make([]time.Time, n), acked: make([]bool, n), want: make([]int, n),
		distinct: make([]int, n), arrivals: make([]uint16, n*stride), done: make(chan struct{})}
}

// sending records the start of message seq's send: latencies count from
// here.
func (t *tracker) sending(seq int) {
	t.mu.Lock()
	t.sentAt[seq] = time.Now()
	t.mu.Unlock()
}

// sent records that the server took message seq, for members members.
func (t *tracker) sent(seq, members int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.acked[seq], t.want[seq] = true, members
	t.pending += members - t.distinct[seq]
}

// deliver records message seq arriving, at time at, at the member in
// position pos of its room.
func (t *tracker) deliver(seq, pos int, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if seq < 0 || seq >= len(t.sentAt) || t.sentAt[seq].IsZero() || pos >= t.stride {
		t.unknown++
		return
	}
	i := seq*t.stride + pos
	t.arrivals[i]++
	if t.arrivals[i] > 1 {
		return
	}
	t.distinct[seq]++
	t.lat.add(at.Sub(t.sentAt[seq]))
	if t.acked[seq] {
		t.pending--
		t.check()
	}
}

// sendsDone says no message will be sent any more and returns a channel
// closed once every sent message has reached all its members.
func (t *tracker) sendsDone() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.finished = true
	t.check()
	return t.done
}

func (t *tracker) check() {
	if t.finished && t.pending == 0 {
		select {
		case <-t.done:
		default:
			close(t.done)
		}
	}
}

func (t *tracker) limitedTimeline() {
	t.mu.Lock()
	t.limited++
	t.mu.Unlock()
}

func (t *tracker) syncFailed(err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.syncErrors++
	if t.firstSyncErr == nil {
		t.firstSyncErr = err
	}
}

// report puts the delivery counts into res. Only messages whose send
// succeeded are expected; arrivals of others are left out.
func (t *tracker) report(res *Result) {
	t.mu.Lock()
	defer t.mu.Unlock()
	d := &Deliveries{LimitedTimelines: t.limited}
	for seq, ok := range t.acked {
		if !ok {
			continue
		}
		d.Expected += t.want[seq]
		d.Seen += t.distinct[seq]
		for _, n := range t.arrivals[seq*t.stride : (seq+1)*t.stride] {
			if n > 1 {
				d.Duplicated += int(n) - 1
			}
		}
	}
	d.Lost = d.Expected - d.Seen
	res.Deliveries = d
	res.Errors += t.syncErrors
	if t.firstSyncErr != nil {
		res.note("%d failed long-polls; the first: %v", t.syncErrors, t.firstSyncErr)
	}
	if t.unknown > 0 {
		res.note("%d arrivals of messages this run did not send", t.unknown)
	}
}
