package clientapi

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/roomserver"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/userapi"
)

// ClientEvent is a room event in the format clients see (spec: Room Event
// Format, ClientEvent). Endpoints that imply the room, such as /sync, clear
// RoomID (ClientEventWithoutRoomID).
type ClientEvent struct {
	Content        json.RawMessage `json:"content"`
	EventID        string          `json:"event_id"`
	OriginServerTS int64           `json:"origin_server_ts"`
	RoomID         string          `json:"room_id,omitempty"`
	Sender         string          `json:"sender"`
	StateKey       *string         `json:"state_key,omitempty"`
	Type           string          `json:"type"`
	// Redacts is the redacted event of an m.room.redaction, at the top
	// level in every room version, as Synapse serves it (v11 moved it into
	// content, where it stays too).
	Redacts  string   `json:"redacts,omitempty"`
	Unsigned Unsigned `json:"unsigned"`
}

// Unsigned is the unsigned data the server adds to a client event.
type Unsigned struct {
	// Age is how long ago, in milliseconds, the event was sent.
	Age int64 `json:"age"`
	// TransactionID is set only for the device that sent the event.
	TransactionID string `json:"transaction_id,omitempty"`
	// RedactedBecause is the redaction of a redacted event.
	RedactedBecause *ClientEvent `json:"redacted_because,omitempty"`
	// PrevContent and Membership are left to the callers that know them
	// (the state before the event, the reader's membership at it).
	PrevContent json.RawMessage `json:"prev_content,omitempty"`
	Membership  string          `json:"membership,omitempty"`
}

// FormatEvent turns an event into the client format as of now, with no
// lookups: unsigned carries the age only. It reads the fields the parsed
// event already holds and copies the content as it is, so it parses no
// JSON except the content of v11-style redactions sent without a top-level
// redacts.
func FormatEvent(pdu gomatrixserverlib.PDU, now time.Time) ClientEvent {
	return FormatRoomEvent(pdu, pdu.RoomID().String(), now)
}

// FormatRoomEvent is FormatEvent for a caller that knows the event's room:
// parsing and validating the room id again is most of FormatEvent's cost.
func FormatRoomEvent(pdu gomatrixserverlib.PDU, roomID string, now time.Time) ClientEvent {
	content := json.RawMessage(pdu.Content())
	if len(content) == 0 {
		content = json.RawMessage("{}")
	}
	ts := int64(pdu.OriginServerTS())
	ev := ClientEvent{
		Content:        content,
		EventID:        pdu.EventID(),
		OriginServerTS: ts,
		RoomID:         roomID,
		Sender:         string(pdu.SenderID()),
		StateKey:       pdu.StateKey(),
		Type:           pdu.Type(),
		Unsigned:       Unsigned{Age: now.UnixMilli() - ts},
	}
	if ev.Type == spec.MRoomRedaction {
		ev.Redacts = pdu.Redacts()
		if ev.Redacts == "" {
			var c struct {
				Redacts string `json:"redacts"`
			}
			_ = json.Unmarshal(content, &c)
			ev.Redacts = c.Redacts
		}
	}
	return ev
}

// EventStore is what ClientEvents looks up; *sql.DB provides it.
type EventStore interface {
	TransactionIDs(ctx context.Context, userID, deviceID string, eventIDs []string) (map[string]string, error)
	Redactions(ctx context.Context, eventIDs []string) (map[string]sql.Event, error)
}

// ClientEvents formats events for a device (nil: no device, so no
// transaction ids): FormatEvent, plus unsigned.transaction_id on the
// events the device sent and unsigned.redacted_because on redacted events.
// Each of the two costs at most one query for the whole batch, and none
// when no event needs it.
func ClientEvents(ctx context.Context, store EventStore, pdus []gomatrixserverlib.PDU, dev *userapi.Device, now time.Time) ([]ClientEvent, error) {
	return ClientRoomEvents(ctx, store, "", pdus, dev, now)
}

// ClientRoomEvents is ClientEvents for events all of the room roomID ("":
// read each event's), which spares parsing every event's room id: the
// cheaper form for /sync and /messages.
func ClientRoomEvents(ctx context.Context, store EventStore, roomID string, pdus []gomatrixserverlib.PDU, dev *userapi.Device, now time.Time) ([]ClientEvent, error) {
	out := make([]ClientEvent, len(pdus))
	var sentByDevice, redacted []string
	for i, pdu := range pdus {
		if roomID == "" {
			out[i] = FormatEvent(pdu, now)
		} else {
			out[i] = FormatRoomEvent(pdu, roomID, now)
		}
		// Transactions only come with message events (PUT /send, /redact).
		if dev != nil && dev.DeviceID != "" && pdu.StateKey() == nil && string(pdu.SenderID()) == dev.UserID {
			sentByDevice = append(sentByDevice, pdu.EventID())
		}
		if pdu.Redacted() {
			redacted = append(redacted, pdu.EventID())
		}
	}
	if len(sentByDevice) > 0 {
		txns, err := store.TransactionIDs(ctx, dev.UserID, dev.DeviceID, sentByDevice)
		if err != nil {
			return nil, fmt.Errorf("transaction ids: %w", err)
		}
		for i := range out {
			out[i].Unsigned.TransactionID = txns[out[i].EventID]
		}
	}
	if len(redacted) > 0 {
		because, err := store.Redactions(ctx, redacted)
		if err != nil {
			return nil, fmt.Errorf("redactions: %w", err)
		}
		for i := range out {
			r, ok := because[out[i].EventID]
			if !ok {
				continue
			}
			pdu, err := roomserver.ParseStored(r)
			if err != nil {
				return nil, err
			}
			rb := FormatRoomEvent(pdu, out[i].RoomID, now)
			out[i].Unsigned.RedactedBecause = &rb
		}
	}
	return out, nil
}

// MarshalJSON encodes the event with AppendJSON.
func (e ClientEvent) MarshalJSON() ([]byte, error) {
	return e.AppendJSON(make([]byte, 0, 256+len(e.Content))), nil
}

// AppendJSON appends the event's JSON to b without reflection, for paths
// that write many events (/sync, /messages): the content, already JSON, is
// copied as it is. It is the JSON encoding/json would make of the struct,
// except that <, > and & are not escaped.
func (e *ClientEvent) AppendJSON(b []byte) []byte {
	b = append(b, `{"content":`...)
	b = appendRaw(b, e.Content)
	b = append(b, `,"event_id":`...)
	b = appendJSONString(b, e.EventID)
	b = append(b, `,"origin_server_ts":`...)
	b = strconv.AppendInt(b, e.OriginServerTS, 10)
	if e.RoomID != "" {
		b = append(b, `,"room_id":`...)
		b = appendJSONString(b, e.RoomID)
	}
	b = append(b, `,"sender":`...)
	b = appendJSONString(b, e.Sender)
	if e.StateKey != nil {
		b = append(b, `,"state_key":`...)
		b = appendJSONString(b, *e.StateKey)
	}
	b = append(b, `,"type":`...)
	b = appendJSONString(b, e.Type)
	if e.Redacts != "" {
		b = append(b, `,"redacts":`...)
		b = appendJSONString(b, e.Redacts)
	}
	b = append(b, `,"unsigned":{"age":`...)
	u := &e.Unsigned
	b = strconv.AppendInt(b, u.Age, 10)
	if u.TransactionID != "" {
		b = append(b, `,"transaction_id":`...)
		b = appendJSONString(b, u.TransactionID)
	}
	if u.RedactedBecause != nil {
		b = append(b, `,"redacted_because":`...)
		b = u.RedactedBecause.AppendJSON(b)
	}
	if len(u.PrevContent) > 0 {
		b = append(b, `,"prev_content":`...)
		b = appendRaw(b, u.PrevContent)
	}
	if u.Membership != "" {
		b = append(b, `,"membership":`...)
		b = appendJSONString(b, u.Membership)
	}
	return append(b, "}}"...)
}

// appendRaw appends JSON that is already encoded, or {} for none.
func appendRaw(b []byte, raw json.RawMessage) []byte {
	if len(raw) == 0 {
		return append(b, "{}"...)
	}
	return append(b, raw...)
}

// appendJSONString appends s as a JSON string: quotes, backslashes and
// control characters escaped, invalid UTF-8 replaced by U+FFFD, and U+2028
// and U+2029 escaped, as encoding/json does.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c < utf8.RuneSelf {
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// clientEvent formats one event of roomID for dev.
func (a *API) clientEvent(ctx context.Context, roomID string, pdu gomatrixserverlib.PDU, dev *userapi.Device) (ClientEvent, error) {
	evs, err := ClientRoomEvents(ctx, a.db, roomID, []gomatrixserverlib.PDU{pdu}, dev, time.Now())
	if err != nil {
		return ClientEvent{}, err
	}
	return evs[0], nil
}
