package federation

import (
	"net/http"

	"github.com/gorilla/mux"

	"github.com/weft-chat/weft/internal/mxhttp"
)

// WellKnownRoutes serves /.well-known/matrix/server (delegation) when a
// delegated host is configured; otherwise 404 M_NOT_FOUND, which tells
// other servers to connect to the server name itself.
func WellKnownRoutes(r *mux.Router, delegatedServer string) {
	r.Handle("/.well-known/matrix/server", mxhttp.JSON(func(*http.Request) (any, error) {
		if delegatedServer == "" {
			return nil, mxhttp.NotFound("No server delegation is configured")
		}
		return map[string]string{"m.server": delegatedServer}, nil
	})).Methods(http.MethodGet)
}
