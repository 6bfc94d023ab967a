package push

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
)

// valueKind is the JSON type of a flattened event property.
type valueKind uint8

const (
	kindString valueKind = iota + 1
	kindInt
	kindBool
	kindNull
	kindArray
)

// value is one property of a flattened event: a non-compound canonical
// JSON value, or an array whose non-compound elements are kept (spec:
// event_property_is and event_property_contains only compare those).
type value struct {
	kind  valueKind
	str   string // kindString: the value as sent
	lower string // kindString: str lower-cased once, for case-insensitive globs
	num   int64  // kindInt; for kindBool 1 is true
	arr   []value
}

// equal compares two non-compound values exactly (no type casts).
func (v value) equal(o value) bool {
	if v.kind != o.kind {
		return false
	}
	switch v.kind {
	case kindString:
		return v.str == o.str
	case kindInt, kindBool:
		return v.num == o.num
	case kindNull:
		return true
	}
	return false
}

// maxSafeInt bounds canonical JSON integers: [-(2**53)+1, (2**53)-1].
const maxSafeInt = 1<<53 - 1

// The properties the default rules read, kept in an array so that walking
// the default rules costs an index, not a map lookup, per condition.
const (
	propType = iota
	propStateKey
	propMsgtype
	propMembership
	propBody
	propMentionsUserIDs
	propMentionsRoom
	propRelType
	numKnownProps
)

var knownProps = map[string]int{
	"type":                           propType,
	"state_key":                      propStateKey,
	"content.msgtype":                propMsgtype,
	"content.membership":             propMembership,
	"content.body":                   propBody,
	`content.m\.mentions.user_ids`:   propMentionsUserIDs,
	`content.m\.mentions.room`:       propMentionsRoom,
	`content.m\.relates_to.rel_type`: propRelType,
}

// Event is an event prepared for evaluation: parsed and flattened once,
// then shared by the evaluations of every member of the room. It is
// read-only after NewEvent, so evaluations may run concurrently.
type Event struct {
	// props maps escaped dotted keys (spec: "Dot-separated property
	// paths", with literal dots and backslashes escaped) to values.
	props map[string]*value
	known [numKnownProps]*value
	// hasMentions: content carries an m.mentions object, which turns the
	// legacy mention rules off.
	hasMentions bool
	roomID      string
	sender      string
}

// NewEvent flattens an event. content must be a JSON object.
func NewEvent(eventType, sender, roomID, eventID string, stateKey *string, content json.RawMessage) (*Event, error) {
	ev := &Event{props: make(map[string]*value, 16), roomID: roomID, sender: sender}
	ev.setString("type", eventType)
	ev.setString("sender", sender)
	ev.setString("room_id", roomID)
	if eventID != "" {
		ev.setString("event_id", eventID)
	}
	if stateKey != nil {
		ev.setString("state_key", *stateKey)
	}
	dec := json.NewDecoder(bytes.NewReader(content))
	dec.UseNumber()
	var c map[string]any
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("push: event content: %w", err)
	}
	ev.flatten("content", c)
	if m, ok := c["m.mentions"].(map[string]any); ok && m != nil {
		ev.hasMentions = true
	}
	for k, i := range knownProps {
		ev.known[i] = ev.props[k]
	}
	return ev, nil
}

// EventFromPDU flattens a room event.
func EventFromPDU(pdu gomatrixserverlib.PDU) (*Event, error) {
	ev, err := NewEvent(pdu.Type(), string(pdu.SenderID()), pdu.RoomID().String(), pdu.EventID(), pdu.StateKey(), pdu.Content())
	if err != nil {
		return nil, err
	}
	ev.props["origin_server_ts"] = &value{kind: kindInt, num: int64(pdu.OriginServerTS())}
	if r := pdu.Redacts(); r != "" {
		ev.setString("redacts", r)
	}
	return ev, nil
}

func (ev *Event) setString(key, s string) {
	ev.props[key] = &value{kind: kindString, str: s, lower: strings.ToLower(s)}
}

// flatten adds every leaf under prefix: objects are walked, scalars and
// arrays stored.
func (ev *Event) flatten(prefix string, m map[string]any) {
	for k, v := range m {
		key := prefix + "." + escapeKey(k)
		switch t := v.(type) {
		case map[string]any:
			ev.flatten(key, t)
		case []any:
			arr := make([]value, 0, len(t))
			for _, e := range t {
				if sv, ok := scalar(e); ok {
					arr = append(arr, sv)
				}
			}
			ev.props[key] = &value{kind: kindArray, arr: arr}
		default:
			if sv, ok := scalar(v); ok {
				ev.props[key] = &sv
			}
		}
	}
}

// scalar converts a decoded non-compound JSON value; floats and integers
// outside the canonical range are not canonical JSON and are left out.
func scalar(v any) (value, bool) {
	switch t := v.(type) {
	case string:
		return value{kind: kindString, str: t, lower: strings.ToLower(t)}, true
	case bool:
		if t {
			return value{kind: kindBool, num: 1}, true
		}
		return value{kind: kindBool}, true
	case nil:
		return value{kind: kindNull}, true
	case json.Number:
		n, err := t.Int64()
		if err != nil || n > maxSafeInt || n < -maxSafeInt {
			return value{}, false
		}
		return value{kind: kindInt, num: n}, true
	}
	return value{}, false
}

// escapeKey escapes one property name for a dotted path: a literal dot or
// backslash gets a backslash before it.
func escapeKey(k string) string {
	if !strings.ContainsAny(k, `.\`) {
		return k
	}
	var b strings.Builder
	for i := 0; i < len(k); i++ {
		if k[i] == '.' || k[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(k[i])
	}
	return b.String()
}

// canonicalKey rewrites a dotted path from a rule into the escaping the
// flattened event uses. Only "\." and "\\" are escapes; any other
// backslash is a literal backslash (spec: "Other escape sequences are left
// as-is, e.g. a \x would be treated as a literal backslash followed by
// 'x'").
func canonicalKey(path string) string {
	var parts []string
	var cur strings.Builder
	for i := 0; i < len(path); i++ {
		c := path[i]
		switch {
		case c == '\\' && i+1 < len(path) && (path[i+1] == '.' || path[i+1] == '\\'):
			cur.WriteByte(path[i+1])
			i++
		case c == '.':
			parts = append(parts, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(c)
		}
	}
	parts = append(parts, cur.String())
	for i, p := range parts {
		parts[i] = escapeKey(p)
	}
	return strings.Join(parts, ".")
}

// lookup returns a property by canonical key, nil when absent; known is
// its index in the known array, or -1.
func (ev *Event) lookup(key string, known int) *value {
	if known >= 0 {
		return ev.known[known]
	}
	return ev.props[key]
}

// Body returns content.body when it is a string.
func (ev *Event) Body() (string, bool) {
	if p := ev.known[propBody]; p != nil && p.kind == kindString {
		return p.str, true
	}
	return "", false
}
