// Package bench load-tests a Matrix homeserver through its public client
// API, the way `weft bench` runs it. It speaks plain HTTP with the standard
// library and knows nothing of Weft's internals, so the same numbers can be
// taken from Weft, Synapse or any other server.
//
// Every scenario has a setup phase (users, rooms, tokens; not measured) and
// a measured phase, bounded by counts and by Options.Duration. It refuses a
// server that is not on loopback unless Options.AllowRemote is set: a load
// test is an attack on somebody else's machine.
package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Options configure a run. Zero counts take the scenario's default
// (Defaults).
type Options struct {
	// URL is the server's client API base, e.g. http://127.0.0.1:8008.
	URL string
	// AllowRemote permits a URL whose host is not a loopback address.
	AllowRemote bool
	// SharedSecret switches user creation from /register with the dummy
	// stage to Synapse's shared-secret admin registration.
	SharedSecret string
	// PID is the server's process id on this machine, for its memory from
	// /proc/<pid>/status; 0: not measured.
	PID int
	// Duration caps the measured phase: no new operation starts after it.
	Duration time.Duration

	Users       int     // register: registrations; fanout: room members; rooms: the user pool; idle: users
	Concurrency int     // requests in flight (workers)
	Messages    int     // send, rooms: messages in all; fanout: messages
	Senders     int     // send: distinct senders
	Rooms       int     // rooms, initialsync
	Events      int     // initialsync: messages per room
	Connections int     // idle: long-polls held open
	Repeat      int     // initialsync: initial syncs measured
	Rate        float64 // fanout, rooms: messages per second (rooms: 0 is as fast as possible)

	// Log receives progress lines; nil discards them.
	Log io.Writer
}

// Limits keep a mistyped count from turning a benchmark into an outage.
const (
	MaxUsers       = 100_000
	MaxConcurrency = 10_000
	MaxMessages    = 1_000_000
	MaxRooms       = 10_000
	MaxEvents      = 10_000
	MaxConnections = 100_000
	MaxRepeat      = 1_000
	MaxRate        = 100_000
	MaxDuration    = time.Hour
	// MaxDeliveries bounds messages × members, which the delivery
	// scenarios track one by one.
	MaxDeliveries = 10_000_000
)

// DefaultURL is Weft's default client listener.
const DefaultURL = "http://127.0.0.1:8008"

// DefaultDuration is the default cap of a measured phase.
const DefaultDuration = time.Minute

// scenario is one load pattern.
type scenario struct {
	name, about string
	// defaults are the counts the scenario uses, with their default values;
	// other counts are ignored.
	defaults Options
	run      func(ctx context.Context, r *runner) (*Result, error)
}

func scenarios() []scenario {
	return []scenario{
		{"register", "N registrations, C at a time: latency per registration",
			Options{Users: 100, Concurrency: 8}, runRegister},
		{"send", "M messages into one room from S senders: latency per send",
			Options{Messages: 1000, Senders: 10, Concurrency: 10}, runSend},
		{"fanout", "U members long-poll one room, one sender sends K messages at a fixed rate: send-to-sync latency",
			Options{Users: 50, Messages: 50, Rate: 20, Concurrency: 4}, runFanout},
		{"rooms", "R rooms of 3 long-polling members, senders in every room at once: messages/s and delivery latency",
			Options{Rooms: 200, Messages: 4000, Concurrency: 32}, runRooms},
		{"initialsync", "one user in R rooms of E messages each: full initial /sync latency",
			Options{Rooms: 50, Events: 50, Repeat: 5}, runInitialSync},
		{"idle", "N idle /sync long-polls spread over U users: the server's memory growth",
			Options{Users: 100, Connections: 10_000, Concurrency: 200}, runIdle},
	}
}

// WriteScenarios lists the scenarios for a usage message, each with the
// counts it uses and their defaults.
func WriteScenarios(w io.Writer) {
	for _, s := range scenarios() {
		d := s.defaults
		var flags []string
		for _, f := range []struct {
			name string
			v    float64
		}{{"users", float64(d.Users)}, {"concurrency", float64(d.Concurrency)}, {"messages", float64(d.Messages)},
			{"senders", float64(d.Senders)}, {"rooms", float64(d.Rooms)}, {"events", float64(d.Events)},
			{"connections", float64(d.Connections)}, {"repeat", float64(d.Repeat)}, {"rate", d.Rate}} {
			if f.v != 0 {
				flags = append(flags, fmt.Sprintf("-%s %g", f.name, f.v))
			}
		}
		fmt.Fprintf(w, "  %-12s %s\n  %-12s defaults: %s\n", s.name, s.about, "", strings.Join(flags, " "))
	}
}

func findScenario(name string) (scenario, bool) {
	i := slices.IndexFunc(scenarios(), func(s scenario) bool { return s.name == name })
	if i < 0 {
		return scenario{}, false
	}
	return scenarios()[i], true
}

// Run runs one scenario against o.URL and returns its result. It checks
// the options first, so a bad option fails before any request.
func Run(ctx context.Context, name string, o Options) (*Result, error) {
	s, ok := findScenario(name)
	if !ok {
		return nil, fmt.Errorf("unknown scenario %q (one of %s)", name, strings.Join(Names(), ", "))
	}
	o, err := resolve(s, o)
	if err != nil {
		return nil, err
	}
	r, err := newRunner(o)
	if err != nil {
		return nil, err
	}
	defer r.c.close()
	res, err := s.run(ctx, r)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	res.Scenario = name
	res.Params["url"] = o.URL
	res.Params["duration_cap_s"] = o.Duration.Seconds()
	res.Notes = append(res.Notes, r.notes()...)
	return res, nil
}

// Names are the scenarios' names.
func Names() []string {
	var n []string
	for _, s := range scenarios() {
		n = append(n, s.name)
	}
	return n
}

// resolve fills the scenario's defaults into o and checks every value.
func resolve(s scenario, o Options) (Options, error) {
	if o.URL == "" {
		o.URL = DefaultURL
	}
	if err := CheckURL(o.URL, o.AllowRemote); err != nil {
		return o, err
	}
	if o.Duration == 0 {
		o.Duration = DefaultDuration
	}
	if o.Duration < 0 || o.Duration > MaxDuration {
		return o, fmt.Errorf("-duration %s: want more than 0 and at most %s", o.Duration, MaxDuration)
	}
	d := s.defaults
	counts := []struct {
		flag     string
		v        *int
		def, max int
	}{
		{"users", &o.Users, d.Users, MaxUsers},
		{"concurrency", &o.Concurrency, d.Concurrency, MaxConcurrency},
		{"messages", &o.Messages, d.Messages, MaxMessages},
		{"senders", &o.Senders, d.Senders, MaxUsers},
		{"rooms", &o.Rooms, d.Rooms, MaxRooms},
		{"events", &o.Events, d.Events, MaxEvents},
		{"connections", &o.Connections, d.Connections, MaxConnections},
		{"repeat", &o.Repeat, d.Repeat, MaxRepeat},
	}
	for _, c := range counts {
		if *c.v < 0 || *c.v > c.max {
			return o, fmt.Errorf("-%s %d: want 0 (the default) to %d", c.flag, *c.v, c.max)
		}
		if *c.v == 0 {
			*c.v = c.def
		}
	}
	if o.Rate < 0 || o.Rate > MaxRate {
		return o, fmt.Errorf("-rate %g: want 0 to %d per second", o.Rate, MaxRate)
	}
	if o.Rate == 0 {
		o.Rate = d.Rate
	}
	if o.PID < 0 {
		return o, fmt.Errorf("-pid %d: not a process id", o.PID)
	}
	if o.PID > 0 {
		if _, err := readMemory(o.PID); err != nil {
			return o, fmt.Errorf("-pid %d: %w", o.PID, err)
		}
	}
	switch s.name {
	case "send":
		if o.Senders > o.Messages {
			o.Senders = o.Messages
		}
	case "rooms":
		if o.Users == 0 || o.Users > roomMembers*o.Rooms {
			o.Users = roomMembers * o.Rooms
		}
		if o.Users < roomMembers {
			return o, fmt.Errorf("-users %d: a room needs %d members", o.Users, roomMembers)
		}
		if o.Messages*roomMembers > MaxDeliveries {
			return o, fmt.Errorf("-messages %d: at most %d deliveries (messages × %d members) are tracked", o.Messages, MaxDeliveries, roomMembers)
		}
	case "fanout":
		if o.Users*o.Messages > MaxDeliveries {
			return o, fmt.Errorf("-users %d × -messages %d: at most %d deliveries are tracked", o.Users, o.Messages, MaxDeliveries)
		}
	case "idle":
		if o.Users > o.Connections {
			o.Users = o.Connections
		}
	}
	return o, nil
}

// CheckURL accepts an http(s) URL whose host is a loopback address or
// "localhost"; any other host only with allowRemote.
func CheckURL(raw string, allowRemote bool) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("-url %q: %w", raw, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("-url %q: want http://host:port or https://host:port", raw)
	}
	if allowRemote || isLoopback(u.Hostname()) {
		return nil
	}
	return fmt.Errorf("-url %q is not on loopback: load-testing another machine needs -allow-remote", raw)
}

// isLoopback does not resolve names: a name that points elsewhere, or that
// somebody repoints, must not slip through.
func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// runner is what a scenario works with: the options, the client and this
// run's id, which names its users and tags its messages so that two runs on
// one server never mix.
type runner struct {
	o   Options
	c   *client
	run string
	log io.Writer
}

func newRunner(o Options) (*runner, error) {
	id := make([]byte, 4)
	rand.Read(id)
	log := o.Log
	if log == nil {
		log = io.Discard
	}
	return &runner{o: o, c: newClient(o.URL), run: hex.EncodeToString(id), log: log}, nil
}

func (r *runner) logf(format string, args ...any) {
	fmt.Fprintf(r.log, "bench: "+format+"\n", args...)
}

// notes are the run-wide remarks every result carries.
func (r *runner) notes() []string {
	if n := r.c.rateLimited.Load(); n > 0 {
		return []string{fmt.Sprintf("setup waited out %d rate-limited requests (429)", n)}
	}
	return nil
}
