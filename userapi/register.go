package userapi

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
)

// Account creation, shared by POST /register, shared-secret registration
// and `weft admin create-user`; registration tokens and the nonces of
// shared-secret registration.

// MaxUserIDBytes is the spec's limit on a whole user id, sigil and server
// name included.
const MaxUserIDBytes = 255

// User types of Synapse's shared-secret registration and admin API.
const (
	UserTypeBot     = "bot"
	UserTypeSupport = "support"
)

// NonceLifetime is how long a shared-secret registration nonce stays good,
// as in Synapse.
const NonceLifetime = 60 * time.Second

// ErrRegistrationTokenGone is the cause of the 403 Register returns when
// the registration token passed UIA but was used up or expired before the
// account was made; the caller may start UIA again.
var ErrRegistrationTokenGone = errors.New("registration token is used up or expired")

// NormalizeUsername lower-cases the ASCII letters of a desired username,
// as Synapse does on registration (and as the spec's rationale for
// lower-case user ids asks), so "Alice" registers @alice. Only ASCII: a
// Unicode-aware lower-casing maps characters such as the Kelvin sign onto
// ASCII letters, which would let look-alike names through.
func NormalizeUsername(username string) string {
	b := []byte(username)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// ValidateLocalpart checks a localpart for a new account: the spec's
// grammar (a-z 0-9 . _ = - / +, not empty), the 255-byte limit on the
// whole user id, and Synapse's reservations: a leading "_" belongs to
// application services, and purely numeric localparts to guests. Every
// failure is 400 M_INVALID_USERNAME.
func (s *Service) ValidateLocalpart(localpart string, guest bool) error {
	if localpart == "" {
		return invalidUsername("User ID cannot be empty")
	}
	for i := 0; i < len(localpart); i++ {
		if !localpartChar(localpart[i]) {
			return invalidUsername("User ID can only contain characters a-z, 0-9, or '=_-./+'")
		}
	}
	if localpart[0] == '_' {
		return invalidUsername("User ID may not begin with _")
	}
	if len(s.UserID(localpart)) > MaxUserIDBytes {
		return invalidUsername("User ID may not be longer than %d bytes", MaxUserIDBytes)
	}
	if !guest && strings.Trim(localpart, "0123456789") == "" {
		return invalidUsername("Numeric user IDs are reserved for guest users.")
	}
	return nil
}

func localpartChar(c byte) bool {
	return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || strings.IndexByte("._=-/+", c) >= 0
}

func invalidUsername(format string, args ...any) error {
	return mxhttp.Errorf(400, "M_INVALID_USERNAME", format, args...)
}

// CheckUsername tells whether localpart may be registered now: the errors
// of ValidateLocalpart, or 400 M_USER_IN_USE when an account (deactivated
// ones too) has it.
func (s *Service) CheckUsername(ctx context.Context, localpart string) error {
	if err := s.ValidateLocalpart(localpart, false); err != nil {
		return err
	}
	taken, err := s.db.AccountExists(ctx, localpart)
	if err != nil {
		return internal("check username", err)
	}
	if taken {
		return userInUse()
	}
	return nil
}

func userInUse() error { return mxhttp.Errorf(400, "M_USER_IN_USE", "User ID already taken.") }

// ValidUserType reports whether t is a user type Synapse knows ("" is an
// ordinary user).
func ValidUserType(t string) bool { return t == "" || t == UserTypeBot || t == UserTypeSupport }

// NewAccount describes an account to create.
type NewAccount struct {
	// Localpart is the account's localpart, already normalised; empty: a
	// random one is made (numeric for guests, as Synapse does).
	Localpart string
	// Password is required except for guests, who have none.
	Password string
	Guest    bool
	Admin    bool
	// UserType is "", "bot" or "support".
	UserType string
	// DisplayName is the initial display name; empty: the localpart.
	// Guests get none unless one is given.
	DisplayName string
	// RegistrationToken, when set, is counted as used in the transaction
	// that creates the account.
	RegistrationToken string
}

// generatedAttempts bounds retries when a random localpart is taken.
const generatedAttempts = 8

// Register creates an account and returns its localpart. It answers 400
// M_INVALID_USERNAME or M_USER_IN_USE for a bad or taken localpart, 400
// M_MISSING_PARAM without a password, 400 M_WEAK_PASSWORD for an overlong
// one, 400 M_INVALID_PARAM for an unknown user type, and 403 M_FORBIDDEN
// caused by ErrRegistrationTokenGone when the registration token can no
// longer be used (nothing is created then).
func (s *Service) Register(ctx context.Context, a NewAccount) (string, error) {
	if !ValidUserType(a.UserType) {
		return "", mxhttp.InvalidParam("Invalid user type")
	}
	generated := a.Localpart == ""
	if !generated {
		if err := s.ValidateLocalpart(a.Localpart, a.Guest); err != nil {
			return "", err
		}
	}
	var hash string
	if !a.Guest || a.Password != "" {
		if a.Password == "" {
			return "", mxhttp.MissingParam("Missing params: password")
		}
		var err error
		// Hash outside the transaction: bcrypt is slow on purpose.
		if hash, err = s.HashPassword(a.Password); err != nil {
			return "", err
		}
	}
	for attempt := 0; ; attempt++ {
		localpart := a.Localpart
		if generated {
			localpart = generateLocalpart(a.Guest)
		}
		// A generated name that is taken is tried again with a new name in
		// a new transaction: on PostgreSQL the failed insert has aborted
		// the old one.
		err := s.db.WithTx(ctx, func(q *sql.Queries) error { return s.createAccount(ctx, q, localpart, hash, a) })
		switch {
		case err == nil:
			return localpart, nil
		case errors.Is(err, sql.ErrExists) && generated && attempt+1 < generatedAttempts:
			continue
		case errors.Is(err, sql.ErrExists):
			return "", userInUse()
		case errors.Is(err, ErrRegistrationTokenGone):
			return "", &mxhttp.Error{Status: 403, Code: "M_FORBIDDEN", Message: "Invalid registration token", Cause: err}
		default:
			return "", internal("create account", err)
		}
	}
}

func (s *Service) createAccount(ctx context.Context, q *sql.Queries, localpart, hash string, a NewAccount) error {
	if a.RegistrationToken != "" {
		err := q.UseRegistrationToken(ctx, a.RegistrationToken, s.now().UnixMilli())
		if errors.Is(err, sql.ErrNotFound) {
			return ErrRegistrationTokenGone
		}
		if err != nil {
			return fmt.Errorf("use registration token: %w", err)
		}
	}
	if err := q.CreateAccount(ctx, sql.Account{Localpart: localpart, PasswordHash: hash, IsAdmin: a.Admin, IsGuest: a.Guest, UserType: a.UserType}); err != nil {
		return err
	}
	name := a.DisplayName
	if name == "" && !a.Guest {
		name = localpart
	}
	if name == "" {
		return nil
	}
	value, err := json.Marshal(name)
	if err != nil {
		return err
	}
	return q.InsertProfileField(ctx, localpart, "displayname", string(value))
}

// generateLocalpart makes a random localpart: ten digits for a guest, and
// for anyone else twelve lower-case letters and digits starting with a
// letter, so that it is never numeric (numeric ones are the guests').
func generateLocalpart(guest bool) string {
	const digits = "0123456789"
	const alnum = "abcdefghijklmnopqrstuvwxyz0123456789"
	if guest {
		return randomString(10, digits)
	}
	return randomString(1, alnum[:26]) + randomString(11, alnum)
}

// randomString draws n characters uniformly from alphabet (len ≤ 256).
func randomString(n int, alphabet string) string {
	out := make([]byte, 0, n)
	// Rejection sampling keeps the draw uniform: bytes past the largest
	// multiple of len(alphabet) are thrown away.
	limit := 256 - 256%len(alphabet)
	buf := make([]byte, n*2)
	for len(out) < n {
		if _, err := rand.Read(buf); err != nil {
			panic(err) // crypto/rand never fails on supported platforms
		}
		for _, b := range buf {
			if int(b) < limit && len(out) < n {
				out = append(out, alphabet[int(b)%len(alphabet)])
			}
		}
	}
	return string(out)
}

// Shared-secret registration (Synapse's /_synapse/admin/v1/register).

// NewRegistrationNonce hands out a nonce for shared-secret registration,
// good for one registration within NonceLifetime. Stale nonces are pruned
// on the way, so unused ones do not pile up.
func (s *Service) NewRegistrationNonce(ctx context.Context) (string, error) {
	now := s.now()
	if err := s.db.DeleteRegistrationNoncesBefore(ctx, now.Add(-NonceLifetime).UnixMilli()); err != nil {
		return "", internal("prune registration nonces", err)
	}
	// Synapse's nonce: 64 random bytes in hex.
	b := make([]byte, 64)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	nonce := hex.EncodeToString(b)
	if err := s.db.CreateRegistrationNonce(ctx, nonce, now.UnixMilli()); err != nil {
		return "", internal("store registration nonce", err)
	}
	return nonce, nil
}

// TakeRegistrationNonce uses up a nonce: false when it is unknown, already
// used or older than NonceLifetime. A nonce is gone after one call, whatever
// the rest of the request turns out to be, as in Synapse.
func (s *Service) TakeRegistrationNonce(ctx context.Context, nonce string) (bool, error) {
	created, err := s.db.TakeRegistrationNonce(ctx, nonce)
	if errors.Is(err, sql.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, internal("take registration nonce", err)
	}
	return s.now().UnixMilli()-created <= NonceLifetime.Milliseconds(), nil
}

// SharedSecretMAC is the MAC of a shared-secret registration, as Synapse
// and its register_new_matrix_user compute it: hex HMAC-SHA1 keyed with the
// secret over nonce, username, password and "admin" or "notadmin",
// separated by NUL bytes, followed by NUL and the user type when there is
// one.
func SharedSecretMAC(secret, nonce, username, password string, admin bool, userType string) string {
	m := hmac.New(sha1.New, []byte(secret))
	m.Write([]byte(nonce))
	m.Write([]byte{0})
	m.Write([]byte(username))
	m.Write([]byte{0})
	m.Write([]byte(password))
	m.Write([]byte{0})
	if admin {
		m.Write([]byte("admin"))
	} else {
		m.Write([]byte("notadmin"))
	}
	if userType != "" {
		m.Write([]byte{0})
		m.Write([]byte(userType))
	}
	return hex.EncodeToString(m.Sum(nil))
}

// Registration tokens.

// RegistrationTokenChars are the characters of a registration token, as
// Synapse's admin API allows them (the spec's opaque identifier grammar).
const RegistrationTokenChars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~-"

// MaxRegistrationTokenLength is the spec's limit on a registration token.
const MaxRegistrationTokenLength = 64

// TokenSpec describes a registration token to create.
type TokenSpec struct {
	// Token is the token itself; empty: a random one of Length characters.
	Token string
	// Length of a generated token; 0 means 16, Synapse's default.
	Length int
	// UsesAllowed nil: unlimited.
	UsesAllowed *int64
	// ExpiryTS in milliseconds; 0: never.
	ExpiryTS int64
}

// CreateRegistrationToken stores a new registration token. Bad input is 400
// M_INVALID_PARAM, with Synapse's messages: a token that is empty, longer
// than 64 characters, has other characters than RegistrationTokenChars or
// exists already; a length outside 1..64; negative uses; an expiry in the
// past.
func (s *Service) CreateRegistrationToken(ctx context.Context, spec TokenSpec) (sql.RegistrationToken, error) {
	if spec.Token != "" {
		if err := CheckRegistrationTokenString(spec.Token); err != nil {
			return sql.RegistrationToken{}, err
		}
	}
	length := spec.Length
	if length == 0 {
		length = 16
	}
	if spec.Token == "" && (length < 1 || length > MaxRegistrationTokenLength) {
		return sql.RegistrationToken{}, mxhttp.InvalidParam("length must be greater than zero and not greater than %d", MaxRegistrationTokenLength)
	}
	if err := checkUses(spec.UsesAllowed); err != nil {
		return sql.RegistrationToken{}, err
	}
	if err := s.checkExpiry(spec.ExpiryTS); err != nil {
		return sql.RegistrationToken{}, err
	}
	for attempt := 0; ; attempt++ {
		rt := sql.RegistrationToken{Token: spec.Token, UsesAllowed: spec.UsesAllowed, ExpiryTS: spec.ExpiryTS}
		if rt.Token == "" {
			rt.Token = randomString(length, RegistrationTokenChars)
		}
		err := s.db.CreateRegistrationToken(ctx, rt)
		if errors.Is(err, sql.ErrExists) && spec.Token == "" && attempt+1 < generatedAttempts {
			continue
		}
		if errors.Is(err, sql.ErrExists) {
			return sql.RegistrationToken{}, mxhttp.InvalidParam("Token already exists: %s", rt.Token)
		}
		if err != nil {
			return sql.RegistrationToken{}, internal("create registration token", err)
		}
		if rt, err = s.db.RegistrationToken(ctx, rt.Token); err != nil {
			return sql.RegistrationToken{}, internal("load registration token", err)
		}
		return rt, nil
	}
}

// CheckRegistrationTokenString checks a chosen token: 400 M_INVALID_PARAM
// when it is empty, longer than 64 characters or has characters outside
// RegistrationTokenChars.
func CheckRegistrationTokenString(token string) error {
	if len(token) == 0 || len(token) > MaxRegistrationTokenLength {
		return mxhttp.InvalidParam("token must not be empty and must not be longer than %d characters", MaxRegistrationTokenLength)
	}
	for i := 0; i < len(token); i++ {
		if strings.IndexByte(RegistrationTokenChars, token[i]) < 0 {
			return mxhttp.InvalidParam("token must consist only of characters matched by the regex [A-Za-z0-9._~-]")
		}
	}
	return nil
}

func checkUses(usesAllowed *int64) error {
	if usesAllowed != nil && *usesAllowed < 0 {
		return mxhttp.InvalidParam("uses_allowed must be a non-negative integer or null")
	}
	return nil
}

func (s *Service) checkExpiry(expiryTS int64) error {
	if expiryTS != 0 && expiryTS < s.now().UnixMilli() {
		return mxhttp.InvalidParam("expiry_time must not be in the past")
	}
	return nil
}

// RegistrationTokens lists the registration tokens, oldest first: all of
// them when valid is nil, else only those that are (or are not) usable now.
func (s *Service) RegistrationTokens(ctx context.Context, valid *bool) ([]sql.RegistrationToken, error) {
	all, err := s.db.RegistrationTokens(ctx)
	if err != nil {
		return nil, internal("list registration tokens", err)
	}
	if valid == nil {
		return all, nil
	}
	now := s.now().UnixMilli()
	out := all[:0]
	for _, rt := range all {
		if rt.Usable(now) == *valid {
			out = append(out, rt)
		}
	}
	return out, nil
}

// RegistrationToken returns one token: 404 M_NOT_FOUND when unknown.
func (s *Service) RegistrationToken(ctx context.Context, token string) (sql.RegistrationToken, error) {
	rt, err := s.db.RegistrationToken(ctx, token)
	if errors.Is(err, sql.ErrNotFound) {
		return sql.RegistrationToken{}, mxhttp.NotFound("No such registration token: %s", token)
	}
	if err != nil {
		return sql.RegistrationToken{}, internal("load registration token", err)
	}
	return rt, nil
}

// TokenUpdate changes a registration token's limits; fields whose Set
// flag is false are left as they are.
type TokenUpdate struct {
	SetUsesAllowed bool
	UsesAllowed    *int64 // nil: unlimited
	SetExpiry      bool
	ExpiryTS       int64 // 0: never
}

// UpdateRegistrationToken applies u and returns the token: 404 M_NOT_FOUND
// when unknown, 400 M_INVALID_PARAM for negative uses or a past expiry.
func (s *Service) UpdateRegistrationToken(ctx context.Context, token string, u TokenUpdate) (sql.RegistrationToken, error) {
	if u.SetUsesAllowed {
		if err := checkUses(u.UsesAllowed); err != nil {
			return sql.RegistrationToken{}, err
		}
	}
	if u.SetExpiry {
		if err := s.checkExpiry(u.ExpiryTS); err != nil {
			return sql.RegistrationToken{}, err
		}
	}
	var rt sql.RegistrationToken
	err := s.db.WithTx(ctx, func(q *sql.Queries) error {
		var err error
		if rt, err = q.RegistrationToken(ctx, token); err != nil {
			return err
		}
		if u.SetUsesAllowed {
			rt.UsesAllowed = u.UsesAllowed
		}
		if u.SetExpiry {
			rt.ExpiryTS = u.ExpiryTS
		}
		return q.UpdateRegistrationToken(ctx, token, rt.UsesAllowed, rt.ExpiryTS)
	})
	if errors.Is(err, sql.ErrNotFound) {
		return sql.RegistrationToken{}, mxhttp.NotFound("No such registration token: %s", token)
	}
	if err != nil {
		return sql.RegistrationToken{}, internal("update registration token", err)
	}
	return rt, nil
}

// DeleteRegistrationToken removes a token: 404 M_NOT_FOUND when unknown.
func (s *Service) DeleteRegistrationToken(ctx context.Context, token string) error {
	err := s.db.DeleteRegistrationToken(ctx, token)
	if errors.Is(err, sql.ErrNotFound) {
		return mxhttp.NotFound("No such registration token: %s", token)
	}
	if err != nil {
		return internal("delete registration token", err)
	}
	return nil
}
