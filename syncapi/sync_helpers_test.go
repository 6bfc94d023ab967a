package syncapi_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"testing"
	"time"

	"maunium.net/go/mautrix"
)

// syncResp is the part of a /sync body the tests look at.
type syncResp struct {
	NextBatch   string          `json:"next_batch"`
	AccountData *syncEventsList `json:"account_data"`
	Presence    json.RawMessage `json:"presence"`
	ToDevice    json.RawMessage `json:"to_device"`
	DeviceLists json.RawMessage `json:"device_lists"`
	Rooms       *struct {
		Join   map[string]syncJoined   `json:"join"`
		Invite map[string]syncStripped `json:"invite"`
		Knock  map[string]syncStripped `json:"knock"`
		Leave  map[string]syncJoined   `json:"leave"`
	} `json:"rooms"`
}

type syncEventsList struct {
	Events []json.RawMessage `json:"events"`
}

type syncClientEvents struct {
	Events []clientEvent `json:"events"`
}

type syncJoined struct {
	Summary    map[string]json.RawMessage `json:"summary"`
	State      *syncClientEvents          `json:"state"`
	StateAfter *syncClientEvents          `json:"state_after"`
	Timeline   struct {
		Events    []clientEvent `json:"events"`
		Limited   bool          `json:"limited"`
		PrevBatch string        `json:"prev_batch"`
	} `json:"timeline"`
	Ephemeral           *syncEventsList `json:"ephemeral"`
	AccountData         *syncEventsList `json:"account_data"`
	UnreadNotifications json.RawMessage `json:"unread_notifications"`
}

type syncStripped struct {
	InviteState *struct {
		Events []map[string]json.RawMessage `json:"events"`
	} `json:"invite_state"`
	KnockState *struct {
		Events []map[string]json.RawMessage `json:"events"`
	} `json:"knock_state"`
}

func (r syncResp) joined(roomID string) (syncJoined, bool) {
	if r.Rooms == nil {
		return syncJoined{}, false
	}
	j, ok := r.Rooms.Join[roomID]
	return j, ok
}

func (r syncResp) left(roomID string) (syncJoined, bool) {
	if r.Rooms == nil {
		return syncJoined{}, false
	}
	j, ok := r.Rooms.Leave[roomID]
	return j, ok
}

func (r syncResp) invited(roomID string) (syncStripped, bool) {
	if r.Rooms == nil {
		return syncStripped{}, false
	}
	j, ok := r.Rooms.Invite[roomID]
	return j, ok
}

func (r syncResp) noRooms() bool {
	return r.Rooms == nil || (len(r.Rooms.Join) == 0 && len(r.Rooms.Invite) == 0 && len(r.Rooms.Knock) == 0 && len(r.Rooms.Leave) == 0)
}

// sync runs GET /sync with the given parameters, expecting 200.
func (h hs) sync(t *testing.T, cli *mautrix.Client, q url.Values) syncResp {
	t.Helper()
	var resp syncResp
	h.getJSON(t, cli, "/_matrix/client/v3/sync", q, &resp)
	if resp.NextBatch == "" {
		t.Fatal("sync without next_batch")
	}
	return resp
}

// syncSince is an incremental sync that answers at once.
func (h hs) syncSince(t *testing.T, cli *mautrix.Client, since string, extra ...string) syncResp {
	t.Helper()
	q := url.Values{"since": {since}, "timeout": {"0"}}
	for i := 0; i+1 < len(extra); i += 2 {
		q.Set(extra[i], extra[i+1])
	}
	return h.sync(t, cli, q)
}

// syncAsync runs a long-polling sync in the background.
func (h hs) syncAsync(t testing.TB, cli *mautrix.Client, since string, timeout time.Duration) <-chan syncResult {
	t.Helper()
	out := make(chan syncResult, 1)
	q := url.Values{"since": {since}, "timeout": {strconv.FormatInt(timeout.Milliseconds(), 10)}}
	go func() {
		start := time.Now()
		req, _ := http.NewRequest(http.MethodGet, h.ClientURL+"/_matrix/client/v3/sync?"+q.Encode(), nil)
		req.Header.Set("Authorization", "Bearer "+cli.AccessToken)
		res, err := http.DefaultClient.Do(req)
		r := syncResult{err: err}
		if err == nil {
			defer res.Body.Close()
			r.status = res.StatusCode
			r.err = json.NewDecoder(res.Body).Decode(&r.resp)
		}
		r.took = time.Since(start)
		r.done = time.Now()
		out <- r
	}()
	return out
}

type syncResult struct {
	resp   syncResp
	status int
	err    error
	took   time.Duration
	done   time.Time
}

// await waits for a background sync to answer 200.
func await(t *testing.T, c <-chan syncResult, within time.Duration) syncResult {
	t.Helper()
	select {
	case r := <-c:
		if r.err != nil || r.status != http.StatusOK {
			t.Fatalf("sync: %d %v", r.status, r.err)
		}
		return r
	case <-time.After(within):
		t.Fatalf("sync did not answer within %s", within)
	}
	return syncResult{}
}

// stillWaiting checks that a background sync has not answered yet.
func stillWaiting(t *testing.T, c <-chan syncResult, what string) {
	t.Helper()
	select {
	case r := <-c:
		t.Fatalf("%s: the sync answered early (%d, %+v)", what, r.status, r.resp)
	case <-time.After(150 * time.Millisecond):
	}
}

func bodies(evs []clientEvent) []string {
	var out []string
	for _, e := range evs {
		if e.Type == "m.room.message" {
			out = append(out, e.body())
		}
	}
	return out
}

func types(evs []clientEvent) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.Type
	}
	return out
}

func hasState(evs []clientEvent, typ, stateKey string) bool {
	return slices.ContainsFunc(evs, func(e clientEvent) bool {
		return e.Type == typ && e.StateKey != nil && *e.StateKey == stateKey
	})
}

func memberKeys(evs []clientEvent) []string {
	var out []string
	for _, e := range evs {
		if e.Type == "m.room.member" && e.StateKey != nil {
			out = append(out, *e.StateKey)
		}
	}
	slices.Sort(out)
	return out
}

func stateOf(j syncJoined) []clientEvent {
	if j.State == nil {
		return nil
	}
	return j.State.Events
}
