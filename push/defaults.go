package push

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/weft-chat/weft/sql"
)

// The placeholders of the server-default rules that name the rule's owner.
// They stay in the compiled rules as references to the member being
// evaluated, so every user without rules of their own shares one compiled
// ruleset; Build replaces them for clients.
const (
	selfUserID    = "{{user_id}}"
	selfLocalpart = "{{localpart}}"
)

// legacyMentionRules are the default rules that look for mentions in the
// body. Spec v1.17 removed them; like Synapse, Weft still has them for
// clients that do not send m.mentions, and skips them for events that carry
// m.mentions (spec v1.7-v1.16 and the mentions module: "those push rules
// were disabled if the m.mentions field was present").
var legacyMentionRules = map[string]bool{
	".m.rule.contains_display_name": true,
	".m.rule.roomnotif":             true,
	".m.rule.contains_user_name":    true,
}

// defaultRulesJSON are the server-default rules (spec: Predefined Rules),
// each kind's in the order Synapse checks them. .m.rule.master comes first
// and, unlike the others, before the user's own override rules.
const defaultRulesJSON = `{
"override": [
  {"rule_id": ".m.rule.master", "default": true, "enabled": false, "conditions": [], "actions": []},
  {"rule_id": ".m.rule.suppress_notices", "default": true, "enabled": true,
   "conditions": [{"kind": "event_match", "key": "content.msgtype", "pattern": "m.notice"}],
   "actions": []},
  {"rule_id": ".m.rule.invite_for_me", "default": true, "enabled": true,
   "conditions": [
     {"key": "type", "kind": "event_match", "pattern": "m.room.member"},
     {"key": "content.membership", "kind": "event_match", "pattern": "invite"},
     {"key": "state_key", "kind": "event_match", "pattern": "{{user_id}}"}],
   "actions": ["notify", {"set_tweak": "sound", "value": "default"}]},
  {"rule_id": ".m.rule.member_event", "default": true, "enabled": true,
   "conditions": [{"key": "type", "kind": "event_match", "pattern": "m.room.member"}],
   "actions": []},
  {"rule_id": ".m.rule.is_user_mention", "default": true, "enabled": true,
   "conditions": [{"kind": "event_property_contains", "key": "content.m\\.mentions.user_ids", "value": "{{user_id}}"}],
   "actions": ["notify", {"set_tweak": "sound", "value": "default"}, {"set_tweak": "highlight"}]},
  {"rule_id": ".m.rule.contains_display_name", "default": true, "enabled": true,
   "conditions": [{"kind": "contains_display_name"}],
   "actions": ["notify", {"set_tweak": "sound", "value": "default"}, {"set_tweak": "highlight"}]},
  {"rule_id": ".m.rule.is_room_mention", "default": true, "enabled": true,
   "conditions": [
     {"kind": "event_property_is", "key": "content.m\\.mentions.room", "value": true},
     {"kind": "sender_notification_permission", "key": "room"}],
   "actions": ["notify", {"set_tweak": "highlight"}]},
  {"rule_id": ".m.rule.roomnotif", "default": true, "enabled": true,
   "conditions": [
     {"kind": "event_match", "key": "content.body", "pattern": "@room"},
     {"kind": "sender_notification_permission", "key": "room"}],
   "actions": ["notify", {"set_tweak": "highlight"}]},
  {"rule_id": ".m.rule.tombstone", "default": true, "enabled": true,
   "conditions": [
     {"kind": "event_match", "key": "type", "pattern": "m.room.tombstone"},
     {"kind": "event_match", "key": "state_key", "pattern": ""}],
   "actions": ["notify", {"set_tweak": "highlight"}]},
  {"rule_id": ".m.rule.reaction", "default": true, "enabled": true,
   "conditions": [{"kind": "event_match", "key": "type", "pattern": "m.reaction"}],
   "actions": []},
  {"rule_id": ".m.rule.room.server_acl", "default": true, "enabled": true,
   "conditions": [
     {"kind": "event_match", "key": "type", "pattern": "m.room.server_acl"},
     {"kind": "event_match", "key": "state_key", "pattern": ""}],
   "actions": []},
  {"rule_id": ".m.rule.suppress_edits", "default": true, "enabled": true,
   "conditions": [{"kind": "event_property_is", "key": "content.m\\.relates_to.rel_type", "value": "m.replace"}],
   "actions": []}
],
"content": [
  {"rule_id": ".m.rule.contains_user_name", "default": true, "enabled": true, "pattern": "{{localpart}}",
   "actions": ["notify", {"set_tweak": "sound", "value": "default"}, {"set_tweak": "highlight"}]}
],
"room": [],
"sender": [],
"underride": [
  {"rule_id": ".m.rule.call", "default": true, "enabled": true,
   "conditions": [{"key": "type", "kind": "event_match", "pattern": "m.call.invite"}],
   "actions": ["notify", {"set_tweak": "sound", "value": "ring"}]},
  {"rule_id": ".m.rule.encrypted_room_one_to_one", "default": true, "enabled": true,
   "conditions": [
     {"kind": "room_member_count", "is": "2"},
     {"kind": "event_match", "key": "type", "pattern": "m.room.encrypted"}],
   "actions": ["notify", {"set_tweak": "sound", "value": "default"}]},
  {"rule_id": ".m.rule.room_one_to_one", "default": true, "enabled": true,
   "conditions": [
     {"kind": "room_member_count", "is": "2"},
     {"kind": "event_match", "key": "type", "pattern": "m.room.message"}],
   "actions": ["notify", {"set_tweak": "sound", "value": "default"}]},
  {"rule_id": ".m.rule.message", "default": true, "enabled": true,
   "conditions": [{"kind": "event_match", "key": "type", "pattern": "m.room.message"}],
   "actions": ["notify"]},
  {"rule_id": ".m.rule.encrypted", "default": true, "enabled": true,
   "conditions": [{"kind": "event_match", "key": "type", "pattern": "m.room.encrypted"}],
   "actions": ["notify"]}
]
}`

// defaultRules is defaultRulesJSON parsed, with placeholders in place.
var defaultRules = func() Ruleset {
	var rs Ruleset
	if err := json.Unmarshal([]byte(defaultRulesJSON), &rs); err != nil {
		panic(fmt.Sprintf("push: bad default rules: %v", err)) // a typo above; caught by every test
	}
	for _, k := range Kinds {
		for i, r := range rs.Of(k) {
			r.Conditions, r.Actions = compact(r.Conditions), compact(r.Actions)
			rs.Of(k)[i] = r
		}
	}
	return rs
}()

// IsDefaultRule reports whether kind k has a server-default rule ruleID.
func IsDefaultRule(k Kind, ruleID string) bool {
	_, ok := defaultRules.Find(k, ruleID)
	return ok
}

// entry is one rule of a merged ruleset: a server-default rule (with the
// user's settings applied, placeholders still in) or one of the user's.
type entry struct {
	kind      Kind
	rule      Rule
	isDefault bool
}

// merged lists a user's rules and the server-default rules in evaluation
// order: .m.rule.master, the user's override rules, the other default
// override rules; then for every other kind the user's rules before the
// defaults (spec: server-default rules "operate at a lower priority than
// user-defined rules, except for the .m.rule.master rule"). userRules must
// be each kind's most important first, as sql.PushRules returns them.
func merged(userRules []sql.PushRule, settings []sql.PushRuleSetting) []entry {
	set := make(map[string]sql.PushRuleSetting, len(settings))
	for _, s := range settings {
		set[s.Kind+"\x00"+s.RuleID] = s
	}
	withSettings := func(k Kind, r Rule) Rule {
		if s, ok := set[string(k)+"\x00"+r.RuleID]; ok {
			if s.Enabled != nil {
				r.Enabled = *s.Enabled
			}
			if s.Actions != nil {
				r.Actions = s.Actions
			}
		}
		return r
	}
	var out []entry
	addDefaults := func(k Kind, skipMaster bool) {
		for _, r := range defaultRules.Of(k) {
			if skipMaster && r.RuleID == ".m.rule.master" {
				continue
			}
			out = append(out, entry{kind: k, rule: withSettings(k, r), isDefault: true})
		}
	}
	for _, k := range Kinds {
		if k == Override {
			master, _ := defaultRules.Find(Override, ".m.rule.master")
			out = append(out, entry{kind: Override, rule: withSettings(Override, master), isDefault: true})
		}
		for _, u := range userRules {
			if Kind(u.Kind) != k {
				continue
			}
			r := Rule{RuleID: u.RuleID, Enabled: u.Enabled, Pattern: u.Pattern, Actions: u.Actions}
			if k.HasConditions() {
				r.Conditions = u.Conditions
				if len(r.Conditions) == 0 {
					r.Conditions = json.RawMessage("[]")
				}
			}
			out = append(out, entry{kind: k, rule: r})
		}
		addDefaults(k, k == Override)
	}
	return out
}

// Build returns a user's global ruleset as clients see it: the defaults
// with the user's settings, merged with the user's own rules, and the
// placeholders of the defaults replaced by the user's id and localpart.
func Build(userID string, userRules []sql.PushRule, settings []sql.PushRuleSetting) Ruleset {
	rs := Ruleset{Override: []Rule{}, Content: []Rule{}, Room: []Rule{}, Sender: []Rule{}, Underride: []Rule{}}
	subst := strings.NewReplacer(selfUserID, jsonEscape(userID), selfLocalpart, jsonEscape(localpartOf(userID)))
	for _, e := range merged(userRules, settings) {
		r := e.rule
		if e.isDefault {
			if len(r.Conditions) > 0 {
				r.Conditions = json.RawMessage(subst.Replace(string(r.Conditions)))
			}
			if r.Pattern != nil {
				p := strings.NewReplacer(selfUserID, userID, selfLocalpart, localpartOf(userID)).Replace(*r.Pattern)
				r.Pattern = &p
			}
		}
		r.Default = e.isDefault
		rs.add(e.kind, r)
	}
	return rs
}

// jsonEscape is s escaped for the inside of a JSON string.
func jsonEscape(s string) string {
	b, _ := json.Marshal(s)
	return string(b[1 : len(b)-1])
}

// localpartOf is the localpart of a user id ("@alice:example.org" gives
// "alice"), without allocating.
func localpartOf(userID string) string {
	s := strings.TrimPrefix(userID, "@")
	if i := strings.IndexByte(s, ':'); i >= 0 {
		return s[:i]
	}
	return s
}
