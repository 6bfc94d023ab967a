package clientapi

import (
	"net/http"

	"github.com/gorilla/mux"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/userapi"
)

// Weft has no email or SMS sending and talks to no identity server, so no
// account has a third-party id and none can be added: these endpoints say so
// with the errcodes the spec gives for a server that does not allow it,
// and the m.3pid_changes capability is false.

func (a *API) threepidRoutes(r *mux.Router) {
	handle(r, "/account/3pid", a.authedJSON(a.listThreepids), http.MethodGet)
	for _, path := range []string{"/account/3pid", "/account/3pid/add", "/account/3pid/bind"} {
		handle(r, path, a.authedJSON(refuseThreepidAdd), http.MethodPost)
	}
	for _, path := range []string{"/account/3pid/delete", "/account/3pid/unbind"} {
		handle(r, path, a.authedJSON(removeThreepid), http.MethodPost)
	}
	// Asking to validate an address needs no access token.
	for _, path := range []string{"/account/3pid/email/requestToken", "/account/3pid/msisdn/requestToken"} {
		handle(r, path, mxhttp.JSON(refuseAddingMedium), http.MethodPost)
	}
	for _, path := range []string{
		"/register/email/requestToken", "/register/msisdn/requestToken",
		"/account/password/email/requestToken", "/account/password/msisdn/requestToken",
	} {
		handle(r, path, mxhttp.JSON(refuseThreepidToken), http.MethodPost)
	}
}

// listThreepids is GET /account/3pid: always empty.
func (a *API) listThreepids(_ *http.Request, dev *userapi.Device) (any, error) {
	if err := forbidGuest(dev); err != nil {
		return nil, err
	}
	return map[string]any{"threepids": []any{}}, nil
}

// refuseThreepidAdd answers POST /account/3pid/add, /bind and the deprecated
// POST /account/3pid: 403 M_THREEPID_DENIED. /add would otherwise run
// user-interactive auth first; asking for a password to then refuse
// anyway helps no one.
func refuseThreepidAdd(*http.Request, *userapi.Device) (any, error) {
	return nil, threepidDenied()
}

// removeThreepid answers POST /account/3pid/delete and /unbind: after
// checking the request, 400 M_THREEPID_NOT_FOUND, since the account has no
// third-party id to remove or unbind.
func removeThreepid(r *http.Request, dev *userapi.Device) (any, error) {
	var req struct {
		Medium   *string `json:"medium"`
		Address  *string `json:"address"`
		IDServer string  `json:"id_server"`
	}
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	if req.Medium == nil {
		return nil, mxhttp.MissingParam("Missing medium")
	}
	if req.Address == nil {
		return nil, mxhttp.MissingParam("Missing address")
	}
	if m := *req.Medium; m != "email" && m != "msisdn" {
		return nil, mxhttp.InvalidParam(`medium must be "email" or "msisdn"`)
	}
	return nil, mxhttp.Errorf(http.StatusBadRequest, "M_THREEPID_NOT_FOUND", "No such third-party id on this account")
}

// refuseAddingMedium answers the requestToken endpoints for adding an
// address: 400 M_THREEPID_MEDIUM_NOT_SUPPORTED, the spec's code for "the
// homeserver does not support adding email addresses / phone numbers".
func refuseAddingMedium(*http.Request) (any, error) {
	return nil, mxhttp.Errorf(http.StatusBadRequest, "M_THREEPID_MEDIUM_NOT_SUPPORTED",
		"This server does not support adding email addresses or phone numbers")
}

// refuseThreepidToken answers the requestToken endpoints of registration
// and password reset: 403 M_THREEPID_DENIED, the one refusal they name.
func refuseThreepidToken(*http.Request) (any, error) {
	return nil, threepidDenied()
}

func threepidDenied() error {
	return mxhttp.Errorf(http.StatusForbidden, "M_THREEPID_DENIED",
		"This server does not support third-party ids (email, phone): it cannot send validation messages or use an identity server")
}
