// Package userapi owns accounts, devices, passwords, access and refresh
// tokens and user-interactive auth. The client API's handlers call it; it
// alone touches the account tables.
package userapi

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/internal/wake"
	"github.com/weft-chat/weft/sql"
)

// revokedSubject carries hashes of revoked access tokens to every process,
// so each evicts them from its token cache at once.
const revokedSubject = "userapi.token_revoked"

// Service is the account and session service.
type Service struct {
	db         *sql.DB
	serverName string
	cfg        config.Auth
	log        *slog.Logger
	nc         *nats.Conn // nil: a single process with no bus

	tokens   *tokenCache
	lastSeen lastSeen
	sub      *nats.Subscription
	now      func() time.Time
	// wake wakes the syncs that track a device list when devices go.
	wake *wake.Publisher
}

// New makes the service. With nc set, token revocations are broadcast to
// and received from the other processes sharing the database.
func New(db *sql.DB, serverName string, cfg config.Auth, nc *nats.Conn, log *slog.Logger) (*Service, error) {
	s := &Service{db: db, serverName: serverName, cfg: cfg, log: log, nc: nc, tokens: newTokenCache(), now: time.Now,
		wake: wake.NewPublisher(nc, log)}
	if nc != nil {
		sub, err := nc.Subscribe(revokedSubject, func(m *nats.Msg) { s.tokens.evict(m.Data) })
		if err != nil {
			return nil, fmt.Errorf("subscribe %s: %w", revokedSubject, err)
		}
		s.sub = sub
	}
	return s, nil
}

// Close stops listening for revocations.
func (s *Service) Close() error {
	if s.sub != nil {
		return s.sub.Unsubscribe()
	}
	return nil
}

// ServerName is the domain of local user ids.
func (s *Service) ServerName() string { return s.serverName }

// UserID returns the full user id of a local localpart.
func (s *Service) UserID(localpart string) string { return "@" + localpart + ":" + s.serverName }

// LocalpartOf returns the localpart of a user id on this server, or an error
// for remote or malformed ids.
func (s *Service) LocalpartOf(userID string) (string, error) {
	if !strings.HasPrefix(userID, "@") {
		return "", fmt.Errorf("%q is not a user id", userID)
	}
	local, domain, ok := strings.Cut(userID[1:], ":")
	if !ok || local == "" {
		return "", fmt.Errorf("%q is not a user id", userID)
	}
	if domain != s.serverName {
		return "", errRemoteUser
	}
	return local, nil
}

var errRemoteUser = errors.New("user is not on this server")

// IsRemoteUser reports whether LocalpartOf failed because the id belongs to
// another server.
func IsRemoteUser(err error) bool { return errors.Is(err, errRemoteUser) }

// newToken returns a random token with a readable prefix and the SHA-256
// hash under which it is stored.
func newToken(prefix string) (token string, hash []byte) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	token = prefix + base64.RawURLEncoding.EncodeToString(b)
	return token, hashToken(token)
}

func hashToken(token string) []byte {
	h := sha256.Sum256([]byte(token))
	return h[:]
}

// NewDeviceID returns a random device id of ten upper-case letters, like
// Synapse's.
func NewDeviceID() string {
	const letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
	b := make([]byte, 10)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	for i := range b {
		b[i] = letters[int(b[i])%len(letters)]
	}
	return string(b)
}

// internal wraps a storage failure as a 500 with its context.
func internal(op string, err error) error {
	return mxhttp.Internal(fmt.Errorf("%s: %w", op, err))
}
