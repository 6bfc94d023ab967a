package clientapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/homeserver/hstest"
	"github.com/weft-chat/weft/internal/testclient"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// roomsHS is a whole test homeserver for the room endpoint tests, with a
// second connection to its database for the checks HTTP cannot make
// (event order, what was stored).
type roomsHS struct {
	srv *hstest.Server
	db  *sql.DB
}

// startRoomsHS starts a homeserver with cfg until the test ends.
func startRoomsHS(t *testing.T, cfg config.Config) *roomsHS {
	t.Helper()
	srv := hstest.Start(t, cfg)
	db, err := sql.Open(context.Background(), cfg.Database.URL, 2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return &roomsHS{srv: srv, db: db}
}

// forEachHS runs f on a fresh homeserver on each engine.
func forEachHS(t *testing.T, f func(t *testing.T, h *roomsHS)) {
	for _, e := range sqltest.Engines() {
		t.Run(string(e), func(t *testing.T) { f(t, startRoomsHS(t, hstest.Config(t, e))) })
	}
}

// user registers a user and returns a client signed in as them.
func (h *roomsHS) user(t *testing.T, localpart string) *mautrix.Client {
	t.Helper()
	return testclient.Register(t, h.srv.ClientURL, localpart)
}

// device signs cli's user in again: the same user on a second device.
func (h *roomsHS) device(t *testing.T, cli *mautrix.Client) *mautrix.Client {
	t.Helper()
	localpart, _, err := cli.UserID.Parse()
	if err != nil {
		t.Fatal(err)
	}
	other, err := mautrix.NewClient(h.srv.ClientURL, "", "")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := other.Login(context.Background(), &mautrix.ReqLogin{Type: mautrix.AuthTypePassword,
		Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: localpart}, Password: "password"})
	if err != nil {
		t.Fatalf("second login of %s: %v", localpart, err)
	}
	other.SetCredentials(resp.UserID, resp.AccessToken)
	other.DeviceID = resp.DeviceID
	if other.DeviceID == cli.DeviceID {
		t.Fatalf("second login reused device %s", cli.DeviceID)
	}
	return other
}

// userID is the full id of localpart on the test server.
func (h *roomsHS) userID(localpart string) string {
	return "@" + localpart + ":" + h.srv.Config.ServerName
}

// do makes a raw request as cli (nil: no access token). path segments
// given as {…} are not escaped here: callers escape ids with pathEsc. A body
// that is a string is sent as is, anything else as JSON.
func (h *roomsHS) do(t testing.TB, cli *mautrix.Client, method, path string, body any) response {
	t.Helper()
	if !strings.HasPrefix(path, "/_") {
		path = "/_matrix/client/v3" + path
	}
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		data, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, h.srv.ClientURL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if cli != nil {
		req.Header.Set("Authorization", "Bearer "+cli.AccessToken)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{Status: resp.StatusCode, Body: data}
}

// pathEsc escapes one path segment.
func pathEsc(s string) string { return url.PathEscape(s) }

// createRoom creates a room from a raw createRoom body and returns its id.
func (h *roomsHS) createRoom(t *testing.T, cli *mautrix.Client, body map[string]any) string {
	t.Helper()
	if body == nil {
		body = map[string]any{}
	}
	var resp struct {
		RoomID string `json:"room_id"`
	}
	h.do(t, cli, "POST", "/createRoom", body).expect(t, 200).JSON(t, &resp)
	if !strings.HasPrefix(resp.RoomID, "!") {
		t.Fatalf("createRoom gave room id %q", resp.RoomID)
	}
	return resp.RoomID
}

// roomEvent is a client-format event as tests read it.
type roomEvent struct {
	Content        map[string]any `json:"content"`
	EventID        string         `json:"event_id"`
	OriginServerTS int64          `json:"origin_server_ts"`
	RoomID         string         `json:"room_id"`
	Sender         string         `json:"sender"`
	StateKey       *string        `json:"state_key"`
	Type           string         `json:"type"`
	Redacts        string         `json:"redacts"`
	Unsigned       struct {
		Age             *int64     `json:"age"`
		TransactionID   string     `json:"transaction_id"`
		RedactedBecause *roomEvent `json:"redacted_because"`
	} `json:"unsigned"`
}

// state reads a room's state as cli sees it, keyed by type and state key.
func (h *roomsHS) state(t *testing.T, cli *mautrix.Client, roomID string) map[[2]string]roomEvent {
	t.Helper()
	var evs []roomEvent
	h.do(t, cli, "GET", "/rooms/"+pathEsc(roomID)+"/state", nil).expect(t, 200).JSON(t, &evs)
	out := make(map[[2]string]roomEvent, len(evs))
	for _, e := range evs {
		if e.StateKey == nil {
			t.Fatalf("state event %s has no state_key", e.EventID)
		}
		if e.RoomID != roomID {
			t.Fatalf("state event %s has room_id %q, want %q", e.EventID, e.RoomID, roomID)
		}
		out[[2]string{e.Type, *e.StateKey}] = e
	}
	return out
}

// event reads an event as cli sees it through GET /rooms/{roomId}/event.
func (h *roomsHS) event(t *testing.T, cli *mautrix.Client, roomID, eventID string) roomEvent {
	t.Helper()
	var ev roomEvent
	h.do(t, cli, "GET", "/rooms/"+pathEsc(roomID)+"/event/"+pathEsc(eventID), nil).expect(t, 200).JSON(t, &ev)
	return ev
}

// send sends a text message through mautrix and returns its event id.
func (h *roomsHS) send(t *testing.T, cli *mautrix.Client, roomID, body string) string {
	t.Helper()
	resp, err := cli.SendMessageEvent(context.Background(), id.RoomID(roomID), event.EventMessage, map[string]any{"msgtype": "m.text", "body": body})
	if err != nil {
		t.Fatalf("%s sends to %s: %v", cli.UserID, roomID, err)
	}
	return resp.EventID.String()
}

// join joins cli's user to a room.
func (h *roomsHS) join(t *testing.T, cli *mautrix.Client, roomID string) {
	t.Helper()
	if _, err := cli.JoinRoomByID(context.Background(), id.RoomID(roomID)); err != nil {
		t.Fatalf("%s joins %s: %v", cli.UserID, roomID, err)
	}
}

// wantMxErr fails unless err is the Matrix error code with status.
func wantMxErr(t *testing.T, err error, status int, code string) {
	t.Helper()
	var he mautrix.HTTPError
	if !errors.As(err, &he) || he.Response == nil {
		t.Fatalf("got %v, want %d %s", err, status, code)
	}
	got := ""
	if he.RespError != nil {
		got = he.RespError.ErrCode
	}
	if he.Response.StatusCode != status || got != code {
		t.Fatalf("got %d %s (%s), want %d %s", he.Response.StatusCode, got, he.ResponseBody, status, code)
	}
}

// stateOrder lists a room's current state as "type|state_key" in the
// order the events were sent.
func (h *roomsHS) stateOrder(t *testing.T, roomID string) []string {
	t.Helper()
	evs, err := h.db.CurrentStateEvents(context.Background(), roomID)
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(evs, func(a, b sql.Event) int { return int(a.StreamPos - b.StreamPos) })
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.Type + "|" + *e.StateKey
	}
	return out
}
