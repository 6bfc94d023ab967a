package federation

import (
	"errors"
	"net/http"
	"time"

	"github.com/gorilla/mux"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
)

// OpenID serves GET /_matrix/federation/v1/openid/userinfo (spec:
// "OpenID"), which third-party services call, unsigned, with a token from
// the client API's request_token.
type OpenID struct {
	DB *sql.DB
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Routes registers the endpoint on r. It must not be behind the
// Authenticator: callers are services, not servers (openid.yaml gives it
// no security).
func (o *OpenID) Routes(r *mux.Router) {
	r.Handle("/_matrix/federation/v1/openid/userinfo", mxhttp.JSON(o.userinfo)).Methods(http.MethodGet)
}

// userinfo answers {"sub": user id} for a live token; 401 M_UNKNOWN_TOKEN
// for an unknown or expired one, and, as Synapse, 401 M_MISSING_TOKEN
// when there is none.
func (o *OpenID) userinfo(r *http.Request) (any, error) {
	token := r.URL.Query().Get("access_token")
	if token == "" {
		return nil, mxhttp.MissingToken()
	}
	now := time.Now()
	if o.Now != nil {
		now = o.Now()
	}
	userID, err := o.DB.OpenIDTokenUser(r.Context(), token, now.UnixMilli())
	if errors.Is(err, sql.ErrNotFound) {
		return nil, mxhttp.Errorf(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "Access token unknown or expired")
	}
	if err != nil {
		return nil, mxhttp.Internal(err)
	}
	return map[string]string{"sub": userID}, nil
}
