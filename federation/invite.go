package federation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrix"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/internal/serverkey"
	"github.com/weft-chat/weft/roomserver"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/syncapi/view"
)

// Invites over federation (spec: "Inviting to a room", PUT /invite/v2):
// InviteReceiver countersigns other servers' invites of our users;
// Inviter asks other servers to countersign ours.

// roomInputs is how the federation endpoints hand events to the
// roomserver.
type roomInputs interface {
	Input(ctx context.Context, req roomserver.InputRequest) (roomserver.InputResponse, error)
}

// InviteReceiver serves PUT /_matrix/federation/v2/invite/{roomId}/{eventId}.
type InviteReceiver struct {
	DB         *sql.DB
	Rooms      roomInputs
	Keys       gomatrixserverlib.JSONVerifier
	ServerName spec.ServerName
	Key        serverkey.Key
}

// Routes registers the endpoint on r, which must authenticate requests.
func (i *InviteReceiver) Routes(r *mux.Router) {
	r.Handle("/_matrix/federation/v2/invite/{roomId}/{eventId}", mxhttp.JSON(i.invite)).Methods(http.MethodPut)
}

type inviteRequest struct {
	RoomVersion     string            `json:"room_version"`
	Event           json.RawMessage   `json:"event"`
	InviteRoomState []json.RawMessage `json:"invite_room_state"`
}

func (i *InviteReceiver) invite(r *http.Request) (any, error) {
	ctx := r.Context()
	roomID, err := pathVar(r, "roomId")
	if err != nil {
		return nil, err
	}
	eventID, err := pathVar(r, "eventId")
	if err != nil {
		return nil, err
	}
	var body inviteRequest
	if err := mxhttp.ReadJSON(r, &body); err != nil {
		return nil, err
	}
	ver, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(body.RoomVersion))
	if err != nil {
		return nil, mxhttp.Errorf(http.StatusBadRequest, "M_INCOMPATIBLE_ROOM_VERSION", "Room version %q is not supported here", body.RoomVersion).
			With("room_version", body.RoomVersion)
	}
	ev, err := parsePDU(ver, body.Event)
	if err != nil {
		return nil, mxhttp.BadJSON("Invalid event: %v", err)
	}
	if ev.EventID() != eventID || ev.RoomID().String() != roomID {
		return nil, mxhttp.BadJSON("The event does not match the path")
	}
	if m, err := ev.Membership(); ev.Type() != spec.MRoomMember || err != nil || m != spec.Invite || ev.StateKey() == nil {
		return nil, mxhttp.BadJSON("Not an invite")
	}
	invitee, err := spec.NewUserID(*ev.StateKey(), true)
	if err != nil || invitee.Domain() != i.ServerName {
		return nil, mxhttp.BadJSON("The invitee is not a user of this server")
	}
	sender, err := spec.NewUserID(string(ev.SenderID()), true)
	if err != nil || sender.Domain() != Origin(ctx) {
		return nil, mxhttp.Forbidden("The inviter is not a user of the requesting server")
	}
	exists, err := i.DB.AccountExists(ctx, invitee.Local())
	if err != nil {
		return nil, err
	}
	if !exists {
		return nil, mxhttp.NotFound("User %s does not exist", invitee.String())
	}
	blocked, err := view.InvitesBlocked(ctx, i.DB, invitee.Local())
	if err != nil {
		return nil, err
	}
	if blocked {
		return nil, mxhttp.Errorf(http.StatusForbidden, "M_INVITE_BLOCKED", "%s does not accept invites", invitee.String())
	}
	// The rules want the invitee's server's signature too: ours.
	signed := ev.Sign(string(i.ServerName), i.Key.ID, i.Key.Private)
	if err := gomatrixserverlib.VerifyEventSignatures(ctx, signed, i.Keys, userIDForSender); err != nil {
		return nil, mxhttp.Forbidden("The invite's signature does not verify: %v", err)
	}
	state, err := json.Marshal(body.InviteRoomState)
	if err != nil {
		return nil, err
	}
	_, err = i.Rooms.Input(ctx, roomserver.InputRequest{RoomID: roomID, Invite: &roomserver.RemoteInvite{
		Origin: string(Origin(ctx)), RoomVersion: body.RoomVersion, Event: signed.JSON(), InviteRoomState: state}})
	if err != nil {
		return nil, err
	}
	return map[string]json.RawMessage{"event": signed.JSON()}, nil
}

// userIDForSender maps sender ids to user ids; they are the same in every
// room version Weft supports. An invalid one is an error: given no user,
// gomatrixserverlib's VerifyEventSignatures asks for no sender signature
// at all.
func userIDForSender(_ spec.RoomID, senderID spec.SenderID) (*spec.UserID, error) {
	return spec.NewUserID(string(senderID), true)
}

// Inviter implements roomserver.Inviter over federation.
type Inviter struct {
	Client *Client
	Key    serverkey.Key
	Keys   gomatrixserverlib.JSONVerifier
}

// Invite sends PUT /invite/v2 to the invitee's server and returns the
// invite with that server's signature, checked.
func (in *Inviter) Invite(ctx context.Context, ver gomatrixserverlib.IRoomVersion, ev gomatrixserverlib.PDU, stripped []json.RawMessage) (gomatrixserverlib.PDU, error) {
	invitee, err := spec.NewUserID(*ev.StateKey(), true)
	if err != nil {
		return nil, err
	}
	dest := invitee.Domain()
	fr := fclient.NewFederationRequest(http.MethodPut, in.Client.Origin(), dest,
		"/_matrix/federation/v2/invite/"+url.PathEscape(ev.RoomID().String())+"/"+url.PathEscape(ev.EventID()))
	if err := fr.SetContent(inviteRequest{RoomVersion: string(ver.Version()), Event: ev.JSON(), InviteRoomState: stripped}); err != nil {
		return nil, err
	}
	if err := fr.Sign(in.Client.Origin(), in.Key.ID, in.Key.Private); err != nil {
		return nil, err
	}
	req, err := fr.HTTPRequest()
	if err != nil {
		return nil, err
	}
	var out struct {
		Event json.RawMessage `json:"event"`
	}
	if err := in.Client.DoRequestAndParseResponse(ctx, req, &out); err != nil {
		var herr gomatrix.HTTPError
		if errors.As(err, &herr) && herr.Code/100 == 4 {
			// The invitee's server refused: pass its answer on.
			var m struct {
				ErrCode string `json:"errcode"`
				Error   string `json:"error"`
			}
			if json.Unmarshal(herr.Contents, &m) == nil && m.ErrCode != "" {
				return nil, mxhttp.Errorf(http.StatusForbidden, m.ErrCode, "%s: %s", dest, m.Error)
			}
		}
		return nil, fmt.Errorf("invite through %s: %w", dest, err)
	}
	signed, err := ver.NewEventFromUntrustedJSON(out.Event)
	if err != nil {
		return nil, fmt.Errorf("%s answered an invalid event: %w", dest, err)
	}
	if signed.EventID() != ev.EventID() {
		return nil, fmt.Errorf("%s answered another event", dest)
	}
	if err := gomatrixserverlib.VerifyEventSignatures(ctx, signed, in.Keys, userIDForSender); err != nil {
		return nil, fmt.Errorf("%s's signature on the invite: %w", dest, err)
	}
	return signed, nil
}
