package complement

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
	"maunium.net/go/mautrix/synapseadmin"

	"github.com/weft-chat/weft/internal/serverkey/testca"
	"github.com/weft-chat/weft/internal/testclient"
)

// The contract's figures (complement/internal/docker): a server is ready
// when /versions answers 200 within 30 s, and docker stop waits 10 s
// before it kills.
const (
	readyWithin   = 30 * time.Second
	stopGrace     = 10 * time.Second
	sharedSecret  = "complement"
	password      = "complement-password"
	remoteTimeout = 20 * time.Second
)

// TestEntrypoint runs entrypoint.sh as Complement runs the image, with a
// directory standing in for each container's root: hs1 is started,
// stopped cleanly, started, killed and started again on the same
// directory, keeping its users and rooms; then hs2 starts next to it and
// the two federate through the CA they share.
func TestEntrypoint(t *testing.T) {
	shell := lookShell(t)
	binDir := buildWeft(t)
	hs1 := newContainer(t, shell, binDir, "hs1")
	hs2 := newContainer(t, shell, binDir, "hs2")
	// Complement copies one CA into every container.
	ca := testca.Write(t, filepath.Join(hs1.root, "complement", "ca"), testca.Options{})
	copyCA(t, ca, filepath.Join(hs2.root, "complement", "ca"))
	// Docker's network resolves hsN to its container, whose federation
	// port is 8448; here every name maps to its own loopback port.
	hosts := "WEFT_FEDERATION_STATIC_HOSTS=hs1=" + hs1.fedAddr + ",hs2=" + hs2.fedAddr
	hs1.env = append(hs1.env, hosts)
	hs2.env = append(hs2.env, hosts)
	ctx := context.Background()

	hs1.start(t)
	first := hs1.certificate(t, ca)
	alice := hs1.registerShared(t, "alice")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Name: "kept across restarts"})
	if err != nil {
		t.Fatalf("create room: %v", err)
	}
	for _, f := range []string{"var/lib/weft/weft.db", "var/lib/weft/signing.key"} {
		if _, err := os.Stat(filepath.Join(hs1.root, f)); err != nil {
			t.Errorf("the state is not in the container's data directory: %v", err)
		}
	}

	hs1.stop(t)
	hs1.start(t)
	if again := hs1.certificate(t, ca); again.SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Error("the second start served the first start's certificate; it must issue a fresh one")
	}
	alice = hs1.login(t, "alice")
	hasRoom(t, alice, room.RoomID, "after a clean restart")
	hs1.registerShared(t, "bob")

	// An unclean stop: what was acknowledged survives it.
	hs1.kill(t)
	hs1.start(t)
	hs1.login(t, "bob")
	alice = hs1.login(t, "alice")
	hasRoom(t, alice, room.RoomID, "after a kill")

	hs2.start(t)
	hs2.certificate(t, ca)
	fed := federation{ca: ca, a: hs1, b: hs2, alice: alice, carol: testclient.Register(t, hs2.clientURL, "carol")}
	// Each check drives one server's outgoing federation to the other.
	for _, c := range []struct {
		name  string
		check func(t *testing.T, f federation)
	}{
		{"hs2 fetches hs1's server keys", serverKeysThroughNotary},
		{"hs2 queries the device keys of a user of hs1", remoteDeviceKeys},
		{"hs2 looks up the profile of a user of hs1", remoteProfile},
		{"a user of hs2 joins a room of hs1 and they talk", joinAndTalk},
	} {
		t.Run(c.name, func(t *testing.T) { c.check(t, fed) })
	}
}

// TestEntrypointDefaults runs entrypoint.sh with a stand-in weft that
// records its environment: what the container gets when nothing is
// overridden, and that the environment overrides it.
func TestEntrypointDefaults(t *testing.T) {
	shell := lookShell(t)
	binDir := t.TempDir()
	envFile := filepath.Join(t.TempDir(), "env")
	fake := "#!/bin/sh\necho \"$@\" > '" + envFile + ".args'\nenv > '" + envFile + "'\n"
	if err := os.WriteFile(filepath.Join(binDir, "weft"), []byte(fake), 0o755); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	ca := filepath.Join(root, "complement", "ca")
	for _, f := range []string{"complement/ca/ca.crt", "complement/ca/ca.key", "complement/appservice/bridge.yaml"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, f)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	run := func(extra ...string) (map[string]string, string) {
		cmd := exec.Command(shell, entrypoint(t))
		cmd.Env = append(baseEnv(binDir), append([]string{"SERVER_NAME=hs3", "CONTAINER_ROOT=" + root}, extra...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("entrypoint: %v\n%s", err, out)
		}
		data, err := os.ReadFile(envFile)
		if err != nil {
			t.Fatal(err)
		}
		env := map[string]string{}
		for line := range strings.SplitSeq(string(data), "\n") {
			if k, v, ok := strings.Cut(line, "="); ok && strings.HasPrefix(k, "WEFT_") {
				env[k] = v
			}
		}
		return env, string(out)
	}
	env, out := run()
	data := filepath.Join(root, "var", "lib", "weft")
	want := map[string]string{
		"WEFT_SERVER_NAME":                       "hs3",
		"WEFT_DATA_DIR":                          data,
		"WEFT_DATABASE_URL":                      "sqlite:" + data + "/weft.db",
		"WEFT_CLIENT_LISTEN":                     ":8008",
		"WEFT_FEDERATION_LISTEN":                 ":8448",
		"WEFT_FEDERATION_TLS_CA_CERT":            ca + "/ca.crt",
		"WEFT_FEDERATION_TLS_CA_KEY":             ca + "/ca.key",
		"WEFT_FEDERATION_TRUSTED_CA_FILE":        ca + "/ca.crt",
		"WEFT_FEDERATION_ALLOW_PRIVATE_NETWORKS": "0.0.0.0/0,::/0",
		"WEFT_FEDERATION_KEY_NOTARIES":           "",
		"WEFT_REGISTRATION_ENABLED":              "true",
		"WEFT_REGISTRATION_SHARED_SECRET":        "complement",
		"WEFT_RATE_LIMITS_ENABLED":               "false",
		"WEFT_AUTH_BCRYPT_COST":                  "4",
	}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("%s = %q, want %q", k, env[k], v)
		}
	}
	if args, _ := os.ReadFile(envFile + ".args"); strings.TrimSpace(string(args)) != "serve" {
		t.Errorf("weft started with %q, want serve", args)
	}
	if !strings.Contains(out, "bridge.yaml not loaded") {
		t.Errorf("an application service file went unmentioned; output:\n%s", out)
	}

	// Complement's pass-through (or a test) overrides any default, but
	// SERVER_NAME names the server.
	env, _ = run("WEFT_CLIENT_LISTEN=127.0.0.1:1234", "WEFT_LOGGING_LEVEL=debug", "WEFT_SERVER_NAME=other")
	if env["WEFT_CLIENT_LISTEN"] != "127.0.0.1:1234" || env["WEFT_LOGGING_LEVEL"] != "debug" || env["WEFT_SERVER_NAME"] != "hs3" {
		t.Errorf("overrides: listen %q, logging %q, server name %q", env["WEFT_CLIENT_LISTEN"], env["WEFT_LOGGING_LEVEL"], env["WEFT_SERVER_NAME"])
	}

	cmd := exec.Command(shell, entrypoint(t))
	cmd.Env = append(baseEnv(binDir), "CONTAINER_ROOT="+root)
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "SERVER_NAME") {
		t.Errorf("without SERVER_NAME: err %v, output %q; want a failure naming it", err, out)
	}
}

// federation is what the federation checks work with: the shared CA, the
// two servers and a signed-in user on each.
type federation struct {
	ca           testca.CA
	a, b         *container
	alice, carol *mautrix.Client
}

// serverKeysThroughNotary asks hs2, as a notary, for hs1's keys: hs2
// fetches them from hs1 through its federation client (static host, the
// CA's certificate) and answers with hs1's document signed by both.
func serverKeysThroughNotary(t *testing.T, f federation) {
	type keyDoc struct {
		ServerName string                       `json:"server_name"`
		VerifyKeys map[string]map[string]string `json:"verify_keys"`
		Signatures map[string]map[string]string `json:"signatures"`
	}
	var own keyDoc
	f.a.federationGet(t, f.ca, "/_matrix/key/v2/server", &own)
	var notary struct {
		ServerKeys []keyDoc `json:"server_keys"`
	}
	f.b.federationGet(t, f.ca, "/_matrix/key/v2/query/"+f.a.name, &notary)
	if len(notary.ServerKeys) != 1 {
		t.Fatalf("hs2 answered %d key documents for hs1, want 1", len(notary.ServerKeys))
	}
	got := notary.ServerKeys[0]
	if got.ServerName != f.a.name || len(own.VerifyKeys) == 0 || fmt.Sprint(got.VerifyKeys) != fmt.Sprint(own.VerifyKeys) {
		t.Errorf("hs2 says %s has keys %v; hs1 publishes %v", got.ServerName, got.VerifyKeys, own.VerifyKeys)
	}
	if got.Signatures[f.a.name] == nil || got.Signatures[f.b.name] == nil {
		t.Errorf("the notary's document is signed by %v, want hs1 and hs2", slices.Sorted(maps.Keys(got.Signatures)))
	}
}

// remoteDeviceKeys has carol on hs2 query alice's device keys: hs2 sends
// a signed request to hs1, which fetches hs2's key from hs2 to check it.
func remoteDeviceKeys(t *testing.T, f federation) {
	ctx := context.Background()
	keys := testclient.SignedDeviceKeys(t, f.alice)
	if _, err := f.alice.UploadKeys(ctx, &mautrix.ReqUploadKeys{DeviceKeys: keys}); err != nil {
		t.Fatalf("upload alice's device keys: %v", err)
	}
	resp, err := f.carol.QueryKeys(ctx, &mautrix.ReqQueryKeys{
		DeviceKeys: mautrix.DeviceKeysRequest{f.alice.UserID: {}},
		Timeout:    remoteTimeout.Milliseconds(),
	})
	if err != nil {
		t.Fatalf("query keys on hs2: %v", err)
	}
	if len(resp.Failures) != 0 {
		t.Fatalf("hs2 could not ask hs1: failures %v", resp.Failures)
	}
	edID := id.NewDeviceKeyID(id.KeyAlgorithmEd25519, f.alice.DeviceID)
	got := resp.DeviceKeys[f.alice.UserID][f.alice.DeviceID].Keys[edID]
	if got == "" || got != keys.Keys[edID] {
		t.Errorf("alice's ed25519 key on hs2 is %q, want %q (device keys %v)", got, keys.Keys[edID], resp.DeviceKeys)
	}
}

// remoteProfile has carol on hs2 read alice's display name, which hs2
// asks hs1 for.
func remoteProfile(t *testing.T, f federation) {
	ctx := context.Background()
	if err := f.alice.SetDisplayName(ctx, "Alice of hs1"); err != nil {
		t.Fatal(err)
	}
	prof, err := f.carol.GetProfile(ctx, f.alice.UserID)
	if err != nil || prof.DisplayName != "Alice of hs1" {
		t.Fatalf("alice's profile on hs2: %+v, %v", prof, err)
	}
}

// joinAndTalk has carol on hs2 join a public room of alice's on hs1
// (make_join and send_join through the CA), then each sees the other's
// message in their sync.
func joinAndTalk(t *testing.T, f federation) {
	ctx := context.Background()
	room, err := f.alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Across the CA"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.carol.JoinRoom(ctx, room.RoomID.String(), &mautrix.ReqJoinRoom{Via: []string{f.a.name}}); err != nil {
		t.Fatalf("carol joins through hs1: %v", err)
	}
	if _, err := f.alice.SendText(ctx, room.RoomID, "hello from hs1"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.carol.SendText(ctx, room.RoomID, "hello from hs2"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		cli  *mautrix.Client
		want string
	}{{f.carol, "hello from hs1"}, {f.alice, "hello from hs2"}} {
		if !seesText(ctx, c.cli, room.RoomID, c.want) {
			t.Errorf("%s never saw %q", c.cli.UserID, c.want)
		}
	}
}

// seesText syncs until the room's timeline shows body, for up to 20 s.
func seesText(ctx context.Context, cli *mautrix.Client, roomID id.RoomID, body string) bool {
	since := ""
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); {
		resp, err := cli.SyncRequest(ctx, 1000, since, "", false, "")
		if err != nil {
			return false
		}
		since = resp.NextBatch
		if jr, ok := resp.Rooms.Join[roomID]; ok {
			for _, ev := range jr.Timeline.Events {
				if b, _ := ev.Content.Raw["body"].(string); b == body {
					return true
				}
			}
		}
	}
	return false
}

// container is one homeserver run by entrypoint.sh on a root directory
// that persists across its starts, as a container's filesystem does.
type container struct {
	name      string
	shell     string
	root      string
	clientURL string
	fedAddr   string
	env       []string
	logPath   string

	// The current run: cmd, and exited closed when it has ended (then
	// waitErr is its outcome).
	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
	starts  int
}

func newContainer(t *testing.T, shell, binDir, name string) *container {
	t.Helper()
	c := &container{name: name, shell: shell, root: t.TempDir(), fedAddr: freeAddr(t)}
	clientAddr := freeAddr(t)
	c.clientURL = "http://" + clientAddr
	c.logPath = filepath.Join(t.TempDir(), name+".log")
	c.env = append(baseEnv(binDir), "SERVER_NAME="+name, "CONTAINER_ROOT="+c.root,
		"WEFT_CLIENT_LISTEN="+clientAddr, "WEFT_FEDERATION_LISTEN="+c.fedAddr)
	t.Cleanup(func() {
		if c.running() {
			c.cmd.Process.Kill()
			<-c.exited
		}
		if t.Failed() {
			if log, err := os.ReadFile(c.logPath); err == nil {
				t.Logf("%s's log:\n%s", name, log)
			}
		}
	})
	return c
}

func (c *container) running() bool {
	if c.exited == nil {
		return false
	}
	select {
	case <-c.exited:
		return false
	default:
		return true
	}
}

// start runs the entrypoint and waits until the server is ready as
// Complement judges it.
func (c *container) start(t *testing.T) {
	t.Helper()
	c.starts++
	log, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(log, "=== start %d\n", c.starts)
	cmd := exec.Command(c.shell, entrypoint(t))
	cmd.Env, cmd.Stdout, cmd.Stderr = c.env, log, log
	began := time.Now()
	if err := cmd.Start(); err != nil {
		log.Close()
		t.Fatal(err)
	}
	c.cmd, c.exited = cmd, make(chan struct{})
	go func(exited chan struct{}) {
		c.waitErr = cmd.Wait()
		log.Close()
		close(exited)
	}(c.exited)

	client := &http.Client{Timeout: 2 * time.Second}
	for {
		resp, err := client.Get(c.clientURL + "/_matrix/client/versions")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				t.Logf("%s start %d: ready in %v", c.name, c.starts, time.Since(began).Round(time.Millisecond))
				return
			}
		}
		select {
		case <-c.exited:
			t.Fatalf("%s start %d: exited before it was ready: %v", c.name, c.starts, c.waitErr)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Since(began) > readyWithin {
			t.Fatalf("%s start %d: /versions did not answer 200 within %v (last error %v)", c.name, c.starts, readyWithin, err)
		}
	}
}

// stop is docker stop: SIGTERM, then the server has stopGrace to exit,
// cleanly.
func (c *container) stop(t *testing.T) {
	t.Helper()
	began := time.Now()
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.exited:
	case <-time.After(stopGrace):
		c.kill(t)
		t.Fatalf("%s did not stop within %v of SIGTERM", c.name, stopGrace)
	}
	if c.waitErr != nil {
		t.Fatalf("%s stopped with %v", c.name, c.waitErr)
	}
	t.Logf("%s stopped in %v", c.name, time.Since(began).Round(time.Millisecond))
}

// kill is an unclean stop (docker kill, or the end of the grace period).
func (c *container) kill(t *testing.T) {
	t.Helper()
	if err := c.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Fatal(err)
	}
	<-c.exited
}

// certificate checks the federation listener's certificate the way
// another server of the test federation does: it must chain to the CA and
// name the server. It returns the certificate.
func (c *container) certificate(t *testing.T, ca testca.CA) *x509.Certificate {
	t.Helper()
	conn, err := tls.Dial("tcp", c.fedAddr, &tls.Config{RootCAs: ca.Pool, ServerName: c.name})
	if err != nil {
		t.Fatalf("%s's federation certificate does not verify with the CA for the name %s: %v", c.name, c.name, err)
	}
	defer conn.Close()
	state := conn.ConnectionState()
	leaf := state.PeerCertificates[0]
	if !slices.Contains(leaf.DNSNames, c.name) {
		t.Errorf("%s's certificate names %v", c.name, leaf.DNSNames)
	}
	if chain := state.VerifiedChains[0]; !chain[len(chain)-1].Equal(ca.Cert) {
		t.Errorf("%s's certificate chains to %v, not to the CA", c.name, chain[len(chain)-1].Subject)
	}
	return leaf
}

// registerShared registers localpart with the shared secret, through
// mautrix's implementation of Synapse's admin API.
func (c *container) registerShared(t *testing.T, localpart string) *mautrix.Client {
	t.Helper()
	cli, err := mautrix.NewClient(c.clientURL, "", "")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := (&synapseadmin.Client{Client: cli}).SharedSecretRegister(context.Background(), sharedSecret,
		synapseadmin.ReqSharedSecretRegister{Username: localpart, Password: password})
	if err != nil {
		t.Fatalf("shared-secret registration of %s on %s: %v", localpart, c.name, err)
	}
	if want := id.NewUserID(localpart, c.name); resp.UserID != want || resp.AccessToken == "" {
		t.Fatalf("shared-secret registration: user %s token %q, want %s and a token", resp.UserID, resp.AccessToken, want)
	}
	cli.SetCredentials(resp.UserID, resp.AccessToken)
	cli.DeviceID = resp.DeviceID
	return cli
}

// login signs localpart in with its password.
func (c *container) login(t *testing.T, localpart string) *mautrix.Client {
	t.Helper()
	cli, err := mautrix.NewClient(c.clientURL, "", "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = cli.Login(context.Background(), &mautrix.ReqLogin{Type: mautrix.AuthTypePassword,
		Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: localpart},
		Password:   password, StoreCredentials: true})
	if err != nil {
		t.Fatalf("%s start %d: login as %s: %v", c.name, c.starts, localpart, err)
	}
	return cli
}

// federationGet GETs path from the federation listener over TLS trusting
// only the CA, and decodes the 200 answer into out.
func (c *container) federationGet(t *testing.T, ca testca.CA, path string, out any) {
	t.Helper()
	client := &http.Client{Timeout: remoteTimeout, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: ca.Pool, ServerName: c.name}}}
	defer client.CloseIdleConnections()
	resp, err := client.Get("https://" + c.fedAddr + path)
	if err != nil {
		t.Fatalf("GET %s on %s: %v", path, c.name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s on %s: HTTP %d", path, c.name, resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		t.Fatalf("GET %s on %s: %v", path, c.name, err)
	}
}

func hasRoom(t *testing.T, cli *mautrix.Client, roomID id.RoomID, when string) {
	t.Helper()
	resp, err := cli.JoinedRooms(context.Background())
	if err != nil {
		t.Fatalf("joined rooms %s: %v", when, err)
	}
	if !slices.Contains(resp.JoinedRooms, roomID) {
		t.Fatalf("joined rooms %s: %v, want %s among them", when, resp.JoinedRooms, roomID)
	}
}

func lookShell(t *testing.T) string {
	t.Helper()
	shell, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh on PATH: entrypoint.sh needs a POSIX shell")
	}
	return shell
}

func entrypoint(t *testing.T) string {
	t.Helper()
	p, err := filepath.Abs("entrypoint.sh")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// buildWeft builds the weft binary, as the Dockerfile does, into a
// directory of its own and returns that directory (for PATH).
func buildWeft(t *testing.T) string {
	t.Helper()
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goTool); err != nil {
		if goTool, err = exec.LookPath("go"); err != nil {
			t.Fatalf("no go command to build weft with: %v", err)
		}
	}
	dir := t.TempDir()
	began := time.Now()
	cmd := exec.Command(goTool, "build", "-o", filepath.Join(dir, "weft"), "github.com/weft-chat/weft/cmd/weft")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	t.Logf("built weft in %v", time.Since(began).Round(time.Millisecond))
	return dir
}

// baseEnv is a container's environment: no WEFT_ variable from the test's
// own environment, and binDir first on PATH.
func baseEnv(binDir string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "WEFT_") && !strings.HasPrefix(kv, "PATH=") && !strings.HasPrefix(kv, "CONTAINER_ROOT=") && !strings.HasPrefix(kv, "SERVER_NAME=") {
			env = append(env, kv)
		}
	}
	return append(env, "PATH="+binDir+string(os.PathListSeparator)+os.Getenv("PATH"))
}

// freeAddr returns a loopback address with a port free right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func copyCA(t *testing.T, ca testca.CA, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{ca.CertFile, ca.KeyFile} {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}
