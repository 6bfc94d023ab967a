package federation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/e2ee"
	"github.com/weft-chat/weft/internal/serverkey"
	"github.com/weft-chat/weft/internal/wake"
	"github.com/weft-chat/weft/sql"
)

// Other servers' users' device lists (spec: Server-Server API, "Device
// Management"): the m.device_list_update and m.signing_key_update EDUs
// keep a cache of the devices and cross-signing keys of the remote users
// who share a room with this server's, and the local users who share a
// room with them see them in their syncs' device_lists.changed.

// EDU types of device lists.
const (
	DeviceListUpdateEDUType = "m.device_list_update"
	SigningKeyUpdateEDUType = "m.signing_key_update"
)

// resyncTimeout bounds a fetch of a remote user's whole device list.
const resyncTimeout = 10 * time.Second

// maxRemoteDevices bounds the devices of a remote user taken from a
// fetch; Synapse's clients keep far fewer.
const maxRemoteDevices = 10_000

// deviceListUpdate is the content of an m.device_list_update EDU.
type deviceListUpdate struct {
	UserID      string          `json:"user_id"`
	DeviceID    string          `json:"device_id"`
	DisplayName string          `json:"device_display_name,omitempty"`
	StreamID    int64           `json:"stream_id"`
	PrevID      []int64         `json:"prev_id"`
	Deleted     bool            `json:"deleted,omitempty"`
	Keys        json.RawMessage `json:"keys,omitempty"`
}

// signingKeyUpdate is the content of an m.signing_key_update EDU.
type signingKeyUpdate struct {
	UserID         string          `json:"user_id"`
	MasterKey      json.RawMessage `json:"master_key,omitempty"`
	SelfSigningKey json.RawMessage `json:"self_signing_key,omitempty"`
}

// userDevicesAnswer is a GET /user/devices/{userId} answer.
type userDevicesAnswer struct {
	UserID   string `json:"user_id"`
	StreamID int64  `json:"stream_id"`
	Devices  []struct {
		DeviceID    string          `json:"device_id"`
		DisplayName string          `json:"device_display_name"`
		Keys        json.RawMessage `json:"keys"`
	} `json:"devices"`
	MasterKey      json.RawMessage `json:"master_key"`
	SelfSigningKey json.RawMessage `json:"self_signing_key"`
}

// DeviceLists receives other servers' device-list EDUs into the cache
// (sql: remote_device_lists) and, when an update was missed, marks the
// user's list stale and fetches it whole from their server in the
// background (Start; devicelist_resync.go), so that a transaction never
// waits for another server. Register HandleDeviceListUpdate and
// HandleSigningKeyUpdate for their EDU types.
type DeviceLists struct {
	db         *sql.DB
	serverName spec.ServerName
	wake       *wake.Publisher
	log        *slog.Logger
	// fetch gets a user's whole device list from their server (GET
	// /user/devices; tests replace it).
	fetch func(ctx context.Context, userID spec.UserID) (userDevicesAnswer, error)
	sched resyncSchedule
}

// NewDeviceLists makes the receiver; it fetches lists through c, signing
// with key, and wakes syncs through w (nil: nobody to tell).
func NewDeviceLists(db *sql.DB, c *Client, key serverkey.Key, w *wake.Publisher, log *slog.Logger) (*DeviceLists, error) {
	r, err := newRequester(c, key)
	if err != nil {
		return nil, err
	}
	d := &DeviceLists{db: db, serverName: c.Origin(), wake: w, log: logOr(log)}
	d.fetch = func(ctx context.Context, userID spec.UserID) (userDevicesAnswer, error) {
		var out userDevicesAnswer
		err := r.doLimited(ctx, http.MethodGet, userID.Domain(), "/_matrix/federation/v1/user/devices/"+url.PathEscape(userID.String()),
			nil, maxKeysResponseBytes, &out)
		return out, err
	}
	return d, nil
}

// HandleDeviceListUpdate applies one m.device_list_update: the device is
// replaced or removed in the cache when the update follows the latest one
// applied (its prev_id names it); otherwise updates were missed, and the
// list is marked stale, to be fetched whole from the user's server in the
// background (spec: "it must resynchronise its list"). Updates already
// covered (a stream_id not past the cache's) change nothing. Dropped,
// with a log line: an EDU that does not parse, for a user not of origin,
// with keys for another user or device, and updates of users who share
// no room with a user of this server (nobody here tracks them; Synapse
// drops them too).
func (d *DeviceLists) HandleDeviceListUpdate(ctx context.Context, origin spec.ServerName, raw json.RawMessage) error {
	var c deviceListUpdate
	// Stream ids start at 1 (Synapse's and Weft's): 0 is a missing one.
	if json.Unmarshal(raw, &c) != nil || c.StreamID <= 0 || c.DeviceID == "" {
		d.log.InfoContext(ctx, "federation: malformed device list update dropped", "origin", origin)
		return nil
	}
	if !d.remoteUser(ctx, origin, c.UserID, "device list update") {
		return nil
	}
	keys, ok := sentDeviceKeys(c.Keys, c.UserID, c.DeviceID)
	if !ok {
		d.log.InfoContext(ctx, "federation: device list update with keys of another device dropped", "origin", origin, "user_id", c.UserID)
		return nil
	}
	list, usable, tracked, err := d.cache(ctx, c.UserID)
	if err != nil || !tracked {
		return err
	}
	if usable && c.StreamID <= list.StreamID {
		return nil
	}
	if usable && len(c.PrevID) > 0 && !slices.ContainsFunc(c.PrevID, func(id int64) bool { return id != list.StreamID }) {
		var ch *sql.DeviceListChange
		err := d.db.WithTx(ctx, func(q *sql.Queries) error {
			applied, err := q.ApplyRemoteDeviceUpdate(ctx, c.UserID, list.StreamID, c.StreamID,
				sql.RemoteDevice{DeviceID: c.DeviceID, DisplayName: c.DisplayName, Keys: keys}, c.Deleted)
			if err != nil || !applied {
				return err
			}
			ch, err = q.AddDeviceListChange(ctx, c.UserID)
			return err
		})
		if err != nil {
			return err
		}
		if ch != nil {
			e2ee.WakeDeviceList(d.wake, ch)
			return nil
		}
	}
	return d.markStale(ctx, c.UserID)
}

// HandleSigningKeyUpdate stores the master and self-signing keys of one
// m.signing_key_update in the cache, or marks the user's list stale (to
// be fetched whole) when the cache is not usable. Dropped, with a log
// line: an EDU that does not parse, for a user not of origin, with keys
// that are not the user's of their type, and updates of users who share
// no room with a user of this server.
func (d *DeviceLists) HandleSigningKeyUpdate(ctx context.Context, origin spec.ServerName, raw json.RawMessage) error {
	var c signingKeyUpdate
	if json.Unmarshal(raw, &c) != nil {
		d.log.InfoContext(ctx, "federation: malformed signing key update dropped", "origin", origin)
		return nil
	}
	if !d.remoteUser(ctx, origin, c.UserID, "signing key update") {
		return nil
	}
	keys := map[string][]byte{}
	for typ, k := range map[string]json.RawMessage{sql.CrossSigningMaster: c.MasterKey, sql.CrossSigningSelfSigning: c.SelfSigningKey} {
		js, ok := sentCrossSigningKey(k, c.UserID, typ)
		if !ok {
			d.log.InfoContext(ctx, "federation: signing key update with a key not of its user or type dropped", "origin", origin, "user_id", c.UserID)
			return nil
		}
		if js != nil {
			keys[typ] = js
		}
	}
	if len(keys) == 0 {
		return nil // nothing changed
	}
	_, usable, tracked, err := d.cache(ctx, c.UserID)
	if err != nil || !tracked {
		return err
	}
	if !usable {
		return d.markStale(ctx, c.UserID)
	}
	return d.changed(ctx, c.UserID, func(q *sql.Queries) error {
		return q.SetRemoteCrossSigningKeys(ctx, c.UserID, keys)
	})
}

// remoteUser checks that userID is a user of origin; it is false (and a
// line logged) otherwise.
func (d *DeviceLists) remoteUser(ctx context.Context, origin spec.ServerName, userID, what string) bool {
	u, err := spec.NewUserID(userID, true)
	if err != nil || u.Domain() != origin || origin == d.serverName {
		d.log.WarnContext(ctx, "federation: "+what+" for a user not of its origin dropped", "origin", origin, "user_id", userID)
		return false
	}
	return true
}

// cache reads what the cache holds of a remote user: tracked is false
// when they share no room with a user of this server (their updates are
// of no use here); usable is true when the cache has every update since
// the list was last fetched (see sql.FreshRemoteDeviceKeys).
func (d *DeviceLists) cache(ctx context.Context, userID string) (list sql.RemoteDeviceList, usable, tracked bool, err error) {
	since, err := d.db.SharedSince(ctx, string(d.serverName), []string{userID})
	if err != nil {
		return list, false, false, err
	}
	shared, ok := since[userID]
	if !ok {
		d.log.Debug("federation: device list update of a user sharing no room with this server's dropped", "user_id", userID)
		return list, false, false, nil
	}
	list, err = d.db.RemoteDeviceList(ctx, userID)
	if errors.Is(err, sql.ErrNotFound) {
		return list, false, true, nil
	}
	if err != nil {
		return list, false, false, err
	}
	return list, !list.Stale && shared <= list.SyncedPos, true, nil
}

// markStale records that a remote user's list must be fetched again (the
// cache is not used meanwhile), tells the local users sharing a room
// with them that it changed, and has the background fetch it.
func (d *DeviceLists) markStale(ctx context.Context, userID string) error {
	if err := d.changed(ctx, userID, func(q *sql.Queries) error {
		return q.MarkRemoteDeviceListStale(ctx, userID)
	}); err != nil {
		return err
	}
	d.schedule(userID)
	return nil
}

// resync fetches a remote user's whole list and replaces the cache with
// it (no longer stale), and tells the local users sharing a room with
// them that it changed. When the fetch fails the cache stays as it was.
func (d *DeviceLists) resync(ctx context.Context, userID string) error {
	user, err := spec.NewUserID(userID, true)
	if err != nil {
		return err
	}
	pos, err := d.db.SyncPositions(ctx)
	if err != nil {
		return err
	}
	fctx, cancel := context.WithTimeout(ctx, resyncTimeout)
	answer, err := d.fetch(fctx, *user)
	cancel()
	if err != nil {
		return fmt.Errorf("fetch the device list of %s: %w", userID, err)
	}
	if answer.UserID != userID {
		return fmt.Errorf("fetch the device list of %s: the answer is for %q", userID, answer.UserID)
	}
	devices, cross := d.checkAnswer(ctx, answer)
	return d.changed(ctx, userID, func(q *sql.Queries) error {
		return q.ReplaceRemoteDeviceList(ctx, sql.RemoteDeviceList{UserID: userID, StreamID: answer.StreamID, SyncedPos: pos.Events},
			devices, cross)
	})
}

// changed runs f and records that userID's device list changed in one
// transaction, then wakes the syncs of the local users who share a room
// with them.
func (d *DeviceLists) changed(ctx context.Context, userID string, f func(q *sql.Queries) error) error {
	var ch *sql.DeviceListChange
	err := d.db.WithTx(ctx, func(q *sql.Queries) error {
		if err := f(q); err != nil {
			return err
		}
		var err error
		ch, err = q.AddDeviceListChange(ctx, userID)
		return err
	})
	if err != nil {
		return err
	}
	e2ee.WakeDeviceList(d.wake, ch)
	return nil
}

// checkAnswer keeps the devices of a fetched list whose keys are theirs
// (at most maxRemoteDevices) and the cross-signing keys that are the
// user's of their type.
func (d *DeviceLists) checkAnswer(ctx context.Context, a userDevicesAnswer) ([]sql.RemoteDevice, map[string][]byte) {
	var devices []sql.RemoteDevice
	seen := map[string]bool{}
	for _, dev := range a.Devices {
		keys, ok := sentDeviceKeys(dev.Keys, a.UserID, dev.DeviceID)
		if dev.DeviceID == "" || !ok || seen[dev.DeviceID] {
			continue
		}
		if len(devices) == maxRemoteDevices {
			d.log.WarnContext(ctx, "federation: devices of a remote user past the limit left out", "user_id", a.UserID, "limit", maxRemoteDevices)
			break
		}
		seen[dev.DeviceID] = true
		devices = append(devices, sql.RemoteDevice{DeviceID: dev.DeviceID, DisplayName: dev.DisplayName, Keys: keys})
	}
	cross := map[string][]byte{}
	for typ, k := range map[string]json.RawMessage{sql.CrossSigningMaster: a.MasterKey, sql.CrossSigningSelfSigning: a.SelfSigningKey} {
		if js, ok := sentCrossSigningKey(k, a.UserID, typ); ok && js != nil {
			cross[typ] = js
		}
	}
	return devices, cross
}

// sentDeviceKeys checks device keys another server sent: absent (nil,
// true), or a JSON object for the user and device, kept as sent.
func sentDeviceKeys(raw json.RawMessage, userID, deviceID string) ([]byte, bool) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, true
	}
	var k struct {
		UserID   string `json:"user_id"`
		DeviceID string `json:"device_id"`
	}
	if json.Unmarshal(raw, &k) != nil || k.UserID != userID || k.DeviceID != deviceID {
		return nil, false
	}
	return raw, true
}

// sentCrossSigningKey checks a cross-signing key another server sent:
// absent (nil, true), or a JSON object of the user whose usage holds typ,
// kept as sent.
func sentCrossSigningKey(raw json.RawMessage, userID, typ string) ([]byte, bool) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, true
	}
	var k struct {
		UserID string            `json:"user_id"`
		Usage  []string          `json:"usage"`
		Keys   map[string]string `json:"keys"`
	}
	if json.Unmarshal(raw, &k) != nil || k.UserID != userID || !slices.Contains(k.Usage, typ) || len(k.Keys) == 0 {
		return nil, false
	}
	return raw, true
}
