package syncapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/gorilla/mux"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/syncapi/filter"
	"github.com/weft-chat/weft/userapi"
)

// Limits of /sync.
const (
	// syncDefaultTimelineLimit is the timeline limit of a filter without
	// one, as in Synapse's default filter.
	syncDefaultTimelineLimit = 10
	// syncMaxTimelineLimit caps what a filter may ask for (Synapse's
	// filter_timeline_limit default).
	syncMaxTimelineLimit = 100
	// syncMaxTimeout caps a long-poll: clients ask for 30 s; an hour would
	// only pin a connection.
	syncMaxTimeout = 5 * time.Minute
)

// SyncRoutes registers GET /sync, woken by n.
func (a *API) SyncRoutes(r *mux.Router, n *Notifier) {
	h := a.authed(func(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
		return a.sync(w, r, dev, n)
	})
	for _, prefix := range []string{"/_matrix/client/v3", "/_matrix/client/r0"} {
		r.Handle(prefix+"/sync", h).Methods(http.MethodGet)
	}
}

// syncRequest is a /sync request's parameters.
type syncRequest struct {
	dev *userapi.Device
	// since is nil for an initial sync.
	since         *SyncToken
	timeout       time.Duration
	fullState     bool
	useStateAfter bool
	filter        *syncFilter
	// setPresence is the set_presence parameter ("" when absent).
	setPresence string
}

// sync is GET /sync: what changed for the caller since the since token,
// waiting up to timeout for something to change when nothing has. An
// initial sync, full_state or a zero timeout answer at once.
func (a *API) sync(w http.ResponseWriter, r *http.Request, dev *userapi.Device, n *Notifier) error {
	ctx := r.Context()
	req, err := a.parseSyncRequest(ctx, r, dev)
	if err != nil {
		return err
	}
	wait := req.since != nil && !req.fullState && req.timeout > 0
	a.syncedPresence(ctx, req, wait)
	deadline := time.Now().Add(req.timeout)
	if wait && a.parkQuiet(w, r, req, n, deadline) {
		return nil
	}
	var timer <-chan time.Time
	if wait {
		t := time.NewTimer(req.timeout)
		defer t.Stop()
		timer = t.C
	}
	for {
		// Listen before reading: a change committed after the read wakes
		// this loop, one committed before it is in what the read finds.
		var wake <-chan struct{}
		release := func() {}
		if wait {
			if wake, release, err = n.Listen(ctx, dev.UserID); err != nil {
				if ctx.Err() != nil {
					return nil // the client is gone
				}
				return err
			}
		}
		resp, err := a.buildSync(ctx, req)
		if err != nil {
			release()
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if !wait || !resp.empty() {
			release()
			return a.respond(ctx, w, resp, dev)
		}
		if a.park(w, r, req, n, resp, wake, release, deadline) {
			return nil
		}
		select {
		case <-wake:
			release()
			continue
		case <-timer:
		case <-n.Done():
		case <-ctx.Done():
		}
		release()
		if ctx.Err() != nil {
			return nil
		}
		// Nothing for the caller: answer with the positions read, so the
		// next sync starts past what did not concern them.
		return a.respond(ctx, w, resp.aged(), dev)
	}
}

// respond writes a sync response with the device's key counts, which
// every response carries, as Synapse's do: a client that reads no count
// cannot tell "no keys left" from "unchanged" (element-android#3725).
func (a *API) respond(ctx context.Context, w http.ResponseWriter, resp *syncResponse, dev *userapi.Device) error {
	if resp.OneTimeKeysCount == nil {
		// A response built a while ago (a long-poll at its timeout):
		// the counts it read then may be stale.
		var err error
		if resp.OneTimeKeysCount, resp.UnusedFallbackKeyTypes, err = a.db.DeviceKeyCounts(ctx, dev.Localpart, dev.DeviceID); err != nil {
			return fmt.Errorf("device key counts: %w", err)
		}
	}
	if _, ok := resp.OneTimeKeysCount["signed_curve25519"]; !ok {
		// Synapse always counts the algorithm clients upload, so that a
		// client with none left learns it.
		resp.OneTimeKeysCount["signed_curve25519"] = 0
	}
	return writeJSON(w, resp)
}

// parseSyncRequest reads the query parameters; bad values are 400
// M_INVALID_PARAM (an unknown filter id too, as in Synapse), a filter
// that is not JSON or breaks the schema M_NOT_JSON or M_BAD_JSON.
func (a *API) parseSyncRequest(ctx context.Context, r *http.Request, dev *userapi.Device) (*syncRequest, error) {
	q := r.URL.Query()
	req := &syncRequest{dev: dev}
	if s := q.Get("since"); s != "" {
		t, err := ParseSyncToken(s)
		if err != nil {
			return nil, err
		}
		req.since = &t
	}
	if s := q.Get("timeout"); s != "" {
		ms, err := parseUint(s)
		if err != nil {
			return nil, mxhttp.InvalidParam("timeout must be a non-negative integer")
		}
		req.timeout = time.Duration(min(ms, syncMaxTimeout.Milliseconds())) * time.Millisecond
	}
	var err error
	if req.fullState, err = syncQueryBool(q, "full_state"); err != nil {
		return nil, err
	}
	if req.useStateAfter, err = syncQueryBool(q, "use_state_after"); err != nil {
		return nil, err
	}
	switch req.setPresence = q.Get("set_presence"); req.setPresence {
	case "", "online", "offline", "unavailable":
	default:
		return nil, mxhttp.InvalidParam(`set_presence must be "online", "offline" or "unavailable"`)
	}
	raw := q.Get("filter")
	key := filterKey{raw: raw}
	if !strings.HasPrefix(raw, "{") {
		key.localpart = dev.Localpart // an id names one of the caller's filters
	}
	if f, ok := a.filters.Get(key); ok {
		req.filter = f
		return req, nil
	}
	f, err := a.loadFilter(ctx, dev, raw)
	if err != nil {
		return nil, err
	}
	req.filter = compileSyncFilter(f)
	if len(raw) <= filterCacheRaw {
		a.filters.Put(key, req.filter)
	}
	return req, nil
}

// syncQueryBool reads an optional true/false parameter (false when
// absent) from the query, parsed once per request: with an inline filter
// each parse is most of the cost of reading the parameters.
func syncQueryBool(q url.Values, name string) (bool, error) {
	switch q.Get(name) {
	case "", "false":
		return false, nil
	case "true":
		return true, nil
	}
	return false, mxhttp.InvalidParam("%s must be true or false", name)
}

// loadFilter reads the filter parameter: inline JSON when it starts with
// "{" (spec: /sync filter), otherwise the id of one of the caller's
// uploaded filters.
func (a *API) loadFilter(ctx context.Context, dev *userapi.Device, raw string) (*filter.Filter, error) {
	if raw == "" {
		return &filter.Filter{}, nil
	}
	if strings.HasPrefix(raw, "{") {
		return filter.Parse([]byte(raw))
	}
	noSuch := mxhttp.InvalidParam("No such filter")
	id, err := parseUint(raw)
	if err != nil {
		return nil, noSuch
	}
	stored, err := a.db.Filter(ctx, dev.Localpart, id)
	if errors.Is(err, sql.ErrNotFound) {
		return nil, noSuch
	}
	if err != nil {
		return nil, err
	}
	return filter.Parse(stored)
}

// syncResponse is the body of GET /sync. Sections with nothing in them are
// left out, as Synapse leaves them out.
type syncResponse struct {
	NextBatch   string       `json:"next_batch"`
	AccountData *eventList   `json:"account_data,omitempty"`
	Presence    *eventList   `json:"presence,omitempty"`
	ToDevice    *eventList   `json:"to_device,omitempty"`
	DeviceLists *deviceLists `json:"device_lists,omitempty"`
	Rooms       *syncRooms   `json:"rooms,omitempty"`
	// The key counts are always there (see respond).
	OneTimeKeysCount       map[string]int `json:"device_one_time_keys_count"`
	UnusedFallbackKeyTypes []string       `json:"device_unused_fallback_key_types"`

	// settled and next: see settle.
	settled bool
	next    SyncToken
}

// syncRooms are the rooms of a sync by the caller's membership.
type syncRooms struct {
	Join   map[string]*joinedRoom   `json:"join,omitempty"`
	Invite map[string]*strippedRoom `json:"invite,omitempty"`
	Knock  map[string]*strippedRoom `json:"knock,omitempty"`
	Leave  map[string]*leftRoom     `json:"leave,omitempty"`
}

// joinedRoom is a room the caller is joined to.
type joinedRoom struct {
	Summary     *roomSummary `json:"summary,omitempty"`
	State       *eventList   `json:"state,omitempty"`
	StateAfter  *eventList   `json:"state_after,omitempty"`
	Timeline    timeline     `json:"timeline"`
	Ephemeral   eventList    `json:"ephemeral"`
	AccountData eventList    `json:"account_data"`
	// The unread counts: the room's in every thread, or the main
	// timeline's with the threads' apart when the filter asks for
	// unread_thread_notifications.
	UnreadNotifications       *sql.NotificationCounts           `json:"unread_notifications,omitempty"`
	UnreadThreadNotifications map[string]sql.NotificationCounts `json:"unread_thread_notifications,omitempty"`
}

// deviceLists is the device_lists section: the users whose devices
// changed, and those the caller no longer shares a room with.
type deviceLists struct {
	Changed []string `json:"changed,omitempty"`
	Left    []string `json:"left,omitempty"`
}

// leftRoom is a room the caller left or was banned from.
type leftRoom struct {
	State       *eventList `json:"state,omitempty"`
	StateAfter  *eventList `json:"state_after,omitempty"`
	Timeline    timeline   `json:"timeline"`
	AccountData eventList  `json:"account_data"`
}

// strippedRoom is an invite (invite_state) or a knock (knock_state).
type strippedRoom struct {
	InviteState *strippedList `json:"invite_state,omitempty"`
	KnockState  *strippedList `json:"knock_state,omitempty"`
}

type strippedList struct {
	Events []strippedEvent `json:"events"`
}

// roomSummary is a joined room's summary; it is sent when it may have
// changed (spec: the fields "may be omitted" otherwise).
type roomSummary struct {
	Heroes  []string `json:"m.heroes,omitzero"`
	Joined  int      `json:"m.joined_member_count"`
	Invited int      `json:"m.invited_member_count"`
}

// eventList is a list of served events (client format, federation format
// or with event_fields applied).
type eventList struct {
	Events []any `json:"events"`
}

type timeline struct {
	Events    []any  `json:"events"`
	Limited   bool   `json:"limited"`
	PrevBatch string `json:"prev_batch,omitempty"`
}

// settle marks the response as one the next sync from its next_batch
// may wait on without reading, while nothing wakes the caller (see
// parkQuiet): next_batch is the positions read, next, with no to-device
// page left, and the response serves no to-device message, which that
// sync would have to acknowledge.
func (r *syncResponse) settle(next, upper SyncToken) {
	r.settled = next == upper && r.ToDevice == nil
	r.next = next
}

// aged is the response to send when it was built a while ago: without the
// device's key counts, which respond reads again.
func (r *syncResponse) aged() *syncResponse {
	r.OneTimeKeysCount, r.UnusedFallbackKeyTypes = nil, nil
	return r
}

// empty reports whether the response has nothing for the client beyond a
// new token.
func (r *syncResponse) empty() bool {
	return r.AccountData == nil && r.Rooms == nil && r.Presence == nil && r.ToDevice == nil && r.DeviceLists == nil
}

func newEventList(evs []any) eventList {
	if evs == nil {
		evs = []any{}
	}
	return eventList{Events: evs}
}
