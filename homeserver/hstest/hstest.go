// Package hstest starts whole homeservers in-process for end-to-end tests.
package hstest

import (
	"context"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/homeserver"
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
	var w io.Writer = io.Discard
	if os.Getenv("WEFT_TEST_LOG") != "" {
		w = os.Stderr
	}
	log := slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv, err := homeserver.New(context.Background(), cfg, log)
	if err != nil {
		t.Fatalf("start homeserver: %v", err)
	}
	if err := srv.Start(); err != nil {
		t.Fatalf("start homeserver: %v", err)
	}
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return &Server{Server: srv, Config: cfg,
		ClientURL:     "http://" + srv.Addr("client"),
		FederationURL: "https://" + srv.Addr("federation")}
}

// StartEngine is Start(t, Config(t, engine)).
func StartEngine(t testing.TB, engine config.Engine) *Server {
	t.Helper()
	return Start(t, Config(t, engine))
}
