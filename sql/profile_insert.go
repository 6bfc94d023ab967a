package sql

import "context"

// InsertProfileField sets a profile field of a new account unless it is
// already set; jsonValue is the field's JSON (e.g. `"alice"`). Registration
// uses it for the default display name inside its own transaction; the
// profile endpoints, which overwrite, live in profiles.go.
func (t *Queries) InsertProfileField(ctx context.Context, localpart, field, jsonValue string) error {
	_, err := t.q.ExecContext(ctx, `INSERT INTO profile_fields (localpart, field, value) VALUES ($1, $2, $3)
		ON CONFLICT (localpart, field) DO NOTHING`, localpart, field, jsonValue)
	return err
}
