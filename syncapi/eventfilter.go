package syncapi

import (
	"encoding/json"
	"slices"
	"strings"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/syncapi/filter"
)

// eventFilter applies a RoomEventFilter to stored events. The filter
// types are syncapi/filter's; matching lives here until that package
// offers it.
type eventFilter struct {
	f      filter.RoomEventFilter
	roomOK bool
}

// parseEventFilter reads the filter query parameter of /messages and
// /context: a JSON RoomEventFilter (400 M_NOT_JSON when it does not
// parse, M_BAD_JSON when it breaks the schema), or nothing.
func parseEventFilter(raw, roomID string) (*eventFilter, error) {
	ef := &eventFilter{roomOK: true}
	if raw == "" {
		return ef, nil
	}
	if err := mxhttp.DecodeJSON([]byte(raw), &ef.f); err != nil {
		return nil, err
	}
	// Validate through the filter package, as the timeline section of a
	// whole filter.
	whole := filter.Filter{Room: &filter.RoomFilter{Timeline: &ef.f}}
	if err := whole.Validate(); err != nil {
		return nil, mxhttp.BadJSON("Invalid filter: %v", err)
	}
	if ef.f.Rooms != nil && !slices.Contains(ef.f.Rooms, roomID) || slices.Contains(ef.f.NotRooms, roomID) {
		ef.roomOK = false
	}
	return ef, nil
}

// lazyMembers reports whether the filter asks for lazy-loaded members.
func (ef *eventFilter) lazyMembers() bool { return ef.f.LazyLoadMembers }

// matches applies the filter to one event (not_* win over their lists;
// nil lists match everything, empty lists nothing).
func (ef *eventFilter) matches(ev sql.Event) bool {
	f := &ef.f
	if !ef.roomOK {
		return false
	}
	if slices.Contains(f.NotSenders, ev.Sender) || f.Senders != nil && !slices.Contains(f.Senders, ev.Sender) {
		return false
	}
	if slices.ContainsFunc(f.NotTypes, func(p string) bool { return typeMatches(p, ev.Type) }) {
		return false
	}
	if f.Types != nil && !slices.ContainsFunc(f.Types, func(p string) bool { return typeMatches(p, ev.Type) }) {
		return false
	}
	if f.ContainsURL != nil && hasURL(ev) != *f.ContainsURL {
		return false
	}
	return true
}

// typeMatches matches an event type against a filter pattern, where *
// stands for any run of characters (spec: Filtering).
func typeMatches(pattern, typ string) bool {
	parts := strings.Split(pattern, "*")
	if len(parts) == 1 {
		return pattern == typ
	}
	if !strings.HasPrefix(typ, parts[0]) {
		return false
	}
	rest := typ[len(parts[0]):]
	for _, mid := range parts[1 : len(parts)-1] {
		i := strings.Index(rest, mid)
		if i < 0 {
			return false
		}
		rest = rest[i+len(mid):]
	}
	return strings.HasSuffix(rest, parts[len(parts)-1])
}

// hasURL reports whether the content has a url string, which is what
// contains_url looks at (as Synapse does).
func hasURL(ev sql.Event) bool {
	var e struct {
		Content struct {
			URL any `json:"url"`
		} `json:"content"`
	}
	if json.Unmarshal(ev.JSON, &e) != nil {
		return false
	}
	_, ok := e.Content.URL.(string)
	return ok
}
