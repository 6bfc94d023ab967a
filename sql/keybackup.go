package sql

import (
	"context"
	"fmt"
)

// BackupVersion is one server-side key backup version.
type BackupVersion struct {
	Version   int64
	Algorithm string
	AuthData  []byte // a JSON object
	ETag      int64
	Count     int64 // number of keys stored
}

// CreateBackupVersion makes a new backup version, numbered after every
// version the user ever had (deleted ones included), and returns its number.
func (t *Queries) CreateBackupVersion(ctx context.Context, localpart, algorithm string, authData []byte) (int64, error) {
	var v int64
	err := t.ensureTx(ctx, func(q *Queries) error {
		if err := q.q.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) + 1 FROM key_backup_versions WHERE localpart = $1`,
			localpart).Scan(&v); err != nil {
			return err
		}
		_, err := q.q.ExecContext(ctx, `INSERT INTO key_backup_versions (localpart, version, algorithm, auth_data) VALUES ($1, $2, $3, $4)`,
			localpart, v, algorithm, string(authData))
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("create backup version: %w", err)
	}
	return v, nil
}

// BackupVersion returns a live backup version, or the latest one when
// version is 0; ErrNotFound when there is none.
func (t *Queries) BackupVersion(ctx context.Context, localpart string, version int64) (BackupVersion, error) {
	var b BackupVersion
	var auth string
	err := t.q.QueryRowContext(ctx, `SELECT v.version, v.algorithm, v.auth_data, v.etag,
		(SELECT COUNT(*) FROM key_backup_sessions s WHERE s.localpart = v.localpart AND s.version = v.version)
		FROM key_backup_versions v WHERE v.localpart = $1 AND NOT v.deleted AND ($2 = 0 OR v.version = $2)
		ORDER BY v.version DESC LIMIT 1`, localpart, version).Scan(&b.Version, &b.Algorithm, &auth, &b.ETag, &b.Count)
	b.AuthData = []byte(auth)
	return b, noRows(err)
}

// UpdateBackupAuthData replaces a live version's auth_data; ErrNotFound
// when it does not exist.
func (t *Queries) UpdateBackupAuthData(ctx context.Context, localpart string, version int64, authData []byte) error {
	return expectRow(t.q.ExecContext(ctx, `UPDATE key_backup_versions SET auth_data = $1 WHERE localpart = $2 AND version = $3 AND NOT deleted`,
		string(authData), localpart, version))
}

// DeleteBackupVersion deletes a live version and its keys; ErrNotFound
// when it does not exist.
func (t *Queries) DeleteBackupVersion(ctx context.Context, localpart string, version int64) error {
	return t.ensureTx(ctx, func(q *Queries) error {
		if err := expectRow(q.q.ExecContext(ctx, `UPDATE key_backup_versions SET deleted = TRUE WHERE localpart = $1 AND version = $2 AND NOT deleted`,
			localpart, version)); err != nil {
			return err
		}
		_, err := q.q.ExecContext(ctx, `DELETE FROM key_backup_sessions WHERE localpart = $1 AND version = $2`, localpart, version)
		return err
	})
}

// BackupSession is one backed-up megolm session key.
type BackupSession struct {
	RoomID            string
	SessionID         string
	FirstMessageIndex int64
	ForwardedCount    int64
	IsVerified        bool
	SessionData       []byte // a JSON object
}

// better reports whether n should replace old under the spec's rules: a
// verified key beats an unverified one, then the lower first message
// index, then the lower forwarded count.
func (n BackupSession) better(old BackupSession) bool {
	if n.IsVerified != old.IsVerified {
		return n.IsVerified
	}
	if n.FirstMessageIndex != old.FirstMessageIndex {
		return n.FirstMessageIndex < old.FirstMessageIndex
	}
	return n.ForwardedCount < old.ForwardedCount
}

// PutBackupSessions stores the sessions in a version, each replacing a
// stored one only when it is better, and bumps the version's etag if any
// changed. The caller has checked that the version is live.
func (t *Queries) PutBackupSessions(ctx context.Context, localpart string, version int64, sessions []BackupSession) error {
	return t.ensureTx(ctx, func(q *Queries) error {
		changed := false
		for _, s := range sessions {
			old, err := q.backupSessions(ctx, localpart, version, s.RoomID, s.SessionID)
			if err != nil {
				return err
			}
			if len(old) == 1 && !s.better(old[0]) {
				continue
			}
			if _, err := q.q.ExecContext(ctx, `INSERT INTO key_backup_sessions
				(localpart, version, room_id, session_id, first_message_index, forwarded_count, is_verified, session_data)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
				ON CONFLICT (localpart, version, room_id, session_id) DO UPDATE SET first_message_index = excluded.first_message_index,
				forwarded_count = excluded.forwarded_count, is_verified = excluded.is_verified, session_data = excluded.session_data`,
				localpart, version, s.RoomID, s.SessionID, s.FirstMessageIndex, s.ForwardedCount, s.IsVerified, string(s.SessionData)); err != nil {
				return err
			}
			changed = true
		}
		if changed {
			return q.bumpBackupETag(ctx, localpart, version)
		}
		return nil
	})
}

func (t *Queries) bumpBackupETag(ctx context.Context, localpart string, version int64) error {
	_, err := t.q.ExecContext(ctx, `UPDATE key_backup_versions SET etag = etag + 1 WHERE localpart = $1 AND version = $2`, localpart, version)
	return err
}

// BackupSessions returns the keys of a version, all of them, one room's
// (roomID set) or one session's (both set).
func (t *Queries) BackupSessions(ctx context.Context, localpart string, version int64, roomID, sessionID string) ([]BackupSession, error) {
	return t.backupSessions(ctx, localpart, version, roomID, sessionID)
}

func (t *Queries) backupSessions(ctx context.Context, localpart string, version int64, roomID, sessionID string) ([]BackupSession, error) {
	rows, err := t.q.QueryContext(ctx, `SELECT room_id, session_id, first_message_index, forwarded_count, is_verified, session_data
		FROM key_backup_sessions WHERE localpart = $1 AND version = $2 AND ($3 = '' OR room_id = $3) AND ($4 = '' OR session_id = $4)
		ORDER BY room_id, session_id`, localpart, version, roomID, sessionID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []BackupSession
	for rows.Next() {
		var s BackupSession
		var data string
		if err := rows.Scan(&s.RoomID, &s.SessionID, &s.FirstMessageIndex, &s.ForwardedCount, &s.IsVerified, &data); err != nil {
			return nil, err
		}
		s.SessionData = []byte(data)
		out = append(out, s)
	}
	return out, rows.Err()
}

// DeleteBackupSessions deletes the keys of a version, all of them, one
// room's or one session's, and bumps the etag if any were deleted.
func (t *Queries) DeleteBackupSessions(ctx context.Context, localpart string, version int64, roomID, sessionID string) error {
	return t.ensureTx(ctx, func(q *Queries) error {
		res, err := q.q.ExecContext(ctx, `DELETE FROM key_backup_sessions WHERE localpart = $1 AND version = $2
			AND ($3 = '' OR room_id = $3) AND ($4 = '' OR session_id = $4)`, localpart, version, roomID, sessionID)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n > 0 {
			return q.bumpBackupETag(ctx, localpart, version)
		}
		return nil
	})
}
