package clientapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"

	"github.com/gorilla/mux"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/userapi"
)

// maxToDeviceMessages bounds the messages of one PUT /sendToDevice, with
// the "*" wildcards expanded. Clients send room keys to a few hundred
// devices per request (the Rust SDK batches 250); the request body limit
// bounds the bytes.
const maxToDeviceMessages = 10_000

func (a *API) toDeviceRoutes(r *mux.Router) {
	handle(r, "/sendToDevice/{eventType}/{txnId}", a.authedJSON(a.sendToDevice), http.MethodPut)
}

// sendToDevice is PUT /sendToDevice/{eventType}/{txnId}: the messages
// go into the inboxes of the local recipients' devices, and a retry of
// the same transaction (same device, event type and transaction id, spec
// "Transaction identifiers") sends nothing again and answers {} as the
// first time did. Unknown local users and devices are dropped, as in
// Synapse.
func (a *API) sendToDevice(r *http.Request, dev *userapi.Device) (any, error) {
	eventType, err := pathVar(r, "eventType")
	if err != nil {
		return nil, err
	}
	txnID, err := pathVar(r, "txnId")
	if err != nil {
		return nil, err
	}
	var body struct {
		Messages map[string]map[string]json.RawMessage `json:"messages"`
	}
	if err := mxhttp.ReadJSON(r, &body); err != nil {
		return nil, err
	}
	if body.Messages == nil {
		return nil, mxhttp.MissingParam("messages is required")
	}
	var local []sql.ToDeviceDelivery
	localUsers := map[string]string{} // localpart -> user id
	remote := map[string]map[string]json.RawMessage{}
	count := 0
	for userID, devices := range body.Messages {
		for deviceID, content := range devices {
			if deviceID == "" {
				return nil, mxhttp.InvalidParam("messages for %s: empty device id", userID)
			}
			if c := bytes.TrimSpace(content); len(c) == 0 || c[0] != '{' {
				return nil, mxhttp.BadJSON("messages.%s.%s must be an object", userID, deviceID)
			}
		}
		count += len(devices)
		localpart, err := a.users.LocalpartOf(userID)
		if userapi.IsRemoteUser(err) {
			remote[userID] = devices
			continue
		}
		if err != nil {
			return nil, mxhttp.InvalidParam("%q in messages is not a user id", userID)
		}
		d := sql.ToDeviceDelivery{Localpart: localpart, Devices: make(map[string][]byte, len(devices))}
		for deviceID, content := range devices {
			d.Devices[deviceID] = content
		}
		local = append(local, d)
		localUsers[localpart] = userID
	}
	if count > maxToDeviceMessages {
		return nil, mxhttp.TooLarge("At most %d to-device messages may be sent at once", maxToDeviceMessages)
	}
	// Deliver in a stable order: positions then follow the recipients'
	// order, which makes the inboxes easy to reason about in tests.
	slices.SortFunc(local, func(x, y sql.ToDeviceDelivery) int { return strings.Compare(x.Localpart, y.Localpart) })
	fresh := false
	var woken []string
	var wakeRemote func()
	err = a.db.WithTx(r.Context(), func(q *sql.Queries) error {
		var err error
		if fresh, err = q.ClaimToDeviceTxn(r.Context(), dev.Localpart, dev.DeviceID, eventType, txnID); err != nil || !fresh {
			return err
		}
		if woken, err = q.DeliverToDevice(r.Context(), dev.UserID, eventType, local, maxToDeviceMessages); err != nil {
			return err
		}
		// In the same transaction: a retry after a failure sends the
		// remote messages too, and a retry after success sends nothing.
		if len(remote) > 0 && a.remoteToDevice != nil {
			wakeRemote, err = a.remoteToDevice.QueueToDevice(r.Context(), q, dev.UserID, eventType, remote)
		}
		return err
	})
	if errors.Is(err, sql.ErrTooManyToDevice) {
		return nil, mxhttp.TooLarge("At most %d to-device messages may be sent at once", maxToDeviceMessages)
	}
	if err != nil {
		return nil, err
	}
	if !fresh {
		return struct{}{}, nil
	}
	userIDs := make([]string, 0, len(woken))
	for _, l := range woken {
		userIDs = append(userIDs, localUsers[l])
	}
	a.wake.Users(userIDs...)
	if wakeRemote != nil {
		wakeRemote()
	}
	if a.remoteToDevice == nil {
		a.dropRemoteToDevice(r.Context(), dev.UserID, eventType, remote)
	}
	return struct{}{}, nil
}

// RemoteToDevice queues to-device messages for users of other servers:
// federation's queue, as m.direct_to_device EDUs.
type RemoteToDevice interface {
	// QueueToDevice queues, in the caller's transaction tx, sender's
	// messages of eventType (user id -> device id or "*" -> content) and
	// returns what wakes the senders, to call after the commit. Its
	// errors are Matrix errors where the client is at fault (413 for a
	// user's messages too large to send).
	QueueToDevice(ctx context.Context, tx *sql.Queries, sender, eventType string, messages map[string]map[string]json.RawMessage) (func(), error)
}

// WithRemoteToDevice sends to-device messages for users of other servers
// through f; without it they are dropped.
func WithRemoteToDevice(f RemoteToDevice) Option {
	return func(a *API) { a.remoteToDevice = f }
}

// dropRemoteToDevice logs the messages for users of other servers that
// nothing can send (no federation).
func (a *API) dropRemoteToDevice(ctx context.Context, sender, eventType string, msgs map[string]map[string]json.RawMessage) {
	if len(msgs) == 0 {
		return
	}
	users := make([]string, 0, len(msgs))
	for u := range msgs {
		users = append(users, u)
	}
	slices.Sort(users)
	a.log.InfoContext(ctx, "to-device messages for remote users dropped: federation is not available",
		"sender", sender, "type", eventType, "users", users)
}
