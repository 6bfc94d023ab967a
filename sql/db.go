// Package sql is Weft's database access for every component: the connection
// pool, the embedded migrations and one file per table group. PostgreSQL and
// SQLite run the same SQL text; the dialect shim below covers the few places
// where the engines differ.
package sql

import (
	"context"
	stdsql "database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	_ "modernc.org/sqlite" // the pure-Go SQLite driver, registered as "sqlite"

	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/internal/periodic"
)

// DB is an open, migrated database.
type DB struct {
	// Queries runs the table methods outside a transaction.
	Queries
	db     *stdsql.DB
	engine config.Engine
	pool   *pgxpool.Pool // PostgreSQL only
	// nids are the NIDs reserved for pipelines, per table (PostgreSQL).
	nids [len(nidColumns)]nidBlock
	// stopCheckpoints stops SQLite's checkpointer (nil on PostgreSQL).
	stopCheckpoints func()
}

// ErrNotFound is returned by lookups that match no row.
var ErrNotFound = errors.New("not found")

// Open connects to the database named by rawURL (see config.ParseDatabaseURL)
// and applies pending migrations. It refuses a schema newer than this binary.
func Open(ctx context.Context, rawURL string, maxConns int) (*DB, error) {
	engine, dsn, err := config.ParseDatabaseURL(rawURL)
	if err != nil {
		return nil, err
	}
	d := &DB{engine: engine}
	d.Queries.dialect = dialects[engine]
	switch engine {
	case config.Postgres:
		pcfg, err := pgxpool.ParseConfig(dsn)
		if err != nil {
			return nil, fmt.Errorf("database url: %w", err)
		}
		pcfg.MaxConns = int32(maxConns)
		d.pool, err = pgxpool.NewWithConfig(ctx, pcfg)
		if err != nil {
			return nil, fmt.Errorf("connect to postgres: %w", err)
		}
		// database/sql's idle connections stay few (2, its default): each
		// holds one of the pool's, which the pipelines take from the pool
		// directly. Closing the others returns them to the pool, which
		// keeps them open with their prepared statements.
		d.db = stdlib.OpenDBFromPool(d.pool)
		d.Queries.q = d.db
	case config.SQLite:
		if dir := filepath.Dir(dsn); dir != "" {
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return nil, fmt.Errorf("sqlite directory: %w", err)
			}
		}
		d.db, err = stdsql.Open("sqlite", sqliteDSN(dsn))
		if err != nil {
			return nil, fmt.Errorf("open sqlite: %w", err)
		}
		d.Queries.stmts = newStmtCache(d.db)
		d.Queries.writes = newWriteLock()
		d.Queries.q = cachedDB{d.db, d.Queries.stmts, d.Queries.writes}
		// WAL lets readers run beside the one writer; more connections than
		// this only queue on SQLite's single write lock.
		d.db.SetMaxOpenConns(min(maxConns, 8))
		// Keep them all: database/sql keeps 2 idle connections by default
		// and closes the others after each use, and a new SQLite connection
		// reads the schema and prepares every statement again (a third of
		// the CPU of /sync under load went there).
		d.db.SetMaxIdleConns(min(maxConns, 8))
	}
	if err := d.db.PingContext(ctx); err != nil {
		d.Close()
		return nil, fmt.Errorf("connect to %s database: %w", engine, err)
	}
	if err := d.migrate(ctx); err != nil {
		d.Close()
		return nil, err
	}
	if engine == config.SQLite {
		d.stopCheckpoints = periodic.Start(context.WithoutCancel(ctx), checkpointInterval, d.checkpoint)
	}
	return d, nil
}

// checkpointInterval is how often SQLite's write-ahead log is copied back
// into the database.
const checkpointInterval = time.Second

// checkpoint copies the write-ahead log back into the database, as far as
// no reader still needs it. SQLite would otherwise do it inside the commit
// that crosses 1,000 log pages (wal_autocheckpoint, turned off in
// sqliteDSN), which then takes tens of milliseconds longer than the
// others: a latency spike for that request and everything queued behind
// it.
func (d *DB) checkpoint(ctx context.Context) {
	// PASSIVE waits for no reader or writer; a failure is retried at the
	// next tick.
	_, _ = d.db.ExecContext(ctx, "PRAGMA wal_checkpoint(PASSIVE)")
}

// sqliteDSN sets the pragmas Weft relies on: WAL for concurrent readers,
// FULL sync so a commit survives power loss, a busy timeout instead of
// immediate SQLITE_BUSY, temporary files in memory (a statement that may
// fail halfway, like a many-row INSERT ... ON CONFLICT, journals the
// pages it changes: in a file, a write syscall per page), and immediate
// transactions so a reader never has to upgrade to a writer
// mid-transaction (which deadlocks under load).
func sqliteDSN(path string) string {
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(FULL)")
	q.Add("_pragma", "foreign_keys(ON)")
	q.Add("_pragma", "wal_autocheckpoint(0)")
	q.Add("_pragma", "temp_store(MEMORY)")
	q.Set("_txlock", "immediate")
	return "file:" + path + "?" + q.Encode()
}

// Engine tells which engine this database runs on.
func (d *DB) Engine() config.Engine { return d.engine }

// Close closes every connection.
func (d *DB) Close() error {
	if d.stopCheckpoints != nil {
		d.stopCheckpoints()
	}
	if d.stmts != nil {
		d.stmts.close()
	}
	err := d.db.Close()
	if d.pool != nil {
		d.pool.Close()
	}
	return err
}

// querier is what both *stdsql.DB and *stdsql.Tx offer, so table code runs
// inside or outside a transaction.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (stdsql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*stdsql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *stdsql.Row
}

// Queries carries every table method. DB embeds one over the pool and
// WithTx hands one over a transaction, so each query is written once.
type Queries struct {
	q querier
	// stmts is SQLite's statement cache (nil on PostgreSQL).
	stmts *stmtCache
	// writes queues the transactions begun over the pool (nil on
	// PostgreSQL, and inside a transaction).
	writes  writeLock
	dialect dialect
}

// WithTx runs fn in one transaction, committing when fn returns nil and
// rolling back otherwise.
func (d *DB) WithTx(ctx context.Context, fn func(*Queries) error) error {
	return d.Queries.ensureTx(ctx, fn)
}

// ensureTx runs fn in the current transaction, or in a new one when t runs
// over the pool, for writes whose statements must commit together.
func (t *Queries) ensureTx(ctx context.Context, fn func(*Queries) error) error {
	// The pool (plain or through the statement cache) begins
	// transactions; a transaction does not.
	db, ok := t.q.(interface {
		BeginTx(context.Context, *stdsql.TxOptions) (*stdsql.Tx, error)
	})
	if !ok {
		return fn(t)
	}
	if err := t.writes.lock(ctx); err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer t.writes.unlock()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	var q querier = tx
	if t.stmts != nil {
		q = cachedTx{tx, t.stmts}
	}
	if err := fn(&Queries{q: q, stmts: t.stmts, dialect: t.dialect}); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// noRows maps database/sql's no-rows error to ErrNotFound.
func noRows(err error) error {
	if errors.Is(err, stdsql.ErrNoRows) {
		return ErrNotFound
	}
	return err
}

// isUniqueViolation reports whether err is a unique-constraint failure on
// either engine.
func isUniqueViolation(err error) bool {
	if err == nil {
		return false
	}
	msg := err.Error()
	return strings.Contains(msg, "SQLSTATE 23505") || strings.Contains(msg, "UNIQUE constraint failed")
}
