package userapi

import (
	"context"
	"errors"

	"golang.org/x/crypto/bcrypt"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
)

// bcrypt reads at most 72 bytes; like Synapse's hashes, longer passwords
// count by their first 72 bytes, so hashes move between the two servers.
const bcryptMaxBytes = 72

// MaxPasswordBytes bounds passwords, as Synapse does.
const MaxPasswordBytes = 512

// HashPassword hashes a password with the configured bcrypt cost.
func (s *Service) HashPassword(password string) (string, error) {
	if len(password) > MaxPasswordBytes {
		return "", mxhttp.Errorf(400, "M_WEAK_PASSWORD", "Password is longer than %d bytes", MaxPasswordBytes)
	}
	h, err := bcrypt.GenerateFromPassword(truncate(password), s.cfg.BcryptCost)
	if err != nil {
		return "", internal("hash password", err)
	}
	return string(h), nil
}

func truncate(p string) []byte {
	b := []byte(p)
	if len(b) > bcryptMaxBytes {
		b = b[:bcryptMaxBytes]
	}
	return b
}

// dummyHash is compared against when the user does not exist, so a wrong
// user name takes as long as a wrong password.
var dummyHash, _ = bcrypt.GenerateFromPassword([]byte("weft timing equaliser"), bcrypt.MinCost)

// CheckPassword returns the account if the password is right: 403
// M_FORBIDDEN for an unknown user or a wrong password (the same answer for
// both), 403 M_USER_DEACTIVATED for a deactivated account.
func (s *Service) CheckPassword(ctx context.Context, localpart, password string) (sql.Account, error) {
	acc, err := s.db.Account(ctx, localpart)
	if err != nil && !errors.Is(err, sql.ErrNotFound) {
		return sql.Account{}, internal("load account", err)
	}
	if err != nil || acc.PasswordHash == "" || len(password) > MaxPasswordBytes {
		_ = bcrypt.CompareHashAndPassword(dummyHash, []byte(password))
		if err == nil && acc.Deactivated {
			return sql.Account{}, mxhttp.Errorf(403, "M_USER_DEACTIVATED", "This account has been deactivated")
		}
		return sql.Account{}, mxhttp.Forbidden("Invalid username or password")
	}
	if bcrypt.CompareHashAndPassword([]byte(acc.PasswordHash), truncate(password)) != nil {
		return sql.Account{}, mxhttp.Forbidden("Invalid username or password")
	}
	return acc, nil
}
