package userapi

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
)

// Device is the authenticated caller of a request.
type Device struct {
	UserID    string
	Localpart string
	DeviceID  string
	IsGuest   bool
	IsAdmin   bool
	// ExpiresTS is when the access token expires (ms); 0 means never.
	ExpiresTS int64
	tokenHash []byte
}

// Session is what a login, registration or refresh hands the client.
type Session struct {
	UserID       string `json:"user_id"`
	AccessToken  string `json:"access_token"`
	DeviceID     string `json:"device_id"`
	RefreshToken string `json:"refresh_token,omitempty"`
	ExpiresInMS  int64  `json:"expires_in_ms,omitempty"`
}

// AccessTokenFrom extracts the access token of a request: the Authorization
// bearer header, or the deprecated access_token query parameter.
func AccessTokenFrom(r *http.Request) (string, bool) {
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, token, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
			return "", false
		}
		return strings.TrimSpace(token), true
	}
	if t := r.URL.Query().Get("access_token"); t != "" {
		return t, true
	}
	return "", false
}

// Authenticate resolves an access token: 401 M_UNKNOWN_TOKEN when it is
// unknown, with soft_logout when it has expired (the client may log in
// again and keep its device).
func (s *Service) Authenticate(ctx context.Context, token string) (*Device, error) {
	hash := hashToken(token)
	dev, ok := s.tokens.get(hash)
	if !ok {
		owner, err := s.db.AccessToken(ctx, hash)
		if errors.Is(err, sql.ErrNotFound) {
			return nil, mxhttp.UnknownToken(false)
		}
		if err != nil {
			return nil, internal("look up access token", err)
		}
		dev = &Device{UserID: s.UserID(owner.Localpart), Localpart: owner.Localpart, DeviceID: owner.DeviceID,
			IsGuest: owner.IsGuest, IsAdmin: owner.IsAdmin, ExpiresTS: owner.ExpiresTS, tokenHash: hash}
		s.tokens.put(hash, dev)
	}
	if dev.ExpiresTS != 0 && s.now().UnixMilli() >= dev.ExpiresTS {
		return nil, mxhttp.UnknownToken(true)
	}
	return dev, nil
}

// Touch records a device's last use, at most once per lastSeenEvery.
func (s *Service) Touch(ctx context.Context, dev *Device, ip, userAgent string) {
	now := s.now()
	if !s.lastSeen.due(dev.Localpart+"|"+dev.DeviceID, now) {
		return
	}
	if err := s.db.TouchDevice(ctx, dev.Localpart, dev.DeviceID, ip, userAgent, now.UnixMilli()); err != nil {
		s.log.Warn("record device last seen", "user", dev.UserID, "device", dev.DeviceID, "err", err)
	}
}

// StartSession creates (or reuses) a device and issues its tokens. A reused
// device id loses its old tokens, as the spec's login requires. With
// refresh, the access token expires and a refresh token comes with it.
func (s *Service) StartSession(ctx context.Context, localpart, deviceID, displayName string, refresh bool) (Session, error) {
	if deviceID == "" {
		deviceID = NewDeviceID()
	}
	var sess Session
	var revoked [][]byte
	err := s.db.WithTx(ctx, func(q *sql.Queries) error {
		if displayName != "" {
			// The spec: initial_device_display_name is ignored when the
			// device id names a known device (a soft-logged-out client
			// logging in again keeps the name the user gave it).
			_, err := q.Device(ctx, localpart, deviceID)
			if err == nil {
				displayName = ""
			} else if !errors.Is(err, sql.ErrNotFound) {
				return err
			}
		}
		if err := q.UpsertDevice(ctx, localpart, deviceID, displayName); err != nil {
			return err
		}
		var err error
		if revoked, err = q.RevokeDeviceTokens(ctx, localpart, deviceID); err != nil {
			return err
		}
		sess, err = s.issueTokens(ctx, q, localpart, deviceID, refresh)
		return err
	})
	if err != nil {
		return Session{}, internal("start session", err)
	}
	s.revoked(revoked)
	return sess, nil
}

func (s *Service) issueTokens(ctx context.Context, q *sql.Queries, localpart, deviceID string, refresh bool) (Session, error) {
	sess := Session{UserID: s.UserID(localpart), DeviceID: deviceID}
	access, accessHash := newToken("wft_")
	var expires int64
	if refresh {
		expires = s.now().Add(s.cfg.RefreshableTokenExpiry).UnixMilli()
		sess.ExpiresInMS = s.cfg.RefreshableTokenExpiry.Milliseconds()
		var refreshHash []byte
		sess.RefreshToken, refreshHash = newToken("wfr_")
		if err := q.AddRefreshToken(ctx, refreshHash, localpart, deviceID); err != nil {
			return Session{}, err
		}
	}
	if err := q.AddAccessToken(ctx, accessHash, localpart, deviceID, expires); err != nil {
		return Session{}, err
	}
	sess.AccessToken = access
	return sess, nil
}

// Refresh trades a refresh token for a new access and refresh token pair.
// Each refresh token works once: a second use answers 401 M_UNKNOWN_TOKEN.
func (s *Service) Refresh(ctx context.Context, refreshToken string) (Session, error) {
	var sess Session
	err := s.db.WithTx(ctx, func(q *sql.Queries) error {
		localpart, deviceID, err := q.TakeRefreshToken(ctx, hashToken(refreshToken))
		if err != nil {
			return err
		}
		sess, err = s.issueTokens(ctx, q, localpart, deviceID, true)
		return err
	})
	if errors.Is(err, sql.ErrNotFound) {
		return Session{}, mxhttp.UnknownToken(false)
	}
	if err != nil {
		return Session{}, internal("refresh", err)
	}
	return sess, nil
}

// DeleteDevices removes devices with all their tokens, keys and to-device
// messages; the user's device list changes.
func (s *Service) DeleteDevices(ctx context.Context, localpart string, deviceIDs []string) error {
	var revoked [][]byte
	var change *sql.DeviceListChange
	err := s.db.WithTx(ctx, func(q *sql.Queries) error {
		var err error
		if revoked, err = q.DeleteDevices(ctx, localpart, deviceIDs); err != nil || len(deviceIDs) == 0 {
			return err
		}
		change, err = q.DevicesDeleted(ctx, s.UserID(localpart), localpart, deviceIDs)
		return err
	})
	if err != nil {
		return internal("delete devices", err)
	}
	s.revoked(revoked)
	s.wakeDeviceList(change)
	return nil
}

// wakeDeviceList wakes the syncs that track a changed device list (nil:
// none changed).
func (s *Service) wakeDeviceList(ch *sql.DeviceListChange) {
	if ch != nil {
		s.wake.Users(ch.UserID)
		s.wake.Rooms(ch.Rooms...)
	}
}

// Logout ends the caller's session: its device and tokens are deleted.
func (s *Service) Logout(ctx context.Context, dev *Device) error {
	return s.DeleteDevices(ctx, dev.Localpart, []string{dev.DeviceID})
}

// LogoutAll deletes every device of the user, except keep (if not empty).
func (s *Service) LogoutAll(ctx context.Context, localpart, keep string) error {
	devices, err := s.db.Devices(ctx, localpart)
	if err != nil {
		return internal("list devices", err)
	}
	var ids []string
	for _, d := range devices {
		if d.DeviceID != keep {
			ids = append(ids, d.DeviceID)
		}
	}
	return s.DeleteDevices(ctx, localpart, ids)
}

// revoked evicts revoked tokens here and in every other process.
func (s *Service) revoked(hashes [][]byte) {
	for _, h := range hashes {
		s.tokens.evict(h)
		if s.nc != nil {
			if err := s.nc.Publish(revokedSubject, h); err != nil {
				s.log.Warn("broadcast token revocation", "err", err)
			}
		}
	}
}

// tokenCache keeps resolved access tokens so an authenticated request
// costs no database round trip. Entries live cacheTTL at most, which also
// bounds how long a revocation missed by a partitioned process lingers.
type tokenCache struct {
	mu      sync.Mutex
	entries map[string]cacheEntry
}

type cacheEntry struct {
	dev     *Device
	expires time.Time
}

const (
	cacheTTL     = 5 * time.Minute
	cacheMaxSize = 100_000
)

func newTokenCache() *tokenCache { return &tokenCache{entries: make(map[string]cacheEntry)} }

func (c *tokenCache) get(hash []byte) (*Device, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[string(hash)]
	if !ok || time.Now().After(e.expires) {
		return nil, false
	}
	return e.dev, true
}

func (c *tokenCache) put(hash []byte, dev *Device) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= cacheMaxSize {
		now := time.Now()
		for k, e := range c.entries {
			if now.After(e.expires) {
				delete(c.entries, k)
			}
		}
		if len(c.entries) >= cacheMaxSize {
			clear(c.entries)
		}
	}
	c.entries[string(hash)] = cacheEntry{dev: dev, expires: time.Now().Add(cacheTTL)}
}

func (c *tokenCache) evict(hash []byte) {
	c.mu.Lock()
	delete(c.entries, string(hash))
	c.mu.Unlock()
}

// lastSeen throttles last-seen writes to one per device per lastSeenEvery.
type lastSeen struct {
	mu   sync.Mutex
	last map[string]time.Time
}

const lastSeenEvery = 5 * time.Minute

func (l *lastSeen) due(key string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last == nil {
		l.last = make(map[string]time.Time)
	}
	if t, ok := l.last[key]; ok && now.Sub(t) < lastSeenEvery {
		return false
	}
	if len(l.last) > cacheMaxSize {
		clear(l.last)
	}
	l.last[key] = now
	return true
}
