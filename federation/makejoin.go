package federation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/joinrules"
	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/internal/serverkey"
	"github.com/weft-chat/weft/roomserver"
	"github.com/weft-chat/weft/sql"
)

// Memberships serves the handshakes by which users of other servers join,
// leave and knock on the rooms this server is in (spec: "Joining Rooms", "Leaving
// Rooms", "Knocking upon a room"): make_join and send_join (v1 and v2)
// here, make_leave and send_leave (v1 and v2) in leave.go, make_knock and
// send_knock in knock.go.
//
// The make_ endpoints answer a template built on the room's current state
// and forward extremities, checked against the auth rules (403 M_FORBIDDEN
// when the user may not make that change now). The send_ endpoints check
// the event the other server built and signed (400 M_INVALID_PARAM, as
// the spec advises, when it is not the membership change of one of that
// server's users, or fails its hashes or signatures) and give it to the
// roomserver, whose auth rules have the last word (403 M_FORBIDDEN).
//
// Every endpoint answers 404 M_NOT_FOUND for a room this server does not
// know or has no joined member in (it cannot build on a room it left),
// and 403 M_FORBIDDEN when the room's server ACL denies the requesting
// server.
type Memberships struct {
	DB         *sql.DB
	ServerName spec.ServerName
	// Key signs the restricted joins this server authorises.
	Key serverkey.Key
	// Keys verifies the events' signatures (a *KeyRing).
	Keys gomatrixserverlib.JSONVerifier
	// Rooms takes the events into their rooms.
	Rooms roomInputs
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// maxPrevEvents bounds the prev_events of a template, as the roomserver
// bounds its own events' (Synapse's limit).
const maxPrevEvents = 10

// Routes registers the endpoints on r, which must authenticate requests
// (see Authenticator.Router).
func (m *Memberships) Routes(r *mux.Router) {
	const v1, v2 = "/_matrix/federation/v1", "/_matrix/federation/v2"
	r.Handle(v1+"/make_join/{roomId}/{userId}", mxhttp.JSON(m.makeJoin)).Methods(http.MethodGet)
	r.Handle(v2+"/send_join/{roomId}/{eventId}", mxhttp.JSON(m.sendJoin)).Methods(http.MethodPut)
	r.Handle(v1+"/send_join/{roomId}/{eventId}", mxhttp.JSON(v1Answer(m.sendJoin))).Methods(http.MethodPut)
	r.Handle(v1+"/make_leave/{roomId}/{userId}", mxhttp.JSON(m.makeLeave)).Methods(http.MethodGet)
	r.Handle(v2+"/send_leave/{roomId}/{eventId}", mxhttp.JSON(m.sendLeave)).Methods(http.MethodPut)
	r.Handle(v1+"/send_leave/{roomId}/{eventId}", mxhttp.JSON(v1Answer(m.sendLeave))).Methods(http.MethodPut)
	r.Handle(v1+"/make_knock/{roomId}/{userId}", mxhttp.JSON(m.makeKnock)).Methods(http.MethodGet)
	r.Handle(v1+"/send_knock/{roomId}/{eventId}", mxhttp.JSON(m.sendKnock)).Methods(http.MethodPut)
}

// v1Answer wraps a v2 answer the way the v1 endpoints send it: [200, body]
// (a mistake of the first spec kept for compatibility).
func v1Answer(f func(*http.Request) (any, error)) func(*http.Request) (any, error) {
	return func(r *http.Request) (any, error) {
		v, err := f(r)
		if err != nil {
			return nil, err
		}
		return []any{http.StatusOK, v}, nil
	}
}

func (m *Memberships) now() time.Time {
	if m.Now != nil {
		return m.Now()
	}
	return time.Now()
}

func (m *Memberships) events() *Events { return &Events{DB: m.DB, ServerName: m.ServerName} }

// residentRoom checks the path's room: known here (404 M_NOT_FOUND), its
// server ACL admits the requesting server (403 M_FORBIDDEN), and this
// server still has a joined member (404 M_NOT_FOUND, as Synapse: it can
// no longer vouch for the room's state).
func (m *Memberships) residentRoom(r *http.Request) (sql.RoomInfo, gomatrixserverlib.IRoomVersion, error) {
	ctx := r.Context()
	roomID, err := pathVar(r, "roomId")
	if err != nil {
		return sql.RoomInfo{}, nil, err
	}
	room, err := m.DB.Room(ctx, roomID)
	if errors.Is(err, sql.ErrNotFound) {
		return room, nil, mxhttp.NotFound("Unknown room %s", roomID)
	}
	if err != nil {
		return room, nil, mxhttp.Internal(err)
	}
	origin := Origin(ctx)
	allowed, err := m.events().aclAllows(ctx, roomID, origin)
	if err != nil {
		return room, nil, mxhttp.Internal(err)
	}
	if !allowed {
		return room, nil, mxhttp.Forbidden("Server %s is denied by the room's server ACL", origin)
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(room.Version))
	if err != nil {
		return room, nil, mxhttp.Internal(err)
	}
	return room, verImpl, nil
}

// requireResident is the last check of residentRoom, apart so that
// make_join can answer an incompatible room version first, as Synapse.
func (m *Memberships) requireResident(ctx context.Context, room sql.RoomInfo) error {
	in, err := m.DB.ServerHasMembership(ctx, room.NID, string(m.ServerName), spec.Join)
	if err != nil {
		return mxhttp.Internal(err)
	}
	if !in {
		return mxhttp.NotFound("This server is no longer in room %s", room.RoomID)
	}
	return nil
}

// pathUser reads the {userId} of a make_ endpoint: a user of the
// requesting server (403 M_FORBIDDEN otherwise: a server speaks only for
// its own users).
func pathUser(r *http.Request) (string, error) {
	userID, err := pathVar(r, "userId")
	if err != nil {
		return "", err
	}
	u, err := spec.NewUserID(userID, true)
	if err != nil {
		return "", mxhttp.InvalidParam("%q is not a user id", userID)
	}
	if origin := Origin(r.Context()); u.Domain() != origin {
		return "", mxhttp.Forbidden("User %s does not belong to the requesting server %s", userID, origin)
	}
	return userID, nil
}

// makeJoin is GET /v1/make_join/{roomId}/{userId}?ver=…: a join template.
// The room version must be among ver (spec: "1" when none is given),
// else 400 M_INCOMPATIBLE_ROOM_VERSION with the room's version. In a
// restricted room the template names this server's authoriser (see
// joinrules.Authorise for the errors).
func (m *Memberships) makeJoin(r *http.Request) (any, error) {
	ctx := r.Context()
	userID, err := pathUser(r)
	if err != nil {
		return nil, err
	}
	room, verImpl, err := m.residentRoom(r)
	if err != nil {
		return nil, err
	}
	supported := r.URL.Query()["ver"]
	if len(supported) == 0 {
		supported = []string{"1"}
	}
	if err := compatible(room, supported); err != nil {
		return nil, err
	}
	if err := m.requireResident(ctx, room); err != nil {
		return nil, err
	}
	content := map[string]any{"membership": spec.Join}
	via, err := m.restrictedAuthoriser(ctx, room, verImpl, userID)
	if err != nil {
		return nil, err
	}
	if via != "" {
		content[joinrules.FieldAuthorisedVia] = via
	}
	return m.template(ctx, room, verImpl, userID, content)
}

// compatible answers 400 M_INCOMPATIBLE_ROOM_VERSION, with the room's
// version, unless it is among those the requesting server supports.
func compatible(room sql.RoomInfo, supported []string) error {
	if !slices.Contains(supported, room.Version) {
		return mxhttp.Errorf(http.StatusBadRequest, "M_INCOMPATIBLE_ROOM_VERSION",
			"Your server does not support room version %s, which the room uses", room.Version).With("room_version", room.Version)
	}
	return nil
}

// restrictedAuthoriser returns this server's member who authorises
// userID's join when the room is restricted and the user is neither
// invited nor joined already; "" when no authoriser is needed.
func (m *Memberships) restrictedAuthoriser(ctx context.Context, room sql.RoomInfo, verImpl gomatrixserverlib.IRoomVersion, userID string) (string, error) {
	jrEvent, err := m.stateEvent(ctx, room.RoomID, sql.StateKey{Type: spec.MRoomJoinRules})
	if err != nil {
		return "", mxhttp.Internal(err)
	}
	jr := joinrules.FromEvent(jrEvent)
	if !jr.Restricted(verImpl) {
		return "", nil
	}
	current, err := m.DB.Membership(ctx, room.RoomID, userID)
	if err != nil {
		return "", mxhttp.Internal(err)
	}
	if current == spec.Join || current == spec.Invite {
		return "", nil
	}
	return joinrules.Authorise(ctx, m.DB, string(m.ServerName), room.RoomID, userID, jr)
}

// stateEvent reads one piece of the room's current state; nil when it is
// not set.
func (m *Memberships) stateEvent(ctx context.Context, roomID string, k sql.StateKey) (gomatrixserverlib.PDU, error) {
	s, err := m.DB.CurrentStateEvent(ctx, roomID, k)
	if errors.Is(err, sql.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return roomserver.ParseStored(s)
}

// template builds userID's member event with content on the room's
// current state and extremities, checks it against the auth rules (403
// M_FORBIDDEN) and answers it as the make_ endpoints do: {room_version,
// event}, the event unsigned and without hashes, which the other server
// fills in (and, in room versions 1 and 2, without our event id: it
// chooses its own).
func (m *Memberships) template(ctx context.Context, room sql.RoomInfo, verImpl gomatrixserverlib.IRoomVersion, userID string, content map[string]any) (any, error) {
	raw, err := json.Marshal(content)
	if err != nil {
		return nil, mxhttp.Internal(err)
	}
	prev := room.Extremities
	if len(prev) > maxPrevEvents {
		prev = prev[len(prev)-maxPrevEvents:]
	}
	stateKey := userID
	proto := gomatrixserverlib.ProtoEvent{
		SenderID: userID, RoomID: room.RoomID, Type: spec.MRoomMember, StateKey: &stateKey,
		Content: raw, PrevEvents: slices.Clone(prev), Depth: room.MaxDepth + 1, Version: verImpl,
	}
	needed, err := gomatrixserverlib.StateNeededForProtoEvent(&proto)
	if err != nil {
		return nil, mxhttp.Internal(err)
	}
	var authEvents []gomatrixserverlib.PDU
	for _, t := range needed.Tuples() {
		ev, err := m.stateEvent(ctx, room.RoomID, sql.StateKey{Type: t.EventType, StateKey: t.StateKey})
		if err != nil {
			return nil, mxhttp.Internal(err)
		}
		if ev != nil {
			authEvents = append(authEvents, ev)
		}
	}
	provider, err := gomatrixserverlib.NewAuthEvents(authEvents)
	if err != nil {
		return nil, mxhttp.Internal(err)
	}
	builder := verImpl.NewEventBuilderFromProtoEvent(&proto)
	if err := builder.AddAuthEvents(provider); err != nil {
		return nil, mxhttp.Internal(err)
	}
	ev, err := builder.Build(m.now(), m.ServerName, m.Key.ID, m.Key.Private)
	if err != nil {
		return nil, mxhttp.Internal(fmt.Errorf("build template: %w", err))
	}
	if err := gomatrixserverlib.Allowed(ev, provider, userIDForSender); err != nil {
		return nil, mxhttp.Forbidden("%s", notAllowedMessage(err))
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(ev.JSON(), &fields); err != nil {
		return nil, mxhttp.Internal(err)
	}
	for _, k := range []string{"signatures", "hashes", "event_id", "unsigned"} {
		delete(fields, k)
	}
	return map[string]any{"room_version": verImpl.Version(), "event": fields}, nil
}

// notAllowedMessage is the auth rules' reason, without the library's
// prefix when it has one.
func notAllowedMessage(err error) string {
	var na *gomatrixserverlib.NotAllowed
	if errors.As(err, &na) {
		return na.Message
	}
	return err.Error()
}

// receiveMembership reads the event of a send_ endpoint for the path's
// room (see residentRoom) and checks what the spec asks of it (all 400
// M_INVALID_PARAM): it parses in the room's version, its content hash
// holds, its room and event ids are the path's, it is an m.room.member
// event with the expected membership whose sender is its state key and a
// user of the requesting server. Signatures are checked by the caller,
// once any of ours is added.
func (m *Memberships) receiveMembership(r *http.Request, membership string) (sql.RoomInfo, gomatrixserverlib.IRoomVersion, gomatrixserverlib.PDU, error) {
	room, verImpl, err := m.residentRoom(r)
	if err != nil {
		return room, nil, nil, err
	}
	if err := m.requireResident(r.Context(), room); err != nil {
		return room, nil, nil, err
	}
	ev, err := receiveEvent(r, room, verImpl, membership)
	return room, verImpl, ev, err
}

func receiveEvent(r *http.Request, room sql.RoomInfo, verImpl gomatrixserverlib.IRoomVersion, membership string) (gomatrixserverlib.PDU, error) {
	eventID, err := pathVar(r, "eventId")
	if err != nil {
		return nil, err
	}
	raw, err := readBody(r)
	if err != nil {
		return nil, err
	}
	var obj map[string]json.RawMessage
	if err := mxhttp.DecodeJSON(raw, &obj); err != nil {
		return nil, err
	}
	ev, err := parseInRoom(verImpl, room.RoomID, raw)
	if err != nil {
		return nil, mxhttp.InvalidParam("The event is not a valid event of room %s: %v", room.RoomID, err)
	}
	if ev.Redacted() {
		return nil, mxhttp.InvalidParam("The event's content does not match its content hash")
	}
	if ev.EventID() != eventID {
		return nil, mxhttp.InvalidParam("The event's id is %s, not %s", ev.EventID(), eventID)
	}
	if ev.Type() != spec.MRoomMember {
		return nil, mxhttp.InvalidParam("The event is of type %s, not m.room.member", ev.Type())
	}
	sender := string(ev.SenderID())
	if ev.StateKey() == nil || *ev.StateKey() != sender {
		return nil, mxhttp.InvalidParam("The event's state_key must be its sender")
	}
	if got, _ := ev.Membership(); got != membership {
		return nil, mxhttp.InvalidParam("The event's membership is %q, not %q", got, membership)
	}
	u, err := spec.NewUserID(sender, true)
	if err != nil {
		return nil, mxhttp.InvalidParam("The event's sender %q is not a user id", sender)
	}
	if origin := Origin(r.Context()); u.Domain() != origin {
		return nil, mxhttp.InvalidParam("The event's sender %s is not a user of the requesting server %s", sender, origin)
	}
	return ev, nil
}

// verifySignatures checks the signatures an event needs (spec:
// "Validating hashes and signatures on received events"): its sender's
// server, in room versions 1 and 2 its event id's, and a restricted
// join's authorising server. 400 M_INVALID_PARAM when one is missing or
// wrong.
func (m *Memberships) verifySignatures(ctx context.Context, ev gomatrixserverlib.PDU) error {
	if err := gomatrixserverlib.VerifyEventSignatures(ctx, ev, m.Keys, userIDForSender); err != nil {
		return mxhttp.InvalidParam("The event's signatures do not verify: %v", err)
	}
	return nil
}

// submit gives a checked event of origin to the roomserver.
func (m *Memberships) submit(ctx context.Context, room sql.RoomInfo, ev gomatrixserverlib.PDU) error {
	_, err := m.Rooms.Input(ctx, roomserver.InputRequest{RoomID: room.RoomID,
		Remote: &roomserver.RemoteEvent{Origin: string(Origin(ctx)), Event: ev.JSON()}})
	return err
}

// sendJoinResponse is the answer of send_join (v2; v1 wraps it).
type sendJoinResponse struct {
	Origin         spec.ServerName   `json:"origin"`
	State          []json.RawMessage `json:"state"`
	AuthChain      []json.RawMessage `json:"auth_chain"`
	Event          json.RawMessage   `json:"event"`
	MembersOmitted bool              `json:"members_omitted"`
	ServersInRoom  []string          `json:"servers_in_room"`
}

// sendJoin is PUT /v2/send_join/{roomId}/{eventId}: the join is checked
// (see receiveMembership), countersigned when it names one of our users
// as the authoriser of a restricted join (after the join rules'
// conditions are checked again: the spec wants the resident server to
// ensure them), and stored; the answer is the room state before it, the
// auth chain of that state and of the join, the join as we signed it and
// the servers in the room. omit_members is not supported: the state is
// always whole (members_omitted false), which the spec allows.
func (m *Memberships) sendJoin(r *http.Request) (any, error) {
	ctx := r.Context()
	room, verImpl, ev, err := m.receiveMembership(r, spec.Join)
	if err != nil {
		return nil, err
	}
	if ev, err = m.countersign(ctx, room, verImpl, ev); err != nil {
		return nil, err
	}
	if err := m.verifySignatures(ctx, ev); err != nil {
		return nil, err
	}
	if err := m.submit(ctx, room, ev); err != nil {
		return nil, err
	}
	return m.joinAnswer(ctx, room, ev.EventID())
}

// countersign adds our signature to a join that names one of our users
// in join_authorised_via_users_server, once the restricted join's
// conditions hold (the auth rules then check that user's power). A join
// naming another server's user is refused: only that server can sign it.
func (m *Memberships) countersign(ctx context.Context, room sql.RoomInfo, verImpl gomatrixserverlib.IRoomVersion, ev gomatrixserverlib.PDU) (gomatrixserverlib.PDU, error) {
	via := contentString(ev.JSON(), joinrules.FieldAuthorisedVia)
	if via == "" {
		return ev, nil
	}
	u, err := spec.NewUserID(via, true)
	if err != nil {
		return nil, mxhttp.InvalidParam("%s %q is not a user id", joinrules.FieldAuthorisedVia, via)
	}
	if u.Domain() != m.ServerName {
		return nil, mxhttp.InvalidParam("%s names %s, who is not a user of this server", joinrules.FieldAuthorisedVia, via)
	}
	if _, err := m.restrictedAuthoriser(ctx, room, verImpl, string(ev.SenderID())); err != nil {
		return nil, err
	}
	return ev.Sign(string(m.ServerName), m.Key.ID, m.Key.Private), nil
}

// joinAnswer reads what send_join answers about a stored join.
func (m *Memberships) joinAnswer(ctx context.Context, room sql.RoomInfo, eventID string) (any, error) {
	joined, err := m.DB.EventByID(ctx, eventID)
	if err != nil {
		return nil, mxhttp.Internal(fmt.Errorf("read back join %s: %w", eventID, err))
	}
	e := m.events()
	state, err := e.snapshotEvents(ctx, joined.StateBeforeNID)
	if err != nil {
		return nil, mxhttp.Internal(err)
	}
	chain, err := e.authChain(ctx, room.NID, append(slices.Clip(state), joined))
	if err != nil {
		return nil, mxhttp.Internal(err)
	}
	resp := sendJoinResponse{Origin: m.ServerName, ServersInRoom: joinedServers(state)}
	if resp.State, err = federationPDUs(state); err != nil {
		return nil, mxhttp.Internal(err)
	}
	if resp.AuthChain, err = federationPDUs(chain); err != nil {
		return nil, mxhttp.Internal(err)
	}
	if resp.Event, err = federationJSON(joined.JSON); err != nil {
		return nil, mxhttp.Internal(err)
	}
	return resp, nil
}

// joinedServers lists the servers of the joined members in a state, in
// order.
func joinedServers(state []sql.Event) []string {
	seen := make(map[string]bool)
	servers := []string{}
	for _, ev := range state {
		if ev.Type != spec.MRoomMember || ev.StateKey == nil || contentString(ev.JSON, "membership") != spec.Join {
			continue
		}
		if _, server, ok := strings.Cut(*ev.StateKey, ":"); ok && !seen[server] {
			seen[server] = true
			servers = append(servers, server)
		}
	}
	slices.Sort(servers)
	return servers
}

// parseInRoom parses an untrusted PDU (see parsePDU) that must be an
// event of roomID.
func parseInRoom(verImpl gomatrixserverlib.IRoomVersion, roomID string, raw []byte) (gomatrixserverlib.PDU, error) {
	ev, err := parsePDU(verImpl, raw)
	if err != nil {
		return nil, err
	}
	if ev.RoomID().String() != roomID {
		return nil, fmt.Errorf("the event is not in room %s", roomID)
	}
	return ev, nil
}
