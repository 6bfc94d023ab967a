package clientapi

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"net/http"
	"reflect"
	"slices"
	"strings"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/joinrules"
	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/roomserver"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/syncapi/view"
	"github.com/weft-chat/weft/userapi"
)

// Room membership (spec: "Room membership"). Every change is an
// m.room.member event submitted to the roomserver, whose auth rules have
// the last word; the checks here come first only to give the spec's (and
// Synapse's) errors and to fill in what the auth rules expect the server to
// have decided: the profile, and who authorises a restricted join.
//
// A room this server is not in is joined through other servers (the
// roomserver's JoinRemote, spec: "Joining Rooms"); leaving, knocking and
// inviting work in rooms this server is in: others answer 404, and
// inviting a remote user answers 502.

func (a *API) membershipRoutes(r *mux.Router) {
	handle(r, "/join/{roomIdOrAlias}", a.authedJSON(a.joinByIDOrAlias), http.MethodPost)
	handle(r, "/rooms/{roomId}/join", a.authedJSON(a.joinByID), http.MethodPost)
	handle(r, "/knock/{roomIdOrAlias}", a.authedJSON(a.knock), http.MethodPost)
	handle(r, "/rooms/{roomId}/invite", a.authedJSON(a.invite), http.MethodPost)
	handle(r, "/rooms/{roomId}/leave", a.authedJSON(a.leave), http.MethodPost)
	handle(r, "/rooms/{roomId}/forget", a.authedJSON(a.forget), http.MethodPost)
	handle(r, "/rooms/{roomId}/kick", a.authedJSON(a.kick), http.MethodPost)
	handle(r, "/rooms/{roomId}/ban", a.authedJSON(a.ban), http.MethodPost)
	handle(r, "/rooms/{roomId}/unban", a.authedJSON(a.unban), http.MethodPost)
	handle(r, "/joined_rooms", a.authedJSON(a.joinedRooms), http.MethodGet)
	handle(r, "/rooms/{roomId}/members", a.authedJSON(a.members), http.MethodGet)
	handle(r, "/rooms/{roomId}/joined_members", a.authedJSON(a.joinedMembers), http.MethodGet)
}

// joinedRoomResponse answers join and knock.
type joinedRoomResponse struct {
	RoomID string `json:"room_id"`
}

// selfBody is the body of join, knock and leave.
type selfBody struct {
	Reason           string          `json:"reason"`
	ThirdPartySigned json.RawMessage `json:"third_party_signed"`
}

// targetBody is the body of invite, kick, ban and unban.
type targetBody struct {
	UserID *string `json:"user_id"`
	Reason string  `json:"reason"`
	// The third-party invite form of /invite (spec: "Third-party invites").
	Medium  string `json:"medium"`
	Address string `json:"address"`
}

// readSelfBody reads a join, knock or leave body. Synapse accepts these
// without a body, and clients rely on it.
func readSelfBody(r *http.Request) (selfBody, error) {
	var b selfBody
	if err := readOptionalJSON(r, &b); err != nil {
		return b, err
	}
	if len(b.ThirdPartySigned) > 0 && string(b.ThirdPartySigned) != "null" {
		return b, mxhttp.InvalidParam("Third-party invites are not supported by this server yet")
	}
	return b, nil
}

// readTargetBody reads an invite, kick, ban or unban body and checks its
// user_id.
func readTargetBody(r *http.Request) (targetBody, string, error) {
	var b targetBody
	if err := mxhttp.ReadJSON(r, &b); err != nil {
		return b, "", err
	}
	if b.UserID == nil {
		if b.Medium != "" || b.Address != "" {
			return b, "", mxhttp.InvalidParam("Third-party invites are not supported by this server yet")
		}
		return b, "", mxhttp.MissingParam("Missing user_id")
	}
	if _, err := spec.NewUserID(*b.UserID, true); err != nil {
		return b, "", mxhttp.InvalidParam("Invalid user_id %q", *b.UserID)
	}
	return b, *b.UserID, nil
}

// isRoomID accepts both forms: "!opaque:server" and, from room version
// 12, the domainless "!hash".
func isRoomID(id string) bool {
	return len(id) > 1 && id[0] == '!'
}

// resolveRoomIDOrAlias turns a room id or an alias into a room id and,
// for an alias, the servers its directory names to join through (the
// alias's own server first).
func (a *API) resolveRoomIDOrAlias(ctx context.Context, idOrAlias string) (string, []string, error) {
	switch {
	case isRoomID(idOrAlias):
		return idOrAlias, nil, nil
	case strings.HasPrefix(idOrAlias, "#"):
		_, domain, err := parseAlias(idOrAlias)
		if err != nil {
			return "", nil, err
		}
		roomID, servers, err := a.lookupAlias(ctx, idOrAlias, domain)
		if err != nil {
			return "", nil, err
		}
		return roomID, append([]string{domain}, servers...), nil
	}
	return "", nil, mxhttp.InvalidParam("%q is neither a room id nor a room alias", idOrAlias)
}

// localRoomVersion is the room's version: 404 for rooms this server does not
// have.
func (a *API) localRoomVersion(ctx context.Context, roomID string) (gomatrixserverlib.IRoomVersion, error) {
	v, err := a.rooms.RoomVersion(ctx, roomID)
	var me *mxhttp.Error
	if errors.As(err, &me) && me.Status == http.StatusNotFound {
		return nil, mxhttp.NotFound("Room %s is unknown to this server", roomID)
	}
	if err != nil {
		return nil, err
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(v))
	if err != nil {
		return nil, mxhttp.Errorf(http.StatusBadRequest, "M_UNSUPPORTED_ROOM_VERSION", "Unsupported room version %s", v)
	}
	return verImpl, nil
}

// memberChange is one m.room.member event a local user asks for.
type memberChange struct {
	roomID, sender, target string
	membership             string
	reason                 string
	// withProfile carries the target's displayname and avatar_url, as
	// Synapse does for joins, knocks and invites.
	withProfile bool
	extra       map[string]any
}

// sendMembership submits the change. Like Synapse, a change that would
// repeat the target's current member event (same sender, membership and
// content) makes no new event.
func (a *API) sendMembership(ctx context.Context, c memberChange) error {
	content := map[string]any{"membership": c.membership}
	if c.reason != "" {
		content["reason"] = c.reason
	}
	if c.withProfile {
		if err := a.addProfile(ctx, c.target, content); err != nil {
			return err
		}
	}
	for k, v := range c.extra {
		content[k] = v
	}
	raw, err := json.Marshal(content)
	if err != nil {
		return err
	}
	current, err := a.rooms.CurrentStateEvent(ctx, c.roomID, spec.MRoomMember, c.target)
	if err != nil {
		return err
	}
	if current != nil && string(current.SenderID()) == c.sender && sameJSON(current.Content(), raw) {
		return nil
	}
	stateKey := c.target
	_, err = a.rooms.Input(ctx, roomserver.InputRequest{RoomID: c.roomID, NewEvent: &roomserver.NewEvent{
		Sender: c.sender, Type: spec.MRoomMember, StateKey: &stateKey, Content: raw,
	}})
	return err
}

// addProfile copies a local user's displayname and avatar_url into a
// member event's content. Remote users' profiles need federation.
func (a *API) addProfile(ctx context.Context, userID string, content map[string]any) error {
	localpart, err := a.users.LocalpartOf(userID)
	if err != nil {
		return nil
	}
	fields, err := a.db.ProfileFields(ctx, localpart)
	if err != nil {
		return err
	}
	for _, f := range []string{"displayname", "avatar_url"} {
		var s string
		if json.Unmarshal(fields[f], &s) == nil && s != "" {
			content[f] = s
		}
	}
	return nil
}

// sameJSON reports whether two JSON values are equal as values.
func sameJSON(x, y []byte) bool {
	var a, b any
	if json.Unmarshal(x, &a) != nil || json.Unmarshal(y, &b) != nil {
		return false
	}
	return reflect.DeepEqual(a, b)
}

func (a *API) joinByIDOrAlias(r *http.Request, dev *userapi.Device) (any, error) {
	idOrAlias, err := pathVar(r, "roomIdOrAlias")
	if err != nil {
		return nil, err
	}
	roomID, aliasServers, err := a.resolveRoomIDOrAlias(r.Context(), idOrAlias)
	if err != nil {
		return nil, err
	}
	return a.join(r, dev, roomID, aliasServers)
}

func (a *API) joinByID(r *http.Request, dev *userapi.Device) (any, error) {
	roomID, err := roomIDPath(r)
	if err != nil {
		return nil, err
	}
	return a.join(r, dev, roomID, nil)
}

// join joins the caller to a room. Joining a room one is already in
// changes nothing. A room this server is not in is joined through other
// servers (see joinRemote); aliasServers are those an alias resolved to.
func (a *API) join(r *http.Request, dev *userapi.Device, roomID string, aliasServers []string) (any, error) {
	ctx := r.Context()
	body, err := readSelfBody(r)
	if err != nil {
		return nil, err
	}
	resident, err := a.serverInRoom(ctx, roomID)
	if err != nil {
		return nil, err
	}
	if !resident {
		servers := viaServers(r, aliasServers)
		inviter, err := a.inviterServer(ctx, roomID, dev.UserID)
		if err != nil {
			return nil, err
		}
		if inviter != "" {
			servers = append(servers, inviter)
		}
		return a.joinRemote(ctx, dev, roomID, servers, body.Reason)
	}
	verImpl, err := a.localRoomVersion(ctx, roomID)
	if err != nil {
		return nil, err
	}
	current, err := a.rooms.Membership(ctx, roomID, dev.UserID)
	if err != nil {
		return nil, err
	}
	switch current {
	case spec.Join:
		return joinedRoomResponse{roomID}, nil
	case spec.Ban:
		return nil, mxhttp.Forbidden("You are banned from this room")
	}
	if dev.IsGuest {
		// Guests are a local notion the auth rules do not know.
		ok, err := a.guestCanJoin(ctx, roomID)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, mxhttp.Forbidden("Guest access is not allowed in this room")
		}
	}
	c := memberChange{roomID: roomID, sender: dev.UserID, target: dev.UserID, membership: spec.Join, reason: body.Reason, withProfile: true}
	if current != spec.Invite {
		jr, err := a.currentJoinRules(ctx, roomID)
		if err != nil {
			return nil, err
		}
		if jr.Restricted(verImpl) {
			via, err := joinrules.Authorise(ctx, a.db, a.users.ServerName(), roomID, dev.UserID, jr)
			if err != nil {
				return nil, err
			}
			c.extra = map[string]any{joinrules.FieldAuthorisedVia: via}
		}
	}
	if err := a.sendMembership(ctx, c); err != nil {
		return nil, err
	}
	return joinedRoomResponse{roomID}, nil
}

// viaServers are the servers a join or knock request names to go
// through (via, and server_name, its name before v1.12, which Synapse
// still reads), then those an alias resolved to.
func viaServers(r *http.Request, aliasServers []string) []string {
	q := r.URL.Query()
	return append(append(q["via"], q["server_name"]...), aliasServers...)
}

// serverInRoom reports whether one of this server's users is joined to
// the room: otherwise the room's state here, if any, cannot be built on.
func (a *API) serverInRoom(ctx context.Context, roomID string) (bool, error) {
	info, err := a.db.Room(ctx, roomID)
	if errors.Is(err, sql.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return a.db.ServerHasMembership(ctx, info.NID, a.users.ServerName(), spec.Join)
}

// joinRemote joins the caller to a room this server is not in, through
// the servers given (via and server_name, those of the alias, the
// inviter's) and the room id's own (see handshake). The roomserver runs
// the handshake (see roomserver.Joiner for its errors). Guests join only
// rooms this server is in, whose guest access it can check; they may
// still reject an invite to any room.
func (a *API) joinRemote(ctx context.Context, dev *userapi.Device, roomID string, servers []string, reason string) (any, error) {
	if dev.IsGuest {
		return nil, mxhttp.Forbidden("Guests cannot join rooms this server is not in")
	}
	in, err := a.handshake(ctx, dev, roomID, servers, "join", reason, true)
	if err != nil {
		return nil, err
	}
	if _, err = a.rooms.Input(ctx, roomserver.InputRequest{RoomID: roomID, InputID: "join:" + rand.Text(), JoinRemote: in}); err != nil {
		return nil, err
	}
	return joinedRoomResponse{roomID}, nil
}

// knockRemote knocks for the caller on a room this server is not in,
// through the servers given and the room id's, as joinRemote joins.
func (a *API) knockRemote(ctx context.Context, dev *userapi.Device, roomID string, servers []string, reason string) (any, error) {
	in, err := a.handshake(ctx, dev, roomID, servers, "knock on", reason, true)
	if err != nil {
		return nil, err
	}
	if _, err = a.rooms.Input(ctx, roomserver.InputRequest{RoomID: roomID, KnockRemote: in}); err != nil {
		return nil, err
	}
	return joinedRoomResponse{roomID}, nil
}

// handshake is the input for a membership change through other servers:
// the servers to try (see joinServers; 404 M_NOT_FOUND when none is
// left, as Synapse answers) and the event's content, with the caller's
// profile if withProfile.
func (a *API) handshake(ctx context.Context, dev *userapi.Device, roomID string, servers []string, what, reason string, withProfile bool) (*roomserver.JoinRemote, error) {
	if _, err := spec.NewRoomID(roomID); err != nil {
		return nil, mxhttp.InvalidParam("Bad room id %q", roomID)
	}
	via := joinServers(servers, roomID, a.users.ServerName())
	if len(via) == 0 {
		return nil, mxhttp.NotFound("No known servers to %s room %s through", what, roomID)
	}
	content := map[string]any{}
	if reason != "" {
		content["reason"] = reason
	}
	if withProfile {
		if err := a.addProfile(ctx, dev.UserID, content); err != nil {
			return nil, err
		}
	}
	raw, err := json.Marshal(content)
	if err != nil {
		return nil, err
	}
	return &roomserver.JoinRemote{UserID: dev.UserID, Servers: via, Content: raw}, nil
}

// leaveRemote rejects an invite to, or retracts a knock on, a room this
// server is not in, through the servers that sent the invite or the
// room's state (see outOfBandServers) and the room id's.
func (a *API) leaveRemote(ctx context.Context, dev *userapi.Device, roomID, reason string) (any, error) {
	servers, err := a.outOfBandServers(ctx, roomID, dev.UserID)
	if err != nil {
		return nil, err
	}
	in, err := a.handshake(ctx, dev, roomID, servers, "leave", reason, false)
	if err != nil {
		return nil, err
	}
	if _, err = a.rooms.Input(ctx, roomserver.InputRequest{RoomID: roomID, LeaveRemote: in}); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// outOfBandServers are the servers that know a room this server is not
// in, as far as userID's invite to it or knock on it tells: the
// inviter's, then those of the senders of the room state sent with it.
func (a *API) outOfBandServers(ctx context.Context, roomID, userID string) ([]string, error) {
	ev, err := a.db.MembershipEvent(ctx, roomID, userID)
	if errors.Is(err, sql.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var servers []string
	if inviter := inviterOf(ev); inviter != "" {
		servers = append(servers, inviter)
	}
	raw, err := a.db.InviteRoomState(ctx, ev.NID)
	if err != nil || len(raw) == 0 {
		return servers, err
	}
	var state []struct {
		Sender string `json:"sender"`
	}
	_ = json.Unmarshal(raw, &state) // sent by another server: what it says, if it parses
	for _, e := range state {
		if _, server, ok := strings.Cut(e.Sender, ":"); ok {
			servers = append(servers, server)
		}
	}
	return servers, nil
}

// inviterServer is the server of the user who invited userID to a room
// this server is not in ("" without an invite): it is in the room, or
// was, so it is worth asking (spec: "Joining Rooms"), as Synapse does.
func (a *API) inviterServer(ctx context.Context, roomID, userID string) (string, error) {
	ev, err := a.db.MembershipEvent(ctx, roomID, userID)
	if errors.Is(err, sql.ErrNotFound) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return inviterOf(ev), nil
}

// inviterOf is the server of the sender of a membership event that is an
// invite ("" for any other membership).
func inviterOf(ev sql.Event) string {
	var invite struct {
		Content json.RawMessage `json:"content"`
	}
	if json.Unmarshal(ev.JSON, &invite) != nil || membershipOf(invite.Content) != spec.Invite {
		return ""
	}
	_, server, _ := strings.Cut(ev.Sender, ":")
	return server
}

// joinServers is the list of servers to join roomID through: servers,
// then the room id's server (room versions before 12), in that order,
// without repeats, invalid server names or ours.
func joinServers(servers []string, roomID, ours string) []string {
	if _, domain, ok := strings.Cut(roomID, ":"); ok {
		servers = append(slices.Clip(servers), domain)
	}
	var via []string
	for _, s := range servers {
		if _, _, valid := spec.ParseAndValidateServerName(spec.ServerName(s)); valid && s != ours && !slices.Contains(via, s) {
			via = append(via, s)
		}
	}
	return via
}

// currentJoinRules reads a room's join rules.
func (a *API) currentJoinRules(ctx context.Context, roomID string) (joinrules.Content, error) {
	ev, err := a.rooms.CurrentStateEvent(ctx, roomID, spec.MRoomJoinRules, "")
	if err != nil {
		return joinrules.Content{}, err
	}
	return joinrules.FromEvent(ev), nil
}

// guestCanJoin reports whether m.room.guest_access lets guests join.
func (a *API) guestCanJoin(ctx context.Context, roomID string) (bool, error) {
	ev, err := a.rooms.CurrentStateEvent(ctx, roomID, spec.MRoomGuestAccess, "")
	if err != nil || ev == nil {
		return false, err
	}
	var c struct {
		GuestAccess string `json:"guest_access"`
	}
	_ = json.Unmarshal(ev.Content(), &c)
	return c.GuestAccess == "can_join", nil
}

// knock asks to join a room whose join rule is knock or knock_restricted
// (room version 7 and later).
func (a *API) knock(r *http.Request, dev *userapi.Device) (any, error) {
	if err := forbidGuest(dev); err != nil {
		return nil, err
	}
	ctx := r.Context()
	idOrAlias, err := pathVar(r, "roomIdOrAlias")
	if err != nil {
		return nil, err
	}
	roomID, aliasServers, err := a.resolveRoomIDOrAlias(ctx, idOrAlias)
	if err != nil {
		return nil, err
	}
	body, err := readSelfBody(r)
	if err != nil {
		return nil, err
	}
	resident, err := a.serverInRoom(ctx, roomID)
	if err != nil {
		return nil, err
	}
	if !resident {
		return a.knockRemote(ctx, dev, roomID, viaServers(r, aliasServers), body.Reason)
	}
	verImpl, err := a.localRoomVersion(ctx, roomID)
	if err != nil {
		return nil, err
	}
	if verImpl.CheckKnockingAllowed(string(verImpl.Version()), dev.UserID, dev.UserID, spec.Knock, spec.Leave) != nil {
		return nil, mxhttp.Forbidden("Room version %s does not support knocking", verImpl.Version())
	}
	current, err := a.rooms.Membership(ctx, roomID, dev.UserID)
	if err != nil {
		return nil, err
	}
	switch current {
	case spec.Join:
		return nil, mxhttp.Forbidden("You are already in this room")
	case spec.Invite:
		return nil, mxhttp.Forbidden("You are already invited to this room")
	case spec.Ban:
		return nil, mxhttp.Forbidden("You are banned from this room")
	}
	jr, err := a.currentJoinRules(ctx, roomID)
	if err != nil {
		return nil, err
	}
	if jr.JoinRule != spec.Knock && !(jr.JoinRule == spec.KnockRestricted && joinrules.KnockRestrictedKnown(verImpl)) {
		return nil, mxhttp.Forbidden("You are not allowed to knock on this room")
	}
	err = a.sendMembership(ctx, memberChange{roomID: roomID, sender: dev.UserID, target: dev.UserID,
		membership: spec.Knock, reason: body.Reason, withProfile: true})
	if err != nil {
		return nil, err
	}
	return joinedRoomResponse{roomID}, nil
}

// invite invites a local user. The invitee's invite permission config
// (spec: "Invite permission") may block it.
func (a *API) invite(r *http.Request, dev *userapi.Device) (any, error) {
	if err := forbidGuest(dev); err != nil {
		return nil, err
	}
	ctx := r.Context()
	roomID, err := roomIDPath(r)
	if err != nil {
		return nil, err
	}
	body, target, err := readTargetBody(r)
	if err != nil {
		return nil, err
	}
	if _, err := a.localRoomVersion(ctx, roomID); err != nil {
		return nil, err
	}
	// Checked first so that outsiders learn nothing of the invitee.
	if err := a.requireJoined(ctx, roomID, dev.UserID); err != nil {
		return nil, err
	}
	// A user of another server is asked by their server, which may
	// refuse (the roomserver has it countersign the invite).
	localpart, err := a.users.LocalpartOf(target)
	switch {
	case userapi.IsRemoteUser(err):
	case err != nil:
		return nil, mxhttp.InvalidParam("Invalid user_id %q", target)
	default:
		if err := a.checkInvitable(ctx, localpart, target); err != nil {
			return nil, err
		}
	}
	current, err := a.rooms.Membership(ctx, roomID, target)
	if err != nil {
		return nil, err
	}
	switch current {
	case spec.Ban:
		return nil, mxhttp.Forbidden("%s is banned from the room", target)
	case spec.Join:
		return nil, mxhttp.Forbidden("%s is already in the room", target)
	case spec.Invite:
		return struct{}{}, nil // spec: 200 when already invited
	}
	err = a.sendMembership(ctx, memberChange{roomID: roomID, sender: dev.UserID, target: target,
		membership: spec.Invite, reason: body.Reason, withProfile: true})
	if err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// checkInvitable refuses an invite to a local user who blocks invites
// (403 M_INVITE_BLOCKED, spec v1.18 Invite permission).
func (a *API) checkInvitable(ctx context.Context, localpart, userID string) error {
	blocked, err := view.InvitesBlocked(ctx, a.db, localpart)
	if err != nil {
		return err
	}
	if blocked {
		return mxhttp.Errorf(http.StatusForbidden, "M_INVITE_BLOCKED", "%s does not accept invites", userID)
	}
	return nil
}

// requireJoined answers 403 unless the user is joined to the room.
func (a *API) requireJoined(ctx context.Context, roomID, userID string) error {
	m, err := a.rooms.Membership(ctx, roomID, userID)
	if err != nil {
		return err
	}
	if m != spec.Join {
		return mxhttp.Forbidden("You are not in this room")
	}
	return nil
}

// leave leaves a room, rejects an invite or retracts a knock. Leaving a
// room one has already left changes nothing.
func (a *API) leave(r *http.Request, dev *userapi.Device) (any, error) {
	ctx := r.Context()
	roomID, err := roomIDPath(r)
	if err != nil {
		return nil, err
	}
	body, err := readSelfBody(r)
	if err != nil {
		return nil, err
	}
	if _, err := a.localRoomVersion(ctx, roomID); err != nil {
		return nil, err
	}
	current, err := a.rooms.Membership(ctx, roomID, dev.UserID)
	if err != nil {
		return nil, err
	}
	switch current {
	case "":
		return nil, mxhttp.Forbidden("You are not in this room")
	case spec.Leave:
		return struct{}{}, nil
	case spec.Ban:
		return nil, mxhttp.Forbidden("You are banned from this room")
	case spec.Invite, spec.Knock:
		// An invite to a room this server is not in is rejected, and a
		// knock on one retracted, through the servers that are (spec:
		// "Leaving Rooms (Rejecting Invites)").
		in, err := a.serverInRoom(ctx, roomID)
		if err != nil {
			return nil, err
		}
		if !in {
			return a.leaveRemote(ctx, dev, roomID, body.Reason)
		}
	}
	err = a.sendMembership(ctx, memberChange{roomID: roomID, sender: dev.UserID, target: dev.UserID,
		membership: spec.Leave, reason: body.Reason})
	if err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// forget hides a room the caller has left. Like Synapse, forgetting a
// room one never had a membership of succeeds and does nothing.
func (a *API) forget(r *http.Request, dev *userapi.Device) (any, error) {
	if err := forbidGuest(dev); err != nil {
		return nil, err
	}
	ctx := r.Context()
	roomID, err := roomIDPath(r)
	if err != nil {
		return nil, err
	}
	forgotten, err := a.db.ForgetLeftRoom(ctx, roomID, dev.UserID)
	if err != nil || forgotten {
		return struct{}{}, err
	}
	current, err := a.rooms.Membership(ctx, roomID, dev.UserID)
	if err != nil {
		return nil, err
	}
	if current != "" && current != spec.Leave && current != spec.Ban {
		return nil, mxhttp.Errorf(http.StatusBadRequest, "M_UNKNOWN", "User %s is still in room %s (%s); leave it first", dev.UserID, roomID, current)
	}
	return struct{}{}, nil
}

// kick sets another member's membership to leave.
func (a *API) kick(r *http.Request, dev *userapi.Device) (any, error) {
	return a.moderate(r, dev, "kick")
}

// ban bans a user, whether or not they are in the room.
func (a *API) ban(r *http.Request, dev *userapi.Device) (any, error) {
	return a.moderate(r, dev, "ban")
}

// unban lifts a ban: the user's membership becomes leave.
func (a *API) unban(r *http.Request, dev *userapi.Device) (any, error) {
	return a.moderate(r, dev, "unban")
}

// moderate is kick, ban and unban. The power checks are the auth rules';
// the state checks before them are Synapse's.
func (a *API) moderate(r *http.Request, dev *userapi.Device, action string) (any, error) {
	if err := forbidGuest(dev); err != nil {
		return nil, err
	}
	ctx := r.Context()
	roomID, err := roomIDPath(r)
	if err != nil {
		return nil, err
	}
	body, target, err := readTargetBody(r)
	if err != nil {
		return nil, err
	}
	if _, err := a.localRoomVersion(ctx, roomID); err != nil {
		return nil, err
	}
	if err := a.requireJoined(ctx, roomID, dev.UserID); err != nil {
		return nil, err
	}
	current, err := a.rooms.Membership(ctx, roomID, target)
	if err != nil {
		return nil, err
	}
	membership := spec.Leave
	switch action {
	case "kick":
		if current != spec.Join && current != spec.Invite && current != spec.Knock {
			return nil, mxhttp.Forbidden("%s is not in the room", target)
		}
	case "ban":
		membership = spec.Ban
	case "unban":
		if current != spec.Ban {
			return nil, mxhttp.Errorf(http.StatusForbidden, "M_BAD_STATE", "Cannot unban %s, who is not banned", target)
		}
	}
	err = a.sendMembership(ctx, memberChange{roomID: roomID, sender: dev.UserID, target: target,
		membership: membership, reason: body.Reason})
	if err != nil {
		return nil, err
	}
	return struct{}{}, nil
}
