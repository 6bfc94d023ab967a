package clientapi

import (
	"context"
	"errors"
	"math"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/mux"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/internal/periodic"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/userapi"
)

// Typing timeouts (spec: PUT /rooms/{roomId}/typing/{userId}). Synapse
// takes 30 s when the client gives none and caps what it gives at 120 s.
const (
	typingDefaultTimeout = 30 * time.Second
	typingMaxTimeout     = 120 * time.Second
	// typingSweepInterval is how often each process looks for typing rows
	// past their expiry that no timer will delete (their process stopped).
	// Such rows are rare, so the sweep can be slow; until it runs a
	// stale user is listed as typing at most this long past the expiry.
	typingSweepInterval = time.Minute
	// typingExpireTimeout bounds one expiry's database work.
	typingExpireTimeout = 10 * time.Second
)

func (a *API) typingRoutes(r *mux.Router) {
	handle(r, "/rooms/{roomId}/typing/{userId}", a.authedJSON(a.setTyping), http.MethodPut)
}

// typingRequest is the body of PUT /typing.
type typingRequest struct {
	Typing *bool `json:"typing"`
	// Timeout is in ms; a number, which Synapse does not require to be
	// an integer.
	Timeout *float64 `json:"timeout"`
}

// setTyping is PUT /rooms/{roomId}/typing/{userId}: the caller, who must
// be the user of the path (403 M_FORBIDDEN) and joined to the room (403
// M_FORBIDDEN), starts typing for timeout ms or stops. A start or a stop
// that changes the room's typing list wakes the room's members.
func (a *API) setTyping(r *http.Request, dev *userapi.Device) (any, error) {
	ctx := r.Context()
	roomID, err := roomIDPath(r)
	if err != nil {
		return nil, err
	}
	userID, err := pathVar(r, "userId")
	if err != nil {
		return nil, err
	}
	if err := forbidGuest(dev); err != nil {
		return nil, err
	}
	if userID != dev.UserID {
		return nil, mxhttp.Forbidden("Cannot set another user's typing state")
	}
	var req typingRequest
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	if req.Typing == nil {
		return nil, mxhttp.MissingParam("Missing typing")
	}
	timeout := typingDefaultTimeout
	if req.Timeout != nil {
		if *req.Timeout < 0 || math.IsNaN(*req.Timeout) {
			return nil, mxhttp.InvalidParam("timeout must not be negative")
		}
		timeout = time.Duration(min(*req.Timeout, float64(typingMaxTimeout.Milliseconds()))) * time.Millisecond
	}
	joined, err := a.SetTyping(ctx, roomID, dev.UserID, *req.Typing, timeout)
	if err != nil {
		return nil, err
	}
	if !joined {
		return nil, mxhttp.Forbidden("You are not joined to this room")
	}
	return struct{}{}, nil
}

// SetTyping records that userID, of this server or another, started
// typing in the room for timeout, or stopped: the storage and the expiry
// timers of PUT /typing, shared with typing that other servers report.
// joined is false, and nothing is stored, when the user is not joined to
// the room. A start or a stop that changes the room's typing list wakes
// the room's members. For a local user, starting is activity (presence),
// and the room's other servers are told of a start, its renewals (which
// keep it alive there: they time typing out on their own) and a stop.
func (a *API) SetTyping(ctx context.Context, roomID, userID string, typing bool, timeout time.Duration) (joined bool, err error) {
	roomNID, err := a.db.JoinedRoomNID(ctx, roomID, userID)
	if errors.Is(err, sql.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	key := typingKey{roomNID: roomNID, roomID: roomID, userID: userID}
	_, err = a.users.LocalpartOf(userID)
	local := err == nil
	var changed bool
	if typing {
		now := time.Now()
		expires := now.Add(timeout).UnixMilli()
		if changed, err = a.db.SetTyping(ctx, roomNID, userID, now.UnixMilli(), expires); err != nil {
			return true, err
		}
		a.typing.schedule(a, key, timeout, expires)
		if local {
			// Before the wake-up, so that a woken sync sees both.
			a.active(ctx, userID)
		}
	} else {
		a.typing.cancel(key)
		if changed, err = a.db.StopTyping(ctx, roomNID, userID); err != nil {
			return true, err
		}
	}
	if changed {
		a.wake.Rooms(roomID)
	}
	if local && (typing || changed) {
		a.sendTyping(ctx, roomID, userID, typing)
	}
	return true, nil
}

// RemoteTyping tells the other servers in a room about a local user's
// typing: federation's queue, as m.typing EDUs.
type RemoteTyping interface {
	SendTyping(ctx context.Context, roomID, userID string, typing bool) error
}

// WithRemoteTyping tells other servers about local users' typing through
// f; without it they are not told.
func WithRemoteTyping(f RemoteTyping) Option {
	return func(a *API) { a.remoteTyping = f }
}

// sendTyping tells the room's other servers, best effort: typing is
// fleeting, and the typing itself is stored.
func (a *API) sendTyping(ctx context.Context, roomID, userID string, typing bool) {
	if a.remoteTyping == nil {
		return
	}
	if err := a.remoteTyping.SendTyping(ctx, roomID, userID, typing); err != nil && ctx.Err() == nil {
		a.log.Warn("send typing to other servers", "room_id", roomID, "user_id", userID, "err", err)
	}
}

// typingKey names a user's typing in a room.
type typingKey struct {
	roomNID int64
	roomID  string
	userID  string
}

// typingTimers expires the typing this process set, each on its own
// timer, so that members learn that a user stopped typing when the
// timeout passes. The zero value works; StartTypingExpiry adds the sweep
// and a stop. mu guards the fields and is never held across I/O.
type typingTimers struct {
	mu      sync.Mutex
	timers  map[typingKey]*time.Timer
	stopped bool
	// running counts expiries in progress, which a stop waits for.
	running sync.WaitGroup
}

// schedule (re)arms the timer of key to expire the typing at expiresTS,
// after d.
func (tt *typingTimers) schedule(a *API, key typingKey, d time.Duration, expiresTS int64) {
	tt.mu.Lock()
	defer tt.mu.Unlock()
	if tt.stopped {
		return
	}
	if old := tt.timers[key]; old != nil {
		old.Stop()
	}
	if tt.timers == nil {
		tt.timers = make(map[typingKey]*time.Timer)
	}
	var timer *time.Timer
	timer = time.AfterFunc(d, func() {
		tt.mu.Lock()
		if tt.timers[key] == timer {
			delete(tt.timers, key)
		}
		if tt.stopped {
			tt.mu.Unlock()
			return
		}
		tt.running.Add(1)
		tt.mu.Unlock()
		defer tt.running.Done()
		// Expire as of this timer's own expiry: a renewal since then
		// moved the row's expiry past it, and the row stays.
		a.expireTyping(key, expiresTS)
	})
	tt.timers[key] = timer
}

// cancel drops key's timer (the user stopped typing).
func (tt *typingTimers) cancel(key typingKey) {
	tt.mu.Lock()
	defer tt.mu.Unlock()
	if t := tt.timers[key]; t != nil {
		t.Stop()
		delete(tt.timers, key)
	}
}

// stop stops every timer and waits for the expiries in progress.
func (tt *typingTimers) stop() {
	tt.mu.Lock()
	tt.stopped = true
	for k, t := range tt.timers {
		t.Stop()
		delete(tt.timers, k)
	}
	tt.mu.Unlock()
	tt.running.Wait()
}

// expireTyping ends a user's typing if its expiry is at or before asOf,
// and wakes the room's members when it did.
func (a *API) expireTyping(key typingKey, asOf int64) {
	ctx, cancel := context.WithTimeout(context.Background(), typingExpireTimeout)
	defer cancel()
	changed, err := a.db.ExpireTyping(ctx, key.roomNID, key.userID, asOf)
	if err != nil {
		a.log.Warn("expire typing", "room_id", key.roomID, "user_id", key.userID, "err", err)
		return
	}
	if changed {
		a.wake.Rooms(key.roomID)
		a.expiredTyping(ctx, key.roomID, key.userID)
	}
}

// expiredTyping tells other servers that a local user's typing timed out
// here (they time it out on their own too, later).
func (a *API) expiredTyping(ctx context.Context, roomID, userID string) {
	if _, err := a.users.LocalpartOf(userID); err == nil {
		a.sendTyping(ctx, roomID, userID, false)
	}
}

// sweepTyping expires every typing row past its expiry: those of a
// process that stopped before its timers fired. Each row is expired on
// its own condition, so processes sweeping at once report each expiry
// once.
func (a *API) sweepTyping(ctx context.Context) {
	now := time.Now().UnixMilli()
	rows, err := a.db.ExpiredTyping(ctx, now)
	if err != nil {
		if ctx.Err() == nil {
			a.log.Warn("sweep typing", "err", err)
		}
		return
	}
	var rooms []string
	for _, e := range rows {
		changed, err := a.db.ExpireTyping(ctx, e.RoomNID, e.UserID, now)
		if err != nil {
			if ctx.Err() == nil {
				a.log.Warn("expire typing", "room_id", e.RoomID, "user_id", e.UserID, "err", err)
			}
			return
		}
		if changed {
			rooms = append(rooms, e.RoomID)
			a.expiredTyping(ctx, e.RoomID, e.UserID)
		}
	}
	if len(rooms) > 0 {
		a.wake.Rooms(rooms...)
	}
}

// StartTypingExpiry sweeps the typing rows left past their expiry now and
// every typingSweepInterval, until the returned stop is called; stop also
// cancels this process's expiry timers and waits for the work in flight.
// Typing set after stop is no longer expired by timers, only by other
// processes' sweeps.
func (a *API) StartTypingExpiry() (stop func()) {
	a.sweepTyping(context.Background())
	stopSweeps := periodic.Start(context.Background(), typingSweepInterval, a.sweepTyping)
	return func() {
		stopSweeps()
		a.typing.stop()
	}
}
