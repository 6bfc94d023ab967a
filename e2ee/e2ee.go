// Package e2ee holds the server side of end-to-end encryption for local
// users: device identity keys, one-time and fallback keys, cross-signing
// keys and the signatures over them, and server-side key backup.
//
// Every method returns *mxhttp.Error values for bad input (400 with the
// spec's errcode) and wraps storage failures, which the HTTP layer turns
// into 500s. Other servers' users' keys come from their servers through
// a RemoteKeys (WithRemoteKeys).
package e2ee

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/internal/wake"
	"github.com/weft-chat/weft/sql"
)

// Service is the end-to-end encryption component.
type Service struct {
	db         *sql.DB
	serverName string
	// wake wakes the syncs that a device-list change concerns (nil: none).
	wake *wake.Publisher
	// remote asks other servers about their users' keys (nil: they are
	// listed in failures; remote.go).
	remote RemoteKeys
	// resync refetches stale cached device lists of other servers' users
	// (nil: they are asked for as the users not cached; remote.go).
	resync DeviceListResync
}

// Option tunes the service at construction.
type Option func(*Service)

// WithWake makes the service wake, through p, the syncs of the users who
// track a device list it changes.
func WithWake(p *wake.Publisher) Option {
	return func(s *Service) { s.wake = p }
}

// New makes the service for the users of serverName.
func New(db *sql.DB, serverName string, opts ...Option) *Service {
	s := &Service{db: db, serverName: serverName}
	for _, o := range opts {
		o(s)
	}
	return s
}

// WakeDeviceList wakes the syncs of the users tracking a changed device
// list (ch nil: nothing changed). Call it after the change commits.
func WakeDeviceList(p *wake.Publisher, ch *sql.DeviceListChange) {
	if ch == nil {
		return
	}
	p.Users(ch.UserID)
	p.Rooms(ch.Rooms...)
}

// errRemote marks a user id of another server.
var errRemote = errors.New("remote user")

// localpart returns the localpart of a user id of this server, errRemote
// for another server's, or an error for a malformed id.
func (s *Service) localpart(userID string) (string, error) {
	local, domain, ok := strings.Cut(strings.TrimPrefix(userID, "@"), ":")
	if !strings.HasPrefix(userID, "@") || !ok || local == "" || domain == "" {
		return "", fmt.Errorf("%q is not a user id", userID)
	}
	if domain != s.serverName {
		return "", errRemote
	}
	return local, nil
}

// domainOf is the server name of a user id.
func domainOf(userID string) string {
	_, d, _ := strings.Cut(userID, ":")
	return d
}

// decodeKey decodes an unpadded (or padded) base64 ed25519 public key.
func decodeKey(s string) (ed25519.PublicKey, error) {
	b, err := base64.RawStdEncoding.DecodeString(s)
	if err != nil {
		b, err = base64.StdEncoding.DecodeString(s)
	}
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("not an ed25519 public key")
	}
	return ed25519.PublicKey(b), nil
}

// verify checks the signature of signerUserID's keyID over obj, per the
// spec's "Signing JSON" (canonical JSON without signatures and unsigned).
func verify(obj []byte, signerUserID, keyID, publicKey string) error {
	pub, err := decodeKey(publicKey)
	if err != nil {
		return err
	}
	return gomatrixserverlib.VerifyJSON(signerUserID, gomatrixserverlib.KeyID(keyID), pub, obj)
}

// canonical is obj in canonical JSON.
func canonical(obj []byte) ([]byte, error) {
	return gomatrixserverlib.CanonicalJSON(obj)
}

// stripped is obj in canonical JSON without signatures and unsigned: what
// signatures cover, and what must match when a key is re-uploaded.
func stripped(obj []byte) ([]byte, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(obj, &m); err != nil {
		return nil, err
	}
	delete(m, "signatures")
	delete(m, "unsigned")
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	return canonical(b)
}

// sameKey reports whether two key objects are the same key, whatever
// signatures they carry.
func sameKey(a, b []byte) bool {
	if ca, err := canonical(a); err == nil {
		if cb, err := canonical(b); err == nil && bytes.Equal(ca, cb) {
			return true // also covers unsigned keys, which are strings
		}
	}
	x, err1 := stripped(a)
	y, err2 := stripped(b)
	return err1 == nil && err2 == nil && bytes.Equal(x, y)
}

// signatures is the "signatures" of a signed object: user id → key id →
// signature.
type signatures map[string]map[string]string

// addSignatures returns obj with sigs merged into its "signatures".
func addSignatures(obj []byte, sigs signatures) ([]byte, error) {
	if len(sigs) == 0 {
		return obj, nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(obj, &m); err != nil {
		return nil, err
	}
	all := signatures{}
	if raw, ok := m["signatures"]; ok {
		_ = json.Unmarshal(raw, &all) // a stored object's signatures always parse
	}
	for user, keys := range sigs {
		if all[user] == nil {
			all[user] = map[string]string{}
		}
		for k, v := range keys {
			all[user][k] = v
		}
	}
	raw, err := json.Marshal(all)
	if err != nil {
		return nil, err
	}
	m["signatures"] = raw
	return json.Marshal(m)
}

// failure is one entry of a "failures" map.
func failure(code, format string, args ...any) map[string]any {
	return map[string]any{"errcode": code, "error": fmt.Sprintf(format, args...)}
}

// invalidSignature is 400 M_INVALID_SIGNATURE.
func invalidSignature(format string, args ...any) *mxhttp.Error {
	return mxhttp.Errorf(400, "M_INVALID_SIGNATURE", format, args...)
}
