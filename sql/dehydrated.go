package sql

import (
	"context"
	"fmt"
	"slices"
)

// DehydratedDevice is a user's dehydrated device (MSC3814).
type DehydratedDevice struct {
	DeviceID string
	// Data is the client's device_data object, as JSON.
	Data []byte
}

// DehydratedDevice returns the user's dehydrated device, or ErrNotFound.
func (t *Queries) DehydratedDevice(ctx context.Context, localpart string) (DehydratedDevice, error) {
	var d DehydratedDevice
	var data string
	err := t.q.QueryRowContext(ctx, `SELECT device_id, device_data FROM dehydrated_devices WHERE localpart = $1`, localpart).
		Scan(&d.DeviceID, &data)
	if err != nil {
		return DehydratedDevice{}, noRows(err)
	}
	d.Data = []byte(data)
	return d, nil
}

// SetDehydratedDevice makes deviceID the user's dehydrated device, in
// place of any previous one; the caller deletes the previous device (see
// DevicesDeleted) and creates the new one in the same transaction.
func (t *Queries) SetDehydratedDevice(ctx context.Context, localpart, deviceID string, data []byte) error {
	_, err := t.q.ExecContext(ctx, `INSERT INTO dehydrated_devices (localpart, device_id, device_data, created_ts) VALUES ($1, $2, $3, $4)
		ON CONFLICT (localpart) DO UPDATE SET device_id = excluded.device_id, device_data = excluded.device_data, created_ts = excluded.created_ts`,
		localpart, deviceID, string(data), nowMillis())
	if err != nil {
		return fmt.Errorf("store dehydrated device: %w", err)
	}
	return nil
}

// forgetDehydratedDevice drops the user's dehydrated device record if its
// device is among deviceIDs (nil: whatever it is).
func (t *Queries) forgetDehydratedDevice(ctx context.Context, localpart string, deviceIDs []string) error {
	if deviceIDs != nil {
		d, err := t.DehydratedDevice(ctx, localpart)
		if err == ErrNotFound || (err == nil && !slices.Contains(deviceIDs, d.DeviceID)) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read dehydrated device: %w", err)
		}
	}
	if _, err := t.q.ExecContext(ctx, `DELETE FROM dehydrated_devices WHERE localpart = $1`, localpart); err != nil {
		return fmt.Errorf("forget dehydrated device: %w", err)
	}
	return nil
}
