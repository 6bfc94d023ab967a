package sql

import (
	"context"
	stdsql "database/sql"
	"sync"
)

// stmtCacheMax bounds the statements kept. Nearly all of Weft's SQL is a
// fixed text; the texts built with a variable number of placeholders come
// in a few common sizes, and past the bound the rare rest runs unprepared.
const stmtCacheMax = 4096

// stmtCache keeps one prepared statement per SQL text, for SQLite: there,
// preparing a statement (parsing and planning it) costs more than running
// most of Weft's, and database/sql prepares every query it is handed
// afresh. PostgreSQL needs none: pgx caches prepared statements per
// connection itself.
type stmtCache struct {
	db *stdsql.DB
	mu sync.RWMutex
	m  map[string]*stdsql.Stmt
	// preparing holds the texts being prepared in the background, which
	// inflight counts until they are done.
	preparing map[string]bool
	inflight  sync.WaitGroup
	// closed stops new preparations.
	closed bool
}

func newStmtCache(db *stdsql.DB) *stmtCache {
	return &stmtCache{db: db, m: make(map[string]*stdsql.Stmt), preparing: make(map[string]bool)}
}

// get returns the statement for query, or nil: the caller then runs the
// query unprepared (which also reports any error in the query itself).
// A query seen for the first time is prepared in the background, never
// on the caller's path: preparing takes a connection from the pool, and a
// caller inside a transaction holds SQLite's write lock, so waiting for a
// connection that itself waits for that lock would deadlock.
func (c *stmtCache) get(query string) *stdsql.Stmt {
	c.mu.RLock()
	s := c.m[query]
	c.mu.RUnlock()
	if s != nil {
		return s
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.preparing[query] || len(c.m)+len(c.preparing) >= stmtCacheMax {
		return nil
	}
	c.preparing[query] = true
	c.inflight.Go(func() { c.prepare(query) })
	return nil
}

func (c *stmtCache) prepare(query string) {
	s, err := c.db.Prepare(query)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		return // stays in preparing: never tried again
	}
	delete(c.preparing, query)
	c.m[query] = s
}

// close closes every statement, once the preparations under way are done:
// each holds a connection, which would otherwise close after the pool
// does (and SQLite remove its log files after the caller moved on).
func (c *stmtCache) close() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.inflight.Wait()
	c.mu.Lock()
	defer c.mu.Unlock()
	for q, s := range c.m {
		_ = s.Close()
		delete(c.m, q)
	}
}

// cachedDB runs queries over the pool through the statement cache. Its
// Execs are writes, each a transaction of its own: they take the write
// lock.
type cachedDB struct {
	*stdsql.DB
	c      *stmtCache
	writes writeLock
}

func (d cachedDB) ExecContext(ctx context.Context, query string, args ...any) (stdsql.Result, error) {
	if err := d.writes.lock(ctx); err != nil {
		return nil, err
	}
	defer d.writes.unlock()
	if s := d.c.get(query); s != nil {
		return s.ExecContext(ctx, args...)
	}
	return d.DB.ExecContext(ctx, query, args...)
}

func (d cachedDB) QueryContext(ctx context.Context, query string, args ...any) (*stdsql.Rows, error) {
	if s := d.c.get(query); s != nil {
		return s.QueryContext(ctx, args...)
	}
	return d.DB.QueryContext(ctx, query, args...)
}

func (d cachedDB) QueryRowContext(ctx context.Context, query string, args ...any) *stdsql.Row {
	if s := d.c.get(query); s != nil {
		return s.QueryRowContext(ctx, args...)
	}
	return d.DB.QueryRowContext(ctx, query, args...)
}

// cachedTx runs queries in a transaction through the statement cache:
// database/sql reuses a statement already prepared on the transaction's
// connection.
type cachedTx struct {
	*stdsql.Tx
	c *stmtCache
}

func (t cachedTx) ExecContext(ctx context.Context, query string, args ...any) (stdsql.Result, error) {
	if s := t.c.get(query); s != nil {
		return t.Tx.StmtContext(ctx, s).ExecContext(ctx, args...)
	}
	return t.Tx.ExecContext(ctx, query, args...)
}

func (t cachedTx) QueryContext(ctx context.Context, query string, args ...any) (*stdsql.Rows, error) {
	if s := t.c.get(query); s != nil {
		return t.Tx.StmtContext(ctx, s).QueryContext(ctx, args...)
	}
	return t.Tx.QueryContext(ctx, query, args...)
}

func (t cachedTx) QueryRowContext(ctx context.Context, query string, args ...any) *stdsql.Row {
	if s := t.c.get(query); s != nil {
		return t.Tx.StmtContext(ctx, s).QueryRowContext(ctx, args...)
	}
	return t.Tx.QueryRowContext(ctx, query, args...)
}
