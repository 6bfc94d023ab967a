package federation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/serverkey"
)

// requester sends signed requests to other servers and decodes their
// answers; an error answer is a *remoteError.
type requester struct {
	doer   httpDoer
	origin spec.ServerName
	key    serverkey.Key
}

// newRequester signs with key as c's origin and sends through c.
func newRequester(c *Client, key serverkey.Key) (requester, error) {
	doer, ok := c.FederationClient.(httpDoer)
	if !ok {
		return requester{}, errors.New("federation: the client cannot send raw requests")
	}
	return requester{doer: doer, origin: c.Origin(), key: key}, nil
}

// remoteError is an error answer of another server.
type remoteError struct {
	server  spec.ServerName
	status  int
	code    string
	message string
}

func (e *remoteError) Error() string {
	return fmt.Sprintf("%s answered %d %s: %s", e.server, e.status, e.code, e.message)
}

// do sends a signed request with body (nil: none) and decodes a 2xx
// answer into out, of any size the transport takes (maxResponseBytes).
func (q requester) do(ctx context.Context, method string, server spec.ServerName, path string, body, out any) error {
	return q.doLimited(ctx, method, server, path, body, maxResponseBytes, out)
}

// doLimited is do for answers of at most maxBytes. Answers are decoded
// as sent: raw fields in out stay byte for byte what the server wrote,
// as signatures over them need.
func (q requester) doLimited(ctx context.Context, method string, server spec.ServerName, path string, body any, maxBytes int64, out any) error {
	fr := fclient.NewFederationRequest(method, q.origin, server, path)
	if body != nil {
		if err := fr.SetContent(body); err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
	}
	if err := fr.Sign(q.origin, q.key.ID, q.key.Private); err != nil {
		return fmt.Errorf("sign request: %w", err)
	}
	req, err := fr.HTTPRequest()
	if err != nil {
		return err
	}
	resp, err := q.doer.DoHTTPRequest(ctx, req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		e := &remoteError{server: server, status: resp.StatusCode, message: strings.TrimSpace(string(raw[:min(len(raw), 300)]))}
		var merr struct {
			ErrCode string `json:"errcode"`
			Error   string `json:"error"`
		}
		if json.Unmarshal(raw, &merr) == nil && merr.ErrCode != "" {
			e.code, e.message = merr.ErrCode, merr.Error
		}
		return e
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxBytes+1))
	if err != nil {
		return err
	}
	if int64(len(raw)) > maxBytes {
		return fmt.Errorf("%s: answer larger than %d bytes", server, maxBytes)
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("%s: malformed answer: %w", server, err)
	}
	return nil
}
