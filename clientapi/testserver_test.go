package clientapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/weft-chat/weft/clientapi"
	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/internal/bus"
	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/internal/serverkey"
	"github.com/weft-chat/weft/roomserver"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
	"github.com/weft-chat/weft/userapi"
)

// testServerName is the server name of every testServer.
const testServerName = "test.local"

// testServer is the client API alone, served over loopback HTTP, with its
// database and user service exposed so that tests can make accounts and
// sessions directly instead of going through registration and login.
type testServer struct {
	URL    string
	Config config.Config
	DB     *sql.DB
	Users  *userapi.Service
}

// newTestServer starts a client API, with a real roomserver on an embedded
// bus, on a fresh database on engine, stopped when the test ends. Rate
// limits are off and password hashing is cheap.
func newTestServer(t testing.TB, engine config.Engine) *testServer {
	t.Helper()
	cfg := config.Local()
	cfg.ServerName = testServerName
	cfg.Auth.BcryptCost = 4
	cfg.RateLimits.Enabled = false
	cfg.Registration.SharedSecret = "test-secret"
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
	rooms := startRooms(t, db, cfg.ServerName, log)
	router := mxhttp.NewRouter()
	clientapi.New(cfg, users, db, rooms, log).Routes(router)
	srv := httptest.NewServer(mxhttp.Stack{Log: log, MaxBodyBytes: cfg.Client.MaxBodyBytes}.Wrap(router))
	t.Cleanup(srv.Close)
	return &testServer{URL: srv.URL, Config: cfg, DB: db, Users: users}
}

// startRooms runs a roomserver over db until the test ends.
func startRooms(t testing.TB, db *sql.DB, serverName string, log *slog.Logger) clientapi.Rooms {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	b, err := bus.Open(ctx, bus.Config{StoreDir: t.TempDir()}, log)
	if err != nil {
		t.Fatal(err)
	}
	key, err := serverkey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	rs := roomserver.New(db, b, serverName, key, log)
	stop, err := rs.Serve(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); stop(); b.Close() })
	return roomserver.API{Client: roomserver.NewClient(b), Roomserver: rs}
}

// forEachEngine runs f as a subtest with a fresh testServer on each engine.
func forEachEngine(t *testing.T, f func(t *testing.T, s *testServer)) {
	for _, e := range sqltest.Engines() {
		t.Run(string(e), func(t *testing.T) { f(t, newTestServer(t, e)) })
	}
}

// testUser is a signed-in account.
type testUser struct {
	UserID    string
	Localpart string
	DeviceID  string
	Token     string
	// Client is a real client library signed in as the user.
	Client *mautrix.Client
}

// newUser creates a local account and a session for it.
func (s *testServer) newUser(t testing.TB, localpart string) *testUser {
	t.Helper()
	return s.makeUser(t, sql.Account{Localpart: localpart})
}

// newGuest creates a guest account and a session for it.
func (s *testServer) newGuest(t testing.TB, localpart string) *testUser {
	t.Helper()
	return s.makeUser(t, sql.Account{Localpart: localpart, IsGuest: true})
}

func (s *testServer) makeUser(t testing.TB, acct sql.Account) *testUser {
	t.Helper()
	ctx := context.Background()
	if err := s.DB.WithTx(ctx, func(q *sql.Queries) error { return q.CreateAccount(ctx, acct) }); err != nil {
		t.Fatalf("create account %s: %v", acct.Localpart, err)
	}
	sess, err := s.Users.StartSession(ctx, acct.Localpart, "", "", false)
	if err != nil {
		t.Fatalf("start session for %s: %v", acct.Localpart, err)
	}
	cli, err := mautrix.NewClient(s.URL, id.UserID(sess.UserID), sess.AccessToken)
	if err != nil {
		t.Fatal(err)
	}
	cli.DeviceID = id.DeviceID(sess.DeviceID)
	return &testUser{UserID: sess.UserID, Localpart: acct.Localpart, DeviceID: sess.DeviceID, Token: sess.AccessToken, Client: cli}
}

// response is an answer to a raw request.
type response struct {
	Status int
	Body   []byte
}

// JSON decodes the body into v, failing the test if it does not parse.
func (r response) JSON(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.Body, v); err != nil {
		t.Fatalf("response %d %s: %v", r.Status, r.Body, err)
	}
}

// Object decodes the body as a JSON object.
func (r response) Object(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	r.JSON(t, &m)
	return m
}

// expect fails the test unless the answer has status.
func (r response) expect(t testing.TB, status int) response {
	t.Helper()
	if r.Status != status {
		t.Fatalf("status %d, want %d; body %s", r.Status, status, r.Body)
	}
	return r
}

// expectError fails the test unless the answer is the Matrix error code
// with status.
func (r response) expectError(t testing.TB, status int, code string) {
	t.Helper()
	var e struct {
		Code  string `json:"errcode"`
		Error string `json:"error"`
	}
	_ = json.Unmarshal(r.Body, &e)
	if r.Status != status || e.Code != code {
		t.Fatalf("got %d %s, want %d %s; body %s", r.Status, e.Code, status, code, r.Body)
	}
}

// call makes a raw request. A path starting with "/_" is used as is, any
// other is under /_matrix/client/v3. The body is sent as is when it is a
// string or []byte, as JSON otherwise, and not at all when nil; token may be
// empty.
func (s *testServer) call(t testing.TB, method, path, token string, body any) response {
	t.Helper()
	if !strings.HasPrefix(path, "/_") {
		path = "/_matrix/client/v3" + path
	}
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		data, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, s.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{Status: resp.StatusCode, Body: data}
}
