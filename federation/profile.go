package federation

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/internal/serverkey"
)

// profileTimeout bounds a profile query: a client waits on it.
const profileTimeout = 15 * time.Second

// maxProfileResponseBytes bounds a profile answer; profiles are under 64
// KiB (spec v1.16).
const maxProfileResponseBytes = 1 << 20

// Profiles asks other servers for their users' profiles (GET
// /_matrix/federation/v1/query/profile) for the client API
// (clientapi.RemoteProfiles).
type Profiles struct {
	requester
}

// NewProfiles makes the client; requests are signed with key as c's
// origin.
func NewProfiles(c *Client, key serverkey.Key) (*Profiles, error) {
	r, err := newRequester(c, key)
	if err != nil {
		return nil, err
	}
	return &Profiles{r}, nil
}

// Profile returns the profile of a user of another server: every field,
// or only field when it is not "". The errors are the client API's
// answers, as Synapse gives them: the remote server's 404 (an unknown
// user, an unset field) passes through; a server that cannot be reached
// or gives any other answer is 502 M_UNKNOWN. A field the answer leaves
// out (servers omit an unset displayname or avatar_url, or send null),
// and a profile without fields, are 404 M_NOT_FOUND, as for a local user.
func (p *Profiles) Profile(ctx context.Context, userID spec.UserID, field string) (map[string]json.RawMessage, error) {
	ctx, cancel := context.WithTimeout(ctx, profileTimeout)
	defer cancel()
	q := url.Values{"user_id": {userID.String()}}
	if field != "" {
		q.Set("field", field)
	}
	var out map[string]json.RawMessage
	err := p.doLimited(ctx, http.MethodGet, userID.Domain(), "/_matrix/federation/v1/query/profile?"+q.Encode(), nil, maxProfileResponseBytes, &out)
	var re *remoteError
	switch {
	case errors.As(err, &re) && re.status == http.StatusNotFound:
		code := re.code
		if code == "" {
			code = "M_NOT_FOUND"
		}
		return nil, mxhttp.Errorf(http.StatusNotFound, code, "%s", re.message)
	case err != nil:
		return nil, &mxhttp.Error{Status: http.StatusBadGateway, Code: "M_UNKNOWN", Message: "Failed to fetch profile", Cause: err}
	}
	// Some servers send null for a field not set.
	for k, v := range out {
		if string(v) == "null" {
			delete(out, k)
		}
	}
	if field != "" {
		v, ok := out[field]
		if !ok {
			return nil, mxhttp.NotFound("The user has no profile field %q", field)
		}
		return map[string]json.RawMessage{field: v}, nil
	}
	if len(out) == 0 {
		return nil, mxhttp.NotFound("Profile not found")
	}
	return out, nil
}
