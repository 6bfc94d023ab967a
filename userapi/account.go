package userapi

import (
	"context"
	"errors"
	"time"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
)

// LoginTokenLifetime is how long a token from NewLoginToken works: the two
// minutes the spec recommends for POST /login/get_token.
const LoginTokenLifetime = 2 * time.Minute

// MaxDeviceDisplayName bounds device display names in characters, as
// Synapse does.
const MaxDeviceDisplayName = 100

// ValidDeviceDisplayName answers 400 M_TOO_LARGE (Synapse's answer) for a
// display name past MaxDeviceDisplayName characters.
func ValidDeviceDisplayName(name string) error {
	if len([]rune(name)) > MaxDeviceDisplayName {
		return mxhttp.Errorf(400, "M_TOO_LARGE", "Device display name is longer than %d characters", MaxDeviceDisplayName)
	}
	return nil
}

// ValidNewPassword checks a password about to be set: 400 M_MISSING_PARAM
// when empty, 400 M_WEAK_PASSWORD past MaxPasswordBytes. Endpoints call it
// before user-interactive auth, whose session ends when it succeeds, so a
// bad password never costs the user a second round of auth.
func ValidNewPassword(password string) error {
	if password == "" {
		return mxhttp.MissingParam("new_password must not be empty")
	}
	if len(password) > MaxPasswordBytes {
		return mxhttp.Errorf(400, "M_WEAK_PASSWORD", "Password is longer than %d bytes", MaxPasswordBytes)
	}
	return nil
}

// Devices lists the user's devices, by device id.
func (s *Service) Devices(ctx context.Context, localpart string) ([]sql.Device, error) {
	ds, err := s.db.Devices(ctx, localpart)
	if err != nil {
		return nil, internal("list devices", err)
	}
	return ds, nil
}

// Device returns one of the user's devices: 404 M_NOT_FOUND if the user
// has no such device.
func (s *Service) Device(ctx context.Context, localpart, deviceID string) (sql.Device, error) {
	d, err := s.db.Device(ctx, localpart, deviceID)
	if errors.Is(err, sql.ErrNotFound) {
		return sql.Device{}, mxhttp.NotFound("Unknown device")
	}
	if err != nil {
		return sql.Device{}, internal("load device", err)
	}
	return d, nil
}

// RenameDevice sets a device's display name: 404 M_NOT_FOUND if the user
// has no such device, 400 M_TOO_LARGE for an overlong name.
func (s *Service) RenameDevice(ctx context.Context, localpart, deviceID, name string) error {
	if err := ValidDeviceDisplayName(name); err != nil {
		return err
	}
	err := s.db.SetDeviceDisplayName(ctx, localpart, deviceID, name)
	if errors.Is(err, sql.ErrNotFound) {
		return mxhttp.NotFound("Unknown device")
	}
	if err != nil {
		return internal("rename device", err)
	}
	return nil
}

// NewLoginToken issues a one-time m.login.token for the user, valid for
// LoginTokenLifetime.
func (s *Service) NewLoginToken(ctx context.Context, localpart string) (string, error) {
	token, hash := newToken("wfl_")
	if err := s.db.AddLoginToken(ctx, hash, localpart, s.now().Add(LoginTokenLifetime).UnixMilli()); err != nil {
		return "", internal("store login token", err)
	}
	return token, nil
}

// TakeLoginToken consumes a login token and returns its account. The spec
// answer for a token that is unknown, used or expired is 403 M_FORBIDDEN;
// a deactivated account answers 403 M_USER_DEACTIVATED.
func (s *Service) TakeLoginToken(ctx context.Context, token string) (sql.Account, error) {
	localpart, err := s.db.TakeLoginToken(ctx, hashToken(token), s.now().UnixMilli())
	if errors.Is(err, sql.ErrNotFound) {
		return sql.Account{}, mxhttp.Forbidden("Invalid login token")
	}
	if err != nil {
		return sql.Account{}, internal("take login token", err)
	}
	acc, err := s.db.Account(ctx, localpart)
	if errors.Is(err, sql.ErrNotFound) {
		return sql.Account{}, mxhttp.Forbidden("Invalid login token")
	}
	if err != nil {
		return sql.Account{}, internal("load account", err)
	}
	if acc.Deactivated {
		return sql.Account{}, mxhttp.Errorf(403, "M_USER_DEACTIVATED", "This account has been deactivated")
	}
	return acc, nil
}

// ChangePassword sets the user's password. With logoutDevices every device
// but keep (the caller's, whose token the spec says should stay valid) is
// deleted with its tokens, in the same transaction as the new hash, so no
// old session outlives a completed change.
func (s *Service) ChangePassword(ctx context.Context, localpart, newPassword string, logoutDevices bool, keep string) error {
	if err := ValidNewPassword(newPassword); err != nil {
		return err
	}
	hash, err := s.HashPassword(newPassword)
	if err != nil {
		return err
	}
	var revoked [][]byte
	var change *sql.DeviceListChange
	err = s.db.WithTx(ctx, func(q *sql.Queries) error {
		if err := q.SetPasswordHash(ctx, localpart, hash); err != nil {
			return err
		}
		if !logoutDevices {
			return nil
		}
		devices, err := q.Devices(ctx, localpart)
		if err != nil {
			return err
		}
		var ids []string
		for _, d := range devices {
			if d.DeviceID != keep {
				ids = append(ids, d.DeviceID)
			}
		}
		if revoked, err = q.DeleteDevices(ctx, localpart, ids); err != nil || len(ids) == 0 {
			return err
		}
		change, err = q.DevicesDeleted(ctx, s.UserID(localpart), localpart, ids)
		return err
	})
	if errors.Is(err, sql.ErrNotFound) {
		return mxhttp.NotFound("Unknown user")
	}
	if err != nil {
		return internal("change password", err)
	}
	s.revoked(revoked)
	s.wakeDeviceList(change)
	return nil
}

// Deactivate closes the account for good: it is marked deactivated (its
// name stays taken), its password is removed and every device and token
// is deleted. With erase the profile is cleared too, as Synapse does.
// Afterwards login answers 403 M_USER_DEACTIVATED.
func (s *Service) Deactivate(ctx context.Context, localpart string, erase bool) error {
	var revoked [][]byte
	var change *sql.DeviceListChange
	err := s.db.WithTx(ctx, func(q *sql.Queries) error {
		if err := q.Deactivate(ctx, localpart); err != nil {
			return err
		}
		var err error
		if revoked, err = q.DeleteUserSessions(ctx, localpart); err != nil {
			return err
		}
		if change, err = q.DevicesDeleted(ctx, s.UserID(localpart), localpart, nil); err != nil {
			return err
		}
		if erase {
			return q.DeleteProfile(ctx, localpart)
		}
		return nil
	})
	if errors.Is(err, sql.ErrNotFound) {
		return mxhttp.NotFound("Unknown user")
	}
	if err != nil {
		return internal("deactivate account", err)
	}
	s.revoked(revoked)
	s.wakeDeviceList(change)
	return nil
}
