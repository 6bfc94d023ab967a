package clientapi_test

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/weft-chat/weft/clientapi"
	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
	"github.com/weft-chat/weft/userapi"
)

// acctEnv is the client API on a fresh database with a configuration the
// test chooses: Handler is the full middleware stack over the real router,
// for in-process requests; the embedded testServer serves the same handler
// over loopback HTTP.
type acctEnv struct {
	*testServer
	Handler http.Handler
}

func newAcctEnv(t testing.TB, engine config.Engine, mutate func(*config.Config)) *acctEnv {
	t.Helper()
	cfg := config.Local()
	cfg.ServerName = testServerName
	cfg.Auth.BcryptCost = 4
	cfg.RateLimits.Enabled = false
	if mutate != nil {
		mutate(&cfg)
	}
	db, err := sql.Open(context.Background(), sqltest.URL(t, engine), 10)
	if err != nil {
		t.Fatalf("open %s: %v", engine, err)
	}
	t.Cleanup(func() { db.Close() })
	log := slog.New(slog.DiscardHandler)
	users, err := userapi.New(db, cfg.ServerName, cfg.Auth, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { users.Close() })
	router := mxhttp.NewRouter()
	clientapi.New(cfg, users, db, nil, log).Routes(router)
	h := mxhttp.Stack{Log: log, MaxBodyBytes: cfg.Client.MaxBodyBytes}.Wrap(router)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &acctEnv{testServer: &testServer{URL: srv.URL, Config: cfg, DB: db, Users: users}, Handler: h}
}

// BenchmarkAuthenticatedRequest is GET /account/whoami through the whole
// middleware stack and the real router, in-process, on SQLite: the fixed
// cost every authenticated endpoint pays (token cache hit, last-seen
// throttle, JSON out).
func BenchmarkAuthenticatedRequest(b *testing.B) {
	env := newAcctEnv(b, config.SQLite, nil)
	createPasswordAccount(b, env.DB, env.Users.HashPassword, sql.Account{Localpart: "alice"}, "wonderland")
	sess, err := env.Users.StartSession(context.Background(), "alice", "", "", false)
	if err != nil {
		b.Fatal(err)
	}
	req := httptest.NewRequest("GET", "/_matrix/client/v3/account/whoami", nil)
	req.Header.Set("Authorization", "Bearer "+sess.AccessToken)

	b.Run("in-process", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			w := httptest.NewRecorder()
			env.Handler.ServeHTTP(w, req)
			if w.Code != 200 {
				b.Fatalf("%d %s", w.Code, w.Body)
			}
		}
	})
	b.Run("loopback", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			r := env.call(b, "GET", "/account/whoami", sess.AccessToken, nil)
			if r.Status != 200 {
				b.Fatalf("%d %s", r.Status, r.Body)
			}
		}
	})
}

// BenchmarkLogin is a password login at bcrypt cost 4 (tests) and 12 (the
// default): bcrypt dominates, each step of cost doubling it.
func BenchmarkLogin(b *testing.B) {
	for _, cost := range []int{4, 12} {
		b.Run("bcrypt-"+strconv.Itoa(cost), func(b *testing.B) {
			env := newAcctEnv(b, config.SQLite, func(c *config.Config) { c.Auth.BcryptCost = cost })
			createPasswordAccount(b, env.DB, env.Users.HashPassword, sql.Account{Localpart: "alice"}, "wonderland")
			body := `{"type":"m.login.password","identifier":{"type":"m.id.user","user":"alice"},"password":"wonderland"}`
			b.ReportAllocs()
			for b.Loop() {
				req := httptest.NewRequest("POST", "/_matrix/client/v3/login", strings.NewReader(body))
				w := httptest.NewRecorder()
				env.Handler.ServeHTTP(w, req)
				if w.Code != 200 {
					b.Fatalf("%d %s", w.Code, w.Body)
				}
			}
		})
	}
}
