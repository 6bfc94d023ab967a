package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"gopkg.in/yaml.v3"

	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/internal/serverkey"
)

// TestBinary builds weft once and runs it the way a newcomer would.
func TestBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary; skipped with -short")
	}
	bin := buildWeft(t)
	t.Run("newcomer", func(t *testing.T) { t.Parallel(); testNewcomer(t, bin) })
	t.Run("bad config", func(t *testing.T) { t.Parallel(); testBadConfigBinary(t, bin) })
	t.Run("commands", func(t *testing.T) { t.Parallel(); testCommandsBinary(t, bin) })
}

func goTool(t *testing.T) string {
	t.Helper()
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); fileExists(p) {
		return p
	}
	p, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("no go command to build weft with: %v", err)
	}
	return p
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func buildWeft(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "weft")
	cmd := exec.Command(goTool(t), "build", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// cleanEnv is the test's environment without any WEFT_ variable, plus extra.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, config.EnvPrefix) {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// runWeft runs the binary to completion in dir and returns its output and
// exit code.
func runWeft(t *testing.T, bin, dir string, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir, cmd.Env = dir, env
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("weft %s did not exit: did it start a server?\n%s", strings.Join(args, " "), errOut.String())
	}
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		code = exit.ExitCode()
	default:
		t.Fatalf("weft %s: %v", strings.Join(args, " "), err)
	}
	return out.String(), errOut.String(), code
}

type process struct {
	cmd            *exec.Cmd
	stdout, stderr *syncBuffer
	exited         chan error
}

func startWeft(t *testing.T, bin, dir string, env []string, args ...string) *process {
	t.Helper()
	p := &process{cmd: exec.Command(bin, args...), stdout: &syncBuffer{}, stderr: &syncBuffer{}, exited: make(chan error, 1)}
	p.cmd.Dir, p.cmd.Env = dir, env
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- p.cmd.Wait() }()
	t.Cleanup(func() {
		// Only if the test failed before stopping it.
		if p.cmd.ProcessState == nil {
			p.cmd.Process.Kill()
			<-p.exited
		}
	})
	return p
}

// stop sends SIGTERM and checks that weft exits with status 0 in a few
// seconds.
func (p *process) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.exited:
		if err != nil {
			t.Fatalf("weft exited with %v after SIGTERM\n%s", err, p.stderr.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("weft did not stop within 15s of SIGTERM\n%s", p.stderr.String())
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("exit code %d after SIGTERM", code)
	}
}

// fetchVerifiedKey fetches the federation key document and verifies its
// signature with gomatrixserverlib.
func fetchVerifiedKey(t *testing.T, fedAddr, serverName string) (gomatrixserverlib.KeyID, spec.Base64Bytes) {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}} // self-signed
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	res, err := c.Get("https://" + fedAddr + "/_matrix/key/v2/server")
	if err != nil {
		t.Fatalf("key server: %v", err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != 200 {
		t.Fatalf("key server: %d %s", res.StatusCode, body)
	}
	var doc struct {
		ServerName   string                                           `json:"server_name"`
		ValidUntilTS int64                                            `json:"valid_until_ts"`
		VerifyKeys   map[gomatrixserverlib.KeyID]struct{ Key string } `json:"verify_keys"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatalf("key document %s: %v", body, err)
	}
	if doc.ServerName != serverName || len(doc.VerifyKeys) != 1 {
		t.Fatalf("key document: %s", body)
	}
	if now := time.Now().UnixMilli(); doc.ValidUntilTS <= now {
		t.Errorf("valid_until_ts %d is not after now (%d)", doc.ValidUntilTS, now)
	}
	for id, k := range doc.VerifyKeys {
		var pub spec.Base64Bytes
		if err := pub.Decode(k.Key); err != nil || len(pub) != 32 {
			t.Fatalf("verify key %q: %v", k.Key, err)
		}
		if err := gomatrixserverlib.VerifyJSON(serverName, id, []byte(pub), body); err != nil {
			t.Fatalf("key document does not verify with %s: %v\n%s", id, err, body)
		}
		return id, pub
	}
	panic("unreachable")
}

func testNewcomer(t *testing.T, bin string) {
	dir := t.TempDir() // empty: no config file, no data
	clientAddr, fedAddr := freePort(t), freePort(t)
	env := cleanEnv("WEFT_CLIENT_LISTEN="+clientAddr, "WEFT_FEDERATION_LISTEN="+fedAddr)

	p := startWeft(t, bin, dir, env)
	waitForVersions(t, "http://"+clientAddr, p.exited, p.stderr)
	keyID, pub := fetchVerifiedKey(t, fedAddr, "localhost")
	for _, f := range []string{"signing.key", "weft.db", "federation.crt"} {
		if !fileExists(filepath.Join(dir, "weft-data", f)) {
			t.Errorf("no weft-data/%s in the working directory", f)
		}
	}
	p.stop(t)
	if log := p.stderr.String(); !strings.Contains(log, "weft is ready") || !strings.Contains(log, "weft stopped") {
		t.Errorf("start and stop are not logged:\n%s", log)
	}

	// Again on the same directory: the same key.
	p = startWeft(t, bin, dir, env)
	waitForVersions(t, "http://"+clientAddr, p.exited, p.stderr)
	keyID2, pub2 := fetchVerifiedKey(t, fedAddr, "localhost")
	if keyID2 != keyID || !bytes.Equal(pub2, pub) {
		t.Errorf("the restarted server has another key: %s %s, was %s %s", keyID2, pub2.Encode(), keyID, pub.Encode())
	}
	p.stop(t)
	data, err := os.ReadFile(filepath.Join(dir, "weft-data", "signing.key"))
	if err != nil {
		t.Fatal(err)
	}
	if k, err := serverkey.Parse(data); err != nil || k.ID != keyID || !bytes.Equal(k.Public(), pub) {
		t.Errorf("the published key is not the one in weft-data/signing.key: %v", err)
	}
}

func testBadConfigBinary(t *testing.T, bin string) {
	shared := t.TempDir()
	for _, c := range badConfigs(t, shared) {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			writeFile(t, dir, "weft.yaml", c.yaml)
			stdout, stderr, code := runWeft(t, bin, dir, cleanEnv(c.env...), "--config", "weft.yaml")
			if code == 0 {
				t.Fatalf("exit code 0 for a bad config; stderr:\n%s", stderr)
			}
			if stdout != "" {
				t.Errorf("stdout %q, want nothing", stdout)
			}
			wantOneLine(t, stderr, c.want)
			if strings.Contains(stderr, "goroutine") || strings.Contains(stderr, "panic") {
				t.Errorf("weft crashed: %s", stderr)
			}
		})
	}
	t.Run("missing config file", func(t *testing.T) {
		t.Parallel()
		_, stderr, code := runWeft(t, bin, t.TempDir(), cleanEnv(), "serve", "--config", "nope.yaml")
		if code == 0 {
			t.Fatal("exit code 0 for a missing config file")
		}
		wantOneLine(t, stderr, "nope.yaml")
	})
}

func testCommandsBinary(t *testing.T, bin string) {
	dir := t.TempDir()
	env := cleanEnv()

	stdout, _, code := runWeft(t, bin, dir, env, "version")
	if code != 0 || !strings.HasPrefix(stdout, "Weft ") {
		t.Errorf("weft version: exit %d, %q", code, stdout)
	}

	stdout, _, code = runWeft(t, bin, dir, env, "config", "example")
	var c config.Config
	dec := yaml.NewDecoder(strings.NewReader(stdout))
	dec.KnownFields(true)
	if err := dec.Decode(&c); code != 0 || err != nil {
		t.Fatalf("weft config example: exit %d, %v", code, err)
	}
	if !reflect.DeepEqual(c, config.Defaults()) {
		t.Errorf("weft config example parses to %+v, want the defaults", c)
	}

	key := filepath.Join(dir, "signing.key")
	if _, stderr, code := runWeft(t, bin, dir, env, "generate-keys", "--output", key); code != 0 {
		t.Fatalf("generate-keys: exit %d\n%s", code, stderr)
	}
	first, err := os.ReadFile(key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := serverkey.Parse(first); err != nil {
		t.Fatalf("generated key: %v", err)
	}
	_, stderr, code := runWeft(t, bin, dir, env, "generate-keys", "--output", key)
	if code == 0 {
		t.Fatal("generate-keys overwrote a key")
	}
	wantOneLine(t, stderr, key)
	if again, _ := os.ReadFile(key); !bytes.Equal(again, first) {
		t.Fatal("the existing key changed")
	}

	for _, args := range [][]string{{"--help"}, {"serve", "--help"}, {"help"}} {
		helpDir := t.TempDir()
		stdout, stderr, code := runWeft(t, bin, helpDir, env, args...)
		if code != 0 {
			t.Errorf("weft %s: exit %d\n%s", strings.Join(args, " "), code, stderr)
		}
		if !strings.Contains(stdout+stderr, "Usage") {
			t.Errorf("weft %s printed no usage", strings.Join(args, " "))
		}
		if strings.Contains(stderr, "help requested") {
			t.Errorf("weft %s reports help as an error: %q", strings.Join(args, " "), stderr)
		}
		if entries, _ := os.ReadDir(helpDir); len(entries) != 0 {
			t.Errorf("weft %s created %v: it started serving", strings.Join(args, " "), entries)
		}
	}

	if _, _, code := runWeft(t, bin, dir, env, "frobnicate"); code == 0 {
		t.Error("an unknown command exits 0")
	}
}
