// Package federation is the server-server API: request authentication, the
// key server and key ring, and the federation endpoints.
package federation

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/internal/serverkey"
	"github.com/weft-chat/weft/internal/version"
)

// KeyServer publishes this server's signing keys (spec: server-server API,
// "Publishing Keys").
type KeyServer struct {
	ServerName spec.ServerName
	Key        serverkey.Key
	Old        []config.OldSigningKey
	Validity   time.Duration
}

// Routes registers GET /_matrix/key/v2/server and the federation version.
func (k *KeyServer) Routes(r *mux.Router) {
	r.Handle("/_matrix/key/v2/server", mxhttp.Handler(k.serveKeys)).Methods(http.MethodGet)
	r.Handle("/_matrix/federation/v1/version", mxhttp.JSON(func(*http.Request) (any, error) {
		return map[string]any{"server": map[string]string{"name": version.Name, "version": version.String()}}, nil
	})).Methods(http.MethodGet)
}

func (k *KeyServer) serveKeys(w http.ResponseWriter, _ *http.Request) error {
	body, err := k.SignedKeys(time.Now())
	if err != nil {
		return mxhttp.Internal(err)
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(body)
	return nil
}

// SignedKeys returns the key document, valid for Validity from now and
// signed by the current key.
func (k *KeyServer) SignedKeys(now time.Time) ([]byte, error) {
	fields := gomatrixserverlib.ServerKeyFields{
		ServerName:    k.ServerName,
		ValidUntilTS:  spec.AsTimestamp(now.Add(k.Validity)),
		VerifyKeys:    map[gomatrixserverlib.KeyID]gomatrixserverlib.VerifyKey{k.Key.ID: {Key: spec.Base64Bytes(k.Key.Public())}},
		OldVerifyKeys: make(map[gomatrixserverlib.KeyID]gomatrixserverlib.OldVerifyKey, len(k.Old)),
	}
	for _, old := range k.Old {
		pub, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(old.PublicKey, "="))
		if err != nil {
			continue // config validation rejects these; nothing to publish
		}
		fields.OldVerifyKeys[gomatrixserverlib.KeyID(old.KeyID)] = gomatrixserverlib.OldVerifyKey{
			VerifyKey: gomatrixserverlib.VerifyKey{Key: spec.Base64Bytes(pub)},
			ExpiredTS: spec.Timestamp(old.ExpiredTS),
		}
	}
	unsigned, err := json.Marshal(fields)
	if err != nil {
		return nil, err
	}
	return gomatrixserverlib.SignJSON(string(k.ServerName), k.Key.ID, k.Key.Private, unsigned)
}
