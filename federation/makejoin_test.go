package federation

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/internal/serverkey"
	"github.com/weft-chat/weft/roomserver"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// joinEnv serves the membership handshakes of a fedEnv's rooms, checking
// signatures with a real key ring over fake servers (remote.example and
// other.example publish their keys), and hands accepted events to input.
type joinEnv struct {
	*fedEnv
	key           serverkey.Key // ours, the roomserver's too
	ring          *KeyRing
	remote, other *fakeServer
	input         *fakeInput
}

// fakeInput records the events given to the roomserver and refuses them
// (the roomserver's answer must reach the other server), unless pass is
// set: then pass takes them.
type fakeInput struct {
	mu   sync.Mutex
	reqs []roomserver.InputRequest
	pass roomInputs
}

func (f *fakeInput) Input(ctx context.Context, req roomserver.InputRequest) (roomserver.InputResponse, error) {
	f.mu.Lock()
	f.reqs = append(f.reqs, req)
	pass := f.pass
	f.mu.Unlock()
	if pass != nil {
		return pass.Input(ctx, req)
	}
	return roomserver.InputResponse{}, mxhttp.Errorf(http.StatusForbidden, "M_FORBIDDEN", "fake roomserver refusal")
}

func (f *fakeInput) last() (roomserver.InputRequest, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.reqs) == 0 {
		return roomserver.InputRequest{}, 0
	}
	return f.reqs[len(f.reqs)-1], len(f.reqs)
}

func newJoinEnv(t *testing.T, db *sql.DB) *joinEnv {
	t.Helper()
	key, err := serverkey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	// The roomserver signs with the key of the ring's own server, so
	// that the ring verifies the room's events too.
	rs := roomserver.New(db, nil, string(ours), key, slog.New(slog.DiscardHandler))
	e := &fedEnv{t: t, db: db, rs: rs, mux: mxhttp.NewRouter()}
	(&Events{DB: db, ServerName: ours}).Routes(e.mux)
	fake := newFakeServers()
	j := &joinEnv{fedEnv: e, key: key, remote: fake.add(t, fedRemote, time.Hour), other: fake.add(t, fedOther, time.Hour), input: &fakeInput{}}
	j.ring = NewKeyRing(KeyRingConfig{DB: db, ServerName: ours, Key: key, Client: fake, RefetchInterval: time.Nanosecond})
	rs.UseInviter(fakeInviter{fake})
	(&Memberships{DB: db, ServerName: ours, Key: key, Keys: j.ring, Rooms: j.input}).Routes(e.mux)
	return j
}

// fakeInviter plays the invitee's server for invites of the fake
// servers' users: it countersigns them.
type fakeInviter struct{ fake *fakeServers }

func (f fakeInviter) Invite(_ context.Context, _ gomatrixserverlib.IRoomVersion, ev gomatrixserverlib.PDU, _ []json.RawMessage) (gomatrixserverlib.PDU, error) {
	invitee, err := spec.NewUserID(*ev.StateKey(), true)
	if err != nil {
		return nil, err
	}
	f.fake.mu.Lock()
	s := f.fake.servers[invitee.Domain()]
	f.fake.mu.Unlock()
	if s == nil {
		return nil, mxhttp.NotFound("no server %s", invitee.Domain())
	}
	return ev.Sign(string(s.keys.ServerName), s.keys.Key.ID, s.keys.Key.Private), nil
}

// makePath is the make_join or make_leave path for a user, with ver
// parameters.
func makePath(kind, roomID, userID string, vers ...string) string {
	p := "/_matrix/federation/v1/make_" + kind + "/" + esc(roomID) + "/" + esc(userID)
	if len(vers) > 0 {
		q := url.Values{"ver": vers}
		p += "?" + q.Encode()
	}
	return p
}

// template asks for a make_ template as origin and returns it.
func (j *joinEnv) template(kind string, origin spec.ServerName, roomID, userID string, vers ...string) makeResponse {
	j.t.Helper()
	code, out := j.call(origin, "GET", makePath(kind, roomID, userID, vers...), nil)
	if code != 200 {
		j.t.Fatalf("make_%s %s for %s: %d %s", kind, roomID, userID, code, out)
	}
	var m makeResponse
	_ = json.Unmarshal(out["room_version"], &m.RoomVersion)
	m.Event = out["event"]
	return m
}

// build makes the event a server builds from a template, signed by it
// (Joiner.buildFromTemplate, as our joins do).
func (j *joinEnv) build(s *fakeServer, m makeResponse, roomID, userID, membership string) gomatrixserverlib.PDU {
	j.t.Helper()
	jn := &Joiner{req: requester{origin: s.keys.ServerName, key: s.keys.Key}, now: time.Now}
	_, ev, err := jn.buildFromTemplate(m, roomID, userID, membership, json.RawMessage(`{"displayname":"Bob"}`))
	if err != nil {
		j.t.Fatalf("build from template: %v", err)
	}
	return ev
}

// editTemplate returns a copy of a template changed by f.
func editTemplate(m makeResponse, f func(ev map[string]any)) makeResponse {
	var ev map[string]any
	_ = json.Unmarshal(m.Event, &ev)
	f(ev)
	m.Event, _ = json.Marshal(ev)
	return m
}

func sendPath(kind, version, roomID, eventID string) string {
	return "/_matrix/federation/" + version + "/send_" + kind + "/" + esc(roomID) + "/" + esc(eventID)
}

// send puts an event's JSON to a send_ endpoint as origin.
func (j *joinEnv) send(origin spec.ServerName, path string, body []byte) (int, string) {
	j.t.Helper()
	req := httptest.NewRequest("PUT", path, strings.NewReader(string(body)))
	req.Header.Set("X-Test-Origin", string(origin))
	w := httptest.NewRecorder()
	j.ServeHTTP(w, req)
	var out struct {
		ErrCode string `json:"errcode"`
	}
	_ = json.Unmarshal(w.Body.Bytes(), &out)
	return w.Code, out.ErrCode
}

// TestMakeJoinTemplate checks make_join's template in room versions of
// each event format: the joining server can build on it (spec: "Joining
// Rooms": room id, sender, state key, type and membership as asked), it
// stands on the room's forward extremity and names the auth events the
// auth rules select, and it carries neither hashes nor signatures.
func TestMakeJoinTemplate(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		for _, version := range []string{"1", "10", "12"} {
			t.Run("v"+version, func(t *testing.T) {
				j := newJoinEnv(t, db)
				roomID, initial := j.createRoom(version, "shared")
				last := j.message(roomID, fedAlice, "hello")
				m := j.template("join", fedRemote, roomID, fedBob, "1", "10", "12")
				if m.RoomVersion != version {
					t.Fatalf("room_version %q, want %q", m.RoomVersion, version)
				}
				var tmpl struct {
					RoomID     string            `json:"room_id"`
					Sender     string            `json:"sender"`
					StateKey   *string           `json:"state_key"`
					Type       string            `json:"type"`
					Origin     string            `json:"origin"`
					Content    map[string]any    `json:"content"`
					Depth      int64             `json:"depth"`
					PrevEvents []json.RawMessage `json:"prev_events"`
					AuthEvents []json.RawMessage `json:"auth_events"`
					Hashes     any               `json:"hashes"`
					Signatures any               `json:"signatures"`
				}
				if err := json.Unmarshal(m.Event, &tmpl); err != nil {
					t.Fatal(err)
				}
				if tmpl.RoomID != roomID || tmpl.Sender != fedBob || tmpl.StateKey == nil || *tmpl.StateKey != fedBob ||
					tmpl.Type != "m.room.member" || tmpl.Content["membership"] != "join" || tmpl.Origin != string(ours) {
					t.Fatalf("template %s", m.Event)
				}
				if tmpl.Hashes != nil || tmpl.Signatures != nil {
					t.Errorf("template carries hashes or signatures: %s", m.Event)
				}
				refs := func(raw []json.RawMessage) []string {
					out := make([]string, 0, len(raw))
					for _, r := range raw {
						var id string
						if json.Unmarshal(r, &id) != nil {
							// Versions 1 and 2: [event id, hashes].
							var pair []json.RawMessage
							if err := json.Unmarshal(r, &pair); err != nil || len(pair) != 2 || json.Unmarshal(pair[0], &id) != nil {
								t.Fatalf("reference %s", r)
							}
						}
						out = append(out, id)
					}
					return out
				}
				if prev := refs(tmpl.PrevEvents); !slices.Equal(prev, []string{last}) {
					t.Errorf("prev_events %v, want the extremity %s", prev, last)
				}
				lastEv, err := db.EventByID(context.Background(), last)
				if err != nil || tmpl.Depth != lastEv.Depth+1 {
					t.Errorf("depth %d after an event of depth %d (%v)", tmpl.Depth, lastEv.Depth, err)
				}
				// create, power levels, join rules; room version 12 leaves
				// the create event out, its id being the room's.
				want := []string{initial[0], initial[2], initial[3]}
				if version == "12" {
					want = want[1:]
				}
				if got := refs(tmpl.AuthEvents); !sameSet(got, want) {
					t.Errorf("auth_events %v, want %v", got, want)
				}
				// The template builds into a join the auth rules allow on the
				// room's state.
				ev := j.build(j.remote, m, roomID, fedBob, "join")
				var authEvents []gomatrixserverlib.PDU
				for _, id := range ev.AuthEventIDs() {
					s, err := db.EventByID(context.Background(), id)
					if err != nil {
						t.Fatalf("auth event %s: %v", id, err)
					}
					pdu, err := roomserver.ParseStored(s)
					if err != nil {
						t.Fatal(err)
					}
					authEvents = append(authEvents, pdu)
				}
				provider, _ := gomatrixserverlib.NewAuthEvents(authEvents)
				if err := gomatrixserverlib.Allowed(ev, provider, userIDForSender); err != nil {
					t.Errorf("join built from the template is not allowed: %v", err)
				}
			})
		}
	})
}

// TestMakeJoinRefusals checks make_join's errors (joins-v1.yaml).
func TestMakeJoinRefusals(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		j := newJoinEnv(t, db)
		public, _ := j.createRoom("10", "shared")
		inviteOnly, _ := j.createRoomWith("10", nil, map[string]any{"join_rule": "invite"}, "shared")
		j.member(public, fedAlice, "@banned:remote.example", "ban")

		// The room version must be one the joining server lists; without
		// ver, only "1".
		code, out := j.call(fedRemote, "GET", makePath("join", public, fedBob, "1", "2"), nil)
		var version, errcode string
		_ = json.Unmarshal(out["room_version"], &version)
		_ = json.Unmarshal(out["errcode"], &errcode)
		if code != 400 || errcode != "M_INCOMPATIBLE_ROOM_VERSION" || version != "10" {
			t.Errorf("incompatible version: %d %s", code, out)
		}
		j.expectError(fedRemote, "GET", makePath("join", public, fedBob), nil, 400, "M_INCOMPATIBLE_ROOM_VERSION")

		for _, c := range []struct {
			name           string
			origin         spec.ServerName
			roomID, userID string
			status         int
			errcode        string
		}{
			{"user of another server", fedOther, public, fedBob, 403, "M_FORBIDDEN"},
			{"not a user id", fedRemote, public, "bob", 400, "M_INVALID_PARAM"},
			{"unknown room", fedRemote, "!nowhere:ours.example", fedBob, 404, "M_NOT_FOUND"},
			{"invite-only room", fedRemote, inviteOnly, fedBob, 403, "M_FORBIDDEN"},
			{"banned user", fedRemote, public, "@banned:remote.example", 403, "M_FORBIDDEN"},
		} {
			j.expectError(c.origin, "GET", makePath("join", c.roomID, c.userID, "10"), nil, c.status, c.errcode)
		}

		// An invite lets the user in.
		j.member(inviteOnly, fedAlice, fedBob, "invite")
		j.template("join", fedRemote, inviteOnly, fedBob, "10")

		// The room's server ACL applies.
		j.state(public, fedAlice, "m.room.server_acl", "", map[string]any{"allow": []string{"*"}, "deny": []string{"remote.example"}})
		j.expectError(fedRemote, "GET", makePath("join", public, fedBob, "10"), nil, 403, "M_FORBIDDEN")
		j.template("join", fedOther, public, "@carol:other.example", "10")

		// Once this server has no joined member, it cannot build on the
		// room: 404, as if unknown.
		j.member(public, fedAlice, fedAlice, "leave")
		j.expectError(fedOther, "GET", makePath("join", public, "@carol:other.example", "10"), nil, 404, "M_NOT_FOUND")
	})
}

// TestMakeJoinRestricted checks restricted rooms (spec: "Restricted
// rooms"): a user joined to an allowed room gets a template naming this
// server's authoriser; one who is not is refused, with 400
// M_UNABLE_TO_AUTHORISE_JOIN when this server cannot tell; an invited
// user needs no authoriser.
func TestMakeJoinRestricted(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		j := newJoinEnv(t, db)
		space, _ := j.createRoom("10", "shared")
		j.member(space, fedBob, fedBob, "join")
		rules := map[string]any{"join_rule": "restricted", "allow": []map[string]any{{"type": "m.room_membership", "room_id": space}}}
		restricted, _ := j.createRoomWith("10", nil, rules, "shared")

		content := func(m makeResponse) map[string]any {
			var ev struct {
				Content map[string]any `json:"content"`
			}
			_ = json.Unmarshal(m.Event, &ev)
			return ev.Content
		}
		m := j.template("join", fedRemote, restricted, fedBob, "10")
		if c := content(m); c["join_authorised_via_users_server"] != fedAlice {
			t.Fatalf("restricted template content %v, want alice as authoriser", c)
		}
		j.expectError(fedRemote, "GET", makePath("join", restricted, "@charlie:remote.example", "10"), nil, 403, "M_FORBIDDEN")

		unknownRules := map[string]any{"join_rule": "restricted", "allow": []map[string]any{{"type": "m.room_membership", "room_id": "!elsewhere:other.example"}}}
		unknown, _ := j.createRoomWith("10", nil, unknownRules, "shared")
		j.expectError(fedRemote, "GET", makePath("join", unknown, fedBob, "10"), nil, 400, "M_UNABLE_TO_AUTHORISE_JOIN")

		j.member(unknown, fedAlice, fedBob, "invite")
		if c := content(j.template("join", fedRemote, unknown, fedBob, "10")); c["join_authorised_via_users_server"] != nil {
			t.Errorf("invited user's template names an authoriser: %v", c)
		}
	})
}

// TestMakeLeave checks make_leave: a template for a user with a
// membership to leave, 403 for one without.
func TestMakeLeave(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		j := newJoinEnv(t, db)
		roomID, _ := j.createRoom("12", "shared")
		j.member(roomID, fedAlice, fedBob, "invite")
		m := j.template("leave", fedRemote, roomID, fedBob)
		var ev struct {
			Type     string         `json:"type"`
			StateKey string         `json:"state_key"`
			Content  map[string]any `json:"content"`
		}
		if err := json.Unmarshal(m.Event, &ev); err != nil || ev.Type != "m.room.member" || ev.StateKey != fedBob || ev.Content["membership"] != "leave" || m.RoomVersion != "12" {
			t.Fatalf("leave template %s (%s)", m.Event, m.RoomVersion)
		}
		j.expectError(fedRemote, "GET", makePath("leave", roomID, "@stranger:remote.example"), nil, 403, "M_FORBIDDEN")
		j.expectError(fedOther, "GET", makePath("leave", roomID, fedBob), nil, 403, "M_FORBIDDEN")
		j.expectError(fedRemote, "GET", makePath("leave", "!nowhere:ours.example", fedBob), nil, 404, "M_NOT_FOUND")
	})
}

// withJSON returns an event's JSON with one top-level or content field
// changed (value nil deletes it), without signing it again.
func withJSON(t *testing.T, ev gomatrixserverlib.PDU, content bool, key string, value any) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(ev.JSON(), &m); err != nil {
		t.Fatal(err)
	}
	target := m
	if content {
		target = m["content"].(map[string]any)
	}
	if value == nil {
		delete(target, key)
	} else {
		target[key] = value
	}
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestSendJoinChecks checks what send_join verifies before the roomserver
// sees the event (joins-v2.yaml: M_INVALID_PARAM for a failed signature
// check, a wrong type or membership, a sender of another server, a state
// key that is not the sender), and that a checked join goes to the
// roomserver, whose refusal is the answer. v1 answers alike.
func TestSendJoinChecks(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		for _, version := range []string{"1", "10", "12"} {
			t.Run("v"+version, func(t *testing.T) {
				j := newJoinEnv(t, db)
				roomID, _ := j.createRoom(version, "shared")
				m := j.template("join", fedRemote, roomID, fedBob, version)
				ev := j.build(j.remote, m, roomID, fedBob, "join")
				path := sendPath("join", "v2", roomID, ev.EventID())

				// Signed by a key that is not remote.example's.
				impostor, err := serverkey.Generate()
				if err != nil {
					t.Fatal(err)
				}
				impostor.ID = j.remote.keys.Key.ID
				forged := j.build(&fakeServer{keys: &KeyServer{ServerName: fedRemote, Key: impostor}}, m, roomID, fedBob, "join")
				// A user of other.example, signed by other.example, sent by
				// remote.example.
				mOther := j.template("join", fedOther, roomID, "@carol:other.example", version)
				carol := j.build(j.other, mOther, roomID, "@carol:other.example", "join")
				// A leave sent to send_join.
				leave := j.build(j.remote, editTemplate(m, func(ev map[string]any) {
					ev["content"].(map[string]any)["membership"] = "leave"
				}), roomID, fedBob, "leave")

				type attempt struct {
					name    string
					path    string
					body    []byte
					status  int
					errcode string
				}
				attempts := []attempt{
					{"not JSON", path, []byte("{"), 400, "M_NOT_JSON"},
					{"bad signature", sendPath("join", "v2", roomID, forged.EventID()), forged.JSON(), 400, "M_INVALID_PARAM"},
					{"sender of another server", sendPath("join", "v2", roomID, carol.EventID()), carol.JSON(), 400, "M_INVALID_PARAM"},
					{"not a join", sendPath("join", "v2", roomID, leave.EventID()), leave.JSON(), 400, "M_INVALID_PARAM"},
					{"content hash", path, withJSON(t, ev, true, "displayname", "Mallory"), 400, "M_INVALID_PARAM"},
					{"unknown room", sendPath("join", "v2", "!nowhere:ours.example", ev.EventID()), ev.JSON(), 404, "M_NOT_FOUND"},
				}
				if version == "1" {
					// The event id is in the event; another one in the path.
					attempts = append(attempts, attempt{"event id", sendPath("join", "v2", roomID, "$other:remote.example"), ev.JSON(), 400, "M_INVALID_PARAM"})
				} else {
					attempts = append(attempts, attempt{"event id", sendPath("join", "v2", roomID, "$other"), ev.JSON(), 400, "M_INVALID_PARAM"})
				}
				for _, a := range attempts {
					if code, errcode := j.send(fedRemote, a.path, a.body); code != a.status || errcode != a.errcode {
						t.Errorf("%s: %d %s, want %d %s", a.name, code, errcode, a.status, a.errcode)
					}
				}
				if _, n := j.input.last(); n != 0 {
					t.Fatalf("%d refused joins reached the roomserver", n)
				}

				// The checked join reaches the roomserver, as sent, from its
				// origin; the roomserver's refusal is the answer, on v1 too.
				for _, v := range []string{"v2", "v1"} {
					if code, errcode := j.send(fedRemote, sendPath("join", v, roomID, ev.EventID()), ev.JSON()); code != 403 || errcode != "M_FORBIDDEN" {
						t.Errorf("%s send_join: %d %s, want the roomserver's 403", v, code, errcode)
					}
				}
				req, n := j.input.last()
				if n != 2 || req.RoomID != roomID || req.Remote == nil || req.Remote.Origin != string(fedRemote) {
					t.Fatalf("roomserver input %+v (%d inputs)", req, n)
				}
				got, err := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(version)).NewEventFromTrustedJSON(req.Remote.Event, false)
				if err != nil || got.EventID() != ev.EventID() {
					t.Fatalf("roomserver got %s (%v), want %s", req.Remote.Event, err, ev.EventID())
				}
			})
		}
	})
}

// TestSendJoinRestrictedCountersign checks that a restricted join naming
// one of our users is signed by us before the roomserver sees it (spec:
// the resident server "must" sign it), once the conditions are checked
// again, and that one naming another server's user is refused.
func TestSendJoinRestrictedCountersign(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		j := newJoinEnv(t, db)
		space, _ := j.createRoom("10", "shared")
		j.member(space, fedBob, fedBob, "join")
		rules := map[string]any{"join_rule": "restricted", "allow": []map[string]any{{"type": "m.room_membership", "room_id": space}}}
		roomID, _ := j.createRoomWith("10", nil, rules, "shared")

		m := j.template("join", fedRemote, roomID, fedBob, "10")
		ev := j.build(j.remote, m, roomID, fedBob, "join")
		if code, errcode := j.send(fedRemote, sendPath("join", "v2", roomID, ev.EventID()), ev.JSON()); code != 403 || errcode != "M_FORBIDDEN" {
			t.Fatalf("send_join: %d %s", code, errcode)
		}
		req, _ := j.input.last()
		var sent struct {
			Signatures map[string]map[string]string `json:"signatures"`
		}
		if err := json.Unmarshal(req.Remote.Event, &sent); err != nil || sent.Signatures[string(ours)] == nil || sent.Signatures[string(fedRemote)] == nil {
			t.Fatalf("restricted join given to the roomserver with signatures %v (%v)", sent.Signatures, err)
		}

		// Naming a user of another server: only that server could sign.
		other := j.build(j.remote, editTemplate(m, func(ev map[string]any) {
			ev["content"].(map[string]any)["join_authorised_via_users_server"] = "@carol:other.example"
		}), roomID, fedBob, "join")
		if code, errcode := j.send(fedRemote, sendPath("join", "v2", roomID, other.EventID()), other.JSON()); code != 400 || errcode != "M_INVALID_PARAM" {
			t.Errorf("authoriser of another server: %d %s", code, errcode)
		}
		// A user no longer in the allowed room may not be authorised.
		j.member(space, fedBob, fedBob, "leave")
		if code, errcode := j.send(fedRemote, sendPath("join", "v2", roomID, ev.EventID()), ev.JSON()); code != 403 || errcode != "M_FORBIDDEN" {
			t.Errorf("conditions no longer met: %d %s", code, errcode)
		}
		if _, n := j.input.last(); n != 1 {
			t.Errorf("%d inputs, want only the first join", n)
		}
	})
}

// TestSendLeaveChecks checks send_leave's validation, as send_join's.
func TestSendLeaveChecks(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		j := newJoinEnv(t, db)
		roomID, _ := j.createRoom("10", "shared")
		j.member(roomID, fedBob, fedBob, "join")
		leave := j.build(j.remote, j.template("leave", fedRemote, roomID, fedBob), roomID, fedBob, "leave")
		join := j.build(j.remote, j.template("join", fedRemote, roomID, fedBob, "10"), roomID, fedBob, "join")
		if code, errcode := j.send(fedRemote, sendPath("leave", "v2", roomID, join.EventID()), join.JSON()); code != 400 || errcode != "M_INVALID_PARAM" {
			t.Errorf("join sent to send_leave: %d %s", code, errcode)
		}
		if code, errcode := j.send(fedOther, sendPath("leave", "v2", roomID, leave.EventID()), leave.JSON()); code != 400 || errcode != "M_INVALID_PARAM" {
			t.Errorf("leave of another server's user: %d %s", code, errcode)
		}
		if code, errcode := j.send(fedRemote, sendPath("leave", "v1", roomID, leave.EventID()), leave.JSON()); code != 403 || errcode != "M_FORBIDDEN" {
			t.Errorf("send_leave: %d %s, want the roomserver's refusal", code, errcode)
		}
		if req, n := j.input.last(); n != 1 || req.Remote == nil {
			t.Errorf("roomserver inputs: %d %+v", n, req)
		}
	})
}

// rsInput hands inputs to the roomserver in process.
type rsInput struct{ rs *roomserver.Roomserver }

func (i rsInput) Input(ctx context.Context, req roomserver.InputRequest) (roomserver.InputResponse, error) {
	return i.rs.HandleInput(ctx, req)
}

// TestSendJoinAnswer checks send_join's answer once the roomserver takes
// the join (joins-v2.yaml): the state before the join, the auth chain of
// that state and of the join, the join as stored, the servers in the room
// before it, members not omitted, our name as origin; the join is then
// in the room. v1 wraps the same answer in [200, …].
func TestSendJoinAnswer(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		for _, version := range []string{"1", "10", "12"} {
			t.Run("v"+version, func(t *testing.T) {
				ctx := context.Background()
				j := newJoinEnv(t, db)
				j.input.pass = rsInput{j.rs}
				roomID, initial := j.createRoom(version, "shared")
				dave := j.member(roomID, "@dave:other.example", "@dave:other.example", "join")
				j.message(roomID, fedAlice, "hello")
				ev := j.build(j.remote, j.template("join", fedRemote, roomID, fedBob, version), roomID, fedBob, "join")

				var out map[string]json.RawMessage
				for _, v := range []string{"v1", "v2"} {
					req := httptest.NewRequest("PUT", sendPath("join", v, roomID, ev.EventID()), strings.NewReader(string(ev.JSON())))
					req.Header.Set("X-Test-Origin", string(fedRemote))
					w := httptest.NewRecorder()
					j.ServeHTTP(w, req)
					if w.Code != 200 {
						t.Fatalf("%s send_join: %d %s", v, w.Code, w.Body)
					}
					if v == "v1" {
						var wrapped []json.RawMessage
						if err := json.Unmarshal(w.Body.Bytes(), &wrapped); err != nil || len(wrapped) != 2 || string(wrapped[0]) != "200" {
							t.Fatalf("v1 answer %s", w.Body)
						}
						continue
					}
					if err := json.Unmarshal(w.Body.Bytes(), &out); err != nil {
						t.Fatal(err)
					}
				}
				if m, err := db.Membership(ctx, roomID, fedBob); err != nil || m != "join" {
					t.Fatalf("bob's membership after send_join: %q %v", m, err)
				}
				wantState := append(slices.Clone(initial), dave)
				if got := ids(j.pdus(out["state"])); !sameSet(got, wantState) {
					t.Errorf("state %v, want %v", got, wantState)
				}
				// The join's auth events are in the chain (the create event
				// is implied in room version 12).
				chain := ids(j.pdus(out["auth_chain"]))
				for _, id := range ev.AuthEventIDs() {
					if !slices.Contains(chain, id) && !(version == "12" && id == initial[0]) {
						t.Errorf("auth chain %v lacks the join's auth event %s", chain, id)
					}
				}
				var servers []string
				var origin string
				var omitted bool
				_ = json.Unmarshal(out["servers_in_room"], &servers)
				_ = json.Unmarshal(out["origin"], &origin)
				_ = json.Unmarshal(out["members_omitted"], &omitted)
				if !slices.Equal(servers, []string{string(fedOther), string(ours)}) || origin != string(ours) || omitted {
					t.Errorf("servers_in_room %v, origin %q, members_omitted %v", servers, origin, omitted)
				}
				joined, err := verImplOf(t, version).NewEventFromUntrustedJSON(out["event"])
				if err != nil || joined.EventID() != ev.EventID() {
					t.Errorf("event %s (%v), want %s", out["event"], err, ev.EventID())
				}
			})
		}
	})
}

func verImplOf(t *testing.T, version string) gomatrixserverlib.IRoomVersion {
	t.Helper()
	v, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(version))
	if err != nil {
		t.Fatal(err)
	}
	return v
}
