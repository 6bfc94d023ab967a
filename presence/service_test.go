package presence

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/weft-chat/weft/internal/bus"
	"github.com/weft-chat/weft/internal/wake"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// clock is a time tests move by hand.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) set(t time.Time) {
	c.mu.Lock()
	c.now = t
	c.mu.Unlock()
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// wakes collects the wake-ups published on a bus.
type wakes struct {
	mu   sync.Mutex
	msgs []wake.Message
	got  chan struct{}
}

func (w *wakes) take(t *testing.T) wake.Message {
	t.Helper()
	select {
	case <-w.got:
	case <-time.After(5 * time.Second):
		t.Fatal("no wake-up")
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	m := w.msgs[0]
	w.msgs = w.msgs[1:]
	return m
}

func (w *wakes) none(t *testing.T) {
	t.Helper()
	select {
	case <-w.got:
		w.mu.Lock()
		defer w.mu.Unlock()
		t.Fatalf("unexpected wake-up %+v", w.msgs)
	case <-time.After(100 * time.Millisecond):
	}
}

// env is a presence Service on a fresh database with a fake clock and a
// real bus whose wake-ups the test reads.
type env struct {
	db    *sql.DB
	clock *clock
	svc   *Service
	pub   *wake.Publisher
	wakes *wakes
}

func newEnv(t *testing.T, db *sql.DB) *env {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	b, err := bus.Open(ctx, bus.Config{StoreDir: t.TempDir()}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	w := &wakes{got: make(chan struct{}, 100)}
	// Publishing a wake-up and reading it go through the same connection,
	// so a wake-up of one step arrives before the next step's.
	sub, err := wake.Subscribe(b.Conn(), func(m wake.Message) {
		w.mu.Lock()
		w.msgs = append(w.msgs, m)
		w.mu.Unlock()
		w.got <- struct{}{}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Unsubscribe() })
	c := &clock{now: time.UnixMilli(t0)}
	pub := wake.NewPublisher(b.Conn(), log)
	return &env{db: db, clock: c, svc: New(db, pub, log, WithClock(c.Now)), pub: pub, wakes: w}
}

func (e *env) room(t *testing.T, roomID string, members ...string) {
	t.Helper()
	ctx := context.Background()
	nid, err := e.db.CreateRoom(ctx, roomID, "11")
	if err != nil {
		t.Fatal(err)
	}
	for i, u := range members {
		if err := e.db.SetMembership(ctx, nid, u, "join", int64(i+1), int64(i+1)); err != nil {
			t.Fatal(err)
		}
	}
}

func (e *env) state(t *testing.T, userID string) sql.Presence {
	t.Helper()
	p, err := e.svc.read(context.Background(), userID)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func (e *env) pos(t *testing.T) int64 {
	t.Helper()
	pos, err := e.db.StreamPos(context.Background(), sql.PresenceStream)
	if err != nil {
		t.Fatal(err)
	}
	return pos
}

// TestServiceLifecycle drives one user through a day with the fake
// clock: a sync brings them online and wakes their rooms; syncs in a loop
// take no position; the sweeper turns them offline 30 s after their last
// long-poll ended, and only then.
func TestServiceLifecycle(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		e := newEnv(t, db)
		e.room(t, "!r:x", "@alice:x", "@bob:x")
		start := e.pos(t)

		if err := e.svc.Synced(ctx, "@alice:x", "", 30*time.Second); err != nil {
			t.Fatal(err)
		}
		if p := e.state(t, "@alice:x"); p.State != Online || p.StreamPos != start+1 {
			t.Fatalf("after a sync %+v", p)
		}
		if m := e.wakes.take(t); !slices.Equal(m.Users, []string{"@alice:x"}) || !slices.Equal(m.Rooms, []string{"!r:x"}) || !m.Presence {
			t.Fatalf("wake-up %+v, want alice's presence for her and her room", m)
		}

		// Syncing in a loop: no position, no wake-up.
		for range 5 {
			e.clock.advance(3 * time.Second)
			if err := e.svc.Synced(ctx, "@alice:x", Online, 30*time.Second); err != nil {
				t.Fatal(err)
			}
		}
		if pos := e.pos(t); pos != start+1 {
			t.Fatalf("syncs moved the stream to %d", pos)
		}
		e.wakes.none(t)
		last := e.state(t, "@alice:x")

		// The client stops. Nothing happens until 30 s after the last
		// long-poll's end.
		e.clock.set(time.UnixMilli(last.LastSyncTS).Add(SyncTimeout - time.Second))
		if n, err := e.svc.Sweep(ctx); err != nil || n != 0 {
			t.Fatalf("early sweep: %d, %v", n, err)
		}
		if p := e.state(t, "@alice:x"); p.State != Online {
			t.Fatalf("offline too early: %+v", p)
		}
		e.clock.advance(time.Second)
		if n, err := e.svc.Sweep(ctx); err != nil || n != 1 {
			t.Fatalf("sweep: %d, %v", n, err)
		}
		p := e.state(t, "@alice:x")
		if p.State != Offline || p.TimerTS != 0 {
			t.Fatalf("after the sweep %+v", p)
		}
		// The currently_active lapse came first, in an earlier sweep or in
		// this one: either way, clients saw each change once.
		if p.StreamPos <= start+1 {
			t.Fatalf("the sweep took no position: %+v", p)
		}
		e.wakes.take(t)
		e.wakes.none(t)
		if n, _ := e.svc.Sweep(ctx); n != 0 {
			t.Fatalf("a second sweep moved %d users", n)
		}
		got, err := e.svc.Get(ctx, "@alice:x")
		if err != nil || got.Presence != Offline || got.LastActiveAgo == nil {
			t.Fatalf("Get %+v, %v", got, err)
		}
	})
}

// TestServiceIdle: the sweeper alone turns an online user unavailable
// five minutes after their last activity, here during one five-minute
// long-poll (syncs count as activity only when they start), and offline
// 30 s after the long-poll ended.
func TestServiceIdle(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		e := newEnv(t, db)
		if err := e.svc.Set(ctx, "@alice:x", Online, "at work"); err != nil {
			t.Fatal(err)
		}
		if err := e.svc.Synced(ctx, "@alice:x", Online, 5*time.Minute); err != nil {
			t.Fatal(err)
		}
		for _, step := range []struct {
			at     time.Duration
			state  string
			active bool
		}{
			{59 * time.Second, Online, true},
			{time.Minute, Online, false},
			{5*time.Minute - time.Second, Online, false},
			{5 * time.Minute, Unavailable, false},
			{5*time.Minute + 29*time.Second, Unavailable, false},
			{5*time.Minute + 30*time.Second, Offline, false},
		} {
			e.clock.set(time.UnixMilli(t0).Add(step.at))
			if _, err := e.svc.Sweep(ctx); err != nil {
				t.Fatal(err)
			}
			p := e.state(t, "@alice:x")
			if p.State != step.state || p.CurrentlyActive != step.active || p.StatusMsg != "at work" {
				t.Fatalf("after %s: %+v, want %s (currently active %v)", step.at, p, step.state, step.active)
			}
		}
	})
}

// TestSweepersInSeveralProcesses: two services sharing a database (two
// processes) sweeping at once move each user once.
func TestSweepersInSeveralProcesses(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		e := newEnv(t, db)
		other := New(db, e.pub, slog.New(slog.DiscardHandler), WithClock(e.clock.Now))
		const n = 40
		for i := range n {
			if err := e.svc.Set(ctx, "@u"+string(rune('a'+i%26))+string(rune('a'+i/26))+":x", Unavailable, ""); err != nil {
				t.Fatal(err)
			}
		}
		start := e.pos(t)
		e.clock.advance(time.Hour)
		var moved [2]int
		var wg sync.WaitGroup
		for i, s := range []*Service{e.svc, other} {
			wg.Go(func() {
				var err error
				if moved[i], err = s.Sweep(ctx); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		if moved[0]+moved[1] != n {
			t.Fatalf("sweepers moved %d + %d users, want %d in all", moved[0], moved[1], n)
		}
		due, _ := db.DuePresence(ctx, ms(e.clock.Now()), 100)
		if len(due) != 0 {
			t.Fatalf("%d users still due", len(due))
		}
		// Each change is one row at one position; a loser's position is
		// at most a gap.
		changed, err := db.PresenceChanged(ctx, "@uaa:x", start, e.pos(t), 1000)
		if err != nil || len(changed) != 1 || changed[0].State != Offline {
			t.Fatalf("uaa's changes: %+v, %v", changed, err)
		}
	})
}

// TestHints: a rule that would change nothing on the hint skips the read,
// so a row another process changed without a wake-up stays as it was;
// once the wake-up comes (Forget), the row is read again and the rule
// applies to it. A hint older than hintTTL is not used.
func TestHints(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		e := newEnv(t, db)
		hints := NewHints()
		svc := New(db, e.pub, slog.New(slog.DiscardHandler), WithClock(e.clock.Now), WithHints(hints))
		// Another process, whose wake-up has not come yet.
		other := New(db, e.pub, slog.New(slog.DiscardHandler), WithClock(e.clock.Now))
		sync := func() {
			t.Helper()
			if err := svc.Synced(ctx, "@alice:x", Online, 30*time.Second); err != nil {
				t.Fatal(err)
			}
		}
		sync()
		if err := other.Set(ctx, "@alice:x", Unavailable, ""); err != nil {
			t.Fatal(err)
		}
		e.clock.advance(time.Second)
		sync()
		if p := e.state(t, "@alice:x"); p.State != Unavailable {
			t.Fatalf("the hint was not used: %+v", p)
		}
		hints.Forget("@alice:x")
		sync()
		if p := e.state(t, "@alice:x"); p.State != Online {
			t.Fatalf("after Forget: %+v", p)
		}

		if err := other.Set(ctx, "@alice:x", Unavailable, ""); err != nil {
			t.Fatal(err)
		}
		e.clock.advance(hintTTL)
		if _, ok := hints.get("@alice:x", e.clock.Now()); ok {
			t.Fatal("a hint outlived hintTTL")
		}
		sync()
		if p := e.state(t, "@alice:x"); p.State != Online {
			t.Fatalf("after hintTTL: %+v", p)
		}
	})
}

func TestCanSee(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		e := newEnv(t, db)
		e.room(t, "!r:x", "@alice:x", "@bob:x")
		e.room(t, "!s:x", "@carol:x")
		for _, c := range []struct {
			a, b string
			want bool
		}{
			{"@alice:x", "@alice:x", true}, {"@alice:x", "@bob:x", true}, {"@alice:x", "@carol:x", false},
			{"@nobody:x", "@nobody:x", true},
		} {
			if got, err := e.svc.CanSee(ctx, c.a, c.b); err != nil || got != c.want {
				t.Errorf("CanSee(%s, %s) = %v, %v", c.a, c.b, got, err)
			}
		}
	})
}

// TestConcurrentSyncs brings 20 users online with two syncs each, all at
// once: the writer puts changes of several requests, the same user's
// among them, in one transaction, and every user ends up online at a
// position of its own.
func TestConcurrentSyncs(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		e := newEnv(t, db)
		before := e.pos(t)
		var wg sync.WaitGroup
		for i := range 40 {
			wg.Go(func() {
				if err := e.svc.Synced(ctx, fmt.Sprintf("@u%d:example.org", i%20), "", 30*time.Second); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		seen := map[int64]bool{}
		for i := range 20 {
			p := e.state(t, fmt.Sprintf("@u%d:example.org", i))
			if p.State != Online || p.StreamPos <= before || seen[p.StreamPos] {
				t.Errorf("@u%d is %s at position %d, want online at a new position of its own", i, p.State, p.StreamPos)
			}
			seen[p.StreamPos] = true
		}
	})
}
