package sql

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"

	"github.com/weft-chat/weft/config"
)

// Pipeline is one write transaction whose statements do not depend on
// each other's results: everything they need (NIDs included, see NIDs) is
// known before the first one runs, and what they return is read after
// the last. On PostgreSQL the statements go to the server in one round
// trip, a pipeline ending in one Sync, which runs them as one implicit
// transaction: any failure rolls everything back, and the commit comes
// with the results. Thousands of rows for one table (see copyRows) go
// first with COPY, in an explicit transaction that the pipeline then
// commits: a few round trips more, for a fraction of the server's work.
// On SQLite, where a statement costs no round trip, each runs when it is
// queued, in a transaction of its own connection.
//
// Checks that must roll the transaction back are therefore written into
// the statements themselves, as constraint violations (see
// PipelineUpdateRooms), never made by the caller between two statements.
type Pipeline struct {
	ctx context.Context
	d   *DB

	// SQLite: the open transaction, the first failure (later statements
	// are skipped) and the NIDs handed out so far per table.
	tx   querier
	err  error
	nids map[nidTable]int64

	// PostgreSQL: the statements waiting to be sent, and the rows to
	// copy before them.
	stmts  []pipelined
	copies []copied
}

// copied is rows queued for COPY into a table.
type copied struct {
	table   string
	columns []string
	rows    [][]any
	mapErr  func(error) error
}

// copyMin is the least number of rows copyRows sends with COPY. Below it
// the round trips COPY adds cost more than INSERT statements do.
const copyMin = 1024

// copyRows queues n rows for COPY into table on PostgreSQL, row(i) giving
// the values of row i for columns, and reports true; with fewer than
// copyMin rows, or on SQLite, it queues nothing and reports false, and
// the caller inserts the rows with statements. COPY spares PostgreSQL
// the parsing and planning of the statements and their thousands of
// parameters: a few times faster for the state of a big room that a
// join stores at once. The rows are inserted before any queued
// statement runs; mapErr turns a failure into the pipeline's error.
func (p *Pipeline) copyRows(mapErr func(error) error, table string, columns []string, n int, row func(i int) []any) bool {
	if p.tx != nil || n < copyMin {
		return false
	}
	rows := make([][]any, n)
	for i := range rows {
		rows[i] = row(i)
	}
	p.copies = append(p.copies, copied{table: table, columns: columns, rows: rows, mapErr: mapErr})
	return true
}

// pipelined is a queued statement. dest receives the columns of its one
// result row (RETURNING), if any; mapErr turns its failure into the
// error the pipeline fails with.
type pipelined struct {
	query  string
	args   []any
	dest   []any
	mapErr func(error) error
}

// RunPipeline runs fn, which queues the statements of one transaction on
// p, and then runs them. It returns fn's error, or the first statement's
// failure (as that statement's mapErr made it); either way nothing of the
// transaction is kept. Values scanned into the dests of queued statements
// are set only once RunPipeline has returned nil.
func (d *DB) RunPipeline(ctx context.Context, fn func(p *Pipeline) error) error {
	p := &Pipeline{ctx: ctx, d: d}
	if d.engine != config.Postgres {
		return d.WithTx(ctx, func(q *Queries) error {
			p.tx = q.q
			if err := fn(p); err != nil {
				return err
			}
			return p.err
		})
	}
	if err := fn(p); err != nil {
		return err
	}
	if len(p.stmts) == 0 && len(p.copies) == 0 {
		return nil
	}
	conn, err := d.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("pipeline: acquire connection: %w", err)
	}
	// A connection left inside a transaction (a broken pipeline) is
	// closed by the pool on release rather than reused.
	defer conn.Release()
	if len(p.copies) > 0 {
		if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
			return fmt.Errorf("pipeline: begin: %w", err)
		}
		for _, c := range p.copies {
			if _, err := conn.CopyFrom(ctx, pgx.Identifier{c.table}, c.columns, pgx.CopyFromRows(c.rows)); err != nil {
				return c.mapErr(err)
			}
		}
		p.stmts = append(p.stmts, pipelined{query: "COMMIT", mapErr: errPipelineStmt("commit")})
	}
	b := &pgx.Batch{QueuedQueries: make([]*pgx.QueuedQuery, 0, len(p.stmts))}
	for _, s := range p.stmts {
		b.Queue(s.query, s.args...)
	}
	br := conn.SendBatch(ctx, b)
	var first error
	for _, s := range p.stmts {
		var err error
		if s.dest != nil {
			err = br.QueryRow().Scan(s.dest...)
		} else {
			_, err = br.Exec()
		}
		if err != nil {
			if s.mapErr != nil {
				err = s.mapErr(err)
			}
			first = err
			break
		}
	}
	if err := br.Close(); err != nil && first == nil {
		first = err
	}
	return first
}

// exec queues a statement that returns no rows.
func (p *Pipeline) exec(mapErr func(error) error, query string, args ...any) {
	p.queue(pipelined{query: query, args: args, mapErr: mapErr})
}

// queryRow queues a statement whose one result row is scanned into dest.
func (p *Pipeline) queryRow(dest []any, mapErr func(error) error, query string, args ...any) {
	p.queue(pipelined{query: query, args: args, dest: dest, mapErr: mapErr})
}

func (p *Pipeline) queue(s pipelined) {
	if p.tx == nil {
		p.stmts = append(p.stmts, s)
		return
	}
	if p.err != nil {
		return
	}
	var err error
	if s.dest != nil {
		err = p.tx.QueryRowContext(p.ctx, s.query, s.args...).Scan(s.dest...)
	} else {
		_, err = p.tx.ExecContext(p.ctx, s.query, s.args...)
	}
	if err != nil && s.mapErr != nil {
		err = s.mapErr(err)
	}
	p.err = err
}

// nidTable names a table whose rows have numeric ids that pipelines hand
// out before inserting the rows.
type nidTable int

const (
	nidEvents nidTable = iota
	nidSnapshots
	nidRooms
)

var nidColumns = [...]struct{ table, column string }{
	nidEvents:    {"events", "event_nid"},
	nidSnapshots: {"state_snapshots", "snapshot_nid"},
	nidRooms:     {"rooms", "room_nid"},
}

// EventNIDs, SnapshotNIDs and RoomNIDs reserve n NIDs for rows the
// pipeline inserts. On PostgreSQL they come from the table's own
// sequence, a block at a time, so they never collide with rows inserted
// elsewhere; a NID reserved by a pipeline that fails is never used. On
// SQLite they follow the table's AUTOINCREMENT counter inside the write
// transaction, which the pipeline's inserts then move on.
func (p *Pipeline) EventNIDs(n int) ([]int64, error) { return p.reserve(nidEvents, n) }

// SnapshotNIDs reserves n state snapshot NIDs; see EventNIDs.
func (p *Pipeline) SnapshotNIDs(n int) ([]int64, error) { return p.reserve(nidSnapshots, n) }

// RoomNIDs reserves n room NIDs; see EventNIDs.
func (p *Pipeline) RoomNIDs(n int) ([]int64, error) { return p.reserve(nidRooms, n) }

func (p *Pipeline) reserve(t nidTable, n int) ([]int64, error) {
	if n == 0 {
		return nil, nil
	}
	if p.tx == nil {
		return p.d.nids[t].take(p.ctx, p.d, t, n)
	}
	if p.err != nil {
		return nil, p.err
	}
	if p.nids == nil {
		p.nids = make(map[nidTable]int64)
	}
	last, ok := p.nids[t]
	if !ok {
		err := p.tx.QueryRowContext(p.ctx, `SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = $1), 0)`, nidColumns[t].table).Scan(&last)
		if err != nil {
			return nil, fmt.Errorf("reserve %s NIDs: %w", nidColumns[t].table, err)
		}
	}
	out := make([]int64, n)
	for i := range out {
		last++
		out[i] = last
	}
	p.nids[t] = last
	return out, nil
}

// nidBlock holds NIDs taken from a PostgreSQL sequence and not yet used.
type nidBlock struct {
	mu   sync.Mutex
	free []int64
}

// nidBlockSize is how many NIDs one round trip to the sequence reserves;
// those of a process that stops are skipped, which costs nothing.
const nidBlockSize = 512

func (b *nidBlock) take(ctx context.Context, d *DB, t nidTable, n int) ([]int64, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for len(b.free) < n {
		c := nidColumns[t]
		rows, err := d.pool.Query(ctx, `SELECT nextval(pg_get_serial_sequence($1, $2)) FROM generate_series(1, $3)`,
			c.table, c.column, max(nidBlockSize, n-len(b.free)))
		if err != nil {
			return nil, fmt.Errorf("reserve %s NIDs: %w", c.table, err)
		}
		for rows.Next() {
			var v int64
			if err := rows.Scan(&v); err != nil {
				rows.Close()
				return nil, fmt.Errorf("reserve %s NIDs: %w", c.table, err)
			}
			b.free = append(b.free, v)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("reserve %s NIDs: %w", c.table, err)
		}
	}
	out := make([]int64, n)
	copy(out, b.free)
	b.free = b.free[n:]
	return out, nil
}

// chunkSizes splits n rows into statements of at most maxRows rows, the
// rest in powers of two: a pipelined statement is prepared once per text
// and connection, so the number of distinct texts stays small (a dozen or
// so per statement) whatever the number of rows.
func chunkSizes(n, maxRows int) []int {
	var out []int
	for ; n >= maxRows; n -= maxRows {
		out = append(out, maxRows)
	}
	for bit := maxRows >> 1; bit > 0; bit >>= 1 {
		if n&bit != 0 {
			out = append(out, bit)
		}
	}
	return out
}

// valuesRows returns "(…), (…)" for rows rows of the given row template,
// in which each '?' is replaced by the next placeholder from $from on.
func valuesRows(template string, from, rows int) string {
	var b strings.Builder
	n := from
	for r := range rows {
		if r > 0 {
			b.WriteString(", ")
		}
		b.WriteByte('(')
		for i := 0; i < len(template); i++ {
			if template[i] == '?' {
				b.WriteByte('$')
				b.WriteString(strconv.Itoa(n))
				n++
			} else {
				b.WriteByte(template[i])
			}
		}
		b.WriteByte(')')
	}
	return b.String()
}

// isNotNullViolation reports whether err is a NOT NULL constraint failure
// on either engine.
func isNotNullViolation(err error) bool {
	if err == nil {
		return false
	}
	msg := err.Error()
	return strings.Contains(msg, "SQLSTATE 23502") || strings.Contains(msg, "NOT NULL constraint failed")
}

// errPipelineStmt wraps a statement's failure with what the statement was.
func errPipelineStmt(what string) func(error) error {
	return func(err error) error { return fmt.Errorf("%s: %w", what, err) }
}

// lastOfEach keeps, of the elements of xs with the same key, the last,
// in the order of xs.
func lastOfEach[T any, K comparable](xs []T, key func(T) K) []T {
	last := make(map[K]int, len(xs))
	for i, x := range xs {
		last[key(x)] = i
	}
	out := make([]T, 0, len(last))
	for i, x := range xs {
		if last[key(x)] == i {
			out = append(out, x)
		}
	}
	return out
}
