// Package hstest starts whole homeservers in-process for end-to-end tests.
package hstest

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/homeserver"
	"github.com/weft-chat/weft/internal/serverkey"
	"github.com/weft-chat/weft/sql/sqltest"
)

// Server is a running test homeserver.
type Server struct {
	*homeserver.Server
	Config config.Config
	// ClientURL is the base URL of the client API, e.g. http://127.0.0.1:1234.
	ClientURL string
	// FederationURL is the base URL of the federation API (https).
	FederationURL string
}

// Config returns a test configuration on engine: loopback listeners on free
// ports, a fresh database and data directory, open registration, cheap
// password hashing, no rate limits, and the shared secret "test-secret".
func Config(t testing.TB, engine config.Engine) config.Config {
	cfg := config.Local()
	cfg.DataDir = t.TempDir()
	cfg.SigningKeyPath = cfg.DataDir + "/signing.key"
	cfg.Database.URL = sqltest.URL(t, engine)
	cfg.Client.Listen = "127.0.0.1:0"
	cfg.Federation.Listen = "127.0.0.1:0"
	cfg.Auth.BcryptCost = 4
	cfg.RateLimits.Enabled = false
	cfg.Registration.SharedSecret = "test-secret"
	cfg.ShutdownGrace = 5 * time.Second
	return cfg
}

// Start runs a homeserver with cfg until the test ends. Logs go to the test
// output when WEFT_TEST_LOG is set.
func Start(t testing.TB, cfg config.Config) *Server {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("test config: %v", err)
	}
	s := &Server{Config: cfg}
	s.start(t)
	return s
}

func (s *Server) start(t testing.TB) {
	t.Helper()
	var w io.Writer = io.Discard
	if os.Getenv("WEFT_TEST_LOG") != "" {
		w = os.Stderr
	}
	log := slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv, err := homeserver.New(context.Background(), s.Config, log)
	if err != nil {
		t.Fatalf("start homeserver: %v", err)
	}
	if err := srv.Start(); err != nil {
		t.Fatalf("start homeserver: %v", err)
	}
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	s.Server = srv
	s.ClientURL = "http://" + srv.Addr("client")
	s.FederationURL = "https://" + srv.Addr("federation")
	// A restart binds the same ports, so that clients and other servers
	// find the server where it was.
	s.Config.Client.Listen = srv.Addr("client")
	s.Config.Federation.Listen = srv.Addr("federation")
}

// Stop shuts the server down as an operator would: its listeners, bus and
// database close; its database and data directory stay for Restart.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	if err := s.Shutdown(context.Background()); err != nil {
		t.Errorf("stop homeserver: %v", err)
	}
}

// Restart starts a stopped server again on the same configuration, ports,
// database and data directory.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.start(t)
}

// FederationConfig is Config for a server that federates on loopback: its
// server name is "127.0.0.1:<port>" of its federation listener (an IP
// literal with a port needs no DNS or well-known), and it may connect to
// loopback addresses. Its self-signed certificate is made now, in its
// data directory, so that peers can trust it (see StartFederated).
func FederationConfig(t testing.TB, engine config.Engine) config.Config {
	t.Helper()
	cfg := Config(t, engine)
	// The port is chosen before the server starts because the server name
	// carries it; the kernel does not hand a just-closed port out again at
	// once.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg.ServerName = addr
	cfg.Federation.Listen = addr
	cfg.Federation.AllowPrivateNetworks = []string{"127.0.0.0/8", "::1/128"}
	if _, err := serverkey.LoadOrMakeCertificate("", "", cfg.DataDir, "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// StartFederated starts one server per config (from FederationConfig), each
// trusting the others' certificates through federation.trusted_ca_file, so
// their TLS is verified as in production.
func StartFederated(t testing.TB, cfgs ...config.Config) []*Server {
	t.Helper()
	var pems []byte
	for _, c := range cfgs {
		pem, err := os.ReadFile(filepath.Join(c.DataDir, "federation.crt"))
		if err != nil {
			t.Fatalf("certificate of %s: %v", c.ServerName, err)
		}
		pems = append(pems, pem...)
	}
	caFile := filepath.Join(t.TempDir(), "federation-ca.pem")
	if err := os.WriteFile(caFile, pems, 0o600); err != nil {
		t.Fatal(err)
	}
	out := make([]*Server, len(cfgs))
	for i, c := range cfgs {
		c.Federation.TrustedCAFile = caFile
		out[i] = Start(t, c)
	}
	return out
}

// StartEngine is Start(t, Config(t, engine)).
func StartEngine(t testing.TB, engine config.Engine) *Server {
	t.Helper()
	return Start(t, Config(t, engine))
}
