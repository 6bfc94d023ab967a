package federation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/matrix-org/gomatrixserverlib/fclient"
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
	doer   httpDoer
	origin spec.ServerName
	key    serverkey.Key
}

// NewRemoteKeys makes the fetcher; requests are signed with key as c's
// origin.
func NewRemoteKeys(c *Client, key serverkey.Key) (*RemoteKeys, error) {
	doer, ok := c.FederationClient.(httpDoer)
	if !ok {
		return nil, errors.New("federation remote keys: the client cannot send raw requests")
	}
	return &RemoteKeys{doer: doer, origin: c.Origin(), key: key}, nil
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
	fr := fclient.NewFederationRequest(http.MethodPost, r.origin, spec.ServerName(server), path)
	if err := fr.SetContent(body); err != nil {
		return fmt.Errorf("encode request: %w", err)
	}
	if err := fr.Sign(r.origin, r.key.ID, r.key.Private); err != nil {
		return fmt.Errorf("sign request: %w", err)
	}
	req, err := fr.HTTPRequest()
	if err != nil {
		return err
	}
	resp, err := r.doer.DoHTTPRequest(ctx, req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxKeysResponseBytes+1))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		msg := strings.TrimSpace(string(raw[:min(len(raw), 300)]))
		var merr struct {
			ErrCode string `json:"errcode"`
			Error   string `json:"error"`
		}
		if json.Unmarshal(raw, &merr) == nil && merr.ErrCode != "" {
			msg = merr.ErrCode + ": " + merr.Error
		}
		return &e2ee.RemoteError{Status: resp.StatusCode, Message: fmt.Sprintf("%s answered %d: %s", server, resp.StatusCode, msg)}
	}
	if len(raw) > maxKeysResponseBytes {
		return fmt.Errorf("%s: answer larger than %d bytes", server, maxKeysResponseBytes)
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("%s: malformed answer: %w", server, err)
	}
	return nil
}
