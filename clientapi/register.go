package clientapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/gorilla/mux"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/userapi"
)

func (a *API) registerRoutes(r *mux.Router) {
	handle(r, "/register", mxhttp.Handler(a.register), http.MethodPost)
	handle(r, "/register/available", mxhttp.JSON(a.registerAvailable), http.MethodGet)
	// The spec serves this one under v1 only.
	r.Handle("/_matrix/client/v1/register/m.login.registration_token/validity",
		mxhttp.JSON(a.registrationTokenValidity)).Methods(http.MethodGet)
}

type registerRequest struct {
	Username                 string          `json:"username"`
	Password                 string          `json:"password"`
	DeviceID                 string          `json:"device_id"`
	InitialDeviceDisplayName string          `json:"initial_device_display_name"`
	InhibitLogin             bool            `json:"inhibit_login"`
	RefreshToken             bool            `json:"refresh_token"`
	Auth                     json.RawMessage `json:"auth"`
}

// registerResponse is the 200 body of a registration that logs in.
type registerResponse struct {
	userapi.Session
	// HomeServer is deprecated in the spec but still read by old clients.
	HomeServer string `json:"home_server"`
}

// register is POST /register: guest accounts without auth, user accounts
// through user-interactive auth.
func (a *API) register(w http.ResponseWriter, r *http.Request) error {
	if err := limit(a.registerLimit, clientIP(r)); err != nil {
		return err
	}
	switch kind := r.URL.Query().Get("kind"); kind {
	case "", "user":
	case "guest":
		return a.registerGuest(w, r)
	default:
		return mxhttp.InvalidParam("Unknown kind %q: expected user or guest", kind)
	}
	if !a.cfg.Registration.Enabled {
		return mxhttp.Forbidden("Registration is disabled")
	}
	var req registerRequest
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return err
	}
	ctx := r.Context()
	// The spec: username errors come before user-interactive auth, so the
	// user does not pass a stage only to be told the name is taken.
	localpart := userapi.NormalizeUsername(req.Username)
	if req.Username != "" {
		if err := a.users.CheckUsername(ctx, localpart); err != nil {
			return err
		}
	}
	if req.Password != "" {
		if err := userapi.ValidNewPassword(req.Password); err != nil {
			return err
		}
	}
	if err := userapi.ValidDeviceDisplayName(req.InitialDeviceDisplayName); err != nil {
		return err
	}
	// A request without auth only asks for the flows (clients often send
	// {} for that), so the password is required only once auth begins; a
	// completed session does not remember it, so it must come with the
	// auth.
	if req.Password == "" && authAttempted(req.Auth) {
		return mxhttp.MissingParam("Missing params: password")
	}
	uia := userapi.UIA{Auth: req.Auth, Flows: a.registerFlows(), Params: map[string]any{}, Request: userapi.RequestOf(r)}
	results, err := a.users.InteractiveAuth(ctx, uia)
	if err != nil {
		return err
	}
	if req.Password == "" {
		return mxhttp.MissingParam("Missing params: password")
	}
	localpart, err = a.users.Register(ctx, userapi.NewAccount{
		Localpart:         localpart,
		Password:          req.Password,
		RegistrationToken: results[userapi.StageRegistrationToken],
	})
	if errors.Is(err, userapi.ErrRegistrationTokenGone) {
		return a.rechallenge(ctx, uia, err)
	}
	if err != nil {
		return err
	}
	body, err := a.registrationResult(ctx, localpart, req.DeviceID, req.InitialDeviceDisplayName, req.InhibitLogin, req.RefreshToken)
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, body)
}

// registerFlows are the UIA flows of registration: a registration token
// when the server requires one, else the dummy stage.
func (a *API) registerFlows() [][]string {
	if a.cfg.Registration.RequiresToken {
		return [][]string{{userapi.StageRegistrationToken}}
	}
	return [][]string{{userapi.StageDummy}}
}

// authAttempted reports whether an auth dict tries a stage or continues a
// session, as opposed to being absent or empty.
func authAttempted(auth json.RawMessage) bool {
	var d struct {
		Type    string `json:"type"`
		Session string `json:"session"`
	}
	if len(auth) == 0 || json.Unmarshal(auth, &d) != nil {
		return false // InteractiveAuth reports a malformed auth dict
	}
	return d.Type != "" || d.Session != ""
}

// rechallenge answers a registration whose token passed its stage but was
// used up or expired by the time the account was made: a fresh UIA 401
// carrying the failure, so the client can start over with another token.
func (a *API) rechallenge(ctx context.Context, uia userapi.UIA, cause error) error {
	uia.Auth = nil
	_, err := a.users.InteractiveAuth(ctx, uia)
	var challenge, failure *mxhttp.Error
	if !errors.As(err, &challenge) || challenge.Status != http.StatusUnauthorized || !errors.As(cause, &failure) {
		if err != nil {
			return err
		}
		return cause
	}
	e := *challenge
	e.Code, e.Message = failure.Code, failure.Message
	return &e
}

// registerGuest makes a guest account. The spec: every body field except
// initial_device_display_name is ignored and the server picks the device.
func (a *API) registerGuest(w http.ResponseWriter, r *http.Request) error {
	if !a.cfg.Registration.AllowGuests {
		return mxhttp.Errorf(http.StatusForbidden, "M_GUEST_ACCESS_FORBIDDEN", "Guest access is disabled")
	}
	var req struct {
		InitialDeviceDisplayName string `json:"initial_device_display_name"`
	}
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return err
	}
	if err := userapi.ValidDeviceDisplayName(req.InitialDeviceDisplayName); err != nil {
		return err
	}
	ctx := r.Context()
	localpart, err := a.users.Register(ctx, userapi.NewAccount{Guest: true})
	if err != nil {
		return err
	}
	body, err := a.registrationResult(ctx, localpart, "", req.InitialDeviceDisplayName, false, false)
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, body)
}

// registrationResult logs the new account in (unless inhibit) and builds
// the response body, as Synapse's _create_registration_details does for
// both client and shared-secret registration.
func (a *API) registrationResult(ctx context.Context, localpart, deviceID, deviceName string, inhibit, refresh bool) (any, error) {
	if inhibit {
		return map[string]string{"user_id": a.users.UserID(localpart), "home_server": a.users.ServerName()}, nil
	}
	sess, err := a.users.StartSession(ctx, localpart, deviceID, deviceName, refresh)
	if err != nil {
		return nil, err
	}
	return registerResponse{Session: sess, HomeServer: a.users.ServerName()}, nil
}

// registerAvailable is GET /register/available. Like Synapse it checks the
// name as given, without lower-casing it.
func (a *API) registerAvailable(r *http.Request) (any, error) {
	if !a.cfg.Registration.Enabled {
		return nil, mxhttp.Forbidden("Registration is disabled")
	}
	// Its own bucket: checking names while typing must not use up the
	// address's registrations.
	if err := limit(a.registerLimit, "available|"+clientIP(r)); err != nil {
		return nil, err
	}
	username := r.URL.Query().Get("username")
	if username == "" {
		return nil, mxhttp.MissingParam("Missing username")
	}
	if err := a.users.CheckUsername(r.Context(), username); err != nil {
		return nil, err
	}
	return map[string]bool{"available": true}, nil
}

// registrationTokenValidity is GET /v1/register/m.login.registration_token/validity.
// The spec asks for a rate limit against guessing tokens.
func (a *API) registrationTokenValidity(r *http.Request) (any, error) {
	if err := limit(a.registerLimit, "token-validity|"+clientIP(r)); err != nil {
		return nil, err
	}
	if !a.cfg.Registration.Enabled {
		return nil, mxhttp.Forbidden("Registration is not enabled on this homeserver.")
	}
	token := r.URL.Query().Get("token")
	if token == "" {
		return nil, mxhttp.MissingParam("Missing token")
	}
	ok, err := a.users.RegistrationTokenUsable(r.Context(), token)
	if err != nil {
		return nil, err
	}
	return map[string]bool{"valid": ok}, nil
}
