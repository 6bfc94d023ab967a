// Package roomserver owns the room event graph: it is the only writer of
// events and room state. Inputs reach it over NATS (one consumer per shard
// of rooms, so one writer per room across all processes); each input is
// built, signed, checked against the auth rules and committed in one
// database transaction before the reply, then announced on room.output.
package roomserver

import (
	"encoding/json"

	"github.com/weft-chat/weft/internal/mxhttp"
)

// InputRequest asks the roomserver to add events. Exactly one of NewEvent
// and CreateRoom is set.
type InputRequest struct {
	// InputID makes the input idempotent: an input with an id already
	// handled returns the events it made then. Empty: no deduplication.
	InputID string `json:"input_id,omitempty"`
	// RoomID is the room of a NewEvent.
	RoomID     string      `json:"room_id,omitempty"`
	NewEvent   *NewEvent   `json:"new_event,omitempty"`
	CreateRoom *CreateRoom `json:"create_room,omitempty"`
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
