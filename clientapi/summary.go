package clientapi

import (
	"context"
	"net/http"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/internal/roomsummary"
	"github.com/weft-chat/weft/userapi"
)

// Room previews: what someone who may not be in a room can see of it,
// for GET /room_summary (room_summary.yaml, spec v1.15) and the rooms of
// GET /hierarchy (space_hierarchy.yaml). Only rooms this server has are
// previewed: a remote room needs federation, which does not exist yet, so
// it is "not found".

// clientV1 is the prefix of the endpoints the spec added under v1.
const clientV1 = "/_matrix/client/v1"

// summaries reads room summaries through the roomserver; it holds no
// state, so each caller may make its own.
func (a *API) summaries() *roomsummary.Reader {
	return &roomsummary.Reader{DB: a.db, Rooms: a.rooms}
}

// loadRoomAccess reads a room's access settings; found is false for rooms
// this server does not have.
func (a *API) loadRoomAccess(ctx context.Context, roomID string) (roomsummary.Access, bool, error) {
	return a.summaries().Access(ctx, roomID)
}

// previewRoom reads what a RoomSummary shows of a room.
func (a *API) previewRoom(ctx context.Context, acc roomsummary.Access) (roomsummary.Preview, error) {
	return a.summaries().Preview(ctx, acc)
}

// mayPreview applies the spec's rule for which rooms a user is shown
// (space_hierarchy.yaml's rooms; room_summary.yaml): anyone may preview a
// room that is public, knockable or world_readable; otherwise its joined
// and invited members may, and for a restricted room the members of a room
// its join rules allow. userID is "" for an unauthenticated caller. The
// caller's membership ("" for none) comes back too.
func (a *API) mayPreview(ctx context.Context, acc roomsummary.Access, userID string) (membership string, ok bool, err error) {
	if userID != "" {
		if membership, err = a.rooms.Membership(ctx, acc.RoomID, userID); err != nil {
			return "", false, err
		}
	}
	if acc.Open() {
		return membership, true, nil
	}
	if userID == "" {
		return "", false, nil
	}
	if membership == spec.Join || membership == spec.Invite {
		return membership, true, nil
	}
	if acc.Restricted() {
		for _, allowed := range acc.Allow {
			m, err := a.rooms.Membership(ctx, allowed, userID)
			if err != nil {
				return "", false, err
			}
			if m == spec.Join {
				return membership, true, nil
			}
		}
	}
	return membership, false, nil
}

// roomSummaryResponse is a room summary with the caller's membership,
// which is absent for unauthenticated callers.
type roomSummaryResponse struct {
	roomsummary.Preview
	Membership string `json:"membership,omitempty"`
}

// getRoomSummary is GET /_matrix/client/v1/room_summary/{roomIdOrAlias}. The
// spec lets servers answer without an access token for rooms anyone may
// preview, as Synapse does; rooms the caller may not preview and unknown
// rooms are alike 404 M_NOT_FOUND. The via parameter names servers to ask
// over federation, which does not exist yet, so it is not used.
func (a *API) getRoomSummary(r *http.Request) (any, error) {
	ctx := r.Context()
	dev, err := a.optionalDevice(r)
	if err != nil {
		return nil, err
	}
	idOrAlias, err := pathVar(r, "roomIdOrAlias")
	if err != nil {
		return nil, err
	}
	roomID, _, err := a.resolveRoomIDOrAlias(ctx, idOrAlias)
	if err != nil {
		return nil, err
	}
	notFound := mxhttp.NotFound("Room not found or is not accessible")
	acc, found, err := a.loadRoomAccess(ctx, roomID)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, notFound
	}
	userID := ""
	if dev != nil {
		userID = dev.UserID
	}
	membership, ok, err := a.mayPreview(ctx, acc, userID)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, notFound
	}
	p, err := a.previewRoom(ctx, acc)
	if err != nil {
		return nil, err
	}
	resp := roomSummaryResponse{Preview: p}
	if dev != nil {
		// As Synapse: "leave" when the caller has no membership at all.
		resp.Membership = membership
		if resp.Membership == "" {
			resp.Membership = spec.Leave
		}
	}
	return resp, nil
}

// optionalDevice authenticates the caller of an endpoint that also
// answers without an access token: nil when the request carries none; a
// token that is given must be valid (401 otherwise).
func (a *API) optionalDevice(r *http.Request) (*userapi.Device, error) {
	token, ok := userapi.AccessTokenFrom(r)
	if !ok {
		return nil, nil
	}
	dev, err := a.users.Authenticate(r.Context(), token)
	if err != nil {
		return nil, err
	}
	a.users.Touch(r.Context(), dev, clientIP(r), r.UserAgent())
	return dev, nil
}
