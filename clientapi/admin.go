package clientapi

import (
	"crypto/hmac"
	"encoding/json"
	"net/http"
	"strings"

	"github.com/gorilla/mux"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/userapi"
)

// adminPrefix is where Synapse's admin API lives; tools written for
// Synapse (register_new_matrix_user, synadm) find it there.
const adminPrefix = "/_synapse/admin/v1"

func (a *API) adminRoutes(r *mux.Router) {
	r.Handle(adminPrefix+"/register", mxhttp.JSON(a.sharedSecretNonce)).Methods(http.MethodGet)
	r.Handle(adminPrefix+"/register", mxhttp.JSON(a.sharedSecretRegister)).Methods(http.MethodPost)

	r.Handle(adminPrefix+"/registration_tokens", a.adminJSON(a.listRegistrationTokens)).Methods(http.MethodGet)
	r.Handle(adminPrefix+"/registration_tokens/new", a.adminJSON(a.newRegistrationToken)).Methods(http.MethodPost)
	r.Handle(adminPrefix+"/registration_tokens/{token}", a.adminJSON(a.getRegistrationToken)).Methods(http.MethodGet)
	r.Handle(adminPrefix+"/registration_tokens/{token}", a.adminJSON(a.updateRegistrationToken)).Methods(http.MethodPut)
	r.Handle(adminPrefix+"/registration_tokens/{token}", a.adminJSON(a.deleteRegistrationToken)).Methods(http.MethodDelete)
}

// adminJSON is authedJSON for server admins only: 403 M_FORBIDDEN for
// anyone else.
func (a *API) adminJSON(f func(r *http.Request, dev *userapi.Device) (any, error)) mxhttp.Handler {
	return a.authedJSON(func(r *http.Request, dev *userapi.Device) (any, error) {
		if !dev.IsAdmin {
			return nil, mxhttp.Forbidden("You are not a server admin")
		}
		return f(r, dev)
	})
}

// Shared-secret registration, compatible with Synapse's UserRegisterServlet
// and its register_new_matrix_user tool.

func (a *API) sharedSecretEnabled() error {
	if a.cfg.Registration.SharedSecret == "" {
		return mxhttp.Errorf(http.StatusBadRequest, "M_UNKNOWN", "Shared secret registration is not enabled")
	}
	return nil
}

// sharedSecretNonce is GET /_synapse/admin/v1/register. Unlike Synapse it
// refuses when the feature is off: nonces are stored in the database, and
// nobody could use them anyway.
func (a *API) sharedSecretNonce(r *http.Request) (any, error) {
	if err := a.sharedSecretEnabled(); err != nil {
		return nil, err
	}
	nonce, err := a.users.NewRegistrationNonce(r.Context())
	if err != nil {
		return nil, err
	}
	return map[string]string{"nonce": nonce}, nil
}

type sharedSecretRequest struct {
	Nonce                    *string `json:"nonce"`
	Username                 *string `json:"username"`
	Password                 *string `json:"password"`
	DisplayName              string  `json:"displayname"`
	Admin                    bool    `json:"admin"`
	UserType                 *string `json:"user_type"`
	MAC                      *string `json:"mac"`
	DeviceID                 string  `json:"device_id"`
	InitialDeviceDisplayName string  `json:"initial_device_display_name"`
	InhibitLogin             bool    `json:"inhibit_login"`
	RefreshToken             bool    `json:"refresh_token"`
}

// sharedSecretRegister is POST /_synapse/admin/v1/register. The checks come
// in Synapse's order; in particular the nonce is used up before anything
// else can fail, so a wrong MAC cannot be retried with the same nonce. It
// works whether or not open registration is enabled.
func (a *API) sharedSecretRegister(r *http.Request) (any, error) {
	if err := a.sharedSecretEnabled(); err != nil {
		return nil, err
	}
	var req sharedSecretRequest
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	ctx := r.Context()
	if req.Nonce == nil {
		return nil, mxhttp.BadJSON("nonce must be specified")
	}
	ok, err := a.users.TakeRegistrationNonce(ctx, *req.Nonce)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, mxhttp.Errorf(http.StatusBadRequest, "M_UNKNOWN", "unrecognised nonce")
	}
	if req.Username == nil {
		return nil, mxhttp.BadJSON("username must be specified")
	}
	if len(*req.Username) > 512 || strings.IndexByte(*req.Username, 0) >= 0 {
		return nil, mxhttp.Errorf(http.StatusBadRequest, "M_INVALID_USERNAME", "Invalid username")
	}
	if req.Password == nil {
		return nil, mxhttp.BadJSON("password must be specified")
	}
	if len(*req.Password) > userapi.MaxPasswordBytes || strings.IndexByte(*req.Password, 0) >= 0 {
		return nil, mxhttp.Errorf(http.StatusBadRequest, "M_UNKNOWN", "Invalid password")
	}
	userType := ""
	if req.UserType != nil {
		userType = *req.UserType
		if userType != userapi.UserTypeBot && userType != userapi.UserTypeSupport {
			return nil, mxhttp.InvalidParam("Invalid user type")
		}
	}
	if req.MAC == nil {
		return nil, mxhttp.BadJSON("mac must be specified")
	}
	want := userapi.SharedSecretMAC(a.cfg.Registration.SharedSecret, *req.Nonce, *req.Username, *req.Password, req.Admin, userType)
	if !hmac.Equal([]byte(want), []byte(*req.MAC)) {
		return nil, mxhttp.Forbidden("HMAC incorrect")
	}
	// The MAC covers the name as typed; the account gets it lower-cased,
	// as in Synapse.
	localpart, err := a.users.Register(ctx, userapi.NewAccount{
		Localpart:   userapi.NormalizeUsername(*req.Username),
		Password:    *req.Password,
		Admin:       req.Admin,
		UserType:    userType,
		DisplayName: req.DisplayName,
	})
	if err != nil {
		return nil, err
	}
	return a.registrationResult(ctx, localpart, req.DeviceID, req.InitialDeviceDisplayName, req.InhibitLogin, req.RefreshToken)
}

// Registration tokens, compatible with Synapse's admin API.

// registrationTokenJSON is a token as Synapse's admin API shows it. Weft
// does not reserve tokens during UIA, so pending is always 0.
type registrationTokenJSON struct {
	Token       string `json:"token"`
	UsesAllowed *int64 `json:"uses_allowed"`
	Pending     int64  `json:"pending"`
	Completed   int64  `json:"completed"`
	ExpiryTime  *int64 `json:"expiry_time"`
}

func tokenJSON(rt sql.RegistrationToken) registrationTokenJSON {
	j := registrationTokenJSON{Token: rt.Token, UsesAllowed: rt.UsesAllowed, Completed: rt.Completed}
	if rt.ExpiryTS != 0 {
		exp := rt.ExpiryTS
		j.ExpiryTime = &exp
	}
	return j
}

func (a *API) listRegistrationTokens(r *http.Request, _ *userapi.Device) (any, error) {
	var valid *bool
	switch v := r.URL.Query().Get("valid"); v {
	case "":
	case "true", "false":
		b := v == "true"
		valid = &b
	default:
		return nil, mxhttp.InvalidParam("Boolean query parameter 'valid' must be one of ['true', 'false']")
	}
	tokens, err := a.users.RegistrationTokens(r.Context(), valid)
	if err != nil {
		return nil, err
	}
	out := make([]registrationTokenJSON, 0, len(tokens))
	for _, rt := range tokens {
		out = append(out, tokenJSON(rt))
	}
	return map[string]any{"registration_tokens": out}, nil
}

func (a *API) newRegistrationToken(r *http.Request, _ *userapi.Device) (any, error) {
	var body map[string]json.RawMessage
	if err := mxhttp.ReadJSON(r, &body); err != nil {
		return nil, err
	}
	var spec userapi.TokenSpec
	if raw, ok := body["token"]; ok {
		if json.Unmarshal(raw, &spec.Token) != nil || string(raw) == "null" {
			return nil, mxhttp.InvalidParam("token must be a string")
		}
		// Given explicitly, even an empty token is checked (and refused).
		if err := userapi.CheckRegistrationTokenString(spec.Token); err != nil {
			return nil, err
		}
	} else if raw, ok := body["length"]; ok {
		var n int64
		if json.Unmarshal(raw, &n) != nil || string(raw) == "null" {
			return nil, mxhttp.InvalidParam("length must be an integer")
		}
		if n < 1 || n > userapi.MaxRegistrationTokenLength {
			return nil, mxhttp.InvalidParam("length must be greater than zero and not greater than %d", userapi.MaxRegistrationTokenLength)
		}
		spec.Length = int(n)
	}
	var err error
	if spec.UsesAllowed, _, err = optionalInt(body, "uses_allowed", "uses_allowed must be a non-negative integer or null"); err != nil {
		return nil, err
	}
	exp, _, err := optionalInt(body, "expiry_time", "expiry_time must be an integer or null")
	if err != nil {
		return nil, err
	}
	if exp != nil {
		if *exp <= 0 {
			return nil, mxhttp.InvalidParam("expiry_time must not be in the past")
		}
		spec.ExpiryTS = *exp
	}
	rt, err := a.users.CreateRegistrationToken(r.Context(), spec)
	if err != nil {
		return nil, err
	}
	return tokenJSON(rt), nil
}

// optionalInt reads an integer-or-null field: nil for null or absent,
// present telling which; 400 M_INVALID_PARAM with msg for anything else
// (floats and booleans included, as in Synapse).
func optionalInt(body map[string]json.RawMessage, key, msg string) (v *int64, present bool, err error) {
	raw, ok := body[key]
	if !ok {
		return nil, false, nil
	}
	if string(raw) == "null" {
		return nil, true, nil
	}
	var n int64
	if json.Unmarshal(raw, &n) != nil {
		return nil, true, mxhttp.InvalidParam("%s", msg)
	}
	return &n, true, nil
}

func (a *API) getRegistrationToken(r *http.Request, _ *userapi.Device) (any, error) {
	token, err := pathVar(r, "token")
	if err != nil {
		return nil, err
	}
	rt, err := a.users.RegistrationToken(r.Context(), token)
	if err != nil {
		return nil, err
	}
	return tokenJSON(rt), nil
}

func (a *API) updateRegistrationToken(r *http.Request, _ *userapi.Device) (any, error) {
	token, err := pathVar(r, "token")
	if err != nil {
		return nil, err
	}
	var body map[string]json.RawMessage
	if err := mxhttp.ReadJSON(r, &body); err != nil {
		return nil, err
	}
	var u userapi.TokenUpdate
	if u.UsesAllowed, u.SetUsesAllowed, err = optionalInt(body, "uses_allowed", "uses_allowed must be a non-negative integer or null"); err != nil {
		return nil, err
	}
	exp, setExp, err := optionalInt(body, "expiry_time", "expiry_time must be an integer or null")
	if err != nil {
		return nil, err
	}
	if setExp {
		u.SetExpiry = true
		if exp != nil {
			if *exp <= 0 {
				return nil, mxhttp.InvalidParam("expiry_time must not be in the past")
			}
			u.ExpiryTS = *exp
		}
	}
	rt, err := a.users.UpdateRegistrationToken(r.Context(), token, u)
	if err != nil {
		return nil, err
	}
	return tokenJSON(rt), nil
}

func (a *API) deleteRegistrationToken(r *http.Request, _ *userapi.Device) (any, error) {
	token, err := pathVar(r, "token")
	if err != nil {
		return nil, err
	}
	if err := a.users.DeleteRegistrationToken(r.Context(), token); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}
