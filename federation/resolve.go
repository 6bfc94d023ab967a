package federation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"
)

// Well-known caching (spec: "Resolving server names", step 3, and Synapse's
// values where the spec only recommends).
const (
	wellKnownDefaultTTL = 24 * time.Hour
	wellKnownMaxTTL     = 48 * time.Hour
	wellKnownMinTTL     = 5 * time.Minute
	// An invalid answer (404, bad JSON, no m.server) is a server that
	// does not delegate: most servers, so remember it for long.
	wellKnownInvalidTTL = time.Hour
	// A network failure is retried sooner, backing off exponentially up
	// to wellKnownInvalidTTL.
	wellKnownDownTTL = 2 * time.Minute
	// wellKnownMaxBytes bounds the body read (as gomatrixserverlib does).
	wellKnownMaxBytes = 50 * 1024
	wellKnownTimeout  = 10 * time.Second
	// targetsTTL bounds how long a resolution through well-known or SRV is
	// reused without asking DNS again.
	targetsTTL = 10 * time.Minute
)

// target is one place to send a request for a server name: where to
// connect, the Host header, and the name the certificate must carry (an IP
// literal for an IP: then no SNI is sent, as the spec's TLS section asks).
type target struct {
	Addr    string
	Host    string
	TLSName string
}

// wellKnownError is a well-known answer that is not a delegation (an HTTP
// error, bad JSON, a missing or bad m.server), as opposed to a network
// failure.
type wellKnownError struct{ why string }

func (e *wellKnownError) Error() string { return "no valid well-known: " + e.why }

// wellKnownFunc fetches https://host/.well-known/matrix/server: the
// delegated server name and how long the answer may be cached (0: no
// cache headers), or an error (a *wellKnownError for a non-delegating
// answer).
type wellKnownFunc func(ctx context.Context, host string) (delegated string, ttl time.Duration, err error)

// srvFunc is net.Resolver.LookupSRV.
type srvFunc func(ctx context.Context, service, proto, name string) (string, []*net.SRV, error)

// resolver implements the spec's server name resolution, with the
// well-known cache and back-off it recommends.
type resolver struct {
	wellKnown wellKnownFunc
	lookupSRV srvFunc
	now       func() time.Time
	// static maps server names to fixed addresses (static_hosts); read
	// only after construction.
	static map[string]string

	// mu guards the maps; no I/O happens while it is held.
	mu      sync.Mutex
	known   map[string]*wellKnownEntry
	targets map[spec.ServerName]targetsEntry
	flights flights[string, wellKnownEntry]
}

// wellKnownEntry is the cached outcome of a well-known lookup.
type wellKnownEntry struct {
	delegated string // "": no delegation
	expires   time.Time
	failures  int // network failures in a row
}

type targetsEntry struct {
	targets []target
	expires time.Time
}

func newResolver(wk wellKnownFunc, srv srvFunc) *resolver {
	return &resolver{wellKnown: wk, lookupSRV: srv, now: time.Now,
		known: make(map[string]*wellKnownEntry), targets: make(map[spec.ServerName]targetsEntry)}
}

// resolve returns where to send requests for serverName, in order of
// preference.
func (r *resolver) resolve(ctx context.Context, serverName spec.ServerName) ([]target, error) {
	host, port, ok := splitServerName(serverName)
	if !ok {
		return nil, fmt.Errorf("federation: invalid server name %q", serverName)
	}
	// An operator's fixed address replaces discovery, not the server's
	// identity: Host and the certificate name stay the server name's.
	if addr, ok := r.static[string(serverName)]; ok {
		tlsName := strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
		return []target{{Addr: addr, Host: string(serverName), TLSName: tlsName}}, nil
	}
	// Steps 1 and 2: an IP literal or an explicit port need no lookup.
	if t, ok := direct(host, port, string(serverName)); ok {
		return []target{t}, nil
	}
	now := r.now()
	r.mu.Lock()
	if e, ok := r.targets[serverName]; ok && now.Before(e.expires) {
		r.mu.Unlock()
		return e.targets, nil
	}
	r.mu.Unlock()

	wk := r.lookupWellKnown(ctx, host)
	var targets []target
	if wk.delegated != "" {
		// Step 3: the delegated name, resolved like a server name but
		// without a second well-known, its SRV records looked up for the
		// delegated host.
		dhost, dport, _ := splitServerName(spec.ServerName(wk.delegated))
		if t, ok := direct(dhost, dport, wk.delegated); ok {
			targets = []target{t}
		} else {
			targets = r.srvTargets(ctx, dhost)
		}
	} else {
		// Steps 4 to 6.
		targets = r.srvTargets(ctx, host)
	}
	expires := now.Add(targetsTTL)
	if wk.expires.Before(expires) {
		expires = wk.expires
	}
	r.mu.Lock()
	r.targets[serverName] = targetsEntry{targets: targets, expires: expires}
	r.mu.Unlock()
	return targets, nil
}

// forget drops the cached targets of serverName (not its well-known), after
// none of them answered.
func (r *resolver) forget(serverName spec.ServerName) {
	r.mu.Lock()
	delete(r.targets, serverName)
	r.mu.Unlock()
}

// direct resolves the two cases the server name settles alone: an IP
// literal (port or 8448), and a hostname with an explicit port. hostHeader
// is the name as given, port included.
func direct(host string, port int, hostHeader string) (target, bool) {
	if ip := strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"); net.ParseIP(ip) != nil {
		if port < 0 {
			port = 8448
		}
		return target{Addr: net.JoinHostPort(ip, strconv.Itoa(port)), Host: hostHeader, TLSName: ip}, true
	}
	if port >= 0 {
		return target{Addr: net.JoinHostPort(host, strconv.Itoa(port)), Host: hostHeader, TLSName: host}, true
	}
	return target{}, false
}

// srvTargets looks up _matrix-fed._tcp.host, then the deprecated
// _matrix._tcp.host, and falls back to host:8448. The certificate and Host
// header are always host's, never the SRV target's (spec note on step 4).
func (r *resolver) srvTargets(ctx context.Context, host string) []target {
	for _, service := range []string{"matrix-fed", "matrix"} {
		_, records, err := r.lookupSRV(ctx, service, "tcp", host)
		if err != nil {
			continue
		}
		var out []target
		for _, rec := range records {
			name := strings.TrimSuffix(rec.Target, ".")
			if name == "" {
				continue // "." means: no such service here (RFC 2782)
			}
			out = append(out, target{Addr: net.JoinHostPort(name, strconv.Itoa(int(rec.Port))), Host: host, TLSName: host})
		}
		if len(out) > 0 {
			return out
		}
	}
	return []target{{Addr: net.JoinHostPort(host, "8448"), Host: host, TLSName: host}}
}

// lookupWellKnown returns the cached well-known outcome of host, fetching
// it (once, however many callers ask at the same time) when missing or
// expired.
func (r *resolver) lookupWellKnown(ctx context.Context, host string) wellKnownEntry {
	now := r.now()
	r.mu.Lock()
	if e, ok := r.known[host]; ok && now.Before(e.expires) {
		entry := *e
		r.mu.Unlock()
		return entry
	}
	r.mu.Unlock()
	entry, _ := r.flights.do(host, func() (wellKnownEntry, error) {
		// The fetch outlives one caller's cancellation: the others wait on it.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), wellKnownTimeout)
		defer cancel()
		delegated, ttl, err := r.wellKnown(fctx, host)
		now := r.now()
		r.mu.Lock()
		defer r.mu.Unlock()
		prev := r.known[host]
		var e wellKnownEntry
		var invalid *wellKnownError
		switch {
		case err == nil:
			if ttl == 0 {
				ttl = wellKnownDefaultTTL
			}
			e = wellKnownEntry{delegated: delegated, expires: now.Add(min(max(ttl, wellKnownMinTTL), wellKnownMaxTTL))}
		case errors.As(err, &invalid):
			e = wellKnownEntry{expires: now.Add(wellKnownInvalidTTL)}
		default:
			// Unreachable: back off, and keep a delegation we knew, so that
			// a blip at the delegating host does not reroute its traffic.
			e.failures = 1
			if prev != nil {
				e.delegated, e.failures = prev.delegated, prev.failures+1
			}
			e.expires = now.Add(min(wellKnownDownTTL<<min(e.failures-1, 10), wellKnownInvalidTTL))
		}
		r.known[host] = &e
		return e, nil
	})
	return entry
}

// fetchWellKnown fetches url (https://host/.well-known/matrix/server) with
// client and parses the answer.
func fetchWellKnown(ctx context.Context, client *http.Client, url string) (string, time.Duration, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", 0, &wellKnownError{why: err.Error()}
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", 0, &wellKnownError{why: "HTTP " + strconv.Itoa(resp.StatusCode)}
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, wellKnownMaxBytes+1))
	if err != nil {
		return "", 0, err
	}
	if len(body) > wellKnownMaxBytes {
		return "", 0, &wellKnownError{why: "body too large"}
	}
	var doc struct {
		Server *string `json:"m.server"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return "", 0, &wellKnownError{why: "not a JSON object"}
	}
	if doc.Server == nil {
		return "", 0, &wellKnownError{why: "no m.server"}
	}
	if _, _, ok := splitServerName(spec.ServerName(*doc.Server)); !ok {
		return "", 0, &wellKnownError{why: fmt.Sprintf("m.server %q is not a server name", *doc.Server)}
	}
	return *doc.Server, cacheTTL(resp.Header, time.Now()), nil
}

// cacheTTL reads how long a response may be cached: Cache-Control max-age
// (which wins, RFC 9111) or Expires; 0 when neither says. no-store and
// no-cache give the minimum.
func cacheTTL(h http.Header, now time.Time) time.Duration {
	for _, directive := range strings.Split(h.Get("Cache-Control"), ",") {
		name, value, _ := strings.Cut(strings.TrimSpace(directive), "=")
		switch strings.ToLower(name) {
		case "max-age":
			if secs, err := strconv.ParseInt(strings.Trim(value, `"`), 10, 64); err == nil && secs >= 0 {
				return max(time.Duration(min(secs, int64(wellKnownMaxTTL/time.Second)))*time.Second, time.Nanosecond)
			}
		case "no-store", "no-cache":
			return time.Nanosecond
		}
	}
	if exp := h.Get("Expires"); exp != "" {
		if t, err := http.ParseTime(exp); err == nil {
			return max(t.Sub(now), time.Nanosecond)
		}
	}
	return 0
}

// splitServerName checks a server name against the spec's grammar and
// splits off its port (-1 when none).
func splitServerName(name spec.ServerName) (host string, port int, ok bool) {
	return spec.ParseAndValidateServerName(name)
}

// flights runs one call per key at a time; callers asking for a key already
// in flight wait for its result instead of starting another.
type flights[K comparable, V any] struct {
	mu sync.Mutex
	m  map[K]*flight[V]
}

type flight[V any] struct {
	done chan struct{}
	val  V
	err  error
}

func (f *flights[K, V]) do(key K, fn func() (V, error)) (V, error) {
	f.mu.Lock()
	if f.m == nil {
		f.m = make(map[K]*flight[V])
	}
	if c, ok := f.m[key]; ok {
		f.mu.Unlock()
		<-c.done
		return c.val, c.err
	}
	c := &flight[V]{done: make(chan struct{})}
	f.m[key] = c
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.m, key)
		f.mu.Unlock()
		close(c.done)
	}()
	c.val, c.err = fn()
	return c.val, c.err
}
