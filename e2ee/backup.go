package e2ee

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
)

// BackupVersionInfo is the body of GET /room_keys/version.
type BackupVersionInfo struct {
	Algorithm string          `json:"algorithm"`
	AuthData  json.RawMessage `json:"auth_data"`
	Count     int64           `json:"count"`
	ETag      string          `json:"etag"`
	Version   string          `json:"version"`
}

// parseVersion reads a version string; anything that is not one of ours
// is a version that does not exist (Synapse's answer too).
func parseVersion(v string) (int64, error) {
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n <= 0 {
		return 0, mxhttp.NotFound("Unknown backup version %q", v)
	}
	return n, nil
}

func notFoundVersion(err error, v string) error {
	if errors.Is(err, sql.ErrNotFound) {
		if v == "" {
			return mxhttp.NotFound("No current backup version")
		}
		return mxhttp.NotFound("Unknown backup version %s", v)
	}
	return err
}

// checkAuthData validates a version's algorithm and auth_data.
func checkAuthData(algorithm string, authData json.RawMessage) ([]byte, error) {
	if algorithm == "" {
		return nil, mxhttp.MissingParam("algorithm is required")
	}
	js, err := canonical(authData)
	if err != nil || len(js) == 0 || js[0] != '{' {
		return nil, mxhttp.InvalidParam("auth_data must be an object")
	}
	return js, nil
}

// CreateBackup makes a new backup version, which becomes the current one.
func (s *Service) CreateBackup(ctx context.Context, localpart, algorithm string, authData json.RawMessage) (string, error) {
	js, err := checkAuthData(algorithm, authData)
	if err != nil {
		return "", err
	}
	v, err := s.db.CreateBackupVersion(ctx, localpart, algorithm, js)
	if err != nil {
		return "", err
	}
	return strconv.FormatInt(v, 10), nil
}

// Backup returns a version, the current one when version is "";
// 404 M_NOT_FOUND when there is none.
func (s *Service) Backup(ctx context.Context, localpart, version string) (BackupVersionInfo, error) {
	var n int64
	if version != "" {
		var err error
		if n, err = parseVersion(version); err != nil {
			return BackupVersionInfo{}, err
		}
	}
	b, err := s.db.BackupVersion(ctx, localpart, n)
	if err != nil {
		return BackupVersionInfo{}, notFoundVersion(err, version)
	}
	return BackupVersionInfo{
		Algorithm: b.Algorithm, AuthData: b.AuthData, Count: b.Count,
		ETag: strconv.FormatInt(b.ETag, 10), Version: strconv.FormatInt(b.Version, 10),
	}, nil
}

// UpdateBackup replaces a version's auth_data. The algorithm cannot change,
// and a version in the body must be the one in the path (400
// M_INVALID_PARAM).
func (s *Service) UpdateBackup(ctx context.Context, localpart, version, algorithm, bodyVersion string, authData json.RawMessage) error {
	cur, err := s.Backup(ctx, localpart, version)
	if err != nil {
		return err
	}
	if bodyVersion != "" && bodyVersion != cur.Version {
		return mxhttp.InvalidParam("version in the body does not match the path")
	}
	js, err := checkAuthData(algorithm, authData)
	if err != nil {
		return err
	}
	if algorithm != cur.Algorithm {
		return mxhttp.InvalidParam("The algorithm of a backup version cannot change")
	}
	n, _ := strconv.ParseInt(cur.Version, 10, 64)
	return notFoundVersion(s.db.UpdateBackupAuthData(ctx, localpart, n, js), version)
}

// DeleteBackup deletes a version and its keys.
func (s *Service) DeleteBackup(ctx context.Context, localpart, version string) error {
	n, err := parseVersion(version)
	if err != nil {
		return err
	}
	return notFoundVersion(s.db.DeleteBackupVersion(ctx, localpart, n), version)
}

// KeyBackupData is the spec's KeyBackupData object.
type KeyBackupData struct {
	FirstMessageIndex *int64          `json:"first_message_index"`
	ForwardedCount    *int64          `json:"forwarded_count"`
	IsVerified        *bool           `json:"is_verified"`
	SessionData       json.RawMessage `json:"session_data"`
}

// BackupKeysResult is the {etag, count} answer of key writes.
type BackupKeysResult struct {
	ETag  string `json:"etag"`
	Count int64  `json:"count"`
}

// PutBackupKeys stores keys (room id → session id → key) in the current
// version, keeping each stored key that is better than its replacement.
// Writing to any version but the current one is 403
// M_WRONG_ROOM_KEYS_VERSION with the current version.
func (s *Service) PutBackupKeys(ctx context.Context, localpart, version string, keys map[string]map[string]KeyBackupData) (BackupKeysResult, error) {
	if version == "" {
		return BackupKeysResult{}, mxhttp.MissingParam("version is required")
	}
	cur, err := s.Backup(ctx, localpart, "")
	if err != nil {
		return BackupKeysResult{}, err
	}
	if cur.Version != version {
		return BackupKeysResult{}, mxhttp.Errorf(http.StatusForbidden, "M_WRONG_ROOM_KEYS_VERSION",
			"Wrong backup version: the current one is %s", cur.Version).With("current_version", cur.Version)
	}
	var sessions []sql.BackupSession
	for roomID, byID := range keys {
		for sessionID, k := range byID {
			if k.FirstMessageIndex == nil || k.ForwardedCount == nil || k.IsVerified == nil || len(k.SessionData) == 0 {
				return BackupKeysResult{}, mxhttp.BadJSON("Key %s in %s lacks first_message_index, forwarded_count, is_verified or session_data", sessionID, roomID)
			}
			js, err := canonical(k.SessionData)
			if err != nil || js[0] != '{' {
				return BackupKeysResult{}, mxhttp.BadJSON("session_data of %s must be an object", sessionID)
			}
			sessions = append(sessions, sql.BackupSession{RoomID: roomID, SessionID: sessionID,
				FirstMessageIndex: *k.FirstMessageIndex, ForwardedCount: *k.ForwardedCount, IsVerified: *k.IsVerified, SessionData: js})
		}
	}
	n, _ := strconv.ParseInt(cur.Version, 10, 64)
	if err := s.db.PutBackupSessions(ctx, localpart, n, sessions); err != nil {
		return BackupKeysResult{}, fmt.Errorf("store backup keys: %w", err)
	}
	return s.backupCounts(ctx, localpart, cur.Version)
}

func (s *Service) backupCounts(ctx context.Context, localpart, version string) (BackupKeysResult, error) {
	b, err := s.Backup(ctx, localpart, version)
	if err != nil {
		return BackupKeysResult{}, err
	}
	return BackupKeysResult{ETag: b.ETag, Count: b.Count}, nil
}

// BackupKeys returns the keys of an existing version: all of them, a
// room's, or one session's (404 M_NOT_FOUND when absent).
func (s *Service) BackupKeys(ctx context.Context, localpart, version, roomID, sessionID string) ([]sql.BackupSession, error) {
	if version == "" {
		return nil, mxhttp.MissingParam("version is required")
	}
	b, err := s.Backup(ctx, localpart, version)
	if err != nil {
		return nil, err
	}
	n, _ := strconv.ParseInt(b.Version, 10, 64)
	out, err := s.db.BackupSessions(ctx, localpart, n, roomID, sessionID)
	if err != nil {
		return nil, fmt.Errorf("read backup keys: %w", err)
	}
	if sessionID != "" && len(out) == 0 {
		return nil, mxhttp.NotFound("No backed-up key for session %s", sessionID)
	}
	return out, nil
}

// DeleteBackupKeys deletes keys of an existing version: all of them, a
// room's, or one session's.
func (s *Service) DeleteBackupKeys(ctx context.Context, localpart, version, roomID, sessionID string) (BackupKeysResult, error) {
	if version == "" {
		return BackupKeysResult{}, mxhttp.MissingParam("version is required")
	}
	b, err := s.Backup(ctx, localpart, version)
	if err != nil {
		return BackupKeysResult{}, err
	}
	n, _ := strconv.ParseInt(b.Version, 10, 64)
	if err := s.db.DeleteBackupSessions(ctx, localpart, n, roomID, sessionID); err != nil {
		return BackupKeysResult{}, fmt.Errorf("delete backup keys: %w", err)
	}
	return s.backupCounts(ctx, localpart, version)
}
