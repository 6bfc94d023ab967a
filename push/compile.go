package push

import (
	"encoding/json"
	"strconv"
	"strings"

	"github.com/weft-chat/weft/sql"
)

// Compiled is a user's ruleset ready for evaluation: enabled rules only, in
// evaluation order, with conditions parsed, keys escaped canonically, globs
// lower-cased and actions reduced to their result. It is immutable, so one
// Compiled serves concurrent evaluations, and every user without rules of
// their own shares the one from Defaults.
type Compiled struct {
	rules []compiledRule
	// shared is set on Defaults, whose member-independent results
	// Evaluate keeps per event in the Context.
	shared bool
	// displayName: some rule has a contains_display_name condition;
	// displayNameLegacyOnly: all those rules are legacy mention rules.
	displayName, displayNameLegacyOnly bool
}

type compiledRule struct {
	// conds are the conditions that are the same for every member (they
	// read the event and the room); own those that read the member (their
	// user id or display name). A rule matches when both all hold.
	conds, own []cond
	// legacy rules are skipped for events with m.mentions.
	legacy bool
	result Result
}

// Result is the outcome of evaluating a ruleset against an event: the
// actions of the first rule that matched, and what they mean.
type Result struct {
	// Kind and RuleID name the rule that matched; RuleID is "" when none did.
	Kind   Kind
	RuleID string
	// Actions is the matched rule's actions array (pushers send its
	// tweaks to the push gateway).
	Actions json.RawMessage
	// Notify: the actions include "notify".
	Notify bool
	// Highlight is the highlight tweak (spec: no value means true, no
	// tweak means false).
	Highlight bool
	// Sound is the sound tweak, "" when not set.
	Sound string
}

// condOp is what a compiled condition tests.
type condOp uint8

const (
	opNever              condOp = iota // unknown kinds and malformed conditions never match
	opGlob                             // event_match
	opGlobSelfUserID                   // event_match against the member's user id
	opWordsSelfLocalpart               // content.body contains the member's localpart
	opIs                               // event_property_is
	opIsSelfUserID                     // event_property_is the member's user id
	opContains                         // event_property_contains
	opContainsSelfUserID               // event_property_contains the member's user id
	opDisplayName                      // contains_display_name
	opMemberCount                      // room_member_count
	opSenderPermission                 // sender_notification_permission
	opRoomIs                           // a room rule: room_id is exactly the rule id
	opSenderIs                         // a sender rule: sender is exactly the rule id
)

// perMember reports whether the condition reads the member rather than
// only the event and the room.
func (c *cond) perMember() bool {
	switch c.op {
	case opGlobSelfUserID, opWordsSelfLocalpart, opIsSelfUserID, opContainsSelfUserID, opDisplayName:
		return true
	}
	return false
}

// cond is one compiled condition.
type cond struct {
	op    condOp
	key   string // canonical dotted key
	known int    // index into Event.known, or -1
	glob  glob
	val   value
	str   string // opRoomIs, opSenderIs: the id; opSenderPermission: the notification key
	cmp   string // opMemberCount: "==", "<", ">", "<=", ">="
	n     int64  // opMemberCount: the count
}

var defaultCompiled = func() *Compiled {
	c := Compile(nil, nil)
	c.shared = true
	return c
}()

// Defaults returns the compiled server-default rules, the ruleset of every
// user who has neither rules nor settings of their own.
func Defaults() *Compiled { return defaultCompiled }

// Compile compiles a user's rules merged with the server-default rules (see
// Build for the order). userRules must be each kind's most important first,
// as sql.PushRules returns them.
func Compile(userRules []sql.PushRule, settings []sql.PushRuleSetting) *Compiled {
	c := &Compiled{}
	legacyOnly := true
	for _, e := range merged(userRules, settings) {
		if !e.rule.Enabled {
			continue
		}
		cr := compiledRule{
			legacy: e.isDefault && legacyMentionRules[e.rule.RuleID],
			result: resultOf(e.kind, e.rule.RuleID, e.rule.Actions),
		}
		switch e.kind {
		case Override, Underride:
			cr.conds = compileConditions(e.rule.Conditions, e.isDefault)
		case Content:
			if e.rule.Pattern == nil {
				cr.conds = []cond{{op: opNever}}
			} else if e.isDefault && *e.rule.Pattern == selfLocalpart {
				cr.conds = []cond{{op: opWordsSelfLocalpart}}
			} else {
				cr.conds = []cond{globCond("content.body", *e.rule.Pattern)}
			}
		case Room:
			cr.conds = []cond{{op: opRoomIs, str: e.rule.RuleID}}
		case Sender:
			cr.conds = []cond{{op: opSenderIs, str: e.rule.RuleID}}
		}
		all := cr.conds
		cr.conds = nil
		for _, cd := range all {
			if cd.op == opDisplayName {
				c.displayName = true
				legacyOnly = legacyOnly && cr.legacy
			}
			if cd.perMember() {
				cr.own = append(cr.own, cd)
			} else {
				cr.conds = append(cr.conds, cd)
			}
		}
		c.rules = append(c.rules, cr)
	}
	c.displayNameLegacyOnly = c.displayName && legacyOnly
	return c
}

// NeedsDisplayName reports whether evaluating ev needs the member's display
// name, so that callers look names up only then.
func (c *Compiled) NeedsDisplayName(ev *Event) bool {
	if !c.displayName {
		return false
	}
	if _, ok := ev.Body(); !ok {
		return false
	}
	return !(c.displayNameLegacyOnly && ev.hasMentions)
}

// conditionJSON is a condition as stored.
type conditionJSON struct {
	Kind    string          `json:"kind"`
	Key     *string         `json:"key"`
	Pattern *string         `json:"pattern"`
	Is      *string         `json:"is"`
	Value   json.RawMessage `json:"value"`
}

// compileConditions compiles a conditions array. A condition that does not
// parse compiles to one that never matches, which disables the rule, as
// the spec requires of unrecognised conditions. Placeholders are read only
// in server-default rules (self).
func compileConditions(raw json.RawMessage, self bool) []cond {
	var items []json.RawMessage
	if len(raw) > 0 && json.Unmarshal(raw, &items) != nil {
		return []cond{{op: opNever}}
	}
	out := make([]cond, 0, len(items))
	for _, item := range items {
		var cj conditionJSON
		if json.Unmarshal(item, &cj) != nil {
			out = append(out, cond{op: opNever})
			continue
		}
		out = append(out, compileCondition(cj, self))
	}
	return out
}

func compileCondition(cj conditionJSON, self bool) cond {
	never := cond{op: opNever}
	switch cj.Kind {
	case "event_match":
		if cj.Key == nil || cj.Pattern == nil {
			return never
		}
		if self && *cj.Pattern == selfUserID {
			c := keyCond(*cj.Key)
			c.op = opGlobSelfUserID
			return c
		}
		return globCond(*cj.Key, *cj.Pattern)
	case "event_property_is", "event_property_contains":
		if cj.Key == nil || len(cj.Value) == 0 {
			return never
		}
		c := keyCond(*cj.Key)
		var s string
		if self && json.Unmarshal(cj.Value, &s) == nil && s == selfUserID {
			c.op = opIsSelfUserID
			if cj.Kind == "event_property_contains" {
				c.op = opContainsSelfUserID
			}
			return c
		}
		v, ok := parseScalar(cj.Value)
		if !ok {
			return never
		}
		c.val = v
		c.op = opIs
		if cj.Kind == "event_property_contains" {
			c.op = opContains
		}
		return c
	case "contains_display_name":
		return cond{op: opDisplayName}
	case "room_member_count":
		if cj.Is == nil {
			return never
		}
		cmp, n, ok := parseMemberCount(*cj.Is)
		if !ok {
			return never
		}
		return cond{op: opMemberCount, cmp: cmp, n: n}
	case "sender_notification_permission":
		if cj.Key == nil {
			return never
		}
		return cond{op: opSenderPermission, str: *cj.Key}
	}
	return never
}

func keyCond(key string) cond {
	k := canonicalKey(key)
	known := -1
	if i, ok := knownProps[k]; ok {
		known = i
	}
	return cond{key: k, known: known}
}

func globCond(key, pattern string) cond {
	c := keyCond(key)
	c.op = opGlob
	c.glob = compileGlob(pattern, c.key == "content.body")
	return c
}

// parseScalar parses a condition value: a string, an integer in the
// canonical JSON range, a boolean or null.
func parseScalar(raw json.RawMessage) (value, bool) {
	var v any
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return value{}, false
	}
	return scalar(v)
}

// parseMemberCount parses room_member_count's "is": a decimal integer with
// an optional prefix ==, <, >, >= or <= (default ==).
func parseMemberCount(is string) (cmp string, n int64, ok bool) {
	cmp = "=="
	for _, p := range []string{"==", "<=", ">=", "<", ">"} {
		if strings.HasPrefix(is, p) {
			cmp, is = p, is[len(p):]
			break
		}
	}
	if is == "" || strings.ContainsAny(is, "+-") {
		return "", 0, false
	}
	n, err := strconv.ParseInt(is, 10, 64)
	if err != nil {
		return "", 0, false
	}
	return cmp, n, true
}

// resultOf reads what a rule's actions mean.
func resultOf(k Kind, ruleID string, actions json.RawMessage) Result {
	r := Result{Kind: k, RuleID: ruleID, Actions: actions}
	var items []json.RawMessage
	_ = json.Unmarshal(actions, &items)
	for _, a := range items {
		var s string
		if json.Unmarshal(a, &s) == nil {
			r.Notify = r.Notify || s == "notify"
			continue
		}
		var t struct {
			SetTweak string          `json:"set_tweak"`
			Value    json.RawMessage `json:"value"`
		}
		if json.Unmarshal(a, &t) != nil {
			continue
		}
		switch t.SetTweak {
		case "highlight":
			// No value means true; like Synapse, any value but false
			// (or null) counts as true.
			v := strings.TrimSpace(string(t.Value))
			r.Highlight = v != "false" && v != "null"
		case "sound":
			_ = json.Unmarshal(t.Value, &r.Sound)
		}
	}
	return r
}
