package sql

import "context"

// PutProfileFieldForTest stores a profile field the way the profile store
// does, for tests of erasure that must not depend on it.
func (d *DB) PutProfileFieldForTest(ctx context.Context, localpart, field, value string) error {
	_, err := d.db.ExecContext(ctx, `INSERT INTO profile_fields (localpart, field, value) VALUES ($1, $2, $3)`, localpart, field, value)
	return err
}

// CountRowsForTest counts a table's rows for localpart.
func (d *DB) CountRowsForTest(ctx context.Context, table, localpart string) (int, error) {
	var n int
	err := d.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM `+table+` WHERE localpart = $1`, localpart).Scan(&n)
	return n, err
}
