package federation

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"
)

// fakeDNS answers the resolver's lookups from maps and counts them.
type fakeDNS struct {
	mu        sync.Mutex
	wellKnown map[string]func() (string, time.Duration, error)
	srv       map[string][]*net.SRV // "_service._tcp.name"
	wkCalls   map[string]int
}

func (f *fakeDNS) resolver() *resolver {
	return newResolver(func(_ context.Context, host string) (string, time.Duration, error) {
		f.mu.Lock()
		f.wkCalls[host]++
		fn := f.wellKnown[host]
		f.mu.Unlock()
		if fn == nil {
			return "", 0, &wellKnownError{why: "HTTP 404"}
		}
		return fn()
	}, func(_ context.Context, service, proto, name string) (string, []*net.SRV, error) {
		recs := f.srv["_"+service+"._"+proto+"."+name]
		if recs == nil {
			return "", nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
		}
		return "", recs, nil
	})
}

func TestResolveServerNames(t *testing.T) {
	dns := &fakeDNS{
		wellKnown: map[string]func() (string, time.Duration, error){
			"delegated-ip.example":   func() (string, time.Duration, error) { return "203.0.113.7", 0, nil },
			"delegated-ipp.example":  func() (string, time.Duration, error) { return "[2001:db8::7]:9000", 0, nil },
			"delegated-port.example": func() (string, time.Duration, error) { return "matrix.host.example:8443", 0, nil },
			"delegated-srv.example":  func() (string, time.Duration, error) { return "srv.host.example", 0, nil },
			"delegated-old.example":  func() (string, time.Duration, error) { return "old.host.example", 0, nil },
			"delegated-none.example": func() (string, time.Duration, error) { return "plain.host.example", 0, nil },
		},
		srv: map[string][]*net.SRV{
			"_matrix-fed._tcp.srv.host.example": {{Target: "a.srv.example.", Port: 1111}, {Target: "b.srv.example.", Port: 2222}},
			"_matrix._tcp.old.host.example":     {{Target: "legacy.example.", Port: 3333}},
			"_matrix-fed._tcp.fed.example":      {{Target: "fed-target.example.", Port: 4444}},
			"_matrix._tcp.fed.example":          {{Target: "ignored.example.", Port: 1}},
			"_matrix._tcp.legacy-srv.example":   {{Target: "legacy-target.example.", Port: 5555}},
			"_matrix-fed._tcp.dot.example":      {{Target: ".", Port: 0}},
		},
		wkCalls: map[string]int{},
	}
	r := dns.resolver()
	for _, c := range []struct {
		name string
		want []target
	}{
		// 1. IP literals: the port or 8448; the certificate is for the IP.
		{"1.2.3.4", []target{{"1.2.3.4:8448", "1.2.3.4", "1.2.3.4"}}},
		{"1.2.3.4:8449", []target{{"1.2.3.4:8449", "1.2.3.4:8449", "1.2.3.4"}}},
		{"[2001:db8::1]", []target{{"[2001:db8::1]:8448", "[2001:db8::1]", "2001:db8::1"}}},
		{"[2001:db8::1]:443", []target{{"[2001:db8::1]:443", "[2001:db8::1]:443", "2001:db8::1"}}},
		// 2. A hostname with a port: no well-known, no SRV.
		{"host.example:8008", []target{{"host.example:8008", "host.example:8008", "host.example"}}},
		// 3.1 delegated to an IP, with or without a port.
		{"delegated-ip.example", []target{{"203.0.113.7:8448", "203.0.113.7", "203.0.113.7"}}},
		{"delegated-ipp.example", []target{{"[2001:db8::7]:9000", "[2001:db8::7]:9000", "2001:db8::7"}}},
		// 3.2 delegated to a host with a port.
		{"delegated-port.example", []target{{"matrix.host.example:8443", "matrix.host.example:8443", "matrix.host.example"}}},
		// 3.3 the delegated host's _matrix-fed SRV; Host and certificate
		// are the delegated host's.
		{"delegated-srv.example", []target{
			{"a.srv.example:1111", "srv.host.example", "srv.host.example"},
			{"b.srv.example:2222", "srv.host.example", "srv.host.example"}}},
		// 3.4 its deprecated _matrix SRV.
		{"delegated-old.example", []target{{"legacy.example:3333", "old.host.example", "old.host.example"}}},
		// 3.5 no SRV: the delegated host on 8448.
		{"delegated-none.example", []target{{"plain.host.example:8448", "plain.host.example", "plain.host.example"}}},
		// 4. no well-known: _matrix-fed SRV of the server name, which wins
		// over _matrix.
		{"fed.example", []target{{"fed-target.example:4444", "fed.example", "fed.example"}}},
		// 5. the deprecated _matrix SRV.
		{"legacy-srv.example", []target{{"legacy-target.example:5555", "legacy-srv.example", "legacy-srv.example"}}},
		// 6. nothing: the name on 8448; an SRV of "." is no service.
		{"nothing.example", []target{{"nothing.example:8448", "nothing.example", "nothing.example"}}},
		{"dot.example", []target{{"dot.example:8448", "dot.example", "dot.example"}}},
	} {
		got, err := r.resolve(context.Background(), spec.ServerName(c.name))
		if err != nil {
			t.Errorf("resolve(%s): %v", c.name, err)
			continue
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("resolve(%s) =\n  %+v\nwant\n  %+v", c.name, got, c.want)
		}
	}
	// Names with a port or an IP never ask for a well-known.
	for _, n := range []string{"1.2.3.4", "host.example", "2001:db8::1"} {
		if dns.wkCalls[n] != 0 {
			t.Errorf("well-known fetched for %s", n)
		}
	}
	for _, bad := range []string{"", "bad name", "host:99999", "[::1"} {
		if _, err := r.resolve(context.Background(), spec.ServerName(bad)); err == nil {
			t.Errorf("resolve(%q) succeeded", bad)
		}
	}
}

func TestWellKnownCache(t *testing.T) {
	var answer atomic.Value
	type result struct {
		delegated string
		ttl       time.Duration
		err       error
	}
	answer.Store(result{"target.example:443", 0, nil})
	dns := &fakeDNS{wellKnown: map[string]func() (string, time.Duration, error){
		"example.org": func() (string, time.Duration, error) {
			r := answer.Load().(result)
			return r.delegated, r.ttl, r.err
		},
	}, wkCalls: map[string]int{}}
	r := dns.resolver()
	now := time.Unix(1_700_000_000, 0)
	r.now = func() time.Time { return now }
	calls := func() int { dns.mu.Lock(); defer dns.mu.Unlock(); return dns.wkCalls["example.org"] }
	resolveTo := func(want string) {
		t.Helper()
		got, err := r.resolve(context.Background(), "example.org")
		if err != nil || len(got) != 1 || got[0].Addr != want {
			t.Fatalf("resolve = %+v, %v; want %s", got, err, want)
		}
	}

	resolveTo("target.example:443")
	// Default cache: 24 hours.
	now = now.Add(23 * time.Hour)
	resolveTo("target.example:443")
	if calls() != 1 {
		t.Fatalf("%d well-known fetches within a day, want 1", calls())
	}
	now = now.Add(2 * time.Hour)
	answer.Store(result{"moved.example:443", 30 * 24 * time.Hour, nil})
	resolveTo("moved.example:443")
	if calls() != 2 {
		t.Fatalf("well-known not refetched after 24h (%d fetches)", calls())
	}
	// A month of max-age is capped at 48 hours.
	now = now.Add(47 * time.Hour)
	resolveTo("moved.example:443")
	now = now.Add(2 * time.Hour)
	resolveTo("moved.example:443")
	if calls() != 3 {
		t.Fatalf("max-age not capped at 48h (%d fetches)", calls())
	}

	// The host goes down: the last delegation stays in use while the
	// fetch backs off: 2 minutes, then 4, then 8 …
	answer.Store(result{"", 0, errors.New("connection refused")})
	now = now.Add(49 * time.Hour)
	resolveTo("moved.example:443")
	n := calls()
	for _, wait := range []time.Duration{2 * time.Minute, 4 * time.Minute, 8 * time.Minute} {
		now = now.Add(wait - time.Second)
		resolveTo("moved.example:443")
		if calls() != n {
			t.Fatalf("refetched before the %v back-off ended", wait)
		}
		now = now.Add(2 * time.Second)
		resolveTo("moved.example:443")
		if calls() != n+1 {
			t.Fatalf("not refetched after the %v back-off", wait)
		}
		n++
		now = now.Add(-time.Second)
	}

	// An invalid answer (404) means no delegation, remembered for an hour.
	answer.Store(result{"", 0, &wellKnownError{why: "HTTP 404"}})
	now = now.Add(time.Hour)
	resolveTo("example.org:8448")
	n = calls()
	now = now.Add(59 * time.Minute)
	resolveTo("example.org:8448")
	if calls() != n {
		t.Fatal("an invalid well-known was refetched within the hour")
	}
}

func TestWellKnownConcurrentLookupsShareOneFetch(t *testing.T) {
	release := make(chan struct{})
	dns := &fakeDNS{wellKnown: map[string]func() (string, time.Duration, error){
		"busy.example": func() (string, time.Duration, error) { <-release; return "", 0, &wellKnownError{why: "404"} },
	}, wkCalls: map[string]int{}}
	r := dns.resolver()
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() { r.resolve(context.Background(), "busy.example") })
	}
	time.Sleep(50 * time.Millisecond)
	close(release)
	wg.Wait()
	if dns.wkCalls["busy.example"] != 1 {
		t.Fatalf("10 concurrent lookups made %d fetches", dns.wkCalls["busy.example"])
	}
}

func TestFetchWellKnown(t *testing.T) {
	var handler atomic.Value
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		handler.Load().(http.HandlerFunc)(w, r)
	}))
	defer srv.Close()
	client := srv.Client()
	url := srv.URL + "/.well-known/matrix/server"
	serve := func(status int, headers map[string]string, body string) {
		handler.Store(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/redirect" {
				http.Redirect(w, r, "/.well-known/matrix/server", http.StatusFound)
				return
			}
			for k, v := range headers {
				w.Header().Set(k, v)
			}
			w.WriteHeader(status)
			w.Write([]byte(body))
		}))
	}
	ctx := context.Background()

	serve(200, nil, `{"m.server":"matrix.example.org:443"}`)
	if d, ttl, err := fetchWellKnown(ctx, client, url); err != nil || d != "matrix.example.org:443" || ttl != 0 {
		t.Fatalf("plain: %q %v %v", d, ttl, err)
	}
	// Redirects are followed.
	if d, _, err := fetchWellKnown(ctx, client, srv.URL+"/redirect"); err != nil || d != "matrix.example.org:443" {
		t.Fatalf("redirect: %q %v", d, err)
	}
	serve(200, map[string]string{"Cache-Control": "public, max-age=3600"}, `{"m.server":"a.example"}`)
	if _, ttl, err := fetchWellKnown(ctx, client, url); err != nil || ttl != time.Hour {
		t.Fatalf("max-age: %v %v", ttl, err)
	}
	serve(200, map[string]string{"Expires": time.Now().Add(2 * time.Hour).UTC().Format(http.TimeFormat)}, `{"m.server":"a.example"}`)
	if _, ttl, err := fetchWellKnown(ctx, client, url); err != nil || ttl < 119*time.Minute || ttl > 2*time.Hour {
		t.Fatalf("Expires: %v %v", ttl, err)
	}
	for _, c := range []struct {
		status int
		body   string
	}{
		{404, `{"errcode":"M_NOT_FOUND"}`},
		{500, `{"m.server":"a.example"}`},
		{200, `not json`},
		{200, `[]`},
		{200, `{}`},
		{200, `{"m.server":42}`},
		{200, `{"m.server":"bad name!"}`},
		{200, `{"m.server":"` + string(make([]byte, 60*1024)) + `"}`},
	} {
		serve(c.status, nil, c.body)
		_, _, err := fetchWellKnown(ctx, client, url)
		var invalid *wellKnownError
		if !errors.As(err, &invalid) {
			t.Errorf("HTTP %d %.40q: err = %v, want an invalid well-known", c.status, c.body, err)
		}
	}
	// A server that cannot be reached is a network failure, not "invalid".
	srv.Close()
	_, _, err := fetchWellKnown(ctx, client, url)
	var invalid *wellKnownError
	if err == nil || errors.As(err, &invalid) {
		t.Fatalf("unreachable: err = %v, want a network error", err)
	}
}

func TestCacheTTL(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	for _, c := range []struct {
		h    map[string]string
		want time.Duration
	}{
		{nil, 0},
		{map[string]string{"Cache-Control": "max-age=60"}, time.Minute},
		{map[string]string{"Cache-Control": "max-age=0"}, time.Nanosecond},
		{map[string]string{"Cache-Control": "no-store"}, time.Nanosecond},
		{map[string]string{"Cache-Control": "max-age=60", "Expires": now.Add(time.Hour).UTC().Format(http.TimeFormat)}, time.Minute},
		{map[string]string{"Expires": now.Add(time.Hour).UTC().Format(http.TimeFormat)}, time.Hour},
		{map[string]string{"Expires": "garbage"}, 0},
		{map[string]string{"Cache-Control": "max-age=abc"}, 0},
	} {
		h := http.Header{}
		for k, v := range c.h {
			h.Set(k, v)
		}
		if got := cacheTTL(h, now); got != c.want {
			t.Errorf("cacheTTL(%v) = %v, want %v", c.h, got, c.want)
		}
	}
}
