package userapi

import (
	"encoding/json"
	"strings"

	"github.com/weft-chat/weft/internal/mxhttp"
)

// Identifier is the spec's user identifier object (m.id.user and the
// others), together with the legacy top-level "user" field.
type Identifier struct {
	Type string `json:"type"`
	User string `json:"user"`
}

// LocalpartFromIdentifier resolves who a login or password stage names.
// identifier wins over the legacy user field; the user may be given as a
// localpart or as a full user id of this server. Only m.id.user is
// supported: third-party ids and phone numbers answer 403 M_FORBIDDEN, the
// spec's answer for a 3PID bound to no account (none is, as there is no
// identity support); other identifier types answer 400 M_UNKNOWN.
func (s *Service) LocalpartFromIdentifier(identifier json.RawMessage, legacyUser string) (string, error) {
	var id Identifier
	if len(identifier) > 0 && string(identifier) != "null" {
		if err := json.Unmarshal(identifier, &id); err != nil {
			return "", mxhttp.BadJSON("identifier must be an object with a type")
		}
		switch id.Type {
		case "m.id.user":
		case "m.id.thirdparty", "m.id.phone":
			// The spec: a 3PID the server does not know answers 403, and
			// no account has a 3PID bound.
			return "", mxhttp.Forbidden("Invalid username or password")
		default:
			return "", mxhttp.Errorf(400, "M_UNKNOWN", "Unsupported identifier type %q", id.Type)
		}
	} else {
		id.User = legacyUser
	}
	if id.User == "" {
		return "", mxhttp.MissingParam("No user given")
	}
	user := id.User
	if strings.HasPrefix(user, "@") {
		local, err := s.LocalpartOf(user)
		if err != nil {
			return "", mxhttp.Forbidden("Invalid username or password")
		}
		user = local
	}
	// Localparts are lower case; Synapse lower-cases logins the same way.
	return strings.ToLower(user), nil
}
