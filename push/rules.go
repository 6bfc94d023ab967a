// Package push implements push rules (spec: Client-Server API, "Push
// Notifications"): the rule types clients see, the server-default rules,
// compilation of a user's ruleset into a form that is cheap to evaluate, the
// evaluation itself, and the consumer of room.output that counts each
// member's unread notifications.
//
// The cost model: a ruleset is compiled once per user per change (Cache),
// an event is flattened once for all of a room's members (NewEvent), and
// evaluating it for one member is a walk over precompiled conditions with no
// JSON parsing and, for almost every pattern, no regular expression.
package push

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// Kind is a kind of push rule. The order of Kinds is the order in which
// rules are checked.
type Kind string

// The kinds of rule, highest priority first.
const (
	Override  Kind = "override"
	Content   Kind = "content"
	Room      Kind = "room"
	Sender    Kind = "sender"
	Underride Kind = "underride"
)

// Kinds lists every kind in evaluation order.
var Kinds = []Kind{Override, Content, Room, Sender, Underride}

// ParseKind checks a kind named in a request path.
func ParseKind(s string) (Kind, bool) {
	for _, k := range Kinds {
		if string(k) == s {
			return k, true
		}
	}
	return "", false
}

// HasConditions reports whether rules of the kind carry explicit conditions
// (override and underride); the others have conditions implied by their
// rule id or pattern.
func (k Kind) HasConditions() bool { return k == Override || k == Underride }

// Rule is a push rule as the client-server API shows it.
type Rule struct {
	RuleID  string `json:"rule_id"`
	Default bool   `json:"default"`
	Enabled bool   `json:"enabled"`
	// Conditions is the JSON array of conditions, kept as stored so that
	// conditions this server does not understand reach clients unchanged.
	// Empty (omitted) for content, room and sender rules.
	Conditions json.RawMessage `json:"conditions,omitempty"`
	// Pattern is the glob of a content rule.
	Pattern *string `json:"pattern,omitempty"`
	// Actions is the JSON array of actions.
	Actions json.RawMessage `json:"actions"`
}

// Ruleset is the global ruleset: each kind's rules, most important first.
type Ruleset struct {
	Override  []Rule `json:"override"`
	Content   []Rule `json:"content"`
	Room      []Rule `json:"room"`
	Sender    []Rule `json:"sender"`
	Underride []Rule `json:"underride"`
}

// Of returns the rules of one kind.
func (rs *Ruleset) Of(k Kind) []Rule {
	switch k {
	case Override:
		return rs.Override
	case Content:
		return rs.Content
	case Room:
		return rs.Room
	case Sender:
		return rs.Sender
	case Underride:
		return rs.Underride
	}
	return nil
}

// Find returns the rule of kind k with id ruleID.
func (rs *Ruleset) Find(k Kind, ruleID string) (Rule, bool) {
	for _, r := range rs.Of(k) {
		if r.RuleID == ruleID {
			return r, true
		}
	}
	return Rule{}, false
}

func (rs *Ruleset) add(k Kind, r Rule) {
	switch k {
	case Override:
		rs.Override = append(rs.Override, r)
	case Content:
		rs.Content = append(rs.Content, r)
	case Room:
		rs.Room = append(rs.Room, r)
	case Sender:
		rs.Sender = append(rs.Sender, r)
	case Underride:
		rs.Underride = append(rs.Underride, r)
	}
}

// IsServerDefault reports whether a rule id is reserved for server-default
// rules (spec: "The rule_id for all server-default rules MUST start with a
// dot").
func IsServerDefault(ruleID string) bool { return strings.HasPrefix(ruleID, ".") }

// CheckRuleID checks the rule id of a rule a user creates: not empty, not
// reserved for server-default rules, and free of slashes and backslashes
// (spec: PUT /pushrules/global/{kind}/{ruleId}).
func CheckRuleID(ruleID string) error {
	switch {
	case ruleID == "":
		return fmt.Errorf("rule_id must not be empty")
	case IsServerDefault(ruleID):
		return fmt.Errorf("rule ids starting with '.' are reserved for server-default rules")
	case strings.ContainsAny(ruleID, `/\`):
		return fmt.Errorf("rule ids may not contain slashes or backslashes")
	}
	return nil
}

// historicalActions are actions older versions of the spec defined, which
// clients and servers must ignore (spec: "Historical Actions").
var historicalActions = map[string]bool{"dont_notify": true, "coalesce": true}

// NormalizeActions checks an actions array a client sent and returns it
// with the historical actions stripped. Each action must be "notify", a
// historical action, or an object with a string "set_tweak", as Synapse
// accepts; anything else is refused.
func NormalizeActions(raw json.RawMessage) (json.RawMessage, error) {
	var actions []json.RawMessage
	if err := json.Unmarshal(raw, &actions); err != nil || actions == nil {
		return nil, fmt.Errorf("actions must be an array")
	}
	out := make([]json.RawMessage, 0, len(actions))
	for _, a := range actions {
		var s string
		if json.Unmarshal(a, &s) == nil {
			switch {
			case s == "notify":
				out = append(out, a)
			case historicalActions[s]:
			default:
				return nil, fmt.Errorf("unrecognised action %q", s)
			}
			continue
		}
		var obj map[string]json.RawMessage
		if json.Unmarshal(a, &obj) != nil || obj == nil {
			return nil, fmt.Errorf("actions must be strings or objects")
		}
		var tweak string
		if t, ok := obj["set_tweak"]; !ok || json.Unmarshal(t, &tweak) != nil {
			return nil, fmt.Errorf("action objects must have a string set_tweak")
		}
		out = append(out, compact(a))
	}
	return json.Marshal(out)
}

// CheckConditions checks a conditions array a client sent: an array of
// objects, each with a string kind. Conditions of unknown kinds are kept
// (they never match, as the spec requires) so that newer clients can store
// them.
func CheckConditions(raw json.RawMessage) (json.RawMessage, error) {
	var conds []map[string]json.RawMessage
	if err := json.Unmarshal(raw, &conds); err != nil || conds == nil {
		return nil, fmt.Errorf("conditions must be an array of objects")
	}
	for _, c := range conds {
		var kind string
		if k, ok := c["kind"]; !ok || json.Unmarshal(k, &kind) != nil || kind == "" {
			return nil, fmt.Errorf("each condition needs a string kind")
		}
	}
	return compact(raw), nil
}

func compact(raw json.RawMessage) json.RawMessage {
	var b bytes.Buffer
	if json.Compact(&b, raw) != nil {
		return raw
	}
	return b.Bytes()
}
