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

// StatusError is another server's answer with a status other than 2xx.
type StatusError struct {
	Server spec.ServerName
	Status int
	// ErrCode is the Matrix errcode of the answer, "" when it had none.
	ErrCode string
	Message string
}

func (e *StatusError) Error() string {
	if e.ErrCode != "" {
		return fmt.Sprintf("%s answered %d: %s: %s", e.Server, e.Status, e.ErrCode, e.Message)
	}
	return fmt.Sprintf("%s answered %d: %s", e.Server, e.Status, e.Message)
}

// requester sends requests to other servers signed as origin, for the
// queries of the client API (keys, profiles, device lists).
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

// json sends a signed request to server (with a JSON body unless body is
// nil) and decodes its JSON answer, of at most maxBytes, into out. An
// answer with a status other than 2xx is a *StatusError. Answers are
// decoded as sent: raw fields in out stay byte for byte what the server
// wrote, as signatures over them need.
func (r requester) json(ctx context.Context, method string, server spec.ServerName, path string, body any, maxBytes int64, out any) error {
	origin, key := r.origin, r.key
	fr := fclient.NewFederationRequest(method, origin, server, path)
	if body != nil {
		if err := fr.SetContent(body); err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
	}
	if err := fr.Sign(origin, key.ID, key.Private); err != nil {
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
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxBytes+1))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		se := &StatusError{Server: server, Status: resp.StatusCode, Message: strings.TrimSpace(string(raw[:min(len(raw), 300)]))}
		var merr struct {
			ErrCode string `json:"errcode"`
			Error   string `json:"error"`
		}
		if json.Unmarshal(raw, &merr) == nil && merr.ErrCode != "" {
			se.ErrCode, se.Message = merr.ErrCode, merr.Error
		}
		return se
	}
	if int64(len(raw)) > maxBytes {
		return fmt.Errorf("%s: answer larger than %d bytes", server, maxBytes)
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("%s: malformed answer: %w", server, err)
	}
	return nil
}
