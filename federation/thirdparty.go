package federation

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/gorilla/mux"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
)

// ThirdPartyInvites answers PUT
// /_matrix/federation/v1/exchange_third_party_invite/{roomId} (spec:
// "Third-party invites"). Exchanging an invite means issuing an
// m.room.member invite on behalf of the inviter and delivering it to the
// invitee's server over /invite, which this server cannot do yet. So a
// well-formed request for a room this server has is answered 404
// M_UNRECOGNIZED, the spec's answer for an unsupported endpoint ("Unsupported
// endpoints"), which tells the requesting server to try another server
// of the room (Synapse treats it so); a malformed one gets the 400 it
// would get anyway, and an unknown room 404 M_NOT_FOUND.
type ThirdPartyInvites struct {
	DB *sql.DB
}

// Routes registers the endpoint on r, which must authenticate requests
// (see Authenticator.Router).
func (t *ThirdPartyInvites) Routes(r *mux.Router) {
	r.Handle("/_matrix/federation/v1/exchange_third_party_invite/{roomId}", mxhttp.JSON(t.exchange)).Methods(http.MethodPut)
}

func (t *ThirdPartyInvites) exchange(r *http.Request) (any, error) {
	roomID, err := pathVar(r, "roomId")
	if err != nil {
		return nil, err
	}
	if !strings.HasPrefix(roomID, "!") {
		return nil, mxhttp.InvalidParam("%q is not a room id", roomID)
	}
	var body struct {
		Type     string `json:"type"`
		RoomID   string `json:"room_id"`
		Sender   string `json:"sender"`
		StateKey string `json:"state_key"`
		Content  struct {
			Membership       string          `json:"membership"`
			ThirdPartyInvite json.RawMessage `json:"third_party_invite"`
		} `json:"content"`
	}
	if err := mxhttp.ReadJSON(r, &body); err != nil {
		return nil, err
	}
	switch {
	case body.Type != "m.room.member":
		return nil, mxhttp.BadJSON("type must be m.room.member")
	case body.RoomID != roomID:
		return nil, mxhttp.BadJSON("room_id does not match the room of the path")
	case !strings.HasPrefix(body.Sender, "@") || !strings.HasPrefix(body.StateKey, "@"):
		return nil, mxhttp.BadJSON("sender and state_key must be user ids")
	case body.Content.Membership != "invite":
		return nil, mxhttp.BadJSON("content.membership must be invite")
	case len(body.Content.ThirdPartyInvite) == 0 || string(body.Content.ThirdPartyInvite) == "null":
		return nil, mxhttp.BadJSON("content.third_party_invite is required")
	}
	if _, err := t.DB.Room(r.Context(), roomID); errors.Is(err, sql.ErrNotFound) {
		return nil, mxhttp.NotFound("Unknown room %s", roomID)
	} else if err != nil {
		return nil, mxhttp.Internal(err)
	}
	return nil, mxhttp.Errorf(http.StatusNotFound, "M_UNRECOGNIZED", "This server cannot exchange third-party invites yet")
}
