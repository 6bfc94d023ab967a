package sql

import (
	"context"
	stdsql "database/sql"
	"errors"
	"fmt"
)

// ErrExists is returned when a row with the same key already exists.
var ErrExists = errors.New("already exists")

// Account is a local user account.
type Account struct {
	Localpart    string
	PasswordHash string // empty: no password
	IsAdmin      bool
	IsGuest      bool
	UserType     string
	Deactivated  bool
	CreatedTS    int64
}

// CreateAccount inserts a new account; ErrExists when the localpart is taken.
func (t *Queries) CreateAccount(ctx context.Context, a Account) error {
	_, err := t.q.ExecContext(ctx, `INSERT INTO accounts (localpart, password_hash, is_admin, is_guest, user_type, created_ts)
		VALUES ($1, $2, $3, $4, $5, $6)`,
		a.Localpart, nullString(a.PasswordHash), a.IsAdmin, a.IsGuest, nullString(a.UserType), nowMillis())
	if isUniqueViolation(err) {
		return ErrExists
	}
	return err
}

// Account returns the account with localpart, or ErrNotFound.
func (t *Queries) Account(ctx context.Context, localpart string) (Account, error) {
	var a Account
	var hash, userType stdsql.NullString
	err := t.q.QueryRowContext(ctx, `SELECT localpart, password_hash, is_admin, is_guest, user_type, deactivated, created_ts
		FROM accounts WHERE localpart = $1`, localpart).
		Scan(&a.Localpart, &hash, &a.IsAdmin, &a.IsGuest, &userType, &a.Deactivated, &a.CreatedTS)
	if err != nil {
		return Account{}, noRows(err)
	}
	a.PasswordHash, a.UserType = hash.String, userType.String
	return a, nil
}

// AccountExists reports whether localpart is taken (deactivated accounts
// keep their name).
func (t *Queries) AccountExists(ctx context.Context, localpart string) (bool, error) {
	var n int
	err := t.q.QueryRowContext(ctx, `SELECT COUNT(*) FROM accounts WHERE localpart = $1`, localpart).Scan(&n)
	return n > 0, err
}

// SetPasswordHash replaces the account's password hash.
func (t *Queries) SetPasswordHash(ctx context.Context, localpart, hash string) error {
	return expectRow(t.q.ExecContext(ctx, `UPDATE accounts SET password_hash = $1 WHERE localpart = $2`, hash, localpart))
}

// SetAdmin grants or removes server admin rights.
func (t *Queries) SetAdmin(ctx context.Context, localpart string, admin bool) error {
	return expectRow(t.q.ExecContext(ctx, `UPDATE accounts SET is_admin = $1 WHERE localpart = $2`, admin, localpart))
}

// Deactivate marks the account deactivated and removes its password.
func (t *Queries) Deactivate(ctx context.Context, localpart string) error {
	return expectRow(t.q.ExecContext(ctx, `UPDATE accounts SET deactivated = TRUE, password_hash = NULL WHERE localpart = $1`, localpart))
}

// CountAccounts counts every account, deactivated ones too.
func (t *Queries) CountAccounts(ctx context.Context) (int64, error) {
	var n int64
	err := t.q.QueryRowContext(ctx, `SELECT COUNT(*) FROM accounts`).Scan(&n)
	return n, err
}

func nullString(s string) stdsql.NullString { return stdsql.NullString{String: s, Valid: s != ""} }

// expectRow turns an update that matched nothing into ErrNotFound.
func expectRow(res stdsql.Result, err error) error {
	if err != nil {
		return err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("rows affected: %w", err)
	}
	if n == 0 {
		return ErrNotFound
	}
	return nil
}
