package sql

import "context"

// DeleteUserSessions removes every device of the user together with every
// access, refresh and login token, including tokens whose device row is
// already gone, and returns the access token hashes it removed (for cache
// eviction). AccessToken relies on a deactivated account having no token
// left, so deactivation must not miss any.
func (t *Queries) DeleteUserSessions(ctx context.Context, localpart string) ([][]byte, error) {
	rows, err := t.q.QueryContext(ctx, `DELETE FROM access_tokens WHERE localpart = $1 RETURNING token_hash`, localpart)
	if err != nil {
		return nil, err
	}
	var hashes [][]byte
	for rows.Next() {
		var h []byte
		if err := rows.Scan(&h); err != nil {
			rows.Close()
			return nil, err
		}
		hashes = append(hashes, h)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	for _, stmt := range []string{
		`DELETE FROM refresh_tokens WHERE localpart = $1`,
		`DELETE FROM login_tokens WHERE localpart = $1`,
		`DELETE FROM devices WHERE localpart = $1`,
	} {
		if _, err := t.q.ExecContext(ctx, stmt, localpart); err != nil {
			return nil, err
		}
	}
	return hashes, nil
}

// DeleteProfile removes every profile field of the user (erasure on
// deactivation).
func (t *Queries) DeleteProfile(ctx context.Context, localpart string) error {
	_, err := t.q.ExecContext(ctx, `DELETE FROM profile_fields WHERE localpart = $1`, localpart)
	return err
}
