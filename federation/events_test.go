package federation

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/e2ee"
	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/internal/roomsummary"
	"github.com/weft-chat/weft/internal/serverkey"
	"github.com/weft-chat/weft/roomserver"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// These tests build rooms with the roomserver itself (no bus: the pipeline
// alone) and put users of fedOther servers in them through its input: the
// roomserver checks the auth rules, not where a sender lives, so a
// fedRemote user's join is stored as a federated join would leave it. The
// handlers then serve those rooms to "remote.example" as if its signed
// request had been verified (the origin is set where the Authenticator
// would set it).

const (
	fedAlice  = "@alice:ours.example"
	fedBob    = "@bob:remote.example"
	fedRemote = spec.ServerName("remote.example")
	fedOther  = spec.ServerName("other.example")
)

// fedEnv is a roomserver on a test database and the handlers under test,
// served with the origin each request names in X-Test-Origin.
type fedEnv struct {
	t   *testing.T
	db  *sql.DB
	rs  *roomserver.Roomserver
	mux *mux.Router
	// version is the room version of the rooms made last, for the v12
	// create events, which name no room.
	version string
}

func newFedEnv(t *testing.T, db *sql.DB) *fedEnv {
	t.Helper()
	key, err := serverkey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	rs := roomserver.New(db, nil, string(ours), key, slog.New(slog.NewTextHandler(io.Discard, nil)))
	rs.UseInviter(acceptInvites{})
	r := mxhttp.NewRouter()
	(&OpenID{DB: db}).Routes(r)
	(&Events{DB: db, ServerName: ours}).Routes(r)
	summaries := &roomsummary.Reader{DB: db, Rooms: rs}
	(&RoomDirectory{DB: db, ServerName: ours, Summaries: summaries, List: roomsummary.NewDirectory(summaries), AllowPublicRooms: true}).Routes(r)
	(&UserKeys{DB: db, Keys: e2ee.New(db, string(ours)), ServerName: ours}).Routes(r)
	(&ThirdPartyInvites{DB: db}).Routes(r)
	return &fedEnv{t: t, db: db, rs: rs, mux: r}
}

func (e *fedEnv) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx := context.WithValue(r.Context(), originKey{}, spec.ServerName(r.Header.Get("X-Test-Origin")))
	e.mux.ServeHTTP(w, r.WithContext(ctx))
}

// call makes a request as origin and decodes the JSON answer.
func (e *fedEnv) call(origin spec.ServerName, method, path string, body any) (int, map[string]json.RawMessage) {
	e.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req := httptest.NewRequest(method, path, rd)
	req.Header.Set("X-Test-Origin", string(origin))
	w := httptest.NewRecorder()
	e.ServeHTTP(w, req)
	var out map[string]json.RawMessage
	if err := json.Unmarshal(w.Body.Bytes(), &out); err != nil {
		e.t.Fatalf("%s %s: %d %q is not a JSON object", method, path, w.Code, w.Body)
	}
	return w.Code, out
}

// expectError checks an error answer.
func (e *fedEnv) expectError(origin spec.ServerName, method, path string, body any, status int, errcode string) {
	e.t.Helper()
	code, out := e.call(origin, method, path, body)
	var got string
	_ = json.Unmarshal(out["errcode"], &got)
	if code != status || got != errcode {
		e.t.Errorf("%s %s as %s: %d %s, want %d %s", method, path, origin, code, got, status, errcode)
	}
}

func (e *fedEnv) input(roomID string, ne roomserver.NewEvent) string {
	e.t.Helper()
	resp, err := e.rs.HandleInput(context.Background(), roomserver.InputRequest{RoomID: roomID, NewEvent: &ne})
	if err != nil {
		e.t.Fatalf("input %s from %s: %v", ne.Type, ne.Sender, err)
	}
	return resp.EventIDs[0]
}

func (e *fedEnv) message(roomID, sender, body string) string {
	return e.input(roomID, roomserver.NewEvent{Sender: sender, Type: "m.room.message", Content: jsonOf(map[string]any{"msgtype": "m.text", "body": body})})
}

func (e *fedEnv) member(roomID, sender, target, membership string) string {
	return e.input(roomID, roomserver.NewEvent{Sender: sender, Type: "m.room.member", StateKey: &target,
		Content: jsonOf(map[string]any{"membership": membership})})
}

func (e *fedEnv) state(roomID, sender, typ, key string, content any) string {
	return e.input(roomID, roomserver.NewEvent{Sender: sender, Type: typ, StateKey: &key, Content: jsonOf(content)})
}

// createRoom makes a public room of fedAlice with the given history
// visibility and returns its id and initial event ids.
func (e *fedEnv) createRoom(version, visibility string) (string, []string) {
	return e.createRoomWith(version, nil, map[string]any{"join_rule": "public"}, visibility)
}

// createRoomWith makes a room of fedAlice whose m.room.create content has
// extra on top of the version's fields, with the join rules and history
// visibility given.
func (e *fedEnv) createRoomWith(version string, extra, joinRules map[string]any, visibility string) (string, []string) {
	e.t.Helper()
	e.version = version
	empty := ""
	create := map[string]any{"room_version": version}
	users := map[string]int{fedAlice: 100}
	switch version {
	case "11":
	case "12":
		users = map[string]int{}
	default:
		create["creator"] = fedAlice
	}
	for k, v := range extra {
		create[k] = v
	}
	resp, err := e.rs.HandleInput(context.Background(), roomserver.InputRequest{CreateRoom: &roomserver.CreateRoom{RoomVersion: version, Events: []roomserver.NewEvent{
		{Sender: fedAlice, Type: "m.room.create", StateKey: &empty, Content: jsonOf(create)},
		{Sender: fedAlice, Type: "m.room.member", StateKey: ptr(fedAlice), Content: jsonOf(map[string]any{"membership": "join"})},
		{Sender: fedAlice, Type: "m.room.power_levels", StateKey: &empty, Content: jsonOf(map[string]any{"users": users})},
		{Sender: fedAlice, Type: "m.room.join_rules", StateKey: &empty, Content: jsonOf(joinRules)},
		{Sender: fedAlice, Type: "m.room.history_visibility", StateKey: &empty, Content: jsonOf(map[string]any{"history_visibility": visibility})},
	}}})
	if err != nil {
		e.t.Fatalf("create room: %v", err)
	}
	return resp.RoomID, resp.EventIDs
}

func jsonOf(v any) json.RawMessage {
	b, _ := json.Marshal(v)
	return b
}

func ptr(s string) *string { return &s }

// pdu is the part of a served PDU the tests look at.
type pdu struct {
	EventID  string         `json:"event_id"`
	Type     string         `json:"type"`
	StateKey *string        `json:"state_key"`
	Depth    int64          `json:"depth"`
	Content  map[string]any `json:"content"`
	Unsigned map[string]any `json:"unsigned"`
}

// pdus decodes a list of PDUs, naming each by its event id as this
// server computes it (v3+ PDUs carry none).
func (e *fedEnv) pdus(raw json.RawMessage) []pdu {
	e.t.Helper()
	var list []json.RawMessage
	if err := json.Unmarshal(raw, &list); err != nil {
		e.t.Fatalf("pdus %s: %v", raw, err)
	}
	out := make([]pdu, len(list))
	for i, js := range list {
		if err := json.Unmarshal(js, &out[i]); err != nil {
			e.t.Fatal(err)
		}
		if out[i].EventID == "" {
			out[i].EventID = e.idOf(js)
		}
	}
	return out
}

// idOf computes the event id of a served PDU from its content hash, in
// its room's version: that it names the stored event also proves that a
// redacted PDU is the event's true redacted form.
func (e *fedEnv) idOf(js json.RawMessage) string {
	e.t.Helper()
	var head struct {
		RoomID string `json:"room_id"`
	}
	_ = json.Unmarshal(js, &head)
	version := e.version
	if head.RoomID != "" {
		info, err := e.db.Room(context.Background(), head.RoomID)
		if err != nil {
			e.t.Fatalf("room of served event: %v", err)
		}
		version = info.Version
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(version))
	if err != nil {
		e.t.Fatal(err)
	}
	ev, err := verImpl.NewEventFromTrustedJSON(js, false)
	if err != nil {
		e.t.Fatalf("served PDU %s does not parse: %v", js, err)
	}
	if _, err := e.db.EventByID(context.Background(), ev.EventID()); err != nil {
		e.t.Fatalf("served PDU %s is no stored event (%s): %v", js, ev.EventID(), err)
	}
	return ev.EventID()
}

func ids(ps []pdu) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.EventID
	}
	return out
}

func byID(ps []pdu) map[string]pdu {
	m := make(map[string]pdu)
	for _, p := range ps {
		m[p.EventID] = p
	}
	return m
}

func strList(t *testing.T, raw json.RawMessage) []string {
	t.Helper()
	var out []string
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("%s: %v", raw, err)
	}
	return out
}

func esc(s string) string { return url.PathEscape(s) }

// TestFederationEventsJoinedHistory serves a room whose history is
// visible to joined members only to a server whose user joined midway:
// what came before the join is served redacted (spec: history visibility,
// applied to the server's users as Synapse's filter_events_for_server).
func TestFederationEventsJoinedHistory(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		for _, version := range []string{"1", "10", "12"} {
			t.Run("v"+version, func(t *testing.T) {
				e := newFedEnv(t, db)
				roomID, initial := e.createRoom(version, "joined")
				m1 := e.message(roomID, fedAlice, "before one")
				m2 := e.message(roomID, fedAlice, "before two")

				// Not in the room yet: every room endpoint is 403.
				for _, p := range []string{
					"/_matrix/federation/v1/state_ids/" + esc(roomID) + "?event_id=" + url.QueryEscape(m1),
					"/_matrix/federation/v1/state/" + esc(roomID) + "?event_id=" + url.QueryEscape(m1),
					"/_matrix/federation/v1/event/" + esc(m1),
					"/_matrix/federation/v1/event_auth/" + esc(roomID) + "/" + esc(m1),
					"/_matrix/federation/v1/backfill/" + esc(roomID) + "?limit=10&v=" + url.QueryEscape(m2),
					"/_matrix/federation/v1/timestamp_to_event/" + esc(roomID) + "?ts=0&dir=f",
				} {
					e.expectError(fedRemote, "GET", p, nil, 403, "M_FORBIDDEN")
				}
				e.expectError(fedRemote, "POST", "/_matrix/federation/v1/get_missing_events/"+esc(roomID), map[string]any{
					"earliest_events": []string{}, "latest_events": []string{m2}}, 403, "M_FORBIDDEN")

				join := e.member(roomID, fedBob, fedBob, "join")
				m3 := e.message(roomID, fedAlice, "after one")
				m4 := e.message(roomID, fedBob, "after two")

				// /event: before the join redacted, after it whole.
				for id, want := range map[string]string{m1: "", m3: "after one", m4: "after two"} {
					code, out := e.call(fedRemote, "GET", "/_matrix/federation/v1/event/"+esc(id), nil)
					if code != 200 {
						t.Fatalf("event %s: %d %s", id, code, out)
					}
					var origin string
					_ = json.Unmarshal(out["origin"], &origin)
					ps := e.pdus(out["pdus"])
					if origin != string(ours) || len(ps) != 1 || ps[0].EventID != id || out["origin_server_ts"] == nil {
						t.Fatalf("event %s: %s", id, out)
					}
					if got, _ := ps[0].Content["body"].(string); got != want {
						t.Errorf("event %s served with body %q, want %q", id, got, want)
					}
				}
				// Another server with no user in the room still gets 403.
				e.expectError(fedOther, "GET", "/_matrix/federation/v1/event/"+esc(m3), nil, 403, "M_FORBIDDEN")

				// /backfill: newest first, from v back through prev_events.
				all := append(slices.Clone(initial), m1, m2, join, m3, m4)
				slices.Reverse(all)
				code, out := e.call(fedRemote, "GET", "/_matrix/federation/v1/backfill/"+esc(roomID)+"?limit=100&v="+url.QueryEscape(m4), nil)
				if code != 200 {
					t.Fatalf("backfill: %d %s", code, out)
				}
				got := e.pdus(out["pdus"])
				if !slices.Equal(ids(got), all) {
					t.Fatalf("backfill from m4 = %v, want %v", ids(got), all)
				}
				served := byID(got)
				if served[m1].Content["body"] != nil || served[m2].Content["body"] != nil {
					t.Errorf("history before the join served unredacted: %v %v", served[m1], served[m2])
				}
				if served[m3].Content["body"] != "after one" || served[join].Content["membership"] != "join" {
					t.Errorf("history after the join redacted: %v %v", served[m3], served[join])
				}
				if served[initial[0]].Type != "m.room.create" || served[initial[len(initial)-1]].Content["history_visibility"] != "joined" {
					// Redaction keeps these keys: they show the redacted form is
					// the room version's, not an empty content.
					t.Errorf("state before the join: %v", served[initial[len(initial)-1]])
				}
				code, out = e.call(fedRemote, "GET", "/_matrix/federation/v1/backfill/"+esc(roomID)+"?limit=3&v="+url.QueryEscape(m4), nil)
				if got := ids(e.pdus(out["pdus"])); code != 200 || !slices.Equal(got, []string{m4, m3, join}) {
					t.Errorf("backfill limit 3: %d %v", code, got)
				}
				// Two seeds, one of them older: the walk covers both.
				code, out = e.call(fedRemote, "GET", "/_matrix/federation/v1/backfill/"+esc(roomID)+"?limit=2&v="+url.QueryEscape(m2)+"&v="+url.QueryEscape(m3), nil)
				if got := ids(e.pdus(out["pdus"])); code != 200 || !slices.Equal(got, []string{m3, join}) {
					t.Errorf("backfill from m2 and m3, limit 2: %d %v", code, got)
				}
				code, out = e.call(fedRemote, "GET", "/_matrix/federation/v1/backfill/"+esc(roomID)+"?limit=0&v="+url.QueryEscape(m4), nil)
				if got := e.pdus(out["pdus"]); code != 200 || len(got) != 0 {
					t.Errorf("backfill limit 0: %d %v", code, got)
				}

				// /get_missing_events: breadth first from latest, stopping at
				// earliest, oldest first.
				gme := func(body map[string]any) []pdu {
					t.Helper()
					code, out := e.call(fedRemote, "POST", "/_matrix/federation/v1/get_missing_events/"+esc(roomID), body)
					if code != 200 {
						t.Fatalf("get_missing_events %v: %d %s", body, code, out)
					}
					return e.pdus(out["events"])
				}
				missing := gme(map[string]any{"earliest_events": []string{m1}, "latest_events": []string{m4}})
				if !slices.Equal(ids(missing), []string{m2, join, m3}) {
					t.Errorf("missing between m1 and m4 = %v, want %v", ids(missing), []string{m2, join, m3})
				}
				if byID(missing)[m2].Content["body"] != nil {
					t.Errorf("m2 served unredacted by get_missing_events")
				}
				if got := gme(map[string]any{"earliest_events": []string{m1}, "latest_events": []string{m4}, "limit": 2}); !slices.Equal(ids(got), []string{join, m3}) {
					t.Errorf("limit 2: %v", ids(got))
				}
				var joinDepth int64
				for _, p := range got {
					if p.EventID == join {
						joinDepth = p.Depth
					}
				}
				if got := gme(map[string]any{"earliest_events": []string{}, "latest_events": []string{m4}, "min_depth": joinDepth}); !slices.Equal(ids(got), []string{join, m3}) {
					t.Errorf("min_depth at the join: %v", ids(got))
				}
				if got := gme(map[string]any{"earliest_events": []string{m3}, "latest_events": []string{m4, "$unknown"}}); len(got) != 0 {
					t.Errorf("nothing is missing between m3 and m4: %v", ids(got))
				}

				// /state_ids and /state at m3: the state before it, with fedBob.
				code, out = e.call(fedRemote, "GET", "/_matrix/federation/v1/state_ids/"+esc(roomID)+"?event_id="+url.QueryEscape(m3), nil)
				if code != 200 {
					t.Fatalf("state_ids: %d %s", code, out)
				}
				pduIDs, chainIDs := strList(t, out["pdu_ids"]), strList(t, out["auth_chain_ids"])
				wantState := append(slices.Clone(initial), join)
				if !sameSet(pduIDs, wantState) {
					t.Errorf("state_ids at m3 = %v, want %v", pduIDs, wantState)
				}
				// Every state event here is some fedOther's auth event except
				// the history visibility and fedBob's join... and the join rules,
				// which authorise fedBob's join.
				for _, id := range chainIDs {
					if !slices.Contains(wantState, id) {
						t.Errorf("auth chain holds %s, not part of the state", id)
					}
				}
				// Room version 12 leaves the create event out of auth_events.
				if slices.Contains(chainIDs, initial[0]) == (version == "12") || !slices.Contains(chainIDs, initial[2]) || slices.Contains(chainIDs, initial[4]) {
					t.Errorf("auth chain %v: want the power levels and (before v12) the create event, not the history visibility", chainIDs)
				}
				code, out = e.call(fedRemote, "GET", "/_matrix/federation/v1/state/"+esc(roomID)+"?event_id="+url.QueryEscape(m3), nil)
				if code != 200 {
					t.Fatalf("state: %d %s", code, out)
				}
				if got := ids(e.pdus(out["pdus"])); !sameSet(got, pduIDs) {
					t.Errorf("state pdus %v, state_ids %v", got, pduIDs)
				}
				if got := ids(e.pdus(out["auth_chain"])); !sameSet(got, chainIDs) {
					t.Errorf("state auth_chain %v, state_ids %v", got, chainIDs)
				}
				// The state at the create event is empty.
				code, out = e.call(fedRemote, "GET", "/_matrix/federation/v1/state_ids/"+esc(roomID)+"?event_id="+url.QueryEscape(initial[0]), nil)
				if code != 200 || len(strList(t, out["pdu_ids"])) != 0 || len(strList(t, out["auth_chain_ids"])) != 0 {
					t.Errorf("state at create: %d %s", code, out)
				}

				// /event_auth of m4 (fedBob's message): create, power levels, fedBob's
				// join and, through it, the join rules and fedAlice's join.
				code, out = e.call(fedRemote, "GET", "/_matrix/federation/v1/event_auth/"+esc(roomID)+"/"+esc(m4), nil)
				if code != 200 {
					t.Fatalf("event_auth: %d %s", code, out)
				}
				want := []string{initial[0], initial[1], initial[2], initial[3], join}
				if version == "12" {
					want = want[1:]
				}
				if got := ids(e.pdus(out["auth_chain"])); !sameSet(got, want) {
					t.Errorf("event_auth of m4 = %v, want %v", got, want)
				}

				// /timestamp_to_event.
				tte := func(ts string, dir string) (int, string) {
					code, out := e.call(fedRemote, "GET", "/_matrix/federation/v1/timestamp_to_event/"+esc(roomID)+"?ts="+ts+"&dir="+dir, nil)
					var id string
					_ = json.Unmarshal(out["event_id"], &id)
					if code == 200 && out["origin_server_ts"] == nil {
						t.Errorf("timestamp_to_event without origin_server_ts: %s", out)
					}
					return code, id
				}
				if code, id := tte("0", "f"); code != 200 || id != initial[0] {
					t.Errorf("ts 0 forward: %d %s, want the create event %s", code, id, initial[0])
				}
				if code, id := tte("99999999999999", "b"); code != 200 || id != m4 {
					t.Errorf("far future backward: %d %s, want %s", code, id, m4)
				}
				e.expectError(fedRemote, "GET", "/_matrix/federation/v1/timestamp_to_event/"+esc(roomID)+"?ts=99999999999999&dir=f", nil, 404, "M_NOT_FOUND")
				e.expectError(fedRemote, "GET", "/_matrix/federation/v1/timestamp_to_event/"+esc(roomID)+"?ts=0&dir=b", nil, 404, "M_NOT_FOUND")

				// Once fedBob has left, the server is out of the room again.
				e.member(roomID, fedBob, fedBob, "leave")
				e.expectError(fedRemote, "GET", "/_matrix/federation/v1/event/"+esc(m3), nil, 403, "M_FORBIDDEN")
				e.expectError(fedRemote, "GET", "/_matrix/federation/v1/state_ids/"+esc(roomID)+"?event_id="+url.QueryEscape(m3), nil, 403, "M_FORBIDDEN")
			})
		}
	})
}

func sameSet(a, b []string) bool {
	x, y := slices.Clone(a), slices.Clone(b)
	slices.Sort(x)
	slices.Sort(y)
	return slices.Equal(x, y)
}

// TestFederationEventsVisibility checks the history visibility of events
// for a server (spec "History visibility"; Synapse's
// filter_events_for_server): shared history is visible before the
// server's user came, invited history from the invite on, joined history
// from the join on, and the server's user's own invite whatever the
// setting.
func TestFederationEventsVisibility(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		for _, c := range []struct {
			visibility                      string
			before, invite, between, joined bool
		}{
			{"world_readable", true, true, true, true},
			{"shared", true, true, true, true},
			{"invited", false, true, true, true},
			{"joined", false, true, false, true},
		} {
			t.Run(c.visibility, func(t *testing.T) {
				e := newFedEnv(t, db)
				roomID, _ := e.createRoom("10", c.visibility)
				before := e.message(roomID, fedAlice, "before")
				invite := e.member(roomID, fedAlice, fedBob, "invite")
				between := e.message(roomID, fedAlice, "between")
				e.member(roomID, fedBob, fedBob, "join")
				after := e.message(roomID, fedAlice, "after")
				code, out := e.call(fedRemote, "GET", "/_matrix/federation/v1/backfill/"+esc(roomID)+"?limit=50&v="+url.QueryEscape(after), nil)
				if code != 200 {
					t.Fatalf("backfill: %d %s", code, out)
				}
				served := byID(e.pdus(out["pdus"]))
				for id, want := range map[string]bool{before: c.before, between: c.between, after: c.joined} {
					if visible := served[id].Content["body"] != nil; visible != want {
						t.Errorf("%s: event visible %v, want %v", served[id].Content, visible, want)
					}
				}
				// A redacted invite keeps its membership: check the sender's
				// view through displayname-free content instead.
				if _, ok := served[invite]; !ok || served[invite].Content["membership"] != "invite" {
					t.Errorf("invite served as %v", served[invite])
				}
			})
		}
	})
}

// TestFederationEventsErrors covers the errors of each endpoint: unknown
// rooms and events (404), the wrong room (404), bad parameters (400),
// never a 500.
func TestFederationEventsErrors(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		e := newFedEnv(t, db)
		roomID, initial := e.createRoom("10", "shared")
		e.member(roomID, fedBob, fedBob, "join")
		msg := e.message(roomID, fedAlice, "hello")
		otherRoom, otherEvents := e.createRoom("10", "shared")
		e.member(otherRoom, fedBob, fedBob, "join")
		v1 := "/_matrix/federation/v1/"
		room := esc(roomID)
		for _, c := range []struct {
			method, path string
			body         any
			status       int
			errcode      string
		}{
			{"GET", v1 + "state_ids/" + esc("!nope:ours.example") + "?event_id=" + url.QueryEscape(msg), nil, 404, "M_NOT_FOUND"},
			{"GET", v1 + "state_ids/" + room + "?event_id=" + url.QueryEscape("$nope"), nil, 404, "M_NOT_FOUND"},
			{"GET", v1 + "state_ids/" + room + "?event_id=" + url.QueryEscape(otherEvents[0]), nil, 404, "M_NOT_FOUND"},
			{"GET", v1 + "state_ids/" + room, nil, 400, "M_MISSING_PARAM"},
			{"GET", v1 + "state_ids/notaroom?event_id=x", nil, 400, "M_INVALID_PARAM"},
			{"GET", v1 + "state/" + esc("!nope:ours.example") + "?event_id=" + url.QueryEscape(msg), nil, 404, "M_NOT_FOUND"},
			{"GET", v1 + "state/" + room + "?event_id=" + url.QueryEscape("$nope"), nil, 404, "M_NOT_FOUND"},
			{"GET", v1 + "state/" + room, nil, 400, "M_MISSING_PARAM"},
			{"GET", v1 + "event/" + esc("$nope"), nil, 404, "M_NOT_FOUND"},
			{"GET", v1 + "event_auth/" + room + "/" + esc("$nope"), nil, 404, "M_NOT_FOUND"},
			{"GET", v1 + "event_auth/" + room + "/" + esc(otherEvents[1]), nil, 404, "M_NOT_FOUND"},
			{"GET", v1 + "event_auth/" + esc("!nope:ours.example") + "/" + esc(msg), nil, 404, "M_NOT_FOUND"},
			{"GET", v1 + "backfill/" + esc("!nope:ours.example") + "?limit=1&v=" + url.QueryEscape(msg), nil, 404, "M_NOT_FOUND"},
			{"GET", v1 + "backfill/" + room + "?limit=1", nil, 400, "M_MISSING_PARAM"},
			{"GET", v1 + "backfill/" + room + "?v=" + url.QueryEscape(msg), nil, 400, "M_MISSING_PARAM"},
			{"GET", v1 + "backfill/" + room + "?limit=ten&v=" + url.QueryEscape(msg), nil, 400, "M_INVALID_PARAM"},
			{"GET", v1 + "backfill/" + room + "?limit=-1&v=" + url.QueryEscape(msg), nil, 400, "M_INVALID_PARAM"},
			{"POST", v1 + "get_missing_events/" + esc("!nope:ours.example"), map[string]any{"earliest_events": []string{}, "latest_events": []string{msg}}, 404, "M_NOT_FOUND"},
			{"POST", v1 + "get_missing_events/" + room, map[string]any{"earliest_events": []string{}}, 400, "M_BAD_JSON"},
			{"POST", v1 + "get_missing_events/" + room, map[string]any{"earliest_events": "x", "latest_events": []string{msg}}, 400, "M_BAD_JSON"},
			{"POST", v1 + "get_missing_events/" + room, map[string]any{"earliest_events": []string{}, "latest_events": []string{msg}, "limit": -1}, 400, "M_INVALID_PARAM"},
			{"POST", v1 + "get_missing_events/" + room, nil, 400, "M_NOT_JSON"},
			{"GET", v1 + "timestamp_to_event/" + esc("!nope:ours.example") + "?ts=0&dir=f", nil, 404, "M_NOT_FOUND"},
			{"GET", v1 + "timestamp_to_event/" + room + "?dir=f", nil, 400, "M_MISSING_PARAM"},
			{"GET", v1 + "timestamp_to_event/" + room + "?ts=soon&dir=f", nil, 400, "M_INVALID_PARAM"},
			{"GET", v1 + "timestamp_to_event/" + room + "?ts=0", nil, 400, "M_MISSING_PARAM"},
			{"GET", v1 + "timestamp_to_event/" + room + "?ts=0&dir=up", nil, 400, "M_INVALID_PARAM"},
		} {
			e.expectError(fedRemote, c.method, c.path, c.body, c.status, c.errcode)
		}
		// A backfill from events of another room or unknown ones is empty.
		code, out := e.call(fedRemote, "GET", v1+"backfill/"+room+"?limit=10&v="+url.QueryEscape(otherEvents[2])+"&v=%24nope", nil)
		if code != 200 || len(e.pdus(out["pdus"])) != 0 {
			t.Errorf("backfill from foreign events: %d %s", code, out)
		}
		// Limits above the cap are capped, not refused.
		code, out = e.call(fedRemote, "GET", v1+"backfill/"+room+"?limit=100000&v="+url.QueryEscape(msg), nil)
		if code != 200 || len(e.pdus(out["pdus"])) != len(initial)+2 {
			t.Errorf("backfill with a huge limit: %d %s", code, out)
		}
		// Unauthenticated (no origin): 403, whatever the room.
		e.expectError("", "GET", v1+"event/"+esc(msg), nil, 403, "M_FORBIDDEN")
	})
}

// TestFederationEventsACL checks m.room.server_acl on the room endpoints
// (spec: "Server Access Control Lists"): a denied server gets 403 even
// with a user in the room.
func TestFederationEventsACL(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		e := newFedEnv(t, db)
		roomID, _ := e.createRoom("10", "shared")
		e.member(roomID, fedBob, fedBob, "join")
		msg := e.message(roomID, fedAlice, "hello")
		path := "/_matrix/federation/v1/state_ids/" + esc(roomID) + "?event_id=" + url.QueryEscape(msg)
		if code, out := e.call(fedRemote, "GET", path, nil); code != 200 {
			t.Fatalf("before the ACL: %d %s", code, out)
		}
		e.state(roomID, fedAlice, "m.room.server_acl", "", map[string]any{"allow": []string{"*"}, "deny": []string{"*.example"}})
		e.expectError(fedRemote, "GET", path, nil, 403, "M_FORBIDDEN")
		e.expectError(fedRemote, "GET", "/_matrix/federation/v1/event/"+esc(msg), nil, 403, "M_FORBIDDEN")
		e.expectError(fedRemote, "POST", "/_matrix/federation/v1/get_missing_events/"+esc(roomID),
			map[string]any{"earliest_events": []string{}, "latest_events": []string{msg}}, 403, "M_FORBIDDEN")
		e.state(roomID, fedAlice, "m.room.server_acl", "", map[string]any{"allow": []string{"remote.*"}})
		if code, out := e.call(fedRemote, "GET", path, nil); code != 200 {
			t.Fatalf("allowed again: %d %s", code, out)
		}
	})
}

func TestACLMatching(t *testing.T) {
	star := []any{"*"}
	for _, c := range []struct {
		ipLiterals, allow, deny any
		server                  spec.ServerName
		want                    bool
	}{
		{nil, star, nil, "example.org", true},
		{nil, nil, nil, "example.org", false}, // no allow list: nobody
		{nil, star, []any{"evil.com"}, "evil.com:8448", false},
		{nil, star, []any{"EVIL.com"}, "evil.COM", false},
		{nil, star, []any{"*.evil.com"}, "evil.com", true},
		{nil, star, []any{"*.evil.com"}, "a.evil.com", false},
		{nil, []any{"?.example.org"}, nil, "a.example.org", true},
		{nil, []any{"?.example.org"}, nil, "ab.example.org", false},
		{nil, []any{"*.example.*"}, nil, "a.b.example.org", true},
		{nil, []any{42, "ok.org"}, []any{true}, "ok.org", true},
		{false, star, nil, "127.0.0.1:8448", false},
		{false, star, nil, "[::1]:8448", false},
		{false, star, nil, "example.org", true},
		{"false", star, nil, "127.0.0.1", true}, // not a boolean: the default, true
		{true, star, nil, "127.0.0.1", true},
		{nil, star, nil, "not a server", false},
	} {
		if got := aclAllows(c.ipLiterals, c.allow, c.deny, c.server); got != c.want {
			t.Errorf("acl(ip %v, allow %v, deny %v) on %s = %v, want %v", c.ipLiterals, c.allow, c.deny, c.server, got, c.want)
		}
	}
	for _, c := range []struct {
		p, s string
		want bool
	}{
		{"*", "", true}, {"", "", true}, {"", "a", false}, {"a*b*c", "axxbyyc", true}, {"a*b*c", "axxbyy", false},
		{"**a", "ba", true}, {"*?", "", false}, {"*?", "x", true}, {"a?c", "abc", true}, {"a?c", "ac", false},
	} {
		if got := globMatch(c.p, c.s); got != c.want {
			t.Errorf("glob %q on %q = %v", c.p, c.s, got)
		}
	}
}

func TestEventRefsAndFederationJSON(t *testing.T) {
	prev, auth := eventRefs([]byte(`{"prev_events":[["$a:x",{"sha256":"h"}],["$b:x",{}]],"auth_events":[["$c:x",{}]]}`))
	if !slices.Equal(prev, []string{"$a:x", "$b:x"}) || !slices.Equal(auth, []string{"$c:x"}) {
		t.Errorf("v1 refs: %v %v", prev, auth)
	}
	prev, auth = eventRefs([]byte(`{"prev_events":["$a"],"auth_events":["$b","$c"]}`))
	if !slices.Equal(prev, []string{"$a"}) || !slices.Equal(auth, []string{"$b", "$c"}) {
		t.Errorf("v3 refs: %v %v", prev, auth)
	}
	js, err := federationJSON([]byte(`{"type":"m.room.member","unsigned":{"transaction_id":"t","invite_room_state":[1]}}`))
	if err != nil || !strings.Contains(string(js), `"invite_room_state"`) || strings.Contains(string(js), "transaction_id") {
		t.Errorf("member unsigned: %s %v", js, err)
	}
	js, err = federationJSON([]byte(`{"type":"m.room.message","unsigned":{"age_ts":1}}`))
	if err != nil || strings.Contains(string(js), "unsigned") {
		t.Errorf("message unsigned: %s %v", js, err)
	}
	if !visibleWith("invited", []string{"leave", "invite"}) || visibleWith("joined", []string{"invite"}) || visibleWith("joined", nil) {
		t.Error("visibleWith")
	}
}

// acceptInvites stands in for the invitee's server, which would
// countersign the invite; the roomserver checks the auth rules, not
// signatures, so the fixture's invites of remote users go through as
// they are.
type acceptInvites struct{}

func (acceptInvites) Invite(_ context.Context, _ gomatrixserverlib.IRoomVersion, ev gomatrixserverlib.PDU, _ []json.RawMessage) (gomatrixserverlib.PDU, error) {
	return ev, nil
}
