// Package roomserver owns the room event graph: it is the only writer of
// events and room state. Inputs reach it over NATS (one consumer per shard
// of rooms, so one writer per room across all processes); each input is
// built, signed, checked against the auth rules and committed in one
// database transaction before the reply, then announced on room.output.
package roomserver

import (
	"context"
	"encoding/json"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
)

// InputRequest asks the roomserver to add events. Exactly one of NewEvent,
// CreateRoom, Remote, JoinRemote, Invite, LeaveRemote, KnockRemote and
// Backfill is set. LeaveRemote leaves a room this server is not in
// (rejects an invite to it, retracts a knock on it) and KnockRemote knocks
// on one, through the servers that are: their Content is the event's.
type InputRequest struct {
	// InputID makes the input idempotent: an input with an id already
	// handled returns the events it made then. Empty: no deduplication.
	InputID string `json:"input_id,omitempty"`
	// RoomID is the room of a NewEvent.
	RoomID      string        `json:"room_id,omitempty"`
	NewEvent    *NewEvent     `json:"new_event,omitempty"`
	CreateRoom  *CreateRoom   `json:"create_room,omitempty"`
	Remote      *RemoteEvent  `json:"remote,omitempty"`
	JoinRemote  *JoinRemote   `json:"join_remote,omitempty"`
	Invite      *RemoteInvite `json:"invite,omitempty"`
	LeaveRemote *JoinRemote   `json:"leave_remote,omitempty"`
	KnockRemote *JoinRemote   `json:"knock_remote,omitempty"`
	// Backfill stores history missing from the room's timeline here.
	Backfill *BackfillRequest `json:"backfill,omitempty"`
}

// RemoteInvite is another server's invite of a local user (spec: PUT
// /invite/v2), checked and signed by us already. In a room this server is
// in it is an ordinary remote event; otherwise it is kept out of band: the
// event and the stripped state sent with it, which is all the invitee
// sees until they join.
type RemoteInvite struct {
	Origin      string          `json:"origin"`
	RoomVersion string          `json:"room_version"`
	Event       json.RawMessage `json:"event"`
	// InviteRoomState is the JSON list of stripped state events.
	InviteRoomState json.RawMessage `json:"invite_room_state,omitempty"`
}

// Inviter asks another server to countersign an invite of one of its
// users (spec: PUT /invite/v2), with the stripped state the invitee is
// shown. The federation package implements it.
type Inviter interface {
	Invite(ctx context.Context, ver gomatrixserverlib.IRoomVersion, ev gomatrixserverlib.PDU, inviteRoomState []json.RawMessage) (gomatrixserverlib.PDU, error)
}

// BackfillRequest is what another server answered to GET /backfill from
// missing prev events of the room's gaps (see Roomserver.BackfillFrom):
// events missing from the room's timeline here. The federation layer has
// checked their signatures, and redacted those whose content hash did not
// match. The roomserver keeps those that fill the gaps (those of From
// that are still missing, and their ancestors among the answer), checks
// each against its auth events and the state before it (fetched from
// Origin with /state_ids where the answer does not reach it, then
// carried forward), and stores
// them as history: /messages shows them in their topological place; /sync
// never does, and the room's current state, forward extremities and
// room.output do not change. Events failing the checks are stored as
// rejected and left out. The response lists the events put in the
// timeline.
type BackfillRequest struct {
	// Origin is the server that answered, asked for what the events lack.
	Origin string `json:"origin"`
	// From are the missing prev events the server was asked for.
	From []string `json:"from"`
	// Events are PDUs in the room version's format, in any order.
	Events []json.RawMessage `json:"events"`
}

// RemoteEvent is an event another server sent (in a transaction, or to
// send_join, send_leave, send_knock). The federation layer has checked
// its signatures, and redacted it if its content hash did not match; the
// roomserver checks the auth rules, fetches what it lacks from Origin and
// stores the event: in the timeline, or soft-failed, or rejected (then
// the input fails with 403 M_FORBIDDEN).
type RemoteEvent struct {
	// Origin is the server asked for missing events and state.
	Origin string `json:"origin"`
	// Event is the PDU in the room version's format.
	Event json.RawMessage `json:"event"`
}

// JoinRemote joins a local user to a room this server is not in, through
// the servers that are (make_join and send_join, see Joiner).
type JoinRemote struct {
	UserID string `json:"user_id"`
	// Servers are tried in order.
	Servers []string `json:"servers"`
	// Content is the m.room.member content beyond the membership:
	// displayname, avatar_url, reason.
	Content json.RawMessage `json:"content,omitempty"`
}

func (j *JoinRemote) serverNames() []spec.ServerName {
	servers := make([]spec.ServerName, len(j.Servers))
	for i, s := range j.Servers {
		servers[i] = spec.ServerName(s)
	}
	return servers
}

// Fetcher gets events and state from other servers for the roomserver
// (get_missing_events, state_ids, event). The federation package
// implements it. Every event it returns has been checked like a
// RemoteEvent: signatures verified, redacted if its content hash failed.
type Fetcher interface {
	// MissingEvents asks server for the events between earliest and
	// latest (spec: POST /get_missing_events), oldest first.
	MissingEvents(ctx context.Context, server spec.ServerName, roomID string, ver gomatrixserverlib.IRoomVersion,
		earliest, latest []string, limit int, minDepth int64) ([]gomatrixserverlib.PDU, error)
	// StateIDs asks server for the state before eventID and its auth
	// chain, as event ids (spec: GET /state_ids).
	StateIDs(ctx context.Context, server spec.ServerName, roomID, eventID string) (state, authChain []string, err error)
	// Event fetches one event from server (spec: GET /event).
	Event(ctx context.Context, server spec.ServerName, ver gomatrixserverlib.IRoomVersion, eventID string) (gomatrixserverlib.PDU, error)
}

// Joiner performs the handshake of a join through other servers (spec:
// make_join then send_join, v2). The federation package implements it.
type Joiner interface {
	// Join tries servers in order and returns what the first that
	// accepted the join sent back, checked: signatures, the state and
	// auth chain against the auth rules (each event against its auth
	// events), and the join against the state; events that fail are left
	// out. The roomserver stores them without checking them again.
	Join(ctx context.Context, servers []spec.ServerName, roomID, userID string, content json.RawMessage) (*JoinResult, error)
	// Leave does the same with make_leave and send_leave, and returns
	// the leave event the first server that accepted it has.
	Leave(ctx context.Context, servers []spec.ServerName, roomID, userID string, content json.RawMessage) (gomatrixserverlib.PDU, error)
	// Knock does the same with make_knock and send_knock.
	Knock(ctx context.Context, servers []spec.ServerName, roomID, userID string, content json.RawMessage) (*KnockResult, error)
}

// KnockResult is a completed knock handshake.
type KnockResult struct {
	RoomVersion gomatrixserverlib.IRoomVersion
	// Event is the knock as sent to send_knock.
	Event gomatrixserverlib.PDU
	// RoomState is the knock_room_state the resident server answered:
	// events a client shows the knock with.
	RoomState json.RawMessage
}

// JoinResult is a completed join handshake.
type JoinResult struct {
	RoomVersion gomatrixserverlib.IRoomVersion
	// Server is the server that accepted the join.
	Server spec.ServerName
	// Event is the join event as sent to send_join (signed by us, and by
	// the resident server where the room version asks for it).
	Event gomatrixserverlib.PDU
	// State is the room state before Event; AuthChain the auth chain of
	// State and Event.
	State     []gomatrixserverlib.PDU
	AuthChain []gomatrixserverlib.PDU
}

// NewEvent is an event a local user sends: the roomserver fills in
// prev_events, auth_events and depth, signs it and checks the auth rules.
type NewEvent struct {
	Sender   string          `json:"sender"`
	Type     string          `json:"type"`
	StateKey *string         `json:"state_key,omitempty"`
	Content  json.RawMessage `json:"content"`
	Redacts  string          `json:"redacts,omitempty"`
	// The client transaction, echoed to the sending device only.
	DeviceID string `json:"device_id,omitempty"`
	TxnID    string `json:"txn_id,omitempty"`
}

// CreateRoom makes a new room from its initial events, in order, the
// m.room.create event first. The room id is chosen by the roomserver (for
// room version 12 it is derived from the create event's hash).
type CreateRoom struct {
	RoomVersion string     `json:"room_version"`
	Events      []NewEvent `json:"events"`
}

// InputResponse tells what an input made.
type InputResponse struct {
	RoomID   string   `json:"room_id"`
	EventIDs []string `json:"event_ids"`
}

// OutputEvent is published on room.output after an event commits.
type OutputEvent struct {
	RoomID    string  `json:"room_id"`
	EventID   string  `json:"event_id"`
	StreamPos int64   `json:"stream_pos"`
	Type      string  `json:"type"`
	StateKey  *string `json:"state_key,omitempty"`
	Sender    string  `json:"sender"`
	// Membership is the new membership for m.room.member events.
	Membership string `json:"membership,omitempty"`
}

// inputError carries a Matrix error across the bus.
type inputError struct {
	Status  int    `json:"status"`
	Code    string `json:"errcode"`
	Message string `json:"error"`
}

func (e *inputError) matrix() *mxhttp.Error {
	return &mxhttp.Error{Status: e.Status, Code: e.Code, Message: e.Message}
}
