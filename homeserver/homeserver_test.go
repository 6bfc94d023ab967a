package homeserver

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/sql/sqltest"
)

// syncBuffer collects the server log; the listeners write from their own
// goroutines.
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

// testConfig is a valid configuration on free loopback ports with its data
// in a temporary directory and a fresh database on engine.
func testConfig(t *testing.T, engine config.Engine, mutate func(*config.Config)) config.Config {
	t.Helper()
	cfg := config.Defaults()
	cfg.DataDir = t.TempDir()
	cfg.Client.Listen = "127.0.0.1:0"
	cfg.Federation.Listen = "127.0.0.1:0"
	cfg.Database.URL = sqltest.URL(t, engine)
	cfg.Database.MaxOpenConns = 4
	if mutate != nil {
		mutate(&cfg)
	}
	cfg, err := config.Load(cfg, "", nil)
	if err != nil {
		t.Fatalf("test config: %v", err)
	}
	return cfg
}

// newServer builds a server (not started) that is shut down when the test
// ends; on failure the test prints its log.
func newServer(t *testing.T, cfg config.Config) *Server {
	t.Helper()
	logs := &syncBuffer{}
	s, err := New(context.Background(), cfg, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Shutdown(context.Background()); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if t.Failed() {
			t.Logf("server log:\n%s", logs.String())
		}
	})
	return s
}

func startServer(t *testing.T, cfg config.Config) *Server {
	t.Helper()
	s := newServer(t, cfg)
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	return s
}

// federationClient trusts only the self-signed certificate in dataDir and
// checks that it names host.
func federationClient(t *testing.T, dataDir, host string) *http.Client {
	t.Helper()
	pemBytes, err := os.ReadFile(filepath.Join(dataDir, "federation.crt"))
	if err != nil {
		t.Fatalf("self-signed certificate: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		t.Fatal("federation.crt holds no certificate")
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: host}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func plainClient(t *testing.T) *http.Client {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func get(t *testing.T, c *http.Client, url string) (int, http.Header, []byte) {
	t.Helper()
	res, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res.StatusCode, res.Header, body
}

func getJSON(t *testing.T, c *http.Client, url string, wantStatus int) map[string]any {
	t.Helper()
	status, header, body := get(t, c, url)
	if status != wantStatus {
		t.Fatalf("GET %s: %d %s, want %d", url, status, body, wantStatus)
	}
	if ct := header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("GET %s: Content-Type %q", url, ct)
	}
	var v map[string]any
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("GET %s: %s is not a JSON object", url, body)
	}
	return v
}

// fetchKey fetches and verifies the key document; it returns the key id
// and the public key.
func fetchKey(t *testing.T, c *http.Client, fedAddr, serverName string) (gomatrixserverlib.KeyID, spec.Base64Bytes) {
	t.Helper()
	status, _, body := get(t, c, "https://"+fedAddr+"/_matrix/key/v2/server")
	if status != 200 {
		t.Fatalf("key server: %d %s", status, body)
	}
	var keys gomatrixserverlib.ServerKeys
	if err := json.Unmarshal(body, &keys); err != nil {
		t.Fatal(err)
	}
	if string(keys.ServerName) != serverName || len(keys.VerifyKeys) != 1 {
		t.Fatalf("key document: %s", body)
	}
	if !keys.ValidUntilTS.Time().After(time.Now()) {
		t.Errorf("valid_until_ts %d is not in the future", keys.ValidUntilTS)
	}
	for id, k := range keys.VerifyKeys {
		if err := gomatrixserverlib.VerifyJSON(serverName, id, []byte(k.Key), body); err != nil {
			t.Fatalf("key document does not verify: %v", err)
		}
		return id, k.Key
	}
	panic("unreachable")
}

func TestServe(t *testing.T) {
	for _, engine := range sqltest.Engines() {
		t.Run(string(engine), func(t *testing.T) {
			cfg := testConfig(t, engine, nil)
			s := startServer(t, cfg)
			client, fedAddr := s.Addr("client"), s.Addr("federation")
			if client == "" || fedAddr == "" || strings.HasSuffix(client, ":0") {
				t.Fatalf("addresses: client %q federation %q", client, fedAddr)
			}
			if s.Addr("metrics") != "" {
				t.Error("a metrics listener without metrics.listen")
			}
			c := plainClient(t)
			fc := federationClient(t, cfg.DataDir, "localhost")

			v := getJSON(t, c, "http://"+client+"/_matrix/client/versions", 200)
			// matrix-js-sdk (Element Web) refuses a server without v1.1.
			if vs, ok := v["versions"].([]any); !ok || !slices.Contains(vs, any("v1.1")) {
				t.Errorf("/versions lists no v1.1: %v", v)
			}
			if _, ok := v["unstable_features"].(map[string]any); !ok {
				t.Errorf("/versions has no unstable_features object: %v", v)
			}
			for _, base := range []string{"http://" + client, "https://" + fedAddr} {
				hc := c
				if strings.HasPrefix(base, "https") {
					hc = fc
				}
				if status, _, body := get(t, hc, base+"/health"); status != 200 || string(body) != "OK" {
					t.Errorf("%s/health: %d %s", base, status, body)
				}
			}
			e := getJSON(t, c, "http://"+client+"/_matrix/client/v3/nonsense", 404)
			if e["errcode"] != "M_UNRECOGNIZED" {
				t.Errorf("unknown path: %v", e)
			}

			// Federation: over TLS, with a certificate naming the server.
			fv := getJSON(t, fc, "https://"+fedAddr+"/_matrix/federation/v1/version", 200)
			if server, _ := fv["server"].(map[string]any); server["name"] != "Weft" || server["version"] == "" {
				t.Errorf("federation version: %v", fv)
			}
			// The federation listener speaks only TLS: plain HTTP gets
			// net/http's 400 or a closed connection, never the API.
			if res, err := c.Get("http://" + fedAddr + "/_matrix/federation/v1/version"); err == nil {
				res.Body.Close()
				if res.StatusCode == 200 {
					t.Error("the federation listener answered plain HTTP")
				}
			}
			keyID, pub := fetchKey(t, fc, fedAddr, "localhost")

			// Discovery is off until configured.
			for _, path := range []string{"/.well-known/matrix/client", "/.well-known/matrix/server"} {
				if e := getJSON(t, c, "http://"+client+path, 404); e["errcode"] != "M_NOT_FOUND" {
					t.Errorf("%s unset: %v, want M_NOT_FOUND", path, e)
				}
			}
			if e := getJSON(t, fc, "https://"+fedAddr+"/.well-known/matrix/server", 404); e["errcode"] != "M_NOT_FOUND" {
				t.Errorf("federation /.well-known/matrix/server unset: %v", e)
			}

			// A stop and a second start on the same data keep the key and
			// the certificate.
			if err := s.Shutdown(context.Background()); err != nil {
				t.Fatalf("Shutdown: %v", err)
			}
			if err := s.Shutdown(context.Background()); err != nil {
				t.Fatalf("second Shutdown: %v", err)
			}
			certBefore, _ := os.ReadFile(filepath.Join(cfg.DataDir, "federation.crt"))
			s2 := startServer(t, cfg)
			fc2 := federationClient(t, cfg.DataDir, "localhost")
			keyID2, pub2 := fetchKey(t, fc2, s2.Addr("federation"), "localhost")
			if keyID2 != keyID || !bytes.Equal(pub2, pub) {
				t.Errorf("restart changed the key: %s %s -> %s %s", keyID, pub.Encode(), keyID2, pub2.Encode())
			}
			certAfter, _ := os.ReadFile(filepath.Join(cfg.DataDir, "federation.crt"))
			if !bytes.Equal(certBefore, certAfter) {
				t.Error("restart made a new certificate")
			}
			getJSON(t, plainClient(t), "http://"+s2.Addr("client")+"/_matrix/client/versions", 200)
		})
	}
}

func TestWellKnownAndMetrics(t *testing.T) {
	cfg := testConfig(t, config.SQLite, func(c *config.Config) {
		c.Client.PublicBaseURL = "https://matrix.example.org"
		c.Federation.WellKnownServer = "matrix.example.org:443"
		c.Metrics.Listen = "127.0.0.1:0"
		c.ServerName = "example.org"
	})
	s := startServer(t, cfg)
	c := plainClient(t)
	client := "http://" + s.Addr("client")

	wk := getJSON(t, c, client+"/.well-known/matrix/client", 200)
	if hs, _ := wk["m.homeserver"].(map[string]any); hs["base_url"] != "https://matrix.example.org" {
		t.Errorf("/.well-known/matrix/client = %v", wk)
	}
	ws := getJSON(t, c, client+"/.well-known/matrix/server", 200)
	if ws["m.server"] != "matrix.example.org:443" {
		t.Errorf("/.well-known/matrix/server = %v", ws)
	}
	fc := federationClient(t, cfg.DataDir, "example.org")
	fetchKey(t, fc, s.Addr("federation"), "example.org")

	for range 3 {
		getJSON(t, c, client+"/_matrix/client/versions", 200)
	}
	metrics := s.Addr("metrics")
	if metrics == "" {
		t.Fatal("no metrics listener")
	}
	status, _, body := get(t, c, "http://"+metrics+"/metrics")
	if status != 200 {
		t.Fatalf("/metrics: %d", status)
	}
	text := string(body)
	if !strings.Contains(text, "\ngo_goroutines ") {
		t.Error("/metrics lacks go_goroutines")
	}
	var found bool
	for line := range strings.SplitSeq(text, "\n") {
		if strings.HasPrefix(line, "weft_http_requests_total{") &&
			strings.Contains(line, `listener="client"`) &&
			strings.Contains(line, `route="/_matrix/client/versions"`) &&
			strings.Contains(line, `method="GET"`) {
			found = true
			if !strings.HasSuffix(line, " 3") {
				t.Errorf("want 3 requests counted: %s", line)
			}
		}
	}
	if !found {
		t.Errorf("/metrics lacks weft_http_requests_total for the /versions route:\n%s", text)
	}
	if !strings.Contains(text, `listener="federation"`) {
		t.Error("/metrics lacks the federation listener's requests")
	}
	if !strings.Contains(text, "weft_http_request_duration_seconds_bucket{") {
		t.Error("/metrics lacks the latency histogram")
	}
}

func dialRefused(addr string) bool {
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return true
	}
	conn.Close()
	return false
}

// slowRoute wraps the client listener's handler so that /slow blocks until
// release is closed.
func slowRoute(t *testing.T, s *Server) (started, release chan struct{}) {
	t.Helper()
	started, release = make(chan struct{}), make(chan struct{})
	for _, l := range s.servers {
		if l.name != "client" {
			continue
		}
		inner := l.srv.Handler
		var once sync.Once
		l.srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/slow" {
				inner.ServeHTTP(w, r)
				return
			}
			once.Do(func() { close(started) })
			select {
			case <-release:
			case <-time.After(30 * time.Second):
			}
			w.WriteHeader(http.StatusOK)
			_, _ = io.WriteString(w, "done")
		})
		return started, release
	}
	t.Fatal("no client listener")
	return nil, nil
}

type result struct {
	status int
	body   string
	err    error
}

func slowRequest(c *http.Client, url string) chan result {
	ch := make(chan result, 1)
	go func() {
		res, err := c.Get(url)
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer res.Body.Close()
		body, err := io.ReadAll(res.Body)
		ch <- result{status: res.StatusCode, body: string(body), err: err}
	}()
	return ch
}

func TestGracefulShutdown(t *testing.T) {
	cfg := testConfig(t, config.SQLite, nil)
	s := newServer(t, cfg)
	started, release := slowRoute(t, s)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	client, fed := s.Addr("client"), s.Addr("federation")
	c := plainClient(t)
	getJSON(t, c, "http://"+client+"/_matrix/client/versions", 200)

	res := slowRequest(c, "http://"+client+"/slow")
	select {
	case <-started:
	case r := <-res:
		t.Fatalf("slow request ended early: %+v", r)
	case <-time.After(20 * time.Second):
		t.Fatal("slow request never reached the handler")
	}

	shutdownDone := make(chan error, 1)
	go func() { shutdownDone <- s.Shutdown(context.Background()) }()

	// Shutdown closes the listeners first: new connections are refused
	// while the request is still in flight.
	deadline := time.Now().Add(20 * time.Second)
	for !dialRefused(client) {
		if time.Now().After(deadline) {
			t.Fatal("the client listener still accepts connections during Shutdown")
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case err := <-shutdownDone:
		t.Fatalf("Shutdown returned (%v) while a request was in flight", err)
	case r := <-res:
		t.Fatalf("the in-flight request ended before it was released: %+v", r)
	default:
	}

	close(release)
	select {
	case r := <-res:
		if r.err != nil || r.status != 200 || r.body != "done" {
			t.Fatalf("in-flight request: %+v, want 200 done", r)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("in-flight request never completed")
	}
	select {
	case err := <-shutdownDone:
		if err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Shutdown did not return after the last request")
	}
	for _, addr := range []string{client, fed} {
		if !dialRefused(addr) {
			t.Errorf("%s accepts connections after Shutdown", addr)
		}
	}
	if _, err := plainClient(t).Get("http://" + client + "/_matrix/client/versions"); err == nil {
		t.Error("a request succeeded after Shutdown")
	}
}

// TestShutdownGrace: a request that outlives shutdown_grace is cut off and
// Shutdown returns without waiting for it.
func TestShutdownGrace(t *testing.T) {
	cfg := testConfig(t, config.SQLite, func(c *config.Config) { c.ShutdownGrace = 200 * time.Millisecond })
	s := newServer(t, cfg)
	started, release := slowRoute(t, s)
	defer close(release)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	res := slowRequest(plainClient(t), "http://"+s.Addr("client")+"/slow")
	<-started
	shutdownDone := make(chan error, 1)
	go func() { shutdownDone <- s.Shutdown(context.Background()) }()
	select {
	case <-shutdownDone:
	case <-time.After(20 * time.Second):
		t.Fatal("Shutdown waited for a request past the grace period")
	}
	select {
	case r := <-res:
		if r.err == nil && r.status == 200 {
			t.Fatalf("the request outliving the grace was answered: %+v", r)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the cut-off request's connection was not closed")
	}
}

func TestStartFailsWhenAPortIsTaken(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	cfg := testConfig(t, config.SQLite, func(c *config.Config) { c.Federation.Listen = taken.Addr().String() })
	s := newServer(t, cfg)
	err = s.Start()
	if err == nil || !strings.Contains(err.Error(), "federation") {
		t.Fatalf("Start on a taken port: %v, want an error naming the federation listener", err)
	}
	if s.Addr("client") != "" || s.Addr("federation") != "" {
		t.Errorf("listeners left bound after a failed Start: client %q federation %q", s.Addr("client"), s.Addr("federation"))
	}
}

func TestNewRejectsABadSigningKey(t *testing.T) {
	for name, setup := range map[string]func(path string) error{
		"garbage":   func(p string) error { return os.WriteFile(p, []byte("this is not a key\n"), 0o600) },
		"directory": func(p string) error { return os.Mkdir(p, 0o700) },
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "signing.key")
			if err := setup(path); err != nil {
				t.Fatal(err)
			}
			cfg := testConfig(t, config.SQLite, func(c *config.Config) { c.SigningKeyPath = path })
			s, err := New(context.Background(), cfg, slog.New(slog.DiscardHandler))
			if err == nil {
				s.Shutdown(context.Background())
				t.Fatal("New accepted an unusable signing key")
			}
			if !strings.HasPrefix(err.Error(), "signing_key_path") || strings.Contains(err.Error(), "\n") {
				t.Fatalf("error %q, want one line starting with signing_key_path", err)
			}
		})
	}
}

func TestHostOf(t *testing.T) {
	for in, want := range map[string]string{
		"localhost":        "localhost",
		"example.org:8448": "example.org",
		"1.2.3.4":          "1.2.3.4",
		"1.2.3.4:8448":     "1.2.3.4",
		"[::1]:8448":       "::1",
		"[::1]":            "::1",
	} {
		if got := hostOf(in); got != want {
			t.Errorf("hostOf(%q) = %q, want %q", in, got, want)
		}
	}
}
