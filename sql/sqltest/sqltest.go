// Package sqltest gives each test a fresh, migrated database on each engine.
package sqltest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/sql"
)

// PostgresEnv names the environment variable holding the URL of a
// PostgreSQL server on which tests may create databases.
const PostgresEnv = "WEFT_TEST_POSTGRES"

// Engines lists the engines every storage test runs on.
func Engines() []config.Engine { return []config.Engine{config.SQLite, config.Postgres} }

// URL returns the URL of a new, empty database on engine, dropped when the
// test ends. Without WEFT_TEST_POSTGRES a PostgreSQL test is skipped with a
// loud message, except in CI (CI set), where it fails: CI must never skip.
func URL(t testing.TB, engine config.Engine) string {
	t.Helper()
	switch engine {
	case config.SQLite:
		return "sqlite:" + filepath.Join(t.TempDir(), "weft.db")
	case config.Postgres:
		base := os.Getenv(PostgresEnv)
		if base == "" {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is not set: PostgreSQL tests must run in CI (scripts/test starts a server)", PostgresEnv)
			}
			t.Skipf("SKIPPING PostgreSQL: %s is not set (scripts/test sets it)", PostgresEnv)
		}
		return createPostgresDB(t, base)
	}
	t.Fatalf("unknown engine %q", engine)
	return ""
}

// Open returns a fresh migrated database on engine, closed when the test ends.
func Open(t testing.TB, engine config.Engine) *sql.DB {
	t.Helper()
	db, err := sql.Open(context.Background(), URL(t, engine), 10)
	if err != nil {
		t.Fatalf("open %s: %v", engine, err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// Run runs f as a subtest on each engine with a fresh database.
func Run(t *testing.T, f func(t *testing.T, db *sql.DB)) {
	for _, e := range Engines() {
		t.Run(string(e), func(t *testing.T) { f(t, Open(t, e)) })
	}
}

func createPostgresDB(t testing.TB, base string) string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Fatalf("connect to %s: %v", PostgresEnv, err)
	}
	defer conn.Close(ctx)
	b := make([]byte, 8)
	rand.Read(b)
	name := "weft_test_" + hex.EncodeToString(b)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create database: %v", err)
	}
	t.Cleanup(func() {
		c, err := pgx.Connect(ctx, base)
		if err != nil {
			return
		}
		defer c.Close(ctx)
		_, _ = c.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("%s: %v", PostgresEnv, err)
	}
	u.Path = "/" + name
	return fmt.Sprint(u)
}
