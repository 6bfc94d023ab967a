package federation

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

type notaryEnv struct {
	handler http.Handler
	notary  *Notary
	ours    *KeyServer
	fake    *fakeServers
	remote  *fakeServer
}

func newNotaryEnv(t *testing.T, db *sql.DB) *notaryEnv {
	fake := newFakeServers()
	remote := fake.add(t, "remote.example", time.Hour)
	ring, key := newTestRing(t, db, fake)
	ks := &KeyServer{ServerName: ours, Key: key, Validity: time.Hour}
	n := &Notary{Keys: ks, DB: db, Fetch: ring}
	r := mxhttp.NewRouter()
	n.Routes(r)
	return &notaryEnv{handler: r, notary: n, ours: ks, fake: fake, remote: remote}
}

// query sends req and returns the documents, each checked to carry our
// signature.
func (e *notaryEnv) query(t *testing.T, req *http.Request) []gomatrixserverlib.ServerKeys {
	t.Helper()
	w := httptest.NewRecorder()
	e.handler.ServeHTTP(w, req)
	if w.Code != 200 {
		t.Fatalf("%s %s: %d %s", req.Method, req.URL, w.Code, w.Body)
	}
	var resp struct {
		ServerKeys []gomatrixserverlib.ServerKeys `json:"server_keys"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &resp); err != nil || resp.ServerKeys == nil {
		t.Fatalf("response %s: %v (server_keys must be an array)", w.Body, err)
	}
	for _, doc := range resp.ServerKeys {
		if err := gomatrixserverlib.VerifyJSON(string(ours), e.ours.Key.ID, e.ours.Key.Public(), doc.Raw); err != nil {
			t.Fatalf("document of %s not signed by the notary: %v", doc.ServerName, err)
		}
	}
	return resp.ServerKeys
}

func get(server string, minValid int64) *http.Request {
	u := "/_matrix/key/v2/query/" + server
	if minValid > 0 {
		u += "?minimum_valid_until_ts=" + strconv.FormatInt(minValid, 10)
	}
	return httptest.NewRequest("GET", u, nil)
}

func TestNotary(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		e := newNotaryEnv(t, db)
		remoteKey := e.remote.keys.Key

		// Our own keys, from our key server.
		docs := e.query(t, get(string(ours), 0))
		if len(docs) != 1 || docs[0].ServerName != ours || docs[0].VerifyKeys[e.ours.Key.ID].Key == nil {
			t.Fatalf("own keys: %+v", docs)
		}

		// A remote server's keys: fetched, signed by it and by us.
		docs = e.query(t, get("remote.example", 0))
		if len(docs) != 1 || docs[0].ServerName != "remote.example" {
			t.Fatalf("remote keys: %+v", docs)
		}
		if err := gomatrixserverlib.VerifyJSON("remote.example", remoteKey.ID, remoteKey.Public(), docs[0].Raw); err != nil {
			t.Fatalf("the origin's signature was lost: %v", err)
		}
		if checks, _ := gomatrixserverlib.CheckKeys("remote.example", time.Now(), docs[0]); !checks.AllChecksOK {
			t.Fatalf("relayed document fails the checks a requester makes: %+v", checks)
		}
		if n := e.fake.directCalls("remote.example"); n != 1 {
			t.Fatalf("%d fetches", n)
		}
		// Again: from the cache.
		e.query(t, get("remote.example", 0))
		if n := e.fake.directCalls("remote.example"); n != 1 {
			t.Fatalf("cached keys refetched (%d fetches)", n)
		}
		// Asked for keys valid longer than the cached document: refetch.
		later := time.Now().Add(2 * time.Hour).UnixMilli()
		e.fake.set(func() { e.remote.keys.Validity = 3 * time.Hour })
		docs = e.query(t, get("remote.example", later))
		if n := e.fake.directCalls("remote.example"); n != 2 || len(docs) != 1 || int64(docs[0].ValidUntilTS) < later {
			t.Fatalf("minimum_valid_until_ts: %d fetches, %+v", n, docs)
		}
		// Past half of the document's lifetime: refetch.
		e.notary.Now = func() time.Time { return time.Now().Add(100 * time.Minute) }
		e.query(t, get("remote.example", 0))
		if n := e.fake.directCalls("remote.example"); n != 3 {
			t.Fatalf("half-life: %d fetches, want 3", n)
		}
		e.notary.Now = nil

		// The server goes down: the last document is still served.
		e.fake.set(func() { e.remote.down = true })
		docs = e.query(t, get("remote.example", time.Now().Add(24*time.Hour).UnixMilli()))
		if len(docs) != 1 || docs[0].ServerName != "remote.example" {
			t.Fatalf("down server: %+v, want the last document", docs)
		}
		// A server never reached: an empty array.
		if docs := e.query(t, get("never.example", 0)); len(docs) != 0 {
			t.Fatalf("unknown server: %+v", docs)
		}
	})
}

func TestNotaryBatch(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		e := newNotaryEnv(t, db)
		other := e.fake.add(t, "other.example:8448", time.Hour)
		body := `{"server_keys":{
			"remote.example":{"` + string(e.remote.keys.Key.ID) + `":{"minimum_valid_until_ts":1}},
			"other.example:8448":{},
			"` + string(ours) + `":{},
			"never.example":{"ed25519:x":{}},
			"bad name!":{}
		}}`
		docs := e.query(t, httptest.NewRequest("POST", "/_matrix/key/v2/query", strings.NewReader(body)))
		got := map[spec.ServerName]bool{}
		for _, d := range docs {
			got[d.ServerName] = true
		}
		if len(docs) != 3 || !got["remote.example"] || !got["other.example:8448"] || !got[ours] {
			t.Fatalf("batch answered %v, want remote, other and ours", got)
		}
		// A key id the cached document does not list: refetch.
		body = `{"server_keys":{"other.example:8448":{"ed25519:rotated":{}}}}`
		e.query(t, httptest.NewRequest("POST", "/_matrix/key/v2/query", strings.NewReader(body)))
		if n := e.fake.directCalls("other.example:8448"); n != 2 {
			t.Fatalf("unknown key id: %d fetches, want 2", n)
		}
		_ = other
		// No servers: an empty array.
		if docs := e.query(t, httptest.NewRequest("POST", "/_matrix/key/v2/query", strings.NewReader(`{"server_keys":{}}`))); len(docs) != 0 {
			t.Fatalf("empty query: %+v", docs)
		}
	})
}

func TestNotaryErrors(t *testing.T) {
	e := newNotaryEnv(t, sqltest.Open(t, "sqlite"))
	for _, c := range []struct {
		req  *http.Request
		code int
		err  string
	}{
		{httptest.NewRequest("POST", "/_matrix/key/v2/query", strings.NewReader(`nope`)), 400, "M_NOT_JSON"},
		{httptest.NewRequest("POST", "/_matrix/key/v2/query", strings.NewReader(`{}`)), 400, "M_MISSING_PARAM"},
		{httptest.NewRequest("POST", "/_matrix/key/v2/query", strings.NewReader(`{"server_keys":[]}`)), 400, "M_BAD_JSON"},
		{httptest.NewRequest("GET", "/_matrix/key/v2/query/bad%20name", nil), 400, "M_INVALID_PARAM"},
		{httptest.NewRequest("GET", "/_matrix/key/v2/query/remote.example?minimum_valid_until_ts=soon", nil), 400, "M_INVALID_PARAM"},
		{httptest.NewRequest("PUT", "/_matrix/key/v2/query", nil), 405, "M_UNRECOGNIZED"},
	} {
		w := httptest.NewRecorder()
		e.handler.ServeHTTP(w, c.req)
		var body map[string]any
		json.Unmarshal(w.Body.Bytes(), &body)
		if w.Code != c.code || body["errcode"] != c.err {
			t.Errorf("%s %s: %d %v, want %d %s", c.req.Method, c.req.URL, w.Code, body, c.code, c.err)
		}
	}
}
