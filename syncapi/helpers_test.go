package syncapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/weft-chat/weft/homeserver/hstest"
	"github.com/weft-chat/weft/internal/testclient"
	"github.com/weft-chat/weft/sql/sqltest"
)

// hs is a whole test homeserver driven over HTTP.
type hs struct {
	*hstest.Server
}

// forEachEngine runs f with a fresh homeserver on each engine.
func forEachEngine(t *testing.T, f func(t *testing.T, h hs)) {
	for _, e := range sqltest.Engines() {
		t.Run(string(e), func(t *testing.T) { f(t, hs{hstest.StartEngine(t, e)}) })
	}
}

func (h hs) user(t *testing.T, localpart string) *mautrix.Client {
	t.Helper()
	return testclient.Register(t, h.ClientURL, localpart)
}

// clientEvent is the part of a served event the tests look at.
type clientEvent struct {
	EventID        string          `json:"event_id"`
	Type           string          `json:"type"`
	Sender         string          `json:"sender"`
	StateKey       *string         `json:"state_key"`
	OriginServerTS int64           `json:"origin_server_ts"`
	RoomID         string          `json:"room_id"`
	Content        json.RawMessage `json:"content"`
	Unsigned       struct {
		Relations     map[string]json.RawMessage `json:"m.relations"`
		PrevContent   json.RawMessage            `json:"prev_content"`
		TransactionID string                     `json:"transaction_id"`
	} `json:"unsigned"`
}

func (e clientEvent) body() string {
	var c struct {
		Body string `json:"body"`
	}
	_ = json.Unmarshal(e.Content, &c)
	return c.Body
}

// reply is a raw HTTP answer.
type reply struct {
	status int
	body   []byte
}

// errcode is the Matrix errcode of an error reply.
func (r reply) errcode() string {
	var e struct {
		Errcode string `json:"errcode"`
	}
	_ = json.Unmarshal(r.body, &e)
	return e.Errcode
}

// get sends an authenticated GET (cli nil: none).
func (h hs) get(t *testing.T, cli *mautrix.Client, path string, query url.Values) reply {
	t.Helper()
	u := h.ClientURL + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cli != nil {
		req.Header.Set("Authorization", "Bearer "+cli.AccessToken)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return reply{status: resp.StatusCode, body: body}
}

// getJSON is get, expecting 200 and decoding into v.
func (h hs) getJSON(t *testing.T, cli *mautrix.Client, path string, query url.Values, v any) {
	t.Helper()
	r := h.get(t, cli, path, query)
	if r.status != http.StatusOK {
		t.Fatalf("GET %s?%s: %d %s", path, query.Encode(), r.status, r.body)
	}
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("GET %s: %v in %s", path, err, r.body)
	}
}

// wantError checks an error reply's status and errcode.
func wantError(t *testing.T, what string, r reply, status int, code string) {
	t.Helper()
	if r.status != status || r.errcode() != code {
		t.Errorf("%s: %d %s, want %d %s", what, r.status, r.body, status, code)
	}
}

func esc(s string) string { return url.PathEscape(s) }

func roomPath(version, roomID, rest string) string {
	return "/_matrix/client/" + version + "/rooms/" + esc(roomID) + rest
}

// messagesResponse is the body of /messages.
type messagesResponse struct {
	Start string        `json:"start"`
	End   string        `json:"end"`
	Chunk []clientEvent `json:"chunk"`
	State []clientEvent `json:"state"`
}

func (h hs) messages(t *testing.T, cli *mautrix.Client, roomID string, q url.Values) messagesResponse {
	t.Helper()
	var resp messagesResponse
	h.getJSON(t, cli, roomPath("v3", roomID, "/messages"), q, &resp)
	return resp
}

func createRoom(t *testing.T, cli *mautrix.Client, req *mautrix.ReqCreateRoom) string {
	t.Helper()
	resp, err := cli.CreateRoom(context.Background(), req)
	if err != nil {
		t.Fatalf("create room: %v", err)
	}
	return resp.RoomID.String()
}

// roomWithVisibility makes a public room with the given history
// visibility, so that anyone may join.
func roomWithVisibility(t *testing.T, cli *mautrix.Client, vis string) string {
	t.Helper()
	return createRoom(t, cli, &mautrix.ReqCreateRoom{Preset: "public_chat", InitialState: []*event.Event{{
		Type: event.StateHistoryVisibility, StateKey: ptr(""), Content: event.Content{Raw: map[string]any{"history_visibility": vis}}}}})
}

func ptr[T any](v T) *T { return &v }

var msgType = event.Type{Type: "m.room.message", Class: event.MessageEventType}

// send sends an m.room.message with extra content fields.
func send(t *testing.T, cli *mautrix.Client, roomID, body string, extra map[string]any) string {
	t.Helper()
	return sendType(t, cli, roomID, msgType, body, extra)
}

func sendType(t *testing.T, cli *mautrix.Client, roomID string, typ event.Type, body string, extra map[string]any) string {
	t.Helper()
	content := map[string]any{"msgtype": "m.text", "body": body}
	for k, v := range extra {
		content[k] = v
	}
	resp, err := cli.SendMessageEvent(context.Background(), id.RoomID(roomID), typ, content)
	if err != nil {
		t.Fatalf("send %q: %v", body, err)
	}
	return resp.EventID.String()
}

func join(t *testing.T, cli *mautrix.Client, roomID string) {
	t.Helper()
	if _, err := cli.JoinRoomByID(context.Background(), id.RoomID(roomID)); err != nil {
		t.Fatalf("%s joins: %v", cli.UserID, err)
	}
}

func leave(t *testing.T, cli *mautrix.Client, roomID string) {
	t.Helper()
	if _, err := cli.LeaveRoom(context.Background(), id.RoomID(roomID)); err != nil {
		t.Fatalf("%s leaves: %v", cli.UserID, err)
	}
}

func invite(t *testing.T, cli *mautrix.Client, roomID string, who *mautrix.Client) {
	t.Helper()
	if _, err := cli.InviteUser(context.Background(), id.RoomID(roomID), &mautrix.ReqInviteUser{UserID: who.UserID}); err != nil {
		t.Fatalf("invite %s: %v", who.UserID, err)
	}
}

// allEvents lists a room's whole timeline as cli sees it, oldest first.
func (h hs) allEvents(t *testing.T, cli *mautrix.Client, roomID string) []clientEvent {
	t.Helper()
	return h.messages(t, cli, roomID, url.Values{"dir": {"f"}, "limit": {"1000"}}).Chunk
}

// membershipEventID finds the id of a user's n-th member event (0-based)
// in a timeline.
func membershipEventID(t *testing.T, evs []clientEvent, userID string, n int) string {
	t.Helper()
	for _, e := range evs {
		if e.Type == "m.room.member" && e.StateKey != nil && *e.StateKey == userID {
			if n == 0 {
				return e.EventID
			}
			n--
		}
	}
	t.Fatalf("no member event %d of %s", n, userID)
	return ""
}

func eventIDs(evs []clientEvent) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.EventID
	}
	return out
}

func filterJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func describe(evs []clientEvent) string {
	var b strings.Builder
	for _, e := range evs {
		fmt.Fprintf(&b, "%s %s %q; ", e.Type, e.Sender, e.body())
	}
	return b.String()
}

// contextResponse is the body of /context.
type contextResponse struct {
	Start        string        `json:"start"`
	End          string        `json:"end"`
	EventsBefore []clientEvent `json:"events_before"`
	Event        clientEvent   `json:"event"`
	EventsAfter  []clientEvent `json:"events_after"`
	State        []clientEvent `json:"state"`
}
