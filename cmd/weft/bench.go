package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/weft-chat/weft/bench"
)

const benchUsage = `Usage: weft bench SCENARIO [flags]

Load-tests a Matrix homeserver (Weft, Synapse, any other) through its
client API and prints throughput, latency percentiles, deliveries and,
with -pid, the server's memory. Users are created with /register and the
dummy stage, or with -shared-secret where registration is closed. Turn the
server's rate limits off first (Weft: WEFT_RATE_LIMITS_ENABLED=false).

Scenarios:`

// benchCmd is `weft bench`: one scenario, its summary on stdout (or its
// JSON with -json), progress on stderr.
func benchCmd(ctx context.Context, args, _ []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("weft bench", flag.ContinueOnError)
	// Parse errors become one line of ours; -help prints the usage.
	fs.SetOutput(io.Discard)
	var o bench.Options
	fs.StringVar(&o.URL, "url", bench.DefaultURL, "the server's client API")
	fs.BoolVar(&o.AllowRemote, "allow-remote", false, "allow a server that is not on loopback")
	fs.StringVar(&o.SharedSecret, "shared-secret", "", "create users with shared-secret registration (Synapse's registration_shared_secret)")
	fs.IntVar(&o.PID, "pid", 0, "the server's process id, to report its memory (VmRSS, VmHWM)")
	fs.DurationVar(&o.Duration, "duration", bench.DefaultDuration, fmt.Sprintf("cap of the measured phase (at most %s)", bench.MaxDuration))
	fs.IntVar(&o.Users, "users", 0, "users (register: registrations; rooms: the pool, 3 × rooms by default)")
	fs.IntVar(&o.Concurrency, "concurrency", 0, "requests in flight")
	fs.IntVar(&o.Messages, "messages", 0, "messages to send")
	fs.IntVar(&o.Senders, "senders", 0, "send: distinct senders")
	fs.IntVar(&o.Rooms, "rooms", 0, "rooms")
	fs.IntVar(&o.Events, "events", 0, "initialsync: messages per room")
	fs.IntVar(&o.Connections, "connections", 0, "idle: long-polls to hold open")
	fs.IntVar(&o.Repeat, "repeat", 0, "initialsync: syncs to measure")
	fs.Float64Var(&o.Rate, "rate", 0, "messages per second (rooms: 0 is as fast as possible)")
	asJSON := fs.Bool("json", false, "print the result as JSON on stdout (the summary goes to stderr)")
	outFile := fs.String("o", "", "also write the JSON result to this file")
	usage := func() {
		fmt.Fprintln(stderr, benchUsage)
		bench.WriteScenarios(stderr)
		fmt.Fprintln(stderr, "\nFlags (a count of 0 takes the scenario's default):")
		fs.SetOutput(stderr)
		fs.PrintDefaults()
	}

	// The scenario may come before or after the flags.
	var name string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		name, args = args[0], args[1:]
	}
	if err := parseBenchFlags(fs, args, usage); err != nil {
		return err
	}
	if name == "" && fs.NArg() > 0 {
		name = fs.Arg(0)
		if err := parseBenchFlags(fs, fs.Args()[1:], usage); err != nil {
			return err
		}
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("bench: unexpected argument %q (see weft bench -help)", fs.Arg(0))
	}
	if name == "" {
		return fmt.Errorf("bench: expected a scenario: %s (see weft bench -help)", strings.Join(bench.Names(), ", "))
	}

	o.Log = stderr
	res, err := bench.Run(ctx, name, o)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // the targets say "<="
	enc.SetIndent("", "  ")
	if err := enc.Encode(res); err != nil {
		return err
	}
	data := buf.Bytes()
	if *outFile != "" {
		if err := os.WriteFile(*outFile, data, 0o644); err != nil {
			return fmt.Errorf("bench: %w", err)
		}
	}
	if *asJSON {
		res.Summary(stderr)
		_, err = stdout.Write(data)
		return err
	}
	res.Summary(stdout)
	return nil
}

func parseBenchFlags(fs *flag.FlagSet, args []string, usage func()) error {
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		usage()
		return err
	}
	if err != nil {
		return fmt.Errorf("bench: %v (see weft bench -help)", err)
	}
	return nil
}
