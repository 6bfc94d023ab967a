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
	roomNID, err := a.db.JoinedRoomNID(ctx, roomID, dev.UserID)
	if errors.Is(err, sql.ErrNotFound) {
		return nil, mxhttp.Forbidden("You are not joined to this room")
	}
	if err != nil {
		return nil, err
	}
	key := typingKey{roomNID: roomNID, roomID: roomID, userID: dev.UserID}
	var changed bool
	if *req.Typing {
		now := time.Now()
		expires := now.Add(timeout).UnixMilli()
		if changed, err = a.db.SetTyping(ctx, roomNID, dev.UserID, now.UnixMilli(), expires); err != nil {
			return nil, err
		}
		a.typing.schedule(a, key, timeout, expires)
		a.active(ctx, dev.UserID)
	} else {
		a.typing.cancel(key)
		if changed, err = a.db.StopTyping(ctx, roomNID, dev.UserID); err != nil {
			return nil, err
		}
	}
	if changed {
		a.wake.Rooms(roomID)
	}
	return struct{}{}, nil
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
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(typingSweepInterval)
		defer t.Stop()
		for {
			a.sweepTyping(ctx)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return func() {
		cancel()
		<-done
		a.typing.stop()
	}
}
