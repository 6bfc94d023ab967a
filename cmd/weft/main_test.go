package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/internal/serverkey"
	"github.com/weft-chat/weft/internal/version"
)

// syncBuffer is an output sink safe for the server's goroutines.
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

// runFor runs the command line args in-process and fails the test if it
// does not return within a generous bound (a command that should not serve
// but does would block forever).
func runFor(t *testing.T, environ []string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut syncBuffer
	done := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { done <- run(ctx, args, environ, &out, &errOut) }()
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		cancel()
		<-done
		t.Fatalf("weft %s did not return: did it start a server?\nstderr:\n%s", strings.Join(args, " "), errOut.String())
	}
	return out.String(), errOut.String(), err
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func TestVersionCommand(t *testing.T) {
	out, _, err := runFor(t, nil, "version")
	if err != nil {
		t.Fatal(err)
	}
	if want := version.Name + " " + version.String() + "\n"; out != want {
		t.Fatalf("weft version printed %q, want %q", out, want)
	}
}

func TestConfigExampleCommand(t *testing.T) {
	out, _, err := runFor(t, nil, "config", "example")
	if err != nil {
		t.Fatal(err)
	}
	if out != string(config.Example()) {
		t.Error("weft config example does not print the example")
	}
	var c config.Config
	dec := yaml.NewDecoder(strings.NewReader(out))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		t.Fatalf("output is not a config: %v", err)
	}
	if !reflect.DeepEqual(c, config.Defaults()) {
		t.Fatalf("output parses to %+v, want the defaults %+v", c, config.Defaults())
	}
	for _, args := range [][]string{{"config"}, {"config", "nonsense"}} {
		if _, _, err := runFor(t, nil, args...); err == nil {
			t.Errorf("weft %s: no error", strings.Join(args, " "))
		}
	}
}

func TestGenerateKeysCommand(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keys", "signing.key")
	out, _, err := runFor(t, nil, "generate-keys", "--output", path)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	k, err := serverkey.Parse(data)
	if err != nil {
		t.Fatalf("generated key does not parse: %v", err)
	}
	if !strings.Contains(out, string(k.ID)) || !strings.Contains(out, path) {
		t.Errorf("output %q names neither the key id nor the path", out)
	}
	if _, _, err := runFor(t, nil, "generate-keys", "--output", path); err == nil {
		t.Fatal("generate-keys overwrote an existing key")
	}
	if again, _ := os.ReadFile(path); !bytes.Equal(again, data) {
		t.Fatal("the existing key changed")
	}

	// Without --output the key goes to signing_key_path: from the config
	// file, or derived from data_dir.
	cfgKey := filepath.Join(dir, "from-config.key")
	cfgFile := writeFile(t, dir, "weft.yaml", "signing_key_path: "+cfgKey+"\n")
	if _, _, err := runFor(t, nil, "generate-keys", "--config", cfgFile); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(cfgKey); err != nil {
		t.Errorf("generate-keys --config: %v", err)
	}
	dataDir := filepath.Join(dir, "data")
	if _, _, err := runFor(t, []string{"WEFT_DATA_DIR=" + dataDir}, "generate-keys"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dataDir, "signing.key")); err != nil {
		t.Errorf("generate-keys with WEFT_DATA_DIR: %v", err)
	}
}

func TestHelp(t *testing.T) {
	t.Chdir(t.TempDir())
	for _, args := range [][]string{
		{"--help"}, {"-h"}, {"-help"},
		{"serve", "--help"}, {"serve", "-h"},
		{"generate-keys", "--help"}, {"config", "--help"}, {"version", "--help"},
	} {
		_, stderr, err := runFor(t, nil, args...)
		if !errors.Is(err, flag.ErrHelp) {
			t.Errorf("weft %s: %v, want flag.ErrHelp (exit 0)", strings.Join(args, " "), err)
		}
		if !strings.Contains(stderr, "Usage") {
			t.Errorf("weft %s printed no usage: %q", strings.Join(args, " "), stderr)
		}
	}
	out, _, err := runFor(t, nil, "help")
	if err != nil || !strings.Contains(out, "serve") || !strings.Contains(out, "generate-keys") {
		t.Errorf("weft help: %v %q", err, out)
	}
	_, stderr, err := runFor(t, nil, "serve", "--help")
	if !strings.Contains(stderr, "-config") {
		t.Errorf("weft serve --help does not show --config: %q (%v)", stderr, err)
	}
	if _, _, err := runFor(t, nil, "admin", "--help"); err != nil {
		t.Errorf("weft admin --help: %v", err)
	}
	// None of that started a server or made a data directory.
	if entries, _ := os.ReadDir("."); len(entries) != 0 {
		t.Errorf("help commands created files: %v", entries)
	}
}

func TestUnknownCommand(t *testing.T) {
	_, stderr, err := runFor(t, nil, "frobnicate")
	if err == nil || !strings.Contains(err.Error(), "frobnicate") {
		t.Fatalf("weft frobnicate: %v", err)
	}
	if !strings.Contains(stderr, "Usage") {
		t.Error("no usage for an unknown command")
	}
	if _, _, err := runFor(t, nil, "admin"); err == nil {
		t.Error("weft admin without a command: no error")
	}
	if _, _, err := runFor(t, nil, "serve", "--no-such-flag"); err == nil || errors.Is(err, flag.ErrHelp) {
		t.Errorf("an unknown flag: %v", err)
	}
}

// badConfigs are configurations that must stop weft before it serves, each
// with a one-line error naming what is wrong.
func badConfigs(t *testing.T, dir string) []struct {
	name, yaml string
	env        []string
	want       string
} {
	keyDir := filepath.Join(dir, "key-is-a-dir")
	if err := os.MkdirAll(keyDir, 0o700); err != nil {
		t.Fatal(err)
	}
	garbageKey := writeFile(t, dir, "garbage.key", "-----BEGIN NONSENSE-----\n\x00\x01\n")
	data := "data_dir: " + filepath.Join(dir, "data") + "\n"
	return []struct {
		name, yaml string
		env        []string
		want       string
	}{
		{"bad server name", data + "server_name: \"bad name!\"\n", nil, "server_name"},
		{"unknown database scheme", data + "database:\n  url: mysql://weft@localhost/weft\n", nil, "database.url"},
		{"key path is a directory", data + "signing_key_path: " + keyDir + "\n", nil, "signing_key_path"},
		{"garbage key file", data + "signing_key_path: " + garbageKey + "\n", nil, "signing_key_path"},
		{"broken yaml", data + "server_name: example.org\nclient:\n\tlisten: 127.0.0.1:8008\n", nil, "line 4"},
		{"unknown key", data + "servre_name: example.org\n", nil, "line 2"},
		{"bad env value", data, []string{"WEFT_CLIENT_MAX_BODY_BYTES=huge"}, "WEFT_CLIENT_MAX_BODY_BYTES"},
		{"bad env server name", data, []string{"WEFT_SERVER_NAME=bad name!"}, "server_name"},
	}
}

func wantOneLine(t *testing.T, msg, want string) {
	t.Helper()
	msg = strings.TrimSuffix(msg, "\n")
	if msg == "" || strings.ContainsAny(msg, "\r\n") {
		t.Errorf("want exactly one line, got %q", msg)
	}
	if !strings.Contains(msg, want) {
		t.Errorf("%q does not name %q", msg, want)
	}
}

func TestServeBadConfig(t *testing.T) {
	dir := t.TempDir()
	for _, c := range badConfigs(t, dir) {
		t.Run(c.name, func(t *testing.T) {
			file := writeFile(t, t.TempDir(), "weft.yaml", c.yaml)
			_, _, err := runFor(t, c.env, "serve", "--config", file)
			if err == nil {
				t.Fatal("serve accepted a bad config")
			}
			wantOneLine(t, err.Error(), c.want)
		})
	}
	_, _, err := runFor(t, nil, "--config", filepath.Join(dir, "missing.yaml"))
	if err == nil {
		t.Fatal("a missing config file: no error")
	}
	wantOneLine(t, err.Error(), "missing.yaml")
}

// TestServeInProcess runs the zero-config server through run and stops it
// by cancelling the context, as SIGTERM does.
func TestServeInProcess(t *testing.T) {
	dir := t.TempDir()
	clientAddr, fedAddr := freePort(t), freePort(t)
	env := []string{
		"WEFT_DATA_DIR=" + filepath.Join(dir, "data"),
		"WEFT_CLIENT_LISTEN=" + clientAddr,
		"WEFT_FEDERATION_LISTEN=" + fedAddr,
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncBuffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, env, &stdout, &stderr) }()

	waitForVersions(t, "http://"+clientAddr, done, &stderr)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run returned %v after the stop signal", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return after the stop signal")
	}
	if !strings.Contains(stderr.String(), "weft stopped") {
		t.Errorf("no shutdown log line:\n%s", stderr.String())
	}
	if _, err := os.Stat(filepath.Join(dir, "data", "signing.key")); err != nil {
		t.Errorf("no signing key in the data dir: %v", err)
	}
}

// waitForVersions polls /_matrix/client/versions until it answers 200 JSON.
// exited reports the server stopping early.
func waitForVersions(t *testing.T, base string, exited <-chan error, logs interface{ String() string }) {
	t.Helper()
	c := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case err := <-exited:
			t.Fatalf("weft stopped before serving: %v\n%s", err, logs.String())
		default:
		}
		res, err := c.Get(base + "/_matrix/client/versions")
		if err == nil {
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			var v struct {
				Versions []string `json:"versions"`
			}
			if res.StatusCode == 200 && res.Header.Get("Content-Type") == "application/json" && json.Unmarshal(body, &v) == nil && v.Versions != nil {
				return
			}
			t.Fatalf("/versions answered %d %s", res.StatusCode, body)
		}
		if time.Now().After(deadline) {
			t.Fatalf("weft did not answer %s within 30s: %v\n%s", base, err, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
