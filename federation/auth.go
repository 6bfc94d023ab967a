package federation

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
)

// Authenticator checks the X-Matrix signature of inbound federation
// requests (spec: "Request Authentication").
type Authenticator struct {
	// ServerName is ours: a request naming another destination is refused.
	ServerName spec.ServerName
	// Keys verifies the origin's signature (a *KeyRing).
	Keys gomatrixserverlib.JSONVerifier
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

type originKey struct{}

// Origin returns the server that signed the request being served; "" when
// the request did not go through the Authenticator.
func Origin(ctx context.Context) spec.ServerName {
	o, _ := ctx.Value(originKey{}).(spec.ServerName)
	return o
}

// Router returns a subrouter of r for paths under /_matrix/federation/
// whose every route is behind the Authenticator; its routes are registered
// with their whole paths. Routes registered on r before it (the version
// endpoint) stay open.
func (a *Authenticator) Router(r *mux.Router) *mux.Router {
	// A matcher rather than PathPrefix: mux would prepend a prefix to every
	// route template of the subrouter.
	fed := r.MatcherFunc(func(req *http.Request, _ *mux.RouteMatch) bool {
		return strings.HasPrefix(req.URL.EscapedPath(), "/_matrix/federation/")
	}).Subrouter()
	fed.Use(a.Middleware)
	return fed
}

// unauthorized is the spec's answer to a request that fails
// authentication: 401 M_UNAUTHORIZED.
func unauthorized(format string, args ...any) *mxhttp.Error {
	return mxhttp.Errorf(http.StatusUnauthorized, "M_UNAUTHORIZED", format, args...)
}

// Middleware verifies the request's X-Matrix Authorization headers against
// the origin's keys, then serves it with the origin in the context (see
// Origin) and the body readable again.
func (a *Authenticator) Middleware(next http.Handler) http.Handler {
	return mxhttp.Handler(func(w http.ResponseWriter, r *http.Request) error {
		origin, err := a.verify(r)
		if err != nil {
			return err
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), originKey{}, origin)))
		return nil
	})
}

// verify authenticates r and leaves its body readable for the handler.
func (a *Authenticator) verify(r *http.Request) (spec.ServerName, error) {
	var origin, destination string
	sigs := make(map[string]string)
	for _, h := range r.Header.Values("Authorization") {
		scheme, params, ok := parseAuthorization(h)
		if !strings.EqualFold(scheme, "X-Matrix") {
			continue // another scheme: not ours to judge
		}
		o, key, sig := params["origin"], params["key"], params["sig"]
		if !ok || o == "" || key == "" || sig == "" {
			return "", unauthorized("Malformed X-Matrix Authorization header: origin, key and sig are required")
		}
		if origin != "" && o != origin {
			return "", unauthorized("X-Matrix Authorization headers name different origins")
		}
		origin = o
		if d, ok := params["destination"]; ok {
			if destination != "" && d != destination {
				return "", unauthorized("X-Matrix Authorization headers name different destinations")
			}
			destination = d
		}
		sigs[key] = sig
	}
	if origin == "" {
		return "", unauthorized("Missing X-Matrix Authorization header")
	}
	if _, _, ok := spec.ParseAndValidateServerName(spec.ServerName(origin)); !ok {
		return "", unauthorized("The X-Matrix origin %q is not a server name", origin)
	}
	// Spec: a destination that is not ours "must" be denied with 401;
	// older servers omit it, and then we are the destination.
	if destination == "" {
		destination = string(a.ServerName)
	} else if destination != string(a.ServerName) {
		return "", unauthorized("This server is %s, not %s", a.ServerName, destination)
	}

	body, err := io.ReadAll(r.Body)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return "", mxhttp.TooLarge("Request body is larger than %d bytes", tooBig.Limit)
		}
		return "", mxhttp.BadJSON("Could not read the request body")
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	uri := r.RequestURI
	if uri == "" {
		uri = r.URL.RequestURI()
	}
	msg := map[string]any{
		"method":      r.Method,
		"uri":         uri,
		"origin":      origin,
		"destination": destination,
		"signatures":  map[string]map[string]string{origin: sigs},
	}
	if len(bytes.TrimSpace(body)) > 0 {
		if !utf8.Valid(body) || !json.Valid(body) {
			return "", mxhttp.NotJSON("Request body is not valid JSON")
		}
		msg["content"] = json.RawMessage(body)
	}
	signed, err := json.Marshal(msg)
	if err != nil {
		return "", mxhttp.Internal(err)
	}
	now := time.Now()
	if a.Now != nil {
		now = a.Now()
	}
	results, err := a.Keys.VerifyJSONs(r.Context(), []gomatrixserverlib.VerifyJSONRequest{{
		ServerName:           spec.ServerName(origin),
		AtTS:                 spec.AsTimestamp(now),
		Message:              signed,
		ValidityCheckingFunc: gomatrixserverlib.StrictValiditySignatureCheck,
	}})
	if err != nil {
		return "", mxhttp.Internal(err)
	}
	if results[0].Error != nil {
		return "", unauthorized("Invalid request signature: %v", results[0].Error)
	}
	return spec.ServerName(origin), nil
}

// parseAuthorization splits an Authorization header into its scheme and
// auth-params (spec, RFC 9110 section 11.4): names are case-insensitive,
// values are tokens or quoted strings with backslash escapes, and spaces or
// tabs may surround the commas. For older servers, a bare value may
// contain colons. ok is false when the header does not parse.
func parseAuthorization(h string) (scheme string, params map[string]string, ok bool) {
	h = strings.TrimLeft(h, " \t")
	i := strings.IndexAny(h, " \t")
	if i < 0 {
		return h, nil, h != ""
	}
	scheme, rest := h[:i], h[i:]
	params = make(map[string]string)
	for {
		rest = strings.TrimLeft(rest, " \t,")
		if rest == "" {
			return scheme, params, true
		}
		eq := strings.IndexByte(rest, '=')
		if eq <= 0 {
			return scheme, nil, false
		}
		name := strings.ToLower(strings.TrimRight(rest[:eq], " \t"))
		if strings.ContainsAny(name, " \t,\"") {
			return scheme, nil, false
		}
		rest = strings.TrimLeft(rest[eq+1:], " \t")
		var value string
		if strings.HasPrefix(rest, `"`) {
			var b strings.Builder
			j, closed := 1, false
			for j < len(rest) {
				c := rest[j]
				if c == '\\' && j+1 < len(rest) {
					b.WriteByte(rest[j+1])
					j += 2
					continue
				}
				if c == '"' {
					closed = true
					j++
					break
				}
				b.WriteByte(c)
				j++
			}
			if !closed {
				return scheme, nil, false
			}
			value, rest = b.String(), rest[j:]
			rest = strings.TrimLeft(rest, " \t")
			if rest != "" && rest[0] != ',' {
				return scheme, nil, false
			}
		} else {
			end := strings.IndexAny(rest, ", \t")
			if end < 0 {
				end = len(rest)
			}
			value, rest = rest[:end], rest[end:]
			rest = strings.TrimLeft(rest, " \t")
			if rest != "" && rest[0] != ',' {
				return scheme, nil, false
			}
		}
		if _, dup := params[name]; !dup {
			params[name] = value
		}
	}
}
