package federation

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
)

// Query serves the federation queries (spec: "Querying for information"):
// profiles and room aliases of this server.
type Query struct {
	DB         *sql.DB
	ServerName spec.ServerName
}

// Routes registers GET /_matrix/federation/v1/query/profile and
// /query/directory on r, which must authenticate requests (see
// Authenticator.Router).
func (q *Query) Routes(r *mux.Router) {
	r.Handle("/_matrix/federation/v1/query/profile", mxhttp.JSON(q.profile)).Methods(http.MethodGet)
	r.Handle("/_matrix/federation/v1/query/directory", mxhttp.JSON(q.directory)).Methods(http.MethodGet)
}

// profile is GET /query/profile?user_id=…[&field=…]. The spec leaves the
// failures partly open; as Synapse: a user of another server is 400, an
// unknown user 404 M_NOT_FOUND; a displayname or avatar_url the user has
// not set is left out (the spec allows omitting it), any other unset field
// is 404 M_NOT_FOUND.
func (q *Query) profile(r *http.Request) (any, error) {
	params := r.URL.Query()
	userID := params.Get("user_id")
	if userID == "" {
		return nil, mxhttp.MissingParam("user_id is required")
	}
	localpart, domain, ok := strings.Cut(strings.TrimPrefix(userID, "@"), ":")
	if !strings.HasPrefix(userID, "@") || !ok || localpart == "" {
		return nil, mxhttp.InvalidParam("%q is not a user id", userID)
	}
	if spec.ServerName(domain) != q.ServerName {
		return nil, mxhttp.InvalidParam("User %s is not hosted on this server", userID)
	}
	ctx := r.Context()
	exists, err := q.DB.AccountExists(ctx, localpart)
	if err != nil {
		return nil, mxhttp.Internal(err)
	}
	if !exists {
		return nil, mxhttp.NotFound("User %s does not exist", userID)
	}
	field := params.Get("field")
	if field == "" {
		fields, err := q.DB.ProfileFields(ctx, localpart)
		if err != nil {
			return nil, mxhttp.Internal(err)
		}
		return fields, nil
	}
	value, err := q.DB.ProfileField(ctx, localpart, field)
	switch {
	case errors.Is(err, sql.ErrNotFound) && (field == "displayname" || field == "avatar_url"):
		return struct{}{}, nil
	case errors.Is(err, sql.ErrNotFound):
		return nil, mxhttp.NotFound("User %s has no profile field %q", userID, field)
	case err != nil:
		return nil, mxhttp.Internal(err)
	}
	return map[string]json.RawMessage{field: value}, nil
}

// directory is GET /query/directory?room_alias=…: the room and the servers
// to join it through, this one first, then those of its joined members
// (as the client API's alias lookup answers). An alias of another server
// is 400, as in Synapse; an unknown one 404 M_NOT_FOUND.
func (q *Query) directory(r *http.Request) (any, error) {
	alias := r.URL.Query().Get("room_alias")
	if alias == "" {
		return nil, mxhttp.MissingParam("room_alias is required")
	}
	_, domain, ok := strings.Cut(alias, ":")
	if !strings.HasPrefix(alias, "#") || !ok {
		return nil, mxhttp.InvalidParam("%q is not a room alias", alias)
	}
	if spec.ServerName(domain) != q.ServerName {
		return nil, mxhttp.InvalidParam("Room alias %s is not hosted on this server", alias)
	}
	ctx := r.Context()
	roomID, err := q.DB.AliasRoom(ctx, alias)
	if errors.Is(err, sql.ErrNotFound) {
		return nil, mxhttp.NotFound("Room alias %s not found", alias)
	}
	if err != nil {
		return nil, mxhttp.Internal(err)
	}
	members, err := q.DB.RoomMembers(ctx, roomID, "join")
	if err != nil {
		return nil, mxhttp.Internal(err)
	}
	seen := map[string]bool{string(q.ServerName): true}
	var others []string
	for _, m := range members {
		if _, server, ok := strings.Cut(m, ":"); ok && !seen[server] {
			seen[server] = true
			others = append(others, server)
		}
	}
	slices.Sort(others)
	return map[string]any{"room_id": roomID, "servers": append([]string{string(q.ServerName)}, others...)}, nil
}

// pathVar returns a path variable, unescaped (routes match encoded paths);
// 400 M_INVALID_PARAM when it does not unescape.
func pathVar(r *http.Request, name string) (string, error) {
	v, err := url.PathUnescape(mux.Vars(r)[name])
	if err != nil {
		return "", mxhttp.InvalidParam("Bad %s in the path", name)
	}
	return v, nil
}
