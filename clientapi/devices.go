package clientapi

import (
	"encoding/json"
	"net/http"

	"github.com/gorilla/mux"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/userapi"
)

func (a *API) deviceRoutes(r *mux.Router) {
	handle(r, "/devices", a.authedJSON(a.listDevices), http.MethodGet)
	handle(r, "/devices/{deviceId}", a.authedJSON(a.getDevice), http.MethodGet)
	handle(r, "/devices/{deviceId}", a.authedJSON(a.updateDevice), http.MethodPut)
	handle(r, "/devices/{deviceId}", a.authedJSON(a.deleteDevice), http.MethodDelete)
	handle(r, "/delete_devices", a.authedJSON(a.deleteDevices), http.MethodPost)
}

// deviceJSON is the spec's Device object; absent values are left out.
type deviceJSON struct {
	DeviceID    string `json:"device_id"`
	DisplayName string `json:"display_name,omitempty"`
	LastSeenIP  string `json:"last_seen_ip,omitempty"`
	LastSeenTS  int64  `json:"last_seen_ts,omitempty"`
}

func toDeviceJSON(d sql.Device) deviceJSON {
	return deviceJSON{DeviceID: d.DeviceID, DisplayName: d.DisplayName, LastSeenIP: d.LastSeenIP, LastSeenTS: d.LastSeenTS}
}

func (a *API) listDevices(r *http.Request, dev *userapi.Device) (any, error) {
	ds, err := a.users.Devices(r.Context(), dev.Localpart)
	if err != nil {
		return nil, err
	}
	out := make([]deviceJSON, len(ds))
	for i, d := range ds {
		out[i] = toDeviceJSON(d)
	}
	return map[string][]deviceJSON{"devices": out}, nil
}

func (a *API) getDevice(r *http.Request, dev *userapi.Device) (any, error) {
	id, err := pathVar(r, "deviceId")
	if err != nil {
		return nil, err
	}
	d, err := a.users.Device(r.Context(), dev.Localpart, id)
	if err != nil {
		return nil, err
	}
	return toDeviceJSON(d), nil
}

// updateDevice is PUT /devices/{deviceId}. Creating a device this way is
// for application services only, so an unknown device is 404 M_NOT_FOUND.
func (a *API) updateDevice(r *http.Request, dev *userapi.Device) (any, error) {
	id, err := pathVar(r, "deviceId")
	if err != nil {
		return nil, err
	}
	var req struct {
		DisplayName *string `json:"display_name"`
	}
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	if req.DisplayName == nil {
		// Nothing to change, but the device must still exist.
		_, err = a.users.Device(r.Context(), dev.Localpart, id)
	} else {
		err = a.users.RenameDevice(r.Context(), dev.Localpart, id, *req.DisplayName)
	}
	if err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// deleteDevice is DELETE /devices/{deviceId}, behind the caller's
// password. Deleting a device that is already gone succeeds, as the spec
// says.
func (a *API) deleteDevice(r *http.Request, dev *userapi.Device) (any, error) {
	id, err := pathVar(r, "deviceId")
	if err != nil {
		return nil, err
	}
	var req struct {
		Auth json.RawMessage `json:"auth"`
	}
	if err := readOptionalJSON(r, &req); err != nil {
		return nil, err
	}
	if err := forbidGuest(dev); err != nil {
		return nil, err
	}
	if err := a.passwordUIA(r, dev, req.Auth); err != nil {
		return nil, err
	}
	if err := a.users.DeleteDevices(r.Context(), dev.Localpart, []string{id}); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// deleteDevices is POST /delete_devices, behind the caller's password.
func (a *API) deleteDevices(r *http.Request, dev *userapi.Device) (any, error) {
	var req struct {
		Devices *[]string       `json:"devices"`
		Auth    json.RawMessage `json:"auth"`
	}
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	if req.Devices == nil {
		return nil, mxhttp.MissingParam("devices is required")
	}
	if err := forbidGuest(dev); err != nil {
		return nil, err
	}
	if err := a.passwordUIA(r, dev, req.Auth); err != nil {
		return nil, err
	}
	if err := a.users.DeleteDevices(r.Context(), dev.Localpart, *req.Devices); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}
