package bench_test

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/weft-chat/weft/bench"
	"github.com/weft-chat/weft/homeserver/hstest"
	"github.com/weft-chat/weft/userapi"
)

// TestScenarios runs every scenario with small counts against an
// in-process Weft on SQLite. The server runs in this process, so -pid is
// our own pid.
func TestScenarios(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server and loads it; skipped with -short")
	}
	srv := hstest.StartEngine(t, "sqlite")
	base := bench.Options{URL: srv.ClientURL, PID: os.Getpid(), Duration: 30 * time.Second}
	cases := []struct {
		scenario string
		opts     func(o *bench.Options)
		ops      int
		// delivers: the result counts deliveries, expected in all.
		delivers int
	}{
		{"register", func(o *bench.Options) { o.Users, o.Concurrency = 4, 2 }, 4, 0},
		{"register", func(o *bench.Options) { o.Users, o.SharedSecret = 3, "test-secret" }, 3, 0},
		{"send", func(o *bench.Options) { o.Messages, o.Senders, o.Concurrency = 12, 3, 4 }, 12, 0},
		{"fanout", func(o *bench.Options) { o.Users, o.Messages, o.Rate = 4, 6, 50 }, 6, 4 * 6},
		{"rooms", func(o *bench.Options) { o.Rooms, o.Messages, o.Concurrency = 3, 15, 4 }, 15, 15 * 3},
		// Fewer users than 3 × rooms: users share rooms.
		{"rooms", func(o *bench.Options) { o.Rooms, o.Users, o.Messages, o.Concurrency = 4, 5, 16, 4 }, 16, 16 * 3},
		{"initialsync", func(o *bench.Options) { o.Rooms, o.Events, o.Repeat = 3, 4, 2 }, 2, 0},
		{"idle", func(o *bench.Options) { o.Users, o.Connections, o.Concurrency = 3, 12, 4 }, 12, 0},
	}
	for _, c := range cases {
		o := base
		c.opts(&o)
		res, err := bench.Run(context.Background(), c.scenario, o)
		if err != nil {
			t.Fatalf("%s: %v", c.scenario, err)
		}
		var sum strings.Builder
		res.Summary(&sum)
		t.Logf("%s", sum.String())
		if res.Scenario != c.scenario || res.Ops != c.ops || res.Errors != 0 {
			t.Errorf("%s: scenario %q, %d ops, %d errors; want %d ops, no errors; notes %q", c.scenario, res.Scenario, res.Ops, res.Errors, c.ops, res.Notes)
		}
		if res.DurationS <= 0 || res.ThroughputPerS <= 0 {
			t.Errorf("%s: duration %v s, throughput %v/s", c.scenario, res.DurationS, res.ThroughputPerS)
		}
		if l := res.LatencyMS; l == nil || l.P50 <= 0 || l.P50 > l.P95 || l.P95 > l.P99 || l.P99 > l.Max {
			t.Errorf("%s: latency %+v", c.scenario, l)
		}
		if m := res.RSSMiB; m == nil || m.Before <= 0 || m.After <= 0 || m.Peak <= 0 {
			t.Errorf("%s: memory %+v", c.scenario, m)
		}
		d := res.Deliveries
		switch {
		case c.delivers == 0 && d != nil:
			t.Errorf("%s: deliveries %+v in a scenario without", c.scenario, d)
		case c.delivers > 0 && d == nil:
			t.Errorf("%s: no deliveries", c.scenario)
		case c.delivers > 0:
			if *d != (bench.Deliveries{Expected: c.delivers, Seen: c.delivers}) {
				t.Errorf("%s: deliveries %+v, want %d expected and seen, none lost or duplicated", c.scenario, *d, c.delivers)
			}
			if res.SendLatencyMS == nil || res.SendLatencyMS.P50 <= 0 {
				t.Errorf("%s: send latency %+v", c.scenario, res.SendLatencyMS)
			}
		}
		checkJSONShape(t, res)
	}
}

// checkJSONShape checks the keys the issue promises, and that sections that
// do not apply are null rather than absent.
func checkJSONShape(t *testing.T, res *bench.Result) {
	t.Helper()
	data, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"scenario", "params", "duration_s", "ops", "throughput_per_s", "latency_ms", "deliveries", "rss_mib"} {
		if _, ok := m[k]; !ok {
			t.Errorf("%s: no %q in %s", res.Scenario, k, data)
		}
	}
	var sub struct {
		Latency    map[string]float64 `json:"latency_ms"`
		Deliveries map[string]int     `json:"deliveries"`
		RSS        map[string]float64 `json:"rss_mib"`
	}
	json.Unmarshal(data, &sub)
	for _, k := range []string{"p50", "p95", "p99", "max"} {
		if _, ok := sub.Latency[k]; !ok {
			t.Errorf("%s: no latency_ms.%s in %s", res.Scenario, k, data)
		}
	}
	for _, k := range []string{"before", "after", "peak"} {
		if _, ok := sub.RSS[k]; !ok {
			t.Errorf("%s: no rss_mib.%s in %s", res.Scenario, k, data)
		}
	}
	if sub.Deliveries != nil {
		for _, k := range []string{"expected", "seen", "lost", "duplicated"} {
			if _, ok := sub.Deliveries[k]; !ok {
				t.Errorf("%s: no deliveries.%s in %s", res.Scenario, k, data)
			}
		}
	}
}

// TestClosedRegistration: a server that refuses /register is reported
// with the way out, before anything is measured.
func TestClosedRegistration(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server")
	}
	cfg := hstest.Config(t, "sqlite")
	cfg.Registration.Enabled = false
	srv := hstest.Start(t, cfg)
	_, err := bench.Run(context.Background(), "send", bench.Options{URL: srv.ClientURL, Messages: 2, Senders: 1})
	if err == nil || !strings.Contains(err.Error(), "-shared-secret") {
		t.Errorf("closed registration: %v, want advice to use -shared-secret", err)
	}
	// The same with the secret works.
	res, err := bench.Run(context.Background(), "send", bench.Options{URL: srv.ClientURL, Messages: 2, Senders: 1, SharedSecret: "test-secret"})
	if err != nil || res.Ops != 2 {
		t.Errorf("shared secret: %v, %+v", err, res)
	}
}

// TestRateLimited: a rate limit in the measured phase ends the run with
// advice instead of measuring the limiter.
func TestRateLimited(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server")
	}
	cfg := hstest.Config(t, "sqlite")
	cfg.RateLimits.Enabled = true
	cfg.RateLimits.Message.Rate, cfg.RateLimits.Message.Burst = 0.01, 3
	srv := hstest.Start(t, cfg)
	_, err := bench.Run(context.Background(), "send", bench.Options{URL: srv.ClientURL, Messages: 20, Senders: 1, SharedSecret: "test-secret"})
	if err == nil || !strings.Contains(err.Error(), "rate limits off") {
		t.Errorf("rate-limited sends: %v, want advice to turn rate limits off", err)
	}
	// The same while members long-poll: the run ends at once, without
	// waiting for their long-polls. Two users' burst covers the setup
	// (a createRoom, a join), not the sends.
	start := time.Now()
	_, err = bench.Run(context.Background(), "fanout", bench.Options{URL: srv.ClientURL, Users: 2, Messages: 10, Rate: 1000, SharedSecret: "test-secret"})
	if err == nil || !strings.Contains(err.Error(), "rate limits off") {
		t.Errorf("rate-limited fanout: %v, want advice to turn rate limits off", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("rate-limited fanout took %s to give up", d)
	}
}

func TestRefusesRemote(t *testing.T) {
	for _, u := range []string{"http://example.org:8008", "https://matrix.org", "http://10.0.0.1:8008", "http://127.0.0.1.nip.io:8008"} {
		err := bench.CheckURL(u, false)
		if err == nil || !strings.Contains(err.Error(), "-allow-remote") {
			t.Errorf("CheckURL(%q): %v, want a refusal naming -allow-remote", u, err)
		}
		if err := bench.CheckURL(u, true); err != nil {
			t.Errorf("CheckURL(%q, allowRemote): %v", u, err)
		}
		// Run refuses before any request: nothing listens there.
		if _, err := bench.Run(context.Background(), "send", bench.Options{URL: u}); err == nil || !strings.Contains(err.Error(), "-allow-remote") {
			t.Errorf("Run against %q: %v", u, err)
		}
	}
	for _, u := range []string{"http://127.0.0.1:8008", "http://localhost:8008", "http://[::1]:8008", "https://127.0.0.2"} {
		if err := bench.CheckURL(u, false); err != nil {
			t.Errorf("CheckURL(%q): %v", u, err)
		}
	}
	for _, u := range []string{"127.0.0.1:8008", "ftp://127.0.0.1", "http://"} {
		if err := bench.CheckURL(u, true); err == nil {
			t.Errorf("CheckURL(%q): no error for a URL that is not http(s)", u)
		}
	}
}

func TestBadOptions(t *testing.T) {
	for _, c := range []struct {
		scenario string
		o        bench.Options
		want     string
	}{
		{"nope", bench.Options{}, "unknown scenario"},
		{"send", bench.Options{Messages: -1}, "-messages"},
		{"register", bench.Options{Users: bench.MaxUsers + 1}, "-users"},
		{"idle", bench.Options{Connections: bench.MaxConnections + 1}, "-connections"},
		{"fanout", bench.Options{Users: 10_000, Messages: 10_000}, "deliveries"},
		{"rooms", bench.Options{Users: 2}, "-users"},
		{"fanout", bench.Options{Rate: -1}, "-rate"},
		{"send", bench.Options{Duration: 2 * bench.MaxDuration}, "-duration"},
		{"send", bench.Options{PID: 1 << 30}, "-pid"},
	} {
		_, err := bench.Run(context.Background(), c.scenario, c.o)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s %+v: %v, want an error naming %q", c.scenario, c.o, err, c.want)
		}
	}
}

func TestPercentile(t *testing.T) {
	hundred := make([]float64, 100)
	for i := range hundred {
		hundred[i] = float64(i + 1)
	}
	for _, c := range []struct {
		values []float64
		p      float64
		want   float64
	}{
		{nil, 50, 0},
		{[]float64{7}, 50, 7},
		{[]float64{7}, 99, 7},
		{hundred, 50, 50},
		{hundred, 95, 95},
		{hundred, 99, 99},
		{hundred, 100, 100},
		{hundred, 0.1, 1},
		// Nearest rank: the p99 of four values is the largest.
		{[]float64{1, 2, 3, 4}, 99, 4},
		{[]float64{1, 2, 3, 4}, 50, 2},
		{[]float64{1, 2, 3, 4}, 75, 3},
		{[]float64{1, 2, 3, 4}, 76, 4},
	} {
		if got := bench.Percentile(c.values, c.p); got != c.want {
			t.Errorf("Percentile(%v, %v) = %v, want %v", c.values, c.p, got, c.want)
		}
	}
}

// TestSharedSecretMAC checks the MAC against one computed by Synapse's
// register_new_matrix_user formula (hmac-sha1 of nonce, user, password
// and "notadmin", NUL-separated).
func TestSharedSecretMAC(t *testing.T) {
	// python3 -c 'import hmac,hashlib;print(hmac.new(b"s3cret",b"abc\x00alice\x00pw\x00notadmin",hashlib.sha1).hexdigest())'
	const want = "d7cd8fe38bb2b37bacf757920ef46050075d427d"
	if got := bench.SharedSecretMAC("s3cret", "abc", "alice", "pw"); got != want {
		t.Errorf("SharedSecretMAC = %s, want %s", got, want)
	}
	if got, weft := bench.SharedSecretMAC("k", "n", "bob", "x"), userapi.SharedSecretMAC("k", "n", "bob", "x", false, ""); got != weft {
		t.Errorf("SharedSecretMAC = %s, Weft checks %s", got, weft)
	}
}
