package clientapi

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"time"

	"github.com/gorilla/mux"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/userapi"
)

// openIDTokenLifetime is how long an OpenID token works, as in Synapse.
const openIDTokenLifetime = time.Hour

func (a *API) openIDRoutes(r *mux.Router) {
	handle(r, "/user/{userId}/openid/request_token", a.authedJSON(a.requestOpenIDToken), http.MethodPost)
}

// openIDToken is the answer of request_token (definitions/openid_token.yaml).
type openIDToken struct {
	AccessToken      string `json:"access_token"`
	TokenType        string `json:"token_type"`
	MatrixServerName string `json:"matrix_server_name"`
	ExpiresIn        int64  `json:"expires_in"`
}

// requestOpenIDToken is POST /user/{userId}/openid/request_token: a token
// a third-party service exchanges at the federation API's
// /openid/userinfo for the caller's user id, and for nothing else. As in
// Synapse, guests may not have one (403 M_GUEST_ACCESS_FORBIDDEN) and
// nobody may have one for another user (403 M_FORBIDDEN).
func (a *API) requestOpenIDToken(r *http.Request, dev *userapi.Device) (any, error) {
	userID, err := pathVar(r, "userId")
	if err != nil {
		return nil, err
	}
	if dev.IsGuest {
		return nil, mxhttp.Errorf(http.StatusForbidden, "M_GUEST_ACCESS_FORBIDDEN", "Guest access is not allowed here")
	}
	if userID != dev.UserID {
		return nil, mxhttp.Forbidden("Cannot request tokens for other users.")
	}
	// The body is an empty object, "reserved for future expansion".
	var body map[string]json.RawMessage
	if err := mxhttp.ReadJSON(r, &body); err != nil {
		return nil, err
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return nil, mxhttp.Internal(err)
	}
	token := "wo_" + base64.RawURLEncoding.EncodeToString(b)
	expires := time.Now().Add(openIDTokenLifetime)
	if err := a.db.AddOpenIDToken(r.Context(), token, dev.Localpart, dev.UserID, expires.UnixMilli()); err != nil {
		return nil, mxhttp.Internal(err)
	}
	return openIDToken{AccessToken: token, TokenType: "Bearer", MatrixServerName: a.users.ServerName(),
		ExpiresIn: int64(openIDTokenLifetime / time.Second)}, nil
}
