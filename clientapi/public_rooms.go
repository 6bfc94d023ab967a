package clientapi

import (
	"context"
	"net/http"
	"strconv"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/internal/roomsummary"
	"github.com/weft-chat/weft/userapi"
)

// publicRoomsGET is GET /publicRooms. The spec gives it no security, so
// it answers without an access token; a token that is sent must be valid.
func (d *directory) publicRoomsGET(r *http.Request) (any, error) {
	if token, ok := userapi.AccessTokenFrom(r); ok {
		if _, err := d.users.Authenticate(r.Context(), token); err != nil {
			return nil, err
		}
	}
	if err := d.checkDirectoryServer(r); err != nil {
		return nil, err
	}
	q := roomsummary.DirectoryQuery{Since: r.URL.Query().Get("since")}
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return nil, mxhttp.InvalidParam("limit must be a non-negative integer")
		}
		q.Limit = n
	}
	return d.listPublicRooms(r.Context(), q)
}

// publicRoomsPOST is POST /publicRooms, with a filter. Guests may use it,
// as in Synapse.
func (d *directory) publicRoomsPOST(r *http.Request, _ *userapi.Device) (any, error) {
	if err := d.checkDirectoryServer(r); err != nil {
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
	return d.listPublicRooms(r.Context(), q)
}

// checkDirectoryServer answers the server query parameter: this server's
// directory, or 404 for another's until federation can fetch it.
func (d *directory) checkDirectoryServer(r *http.Request) error {
	server := r.URL.Query().Get("server")
	if server == "" || server == d.users.ServerName() {
		return nil
	}
	if _, _, ok := spec.ParseAndValidateServerName(spec.ServerName(server)); !ok {
		return mxhttp.InvalidParam("%q is not a valid server name", server)
	}
	return mxhttp.NotFound("Fetching the room directory of %s is not supported yet: this server only lists its own", server)
}

// listPublicRooms pages through this server's published rooms (see
// roomsummary.Directory.List).
func (d *directory) listPublicRooms(ctx context.Context, q roomsummary.DirectoryQuery) (any, error) {
	resp, err := d.list.List(ctx, q)
	if err != nil {
		return nil, err
	}
	return resp, nil
}
