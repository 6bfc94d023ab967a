package federation

import (
	"context"
	"errors"
	"net/http"
	"strconv"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/internal/roomsummary"
	"github.com/weft-chat/weft/sql"
)

// RoomDirectory serves what other servers may learn of this server's
// rooms without being in them: the published room directory (spec:
// "Published Room Directory") and space hierarchies ("Spaces"). Rooms are
// shown as the client API shows them (package roomsummary).
type RoomDirectory struct {
	DB         *sql.DB
	ServerName spec.ServerName
	// Summaries reads room summaries; List pages the directory with it.
	Summaries *roomsummary.Reader
	List      *roomsummary.Directory
	// AllowPublicRooms is config federation.allow_public_rooms: without
	// it /publicRooms is 403 M_FORBIDDEN, as in Synapse.
	AllowPublicRooms bool
}

// hierarchyMaxChildren bounds the children described in one answer, as
// Synapse's MAX_ROOMS_PER_SPACE.
const hierarchyMaxChildren = 50

// Routes registers the endpoints on r, which must authenticate requests
// (see Authenticator.Router).
func (d *RoomDirectory) Routes(r *mux.Router) {
	r.Handle("/_matrix/federation/v1/publicRooms", mxhttp.JSON(d.publicRoomsGET)).Methods(http.MethodGet)
	r.Handle("/_matrix/federation/v1/publicRooms", mxhttp.JSON(d.publicRoomsPOST)).Methods(http.MethodPost)
	r.Handle("/_matrix/federation/v1/hierarchy/{roomId}", mxhttp.JSON(d.hierarchy)).Methods(http.MethodGet)
}

func (d *RoomDirectory) checkAllowed(r *http.Request) error {
	if !d.AllowPublicRooms {
		return mxhttp.Forbidden("This server does not share its room directory with %s", Origin(r.Context()))
	}
	return nil
}

// publicRoomsGET is GET /publicRooms?limit&since&include_all_networks&
// third_party_instance_id. As in Synapse, include_all_networks wins over
// a third_party_instance_id here (the POST form refuses both); rooms that
// do not federate (m.federate false) are never listed.
func (d *RoomDirectory) publicRoomsGET(r *http.Request) (any, error) {
	if err := d.checkAllowed(r); err != nil {
		return nil, err
	}
	params := r.URL.Query()
	q := roomsummary.DirectoryQuery{Since: params.Get("since"), Federated: true}
	if s := params.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return nil, mxhttp.InvalidParam("limit must be a non-negative integer")
		}
		q.Limit = n
	}
	var includeAll bool
	switch params.Get("include_all_networks") {
	case "", "false":
	case "true":
		includeAll = true
	default:
		return nil, mxhttp.InvalidParam("include_all_networks must be true or false")
	}
	q.NoNetworks = !includeAll && params.Get("third_party_instance_id") != ""
	return d.List.List(r.Context(), q)
}

// publicRoomsPOST is POST /publicRooms with a filter, as the client API's.
func (d *RoomDirectory) publicRoomsPOST(r *http.Request) (any, error) {
	if err := d.checkAllowed(r); err != nil {
		return nil, err
	}
	var body roomsummary.DirectoryRequest
	if err := mxhttp.ReadJSON(r, &body); err != nil {
		return nil, err
	}
	q, err := body.Query()
	if err != nil {
		return nil, err
	}
	q.Federated = true
	return d.List.List(r.Context(), q)
}

// hierarchyParent is the room of a federation /hierarchy answer
// (SpaceHierarchyParentRoom); a child that is a space is shown the same
// way, with its own children, as the spec's example shows.
type hierarchyParent struct {
	roomsummary.Preview
	ChildrenState []roomsummary.SpaceChild `json:"children_state"`
}

type hierarchyResponse struct {
	Room                 hierarchyParent   `json:"room"`
	Children             []hierarchyParent `json:"children"`
	InaccessibleChildren []string          `json:"inaccessible_children"`
}

// hierarchy is GET /hierarchy/{roomId}?suggested_only=…: the room and its
// direct children, without pagination, as Synapse's
// get_federation_hierarchy: 404 M_NOT_FOUND for a room this server does
// not have or the requesting server may not preview; children this
// server is not in are left out; children the requesting server may not
// preview are listed in inaccessible_children.
func (d *RoomDirectory) hierarchy(r *http.Request) (any, error) {
	ctx := r.Context()
	roomID, err := pathVar(r, "roomId")
	if err != nil {
		return nil, err
	}
	var suggestedOnly bool
	switch r.URL.Query().Get("suggested_only") {
	case "", "false":
	case "true":
		suggestedOnly = true
	default:
		return nil, mxhttp.InvalidParam("suggested_only must be true or false")
	}
	origin := Origin(ctx)
	root, ok, err := d.accessFor(ctx, roomID, origin)
	if err != nil {
		return nil, mxhttp.Internal(err)
	}
	if !ok {
		return nil, mxhttp.NotFound("Unknown room: %s", roomID)
	}
	parent, err := d.describe(ctx, root, suggestedOnly)
	if err != nil {
		return nil, mxhttp.Internal(err)
	}
	resp := hierarchyResponse{Room: parent, Children: []hierarchyParent{}, InaccessibleChildren: []string{}}
	for i, c := range parent.ChildrenState {
		if i == hierarchyMaxChildren {
			break
		}
		ours, err := d.serverJoined(ctx, c.StateKey, d.ServerName, spec.Join)
		if err != nil {
			return nil, mxhttp.Internal(err)
		}
		if !ours {
			continue // nothing to tell of a room this server is not in
		}
		acc, ok, err := d.accessFor(ctx, c.StateKey, origin)
		if err != nil {
			return nil, mxhttp.Internal(err)
		}
		if !ok {
			resp.InaccessibleChildren = append(resp.InaccessibleChildren, c.StateKey)
			continue
		}
		child, err := d.describe(ctx, acc, suggestedOnly)
		if err != nil {
			return nil, mxhttp.Internal(err)
		}
		resp.Children = append(resp.Children, child)
	}
	return resp, nil
}

// describe is a room's summary with its space children (none when it is
// not a space).
func (d *RoomDirectory) describe(ctx context.Context, acc roomsummary.Access, suggestedOnly bool) (hierarchyParent, error) {
	p, err := d.Summaries.Preview(ctx, acc)
	if err != nil {
		return hierarchyParent{}, err
	}
	children := []roomsummary.SpaceChild{}
	if acc.RoomType == "m.space" {
		if children, err = d.Summaries.SpaceChildren(ctx, acc.RoomID, suggestedOnly); err != nil {
			return hierarchyParent{}, err
		}
	}
	return hierarchyParent{Preview: p, ChildrenState: children}, nil
}

// accessFor reads a room's access settings and whether server may
// preview it (ok false also for a room this server does not have): as
// Synapse's _is_local_room_accessible for a server, anyone may preview a
// public, knockable or world_readable room; otherwise the server needs a
// user joined to or invited into the room, or, for a restricted room,
// joined to one of the rooms its join rules allow.
func (d *RoomDirectory) accessFor(ctx context.Context, roomID string, server spec.ServerName) (roomsummary.Access, bool, error) {
	acc, found, err := d.Summaries.Access(ctx, roomID)
	if err != nil || !found {
		return acc, false, err
	}
	if acc.Open() {
		return acc, true, nil
	}
	in, err := d.serverJoined(ctx, roomID, server, spec.Join, spec.Invite)
	if err != nil || in {
		return acc, in, err
	}
	if acc.Restricted() {
		for _, allowed := range acc.Allow {
			in, err := d.serverJoined(ctx, allowed, server, spec.Join)
			if err != nil || in {
				return acc, in, err
			}
		}
	}
	return acc, false, nil
}

// serverJoined reports whether a user of server has one of the
// memberships in roomID now; false for a room this server does not have.
func (d *RoomDirectory) serverJoined(ctx context.Context, roomID string, server spec.ServerName, memberships ...string) (bool, error) {
	info, err := d.DB.Room(ctx, roomID)
	if errors.Is(err, sql.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return d.DB.ServerHasMembership(ctx, info.NID, string(server), memberships...)
}
