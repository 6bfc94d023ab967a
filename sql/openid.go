package sql

import (
	"context"
	"crypto/sha256"
)

// AddOpenIDToken stores an OpenID token of a user, valid until expiresTS
// (milliseconds), and deletes the tokens that have expired. Only the
// token's hash is kept.
func (t *Queries) AddOpenIDToken(ctx context.Context, token, localpart, userID string, expiresTS int64) error {
	if _, err := t.q.ExecContext(ctx, `DELETE FROM openid_tokens WHERE expires_ts <= $1`, nowMillis()); err != nil {
		return err
	}
	_, err := t.q.ExecContext(ctx, `INSERT INTO openid_tokens (token_hash, localpart, user_id, expires_ts) VALUES ($1, $2, $3, $4)`,
		openIDHash(token), localpart, userID, expiresTS)
	return err
}

// OpenIDTokenUser returns the user an OpenID token was issued to;
// ErrNotFound when the token is unknown, has expired at nowMS, or its
// owner's account is gone or deactivated.
func (t *Queries) OpenIDTokenUser(ctx context.Context, token string, nowMS int64) (string, error) {
	var userID string
	err := t.q.QueryRowContext(ctx, `SELECT o.user_id FROM openid_tokens o JOIN accounts a ON a.localpart = o.localpart
		WHERE o.token_hash = $1 AND o.expires_ts > $2 AND NOT a.deactivated`, openIDHash(token), nowMS).Scan(&userID)
	return userID, noRows(err)
}

func openIDHash(token string) []byte {
	h := sha256.Sum256([]byte(token))
	return h[:]
}
