package clientapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"

	"github.com/gorilla/mux"

	"github.com/weft-chat/weft/e2ee"
	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/userapi"
)

// Dehydrated devices (MSC3814, as Element and the Rust SDK use it): a
// device the client stores, encrypted, on the server, with its keys, so
// that to-device messages (room keys) reach the user while none of their
// devices is signed in. A new login fetches the device's messages through
// the events endpoint, then replaces the device with a fresh one.
//
// The dehydrated device is an ordinary device of the user (a row of
// devices with keys), so /keys/query shows it and "*" to-device messages
// reach it; dehydrated_devices remembers which device it is and the
// client's device_data.

// dehydratedPrefix is the MSC3814 unstable endpoint.
const dehydratedPrefix = "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device"

// dehydratedEventsLimit is the default and the cap of the events
// endpoint's page size (Synapse's default; the spec's advice for /sync).
const dehydratedEventsLimit = 100

func init() {
	// Clients look for the feature before using the endpoints.
	UnstableFeatures["org.matrix.msc3814"] = true
}

func (a *API) dehydratedDeviceRoutes(r *mux.Router) {
	d := &dehydratedHandlers{API: a, keys: e2ee.New(a.db, a.users.ServerName(), e2ee.WithWake(a.wake))}
	r.Handle(dehydratedPrefix, a.authedJSON(d.get)).Methods(http.MethodGet)
	r.Handle(dehydratedPrefix, a.authedJSON(d.put)).Methods(http.MethodPut)
	r.Handle(dehydratedPrefix, a.authedJSON(d.delete)).Methods(http.MethodDelete)
	r.Handle(dehydratedPrefix+"/{deviceId}/events", a.authedJSON(d.events)).Methods(http.MethodPost)
}

type dehydratedHandlers struct {
	*API
	keys *e2ee.Service
}

// get answers the user's dehydrated device, or 404 M_NOT_FOUND.
func (d *dehydratedHandlers) get(r *http.Request, dev *userapi.Device) (any, error) {
	dd, err := d.db.DehydratedDevice(r.Context(), dev.Localpart)
	if errors.Is(err, sql.ErrNotFound) {
		return nil, mxhttp.NotFound("No dehydrated device available")
	}
	if err != nil {
		return nil, err
	}
	return map[string]any{"device_id": dd.DeviceID, "device_data": json.RawMessage(dd.Data)}, nil
}

// put stores a dehydrated device with its keys, in place of the previous
// one (whose device, keys and to-device messages go), in one transaction:
// a request with bad keys changes nothing.
func (d *dehydratedHandlers) put(r *http.Request, dev *userapi.Device) (any, error) {
	var body struct {
		DeviceID                 string                     `json:"device_id"`
		DeviceData               json.RawMessage            `json:"device_data"`
		InitialDeviceDisplayName string                     `json:"initial_device_display_name"`
		DeviceKeys               json.RawMessage            `json:"device_keys"`
		OneTimeKeys              map[string]json.RawMessage `json:"one_time_keys"`
		FallbackKeys             map[string]json.RawMessage `json:"fallback_keys"`
	}
	if err := mxhttp.ReadJSON(r, &body); err != nil {
		return nil, err
	}
	if body.DeviceID == "" {
		return nil, mxhttp.MissingParam("device_id is required")
	}
	var data struct {
		Algorithm string `json:"algorithm"`
	}
	if dd := bytes.TrimSpace(body.DeviceData); len(dd) == 0 || dd[0] != '{' || json.Unmarshal(dd, &data) != nil || data.Algorithm == "" {
		return nil, mxhttp.BadJSON("device_data must be an object with a string algorithm")
	}
	if dk := bytes.TrimSpace(body.DeviceKeys); len(dk) == 0 || string(dk) == "null" {
		// Synapse refuses a dehydrated device without keys too: nobody
		// could send it anything.
		return nil, mxhttp.MissingParam("device_keys is required")
	}
	ctx := r.Context()
	var changes []*sql.DeviceListChange
	err := d.db.WithTx(ctx, func(q *sql.Queries) error {
		ch, err := deleteDehydrated(ctx, q, dev)
		if err != nil && !errors.Is(err, sql.ErrNotFound) {
			return err
		}
		changes = append(changes, ch)
		if _, err := q.Device(ctx, dev.Localpart, body.DeviceID); err == nil {
			return mxhttp.InvalidParam("Device id %s is in use by another of your devices", body.DeviceID)
		} else if !errors.Is(err, sql.ErrNotFound) {
			return err
		}
		if err := q.UpsertDevice(ctx, dev.Localpart, body.DeviceID, body.InitialDeviceDisplayName); err != nil {
			return err
		}
		if err := q.SetDehydratedDevice(ctx, dev.Localpart, body.DeviceID, body.DeviceData); err != nil {
			return err
		}
		c := e2ee.Caller{UserID: dev.UserID, Localpart: dev.Localpart, DeviceID: body.DeviceID}
		_, ch, err = d.keys.UploadKeysIn(ctx, q, c, e2ee.Upload{
			DeviceKeys: body.DeviceKeys, OneTimeKeys: body.OneTimeKeys, FallbackKeys: body.FallbackKeys})
		changes = append(changes, ch)
		return err
	})
	if err != nil {
		return nil, err
	}
	// One wake-up covers every change: they concern the same user.
	for _, ch := range changes {
		if ch != nil {
			e2ee.WakeDeviceList(d.wake, ch)
			break
		}
	}
	return map[string]string{"device_id": body.DeviceID}, nil
}

// delete deletes the user's dehydrated device, or answers 404
// M_NOT_FOUND.
func (d *dehydratedHandlers) delete(r *http.Request, dev *userapi.Device) (any, error) {
	var deviceID string
	var change *sql.DeviceListChange
	err := d.db.WithTx(r.Context(), func(q *sql.Queries) error {
		dd, err := q.DehydratedDevice(r.Context(), dev.Localpart)
		if err != nil {
			return err
		}
		deviceID = dd.DeviceID
		change, err = deleteDehydrated(r.Context(), q, dev)
		return err
	})
	if errors.Is(err, sql.ErrNotFound) {
		return nil, mxhttp.NotFound("No dehydrated device available")
	}
	if err != nil {
		return nil, err
	}
	e2ee.WakeDeviceList(d.wake, change)
	return map[string]string{"device_id": deviceID}, nil
}

// deleteDehydrated deletes the user's dehydrated device in q: the device
// with its keys and inbox, and the record. It returns sql.ErrNotFound
// when there is none.
func deleteDehydrated(ctx context.Context, q *sql.Queries, dev *userapi.Device) (*sql.DeviceListChange, error) {
	dd, err := q.DehydratedDevice(ctx, dev.Localpart)
	if err != nil {
		return nil, err
	}
	// A dehydrated device has no access token, so there is nothing to
	// evict from the token caches.
	if _, err := q.DeleteDevices(ctx, dev.Localpart, []string{dd.DeviceID}); err != nil {
		return nil, err
	}
	return q.DevicesDeleted(ctx, dev.UserID, dev.Localpart, []string{dd.DeviceID})
}

// events is POST .../dehydrated_device/{deviceId}/events: a page of the
// dehydrated device's to-device messages, oldest first, and the
// next_batch to ask for the next page with. Coming back with a
// next_batch acknowledges (deletes) the messages before it, as a sync's
// since does; a page with no events ends the loop. Only the user's
// current dehydrated device may be read (403 M_FORBIDDEN otherwise, as
// in Synapse).
func (d *dehydratedHandlers) events(r *http.Request, dev *userapi.Device) (any, error) {
	deviceID, err := pathVar(r, "deviceId")
	if err != nil {
		return nil, err
	}
	var body struct {
		NextBatch string `json:"next_batch"`
	}
	if err := mxhttp.ReadJSON(r, &body); err != nil {
		return nil, err
	}
	since := int64(0)
	if body.NextBatch != "" {
		n, err := strconv.ParseInt(strings.TrimPrefix(body.NextBatch, "d"), 10, 64)
		if err != nil || !strings.HasPrefix(body.NextBatch, "d") || n < 0 {
			return nil, mxhttp.InvalidParam("next_batch %q is not a token of this endpoint", body.NextBatch)
		}
		since = n
	}
	limit := dehydratedEventsLimit
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			return nil, mxhttp.InvalidParam("limit must be a positive integer")
		}
		limit = min(n, dehydratedEventsLimit)
	}
	ctx := r.Context()
	dd, err := d.db.DehydratedDevice(ctx, dev.Localpart)
	if errors.Is(err, sql.ErrNotFound) {
		return nil, mxhttp.Forbidden("No dehydrated device exists")
	}
	if err != nil {
		return nil, err
	}
	if dd.DeviceID != deviceID {
		return nil, mxhttp.Forbidden("You may only fetch messages for your dehydrated device")
	}
	// Read the bound first: messages at or below it are all committed.
	upTo, err := d.db.StreamPos(ctx, sql.ToDeviceStream)
	if err != nil {
		return nil, err
	}
	since = min(since, upTo)
	if since > 0 {
		if err := d.db.AckToDevice(ctx, dev.Localpart, deviceID, since); err != nil {
			return nil, err
		}
	}
	msgs, err := d.db.ToDeviceMessages(ctx, dev.Localpart, deviceID, since, upTo, limit)
	if err != nil {
		return nil, err
	}
	next := upTo
	if len(msgs) == limit {
		next = msgs[len(msgs)-1].Pos
	}
	return map[string]any{"events": ToDeviceEvents(msgs), "next_batch": "d" + strconv.FormatInt(next, 10)}, nil
}

// ToDeviceEvent is a to-device message as clients receive it.
type ToDeviceEvent struct {
	Type    string          `json:"type"`
	Sender  string          `json:"sender"`
	Content json.RawMessage `json:"content"`
}

// ToDeviceEvents turns inbox messages into the events clients receive.
func ToDeviceEvents(msgs []sql.ToDeviceMessage) []ToDeviceEvent {
	out := make([]ToDeviceEvent, len(msgs))
	for i, m := range msgs {
		out[i] = ToDeviceEvent{Type: m.Type, Sender: m.Sender, Content: m.Content}
	}
	return out
}
