package sql

import "context"

// CreateRegistrationNonce stores a nonce for shared-secret registration,
// handed out at createdTS (milliseconds).
func (t *Queries) CreateRegistrationNonce(ctx context.Context, nonce string, createdTS int64) error {
	_, err := t.q.ExecContext(ctx, `INSERT INTO registration_nonces (nonce, created_ts) VALUES ($1, $2)`, nonce, createdTS)
	if isUniqueViolation(err) {
		return ErrExists
	}
	return err
}

// TakeRegistrationNonce deletes a nonce and returns when it was handed
// out, or ErrNotFound when it is unknown or already used. Deleting and
// reading in one statement makes each nonce good for one request only, even
// when two requests race.
func (t *Queries) TakeRegistrationNonce(ctx context.Context, nonce string) (createdTS int64, err error) {
	err = t.q.QueryRowContext(ctx, `DELETE FROM registration_nonces WHERE nonce = $1 RETURNING created_ts`, nonce).Scan(&createdTS)
	return createdTS, noRows(err)
}

// DeleteRegistrationNoncesBefore removes the nonces handed out before ts,
// which can no longer be used, so unused nonces do not pile up.
func (t *Queries) DeleteRegistrationNoncesBefore(ctx context.Context, ts int64) error {
	_, err := t.q.ExecContext(ctx, `DELETE FROM registration_nonces WHERE created_ts < $1`, ts)
	return err
}
