package mxhttp_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/mux"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/weft-chat/weft/internal/mxhttp"
)

const maxBody = 64

// syncBuffer is a log sink safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type fixture struct {
	srv     *httptest.Server
	log     *syncBuffer
	reg     *prometheus.Registry
	echoRan atomic.Int32
}

type echoBody struct {
	Name  string `json:"name"`
	Count int    `json:"count"`
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{log: &syncBuffer{}, reg: prometheus.NewRegistry()}
	r := mxhttp.NewRouter()
	r.Handle("/echo", mxhttp.Handler(func(w http.ResponseWriter, r *http.Request) error {
		f.echoRan.Add(1)
		var b echoBody
		if err := mxhttp.ReadJSON(r, &b); err != nil {
			return err
		}
		return mxhttp.WriteJSON(w, http.StatusOK, b)
	})).Methods(http.MethodPost, http.MethodPut)
	r.Handle("/rooms/{roomId}/send", mxhttp.JSON(func(r *http.Request) (any, error) {
		return map[string]string{"room": mux.Vars(r)["roomId"]}, nil
	})).Methods(http.MethodGet)
	r.Handle("/panic", mxhttp.Handler(func(http.ResponseWriter, *http.Request) error {
		panic("handler blew up")
	})).Methods(http.MethodGet)
	r.Handle("/plain-error", mxhttp.Handler(func(http.ResponseWriter, *http.Request) error {
		return errors.New("secret database detail")
	})).Methods(http.MethodGet)
	r.Handle("/wrapped", mxhttp.Handler(func(http.ResponseWriter, *http.Request) error {
		return fmt.Errorf("load room: %w", mxhttp.NotFound("No such room"))
	})).Methods(http.MethodGet)
	r.Handle("/limited", mxhttp.Handler(func(http.ResponseWriter, *http.Request) error {
		return mxhttp.LimitExceeded(1500 * time.Millisecond)
	})).Methods(http.MethodGet)
	r.Handle("/soft-logout", mxhttp.Handler(func(http.ResponseWriter, *http.Request) error {
		return mxhttp.UnknownToken(true)
	})).Methods(http.MethodGet)
	r.Handle("/hard-logout", mxhttp.Handler(func(http.ResponseWriter, *http.Request) error {
		return mxhttp.UnknownToken(false)
	})).Methods(http.MethodGet)
	stack := mxhttp.Stack{
		Log:          slog.New(slog.NewTextHandler(f.log, nil)),
		Metrics:      mxhttp.NewMetrics(f.reg, "test"),
		MaxBodyBytes: maxBody,
	}
	f.srv = httptest.NewServer(stack.Wrap(r))
	t.Cleanup(f.srv.Close)
	return f
}

type response struct {
	status int
	header http.Header
	body   map[string]any
	raw    string
}

func (f *fixture) do(t *testing.T, method, path string, body io.Reader, contentLength int64) response {
	t.Helper()
	req, err := http.NewRequest(method, f.srv.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if contentLength != 0 {
		req.ContentLength = contentLength
	}
	res, err := f.srv.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	r := response{status: res.StatusCode, header: res.Header, raw: string(raw)}
	if len(raw) > 0 && strings.HasPrefix(res.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(raw, &r.body); err != nil {
			t.Fatalf("%s %s: body %q is not a JSON object: %v", method, path, raw, err)
		}
	}
	return r
}

func (r response) wantError(t *testing.T, status int, code string) {
	t.Helper()
	if r.status != status || r.body["errcode"] != code {
		t.Fatalf("got %d %s, want %d %s", r.status, r.raw, status, code)
	}
	if msg, _ := r.body["error"].(string); msg == "" {
		t.Errorf("error response %s has no error message", r.raw)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
}

var corsHeaders = map[string]string{
	"Access-Control-Allow-Origin":  "*",
	"Access-Control-Allow-Methods": "GET, POST, PUT, DELETE, OPTIONS",
	"Access-Control-Allow-Headers": "X-Requested-With, Content-Type, Authorization",
}

func wantCORS(t *testing.T, h http.Header) {
	t.Helper()
	for k, v := range corsHeaders {
		if got := h.Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
}

func TestRouting(t *testing.T) {
	f := newFixture(t)
	t.Run("unknown path", func(t *testing.T) {
		r := f.do(t, "GET", "/_matrix/client/v3/nonsense", nil, 0)
		r.wantError(t, 404, "M_UNRECOGNIZED")
		wantCORS(t, r.header)
	})
	t.Run("wrong method", func(t *testing.T) {
		r := f.do(t, "DELETE", "/echo", nil, 0)
		r.wantError(t, 405, "M_UNRECOGNIZED")
		wantCORS(t, r.header)
	})
	t.Run("encoded ids are matched, not decoded or cleaned", func(t *testing.T) {
		// A room id may hold a '/' (encoded %2F); it must stay one segment.
		r := f.do(t, "GET", "/rooms/%21a%2Fb%3Aexample.org/send", nil, 0)
		if r.status != 200 || r.body["room"] != "%21a%2Fb%3Aexample.org" {
			t.Fatalf("got %d %s", r.status, r.raw)
		}
		wantCORS(t, r.header)
	})
	t.Run("ids in the default encoding match as the same ids", func(t *testing.T) {
		// Go clients encode '!' as %21; the router matches the path with
		// '!' as it stands, which a handler decodes to the same id.
		for path, want := range map[string]string{
			"/rooms/%21a%3Aexample.org/send":      "!a:example.org",
			"/rooms/!a:example.org/send":          "!a:example.org",
			"/rooms/%21a%20b%3Aexample.org/send":  "!a b:example.org",
			"/rooms/%21%C3%A9%3Aexample.org/send": "!é:example.org",
		} {
			r := f.do(t, "GET", path, nil, 0)
			room, _ := r.body["room"].(string)
			got, err := url.PathUnescape(room)
			if r.status != 200 || err != nil || got != want {
				t.Errorf("%s: got %d %s, want room %q", path, r.status, r.raw, want)
			}
		}
	})
}

// BenchmarkRouteDefaultEncoding routes a request whose path a Go client
// encoded (room id with %21) past 50 routes to its own.
func BenchmarkRouteDefaultEncoding(b *testing.B) {
	r := mxhttp.NewRouter()
	for i := range 50 {
		r.Handle(fmt.Sprintf("/other/{roomId}/route%d", i), http.NotFoundHandler()).Methods(http.MethodGet)
	}
	r.Handle("/rooms/{roomId}/send", http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})).Methods(http.MethodGet)
	h := mxhttp.Stack{Log: slog.New(slog.DiscardHandler), MaxBodyBytes: maxBody}.Wrap(r)
	w := httptest.NewRecorder()
	b.ReportAllocs()
	for b.Loop() {
		h.ServeHTTP(w, httptest.NewRequest("GET", "/rooms/%21abcdefgh%3Aexample.org/send", nil))
	}
}

func TestReadJSON(t *testing.T) {
	f := newFixture(t)
	cases := []struct {
		name, body string
		status     int
		code       string
	}{
		{"empty body", "", 400, "M_NOT_JSON"},
		{"blank body", "  \n ", 400, "M_NOT_JSON"},
		{"invalid JSON", `{"name":`, 400, "M_NOT_JSON"},
		{"two values", `{} {}`, 400, "M_NOT_JSON"},
		{"array", `[1,2]`, 400, "M_BAD_JSON"},
		{"string", `"hello"`, 400, "M_BAD_JSON"},
		{"null", `null`, 400, "M_BAD_JSON"},
		{"wrong field type", `{"count":"three"}`, 400, "M_BAD_JSON"},
		{"wrong nested type", `{"name":{"a":1}}`, 400, "M_BAD_JSON"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := f.do(t, "POST", "/echo", strings.NewReader(c.body), 0)
			r.wantError(t, c.status, c.code)
			wantCORS(t, r.header)
		})
	}
	t.Run("good object", func(t *testing.T) {
		r := f.do(t, "POST", "/echo", strings.NewReader(`{"name":"alice","count":3,"extra":true}`), 0)
		if r.status != 200 || r.body["name"] != "alice" || r.body["count"] != 3.0 {
			t.Fatalf("got %d %s", r.status, r.raw)
		}
	})
	t.Run("wrong field type names the field", func(t *testing.T) {
		r := f.do(t, "POST", "/echo", strings.NewReader(`{"count":"three"}`), 0)
		if !strings.Contains(r.body["error"].(string), "count") {
			t.Errorf("error %q does not name the field", r.body["error"])
		}
	})
}

// onlyReader hides the length of a body so the client sends it chunked.
type onlyReader struct{ io.Reader }

func TestBodyLimit(t *testing.T) {
	f := newFixture(t)
	exact := `{"name":"` + strings.Repeat("x", maxBody-len(`{"name":""}`)) + `"}`
	if len(exact) != maxBody {
		t.Fatal("bad fixture")
	}
	big := `{"name":"` + strings.Repeat("x", 4*maxBody) + `"}`

	t.Run("at the limit", func(t *testing.T) {
		r := f.do(t, "POST", "/echo", strings.NewReader(exact), 0)
		if r.status != 200 {
			t.Fatalf("a body of exactly the limit: got %d %s", r.status, r.raw)
		}
		r = f.do(t, "POST", "/echo", onlyReader{strings.NewReader(exact)}, 0)
		if r.status != 200 {
			t.Fatalf("a chunked body of exactly the limit: got %d %s", r.status, r.raw)
		}
	})
	t.Run("with Content-Length", func(t *testing.T) {
		before := f.echoRan.Load()
		r := f.do(t, "POST", "/echo", strings.NewReader(big), 0)
		r.wantError(t, 413, "M_TOO_LARGE")
		wantCORS(t, r.header)
		if f.echoRan.Load() != before {
			t.Error("the handler ran for a body whose Content-Length is over the limit")
		}
	})
	t.Run("one byte over", func(t *testing.T) {
		r := f.do(t, "POST", "/echo", strings.NewReader(exact+" "), 0)
		r.wantError(t, 413, "M_TOO_LARGE")
	})
	t.Run("chunked", func(t *testing.T) {
		r := f.do(t, "POST", "/echo", onlyReader{strings.NewReader(big)}, -1)
		r.wantError(t, 413, "M_TOO_LARGE")
		wantCORS(t, r.header)
	})
	// The server still answers afterwards.
	if r := f.do(t, "POST", "/echo", strings.NewReader(`{}`), 0); r.status != 200 {
		t.Fatalf("after oversized bodies: got %d %s", r.status, r.raw)
	}
}

func TestPanicAndInternalErrors(t *testing.T) {
	f := newFixture(t)
	r := f.do(t, "GET", "/panic", nil, 0)
	r.wantError(t, 500, "M_UNKNOWN")
	wantCORS(t, r.header)
	if log := f.log.String(); !strings.Contains(log, "panic in handler") || !strings.Contains(log, "handler blew up") {
		t.Errorf("no log line for the panic; log:\n%s", log)
	}
	// The server keeps serving, on new and reused connections.
	for range 3 {
		if r := f.do(t, "GET", "/rooms/x/send", nil, 0); r.status != 200 {
			t.Fatalf("after a panic: got %d %s", r.status, r.raw)
		}
	}

	// An error that is not an *Error is a 500 whose cause reaches the log
	// but not the client.
	r = f.do(t, "GET", "/plain-error", nil, 0)
	r.wantError(t, 500, "M_UNKNOWN")
	if strings.Contains(r.raw, "secret database detail") {
		t.Errorf("the cause leaked to the client: %s", r.raw)
	}
	if !strings.Contains(f.log.String(), "secret database detail") {
		t.Errorf("the cause is not logged; log:\n%s", f.log.String())
	}

	// A wrapped *Error keeps its status and code.
	f.do(t, "GET", "/wrapped", nil, 0).wantError(t, 404, "M_NOT_FOUND")
}

func TestErrorExtras(t *testing.T) {
	f := newFixture(t)
	r := f.do(t, "GET", "/limited", nil, 0)
	r.wantError(t, 429, "M_LIMIT_EXCEEDED")
	if r.body["retry_after_ms"] != 1500.0 {
		t.Errorf("retry_after_ms = %v, want 1500", r.body["retry_after_ms"])
	}
	if got := r.header.Get("Retry-After"); got != "2" {
		t.Errorf("Retry-After = %q, want 2 (seconds, rounded up)", got)
	}
	wantCORS(t, r.header)

	r = f.do(t, "GET", "/soft-logout", nil, 0)
	r.wantError(t, 401, "M_UNKNOWN_TOKEN")
	if r.body["soft_logout"] != true {
		t.Errorf("soft_logout = %v, want true", r.body["soft_logout"])
	}
	r = f.do(t, "GET", "/hard-logout", nil, 0)
	r.wantError(t, 401, "M_UNKNOWN_TOKEN")
	if v, ok := r.body["soft_logout"]; ok && v != false {
		t.Errorf("soft_logout = %v, want absent or false", v)
	}
	if r.header.Get("Retry-After") != "" {
		t.Error("Retry-After on a non-429 error")
	}
}

func TestErrorValues(t *testing.T) {
	base := mxhttp.Forbidden("no %s", "entry")
	withX := base.With("x", 1)
	if _, ok := base.Extra["x"]; ok {
		t.Error("With modified the original error")
	}
	if withX.Extra["x"] != 1 || withX.Code != "M_FORBIDDEN" || withX.Message != "no entry" || withX.Status != 403 {
		t.Errorf("With: %+v", withX)
	}
	cause := errors.New("disk on fire")
	in := mxhttp.Internal(cause)
	if !errors.Is(in, cause) {
		t.Error("Internal does not unwrap to its cause")
	}
	if !strings.Contains(in.Error(), "disk on fire") || !strings.Contains(in.Error(), "M_UNKNOWN") {
		t.Errorf("Error() = %q", in.Error())
	}
	for _, c := range []struct {
		err    *mxhttp.Error
		status int
		code   string
	}{
		{mxhttp.NotFound("x"), 404, "M_NOT_FOUND"},
		{mxhttp.BadJSON("x"), 400, "M_BAD_JSON"},
		{mxhttp.NotJSON("x"), 400, "M_NOT_JSON"},
		{mxhttp.InvalidParam("x"), 400, "M_INVALID_PARAM"},
		{mxhttp.MissingParam("x"), 400, "M_MISSING_PARAM"},
		{mxhttp.Unrecognized(), 404, "M_UNRECOGNIZED"},
		{mxhttp.MethodNotAllowed(), 405, "M_UNRECOGNIZED"},
		{mxhttp.TooLarge("x"), 413, "M_TOO_LARGE"},
		{mxhttp.MissingToken(), 401, "M_MISSING_TOKEN"},
		{mxhttp.UnknownToken(false), 401, "M_UNKNOWN_TOKEN"},
		{mxhttp.LimitExceeded(time.Second), 429, "M_LIMIT_EXCEEDED"},
	} {
		if c.err.Status != c.status || c.err.Code != c.code {
			t.Errorf("%v: want %d %s", c.err, c.status, c.code)
		}
	}
}

func TestPreflight(t *testing.T) {
	f := newFixture(t)
	for _, path := range []string{"/echo", "/_matrix/client/v3/unknown", "/panic"} {
		before := f.echoRan.Load()
		req, _ := http.NewRequest(http.MethodOptions, f.srv.URL+path, nil)
		req.Header.Set("Origin", "https://app.element.io")
		req.Header.Set("Access-Control-Request-Method", "POST")
		res, err := f.srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != 200 {
			t.Errorf("OPTIONS %s: status %d, want 200", path, res.StatusCode)
		}
		wantCORS(t, res.Header)
		if f.echoRan.Load() != before {
			t.Errorf("OPTIONS %s ran the handler", path)
		}
	}
	if strings.Contains(f.log.String(), "panic in handler") {
		t.Error("OPTIONS /panic ran the panicking handler")
	}
	// CORS also on successful responses.
	r := f.do(t, "POST", "/echo", strings.NewReader(`{}`), 0)
	wantCORS(t, r.header)
}

func TestMetrics(t *testing.T) {
	f := newFixture(t)
	for range 3 {
		f.do(t, "GET", "/rooms/%21one%3Aexample.org/send", nil, 0)
	}
	f.do(t, "GET", "/rooms/%21two%3Aexample.org/send", nil, 0)
	f.do(t, "GET", "/no/such/path", nil, 0)
	f.do(t, "POST", "/echo", strings.NewReader("nope"), 0)

	families, err := f.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	counts := make(map[string]float64) // "route method" -> count, summed over statuses
	var sawLatency bool
	for _, mf := range families {
		switch mf.GetName() {
		case "weft_http_requests_total":
			for _, m := range mf.GetMetric() {
				labels := make(map[string]string)
				for _, l := range m.GetLabel() {
					labels[l.GetName()] = l.GetValue()
				}
				if labels["listener"] != "test" {
					t.Errorf("listener label = %q, want test", labels["listener"])
				}
				if labels["status"] == "" {
					t.Errorf("no status label: %v", labels)
				}
				counts[labels["route"]+" "+labels["method"]] += m.GetCounter().GetValue()
			}
		case "weft_http_request_duration_seconds":
			sawLatency = len(mf.GetMetric()) > 0
		}
	}
	if got := counts["/rooms/{roomId}/send GET"]; got != 4 {
		t.Errorf("requests for route /rooms/{roomId}/send = %v, want 4; all: %v", got, counts)
	}
	if got := counts["/echo POST"]; got != 1 {
		t.Errorf("requests for route /echo = %v, want 1; all: %v", got, counts)
	}
	// Unmatched paths must not become label values (unbounded cardinality).
	for k := range counts {
		if strings.Contains(k, "%21") || strings.Contains(k, "/no/such/path") {
			t.Errorf("a raw path became a route label: %q", k)
		}
	}
	if !sawLatency {
		t.Error("weft_http_request_duration_seconds not exposed")
	}
}

func TestDecodeJSON(t *testing.T) {
	var v struct{ A int }
	cases := []struct {
		body string
		code string
	}{
		{"", "M_NOT_JSON"},
		{"{", "M_NOT_JSON"},
		{"[]", "M_BAD_JSON"},
		{`{"A":"x"}`, "M_BAD_JSON"},
		{`{"A":1}`, ""},
	}
	for _, c := range cases {
		err := mxhttp.DecodeJSON([]byte(c.body), &v)
		var me *mxhttp.Error
		switch {
		case c.code == "" && err != nil:
			t.Errorf("DecodeJSON(%q) = %v", c.body, err)
		case c.code != "" && (!errors.As(err, &me) || me.Code != c.code):
			t.Errorf("DecodeJSON(%q) = %v, want %s", c.body, err, c.code)
		}
	}
}

// A handler that writes nothing still gets a response, and one that writes
// its own status keeps it.
func TestHandlerStatus(t *testing.T) {
	r := mxhttp.NewRouter()
	r.Handle("/created", mxhttp.Handler(func(w http.ResponseWriter, _ *http.Request) error {
		return mxhttp.WriteJSON(w, http.StatusCreated, map[string]int{"n": 1})
	}))
	h := mxhttp.Stack{Log: slog.New(slog.DiscardHandler), MaxBodyBytes: 10}.Wrap(r)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/created", nil))
	if rec.Code != 201 || rec.Body.String() != `{"n":1}` {
		t.Fatalf("got %d %s", rec.Code, rec.Body)
	}
}
