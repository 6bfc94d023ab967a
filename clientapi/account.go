package clientapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"

	"github.com/gorilla/mux"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/userapi"
)

func (a *API) accountRoutes(r *mux.Router) {
	handle(r, "/account/whoami", a.authedJSON(a.whoami), http.MethodGet)
	// Both accept requests without an access token in the spec, to let
	// an emailed user reset a password. Weft has no email, and a password
	// stage without a token would be an unthrottled password oracle, so
	// like Synapse they need a signed-in caller (401 M_MISSING_TOKEN).
	handle(r, "/account/password", a.authedJSON(a.changePassword), http.MethodPost)
	handle(r, "/account/deactivate", a.authedJSON(a.deactivate), http.MethodPost)
}

type whoamiResponse struct {
	UserID   string `json:"user_id"`
	DeviceID string `json:"device_id,omitempty"`
	IsGuest  bool   `json:"is_guest"`
}

func (a *API) whoami(_ *http.Request, dev *userapi.Device) (any, error) {
	return whoamiResponse{UserID: dev.UserID, DeviceID: dev.DeviceID, IsGuest: dev.IsGuest}, nil
}

// changePassword is POST /account/password, behind the caller's password.
// logout_devices defaults to true and spares the caller's own device: the
// spec says the token of the request should not be revoked.
func (a *API) changePassword(r *http.Request, dev *userapi.Device) (any, error) {
	var req struct {
		NewPassword   *string         `json:"new_password"`
		LogoutDevices *bool           `json:"logout_devices"`
		Auth          json.RawMessage `json:"auth"`
	}
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	if req.NewPassword == nil {
		return nil, mxhttp.MissingParam("new_password is required")
	}
	if err := userapi.ValidNewPassword(*req.NewPassword); err != nil {
		return nil, err
	}
	if err := forbidGuest(dev); err != nil {
		return nil, err
	}
	if err := a.passwordUIA(r, dev, req.Auth); err != nil {
		return nil, err
	}
	logout := req.LogoutDevices == nil || *req.LogoutDevices
	if err := a.users.ChangePassword(r.Context(), dev.Localpart, *req.NewPassword, logout, dev.DeviceID); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// deactivate is POST /account/deactivate, behind the caller's password.
func (a *API) deactivate(r *http.Request, dev *userapi.Device) (any, error) {
	var req struct {
		Auth     json.RawMessage `json:"auth"`
		Erase    bool            `json:"erase"`
		IDServer string          `json:"id_server"`
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
	if err := a.users.Deactivate(r.Context(), dev.Localpart, req.Erase); err != nil {
		return nil, err
	}
	// The spec: "success" when there is nothing to unbind, and Weft never
	// binds a 3PID on an identity server.
	return map[string]string{"id_server_unbind_result": "success"}, nil
}

// passwordUIA runs user-interactive auth with the caller's own password,
// the one stage Weft offers a signed-in user. Password attempts draw on
// the same per-account bucket as password logins, so a stolen access
// token is no faster a way to guess the password than /login.
func (a *API) passwordUIA(r *http.Request, dev *userapi.Device, auth json.RawMessage) error {
	var stage struct {
		Type string `json:"type"`
	}
	// A malformed auth dict is reported by InteractiveAuth itself.
	if json.Unmarshal(auth, &stage) == nil && stage.Type == userapi.StagePassword {
		if err := limit(a.loginLimit, userLimitKey(dev.Localpart)); err != nil {
			return err
		}
	}
	results, err := a.users.InteractiveAuth(r.Context(), userapi.UIA{
		Auth:      auth,
		Flows:     [][]string{{userapi.StagePassword}},
		Localpart: dev.Localpart,
		Request:   userapi.RequestOf(r),
	})
	if err != nil {
		return err
	}
	// Sessions are bound to the request, not the user: make sure the
	// password proven is the caller's.
	if results["user"] != dev.Localpart {
		return mxhttp.Forbidden("Authentication was not for the signed-in user")
	}
	return nil
}

// forbidGuest is Synapse's answer to guests on endpoints closed to them.
func forbidGuest(dev *userapi.Device) error {
	if dev.IsGuest {
		return mxhttp.Errorf(http.StatusForbidden, "M_GUEST_ACCESS_FORBIDDEN", "Guest access is not allowed here")
	}
	return nil
}

// readOptionalJSON is mxhttp.ReadJSON for endpoints whose whole body is
// optional: older clients send DELETE /devices/{deviceId} and other
// user-interactive auth requests without one, which Synapse accepts as {}.
func readOptionalJSON(r *http.Request, v any) error {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return mxhttp.TooLarge("Request body is larger than %d bytes", tooBig.Limit)
		}
		return mxhttp.BadJSON("Could not read the request body")
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	return mxhttp.DecodeJSON(body, v)
}
