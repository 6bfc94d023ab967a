package clientapi_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"

	"github.com/weft-chat/weft/homeserver/hstest"
	"github.com/weft-chat/weft/internal/testclient"
	"github.com/weft-chat/weft/sql/sqltest"
)

// vmHistories are the membership histories of the second user, one user
// each, relative to the room's timeline (see TestVisibilityMatrixAllPaths).
var vmHistories = []string{"never", "invited", "left", "late", "early"}

// vmNamed are the events whose visibility the matrix checks.
var vmNamed = []string{"m1", "r1", "r1b", "m2", "r2", "t2"}

// vmMembership gives each history's membership at each named event and
// now ("" is no membership).
var vmMembership = map[string]map[string]string{
	"never":   {"m1": "", "r1": "", "r1b": "", "m2": "", "r2": "", "t2": "", "now": ""},
	"invited": {"m1": "invite", "r1": "invite", "r1b": "invite", "m2": "invite", "r2": "invite", "t2": "invite", "now": "invite"},
	"left":    {"m1": "join", "r1": "join", "r1b": "leave", "m2": "leave", "r2": "leave", "t2": "leave", "now": "leave"},
	"late":    {"m1": "", "r1": "", "r1b": "", "m2": "", "r2": "", "t2": "", "now": "join"},
	"early":   {"m1": "join", "r1": "join", "r1b": "join", "m2": "join", "r2": "join", "t2": "join", "now": "join"},
}

// vmVisible is the spec's rule (client-server API, "History visibility"),
// written out again here rather than borrowed from roomserver so that the
// test checks the product against the spec and not against itself:
// world_readable shows everything; a user joined at the event sees it;
// shared shows everything to users joined now; invited shows what
// happened while the user was invited.
func vmVisible(vis, at, now string) bool {
	switch {
	case vis == "world_readable":
		return true
	case at == "join":
		return true
	case vis == "shared" && now == "join":
		return true
	case vis == "invited" && at == "invite":
		return true
	}
	return false
}

// TestVisibilityMatrixAllPaths checks every client read path of a room
// against each history visibility setting and each membership history of
// a second user, for leaks. Each room's timeline, after its creation
// (join rule invite, topic "before"):
//
//	alice invites "invited", "left" and "early"
//	"left" and "early" join
//	m1     alice: thread root
//	r1     alice: reply in m1's thread
//	       "left" leaves
//	r1b    alice: reply in m1's thread (a visible root, maybe a hidden reply)
//	m2     alice: thread root
//	r2     alice: reply in m2's thread
//	t2     alice: topic "after"
//	       alice invites "late", who joins
//
// "never" never has a membership; "invited" never answers the invite.
// Reads that go through the timeline (/messages, /context, /relations,
// /threads) first need the user to be or have been joined unless the room
// is world_readable (spec /messages: "a user needs to join a room to view
// events in that room"); /state and /members need the same (Synapse's
// check_user_in_room_or_world_readable), a user who left seeing the state
// at their departure; /hierarchy and /room_summary show a room that is
// neither public nor world_readable only to its joined and invited
// members (space_hierarchy.yaml, room_summary.yaml).
func TestVisibilityMatrixAllPaths(t *testing.T) {
	for _, e := range sqltest.Engines() {
		t.Run(string(e), func(t *testing.T) {
			srv := hstest.StartEngine(t, e)
			base := srv.ClientURL
			alice := testclient.Register(t, base, "alice")
			users := map[string]*mautrix.Client{}
			for _, h := range vmHistories {
				users[h] = testclient.Register(t, base, h)
			}
			for _, vis := range []string{"world_readable", "shared", "invited", "joined"} {
				t.Run(vis, func(t *testing.T) {
					roomID, named := vmBuildRoom(t, alice, users, vis)
					for _, h := range vmHistories {
						t.Run(h, func(t *testing.T) {
							vmCheckUser(t, base, users[h], roomID, vis, h, named, users["late"].UserID.String())
						})
					}
				})
			}
		})
	}
}

// vmBuildRoom makes the room of the test's timeline and returns its id and
// the ids of the named events.
func vmBuildRoom(t *testing.T, alice *mautrix.Client, users map[string]*mautrix.Client, vis string) (string, map[string]string) {
	t.Helper()
	ctx := context.Background()
	resp, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Topic: "before",
		InitialState: []*event.Event{{Type: event.StateHistoryVisibility, StateKey: new(string),
			Content: event.Content{Raw: map[string]any{"history_visibility": vis}}}}})
	if err != nil {
		t.Fatalf("create room: %v", err)
	}
	room := resp.RoomID
	invite := func(who string) {
		t.Helper()
		if _, err := alice.InviteUser(ctx, room, &mautrix.ReqInviteUser{UserID: users[who].UserID}); err != nil {
			t.Fatalf("invite %s: %v", who, err)
		}
	}
	join := func(who string) {
		t.Helper()
		if _, err := users[who].JoinRoomByID(ctx, room); err != nil {
			t.Fatalf("join %s: %v", who, err)
		}
	}
	send := func(body, threadRoot string) string {
		t.Helper()
		content := map[string]any{"msgtype": "m.text", "body": body}
		if threadRoot != "" {
			content["m.relates_to"] = map[string]any{"rel_type": "m.thread", "event_id": threadRoot}
		}
		r, err := alice.SendMessageEvent(ctx, room, event.EventMessage, content)
		if err != nil {
			t.Fatalf("send %s: %v", body, err)
		}
		return r.EventID.String()
	}
	named := map[string]string{}
	for _, who := range []string{"invited", "left", "early"} {
		invite(who)
	}
	join("left")
	join("early")
	named["m1"] = send("m1", "")
	named["r1"] = send("r1", named["m1"])
	if _, err := users["left"].LeaveRoom(ctx, room); err != nil {
		t.Fatalf("leave: %v", err)
	}
	named["r1b"] = send("r1b", named["m1"])
	named["m2"] = send("m2", "")
	named["r2"] = send("r2", named["m2"])
	t2, err := alice.SendStateEvent(ctx, room, event.StateTopic, "", map[string]any{"topic": "after"})
	if err != nil {
		t.Fatalf("topic: %v", err)
	}
	named["t2"] = t2.EventID.String()
	invite("late")
	join("late")
	return room.String(), named
}

// vmCheckUser checks every read path for one user history.
func vmCheckUser(t *testing.T, base string, cli *mautrix.Client, roomID, vis, h string, named map[string]string, lateID string) {
	mem := vmMembership[h]
	now := mem["now"]
	worldReadable := vis == "world_readable"
	// wantVisible is what the user must see of the named events; hidden is
	// the rest, whose ids must appear nowhere in a response.
	wantVisible := map[string]bool{}
	var visible, hidden []string
	for _, n := range vmNamed {
		wantVisible[n] = vmVisible(vis, mem[n], now)
		if wantVisible[n] {
			visible = append(visible, named[n])
		} else {
			hidden = append(hidden, named[n])
		}
	}
	// The timeline paths and /state, /members let in members past and
	// present, and anyone if the room is world_readable.
	mayRead := worldReadable || now == "join" || now == "leave"
	// /hierarchy and /room_summary: a private room's joined and invited
	// members, or anyone if world_readable.
	mayPreview := worldReadable || now == "join" || now == "invite"
	get := func(path string) (int, map[string]any, string) {
		return vmGet(t, base, cli.AccessToken, path)
	}
	room := url.PathEscape(roomID)
	noHidden := func(what, raw string) {
		t.Helper()
		for _, n := range vmNamed {
			if !wantVisible[n] && vmContains(raw, named[n]) {
				t.Errorf("LEAK %s: hidden event %s (%s) in response: %s", what, n, named[n], raw)
			}
		}
	}

	t.Run("event", func(t *testing.T) {
		for _, n := range vmNamed {
			status, body, raw := get("/_matrix/client/v3/rooms/" + room + "/event/" + url.PathEscape(named[n]))
			if wantVisible[n] {
				// Bundled aggregations (the thread summary) must not
				// carry a hidden reply.
				noHidden("/event "+n, raw)
				if status != http.StatusOK || body["event_id"] != named[n] {
					t.Errorf("/event %s: want 200 with the event, got %d %s", n, status, raw)
				}
			} else if status != http.StatusNotFound || body["errcode"] != "M_NOT_FOUND" {
				t.Errorf("LEAK? /event %s: want 404 M_NOT_FOUND, got %d %s", n, status, raw)
			}
		}
	})

	t.Run("messages", func(t *testing.T) {
		status, body, raw := get("/_matrix/client/v3/rooms/" + room + "/messages?dir=b&limit=1000")
		if !mayRead {
			vmExpectForbidden(t, "/messages", status, body, raw)
			return
		}
		if status != http.StatusOK {
			t.Fatalf("/messages: want 200, got %d %s", status, raw)
		}
		noHidden("/messages", raw)
		got := vmChunkIDs(body, "chunk")
		for _, n := range vmNamed {
			if wantVisible[n] && !slices.Contains(got, named[n]) {
				t.Errorf("/messages: visible event %s missing", n)
			}
		}
	})

	t.Run("context", func(t *testing.T) {
		for _, n := range vmNamed {
			status, body, raw := get("/_matrix/client/v3/rooms/" + room + "/context/" + url.PathEscape(named[n]) + "?limit=20")
			switch {
			case !mayRead:
				vmExpectForbidden(t, "/context "+n, status, body, raw)
			case !wantVisible[n]:
				if status != http.StatusNotFound || body["errcode"] != "M_NOT_FOUND" {
					t.Errorf("LEAK? /context %s: want 404 M_NOT_FOUND, got %d %s", n, status, raw)
				}
			default:
				if status != http.StatusOK {
					t.Errorf("/context %s: want 200, got %d %s", n, status, raw)
					continue
				}
				noHidden("/context "+n, raw)
			}
		}
	})

	t.Run("relations", func(t *testing.T) {
		for _, pair := range [][]string{{"m1", "r1", "r1b"}, {"m2", "r2"}} {
			root, replies := pair[0], pair[1:]
			status, body, raw := get("/_matrix/client/v1/rooms/" + room + "/relations/" + url.PathEscape(named[root]) + "?limit=50")
			switch {
			case !mayRead:
				vmExpectForbidden(t, "/relations "+root, status, body, raw)
			case !wantVisible[root]:
				if status != http.StatusNotFound || body["errcode"] != "M_NOT_FOUND" {
					t.Errorf("LEAK? /relations %s: want 404 M_NOT_FOUND, got %d %s", root, status, raw)
				}
			default:
				if status != http.StatusOK {
					t.Errorf("/relations %s: want 200, got %d %s", root, status, raw)
					continue
				}
				noHidden("/relations "+root, raw)
				got := vmChunkIDs(body, "chunk")
				for _, reply := range replies {
					if wantVisible[reply] != slices.Contains(got, named[reply]) {
						t.Errorf("/relations %s: reply %s visible=%v, chunk %v", root, reply, wantVisible[reply], got)
					}
				}
			}
		}
	})

	t.Run("threads", func(t *testing.T) {
		status, body, raw := get("/_matrix/client/v1/rooms/" + room + "/threads?limit=50")
		if !mayRead {
			vmExpectForbidden(t, "/threads", status, body, raw)
			return
		}
		if status != http.StatusOK {
			t.Fatalf("/threads: want 200, got %d %s", status, raw)
		}
		got := vmChunkIDs(body, "chunk")
		for _, root := range []string{"m1", "m2"} {
			if wantVisible[root] != slices.Contains(got, named[root]) {
				t.Errorf("/threads: root %s visible=%v, chunk %v", root, wantVisible[root], got)
			}
		}
		// The bundled latest_event of a visible root is its latest reply
		// the user may see, never a hidden one.
		noHidden("/threads", raw)
		if wantVisible["m1"] {
			latest := "r1b"
			if !wantVisible[latest] {
				latest = "r1"
			}
			if !vmContains(raw, named[latest]) {
				t.Errorf("/threads: m1's latest visible reply %s not bundled: %s", latest, raw)
			}
		}
	})

	// The state a past member sees is the state at their departure: the
	// topic set after "left" left must not reach them.
	wantTopic := "after"
	if now == "leave" {
		wantTopic = "before"
	}

	t.Run("state", func(t *testing.T) {
		status, _, raw := vmGetAny(t, base, cli.AccessToken, "/_matrix/client/v3/rooms/"+room+"/state")
		if !mayRead {
			var body map[string]any
			_ = json.Unmarshal([]byte(raw), &body)
			vmExpectForbidden(t, "/state", status, body, raw)
		} else {
			if status != http.StatusOK {
				t.Fatalf("/state: want 200, got %d %s", status, raw)
			}
			if now == "leave" {
				noHidden("/state", raw)
				if vmContains(raw, lateID) {
					t.Errorf("LEAK /state: member who joined after the user left is shown: %s", raw)
				}
			}
		}
		status, body, raw := get("/_matrix/client/v3/rooms/" + room + "/state/m.room.topic/")
		if !mayRead {
			vmExpectForbidden(t, "/state/m.room.topic/", status, body, raw)
			return
		}
		if status != http.StatusOK || body["topic"] != wantTopic {
			t.Errorf("/state/m.room.topic/: want 200 topic %q, got %d %s", wantTopic, status, raw)
		}
		status, body, raw = get("/_matrix/client/v3/rooms/" + room + "/state/m.room.member/" + url.PathEscape(lateID))
		switch {
		case now == "leave":
			if status != http.StatusNotFound {
				t.Errorf("LEAK /state/m.room.member/late: joined after the user left, want 404, got %d %s", status, raw)
			}
		case status != http.StatusOK || body["membership"] != "join":
			t.Errorf("/state/m.room.member/late: want 200 join, got %d %s", status, raw)
		}
	})

	t.Run("members", func(t *testing.T) {
		status, body, raw := get("/_matrix/client/v3/rooms/" + room + "/members")
		if !mayRead {
			vmExpectForbidden(t, "/members", status, body, raw)
			return
		}
		if status != http.StatusOK {
			t.Fatalf("/members: want 200, got %d %s", status, raw)
		}
		var keys []string
		chunk, _ := body["chunk"].([]any)
		for _, c := range chunk {
			if m, ok := c.(map[string]any); ok {
				k, _ := m["state_key"].(string)
				keys = append(keys, k)
			}
		}
		if now == "leave" {
			noHidden("/members", raw)
			if slices.Contains(keys, lateID) {
				t.Errorf("LEAK /members: member who joined after the user left is shown: %v", keys)
			}
		} else if !slices.Contains(keys, lateID) {
			t.Errorf("/members: current member %s missing: %v", lateID, keys)
		}
	})

	t.Run("hierarchy", func(t *testing.T) {
		status, body, raw := get("/_matrix/client/v1/rooms/" + room + "/hierarchy")
		if !mayPreview {
			vmExpectForbidden(t, "/hierarchy", status, body, raw)
			return
		}
		if status != http.StatusOK {
			t.Fatalf("/hierarchy: want 200, got %d %s", status, raw)
		}
		rooms, _ := body["rooms"].([]any)
		if len(rooms) != 1 {
			t.Errorf("/hierarchy: want the room alone, got %s", raw)
		}
	})

	t.Run("room_summary", func(t *testing.T) {
		status, body, raw := get("/_matrix/client/v1/room_summary/" + room)
		if !mayPreview {
			// The spec's answer for a room the caller may not see: 404,
			// as for an unknown room, so that its existence is not told.
			if status != http.StatusNotFound || body["errcode"] != "M_NOT_FOUND" {
				t.Errorf("LEAK? /room_summary: want 404 M_NOT_FOUND, got %d %s", status, raw)
			}
			return
		}
		if status != http.StatusOK || body["room_id"] != roomID {
			t.Errorf("/room_summary: want 200 with the room, got %d %s", status, raw)
		}
	})
}

// vmExpectForbidden asserts a 403 M_FORBIDDEN answer.
func vmExpectForbidden(t *testing.T, what string, status int, body map[string]any, raw string) {
	t.Helper()
	if status != http.StatusForbidden || body["errcode"] != "M_FORBIDDEN" {
		t.Errorf("LEAK? %s: want 403 M_FORBIDDEN, got %d %s", what, status, raw)
	}
}

// vmGet makes an authenticated GET and decodes a JSON object answer.
func vmGet(t *testing.T, base, token, path string) (int, map[string]any, string) {
	t.Helper()
	status, raw := vmDo(t, base, token, path)
	var body map[string]any
	_ = json.Unmarshal([]byte(raw), &body)
	return status, body, raw
}

// vmGetAny makes an authenticated GET whose answer may be a JSON array.
func vmGetAny(t *testing.T, base, token, path string) (int, any, string) {
	t.Helper()
	status, raw := vmDo(t, base, token, path)
	var body any
	_ = json.Unmarshal([]byte(raw), &body)
	return status, body, raw
}

func vmDo(t *testing.T, base, token, path string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// vmChunkIDs lists the event ids of a response's array field.
func vmChunkIDs(body map[string]any, field string) []string {
	var ids []string
	arr, _ := body[field].([]any)
	for _, e := range arr {
		if m, ok := e.(map[string]any); ok {
			if s, ok := m["event_id"].(string); ok {
				ids = append(ids, s)
			}
		}
	}
	return ids
}

// vmContains reports whether a JSON response mentions an id anywhere
// (as a JSON string, so one id being a prefix of another does not count).
func vmContains(raw, s string) bool {
	q, _ := json.Marshal(s)
	return s != "" && strings.Contains(raw, string(q))
}
