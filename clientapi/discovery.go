// Package clientapi holds the client-server HTTP handlers except sync.
package clientapi

import (
	"net/http"

	"github.com/gorilla/mux"

	"github.com/weft-chat/weft/internal/mxhttp"
)

// SupportedVersions are the spec versions advertised in /versions. A
// version is listed only once what it requires is served, so that clients
// do not call endpoints that answer M_UNRECOGNIZED; the list grows as the
// rooms and sync issues land.
var SupportedVersions = []string{}

// UnstableFeatures are the unstable features advertised in /versions.
var UnstableFeatures = map[string]bool{}

// DiscoveryRoutes registers /versions and /.well-known/matrix/client.
func DiscoveryRoutes(r *mux.Router, publicBaseURL string) {
	r.Handle("/_matrix/client/versions", mxhttp.JSON(func(*http.Request) (any, error) {
		return map[string]any{"versions": SupportedVersions, "unstable_features": UnstableFeatures}, nil
	})).Methods(http.MethodGet)
	r.Handle("/.well-known/matrix/client", mxhttp.JSON(func(*http.Request) (any, error) {
		if publicBaseURL == "" {
			return nil, mxhttp.NotFound("No client discovery is configured")
		}
		return map[string]any{"m.homeserver": map[string]string{"base_url": publicBaseURL}}, nil
	})).Methods(http.MethodGet)
}
