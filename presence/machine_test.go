package presence

import (
	"testing"
	"time"

	"github.com/weft-chat/weft/sql"
)

// The rules with times given by hand: no clock, no sleeps.

const t0 = int64(1_700_000_000_000)

func at(d time.Duration) int64 { return t0 + d.Milliseconds() }

func TestSyncOnlineFromOffline(t *testing.T) {
	o := onSync(defaultPresence("@a:x"), Online, at(0), at(30*time.Second))
	if !o.write || !o.notify {
		t.Fatalf("offline → online: write %v notify %v, want both", o.write, o.notify)
	}
	n := o.next
	if n.State != Online || n.LastActiveTS != at(0) || n.LastSyncTS != at(30*time.Second) || !n.CurrentlyActive {
		t.Fatalf("after an online sync: %+v", n)
	}
	// The first timer is the end of currently_active, a minute on.
	if n.TimerTS != at(time.Minute) {
		t.Fatalf("timer %d, want %d", n.TimerTS, at(time.Minute))
	}
}

// A client syncing in a loop must not take a stream position per sync
// (that would wake everyone sharing a room every time), and must not
// write at all more often than the throttle.
func TestSyncLoopIsQuiet(t *testing.T) {
	p := onSync(defaultPresence("@a:x"), Online, at(0), at(30*time.Second)).next
	for _, d := range []time.Duration{time.Second, 5 * time.Second, 9 * time.Second} {
		if o := onSync(p, Online, at(d), at(d+30*time.Second)); o.write || o.notify {
			t.Fatalf("sync %s later: write %v notify %v, want neither", d, o.write, o.notify)
		}
	}
	o := onSync(p, Online, at(12*time.Second), at(42*time.Second))
	if !o.write || o.notify {
		t.Fatalf("sync past the throttle: write %v notify %v, want a plain write", o.write, o.notify)
	}
	if o.next.LastActiveTS != at(12*time.Second) || o.next.LastSyncTS != at(42*time.Second) {
		t.Fatalf("plain write %+v", o.next)
	}
	// A zero-timeout sync does not shorten a long-poll recorded before.
	if o := onSync(o.next, Online, at(13*time.Second), at(13*time.Second)); o.write {
		t.Fatalf("a shorter sync rewrote the row: %+v", o.next)
	}
}

func TestSyncOfflineLeavesPresenceAlone(t *testing.T) {
	for _, p := range []sql.Presence{
		defaultPresence("@a:x"),
		onSet(defaultPresence("@a:x"), Unavailable, "away", at(0)).next,
	} {
		if o := onSync(p, Offline, at(time.Second), at(31*time.Second)); o.write || o.next != p {
			t.Fatalf("set_presence=offline changed %+v into %+v", p, o.next)
		}
	}
}

func TestSyncUnavailable(t *testing.T) {
	// From offline: idle, with no activity recorded.
	o := onSync(defaultPresence("@a:x"), Unavailable, at(0), at(30*time.Second))
	if !o.notify || o.next.State != Unavailable || o.next.LastActiveTS != 0 || o.next.CurrentlyActive {
		t.Fatalf("offline, unavailable sync: %+v notify %v", o.next, o.notify)
	}
	// A user active within the last minute (another device) stays online.
	online := onSync(defaultPresence("@a:x"), Online, at(0), at(30*time.Second)).next
	if o := onSync(online, Unavailable, at(50*time.Second), at(80*time.Second)); o.next.State != Online || o.notify {
		t.Fatalf("active user made idle by an unavailable sync: %+v", o.next)
	}
	// Past the minute, the idle device wins.
	if o := onSync(online, Unavailable, at(61*time.Second), at(91*time.Second)); o.next.State != Unavailable || !o.notify {
		t.Fatalf("inactive user not made idle: %+v", o.next)
	}
}

func TestIdleAfterFiveMinutes(t *testing.T) {
	// A client that long-polls with unavailable keeps the user from going
	// offline but does not count as activity; after five minutes without
	// activity, online becomes unavailable.
	p := onSet(defaultPresence("@a:x"), Online, "", at(0)).next
	p.LastSyncTS = at(10 * time.Minute) // syncing all along
	p.TimerTS = timer(p)
	if o := onTimeout(p, at(4*time.Minute+59*time.Second)); o.next.State != Online {
		t.Fatalf("idle too early: %+v", o.next)
	}
	o := onTimeout(p, at(5*time.Minute))
	if !o.notify || o.next.State != Unavailable || o.next.CurrentlyActive {
		t.Fatalf("5 min without activity: %+v notify %v", o.next, o.notify)
	}
	// Activity brings the user back online.
	back := onActivity(o.next, at(6*time.Minute))
	if !back.notify || back.next.State != Online || !back.next.CurrentlyActive {
		t.Fatalf("activity while idle: %+v", back.next)
	}
}

func TestOfflineThirtySecondsAfterTheLastSync(t *testing.T) {
	p := onSync(defaultPresence("@a:x"), Online, at(0), at(30*time.Second)).next // a 30 s long-poll
	// While the long-poll runs, and for 30 s after it ends, still online.
	for _, d := range []time.Duration{20 * time.Second, 59 * time.Second} {
		if o := onTimeout(p, at(d)); o.next.State != Online {
			t.Fatalf("offline after %s: %+v", d, o.next)
		}
	}
	o := onTimeout(p, at(time.Minute))
	if !o.notify || o.next.State != Offline || o.next.TimerTS != 0 || o.next.CurrentlyActive {
		t.Fatalf("30 s after the sync ended: %+v notify %v", o.next, o.notify)
	}
	// Unavailable users go offline the same way.
	u := onSync(defaultPresence("@a:x"), Unavailable, at(0), at(0)).next
	if o := onTimeout(u, at(30*time.Second)); o.next.State != Offline {
		t.Fatalf("unavailable user 30 s after the last sync: %+v", o.next)
	}
	// Activity without a sync counts too (Synapse: max of both).
	a := onActivity(p, at(50*time.Second)).next
	if o := onTimeout(a, at(70*time.Second)); o.next.State != Online {
		t.Fatalf("offline although active 20 s ago: %+v", o.next)
	}
}

func TestExplicitOfflineStaysOffline(t *testing.T) {
	p := onSet(defaultPresence("@a:x"), Offline, "gone fishing", at(0)).next
	if p.TimerTS != 0 {
		t.Fatalf("offline has a timer: %+v", p)
	}
	for _, d := range []time.Duration{time.Minute, time.Hour} {
		if o := onTimeout(p, at(d)); o.write {
			t.Fatalf("timeout moved an offline user: %+v", o.next)
		}
	}
	// Activity does not bring them back (Synapse); a sync marking them
	// online does.
	if o := onActivity(p, at(time.Minute)); o.next.State != Offline {
		t.Fatalf("activity brought back an offline user: %+v", o.next)
	}
	if o := onSync(p, Online, at(time.Minute), at(time.Minute)); o.next.State != Online || o.next.StatusMsg != "gone fishing" {
		t.Fatalf("online sync: %+v (the status message stays)", o.next)
	}
}

func TestCurrentlyActiveLapses(t *testing.T) {
	p := onSet(defaultPresence("@a:x"), Online, "", at(0)).next
	p.LastSyncTS = at(10 * time.Minute)
	p.TimerTS = timer(p)
	if p.TimerTS != at(time.Minute) {
		t.Fatalf("timer %d, want the end of the active minute", p.TimerTS)
	}
	o := onTimeout(p, at(time.Minute))
	if !o.notify || o.next.State != Online || o.next.CurrentlyActive {
		t.Fatalf("a minute without activity: %+v notify %v", o.next, o.notify)
	}
	if o.next.TimerTS != at(5*time.Minute) {
		t.Fatalf("next timer %d, want the idle timeout", o.next.TimerTS)
	}
	// A sync then makes them active again: a flip clients must see.
	if s := onSync(o.next, Online, at(2*time.Minute), at(2*time.Minute)); !s.notify || !s.next.CurrentlyActive {
		t.Fatalf("online sync after the lapse: %+v notify %v", s.next, s.notify)
	}
}

func TestSetStatus(t *testing.T) {
	p := onSet(defaultPresence("@a:x"), Online, "", at(0)).next
	// Only the message changes: clients must see it.
	o := onSet(p, Online, "lunch", at(time.Second))
	if !o.notify || o.next.StatusMsg != "lunch" {
		t.Fatalf("new status message: %+v notify %v", o.next, o.notify)
	}
	// The same again a second later: nothing to tell.
	if o := onSet(o.next, Online, "lunch", at(2*time.Second)); o.notify {
		t.Fatalf("same state and message notified: %+v", o.next)
	}
	// No message clears it.
	if o := onSet(o.next, Unavailable, "", at(3*time.Second)); !o.notify || o.next.StatusMsg != "" || o.next.LastActiveTS != at(time.Second) {
		t.Fatalf("unavailable without a message: %+v (setting unavailable is not activity)", o.next)
	}
}

func TestEveryTimerFires(t *testing.T) {
	// Whatever the row, at its timer something changes, so the sweeper
	// never picks the same row forever.
	rows := []sql.Presence{
		onSync(defaultPresence("@a:x"), Online, at(0), at(30*time.Second)).next,
		onSync(defaultPresence("@a:x"), Unavailable, at(0), at(0)).next,
		onSet(defaultPresence("@a:x"), Online, "x", at(0)).next,
	}
	for _, p := range rows {
		for p.TimerTS != 0 {
			o := onTimeout(p, p.TimerTS)
			if !o.write || o.next.TimerTS != 0 && o.next.TimerTS <= p.TimerTS {
				t.Fatalf("timer of %+v fired into %+v", p, o.next)
			}
			p = o.next
		}
		if p.State != Offline {
			t.Fatalf("timers ended in %+v, want offline", p)
		}
	}
}

func TestContent(t *testing.T) {
	p := onSet(defaultPresence("@a:x"), Online, "here", at(0)).next
	c := contentAt(p, at(1500*time.Millisecond))
	if c.Presence != Online || c.LastActiveAgo == nil || *c.LastActiveAgo != 1500 || c.StatusMsg != "here" ||
		c.CurrentlyActive == nil || !*c.CurrentlyActive {
		t.Fatalf("content %+v", c)
	}
	// Offline, never active: presence alone (Synapse's format).
	c = contentAt(defaultPresence("@a:x"), at(0))
	if c.LastActiveAgo != nil || c.CurrentlyActive != nil || c.StatusMsg != "" {
		t.Fatalf("default content %+v", c)
	}
	// The view of a row the sweeper has not reached yet is already idle.
	p.LastSyncTS = at(time.Hour)
	if v := current(p, at(6*time.Minute)); v.State != Unavailable || v.CurrentlyActive {
		t.Fatalf("current view %+v", v)
	}
}
