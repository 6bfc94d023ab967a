package sql

import (
	"context"
	"errors"
	"fmt"
	"slices"
)

// Device lists across servers (migration 0018_remote_devices.sql): the
// cache of remote users' devices and cross-signing keys, and the sequence
// of updates sent about local users.

// Cross-signing key types that servers share (never user_signing).
const (
	CrossSigningMaster      = "master"
	CrossSigningSelfSigning = "self_signing"
)

// RemoteDeviceList is the state of a remote user's cached device list.
type RemoteDeviceList struct {
	UserID   string
	StreamID int64
	// SyncedPos is the events stream position before the latest fetch of
	// the whole list.
	SyncedPos int64
	// Stale is true when an update was missed and the list was not
	// fetched since.
	Stale bool
}

// RemoteDevice is a device of a remote user as their server described it.
type RemoteDevice struct {
	DeviceID    string
	DisplayName string
	// Keys is the device's identity keys JSON as sent; nil when none.
	Keys []byte
}

// RemoteDeviceList returns the cache state of a remote user's list, or
// ErrNotFound when it is not tracked.
func (t *Queries) RemoteDeviceList(ctx context.Context, userID string) (RemoteDeviceList, error) {
	l := RemoteDeviceList{UserID: userID}
	err := t.q.QueryRowContext(ctx, `SELECT stream_id, synced_pos, stale FROM remote_device_lists WHERE user_id = $1`, userID).
		Scan(&l.StreamID, &l.SyncedPos, &l.Stale)
	return l, noRows(err)
}

// ApplyRemoteDeviceUpdate applies one m.device_list_update on top of the
// cached list, whose latest update must still be prevID (the caller
// checked the update's prev_id against it): the device is replaced, or
// removed when deleted, and the list moves to streamID. applied is false,
// and nothing changes, when the list moved or went stale meanwhile.
func (t *Queries) ApplyRemoteDeviceUpdate(ctx context.Context, userID string, prevID, streamID int64, dev RemoteDevice, deleted bool) (applied bool, err error) {
	err = t.ensureTx(ctx, func(q *Queries) error {
		n, err := rowsAffected(q.q.ExecContext(ctx, `UPDATE remote_device_lists SET stream_id = $3
			WHERE user_id = $1 AND stream_id = $2 AND NOT stale`, userID, prevID, streamID))
		if err != nil || n == 0 {
			return err
		}
		applied = true
		if deleted {
			_, err = q.q.ExecContext(ctx, `DELETE FROM remote_devices WHERE user_id = $1 AND device_id = $2`, userID, dev.DeviceID)
			return err
		}
		return q.putRemoteDevice(ctx, userID, dev)
	})
	if err != nil {
		return false, fmt.Errorf("apply device list update of %s: %w", userID, err)
	}
	return applied, nil
}

func (t *Queries) putRemoteDevice(ctx context.Context, userID string, dev RemoteDevice) error {
	_, err := t.q.ExecContext(ctx, `INSERT INTO remote_devices (user_id, device_id, display_name, key_json) VALUES ($1, $2, $3, $4)
		ON CONFLICT (user_id, device_id) DO UPDATE SET display_name = excluded.display_name, key_json = excluded.key_json`,
		userID, dev.DeviceID, dev.DisplayName, string(dev.Keys))
	return err
}

// ReplaceRemoteDeviceList stores a whole fetched list in place of the
// cached one: the devices, the cross-signing keys (by type; an absent
// type is removed), the stream_id the remote server gave and the events
// position read before the fetch. The list is no longer stale.
func (t *Queries) ReplaceRemoteDeviceList(ctx context.Context, l RemoteDeviceList, devices []RemoteDevice, crossSigning map[string][]byte) error {
	err := t.ensureTx(ctx, func(q *Queries) error {
		if _, err := q.q.ExecContext(ctx, `INSERT INTO remote_device_lists (user_id, stream_id, synced_pos, stale) VALUES ($1, $2, $3, FALSE)
			ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id, synced_pos = excluded.synced_pos, stale = FALSE`,
			l.UserID, l.StreamID, l.SyncedPos); err != nil {
			return err
		}
		for _, table := range []string{"remote_devices", "remote_cross_signing_keys"} {
			if _, err := q.q.ExecContext(ctx, `DELETE FROM `+table+` WHERE user_id = $1`, l.UserID); err != nil {
				return err
			}
		}
		for _, d := range devices {
			if err := q.putRemoteDevice(ctx, l.UserID, d); err != nil {
				return err
			}
		}
		return q.SetRemoteCrossSigningKeys(ctx, l.UserID, crossSigning)
	})
	if err != nil {
		return fmt.Errorf("replace device list of %s: %w", l.UserID, err)
	}
	return nil
}

// SetRemoteCrossSigningKeys stores a remote user's cross-signing keys, by
// type (master, self_signing); types not in keys are left as they are.
func (t *Queries) SetRemoteCrossSigningKeys(ctx context.Context, userID string, keys map[string][]byte) error {
	for typ, js := range keys {
		if _, err := t.q.ExecContext(ctx, `INSERT INTO remote_cross_signing_keys (user_id, key_type, key_json) VALUES ($1, $2, $3)
			ON CONFLICT (user_id, key_type) DO UPDATE SET key_json = excluded.key_json`, userID, typ, string(js)); err != nil {
			return fmt.Errorf("store cross-signing key of %s: %w", userID, err)
		}
	}
	return nil
}

// MarkRemoteDeviceListStale records that updates of a remote user's list
// were missed: the cache is not used until the list is fetched again. A
// user not tracked yet gets a stale row, so that the list is fetched.
func (t *Queries) MarkRemoteDeviceListStale(ctx context.Context, userID string) error {
	_, err := t.q.ExecContext(ctx, `INSERT INTO remote_device_lists (user_id, stream_id, synced_pos, stale) VALUES ($1, 0, 0, TRUE)
		ON CONFLICT (user_id) DO UPDATE SET stale = TRUE`, userID)
	if err != nil {
		return fmt.Errorf("mark device list of %s stale: %w", userID, err)
	}
	return nil
}

// StaleRemoteDeviceLists returns, by user id, the remote users after
// after whose cached list is stale (it must be fetched again), at most
// limit.
func (t *Queries) StaleRemoteDeviceLists(ctx context.Context, after string, limit int) ([]string, error) {
	return t.staleUsers(ctx, `SELECT user_id FROM remote_device_lists WHERE stale AND user_id > $1 ORDER BY user_id LIMIT $2`, after, limit)
}

// StaleAmong returns those of the remote users whose cached list is
// stale.
func (t *Queries) StaleAmong(ctx context.Context, userIDs []string) ([]string, error) {
	var out []string
	for chunk := range slices.Chunk(userIDs, 500) {
		args := make([]any, len(chunk))
		for i, u := range chunk {
			args[i] = u
		}
		stale, err := t.staleUsers(ctx, `SELECT user_id FROM remote_device_lists WHERE stale AND user_id IN (`+placeholders(1, len(chunk))+`)`, args...)
		if err != nil {
			return nil, err
		}
		out = append(out, stale...)
	}
	return out, nil
}

func (t *Queries) staleUsers(ctx context.Context, query string, args ...any) ([]string, error) {
	rows, err := t.q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("stale device lists: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var u string
		if err := rows.Scan(&u); err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, rows.Err()
}

// localSuffix is an SQL condition: the user in column col is of the
// server whose ":"+name is $n, and $n+1 is that suffix's length. An
// exact comparison, where LIKE ignores case on SQLite; and SQLite
// prepares a statement again at every run that binds a LIKE pattern
// (the pattern may change the plan): 5% of the CPU of the rooms bench
// went to the push counter's members query, most of it parsing.
func localSuffix(col string, n int) string {
	return fmt.Sprintf(`substr(%s, length(%s) - $%d + 1) = $%d`, col, col, n+1, n)
}

// SharedSince reports, for each of the remote users, the earliest events
// stream position since which they and a user of localServer have both
// stayed joined to one room: the later of the two memberships' positions,
// the earliest such over every room they share. Users who share no room
// with a local user are absent.
func (t *Queries) SharedSince(ctx context.Context, localServer string, userIDs []string) (map[string]int64, error) {
	out := make(map[string]int64, len(userIDs))
	suffix := ":" + localServer
	for chunk := range slices.Chunk(userIDs, 500) {
		args := []any{suffix, len(suffix)}
		for _, u := range chunk {
			args = append(args, u)
		}
		rows, err := t.q.QueryContext(ctx, `SELECT u.user_id, MIN(CASE WHEN u.stream_pos > l.stream_pos THEN u.stream_pos ELSE l.stream_pos END)
			FROM room_members u JOIN room_members l ON l.room_nid = u.room_nid
			WHERE u.user_id IN (`+placeholders(3, len(chunk))+`) AND u.membership = 'join'
				AND l.membership = 'join' AND `+localSuffix("l.user_id", 1)+`
			GROUP BY u.user_id`, args...)
		if err != nil {
			return nil, fmt.Errorf("rooms shared with local users: %w", err)
		}
		for rows.Next() {
			var u string
			var pos int64
			if err := rows.Scan(&u, &pos); err != nil {
				rows.Close()
				return nil, err
			}
			out[u] = pos
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// RemoteDeviceKeys is what the cache holds of a remote user.
type RemoteDeviceKeys struct {
	Devices []RemoteDevice
	// CrossSigning holds the master and self-signing keys, by type.
	CrossSigning map[string][]byte
}

// FreshRemoteDeviceKeys returns the cached devices and cross-signing keys
// of those of the remote users whose cache is complete: tracked, not
// stale, and sharing a room with a user of localServer without a break
// since the list was last fetched (so that no update was withheld from
// this server). The others are absent: ask their servers.
func (t *Queries) FreshRemoteDeviceKeys(ctx context.Context, localServer string, userIDs []string) (map[string]*RemoteDeviceKeys, error) {
	out := map[string]*RemoteDeviceKeys{}
	if len(userIDs) == 0 {
		return out, nil
	}
	since, err := t.SharedSince(ctx, localServer, userIDs)
	if err != nil {
		return nil, err
	}
	var fresh []string
	for chunk := range slices.Chunk(userIDs, 500) {
		args := make([]any, len(chunk))
		for i, u := range chunk {
			args[i] = u
		}
		rows, err := t.q.QueryContext(ctx, `SELECT user_id, synced_pos FROM remote_device_lists
			WHERE NOT stale AND user_id IN (`+placeholders(1, len(chunk))+`)`, args...)
		if err != nil {
			return nil, fmt.Errorf("cached device lists: %w", err)
		}
		for rows.Next() {
			var u string
			var synced int64
			if err := rows.Scan(&u, &synced); err != nil {
				rows.Close()
				return nil, err
			}
			if s, ok := since[u]; ok && s <= synced {
				fresh = append(fresh, u)
				out[u] = &RemoteDeviceKeys{CrossSigning: map[string][]byte{}}
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	for chunk := range slices.Chunk(fresh, 500) {
		args := make([]any, len(chunk))
		for i, u := range chunk {
			args[i] = u
		}
		in := placeholders(1, len(chunk))
		rows, err := t.q.QueryContext(ctx, `SELECT user_id, device_id, display_name, key_json FROM remote_devices
			WHERE user_id IN (`+in+`) ORDER BY user_id, device_id`, args...)
		if err != nil {
			return nil, fmt.Errorf("cached devices: %w", err)
		}
		for rows.Next() {
			var u, keys string
			var d RemoteDevice
			if err := rows.Scan(&u, &d.DeviceID, &d.DisplayName, &keys); err != nil {
				rows.Close()
				return nil, err
			}
			if keys != "" {
				d.Keys = []byte(keys)
			}
			out[u].Devices = append(out[u].Devices, d)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
		rows, err = t.q.QueryContext(ctx, `SELECT user_id, key_type, key_json FROM remote_cross_signing_keys
			WHERE user_id IN (`+in+`)`, args...)
		if err != nil {
			return nil, fmt.Errorf("cached cross-signing keys: %w", err)
		}
		for rows.Next() {
			var u, typ, js string
			if err := rows.Scan(&u, &typ, &js); err != nil {
				rows.Close()
				return nil, err
			}
			out[u].CrossSigning[typ] = []byte(js)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// RemoteMembersSharingRoom returns, for each of the local users, the
// users of other servers than localServer joined to a room they are
// joined to, each once: whom their presence and device lists concern.
func (t *Queries) RemoteMembersSharingRoom(ctx context.Context, localServer string, userIDs []string) (map[string][]string, error) {
	out := map[string][]string{}
	suffix := ":" + localServer
	for chunk := range slices.Chunk(userIDs, 500) {
		args := []any{suffix, len(suffix)}
		for _, u := range chunk {
			args = append(args, u)
		}
		rows, err := t.q.QueryContext(ctx, `SELECT DISTINCT a.user_id, b.user_id FROM room_members a
			JOIN room_members b ON b.room_nid = a.room_nid
			WHERE a.user_id IN (`+placeholders(3, len(chunk))+`) AND a.membership = 'join'
				AND b.membership = 'join' AND NOT `+localSuffix("b.user_id", 1), args...)
		if err != nil {
			return nil, fmt.Errorf("remote users sharing a room: %w", err)
		}
		for rows.Next() {
			var local, remote string
			if err := rows.Scan(&local, &remote); err != nil {
				rows.Close()
				return nil, err
			}
			out[local] = append(out[local], remote)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// DeviceListUserChange is a user's latest device-list change.
type DeviceListUserChange struct {
	UserID string
	Pos    int64
}

// LocalDeviceListChanges returns the users of localServer whose device
// lists changed after position after (changes everyone sharing a room
// sees, not signatures only their signer sees), oldest first, at most
// limit.
func (t *Queries) LocalDeviceListChanges(ctx context.Context, localServer string, after int64, limit int) ([]DeviceListUserChange, error) {
	suffix := ":" + localServer
	rows, err := t.q.QueryContext(ctx, `SELECT user_id, pos FROM device_list_changes
		WHERE pos > $3 AND observer = '' AND `+localSuffix("user_id", 1)+` ORDER BY pos LIMIT $4`,
		suffix, len(suffix), after, limit)
	if err != nil {
		return nil, fmt.Errorf("local device list changes: %w", err)
	}
	defer rows.Close()
	var out []DeviceListUserChange
	for rows.Next() {
		var c DeviceListUserChange
		if err := rows.Scan(&c.UserID, &c.Pos); err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// DeviceListOutboundPos returns how far the device-list sender has read
// the device_lists stream.
func (t *Queries) DeviceListOutboundPos(ctx context.Context) (int64, error) {
	var pos int64
	err := t.q.QueryRowContext(ctx, `SELECT pos FROM device_list_outbound_position WHERE id = 1`).Scan(&pos)
	return pos, noRows(err)
}

// ErrMoved is returned by AdvanceDeviceListOutbound when another sender
// moved the position first.
var ErrMoved = errors.New("position moved")

// AdvanceDeviceListOutbound moves the sender's position from from to to,
// or fails with ErrMoved when it is no longer at from: another process
// sent those changes. Call it first in the transaction that records what
// was sent; it holds the position's row lock to the commit, so senders
// take turns.
func (t *Queries) AdvanceDeviceListOutbound(ctx context.Context, from, to int64) error {
	n, err := rowsAffected(t.q.ExecContext(ctx, `UPDATE device_list_outbound_position SET pos = $2 WHERE id = 1 AND pos = $1`, from, to))
	if err != nil {
		return fmt.Errorf("advance device list sender: %w", err)
	}
	if n == 0 {
		return ErrMoved
	}
	return nil
}

// DeviceListSentKey names a device or a cross-signing key of a user in
// what was sent about them.
type DeviceListSentKey struct {
	// Kind is "device", CrossSigningMaster or CrossSigningSelfSigning.
	Kind     string
	DeviceID string
}

// DeviceListSent returns the latest stream_id sent about a local user (0
// for none) and the hashes of what the updates said, by key.
func (t *Queries) DeviceListSent(ctx context.Context, userID string) (int64, map[DeviceListSentKey]string, error) {
	var streamID int64
	err := t.q.QueryRowContext(ctx, `SELECT stream_id FROM device_list_outbound WHERE user_id = $1`, userID).Scan(&streamID)
	if err := noRows(err); err != nil && !errors.Is(err, ErrNotFound) {
		return 0, nil, err
	}
	rows, err := t.q.QueryContext(ctx, `SELECT kind, device_id, hash FROM device_list_outbound_keys WHERE user_id = $1`, userID)
	if err != nil {
		return 0, nil, err
	}
	defer rows.Close()
	hashes := map[DeviceListSentKey]string{}
	for rows.Next() {
		var k DeviceListSentKey
		var h string
		if err := rows.Scan(&k.Kind, &k.DeviceID, &h); err != nil {
			return 0, nil, err
		}
		hashes[k] = h
	}
	return streamID, hashes, rows.Err()
}

// RecordDeviceListSent records updates sent about a local user: their
// sequence is at streamID, and each key of hashes now hashes to its value
// ("" for a key removed: a deleted device).
func (t *Queries) RecordDeviceListSent(ctx context.Context, userID string, streamID int64, hashes map[DeviceListSentKey]string) error {
	return t.ensureTx(ctx, func(q *Queries) error {
		if _, err := q.q.ExecContext(ctx, `INSERT INTO device_list_outbound (user_id, stream_id) VALUES ($1, $2)
			ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id`, userID, streamID); err != nil {
			return fmt.Errorf("record device list sequence of %s: %w", userID, err)
		}
		for k, h := range hashes {
			var err error
			if h == "" {
				_, err = q.q.ExecContext(ctx, `DELETE FROM device_list_outbound_keys WHERE user_id = $1 AND kind = $2 AND device_id = $3`,
					userID, k.Kind, k.DeviceID)
			} else {
				_, err = q.q.ExecContext(ctx, `INSERT INTO device_list_outbound_keys (user_id, kind, device_id, hash) VALUES ($1, $2, $3, $4)
					ON CONFLICT (user_id, kind, device_id) DO UPDATE SET hash = excluded.hash`, userID, k.Kind, k.DeviceID, h)
			}
			if err != nil {
				return fmt.Errorf("record device list update of %s: %w", userID, err)
			}
		}
		return nil
	})
}
