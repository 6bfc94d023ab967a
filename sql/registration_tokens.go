package sql

import (
	"context"
	stdsql "database/sql"
)

// RegistrationToken is a token that lets someone register when
// registration requires one.
type RegistrationToken struct {
	Token string
	// UsesAllowed is how many registrations may use the token; nil means
	// unlimited. Zero is a real limit (no more uses), as in Synapse's admin
	// API.
	UsesAllowed *int64
	Completed   int64
	ExpiryTS    int64 // milliseconds since the epoch; 0: never
	CreatedTS   int64
}

// CreateRegistrationToken stores a new token; ErrExists if it is taken.
func (t *Queries) CreateRegistrationToken(ctx context.Context, rt RegistrationToken) error {
	_, err := t.q.ExecContext(ctx, `INSERT INTO registration_tokens (token, uses_allowed, expiry_ts, created_ts) VALUES ($1, $2, $3, $4)`,
		rt.Token, nullIntPtr(rt.UsesAllowed), nullInt(rt.ExpiryTS), nowMillis())
	if isUniqueViolation(err) {
		return ErrExists
	}
	return err
}

// RegistrationTokens lists every token, oldest first.
func (t *Queries) RegistrationTokens(ctx context.Context) ([]RegistrationToken, error) {
	rows, err := t.q.QueryContext(ctx, `SELECT token, uses_allowed, completed, expiry_ts, created_ts FROM registration_tokens ORDER BY created_ts, token`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []RegistrationToken
	for rows.Next() {
		rt, err := scanRegistrationToken(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, rt)
	}
	return out, rows.Err()
}

// RegistrationToken returns one token, or ErrNotFound.
func (t *Queries) RegistrationToken(ctx context.Context, token string) (RegistrationToken, error) {
	rt, err := scanRegistrationToken(t.q.QueryRowContext(ctx,
		`SELECT token, uses_allowed, completed, expiry_ts, created_ts FROM registration_tokens WHERE token = $1`, token))
	return rt, noRows(err)
}

func scanRegistrationToken(s interface{ Scan(...any) error }) (RegistrationToken, error) {
	var rt RegistrationToken
	var uses, exp stdsql.NullInt64
	err := s.Scan(&rt.Token, &uses, &rt.Completed, &exp, &rt.CreatedTS)
	if uses.Valid {
		rt.UsesAllowed = &uses.Int64
	}
	rt.ExpiryTS = exp.Int64
	return rt, err
}

// Usable reports whether the token may still be used at now (milliseconds).
func (rt RegistrationToken) Usable(now int64) bool {
	return (rt.UsesAllowed == nil || rt.Completed < *rt.UsesAllowed) && (rt.ExpiryTS == 0 || now < rt.ExpiryTS)
}

// UpdateRegistrationToken replaces a token's limits (usesAllowed nil:
// unlimited; expiryTS 0: never); ErrNotFound if it is unknown.
func (t *Queries) UpdateRegistrationToken(ctx context.Context, token string, usesAllowed *int64, expiryTS int64) error {
	return expectRow(t.q.ExecContext(ctx, `UPDATE registration_tokens SET uses_allowed = $2, expiry_ts = $3 WHERE token = $1`,
		token, nullIntPtr(usesAllowed), nullInt(expiryTS)))
}

// UseRegistrationToken counts a finished registration against the token;
// ErrNotFound when it is unknown, used up or expired at now (milliseconds).
// The check and the count are one statement, so concurrent registrations
// cannot use a token more often than allowed.
func (t *Queries) UseRegistrationToken(ctx context.Context, token string, now int64) error {
	return expectRow(t.q.ExecContext(ctx, `UPDATE registration_tokens SET completed = completed + 1
		WHERE token = $1 AND (uses_allowed IS NULL OR completed < uses_allowed) AND (expiry_ts IS NULL OR expiry_ts > $2)`, token, now))
}

// DeleteRegistrationToken removes a token; ErrNotFound if it is unknown.
func (t *Queries) DeleteRegistrationToken(ctx context.Context, token string) error {
	return expectRow(t.q.ExecContext(ctx, `DELETE FROM registration_tokens WHERE token = $1`, token))
}

func nullIntPtr(p *int64) stdsql.NullInt64 {
	if p == nil {
		return stdsql.NullInt64{}
	}
	return stdsql.NullInt64{Int64: *p, Valid: true}
}
