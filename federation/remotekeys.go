package federation

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/e2ee"
	"github.com/weft-chat/weft/internal/serverkey"
)

// maxKeysResponseBytes bounds a /user/keys answer: thousands of devices
// fit in it many times over.
const maxKeysResponseBytes = 16 << 20

// RemoteKeys is e2ee.RemoteKeys over federation: POST
// /_matrix/federation/v1/user/keys/query and /user/keys/claim. Answers
// are kept as the server sent them, byte for byte inside each key, since
// re-encoding through typed structs would drop fields the signatures
// cover.
type RemoteKeys struct {
	requester
}

// NewRemoteKeys makes the fetcher; requests are signed with key as c's
// origin.
func NewRemoteKeys(c *Client, key serverkey.Key) (*RemoteKeys, error) {
	r, err := newRequester(c, key)
	if err != nil {
		return nil, err
	}
	return &RemoteKeys{r}, nil
}

// QueryKeys implements e2ee.RemoteKeys.
func (r *RemoteKeys) QueryKeys(ctx context.Context, server string, deviceKeys map[string][]string) (e2ee.RemoteQuery, error) {
	var out e2ee.RemoteQuery
	err := r.post(ctx, server, "/_matrix/federation/v1/user/keys/query", map[string]any{"device_keys": deviceKeys}, &out)
	return out, err
}

// ClaimKeys implements e2ee.RemoteKeys.
func (r *RemoteKeys) ClaimKeys(ctx context.Context, server string, oneTimeKeys map[string]map[string]string) (map[string]map[string]map[string]json.RawMessage, error) {
	var out struct {
		OneTimeKeys map[string]map[string]map[string]json.RawMessage `json:"one_time_keys"`
	}
	err := r.post(ctx, server, "/_matrix/federation/v1/user/keys/claim", map[string]any{"one_time_keys": oneTimeKeys}, &out)
	return out.OneTimeKeys, err
}

// post sends a signed POST to server and decodes its answer into out; an
// error answer is an *e2ee.RemoteError with the server's status.
func (r *RemoteKeys) post(ctx context.Context, server, path string, body, out any) error {
	err := r.doLimited(ctx, http.MethodPost, spec.ServerName(server), path, body, maxKeysResponseBytes, out)
	var re *remoteError
	if errors.As(err, &re) {
		return &e2ee.RemoteError{Status: re.status, Message: re.Error()}
	}
	return err
}
