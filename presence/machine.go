package presence

import (
	"time"

	"github.com/weft-chat/weft/sql"
)

// The presence states of the spec (m.presence).
const (
	Online      = "online"
	Unavailable = "unavailable"
	Offline     = "offline"
)

// Timings, Synapse's (synapse/handlers/presence.py), which clients are
// used to.
const (
	// IdleTimeout turns an online user unavailable after this long without
	// activity (IDLE_TIMER).
	IdleTimeout = 5 * time.Minute
	// SyncTimeout turns a user offline this long after their last sync
	// ended, when they were not active since (SYNC_ONLINE_TIMEOUT).
	SyncTimeout = 30 * time.Second
	// ActiveWindow is how recent the last activity of a currently_active
	// user is (LAST_ACTIVE_GRANULARITY).
	ActiveWindow = time.Minute
	// writeThrottle spaces the writes that only move last_active_ts and
	// last_sync_ts forward: a client syncing in a tight loop costs one
	// write per throttle, not one per sync. It must stay well under
	// ActiveWindow (an online syncing user stays currently active) and
	// SyncTimeout (a syncing user never looks gone).
	writeThrottle = 10 * time.Second
)

// The machine below is pure: every rule takes the row as read and the
// time, and returns the row to write (if any) and whether clients must
// be told (a new stream position). The Service does the I/O.

// outcome is what a rule decided.
type outcome struct {
	next sql.Presence
	// notify: clients must see the change, so it takes a stream position
	// and wakes those who share a room with the user.
	notify bool
	// write: the row changes at all (notify implies it).
	write bool
}

// ms is a time in the unit of the rows.
func ms(t time.Time) int64 { return t.UnixMilli() }

// defaultPresence is the presence of a user without a row.
func defaultPresence(userID string) sql.Presence {
	return sql.Presence{UserID: userID, State: Offline}
}

// onSync is a sync with set_presence (spec: /sync). "online" (the
// default) marks the user online and active, as Synapse does;
// "unavailable" marks them idle; "offline" leaves their presence alone
// (Synapse: the sync does not affect presence). Either of the first two
// records that the user syncs until until (the end of its long-poll).
//
// One row per user stands for all their devices, so an "unavailable"
// sync does not make idle a user who was active within the last minute:
// that activity is another device's, or this one's just before it went
// idle (Synapse combines per-device states the same way, online first).
func onSync(p sql.Presence, setPresence string, now, until int64) outcome {
	if setPresence == Offline {
		return outcome{next: p}
	}
	n := p
	switch setPresence {
	case Online:
		n.State = Online
		n.LastActiveTS = now
	case Unavailable:
		if !(p.State == Online && now-p.LastActiveTS < ActiveWindow.Milliseconds()) {
			n.State = Unavailable
		}
	}
	n.LastSyncTS = max(p.LastSyncTS, until)
	o := settle(p, n, now)
	if !o.notify && o.write {
		// Only the bookkeeping moved: write it when it moved enough.
		throttle := writeThrottle.Milliseconds()
		if n.LastActiveTS-p.LastActiveTS < throttle && n.LastSyncTS-p.LastSyncTS < throttle {
			return outcome{next: p}
		}
	}
	return o
}

// onSet is PUT /presence/{userId}/status: the state and status message
// the user chose (no message clears it, as in Synapse). Setting online
// counts as activity (spec: "changing presence state to online" is a
// pro-active event).
func onSet(p sql.Presence, state, statusMsg string, now int64) outcome {
	n := p
	n.State = state
	n.StatusMsg = statusMsg
	if state == Online {
		n.LastActiveTS = now
	}
	return settle(p, n, now)
}

// onActivity is a pro-active event of the user (sending a message, say):
// it bumps their last active time and brings an idle user back online
// (spec: Idle timeout). An offline user stays offline, as in Synapse.
func onActivity(p sql.Presence, now int64) outcome {
	// A timeout the sweeper has not applied yet still holds: activity
	// does not bring back a user who went offline.
	n := expire(p, now)
	n.LastActiveTS = now
	if n.State == Unavailable {
		n.State = Online
	}
	o := settle(p, n, now)
	if !o.notify && o.write && n.LastActiveTS-p.LastActiveTS < writeThrottle.Milliseconds() {
		return outcome{next: p}
	}
	return o
}

// onTimeout applies the timeouts due at now: online → unavailable after
// IdleTimeout without activity; online or unavailable → offline once
// SyncTimeout has passed since both the end of the last sync and the
// last activity; currently_active lapses ActiveWindow after the last
// activity. Offline, set explicitly or reached, has no timeout.
func onTimeout(p sql.Presence, now int64) outcome {
	n := expire(p, now)
	return settle(p, n, now)
}

// current is p as it stands at now, with the timeouts the sweeper may
// not have applied yet.
func current(p sql.Presence, now int64) sql.Presence {
	return settle(p, expire(p, now), now).next
}

// expire is p with the timeouts due at now applied (currently_active is
// left to settle).
func expire(p sql.Presence, now int64) sql.Presence {
	if p.State == Offline {
		return p
	}
	if p.State == Online && now-p.LastActiveTS >= IdleTimeout.Milliseconds() {
		p.State = Unavailable
	}
	if now-max(p.LastSyncTS, p.LastActiveTS) >= SyncTimeout.Milliseconds() {
		p.State = Offline
	}
	return p
}

// settle derives currently_active and the timer of n and decides whether
// the change from p is one to write and one to tell clients about.
func settle(p, n sql.Presence, now int64) outcome {
	n.CurrentlyActive = n.State == Online && now-n.LastActiveTS < ActiveWindow.Milliseconds()
	n.TimerTS = timer(n)
	notify := shouldNotify(p, n)
	write := notify || n != p
	return outcome{next: n, notify: notify, write: write}
}

// timer is when a timeout may next change p (0: never).
func timer(p sql.Presence) int64 {
	if p.State == Offline {
		return 0
	}
	t := max(p.LastSyncTS, p.LastActiveTS) + SyncTimeout.Milliseconds()
	if p.State == Online {
		t = min(t, p.LastActiveTS+IdleTimeout.Milliseconds())
		if p.CurrentlyActive {
			t = min(t, p.LastActiveTS+ActiveWindow.Milliseconds())
		}
	}
	return t
}

// shouldNotify is Synapse's should_notify for local users: a new state or
// status message, a flip of currently_active while online, or a jump of
// the last active time that clients would otherwise not learn.
func shouldNotify(old, cur sql.Presence) bool {
	if old.State != cur.State || old.StatusMsg != cur.StatusMsg {
		return true
	}
	jumped := cur.LastActiveTS-old.LastActiveTS > ActiveWindow.Milliseconds()
	if old.State == Online {
		return old.CurrentlyActive != cur.CurrentlyActive || (jumped && !cur.CurrentlyActive)
	}
	return jumped
}

// Content is the content of an m.presence event, and the body of GET
// /presence/{userId}/status (spec: presence.yaml). As in Synapse,
// last_active_ago is there when the user was ever active, status_msg
// when they set one, currently_active when they are online.
type Content struct {
	Presence        string `json:"presence"`
	LastActiveAgo   *int64 `json:"last_active_ago,omitempty"`
	StatusMsg       string `json:"status_msg,omitempty"`
	CurrentlyActive *bool  `json:"currently_active,omitempty"`
}

// contentAt is p as clients see it at now: the last active time is
// relative to now (spec: it "must be up to date whenever the server gives
// a presence event to the client").
func contentAt(p sql.Presence, now int64) Content {
	c := Content{Presence: p.State, StatusMsg: p.StatusMsg}
	if p.LastActiveTS > 0 {
		// Processes' clocks may differ a little: never a negative age.
		ago := max(now-p.LastActiveTS, 0)
		c.LastActiveAgo = &ago
	}
	if p.State == Online {
		active := p.CurrentlyActive
		c.CurrentlyActive = &active
	}
	return c
}
