package clientapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/internal/roomsummary"
	"github.com/weft-chat/weft/roomserver"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/userapi"
)

// directory serves room aliases (spec "Room aliases") and the published
// room directory (spec "Published room directory").
type directory struct {
	*API
	// list pages through the published rooms, caching what /publicRooms
	// shows of each.
	list *roomsummary.Directory
}

func (a *API) directoryRoutes(r *mux.Router) {
	d := &directory{API: a, list: roomsummary.NewDirectory(a.summaries())}
	// Resolving an alias and reading a room's directory visibility need no
	// access token (directory.yaml and list_public_rooms.yaml give them no
	// security), nor does GET /publicRooms.
	handle(r, "/directory/room/{roomAlias}", mxhttp.JSON(d.resolveAlias), http.MethodGet)
	handle(r, "/directory/room/{roomAlias}", a.authedJSON(d.setAlias), http.MethodPut)
	handle(r, "/directory/room/{roomAlias}", a.authedJSON(d.deleteAlias), http.MethodDelete)
	handle(r, "/rooms/{roomId}/aliases", a.authedJSON(d.roomAliases), http.MethodGet)
	handle(r, "/directory/list/room/{roomId}", mxhttp.JSON(d.visibility), http.MethodGet)
	handle(r, "/directory/list/room/{roomId}", a.authedJSON(d.setVisibility), http.MethodPut)
	handle(r, "/publicRooms", mxhttp.JSON(d.publicRoomsGET), http.MethodGet)
	handle(r, "/publicRooms", a.authedJSON(d.publicRoomsPOST), http.MethodPost)
}

// maxAliasLength is the spec's limit on a whole alias, in bytes.
const maxAliasLength = 255

// parseAlias checks an alias against the spec's grammar (appendices, "Room
// Aliases"): "#localpart:domain" in at most 255 bytes, the localpart any
// codepoints but ':' and NUL, the domain a server name. 400 M_INVALID_PARAM
// otherwise.
func parseAlias(alias string) (localpart, domain string, err error) {
	invalid := func(why string) error { return mxhttp.InvalidParam("Room alias invalid: %s", why) }
	if !strings.HasPrefix(alias, "#") {
		return "", "", invalid("it must start with #")
	}
	if len(alias) > maxAliasLength {
		return "", "", invalid("it is longer than 255 bytes")
	}
	if !utf8.ValidString(alias) {
		return "", "", invalid("it is not valid UTF-8")
	}
	localpart, domain, ok := strings.Cut(alias[1:], ":")
	if !ok {
		return "", "", invalid("it has no :server part")
	}
	if strings.ContainsRune(localpart, 0) {
		return "", "", invalid("the localpart contains NUL")
	}
	if _, _, valid := spec.ParseAndValidateServerName(spec.ServerName(domain)); !valid {
		return "", "", invalid("the server name is not valid")
	}
	return localpart, domain, nil
}

// aliasVar reads and checks the {roomAlias} path variable.
func aliasVar(r *http.Request) (alias, domain string, err error) {
	alias, err = pathVar(r, "roomAlias")
	if err != nil {
		return "", "", err
	}
	_, domain, err = parseAlias(alias)
	return alias, domain, err
}

// RemoteAliases resolves room aliases of other servers (spec: the
// federation query/directory): the room and the servers to join it
// through, or a Matrix error (404 M_NOT_FOUND for an unknown alias).
type RemoteAliases interface {
	ResolveAlias(ctx context.Context, alias string) (roomID string, servers []string, err error)
}

// WithRemoteAliases makes the API resolve other servers' aliases through
// r, for GET /directory/room/{roomAlias} and joins by alias.
func WithRemoteAliases(r RemoteAliases) Option {
	return func(a *API) { a.remoteAliases = r }
}

type resolvedAlias struct {
	RoomID  string   `json:"room_id"`
	Servers []string `json:"servers"`
}

// resolveAlias is GET /directory/room/{roomAlias}.
func (d *directory) resolveAlias(r *http.Request) (any, error) {
	alias, domain, err := aliasVar(r)
	if err != nil {
		return nil, err
	}
	roomID, servers, err := d.lookupAlias(r.Context(), alias, domain)
	if err != nil {
		return nil, err
	}
	return resolvedAlias{RoomID: roomID, Servers: servers}, nil
}

// lookupAlias resolves a checked alias of domain: a local one from the
// database, with the servers of the room's joined members; another
// server's by asking it over federation (directory.yaml).
func (a *API) lookupAlias(ctx context.Context, alias, domain string) (roomID string, servers []string, err error) {
	if domain != a.users.ServerName() {
		if a.remoteAliases == nil {
			return "", nil, mxhttp.NotFound("Room alias %s not found: this server does not federate", alias)
		}
		return a.remoteAliases.ResolveAlias(ctx, alias)
	}
	roomID, err = a.db.AliasRoom(ctx, alias)
	if errors.Is(err, sql.ErrNotFound) {
		return "", nil, mxhttp.NotFound("Room alias %s not found.", alias)
	}
	if err != nil {
		return "", nil, err
	}
	servers, err = a.roomServers(ctx, roomID)
	if err != nil {
		return "", nil, err
	}
	return roomID, servers, nil
}

// roomServers lists the servers a client may join a room through: this
// server first (it hosts the alias), then the servers of the joined
// members, as Synapse does.
func (a *API) roomServers(ctx context.Context, roomID string) ([]string, error) {
	ours := a.users.ServerName()
	members, err := a.db.RoomMembers(ctx, roomID, "join")
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{ours: true}
	var others []string
	for _, m := range members {
		_, server, ok := strings.Cut(m, ":")
		if ok && !seen[server] {
			seen[server] = true
			others = append(others, server)
		}
	}
	slices.Sort(others)
	return append([]string{ours}, others...), nil
}

// setAlias is PUT /directory/room/{roomAlias}. The checks and their order
// follow Synapse (spec silent): the user must be joined to the room unless
// a server admin (require_membership_for_aliases, on by default).
func (d *directory) setAlias(r *http.Request, dev *userapi.Device) (any, error) {
	alias, domain, err := aliasVar(r)
	if err != nil {
		return nil, err
	}
	if err := forbidGuest(dev); err != nil {
		return nil, err
	}
	var body struct {
		RoomID *string `json:"room_id"`
	}
	if err := mxhttp.ReadJSON(r, &body); err != nil {
		return nil, err
	}
	if body.RoomID == nil {
		return nil, mxhttp.MissingParam("room_id is required")
	}
	roomID := *body.RoomID
	if _, err := spec.NewRoomID(roomID); err != nil {
		return nil, mxhttp.InvalidParam("%q is not a valid room id", roomID)
	}
	localpart, _, _ := strings.Cut(alias[1:], ":")
	if strings.IndexFunc(localpart, unicode.IsSpace) >= 0 {
		return nil, mxhttp.InvalidParam("Room alias invalid: the localpart contains whitespace")
	}
	if domain != d.users.ServerName() {
		return nil, mxhttp.InvalidParam("Room alias must be local: this server is %s", d.users.ServerName())
	}
	ctx := r.Context()
	if err := d.roomExists(ctx, roomID); err != nil {
		// Synapse answers an unknown room with 400 "Room does not exist".
		var me *mxhttp.Error
		if errors.As(err, &me) && me.Status == http.StatusNotFound {
			return nil, mxhttp.Errorf(http.StatusBadRequest, "M_UNKNOWN", "Room does not exist")
		}
		return nil, err
	}
	if !dev.IsAdmin {
		m, err := d.rooms.Membership(ctx, roomID, dev.UserID)
		if err != nil {
			return nil, err
		}
		if m != "join" {
			return nil, mxhttp.Forbidden("You must be in the room to create an alias for it")
		}
	}
	switch err := d.db.CreateAlias(ctx, alias, roomID, dev.UserID); {
	case errors.Is(err, sql.ErrExists):
		// directory.yaml: 409 with M_UNKNOWN (not M_ROOM_IN_USE, which is
		// createRoom's code for a taken alias).
		return nil, mxhttp.Errorf(http.StatusConflict, "M_UNKNOWN", "Room alias %s already exists.", alias)
	case err != nil:
		return nil, err
	}
	return struct{}{}, nil
}

// roomExists returns 404 M_NOT_FOUND for a room this server does not know.
func (d *directory) roomExists(ctx context.Context, roomID string) error {
	_, err := d.rooms.RoomVersion(ctx, roomID)
	return err
}

// deleteAlias is DELETE /directory/room/{roomAlias}. As in Synapse, the
// alias's creator, a server admin, or a joined member with the power to
// send m.room.canonical_alias may delete it; the alias is then also taken
// out of the room's canonical alias event where the user may do that.
func (d *directory) deleteAlias(r *http.Request, dev *userapi.Device) (any, error) {
	alias, _, err := aliasVar(r)
	if err != nil {
		return nil, err
	}
	if err := forbidGuest(dev); err != nil {
		return nil, err
	}
	ctx := r.Context()
	// Aliases of other servers are never stored, so they are not found.
	roomID, creator, err := d.db.AliasCreator(ctx, alias)
	if errors.Is(err, sql.ErrNotFound) {
		return nil, mxhttp.NotFound("Room alias %s not found.", alias)
	}
	if err != nil {
		return nil, err
	}
	if creator != dev.UserID {
		if err := d.canManageDirectory(ctx, roomID, dev); err != nil {
			if errors.Is(err, errNotModerator) {
				return nil, mxhttp.Forbidden("You don't have permission to delete the alias.")
			}
			return nil, err
		}
	}
	roomID, err = d.db.DeleteAlias(ctx, alias)
	if errors.Is(err, sql.ErrNotFound) {
		return nil, mxhttp.NotFound("Room alias %s not found.", alias) // deleted meanwhile
	}
	if err != nil {
		return nil, err
	}
	d.dropFromCanonicalAlias(ctx, roomID, alias, dev.UserID)
	return struct{}{}, nil
}

// errNotModerator is canManageDirectory's refusal for a joined member
// without the power level.
var errNotModerator = errors.New("not a moderator")

// canManageDirectory is Synapse's check_can_change_room_list: server
// admins may; others must be joined (403 M_FORBIDDEN otherwise) and have
// the power to send m.room.canonical_alias (errNotModerator otherwise).
func (d *directory) canManageDirectory(ctx context.Context, roomID string, dev *userapi.Device) error {
	if dev.IsAdmin {
		return nil
	}
	m, err := d.rooms.Membership(ctx, roomID, dev.UserID)
	if err != nil {
		return err
	}
	if m != "join" {
		return mxhttp.Forbidden("You are not in the room")
	}
	p, err := d.rooms.Power(ctx, roomID)
	if err != nil {
		return err
	}
	levels := p.Levels()
	if p.UserLevel(dev.UserID) < levels.EventLevel(spec.MRoomCanonicalAlias, true) {
		return errNotModerator
	}
	return nil
}

// dropFromCanonicalAlias sends a new m.room.canonical_alias without a
// deleted alias, if the current one names it. The spec (directory.yaml)
// asks servers that do this to delete the alias even when the user may not
// update the event, so a refusal is only logged.
func (d *directory) dropFromCanonicalAlias(ctx context.Context, roomID, alias, userID string) {
	ev, err := d.rooms.CurrentStateEvent(ctx, roomID, spec.MRoomCanonicalAlias, "")
	if err != nil || ev == nil {
		if err != nil {
			d.log.Warn("read canonical alias", "room_id", roomID, "err", err)
		}
		return
	}
	var content map[string]any
	if err := json.Unmarshal(ev.Content(), &content); err != nil {
		return
	}
	changed := false
	if content["alias"] == alias {
		delete(content, "alias")
		changed = true
	}
	// Left alone when alt_aliases has an unexpected shape, as in Synapse.
	if alts, ok := content["alt_aliases"].([]any); ok && slices.Contains(alts, any(alias)) {
		alts = slices.DeleteFunc(alts, func(v any) bool { return v == alias })
		if len(alts) == 0 {
			delete(content, "alt_aliases")
		} else {
			content["alt_aliases"] = alts
		}
		changed = true
	}
	if !changed {
		return
	}
	raw, err := json.Marshal(content)
	if err != nil {
		return
	}
	stateKey := ""
	_, err = d.rooms.Input(ctx, roomserver.InputRequest{RoomID: roomID, NewEvent: &roomserver.NewEvent{
		Sender: userID, Type: spec.MRoomCanonicalAlias, StateKey: &stateKey, Content: raw,
	}})
	if err != nil {
		d.log.Info("alias deleted but the canonical alias event not updated", "room_id", roomID, "alias", alias, "err", err)
	}
}

type aliasList struct {
	Aliases []string `json:"aliases"`
}

// roomAliases is GET /rooms/{roomId}/aliases: for joined members, for
// anyone when the room is world_readable (directory.yaml), and for server
// admins (Synapse).
func (d *directory) roomAliases(r *http.Request, dev *userapi.Device) (any, error) {
	roomID, err := roomIDPath(r)
	if err != nil {
		return nil, err
	}
	if err := forbidGuest(dev); err != nil {
		return nil, err
	}
	ctx := r.Context()
	if !dev.IsAdmin {
		m, err := d.rooms.Membership(ctx, roomID, dev.UserID)
		if err != nil {
			return nil, err
		}
		if m != "join" {
			readable, err := d.worldReadable(ctx, roomID)
			if err != nil {
				return nil, err
			}
			if !readable {
				// The same answer for unknown rooms, which are not
				// world_readable either: no probing for room ids.
				return nil, mxhttp.Forbidden("You are not a member of the room.")
			}
		}
	}
	aliases, err := d.db.RoomAliases(ctx, roomID)
	if err != nil {
		return nil, err
	}
	return aliasList{Aliases: aliases}, nil
}

// worldReadable reports whether a room's current history visibility is
// world_readable (false for unknown rooms).
func (d *directory) worldReadable(ctx context.Context, roomID string) (bool, error) {
	ev, err := d.rooms.CurrentStateEvent(ctx, roomID, "m.room.history_visibility", "")
	if err != nil || ev == nil {
		return false, err
	}
	var c struct {
		HistoryVisibility string `json:"history_visibility"`
	}
	_ = json.Unmarshal(ev.Content(), &c)
	return c.HistoryVisibility == "world_readable", nil
}

type visibilityBody struct {
	Visibility string `json:"visibility"`
}

// visibility is GET /directory/list/room/{roomId}.
func (d *directory) visibility(r *http.Request) (any, error) {
	roomID, err := roomIDPath(r)
	if err != nil {
		return nil, err
	}
	ctx := r.Context()
	if err := d.roomExists(ctx, roomID); err != nil {
		return nil, err
	}
	public, err := d.db.RoomPublished(ctx, roomID)
	if err != nil {
		return nil, err
	}
	if public {
		return visibilityBody{Visibility: "public"}, nil
	}
	return visibilityBody{Visibility: "private"}, nil
}

// setVisibility is PUT /directory/list/room/{roomId}: server admins, and
// joined members with the power to send m.room.canonical_alias (Synapse's
// rule; the spec lets servers choose).
func (d *directory) setVisibility(r *http.Request, dev *userapi.Device) (any, error) {
	roomID, err := roomIDPath(r)
	if err != nil {
		return nil, err
	}
	if err := forbidGuest(dev); err != nil {
		return nil, err
	}
	var body struct {
		Visibility *string `json:"visibility"`
	}
	if err := mxhttp.ReadJSON(r, &body); err != nil {
		return nil, err
	}
	public := true // the spec's default
	if body.Visibility != nil {
		switch *body.Visibility {
		case "public":
		case "private":
			public = false
		default:
			return nil, mxhttp.InvalidParam("visibility must be public or private")
		}
	}
	ctx := r.Context()
	if err := d.roomExists(ctx, roomID); err != nil {
		return nil, err
	}
	if err := d.canManageDirectory(ctx, roomID, dev); err != nil {
		if errors.Is(err, errNotModerator) {
			return nil, mxhttp.Forbidden("You need the power to send m.room.canonical_alias in the room to change its directory entry")
		}
		return nil, err
	}
	if err := d.db.SetRoomPublished(ctx, roomID, public); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}
