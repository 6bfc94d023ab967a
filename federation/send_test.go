package federation

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/roomserver"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

const remote = spec.ServerName("remote.example")

// sendEnv serves /send as if every request were authenticated as the
// origin in the X-Test-Origin header (the Authenticator is tested on its
// own), with an m.test EDU handler that records what it gets, PDUs
// checked against the keys of the fake servers of pdus, and a roomserver
// input that records what it takes.
type sendEnv struct {
	db      *sql.DB
	handler http.Handler
	pdus    *pduEnv
	rooms   *recordingInput

	mu   sync.Mutex
	got  []string // origin + " " + content of each m.test EDU handled
	fail error    // returned by the handler while set
	// While hold is set, the handler signals entered and waits for hold
	// to close.
	hold, entered chan struct{}
}

// recordingInput plays the roomserver's input: it records the requests
// it accepts, answering with answer's error (nil: accepted).
type recordingInput struct {
	mu     sync.Mutex
	got    []roomserver.InputRequest
	answer func(roomserver.InputRequest) error
}

func (r *recordingInput) Input(_ context.Context, req roomserver.InputRequest) (roomserver.InputResponse, error) {
	r.mu.Lock()
	answer := r.answer
	r.mu.Unlock()
	if answer != nil {
		if err := answer(req); err != nil {
			return roomserver.InputResponse{}, err
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, req)
	return roomserver.InputResponse{RoomID: req.RoomID}, nil
}

func (r *recordingInput) setAnswer(f func(roomserver.InputRequest) error) {
	r.mu.Lock()
	r.answer = f
	r.mu.Unlock()
}

// taken returns the event ids of the remote events taken, in order, as
// the roomserver would compute them, and whether each came redacted.
func (r *recordingInput) taken(t testing.TB) (ids []string, redacted []bool) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, req := range r.got {
		info := gomatrixserverlib.MustGetRoomVersion("10")
		ev, err := info.NewEventFromUntrustedJSON(req.Remote.Event)
		if err != nil {
			t.Fatalf("remote event %s: %v", req.Remote.Event, err)
		}
		ids = append(ids, ev.EventID())
		redacted = append(redacted, ev.Redacted())
	}
	return ids, redacted
}

func newSendEnv(t testing.TB, db *sql.DB) *sendEnv {
	e := &sendEnv{db: db, entered: make(chan struct{}, 10), pdus: newPDUEnv(t), rooms: &recordingInput{}}
	reg := NewEDURegistry()
	if err := reg.Register("m.test", func(_ context.Context, origin spec.ServerName, content json.RawMessage) error {
		e.mu.Lock()
		hold, fail := e.hold, e.fail
		e.mu.Unlock()
		if hold != nil {
			e.entered <- struct{}{}
			<-hold
		}
		if fail != nil {
			return fail
		}
		e.mu.Lock()
		e.got = append(e.got, string(origin)+" "+string(content))
		e.mu.Unlock()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := reg.Register("m.test", nil); err == nil {
		t.Fatal("a second handler for m.test was registered")
	}
	r := mxhttp.NewRouter()
	(&Transactions{DB: db, EDUs: reg, Rooms: e.rooms, Keys: e.pdus.ring}).Routes(r)
	e.handler = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		ctx := context.WithValue(req.Context(), originKey{}, spec.ServerName(req.Header.Get("X-Test-Origin")))
		r.ServeHTTP(w, req.WithContext(ctx))
	})
	return e
}

func (e *sendEnv) handled() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.got...)
}

// put sends a transaction body as origin and returns the status and the
// decoded answer.
func (e *sendEnv) put(origin spec.ServerName, txnID string, body any) (int, map[string]any) {
	raw, ok := body.([]byte)
	if !ok {
		raw, _ = json.Marshal(body)
	}
	req := httptest.NewRequest(http.MethodPut, "/_matrix/federation/v1/send/"+txnID, bytes.NewReader(raw))
	req.Header.Set("X-Test-Origin", string(origin))
	w := httptest.NewRecorder()
	e.handler.ServeHTTP(w, req)
	var out map[string]any
	json.Unmarshal(w.Body.Bytes(), &out)
	return w.Code, out
}

func testEDU(content string) map[string]any {
	return map[string]any{"edu_type": "m.test", "content": json.RawMessage(content)}
}

func txn(origin spec.ServerName, pdus []any, edus ...map[string]any) map[string]any {
	if pdus == nil {
		pdus = []any{}
	}
	body := map[string]any{"origin": origin, "origin_server_ts": 1, "pdus": pdus}
	if len(edus) > 0 {
		body["edus"] = edus
	}
	return body
}

// TestSendLimitsAndShape: the spec's limits (50 PDUs, 100 EDUs) and a
// malformed body are 400, never 500; a body naming another origin than
// the signature is 403; one naming none is taken.
func TestSendLimitsAndShape(t *testing.T) {
	e := newSendEnv(t, sqltest.Open(t, config.SQLite))
	many := func(n int) []map[string]any {
		out := make([]map[string]any, n)
		for i := range out {
			out[i] = testEDU(fmt.Sprintf(`{"i":%d}`, i))
		}
		return out
	}
	pdus := func(n int) []any {
		out := make([]any, n)
		for i := range out {
			out[i] = map[string]any{"room_id": "!unknown:remote.example"}
		}
		return out
	}
	for _, c := range []struct {
		name    string
		body    any
		code    int
		errcode string
	}{
		{"100 EDUs", txn(remote, nil, many(100)...), 200, ""},
		{"101 EDUs", txn(remote, nil, many(101)...), 400, "M_BAD_JSON"},
		{"50 PDUs", txn(remote, pdus(50)), 200, ""},
		{"51 PDUs", txn(remote, pdus(51)), 400, "M_BAD_JSON"},
		{"not JSON", []byte(`{"origin":`), 400, "M_NOT_JSON"},
		{"empty", []byte(``), 400, "M_NOT_JSON"},
		{"an array", []byte(`[]`), 400, "M_BAD_JSON"},
		{"pdus not an array", []byte(`{"origin":"remote.example","pdus":{}}`), 400, "M_BAD_JSON"},
		{"edus not an array", []byte(`{"origin":"remote.example","pdus":[],"edus":"x"}`), 400, "M_BAD_JSON"},
		{"origin not a string", []byte(`{"origin":1,"pdus":[]}`), 400, "M_BAD_JSON"},
		{"another origin", txn("evil.example", nil), 403, "M_FORBIDDEN"},
		{"no origin", []byte(`{"pdus":[]}`), 200, ""},
		{"no pdus", []byte(`{"origin":"remote.example"}`), 200, ""},
	} {
		code, body := e.put(remote, "t-"+strings.ReplaceAll(c.name, " ", "-"), c.body)
		if code != c.code || (c.errcode != "" && body["errcode"] != c.errcode) {
			t.Errorf("%s: %d %v, want %d %s", c.name, code, body, c.code, c.errcode)
		}
		if code == 200 {
			if _, ok := body["pdus"].(map[string]any); !ok {
				t.Errorf("%s: answer without a pdus object: %v", c.name, body)
			}
		}
	}
	if got := len(e.handled()); got != 100 {
		t.Errorf("%d EDUs handled, want the 100 of the accepted transaction", got)
	}
}

// TestSendIdempotent: a transaction seen before (same origin and id) is
// answered as the first time and not processed again; the same id from
// another origin, or another id, is a new transaction. Malformed EDUs and
// unknown types are skipped without spoiling the others.
func TestSendIdempotent(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		e := newSendEnv(t, db)
		body := txn(remote, nil, testEDU(`{"a":1}`), map[string]any{"edu_type": "m.unknown", "content": map[string]any{}},
			map[string]any{"edu_type": "m.test", "content": "not an object"}, map[string]any{"content": map[string]any{}},
			testEDU(`{"a":2}`))
		code1, resp1 := e.put(remote, "t1", body)
		code2, resp2 := e.put(remote, "t1", body)
		if code1 != 200 || code2 != 200 || fmt.Sprint(resp1) != fmt.Sprint(resp2) {
			t.Fatalf("answers %d %v then %d %v", code1, resp1, code2, resp2)
		}
		if got := e.handled(); fmt.Sprint(got) != `[remote.example {"a":1} remote.example {"a":2}]` {
			t.Fatalf("handled %v", got)
		}
		e.put("other.example", "t1", txn("other.example", nil, testEDU(`{"b":1}`)))
		e.put(remote, "t2", txn(remote, nil, testEDU(`{"a":3}`)))
		if got := e.handled(); len(got) != 4 || got[2] != `other.example {"b":1}` || got[3] != `remote.example {"a":3}` {
			t.Fatalf("handled %v", got)
		}
	})
}

// TestSendHandlerFailure: a handler's failure is a 500 that is not
// recorded, so the sender's retry processes the transaction.
func TestSendHandlerFailure(t *testing.T) {
	e := newSendEnv(t, sqltest.Open(t, config.SQLite))
	e.fail = errors.New("database down")
	if code, body := e.put(remote, "t1", txn(remote, nil, testEDU(`{"a":1}`))); code != 500 || body["errcode"] != "M_UNKNOWN" {
		t.Fatalf("failing handler: %d %v", code, body)
	}
	e.mu.Lock()
	e.fail = nil
	e.mu.Unlock()
	if code, _ := e.put(remote, "t1", txn(remote, nil, testEDU(`{"a":1}`))); code != 200 {
		t.Fatalf("retry: %d", code)
	}
	if got := e.handled(); len(got) != 1 {
		t.Fatalf("handled %v", got)
	}
}

// TestSendConcurrentRetry: a retry arriving while the first request is
// still processed (the sender timed out) waits for it and gets its answer
// without processing twice; another transaction from the same origin
// meanwhile is 429, as in Synapse.
func TestSendConcurrentRetry(t *testing.T) {
	e := newSendEnv(t, sqltest.Open(t, config.SQLite))
	hold := make(chan struct{})
	e.hold = hold
	body := txn(remote, nil, testEDU(`{"a":1}`))
	codes := make(chan int, 2)
	put := func() {
		code, _ := e.put(remote, "t1", body)
		codes <- code
	}
	go put()
	select {
	case <-e.entered:
	case <-time.After(5 * time.Second):
		t.Fatal("the transaction was not processed")
	}
	go put()
	time.Sleep(50 * time.Millisecond)
	if code, resp := e.put(remote, "t2", txn(remote, nil)); code != 429 || resp["errcode"] != "M_LIMIT_EXCEEDED" {
		t.Fatalf("another transaction during processing: %d %v", code, resp)
	}
	e.mu.Lock()
	e.hold = nil
	e.mu.Unlock()
	close(hold)
	for range 2 {
		if code := <-codes; code != 200 {
			t.Fatalf("status %d", code)
		}
	}
	if got := e.handled(); len(got) != 1 {
		t.Fatalf("handled %d times: %v", len(got), got)
	}
}

// TestSendPDUResults: each PDU is checked and submitted to the roomserver
// as a remote event from the origin, and answered under its event id: {}
// when taken; an error when its signature fails (dropped, spec: "Checks
// performed on receipt of a PDU", 2) or the roomserver refuses it. A PDU
// whose content hash fails is taken redacted (check 3). One of a room we
// do not know, or that does not parse, gets no entry, as in Synapse.
func TestSendPDUResults(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		e := newSendEnv(t, db)
		for _, room := range []string{"!known:remote.example", "!second:remote.example"} {
			if _, err := db.CreateRoom(ctx, room, "10"); err != nil {
				t.Fatal(err)
			}
		}
		in := func(room, body string) gomatrixserverlib.PDU {
			return e.pdus.build("10", e.pdus.remote, gomatrixserverlib.ProtoEvent{RoomID: room, Type: "m.room.message",
				Content: spec.RawJSON(`{"body":"` + body + `"}`)})
		}
		good, tampered, refused := in("!known:remote.example", "one"), in("!known:remote.example", "two"), in("!known:remote.example", "three")
		second, unknown := in("!second:remote.example", "four"), in("!unknown:remote.example", "five")
		forged := e.pdus.forge("!known:remote.example")
		e.rooms.setAnswer(func(req roomserver.InputRequest) error {
			if bytes.Contains(req.Remote.Event, []byte("three")) {
				return mxhttp.Forbidden("not allowed by the auth rules")
			}
			return nil
		})
		code, resp := e.put(remote, "t1", txn(remote, []any{json.RawMessage(good.JSON()), withContent(t, tampered, `{"body":"evil"}`),
			json.RawMessage(forged.JSON()), json.RawMessage(refused.JSON()), json.RawMessage(second.JSON()), json.RawMessage(unknown.JSON()),
			map[string]any{"room_id": "!known:remote.example", "garbage": true}, "not an object", map[string]any{"room_id": 1}}))
		if code != 200 {
			t.Fatalf("status %d %v", code, resp)
		}
		results := resp["pdus"].(map[string]any)
		want := map[string]string{good.EventID(): "", tampered.EventID(): "", second.EventID(): "",
			forged.EventID(): "bad signature", refused.EventID(): "not allowed by the auth rules"}
		if len(results) != len(want) {
			t.Errorf("%d results, want %d: %v", len(results), len(want), results)
		}
		for id, wantErr := range want {
			r, ok := results[id].(map[string]any)
			got, _ := r["error"].(string)
			if !ok || (wantErr == "" && len(r) != 0) || (wantErr != "" && !strings.Contains(got, wantErr)) {
				t.Errorf("result of %s: %v, want error %q", id, results[id], wantErr)
			}
		}
		ids, redacted := e.rooms.taken(t)
		byRoom := map[string][]string{}
		e.rooms.mu.Lock()
		for i, req := range e.rooms.got {
			if req.Remote == nil || req.Remote.Origin != string(remote) || req.NewEvent != nil {
				t.Errorf("input %d: %+v, want a remote event from %s", i, req, remote)
			}
			byRoom[req.RoomID] = append(byRoom[req.RoomID], ids[i])
			if ids[i] == tampered.EventID() != redacted[i] {
				t.Errorf("%s taken with redacted %v", ids[i], redacted[i])
			}
		}
		e.rooms.mu.Unlock()
		if !slices.Equal(byRoom["!known:remote.example"], []string{good.EventID(), tampered.EventID()}) ||
			!slices.Equal(byRoom["!second:remote.example"], []string{second.EventID()}) || len(byRoom) != 2 {
			t.Errorf("taken %v", byRoom)
		}
	})
}

// TestSendPDUACL: the PDUs of a room whose server ACL denies the origin
// are all refused, without a key lookup, and none is submitted (spec:
// "ACLs MUST be applied to all PDUs on a per-PDU basis").
func TestSendPDUACL(t *testing.T) {
	db := sqltest.Open(t, config.SQLite)
	e := newSendEnv(t, db)
	fed := newFedEnv(t, db)
	roomID, _ := fed.createRoom("10", "shared")
	fed.state(roomID, fedAlice, "m.room.server_acl", "", map[string]any{"allow": []string{"*"}, "deny": []string{"remote.example"}})
	denied := e.pdus.build("10", e.pdus.remote, gomatrixserverlib.ProtoEvent{RoomID: roomID})
	allowed := e.pdus.build("10", e.pdus.other, gomatrixserverlib.ProtoEvent{RoomID: roomID, SenderID: "@carol:other.example"})
	e.pdus.ring.calls.Store(0)
	code, resp := e.put(remote, "t1", txn(remote, []any{json.RawMessage(denied.JSON())}))
	r, _ := resp["pdus"].(map[string]any)[denied.EventID()].(map[string]any)
	if code != 200 || r == nil || !strings.Contains(fmt.Sprint(r["error"]), "denied by the room's server ACL") {
		t.Fatalf("denied origin: %d %v", code, resp)
	}
	if ids, _ := e.rooms.taken(t); len(ids) != 0 || e.pdus.ring.calls.Load() != 0 {
		t.Fatalf("denied origin: %d taken, %d key lookups", len(ids), e.pdus.ring.calls.Load())
	}
	code, resp = e.put("other.example", "t1", txn("other.example", []any{json.RawMessage(allowed.JSON())}))
	if ids, _ := e.rooms.taken(t); code != 200 || len(ids) != 1 || ids[0] != allowed.EventID() {
		t.Fatalf("allowed origin: %d %v, taken %v", code, resp, ids)
	}
}

// TestSendPDUInputFailure: when the roomserver cannot be reached (not a
// refusal), the transaction fails unrecorded and the sender's retry
// submits its PDUs again.
func TestSendPDUInputFailure(t *testing.T) {
	db := sqltest.Open(t, config.SQLite)
	e := newSendEnv(t, db)
	if _, err := db.CreateRoom(context.Background(), "!room:remote.example", "10"); err != nil {
		t.Fatal(err)
	}
	ev := e.pdus.build("10", e.pdus.remote, gomatrixserverlib.ProtoEvent{})
	body := txn(remote, []any{json.RawMessage(ev.JSON())})
	for _, failure := range []error{errors.New("wait for room input: context deadline exceeded"), mxhttp.Internal(errors.New("database down"))} {
		e.rooms.setAnswer(func(roomserver.InputRequest) error { return failure })
		if code, resp := e.put(remote, "t1", body); code != 500 || resp["errcode"] != "M_UNKNOWN" {
			t.Fatalf("input failing with %v: %d %v", failure, code, resp)
		}
	}
	e.rooms.setAnswer(nil)
	code, resp := e.put(remote, "t1", body)
	if r, ok := resp["pdus"].(map[string]any)[ev.EventID()].(map[string]any); code != 200 || !ok || len(r) != 0 {
		t.Fatalf("retry: %d %v", code, resp)
	}
	if ids, _ := e.rooms.taken(t); !slices.Equal(ids, []string{ev.EventID()}) {
		t.Fatalf("taken %v", ids)
	}
}

// TestSendPDURoomsInParallel: the PDUs of different rooms are submitted
// at once, each room's in the order they came, and the answer waits for
// every input.
func TestSendPDURoomsInParallel(t *testing.T) {
	db := sqltest.Open(t, config.SQLite)
	e := newSendEnv(t, db)
	for _, room := range []string{"!a:remote.example", "!b:remote.example"} {
		if _, err := db.CreateRoom(context.Background(), room, "10"); err != nil {
			t.Fatal(err)
		}
	}
	a1 := e.pdus.build("10", e.pdus.remote, gomatrixserverlib.ProtoEvent{RoomID: "!a:remote.example"})
	a2 := e.pdus.build("10", e.pdus.remote, gomatrixserverlib.ProtoEvent{RoomID: "!a:remote.example", Type: "m.room.message", Content: spec.RawJSON(`{"n":2}`)})
	b1 := e.pdus.build("10", e.pdus.remote, gomatrixserverlib.ProtoEvent{RoomID: "!b:remote.example"})
	bTaken := make(chan struct{})
	var once sync.Once
	e.rooms.setAnswer(func(req roomserver.InputRequest) error {
		if req.RoomID == "!b:remote.example" {
			once.Do(func() { close(bTaken) })
			return nil
		}
		select {
		case <-bTaken:
			return nil
		case <-time.After(5 * time.Second):
			return errors.New("room b was not handled while room a's input waited")
		}
	})
	code, resp := e.put(remote, "t1", txn(remote, []any{json.RawMessage(a1.JSON()), json.RawMessage(a2.JSON()), json.RawMessage(b1.JSON())}))
	if code != 200 || len(resp["pdus"].(map[string]any)) != 3 {
		t.Fatalf("%d %v", code, resp)
	}
	// Room a's input succeeded, so room b's was taken while a1 waited.
	// When b1 is recorded relative to a1 is a race, so only a's order is
	// checked.
	ids, _ := e.rooms.taken(t)
	aOnly := slices.DeleteFunc(slices.Clone(ids), func(id string) bool { return id == b1.EventID() })
	if len(ids) != 3 || !slices.Contains(ids, b1.EventID()) || !slices.Equal(aOnly, []string{a1.EventID(), a2.EventID()}) {
		t.Fatalf("taken %v, want b1, and a1 before a2", ids)
	}
}

// FuzzSendTransaction: whatever the body, /send answers 200, 400, 403 or
// 413 with a JSON body, never 500.
func FuzzSendTransaction(f *testing.F) {
	e := newSendEnv(f, sqltest.Open(f, config.SQLite))
	for _, seed := range []string{
		`{"origin":"remote.example","origin_server_ts":1,"pdus":[],"edus":[{"edu_type":"m.test","content":{"a":1}}]}`,
		`{"origin":"remote.example","pdus":[{"room_id":"!r:x","type":"m.room.message"}]}`,
		`{"pdus":null,"edus":null}`,
		`{"edus":[null,1,"x",[],{"edu_type":1},{"edu_type":"m.test","content":null}]}`,
		`{"origin":"remote.example","pdus":[1,2,3]}`,
		`[]`, `null`, `{`, ``, `{"origin":"evil.example"}`,
	} {
		f.Add([]byte(seed))
	}
	n := 0
	f.Fuzz(func(t *testing.T, body []byte) {
		n++
		code, resp := e.put(remote, fmt.Sprintf("fuzz-%d", n), body)
		if code >= 500 || resp == nil {
			t.Fatalf("body %q: %d %v", body, code, resp)
		}
	})
}
