package sql

import "context"

// MarkSchemaVersionForTest records a schema version as if a newer binary
// had migrated the database.
func (d *DB) MarkSchemaVersionForTest(ctx context.Context, v int) error {
	_, err := d.db.ExecContext(ctx, `INSERT INTO schema_version (version, name, applied_ts) VALUES ($1, 'future', 0)`, v)
	return err
}

// CopyMin is copyMin, for tests that cross it.
const CopyMin = copyMin
