package sql

import (
	"context"
	stdsql "database/sql"
	"errors"
	"fmt"
)

// CreateFilter stores a user's filter (canonical JSON) and returns its id.
// Uploading a filter the user already has returns the existing id, as
// Synapse does: clients upload the same filter at every start, and the
// table would otherwise grow by one row per launch.
func (t *Queries) CreateFilter(ctx context.Context, localpart string, filter []byte) (int64, error) {
	var id int64
	err := t.q.QueryRowContext(ctx, `SELECT filter_id FROM filters WHERE localpart = $1 AND filter = $2 ORDER BY filter_id LIMIT 1`,
		localpart, string(filter)).Scan(&id)
	switch {
	case err == nil:
		return id, nil
	case !errors.Is(err, stdsql.ErrNoRows):
		return 0, fmt.Errorf("look up filter: %w", err)
	}
	err = t.q.QueryRowContext(ctx, `INSERT INTO filters (localpart, filter) VALUES ($1, $2) RETURNING filter_id`,
		localpart, string(filter)).Scan(&id)
	if err != nil {
		return 0, fmt.Errorf("insert filter: %w", err)
	}
	return id, nil
}

// Filter returns the user's filter with id, or ErrNotFound (also for
// another user's filter).
func (t *Queries) Filter(ctx context.Context, localpart string, id int64) ([]byte, error) {
	var filter string
	err := t.q.QueryRowContext(ctx, `SELECT filter FROM filters WHERE localpart = $1 AND filter_id = $2`, localpart, id).Scan(&filter)
	if err != nil {
		return nil, noRows(err)
	}
	return []byte(filter), nil
}
