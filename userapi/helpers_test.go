package userapi

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
)

const testServer = "weft.test"

// testAuth is the default auth config with the cheapest bcrypt cost.
func testAuth() config.Auth {
	a := config.Defaults().Auth
	a.BcryptCost = 4
	return a
}

// newTestService makes a service on db; nc may be nil.
func newTestService(t *testing.T, db *sql.DB, cfg config.Auth, nc *nats.Conn) *Service {
	t.Helper()
	s, err := New(db, testServer, cfg, nc, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// clock is a settable time source for s.now.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }
func useClock(s *Service) *clock         { c := &clock{t: time.Now()}; s.now = c.now; return c }

// createUser stores an account with a password, as registration would.
func createUser(t *testing.T, s *Service, localpart, password string) {
	t.Helper()
	hash, err := s.HashPassword(password)
	if err != nil {
		t.Fatal(err)
	}
	err = s.db.WithTx(context.Background(), func(q *sql.Queries) error {
		return q.CreateAccount(context.Background(), sql.Account{Localpart: localpart, PasswordHash: hash})
	})
	if err != nil {
		t.Fatal(err)
	}
}

// wantErr fails unless err is a Matrix error with status and errcode.
func wantErr(t *testing.T, err error, status int, code string) *mxhttp.Error {
	t.Helper()
	var me *mxhttp.Error
	if !errors.As(err, &me) {
		t.Fatalf("got error %v, want %d %s", err, status, code)
	}
	if me.Status != status || me.Code != code {
		t.Fatalf("got %d %q (%s), want %d %q", me.Status, me.Code, me.Message, status, code)
	}
	return me
}

// wireBody renders err as the client would receive it.
func wireBody(t *testing.T, err error) (int, map[string]any) {
	t.Helper()
	w := httptest.NewRecorder()
	mxhttp.WriteError(w, httptest.NewRequest("POST", "/", nil), err)
	var body map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
		t.Fatalf("error body %q: %v", w.Body.String(), err)
	}
	return w.Code, body
}
