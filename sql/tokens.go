package sql

import (
	"context"
	stdsql "database/sql"
)

// TokenOwner is what an access token resolves to.
type TokenOwner struct {
	Localpart string
	DeviceID  string
	ExpiresTS int64 // 0: never
	IsGuest   bool
	IsAdmin   bool
}

// AddAccessToken stores the hash of a new access token for a device;
// expiresTS 0 means it never expires.
func (t *Queries) AddAccessToken(ctx context.Context, hash []byte, localpart, deviceID string, expiresTS int64) error {
	_, err := t.q.ExecContext(ctx, `INSERT INTO access_tokens (token_hash, localpart, device_id, expires_ts, created_ts)
		VALUES ($1, $2, $3, $4, $5)`, hash, localpart, deviceID, nullInt(expiresTS), nowMillis())
	return err
}

// AccessToken resolves a token hash, or ErrNotFound. Deactivated accounts
// have no tokens left, so no check is needed here.
func (t *Queries) AccessToken(ctx context.Context, hash []byte) (TokenOwner, error) {
	var o TokenOwner
	var exp stdsql.NullInt64
	err := t.q.QueryRowContext(ctx, `SELECT t.localpart, t.device_id, t.expires_ts, a.is_guest, a.is_admin
		FROM access_tokens t JOIN accounts a ON a.localpart = t.localpart WHERE t.token_hash = $1`, hash).
		Scan(&o.Localpart, &o.DeviceID, &exp, &o.IsGuest, &o.IsAdmin)
	o.ExpiresTS = exp.Int64
	return o, noRows(err)
}

// RevokeAccessToken deletes one access token.
func (t *Queries) RevokeAccessToken(ctx context.Context, hash []byte) error {
	_, err := t.q.ExecContext(ctx, `DELETE FROM access_tokens WHERE token_hash = $1`, hash)
	return err
}

// RevokeDeviceTokens deletes every access and refresh token of a device and
// returns the access token hashes it removed.
func (t *Queries) RevokeDeviceTokens(ctx context.Context, localpart, deviceID string) ([][]byte, error) {
	rows, err := t.q.QueryContext(ctx, `DELETE FROM access_tokens WHERE localpart = $1 AND device_id = $2 RETURNING token_hash`, localpart, deviceID)
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
	_, err = t.q.ExecContext(ctx, `DELETE FROM refresh_tokens WHERE localpart = $1 AND device_id = $2`, localpart, deviceID)
	return hashes, err
}

// AddRefreshToken stores the hash of a new refresh token for a device.
func (t *Queries) AddRefreshToken(ctx context.Context, hash []byte, localpart, deviceID string) error {
	_, err := t.q.ExecContext(ctx, `INSERT INTO refresh_tokens (token_hash, localpart, device_id, created_ts) VALUES ($1, $2, $3, $4)`,
		hash, localpart, deviceID, nowMillis())
	return err
}

// TakeRefreshToken deletes a refresh token and returns its owner, so each
// refresh token works once; ErrNotFound if it is unknown or already used.
func (t *Queries) TakeRefreshToken(ctx context.Context, hash []byte) (localpart, deviceID string, err error) {
	err = t.q.QueryRowContext(ctx, `DELETE FROM refresh_tokens WHERE token_hash = $1 RETURNING localpart, device_id`, hash).
		Scan(&localpart, &deviceID)
	return localpart, deviceID, noRows(err)
}

// AddLoginToken stores a one-time m.login.token.
func (t *Queries) AddLoginToken(ctx context.Context, hash []byte, localpart string, expiresTS int64) error {
	_, err := t.q.ExecContext(ctx, `INSERT INTO login_tokens (token_hash, localpart, expires_ts) VALUES ($1, $2, $3)`, hash, localpart, expiresTS)
	return err
}

// TakeLoginToken deletes a login token and returns its user if it had not
// expired; ErrNotFound otherwise.
func (t *Queries) TakeLoginToken(ctx context.Context, hash []byte, now int64) (string, error) {
	var localpart string
	var exp int64
	err := t.q.QueryRowContext(ctx, `DELETE FROM login_tokens WHERE token_hash = $1 RETURNING localpart, expires_ts`, hash).Scan(&localpart, &exp)
	if err != nil {
		return "", noRows(err)
	}
	if exp <= now {
		return "", ErrNotFound
	}
	return localpart, nil
}

func nullInt(n int64) stdsql.NullInt64 { return stdsql.NullInt64{Int64: n, Valid: n != 0} }
