package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
	"github.com/weft-chat/weft/userapi"
)

// adminEnv is a config file on a fresh database, for the admin commands.
type adminEnv struct {
	cfgPath string
	dbURL   string
}

func newAdminEnv(t *testing.T, engine config.Engine) adminEnv {
	t.Helper()
	dir := t.TempDir()
	url := sqltest.URL(t, engine)
	yaml := "server_name: example.org\n" +
		"data_dir: " + filepath.Join(dir, "data") + "\n" +
		"database:\n  url: " + url + "\n" +
		"auth:\n  bcrypt_cost: 4\n"
	p := filepath.Join(dir, "weft.yaml")
	if err := os.WriteFile(p, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return adminEnv{cfgPath: p, dbURL: url}
}

// adminRun runs `weft admin args...` in-process with an empty environment.
func adminRun(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err = run(context.Background(), append([]string{"admin"}, args...), nil, &out, &errOut)
	return out.String(), errOut.String(), err
}

// open opens the env's database with the account service on it.
func (e adminEnv) open(t *testing.T) (*sql.DB, *userapi.Service) {
	t.Helper()
	db, err := sql.Open(context.Background(), e.dbURL, 2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	auth := config.Defaults().Auth
	auth.BcryptCost = 4
	users, err := userapi.New(db, "example.org", auth, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return db, users
}

func TestAdminCreateUser(t *testing.T) {
	ctx := context.Background()
	for _, engine := range sqltest.Engines() {
		t.Run(string(engine), func(t *testing.T) {
			env := newAdminEnv(t, engine)
			out, _, err := adminRun(t, "create-user", "--config", env.cfgPath, "--user", "alice", "--password", "wonderland")
			if err != nil || out != "created user @alice:example.org\n" {
				t.Fatalf("create-user: %q %v", out, err)
			}
			pwFile := filepath.Join(t.TempDir(), "pw")
			if err := os.WriteFile(pwFile, []byte("from a file\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			// A full user id is taken too, and lower-cased like
			// shared-secret registration.
			out, _, err = adminRun(t, "create-user", "--config", env.cfgPath, "--user", "@Bob:example.org", "--password-file", pwFile, "--admin")
			if err != nil || out != "created user @bob:example.org (server admin)\n" {
				t.Fatalf("create-user --admin: %q %v", out, err)
			}

			db, users := env.open(t)
			acc, err := users.CheckPassword(ctx, "alice", "wonderland")
			if err != nil || acc.IsAdmin {
				t.Errorf("alice cannot log in or is an admin: %+v %v", acc, err)
			}
			// The file's trailing newline is not part of the password.
			acc, err = users.CheckPassword(ctx, "bob", "from a file")
			if err != nil || !acc.IsAdmin {
				t.Errorf("bob cannot log in or is no admin: %+v %v", acc, err)
			}
			if name, err := db.ProfileField(ctx, "alice", "displayname"); err != nil || string(name) != `"alice"` {
				t.Errorf("display name %s %v", name, err)
			}

			for _, c := range []struct {
				args []string
				want string
			}{
				{[]string{"--user", "alice", "--password", "x"}, "M_USER_IN_USE"},
				{[]string{"--user", "bad name", "--password", "x"}, "M_INVALID_USERNAME"},
				{[]string{"--user", "12345", "--password", "x"}, "M_INVALID_USERNAME"},
				{[]string{"--user", "@carol:elsewhere.org", "--password", "x"}, "not a user id of example.org"},
				{[]string{"--user", "carol"}, "exactly one of --password"},
				{[]string{"--user", "carol", "--password", "x", "--password-file", pwFile}, "exactly one of --password"},
				{[]string{"--password", "x"}, "--user is required"},
				{[]string{"--user", "carol", "--password-file", filepath.Join(t.TempDir(), "missing")}, "no such file"},
				{[]string{"--user", "carol", "--password", "x", "extra"}, "unexpected argument"},
			} {
				_, _, err := adminRun(t, append([]string{"create-user", "--config", env.cfgPath}, c.args...)...)
				if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
					t.Errorf("create-user %v: %v, want one line with %q", c.args, err, c.want)
				}
			}
			if ok, _ := db.AccountExists(ctx, "carol"); ok {
				t.Error("a refused create-user made carol")
			}
		})
	}
}

func TestAdminRegistrationTokens(t *testing.T) {
	ctx := context.Background()
	for _, engine := range sqltest.Engines() {
		t.Run(string(engine), func(t *testing.T) {
			env := newAdminEnv(t, engine)
			cfg := []string{"--config", env.cfgPath}
			out, _, err := adminRun(t, "registration-token", "list", "--config", env.cfgPath)
			if err != nil || out != "no registration tokens\n" {
				t.Errorf("empty list: %q %v", out, err)
			}
			out, _, err = adminRun(t, append([]string{"registration-token", "create", "--uses", "2", "--expires", "72h", "--token", "invite-42"}, cfg...)...)
			if err != nil || !strings.HasPrefix(out, "created registration token invite-42 (uses allowed: 2, expires: ") || strings.Count(out, "\n") != 1 {
				t.Fatalf("create: %q %v", out, err)
			}
			out, _, err = adminRun(t, append([]string{"registration-token", "create"}, cfg...)...)
			if err != nil || !strings.Contains(out, "(uses allowed: unlimited, expires: never)") {
				t.Fatalf("create with defaults: %q %v", out, err)
			}
			generated := strings.Fields(out)[3]
			if len(generated) != 16 {
				t.Errorf("generated token %q", generated)
			}
			if _, _, err := adminRun(t, append([]string{"registration-token", "create", "--token", "invite-42"}, cfg...)...); err == nil ||
				!strings.Contains(err.Error(), "already exists") {
				t.Errorf("duplicate token: %v", err)
			}
			for _, args := range [][]string{{"--token", "bad token"}, {"--uses", "-1"}, {"--expires", "-1h"}, {"--uses", "many"}} {
				if _, _, err := adminRun(t, append(append([]string{"registration-token", "create"}, args...), cfg...)...); err == nil {
					t.Errorf("create %v: no error", args)
				}
			}

			// The tokens are the server's: usable as registration tokens.
			db, users := env.open(t)
			rt, err := db.RegistrationToken(ctx, "invite-42")
			if err != nil || rt.UsesAllowed == nil || *rt.UsesAllowed != 2 || rt.ExpiryTS == 0 {
				t.Errorf("stored token %+v %v", rt, err)
			}
			if ok, _ := users.RegistrationTokenUsable(ctx, generated); !ok {
				t.Error("the generated token is not usable")
			}

			out, _, err = adminRun(t, append([]string{"registration-token", "list"}, cfg...)...)
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if err != nil || len(lines) != 2 || !strings.HasPrefix(lines[0], "invite-42\tvalid\tused 0 of 2\texpires ") ||
				!strings.HasPrefix(lines[1], generated+"\tvalid\tused 0 of unlimited\texpires never") {
				t.Errorf("list: %q %v", out, err)
			}

			// Flags may follow the token.
			out, _, err = adminRun(t, "registration-token", "delete", "invite-42", "--config", env.cfgPath)
			if err != nil || out != "deleted registration token invite-42\n" {
				t.Errorf("delete: %q %v", out, err)
			}
			if _, _, err := adminRun(t, append([]string{"registration-token", "delete", "invite-42"}, cfg...)...); err == nil ||
				!strings.Contains(err.Error(), "M_NOT_FOUND") {
				t.Errorf("delete again: %v", err)
			}
			if _, _, err := adminRun(t, append([]string{"registration-token", "delete"}, cfg...)...); err == nil {
				t.Error("delete without a token: no error")
			}
			if _, err := db.RegistrationToken(ctx, "invite-42"); !errors.Is(err, sql.ErrNotFound) {
				t.Errorf("deleted token still there: %v", err)
			}
		})
	}
}

func TestAdminHelp(t *testing.T) {
	t.Chdir(t.TempDir())
	for _, args := range [][]string{
		{"create-user", "--help"},
		{"registration-token", "create", "--help"},
		{"registration-token", "list", "--help"},
		{"registration-token", "delete", "--help"},
	} {
		_, stderr, err := adminRun(t, args...)
		if !errors.Is(err, flag.ErrHelp) || !strings.Contains(stderr, "Usage: weft admin") || !strings.Contains(stderr, "-config") {
			t.Errorf("admin %s: %v, stderr %q", strings.Join(args, " "), err, stderr)
		}
	}
	for _, args := range [][]string{{"--help"}, {"registration-token", "--help"}} {
		_, stderr, err := adminRun(t, args...)
		if err != nil || !strings.Contains(stderr, "create") || !strings.Contains(stderr, "delete") {
			t.Errorf("admin %s: %v, stderr %q", strings.Join(args, " "), err, stderr)
		}
	}
	for _, args := range [][]string{{"frobnicate"}, {"registration-token"}, {"registration-token", "frobnicate"}} {
		if _, _, err := adminRun(t, args...); err == nil {
			t.Errorf("admin %s: no error", strings.Join(args, " "))
		}
	}
	// Help touched no database.
	if entries, _ := os.ReadDir("."); len(entries) != 0 {
		t.Errorf("help created files: %v", entries)
	}
}
