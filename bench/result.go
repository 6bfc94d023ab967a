package bench

import (
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strings"
	"sync"
	"time"
)

// Result is one scenario's outcome, as `weft bench -json` prints it. The
// keys of the shape are always present; a section that does not
// apply (deliveries outside fanout and rooms, memory without a pid) is null.
type Result struct {
	Scenario  string         `json:"scenario"`
	Params    map[string]any `json:"params"`
	DurationS float64        `json:"duration_s"`
	// Ops are the measured operations that succeeded: registrations,
	// sends, initial syncs, long-polls opened.
	Ops            int     `json:"ops"`
	Errors         int     `json:"errors"`
	ThroughputPerS float64 `json:"throughput_per_s"`
	// LatencyMS is per operation, except in fanout and rooms, where it is
	// per delivery: from the start of the send to the arrival of the sync
	// response that carries the message to one member.
	LatencyMS *Latency `json:"latency_ms"`
	// SendLatencyMS is the latency of the sends of fanout and rooms.
	SendLatencyMS *Latency    `json:"send_latency_ms,omitempty"`
	Deliveries    *Deliveries `json:"deliveries"`
	RSSMiB        *Memory     `json:"rss_mib"`
	// ServerCPUS is the CPU time the server spent over the measured phase
	// (user and system, all threads), with a pid: on a shared machine a
	// steadier measure of the cost of the work than its latency.
	ServerCPUS float64 `json:"server_cpu_s,omitempty"`
	// ServerCPUAfterS is the CPU time the server spent after the measured
	// phase of fanout and rooms until it went quiet: work the messages
	// left behind.
	ServerCPUAfterS float64 `json:"server_cpu_after_s,omitempty"`
	// Target is the goal the issue sets for the scenario, if any, and
	// TargetMet whether this run reached it.
	Target    string   `json:"target,omitempty"`
	TargetMet *bool    `json:"target_met,omitempty"`
	Notes     []string `json:"notes,omitempty"`
}

// Latency holds percentiles in milliseconds.
type Latency struct {
	P50 float64 `json:"p50"`
	P95 float64 `json:"p95"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// Deliveries counts messages reaching members: one expected per (message,
// member); lost ones never arrived, duplicated ones arrived more than once
// (each extra arrival counts).
type Deliveries struct {
	Expected   int `json:"expected"`
	Seen       int `json:"seen"`
	Lost       int `json:"lost"`
	Duplicated int `json:"duplicated"`
	// LimitedTimelines counts sync responses whose timeline skipped
	// events (limited: true): the usual cause of losses.
	LimitedTimelines int `json:"limited_timelines"`
}

// Memory is the server's resident memory: VmRSS before and after the
// measured phase, and VmHWM, its peak (since the start of the phase when
// the kernel let us reset it, else since the process started).
type Memory struct {
	Before float64 `json:"before"`
	After  float64 `json:"after"`
	Peak   float64 `json:"peak"`
}

// Percentile is the nearest-rank p-th percentile (0 < p <= 100) of sorted
// values: the smallest value with at least p% of the values at or below
// it. It is 0 for no values.
func Percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	return sorted[min(max(rank, 1), len(sorted))-1]
}

// recorder collects latencies from many goroutines.
type recorder struct {
	mu sync.Mutex
	ms []float64
}

func (r *recorder) add(d time.Duration) {
	r.mu.Lock()
	r.ms = append(r.ms, float64(d)/float64(time.Millisecond))
	r.mu.Unlock()
}

// latency summarises what was recorded; nil when nothing was.
func (r *recorder) latency() *Latency {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.ms) == 0 {
		return nil
	}
	s := slices.Clone(r.ms)
	slices.Sort(s)
	return &Latency{P50: round(Percentile(s, 50)), P95: round(Percentile(s, 95)),
		P99: round(Percentile(s, 99)), Max: round(s[len(s)-1])}
}

// round keeps three decimals: microseconds, when the unit is ms.
func round(v float64) float64 { return math.Round(v*1000) / 1000 }

// finish fills the timing fields from the measured phase's length.
func (res *Result) finish(ops int, d time.Duration) {
	res.Ops = ops
	res.DurationS = round(d.Seconds())
	if d > 0 {
		res.ThroughputPerS = round(float64(ops) / d.Seconds())
	}
}

func (res *Result) target(goal string, met bool) {
	res.Target, res.TargetMet = goal, &met
}

func (res *Result) note(format string, args ...any) {
	res.Notes = append(res.Notes, fmt.Sprintf(format, args...))
}

// Summary writes the result for people.
func (res *Result) Summary(w io.Writer) {
	var params []string
	for _, k := range slices.Sorted(maps.Keys(res.Params)) {
		params = append(params, fmt.Sprintf("%s=%v", k, res.Params[k]))
	}
	fmt.Fprintf(w, "weft bench %s (%s)\n", res.Scenario, strings.Join(params, " "))
	fmt.Fprintf(w, "  measured    %.2f s, %d ops, %.1f ops/s, %d errors\n", res.DurationS, res.Ops, res.ThroughputPerS, res.Errors)
	if l := res.LatencyMS; l != nil {
		what := "per op"
		if res.Deliveries != nil {
			what = "send to sync delivery"
		}
		fmt.Fprintf(w, "  latency ms  p50 %.2f  p95 %.2f  p99 %.2f  max %.2f  (%s)\n", l.P50, l.P95, l.P99, l.Max, what)
	}
	if l := res.SendLatencyMS; l != nil {
		fmt.Fprintf(w, "  send ms     p50 %.2f  p95 %.2f  p99 %.2f  max %.2f\n", l.P50, l.P95, l.P99, l.Max)
	}
	if d := res.Deliveries; d != nil {
		fmt.Fprintf(w, "  deliveries  %d expected, %d seen, %d lost, %d duplicated", d.Expected, d.Seen, d.Lost, d.Duplicated)
		if d.LimitedTimelines > 0 {
			fmt.Fprintf(w, ", %d limited timelines", d.LimitedTimelines)
		}
		fmt.Fprintln(w)
	}
	if m := res.RSSMiB; m != nil {
		fmt.Fprintf(w, "  server RSS  before %.1f MiB, after %.1f MiB (%+.1f), peak %.1f MiB\n", m.Before, m.After, m.After-m.Before, m.Peak)
		fmt.Fprintf(w, "  server CPU  %.2f s", res.ServerCPUS)
		if res.Ops > 0 {
			fmt.Fprintf(w, ", %.2f ms per op", 1000*res.ServerCPUS/float64(res.Ops))
		}
		if res.ServerCPUAfterS > 0 {
			fmt.Fprintf(w, "; %.2f s more until quiet", res.ServerCPUAfterS)
			if res.Ops > 0 {
				fmt.Fprintf(w, " (%.2f ms per op in all)", 1000*(res.ServerCPUS+res.ServerCPUAfterS)/float64(res.Ops))
			}
		}
		fmt.Fprintln(w)
	}
	if res.Target != "" {
		verdict := "met"
		if !*res.TargetMet {
			verdict = "NOT met"
		}
		fmt.Fprintf(w, "  target      %s: %s\n", res.Target, verdict)
	}
	for _, n := range res.Notes {
		fmt.Fprintf(w, "  note        %s\n", n)
	}
}
