// Package clientapi holds the client-server HTTP handlers except sync.
package clientapi

import (
	"net/http"

	"github.com/gorilla/mux"

	"github.com/weft-chat/weft/internal/mxhttp"
)

// SupportedVersions are the spec versions advertised in /versions.
// Clients refuse a server without a version they support (matrix-js-sdk,
// hence Element Web, needs v1.1 or later), and use what a version adds
// once it is listed: threads and private receipts (v1.4), login tokens
// (v1.7), recursive relations (v1.10) are served. v1.11 is not listed:
// it moves media behind authentication, and Weft has no content
// repository yet, whose endpoints answer M_UNRECOGNIZED in every version.
var SupportedVersions = []string{"v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10"}

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
