package federation

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/internal/serverkey"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

const remote = spec.ServerName("remote.example")

// sendEnv serves /send as if every request were authenticated as the
// origin in the X-Test-Origin header (the Authenticator is tested on its
// own), with an m.test EDU handler that records what it gets.
type sendEnv struct {
	db      *sql.DB
	handler http.Handler

	mu   sync.Mutex
	got  []string // origin + " " + content of each m.test EDU handled
	fail error    // returned by the handler while set
	// While hold is set, the handler signals entered and waits for hold
	// to close.
	hold, entered chan struct{}
}

func newSendEnv(t testing.TB, db *sql.DB) *sendEnv {
	e := &sendEnv{db: db, entered: make(chan struct{}, 10)}
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
	(&Transactions{DB: db, EDUs: reg}).Routes(r)
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

// TestSendPDUResults: until the roomserver takes remote events, a PDU of
// a room we know is answered with an error under its event id (no fake
// success); one of a room we do not know, or that does not parse, gets no
// entry, as in Synapse.
func TestSendPDUResults(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		e := newSendEnv(t, db)
		if _, err := db.CreateRoom(ctx, "!known:ours.example", "10"); err != nil {
			t.Fatal(err)
		}
		key, _ := serverkey.Generate()
		build := func(roomID string) gomatrixserverlib.PDU {
			verImpl := gomatrixserverlib.MustGetRoomVersion("10")
			b := verImpl.NewEventBuilderFromProtoEvent(&gomatrixserverlib.ProtoEvent{SenderID: "@bob:remote.example", RoomID: roomID,
				Type: "m.room.message", Content: spec.RawJSON(`{"body":"hi"}`), PrevEvents: []string{"$prev"},
				AuthEvents: []string{"$auth"}, Depth: 3, Version: verImpl})
			ev, err := b.Build(time.Now(), remote, key.ID, key.Private)
			if err != nil {
				t.Fatal(err)
			}
			return ev
		}
		known, unknown := build("!known:ours.example"), build("!unknown:ours.example")
		code, resp := e.put(remote, "t1", txn(remote, []any{json.RawMessage(known.JSON()), json.RawMessage(unknown.JSON()),
			map[string]any{"room_id": "!known:ours.example", "garbage": true}, "not an object"}))
		if code != 200 {
			t.Fatalf("status %d %v", code, resp)
		}
		results := resp["pdus"].(map[string]any)
		r, ok := results[known.EventID()].(map[string]any)
		if len(results) != 1 || !ok || r["error"] != pduNotAccepted {
			t.Fatalf("results %v, want an error for %s only", results, known.EventID())
		}
	})
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
