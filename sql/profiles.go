package sql

import (
	"context"
	"encoding/json"
)

// ProfileFields returns every profile field of the user (displayname,
// avatar_url and custom fields), each as its JSON value; empty when none is
// set or the user does not exist.
func (t *Queries) ProfileFields(ctx context.Context, localpart string) (map[string]json.RawMessage, error) {
	rows, err := t.q.QueryContext(ctx, `SELECT field, value FROM profile_fields WHERE localpart = $1`, localpart)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	fields := make(map[string]json.RawMessage)
	for rows.Next() {
		var field, value string
		if err := rows.Scan(&field, &value); err != nil {
			return nil, err
		}
		fields[field] = json.RawMessage(value)
	}
	return fields, rows.Err()
}

// ProfileField returns one field's JSON value, or ErrNotFound.
func (t *Queries) ProfileField(ctx context.Context, localpart, field string) (json.RawMessage, error) {
	var value string
	err := t.q.QueryRowContext(ctx, `SELECT value FROM profile_fields WHERE localpart = $1 AND field = $2`, localpart, field).Scan(&value)
	if err != nil {
		return nil, noRows(err)
	}
	return json.RawMessage(value), nil
}

// SetProfileField sets (or replaces) one field; value is its JSON.
func (t *Queries) SetProfileField(ctx context.Context, localpart, field string, value json.RawMessage) error {
	_, err := t.q.ExecContext(ctx, `INSERT INTO profile_fields (localpart, field, value) VALUES ($1, $2, $3)
		ON CONFLICT (localpart, field) DO UPDATE SET value = excluded.value`, localpart, field, string(value))
	return err
}

// DeleteProfileField removes one field; removing a field that is not set
// is not an error.
func (t *Queries) DeleteProfileField(ctx context.Context, localpart, field string) error {
	_, err := t.q.ExecContext(ctx, `DELETE FROM profile_fields WHERE localpart = $1 AND field = $2`, localpart, field)
	return err
}

// LockProfile serializes the profile writes of one user until the
// transaction ends, so that a size check over all fields and the write that
// follows it see no concurrent change. It takes the account row's lock on
// PostgreSQL (SQLite already has one writer at a time); ErrNotFound when the
// account does not exist. Only meaningful inside WithTx.
func (t *Queries) LockProfile(ctx context.Context, localpart string) error {
	return expectRow(t.q.ExecContext(ctx, `UPDATE accounts SET created_ts = created_ts WHERE localpart = $1`, localpart))
}
