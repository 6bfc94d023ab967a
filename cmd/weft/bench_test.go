package main

import (
	"errors"
	"flag"
	"strings"
	"testing"
)

// TestBenchFlagErrors: every mistake on the command line is one line on
// stderr (main prints the error) and a non-zero exit, before any request.
func TestBenchFlagErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"bench"}, "expected a scenario"},
		{[]string{"bench", "nope"}, `unknown scenario "nope"`},
		{[]string{"bench", "send", "-no-such-flag"}, "-no-such-flag"},
		{[]string{"bench", "-no-such-flag", "send"}, "-no-such-flag"},
		{[]string{"bench", "send", "-users", "many"}, "-users"},
		{[]string{"bench", "send", "-messages", "-5"}, "-messages"},
		{[]string{"bench", "idle", "-connections", "1000000"}, "-connections"},
		{[]string{"bench", "send", "-duration", "2h"}, "-duration"},
		{[]string{"bench", "send", "-duration", "soon"}, "-duration"},
		{[]string{"bench", "send", "extra"}, `unexpected argument "extra"`},
		{[]string{"bench", "send", "-url", "http://example.org:8008"}, "-allow-remote"},
		{[]string{"bench", "-url", "http://example.org:8008", "fanout"}, "-allow-remote"},
		{[]string{"bench", "send", "-url", "127.0.0.1:8008"}, "-url"},
	} {
		stdout, stderr, err := runFor(t, nil, c.args...)
		if err == nil || errors.Is(err, flag.ErrHelp) {
			t.Errorf("weft %s: %v, want an error", strings.Join(c.args, " "), err)
			continue
		}
		if stdout != "" || stderr != "" {
			t.Errorf("weft %s printed %q and %q besides the error", strings.Join(c.args, " "), stdout, stderr)
		}
		wantOneLine(t, err.Error(), c.want)
	}
}

func TestBenchHelp(t *testing.T) {
	_, stderr, err := runFor(t, nil, "bench", "-help")
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("weft bench -help: %v", err)
	}
	for _, want := range []string{"fanout", "initialsync", "idle", "-allow-remote", "-shared-secret", "-pid", "defaults:"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("the usage does not mention %q:\n%s", want, stderr)
		}
	}
}
