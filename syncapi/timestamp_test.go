package syncapi_test

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"testing"
	"time"

	"maunium.net/go/mautrix"
)

// TestTimestampToEvent: the closest event the caller may see at or after
// (f) or at or before (b) a time; 404 when there is none.
func TestTimestampToEvent(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		alice, bob, mallory := h.user(t, "alice"), h.user(t, "bob"), h.user(t, "mallory")
		roomID := roomWithVisibility(t, alice, "joined")
		for i := range 3 {
			send(t, alice, roomID, fmt.Sprint(i), nil)
			time.Sleep(3 * time.Millisecond) // distinct timestamps
		}
		join(t, bob, roomID)
		time.Sleep(3 * time.Millisecond)
		last := send(t, alice, roomID, "last", nil)
		timeline := h.allEvents(t, alice, roomID)
		path := "/_matrix/client/v1/rooms/" + esc(roomID) + "/timestamp_to_event"
		type answer struct {
			EventID        string `json:"event_id"`
			OriginServerTS int64  `json:"origin_server_ts"`
		}
		ask := func(cli *mautrix.Client, ts int64, dir string) answer {
			t.Helper()
			var a answer
			h.getJSON(t, cli, path, url.Values{"ts": {strconv.FormatInt(ts, 10)}, "dir": {dir}}, &a)
			return a
		}
		// For every event, asking for its own time finds the first event
		// of that time forwards and the last one backwards.
		for i, e := range timeline {
			firstAt, lastAt := i, i
			for firstAt > 0 && timeline[firstAt-1].OriginServerTS == e.OriginServerTS {
				firstAt--
			}
			for lastAt < len(timeline)-1 && timeline[lastAt+1].OriginServerTS == e.OriginServerTS {
				lastAt++
			}
			if a := ask(alice, e.OriginServerTS, "f"); a.EventID != timeline[firstAt].EventID || a.OriginServerTS != e.OriginServerTS {
				t.Errorf("forwards from event %d's time: %+v, want %s", i, a, timeline[firstAt].EventID)
			}
			if a := ask(alice, e.OriginServerTS, "b"); a.EventID != timeline[lastAt].EventID {
				t.Errorf("backwards from event %d's time: %+v, want %s", i, a, timeline[lastAt].EventID)
			}
		}
		end := timeline[len(timeline)-1].OriginServerTS
		if a := ask(alice, end+100000, "b"); a.EventID != last {
			t.Errorf("backwards from the future: %+v, want %s", a, last)
		}
		if a := ask(alice, 0, "f"); a.EventID != timeline[0].EventID {
			t.Errorf("forwards from 0: %+v, want the create event", a)
		}
		wantError(t, "forwards from the future", h.get(t, alice, path, url.Values{"ts": {strconv.FormatInt(end+100000, 10)}, "dir": {"f"}}),
			http.StatusNotFound, "M_NOT_FOUND")
		wantError(t, "backwards from before the room", h.get(t, alice, path, url.Values{"ts": {"1"}, "dir": {"b"}}), http.StatusNotFound, "M_NOT_FOUND")
		// History visibility "joined": bob, who joined late, cannot see
		// alice's first messages; forwards from the first of them he finds
		// his own join.
		bobJoin := membershipEventID(t, timeline, bob.UserID.String(), 0)
		var first clientEvent
		for _, e := range timeline {
			if e.body() == "0" {
				first = e
			}
		}
		if a := ask(bob, first.OriginServerTS, "f"); a.EventID != bobJoin {
			t.Errorf("bob forwards from the first message: %+v, want his join %s", a, bobJoin)
		}
		if a := ask(alice, first.OriginServerTS, "f"); a.EventID != first.EventID {
			t.Errorf("alice forwards from the first message: %+v, want it", a)
		}
		// Errors.
		wantError(t, "no ts", h.get(t, alice, path, url.Values{"dir": {"f"}}), http.StatusBadRequest, "M_MISSING_PARAM")
		wantError(t, "bad ts", h.get(t, alice, path, url.Values{"ts": {"soon"}, "dir": {"f"}}), http.StatusBadRequest, "M_INVALID_PARAM")
		wantError(t, "no dir", h.get(t, alice, path, url.Values{"ts": {"1"}}), http.StatusBadRequest, "M_INVALID_PARAM")
		wantError(t, "bad dir", h.get(t, alice, path, url.Values{"ts": {"1"}, "dir": {"up"}}), http.StatusBadRequest, "M_INVALID_PARAM")
		wantError(t, "not a member", h.get(t, mallory, path, url.Values{"ts": {"1"}, "dir": {"f"}}), http.StatusForbidden, "M_FORBIDDEN")
		// A v3 path does not exist: the endpoint is v1 only.
		wantError(t, "v3 path", h.get(t, alice, roomPath("v3", roomID, "/timestamp_to_event"), url.Values{"ts": {"1"}, "dir": {"f"}}),
			http.StatusNotFound, "M_UNRECOGNIZED")
	})
}
