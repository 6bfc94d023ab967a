package federation

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/e2ee"
	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
)

// UserKeys serves this server's users' devices and end-to-end encryption
// keys to other servers (spec: "Device Management", "End-to-End
// Encryption"). A remote server is nobody in particular: it gets the
// keys and the signatures the users made themselves, never a
// user-signing key or the signatures users made over others' keys, and,
// as Synapse by default (allow_device_name_lookup_over_federation), no
// device display names.
type UserKeys struct {
	DB         *sql.DB
	Keys       *e2ee.Service
	ServerName spec.ServerName
}

// Routes registers the endpoints on r, which must authenticate requests
// (see Authenticator.Router).
func (u *UserKeys) Routes(r *mux.Router) {
	r.Handle("/_matrix/federation/v1/user/devices/{userId}", mxhttp.JSON(u.devices)).Methods(http.MethodGet)
	r.Handle("/_matrix/federation/v1/user/keys/query", mxhttp.JSON(u.query)).Methods(http.MethodPost)
	r.Handle("/_matrix/federation/v1/user/keys/claim", mxhttp.JSON(u.claim)).Methods(http.MethodPost)
}

// checkLocal is 400 M_INVALID_PARAM for anything but a user id of this
// server: the spec requires requested users to be local, and Synapse
// refuses the others.
func (u *UserKeys) checkLocal(userID string) error {
	local, domain, ok := strings.Cut(strings.TrimPrefix(userID, "@"), ":")
	if !strings.HasPrefix(userID, "@") || !ok || local == "" {
		return mxhttp.InvalidParam("%q is not a user id", userID)
	}
	if spec.ServerName(domain) != u.ServerName {
		return mxhttp.InvalidParam("User %s is not hosted on this server", userID)
	}
	return nil
}

// userDevice is one device of a /user/devices answer.
type userDevice struct {
	DeviceID string          `json:"device_id"`
	Keys     json.RawMessage `json:"keys"`
}

// devices is GET /user/devices/{userId}: the user's devices that have
// identity keys, with the device-list stream position they are at, and
// the master and self-signing keys. As in Synapse, a user without devices
// (or unknown) has an empty list.
func (u *UserKeys) devices(r *http.Request) (any, error) {
	ctx := r.Context()
	userID, err := pathVar(r, "userId")
	if err != nil {
		return nil, err
	}
	if err := u.checkLocal(userID); err != nil {
		return nil, err
	}
	// The position first: a change after it comes with a later
	// m.device_list_update, which the requester then applies again.
	streamID, err := u.DB.DeviceListStreamID(ctx, userID)
	if err != nil {
		return nil, mxhttp.Internal(err)
	}
	keys, err := u.Keys.QueryKeys(ctx, "", map[string][]string{userID: {}})
	if err != nil {
		return nil, mxhttp.Internal(err)
	}
	resp := struct {
		UserID         string          `json:"user_id"`
		StreamID       int64           `json:"stream_id"`
		Devices        []userDevice    `json:"devices"`
		MasterKey      json.RawMessage `json:"master_key,omitempty"`
		SelfSigningKey json.RawMessage `json:"self_signing_key,omitempty"`
	}{UserID: userID, StreamID: streamID, Devices: []userDevice{},
		MasterKey: keys.MasterKeys[userID], SelfSigningKey: keys.SelfSigningKeys[userID]}
	for id, js := range keys.DeviceKeys[userID] {
		js, err := withoutDisplayName(js)
		if err != nil {
			return nil, mxhttp.Internal(err)
		}
		resp.Devices = append(resp.Devices, userDevice{DeviceID: id, Keys: js})
	}
	slices.SortFunc(resp.Devices, func(a, b userDevice) int { return strings.Compare(a.DeviceID, b.DeviceID) })
	return resp, nil
}

// query is POST /user/keys/query: device keys (of the listed devices, or
// all when the list is empty) and the master and self-signing keys of
// each user.
func (u *UserKeys) query(r *http.Request) (any, error) {
	var body struct {
		DeviceKeys map[string][]string `json:"device_keys"`
	}
	if err := mxhttp.ReadJSON(r, &body); err != nil {
		return nil, err
	}
	if body.DeviceKeys == nil {
		return nil, mxhttp.BadJSON("device_keys is required")
	}
	for userID := range body.DeviceKeys {
		if err := u.checkLocal(userID); err != nil {
			return nil, err
		}
	}
	res, err := u.Keys.QueryKeys(r.Context(), "", body.DeviceKeys)
	if err != nil {
		return nil, mxhttp.Internal(err)
	}
	for _, devices := range res.DeviceKeys {
		for id, js := range devices {
			if devices[id], err = withoutDisplayName(js); err != nil {
				return nil, mxhttp.Internal(err)
			}
		}
	}
	return struct {
		DeviceKeys      map[string]map[string]json.RawMessage `json:"device_keys"`
		MasterKeys      map[string]json.RawMessage            `json:"master_keys"`
		SelfSigningKeys map[string]json.RawMessage            `json:"self_signing_keys"`
	}{res.DeviceKeys, res.MasterKeys, res.SelfSigningKeys}, nil
}

// claim is POST /user/keys/claim: one key of the requested algorithm per
// device, a one-time key while the device has one and its fallback key
// after that (e2ee.Service.ClaimKeys).
func (u *UserKeys) claim(r *http.Request) (any, error) {
	var body struct {
		OneTimeKeys map[string]map[string]string `json:"one_time_keys"`
	}
	if err := mxhttp.ReadJSON(r, &body); err != nil {
		return nil, err
	}
	if body.OneTimeKeys == nil {
		return nil, mxhttp.BadJSON("one_time_keys is required")
	}
	for userID := range body.OneTimeKeys {
		if err := u.checkLocal(userID); err != nil {
			return nil, err
		}
	}
	res, err := u.Keys.ClaimKeys(r.Context(), body.OneTimeKeys)
	if err != nil {
		return nil, mxhttp.Internal(err)
	}
	return map[string]any{"one_time_keys": res.OneTimeKeys}, nil
}

// withoutDisplayName removes unsigned.device_display_name from device
// keys (and unsigned itself when nothing else is left in it).
func withoutDisplayName(js json.RawMessage) (json.RawMessage, error) {
	if !strings.Contains(string(js), `"device_display_name"`) {
		return js, nil
	}
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(js, &keys); err != nil {
		return nil, err
	}
	var unsigned map[string]json.RawMessage
	if json.Unmarshal(keys["unsigned"], &unsigned) != nil {
		return js, nil
	}
	delete(unsigned, "device_display_name")
	if len(unsigned) == 0 {
		delete(keys, "unsigned")
	} else {
		raw, err := json.Marshal(unsigned)
		if err != nil {
			return nil, err
		}
		keys["unsigned"] = raw
	}
	return json.Marshal(keys)
}
