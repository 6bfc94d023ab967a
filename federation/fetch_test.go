package federation

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/internal/serverkey"
	"github.com/weft-chat/weft/sql/sqltest"
)

// pduEnv signs events as the fake servers remote.example and
// other.example, whose keys a key ring of ours fetches from them.
type pduEnv struct {
	t             testing.TB
	ring          *countingVerifier
	remote, other *fakeServer
}

// countingVerifier counts the calls to the key ring.
type countingVerifier struct {
	*KeyRing
	calls atomic.Int32
}

func (c *countingVerifier) VerifyJSONs(ctx context.Context, reqs []gomatrixserverlib.VerifyJSONRequest) ([]gomatrixserverlib.VerifyJSONResult, error) {
	c.calls.Add(1)
	return c.KeyRing.VerifyJSONs(ctx, reqs)
}

func newPDUEnv(t testing.TB) *pduEnv {
	fake := newFakeServers()
	e := &pduEnv{t: t, remote: fake.add(t, "remote.example", time.Hour), other: fake.add(t, "other.example", time.Hour)}
	ring, _ := newTestRing(t, sqltest.Open(t, config.SQLite), fake)
	e.ring = &countingVerifier{KeyRing: ring}
	return e
}

// build makes an event of room version ver, signed by s (which for room
// versions 1 and 2 also names its event id).
func (e *pduEnv) build(ver string, s *fakeServer, proto gomatrixserverlib.ProtoEvent) gomatrixserverlib.PDU {
	e.t.Helper()
	verImpl := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(ver))
	if proto.RoomID == "" {
		proto.RoomID = "!room:remote.example"
	}
	if proto.SenderID == "" {
		proto.SenderID = "@bob:remote.example"
	}
	if proto.Type == "" {
		proto.Type = "m.room.message"
		proto.Content = spec.RawJSON(`{"body":"hello","msgtype":"m.text"}`)
	}
	proto.PrevEvents, proto.AuthEvents = []string{"$prev:remote.example"}, []string{"$auth:remote.example"}
	proto.Depth = 5
	proto.Version = verImpl
	ev, err := verImpl.NewEventBuilderFromProtoEvent(&proto).Build(time.Now(), s.keys.ServerName, s.keys.Key.ID, s.keys.Key.Private)
	if err != nil {
		e.t.Fatal(err)
	}
	return ev
}

// forge is an event of remote.example in room signed under its key id
// with another private key.
func (e *pduEnv) forge(room string) gomatrixserverlib.PDU {
	e.t.Helper()
	k, err := serverkey.Generate()
	if err != nil {
		e.t.Fatal(err)
	}
	k.ID = e.remote.keys.Key.ID
	return e.build("10", &fakeServer{keys: &KeyServer{ServerName: "remote.example", Key: k}}, gomatrixserverlib.ProtoEvent{RoomID: room})
}

// sign adds s's signature to ev.
func sign(ev gomatrixserverlib.PDU, s *fakeServer) gomatrixserverlib.PDU {
	return ev.Sign(string(s.keys.ServerName), s.keys.Key.ID, s.keys.Key.Private)
}

// withContent is ev's JSON with its content replaced: its content hash no
// longer matches, but its signatures (over the redacted form) still do.
func withContent(t *testing.T, ev gomatrixserverlib.PDU, content string) json.RawMessage {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(ev.JSON(), &m); err != nil {
		t.Fatal(err)
	}
	m["content"] = json.RawMessage(content)
	out, _ := json.Marshal(m)
	return out
}

// TestVerifyPDUs: the spec's checks on receipt of a PDU, 1 to 3 — a
// PDU that is not a valid event or misses a required signature is
// dropped; one whose content hash fails is kept redacted; all signatures
// of a batch are checked in one call to the key ring.
func TestVerifyPDUs(t *testing.T) {
	e := newPDUEnv(t)
	ctx := context.Background()
	joinAs := func(authoriser string) gomatrixserverlib.ProtoEvent {
		sk := "@bob:remote.example"
		content := map[string]any{"membership": "join"}
		if authoriser != "" {
			content["join_authorised_via_users_server"] = authoriser
		}
		c, _ := json.Marshal(content)
		return gomatrixserverlib.ProtoEvent{Type: "m.room.member", StateKey: &sk, Content: c}
	}
	forged := e.forge("")
	good := e.build("10", e.remote, gomatrixserverlib.ProtoEvent{})
	restricted := e.build("10", e.remote, joinAs("@carol:other.example"))
	// Room version 1: the server of the event id must sign as well as the
	// sender's.
	v1 := e.build("1", e.other, gomatrixserverlib.ProtoEvent{})
	cases := []struct {
		name     string
		ver      string
		raw      json.RawMessage
		wantID   string // "" when it must not parse, "*" any
		wantErr  string // "" when it must pass
		redacted bool
	}{
		{"good", "10", good.JSON(), good.EventID(), "", false},
		{"content changed", "10", withContent(t, good, `{"body":"evil"}`), good.EventID(), "", true},
		{"signed with the wrong private key", "10", forged.JSON(), forged.EventID(), "bad signature of remote.example", false},
		{"sender of a server that did not sign", "10", e.build("10", e.remote, gomatrixserverlib.ProtoEvent{SenderID: "@eve:other.example"}).JSON(),
			"*", "bad signature of other.example", false},
		{"sender with an invalid server name", "10", e.build("10", e.remote, gomatrixserverlib.ProtoEvent{SenderID: "@bob:not a server"}).JSON(),
			"*", "invalid sender", false},
		{"restricted join without the authorising server", "10", restricted.JSON(), restricted.EventID(), "bad signature of other.example", false},
		{"restricted join signed by both", "10", sign(restricted, e.other).JSON(), restricted.EventID(), "", false},
		{"not JSON", "10", json.RawMessage(`{"type":`), "", "invalid event", false},
		{"no prev_events", "10", json.RawMessage(`{"type":"m.room.message","room_id":"!r:remote.example","sender":"@bob:remote.example","content":{},"auth_events":[],"depth":1,"origin_server_ts":1,"hashes":{"sha256":"x"},"signatures":{}}`),
			"", "invalid event", false},
		{"v1 event id of a server that signed, sender's did not", "1", v1.JSON(), v1.EventID(), "bad signature of remote.example", false},
		{"v1 signed by both", "1", sign(v1, e.remote).JSON(), v1.EventID(), "", false},
	}
	for _, c := range cases {
		verImpl := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(c.ver))
		pdus, errs, err := verifyPDUs(ctx, e.ring, verImpl, []json.RawMessage{c.raw})
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		switch {
		case c.wantID == "" && pdus[0] != nil:
			t.Errorf("%s: parsed as %s", c.name, pdus[0].EventID())
		case c.wantID != "" && pdus[0] == nil:
			t.Errorf("%s: did not parse: %v", c.name, errs[0])
		case c.wantID != "" && c.wantID != "*" && pdus[0].EventID() != c.wantID:
			t.Errorf("%s: event id %s, want %s", c.name, pdus[0].EventID(), c.wantID)
		case c.wantErr == "" && errs[0] != nil:
			t.Errorf("%s: %v", c.name, errs[0])
		case c.wantErr != "" && (errs[0] == nil || !strings.Contains(errs[0].Error(), c.wantErr)):
			t.Errorf("%s: error %v, want %q", c.name, errs[0], c.wantErr)
		case pdus[0] != nil && pdus[0].Redacted() != c.redacted:
			t.Errorf("%s: redacted %v, want %v", c.name, pdus[0].Redacted(), c.redacted)
		case c.redacted && string(pdus[0].Content()) != `{}`:
			t.Errorf("%s: redacted content %s", c.name, pdus[0].Content())
		}
	}

	// A batch: one key ring call, results in order.
	e.ring.calls.Store(0)
	batch := []json.RawMessage{good.JSON(), forged.JSON(), json.RawMessage(`[]`), sign(restricted, e.other).JSON(), withContent(t, good, `{}`)}
	pdus, errs, err := verifyPDUs(ctx, e.ring, gomatrixserverlib.MustGetRoomVersion("10"), batch)
	if err != nil {
		t.Fatal(err)
	}
	if n := e.ring.calls.Load(); n != 1 {
		t.Errorf("%d key ring calls for a batch, want 1", n)
	}
	var failed []int
	for i, err := range errs {
		if err != nil {
			failed = append(failed, i)
		}
	}
	if !slices.Equal(failed, []int{1, 2}) || pdus[2] != nil || pdus[3].EventID() != restricted.EventID() || !pdus[4].Redacted() {
		t.Errorf("batch: failed %v (want [1 2]), errors %v", failed, errs)
	}

	// Pseudonymous ids are not checked here: refused.
	_, errs, _ = verifyPDUs(ctx, e.ring, gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersionPseudoIDs), []json.RawMessage{good.JSON()})
	if errs[0] == nil {
		t.Error("a PDU of a room with pseudonymous ids passed")
	}
}

// fakeOrigin is a real HTTPS server on loopback that serves the
// federation read endpoints the Fetcher calls with canned answers.
func fakeOrigin(t *testing.T, routes map[string]any) spec.ServerName {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		answer, ok := routes[r.Method+" "+r.URL.Path]
		if !ok || !strings.HasPrefix(r.Header.Get("Authorization"), "X-Matrix ") {
			w.WriteHeader(404)
			w.Write([]byte(`{"errcode":"M_NOT_FOUND","error":"no"}`))
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(answer)
	}))
	t.Cleanup(srv.Close)
	return spec.ServerName(srv.Listener.Addr().String())
}

// TestFetcherChecks: what another server serves to the Fetcher is checked
// before the roomserver sees it — bad signatures dropped, bad hashes
// redacted, events of other rooms and events not asked for refused.
func TestFetcherChecks(t *testing.T) {
	e := newPDUEnv(t)
	ctx := context.Background()
	ver := gomatrixserverlib.MustGetRoomVersion("10")
	key, _ := serverkey.Generate()
	room := "!room:remote.example"
	at := func(depth int64) gomatrixserverlib.PDU {
		// Depth orders the answer; build sets 5, so rebuild with ours.
		verImpl := gomatrixserverlib.MustGetRoomVersion("10")
		ev, err := verImpl.NewEventBuilderFromProtoEvent(&gomatrixserverlib.ProtoEvent{SenderID: "@bob:remote.example", RoomID: room,
			Type: "m.room.message", Content: spec.RawJSON(`{"body":"hi"}`), PrevEvents: []string{"$p"}, AuthEvents: []string{"$a"},
			Depth: depth, Version: verImpl}).Build(time.Now(), "remote.example", e.remote.keys.Key.ID, e.remote.keys.Key.Private)
		if err != nil {
			t.Fatal(err)
		}
		return ev
	}
	good, older, tampered := at(7), at(3), at(5)
	forged := e.forge("")
	elsewhere := e.build("10", e.remote, gomatrixserverlib.ProtoEvent{RoomID: "!elsewhere:remote.example"})
	eventPath := func(id string) string { return "GET /_matrix/federation/v1/event/" + id }
	txn := func(pdus ...json.RawMessage) map[string]any {
		return map[string]any{"origin": "remote.example", "origin_server_ts": 1, "pdus": pdus}
	}
	origin := fakeOrigin(t, map[string]any{
		eventPath(good.EventID()):     txn(good.JSON()),
		eventPath(tampered.EventID()): txn(withContent(t, tampered, `{"body":"evil"}`)),
		eventPath(forged.EventID()):   txn(forged.JSON()),
		eventPath("$asked"):           txn(good.JSON()),
		eventPath("$two"):             txn(good.JSON(), older.JSON()),
		"POST /_matrix/federation/v1/get_missing_events/" + room: map[string]any{"events": []json.RawMessage{
			good.JSON(), forged.JSON(), elsewhere.JSON(), older.JSON(), withContent(t, tampered, `{}`), good.JSON()}},
		"GET /_matrix/federation/v1/state_ids/" + room: map[string]any{
			"pdu_ids": []string{"$s1", "$s2"}, "auth_chain_ids": []string{"$a1"}},
	})
	f := NewFetcher(testClient(t, key), e.ring, nil)

	if ev, err := f.Event(ctx, origin, ver, good.EventID()); err != nil || ev.EventID() != good.EventID() || ev.Redacted() {
		t.Errorf("good event: %v, %v", ev, err)
	}
	if ev, err := f.Event(ctx, origin, ver, tampered.EventID()); err != nil || !ev.Redacted() || string(ev.Content()) != `{}` {
		t.Errorf("event with a bad content hash: %v, %v (want it redacted)", ev, err)
	}
	for id, want := range map[string]string{forged.EventID(): "bad signature", "$asked": "instead", "$two": "2 PDUs", "$unknown": "M_NOT_FOUND"} {
		if ev, err := f.Event(ctx, origin, ver, id); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("event %s: %v, %v; want an error with %q", id, ev, err, want)
		}
	}

	got, err := f.MissingEvents(ctx, origin, room, ver, []string{"$e"}, []string{"$l"}, 10, 0)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, ev := range got {
		ids = append(ids, ev.EventID())
	}
	if want := []string{older.EventID(), tampered.EventID(), good.EventID()}; !slices.Equal(ids, want) || !got[1].Redacted() {
		t.Errorf("missing events %v, want %v (oldest first, forged, other room and repeat dropped, tampered redacted)", ids, want)
	}
	if got, _ := f.MissingEvents(ctx, origin, room, ver, []string{"$e"}, []string{"$l"}, 2, 0); len(got) != 2 || got[1].EventID() != good.EventID() {
		t.Errorf("with limit 2: %d events, want the newest 2", len(got))
	}

	state, chain, err := f.StateIDs(ctx, origin, room, "$x")
	if err != nil || !slices.Equal(state, []string{"$s1", "$s2"}) || !slices.Equal(chain, []string{"$a1"}) {
		t.Errorf("state_ids: %v %v %v", state, chain, err)
	}
	if _, _, err := f.StateIDs(ctx, origin, "!other:remote.example", "$x"); err == nil {
		t.Error("state_ids of a 404 succeeded")
	}
}

// A malformed room id fails the parse: gomatrixserverlib's RoomID would
// panic on it later.
func TestParsePDURoomID(t *testing.T) {
	ver := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersionV12)
	for _, raw := range []string{
		`{"type":"m.room.message","room_id":"!x","sender":"@a:b","content":{},"depth":1,"prev_events":[],"auth_events":[],"origin_server_ts":1}`,
		`{"type":"m.room.message","sender":"@a:b","content":{},"depth":1,"prev_events":[],"auth_events":[],"origin_server_ts":1}`,
		`{"type":"m.room.message","room_id":5}`,
	} {
		if _, err := parsePDU(ver, []byte(raw)); err == nil {
			t.Errorf("parsePDU(%s) succeeded", raw)
		}
	}
}
