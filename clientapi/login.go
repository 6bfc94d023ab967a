package clientapi

import (
	"encoding/json"
	"net/http"

	"github.com/gorilla/mux"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/userapi"
)

// The login types POST /login accepts.
const (
	loginPassword = "m.login.password"
	loginToken    = "m.login.token"
)

// maxDeviceIDLength bounds client-chosen device ids, as Synapse does.
const maxDeviceIDLength = 512

func (a *API) loginRoutes(r *mux.Router) {
	handle(r, "/login", mxhttp.JSON(a.loginFlows), http.MethodGet)
	handle(r, "/login", mxhttp.JSON(a.login), http.MethodPost)
	// get_token was added in v1.7 under /v1 only.
	r.Handle("/_matrix/client/v1/login/get_token", a.authedJSON(a.getLoginToken)).Methods(http.MethodPost)
	handle(r, "/refresh", mxhttp.JSON(a.refresh), http.MethodPost)
	handle(r, "/logout", a.authedJSON(a.logout), http.MethodPost)
	handle(r, "/logout/all", a.authedJSON(a.logoutAll), http.MethodPost)
}

type loginFlow struct {
	Type          string `json:"type"`
	GetLoginToken bool   `json:"get_login_token,omitempty"`
}

func (a *API) loginFlows(*http.Request) (any, error) {
	return map[string][]loginFlow{"flows": {
		{Type: loginPassword},
		{Type: loginToken, GetLoginToken: true},
	}}, nil
}

type loginRequest struct {
	Type       string          `json:"type"`
	Identifier json.RawMessage `json:"identifier"`
	// Deprecated top-level forms of the identifier.
	User    string `json:"user"`
	Medium  string `json:"medium"`
	Address string `json:"address"`

	Password string `json:"password"`
	Token    string `json:"token"`

	DeviceID                 string `json:"device_id"`
	InitialDeviceDisplayName string `json:"initial_device_display_name"`
	RefreshToken             bool   `json:"refresh_token"`
}

type loginResponse struct {
	userapi.Session
	// Deprecated in the spec but still read by older clients.
	HomeServer string `json:"home_server"`
}

// login is POST /login. Attempts are limited per client address and, for
// password logins, per account, so neither many addresses against one
// account nor one address against many accounts can guess passwords fast.
func (a *API) login(r *http.Request) (any, error) {
	var req loginRequest
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	if err := limit(a.loginLimit, "ip:"+clientIP(r)); err != nil {
		return nil, err
	}
	if err := userapi.ValidDeviceDisplayName(req.InitialDeviceDisplayName); err != nil {
		return nil, err
	}
	if len(req.DeviceID) > maxDeviceIDLength {
		return nil, mxhttp.InvalidParam("device_id is longer than %d bytes", maxDeviceIDLength)
	}
	var acc sql.Account
	switch req.Type {
	case loginPassword:
		if len(req.Identifier) == 0 && req.User == "" && req.Medium != "" {
			// The legacy 3PID form: the spec answers 403 for a 3PID bound
			// to no account, and none is.
			return nil, mxhttp.Forbidden("Invalid username or password")
		}
		localpart, err := a.users.LocalpartFromIdentifier(req.Identifier, req.User)
		if err != nil {
			return nil, err
		}
		if err := limit(a.loginLimit, userLimitKey(localpart)); err != nil {
			return nil, err
		}
		if acc, err = a.users.CheckPassword(r.Context(), localpart, req.Password); err != nil {
			return nil, err
		}
		if acc.IsGuest {
			return nil, mxhttp.Forbidden("Guest accounts cannot log in with a password")
		}
	case loginToken:
		if req.Token == "" {
			return nil, mxhttp.MissingParam("token is required for m.login.token")
		}
		var err error
		if acc, err = a.users.TakeLoginToken(r.Context(), req.Token); err != nil {
			return nil, err
		}
	case "":
		return nil, mxhttp.MissingParam("Missing login type")
	default:
		return nil, mxhttp.Errorf(http.StatusBadRequest, "M_UNKNOWN", "Unknown login type %q", req.Type)
	}
	sess, err := a.users.StartSession(r.Context(), acc.Localpart, req.DeviceID, req.InitialDeviceDisplayName, req.RefreshToken)
	if err != nil {
		return nil, err
	}
	return loginResponse{Session: sess, HomeServer: a.users.ServerName()}, nil
}

// userLimitKey is the per-account bucket shared by password logins and
// password stages of user-interactive auth: both check the same password.
func userLimitKey(localpart string) string { return "user:" + localpart }

// getLoginToken is POST /login/get_token: the spec requires re-prompting
// for every token, which holds because a finished UIA session is gone.
func (a *API) getLoginToken(r *http.Request, dev *userapi.Device) (any, error) {
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
	token, err := a.users.NewLoginToken(r.Context(), dev.Localpart)
	if err != nil {
		return nil, err
	}
	return map[string]any{"login_token": token, "expires_in_ms": userapi.LoginTokenLifetime.Milliseconds()}, nil
}

type refreshResponse struct {
	AccessToken  string `json:"access_token"`
	RefreshToken string `json:"refresh_token"`
	ExpiresInMS  int64  `json:"expires_in_ms"`
}

// refresh is POST /refresh: 401 M_UNKNOWN_TOKEN for an unknown or used
// refresh token.
func (a *API) refresh(r *http.Request) (any, error) {
	var req struct {
		RefreshToken *string `json:"refresh_token"`
	}
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	if req.RefreshToken == nil {
		return nil, mxhttp.MissingParam("refresh_token is required")
	}
	sess, err := a.users.Refresh(r.Context(), *req.RefreshToken)
	if err != nil {
		return nil, err
	}
	return refreshResponse{AccessToken: sess.AccessToken, RefreshToken: sess.RefreshToken, ExpiresInMS: sess.ExpiresInMS}, nil
}

func (a *API) logout(r *http.Request, dev *userapi.Device) (any, error) {
	if err := a.users.Logout(r.Context(), dev); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

func (a *API) logoutAll(r *http.Request, dev *userapi.Device) (any, error) {
	if err := a.users.LogoutAll(r.Context(), dev.Localpart, ""); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}
