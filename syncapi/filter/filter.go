// Package filter holds the client's event filter (spec: Filtering;
// definitions/sync_filter.yaml) as uploaded with POST /user/{userId}/filter
// or passed inline to /sync, /messages and /context, and its validation.
//
// Throughout, a nil list means the key was absent (match everything) and an
// empty list means it was given as [] (match nothing, for the include lists).
package filter

import (
	"fmt"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
)

// Filter is the top-level filter.
type Filter struct {
	// EventFields are dot-separated paths of the event fields to include;
	// nil: all.
	EventFields []string `json:"event_fields,omitempty"`
	// EventFormat is "client" (the default when empty) or "federation".
	EventFormat string       `json:"event_format,omitempty"`
	Presence    *EventFilter `json:"presence,omitempty"`
	AccountData *EventFilter `json:"account_data,omitempty"`
	Room        *RoomFilter  `json:"room,omitempty"`
}

// EventFilter selects events by type and sender, and caps their number.
type EventFilter struct {
	// Limit is the maximum number of events; nil: the server's default.
	Limit *int `json:"limit,omitempty"`
	// Types and NotTypes may use * as a wildcard for any sequence of
	// characters; NotTypes wins over Types.
	Types      []string `json:"types,omitempty"`
	NotTypes   []string `json:"not_types,omitempty"`
	Senders    []string `json:"senders,omitempty"`
	NotSenders []string `json:"not_senders,omitempty"`
}

// RoomFilter selects the rooms of a sync and filters each of their sections.
type RoomFilter struct {
	// Rooms and NotRooms apply before the section filters; NotRooms wins.
	Rooms        []string         `json:"rooms,omitempty"`
	NotRooms     []string         `json:"not_rooms,omitempty"`
	Ephemeral    *RoomEventFilter `json:"ephemeral,omitempty"`
	State        *RoomEventFilter `json:"state,omitempty"`
	Timeline     *RoomEventFilter `json:"timeline,omitempty"`
	AccountData  *RoomEventFilter `json:"account_data,omitempty"`
	IncludeLeave bool             `json:"include_leave,omitempty"`
}

// RoomEventFilter is an EventFilter for room events, with room selection,
// lazy-loading of members and per-thread notification counts.
type RoomEventFilter struct {
	EventFilter
	Rooms                     []string `json:"rooms,omitempty"`
	NotRooms                  []string `json:"not_rooms,omitempty"`
	LazyLoadMembers           bool     `json:"lazy_load_members,omitempty"`
	IncludeRedundantMembers   bool     `json:"include_redundant_members,omitempty"`
	UnreadThreadNotifications bool     `json:"unread_thread_notifications,omitempty"`
	// ContainsURL: nil ignores content.url; true keeps only events with
	// one; false only events without.
	ContainsURL *bool `json:"contains_url,omitempty"`
}

// Parse decodes and validates a filter from a request: 400 M_NOT_JSON when
// it does not parse, 400 M_BAD_JSON when it breaks the filter schema (a
// wrong type, an unknown event_format, a limit below 1, a malformed room or
// user id). Unknown keys are allowed, as the schema allows them.
func Parse(data []byte) (*Filter, error) {
	var f Filter
	if err := mxhttp.DecodeJSON(data, &f); err != nil {
		return nil, err
	}
	if err := f.Validate(); err != nil {
		return nil, mxhttp.BadJSON("Invalid filter: %v", err)
	}
	return &f, nil
}

// Validate checks what the JSON types alone do not.
func (f *Filter) Validate() error {
	switch f.EventFormat {
	case "", "client", "federation":
	default:
		return fmt.Errorf(`event_format must be "client" or "federation", not %q`, f.EventFormat)
	}
	if err := f.Presence.validate("presence"); err != nil {
		return err
	}
	if err := f.AccountData.validate("account_data"); err != nil {
		return err
	}
	if r := f.Room; r != nil {
		if err := validRooms("room.rooms", r.Rooms); err != nil {
			return err
		}
		if err := validRooms("room.not_rooms", r.NotRooms); err != nil {
			return err
		}
		for _, sec := range []struct {
			name string
			f    *RoomEventFilter
		}{{"room.ephemeral", r.Ephemeral}, {"room.state", r.State}, {"room.timeline", r.Timeline}, {"room.account_data", r.AccountData}} {
			if err := sec.f.validate(sec.name); err != nil {
				return err
			}
		}
	}
	return nil
}

func (f *EventFilter) validate(name string) error {
	if f == nil {
		return nil
	}
	if f.Limit != nil && *f.Limit < 1 {
		return fmt.Errorf("%s.limit must be an integer greater than 0", name)
	}
	for _, list := range []struct {
		key string
		ids []string
	}{{"senders", f.Senders}, {"not_senders", f.NotSenders}} {
		for _, id := range list.ids {
			// Historical ids are still senders in old rooms.
			if _, err := spec.NewUserID(id, true); err != nil {
				return fmt.Errorf("%s.%s: %q is not a user id", name, list.key, id)
			}
		}
	}
	return nil
}

func (f *RoomEventFilter) validate(name string) error {
	if f == nil {
		return nil
	}
	if err := f.EventFilter.validate(name); err != nil {
		return err
	}
	if err := validRooms(name+".rooms", f.Rooms); err != nil {
		return err
	}
	return validRooms(name+".not_rooms", f.NotRooms)
}

func validRooms(name string, ids []string) error {
	for _, id := range ids {
		if _, err := spec.NewRoomID(id); err != nil {
			return fmt.Errorf("%s: %q is not a room id", name, id)
		}
	}
	return nil
}
