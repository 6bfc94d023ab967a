package sql

import (
	"context"
	stdsql "database/sql"
)

// Device is one login session of a user.
type Device struct {
	Localpart         string
	DeviceID          string
	DisplayName       string
	LastSeenIP        string
	LastSeenTS        int64
	LastSeenUserAgent string
}

// UpsertDevice creates the device, or keeps an existing one (a login that
// names its device id); a non-empty display name is set either way.
func (t *Queries) UpsertDevice(ctx context.Context, localpart, deviceID, displayName string) error {
	_, err := t.q.ExecContext(ctx, `INSERT INTO devices (localpart, device_id, display_name, created_ts) VALUES ($1, $2, $3, $4)
		ON CONFLICT (localpart, device_id) DO UPDATE SET display_name = COALESCE(excluded.display_name, devices.display_name)`,
		localpart, deviceID, nullString(displayName), nowMillis())
	return err
}

// Devices lists the user's devices, by device id.
func (t *Queries) Devices(ctx context.Context, localpart string) ([]Device, error) {
	rows, err := t.q.QueryContext(ctx, `SELECT localpart, device_id, display_name, last_seen_ip, last_seen_ts, last_seen_user_agent
		FROM devices WHERE localpart = $1 ORDER BY device_id`, localpart)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var ds []Device
	for rows.Next() {
		d, err := scanDevice(rows)
		if err != nil {
			return nil, err
		}
		ds = append(ds, d)
	}
	return ds, rows.Err()
}

// Device returns one device, or ErrNotFound.
func (t *Queries) Device(ctx context.Context, localpart, deviceID string) (Device, error) {
	row := t.q.QueryRowContext(ctx, `SELECT localpart, device_id, display_name, last_seen_ip, last_seen_ts, last_seen_user_agent
		FROM devices WHERE localpart = $1 AND device_id = $2`, localpart, deviceID)
	d, err := scanDevice(row)
	return d, noRows(err)
}

func scanDevice(s interface{ Scan(...any) error }) (Device, error) {
	var d Device
	var name, ip, ua stdsql.NullString
	var ts stdsql.NullInt64
	err := s.Scan(&d.Localpart, &d.DeviceID, &name, &ip, &ts, &ua)
	d.DisplayName, d.LastSeenIP, d.LastSeenTS, d.LastSeenUserAgent = name.String, ip.String, ts.Int64, ua.String
	return d, err
}

// SetDeviceDisplayName renames a device; ErrNotFound if it does not exist.
func (t *Queries) SetDeviceDisplayName(ctx context.Context, localpart, deviceID, name string) error {
	return expectRow(t.q.ExecContext(ctx, `UPDATE devices SET display_name = $1 WHERE localpart = $2 AND device_id = $3`,
		nullString(name), localpart, deviceID))
}

// TouchDevice records the device's last use.
func (t *Queries) TouchDevice(ctx context.Context, localpart, deviceID, ip, userAgent string, ts int64) error {
	_, err := t.q.ExecContext(ctx, `UPDATE devices SET last_seen_ip = $1, last_seen_user_agent = $2, last_seen_ts = $3
		WHERE localpart = $4 AND device_id = $5`, ip, nullString(userAgent), ts, localpart, deviceID)
	return err
}

// DeleteDevices removes the devices, every token issued to them and their
// end-to-end keys, and returns the hashes of the access tokens
// removed (for cache eviction).
func (t *Queries) DeleteDevices(ctx context.Context, localpart string, deviceIDs []string) ([][]byte, error) {
	var revoked [][]byte
	for _, id := range deviceIDs {
		hashes, err := t.RevokeDeviceTokens(ctx, localpart, id)
		if err != nil {
			return nil, err
		}
		revoked = append(revoked, hashes...)
		if _, err := t.q.ExecContext(ctx, `DELETE FROM devices WHERE localpart = $1 AND device_id = $2`, localpart, id); err != nil {
			return nil, err
		}
		// A deleted device's keys must not be handed out to others.
		if err := t.deleteDeviceKeys(ctx, localpart, id); err != nil {
			return nil, err
		}
	}
	return revoked, nil
}
