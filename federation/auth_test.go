package federation

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/internal/serverkey"
	"github.com/weft-chat/weft/sql/sqltest"
)

func TestParseAuthorization(t *testing.T) {
	for _, c := range []struct {
		header string
		scheme string
		params map[string]string
		ok     bool
	}{
		{`X-Matrix origin="a.example",destination="b.example",key="ed25519:1",sig="c2ln"`, "X-Matrix",
			map[string]string{"origin": "a.example", "destination": "b.example", "key": "ed25519:1", "sig": "c2ln"}, true},
		// Case-insensitive names, unquoted tokens with colons, spaces and
		// tabs around commas, escapes in quoted strings, unknown params.
		{"X-Matrix  Origin=a.example:8448 ,\tKEY=\"ed25519:1\" , sig=\"a\\\"b\\\\c\", extra=1", "X-Matrix",
			map[string]string{"origin": "a.example:8448", "key": "ed25519:1", "sig": `a"b\c`, "extra": "1"}, true},
		{`Bearer abc`, "Bearer", nil, false},
		{`X-Matrix`, "X-Matrix", nil, true},
		{`X-Matrix origin="unterminated`, "X-Matrix", nil, false},
		{`X-Matrix origin`, "X-Matrix", nil, false},
		{`X-Matrix origin="a" key="b"`, "X-Matrix", nil, false},
	} {
		scheme, params, ok := parseAuthorization(c.header)
		if scheme != c.scheme || ok != c.ok || (c.params != nil && !reflect.DeepEqual(params, c.params)) {
			t.Errorf("parseAuthorization(%q) = %q, %v, %v; want %q, %v, %v", c.header, scheme, params, ok, c.scheme, c.params, c.ok)
		}
	}
}

// authEnv is an Authenticator for ours with one known remote server,
// serving a handler that echoes the origin and the body it got.
type authEnv struct {
	handler http.Handler
	fake    *fakeServers
	remote  *fakeServer
}

func newAuthEnv(t *testing.T) authEnv {
	db := sqltest.Open(t, config.SQLite)
	fake := newFakeServers()
	remote := fake.add(t, "remote.example", time.Hour)
	fake.add(t, "down.example", time.Hour).down = true
	ring, _ := newTestRing(t, db, fake)
	auth := &Authenticator{ServerName: ours, Keys: ring}
	r := mxhttp.NewRouter()
	r.Handle("/_matrix/federation/v1/version", mxhttp.JSON(func(*http.Request) (any, error) { return "open", nil }))
	fed := auth.Router(r)
	fed.Handle("/_matrix/federation/v1/echo", mxhttp.JSON(func(r *http.Request) (any, error) {
		body, _ := io.ReadAll(r.Body)
		return map[string]string{"origin": string(Origin(r.Context())), "body": string(body)}, nil
	}))
	return authEnv{handler: r, fake: fake, remote: remote}
}

// request signs method uri (with content, when not nil) as origin with key
// for destination, and returns the HTTP request as it arrives.
func signed(t *testing.T, origin spec.ServerName, key serverkey.Key, destination spec.ServerName, method, uri string, content any) *http.Request {
	t.Helper()
	fr := fclient.NewFederationRequest(method, origin, destination, uri)
	if content != nil {
		if err := fr.SetContent(content); err != nil {
			t.Fatal(err)
		}
	}
	if err := fr.Sign(origin, key.ID, key.Private); err != nil {
		t.Fatal(err)
	}
	hr, err := fr.HTTPRequest()
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest(method, uri, bytes.NewReader(fr.Content()))
	req.Header = hr.Header
	return req
}

func (e authEnv) serve(req *http.Request) (int, map[string]string) {
	w := httptest.NewRecorder()
	e.handler.ServeHTTP(w, req)
	var body map[string]string
	json.Unmarshal(w.Body.Bytes(), &body)
	return w.Code, body
}

func TestAuthAcceptsSignedRequests(t *testing.T) {
	e := newAuthEnv(t)
	key := e.remote.keys.Key
	content := map[string]any{"hello": "world", "n": 1}
	code, body := e.serve(signed(t, "remote.example", key, ours, "POST", "/_matrix/federation/v1/echo?x=1&y=%40a", content))
	if code != 200 || body["origin"] != "remote.example" {
		t.Fatalf("signed POST: %d %v", code, body)
	}
	var got map[string]any
	if json.Unmarshal([]byte(body["body"]), &got) != nil || got["hello"] != "world" {
		t.Fatalf("the handler did not get the body: %q", body["body"])
	}
	if code, body := e.serve(signed(t, "remote.example", key, ours, "GET", "/_matrix/federation/v1/echo", nil)); code != 200 || body["origin"] != "remote.example" {
		t.Fatalf("signed GET: %d %v", code, body)
	}
	// Older servers send no destination: we are the destination.
	req := signed(t, "remote.example", key, ours, "GET", "/_matrix/federation/v1/echo", nil)
	h := req.Header.Get("Authorization")
	req.Header.Set("Authorization", strings.Replace(h, `,destination="ours.example"`, "", 1))
	if strings.Contains(req.Header.Get("Authorization"), "destination") {
		t.Fatal("test setup: destination not removed")
	}
	if code, body := e.serve(req); code != 200 {
		t.Fatalf("without destination: %d %v", code, body)
	}
	// The header as another implementation may write it.
	req = signed(t, "remote.example", key, ours, "GET", "/_matrix/federation/v1/echo", nil)
	_, params, _ := parseAuthorization(req.Header.Get("Authorization"))
	req.Header.Set("Authorization", "x-matrix  ORIGIN=remote.example , Key=\""+params["key"]+"\",\tsig=\""+params["sig"]+"\"")
	if code, body := e.serve(req); code != 200 {
		t.Fatalf("loosely written header: %d %v", code, body)
	}
	// The version endpoint stays open.
	if code, _ := e.serve(httptest.NewRequest("GET", "/_matrix/federation/v1/version", nil)); code != 200 {
		t.Fatalf("version behind auth: %d", code)
	}
	// Unknown endpoints are 404 M_UNRECOGNIZED, with or without auth.
	if code, body := e.serve(httptest.NewRequest("GET", "/_matrix/federation/v1/nope", nil)); code != 404 || body["errcode"] != "M_UNRECOGNIZED" {
		t.Fatalf("unknown endpoint: %d %v", code, body)
	}
}

func TestAuthRejects(t *testing.T) {
	e := newAuthEnv(t)
	key := e.remote.keys.Key
	stranger, _ := serverkey.Generate()
	const uri = "/_matrix/federation/v1/echo"
	tamper := func(req *http.Request, fn func(*http.Request)) *http.Request { fn(req); return req }
	for _, c := range []struct {
		name string
		req  *http.Request
	}{
		{"no header", httptest.NewRequest("GET", uri, nil)},
		{"another scheme", tamper(httptest.NewRequest("GET", uri, nil), func(r *http.Request) { r.Header.Set("Authorization", "Bearer token") })},
		{"no sig", tamper(signed(t, "remote.example", key, ours, "GET", uri, nil), func(r *http.Request) {
			r.Header.Set("Authorization", `X-Matrix origin="remote.example",key="`+string(key.ID)+`"`)
		})},
		{"wrong destination", signed(t, "remote.example", key, "elsewhere.example", "GET", uri, nil)},
		{"signed by a key the origin does not publish", func() *http.Request {
			s := stranger
			s.ID = key.ID // same id, other key: a bad signature
			return signed(t, "remote.example", s, ours, "GET", uri, nil)
		}()},
		{"unknown key id", signed(t, "remote.example", stranger, ours, "GET", uri, nil)},
		{"origin unreachable", signed(t, "down.example", stranger, ours, "GET", uri, nil)},
		{"origin not a server name", tamper(signed(t, "remote.example", key, ours, "GET", uri, nil), func(r *http.Request) {
			r.Header.Set("Authorization", strings.Replace(r.Header.Get("Authorization"), `origin="remote.example"`, `origin="bad name"`, 1))
		})},
		{"other uri", tamper(signed(t, "remote.example", key, ours, "GET", uri, nil), func(r *http.Request) {
			signed := r.Header
			*r = *httptest.NewRequest("GET", uri+"?admin=true", nil)
			r.Header = signed
		})},
		{"other method", tamper(signed(t, "remote.example", key, ours, "GET", uri, nil), func(r *http.Request) { r.Method = "DELETE" })},
		{"other body", tamper(signed(t, "remote.example", key, ours, "PUT", uri, map[string]int{"amount": 1}), func(r *http.Request) {
			r.Body = io.NopCloser(strings.NewReader(`{"amount":1000}`))
		})},
		{"two origins", tamper(signed(t, "remote.example", key, ours, "GET", uri, nil), func(r *http.Request) {
			r.Header.Add("Authorization", `X-Matrix origin="down.example",key="ed25519:1",sig="AAAA"`)
		})},
	} {
		code, body := e.serve(c.req)
		if code != http.StatusUnauthorized || body["errcode"] != "M_UNAUTHORIZED" {
			t.Errorf("%s: %d %v, want 401 M_UNAUTHORIZED", c.name, code, body)
		}
	}
	// A body that is not JSON is the sender's mistake, not a failed
	// signature.
	req := signed(t, "remote.example", key, ours, "PUT", uri, nil)
	req.Body = io.NopCloser(strings.NewReader("{not json"))
	if code, body := e.serve(req); code != 400 || body["errcode"] != "M_NOT_JSON" {
		t.Errorf("non-JSON body: %d %v", code, body)
	}
}

// FuzzParseAuthorization: any header parses without panicking, and the
// parameters of a header we write come back unchanged.
func FuzzParseAuthorization(f *testing.F) {
	f.Add(`X-Matrix origin="a.example",destination="b.example",key="ed25519:1",sig="c2ln"`, "a.example:8448", "c2ln+/")
	f.Add("X-Matrix  Origin=a:1 ,\tKEY=\"k\\\"\"", "x", "y")
	f.Fuzz(func(t *testing.T, header, origin, sig string) {
		parseAuthorization(header)
		if strings.ContainsAny(origin+sig, "\"\\\x00\r\n") {
			return
		}
		_, params, ok := parseAuthorization(`X-Matrix origin="` + origin + `",key="ed25519:1",sig="` + sig + `"`)
		if !ok || params["origin"] != origin || params["sig"] != sig {
			t.Fatalf("round trip of origin %q sig %q: %v %v", origin, sig, params, ok)
		}
	})
}
