package push

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/weft-chat/weft/sql"
)

const alice = "@alice:example.org"

// group is a room of five with default power levels; dm a room of two.
var (
	group = Context{UserID: alice, DisplayName: "Alice", MemberCount: 5, SenderPower: 0}
	dm    = Context{UserID: alice, DisplayName: "Alice", MemberCount: 2, SenderPower: 0}
	// noName has no display name, to see the localpart rule alone.
	noName = Context{UserID: alice, MemberCount: 5}
)

func TestDefaultRules(t *testing.T) {
	mod := group
	mod.SenderPower = 50
	cases := []struct {
		name      string
		typ       string
		stateKey  *string
		content   string
		ctx       Context
		rule      string
		notify    bool
		highlight bool
	}{
		{"message in a group", "m.room.message", nil, `{"msgtype": "m.text", "body": "hello"}`, group,
			".m.rule.message", true, false},
		{"mention by user id", "m.room.message", nil,
			`{"msgtype": "m.text", "body": "hi", "m.mentions": {"user_ids": ["@alice:example.org"]}}`, group,
			".m.rule.is_user_mention", true, true},
		{"mention of someone else", "m.room.message", nil,
			`{"msgtype": "m.text", "body": "hi", "m.mentions": {"user_ids": ["@carol:example.org"]}}`, group,
			".m.rule.message", true, false},
		{"@room by a moderator", "m.room.message", nil,
			`{"msgtype": "m.text", "body": "all", "m.mentions": {"room": true}}`, mod,
			".m.rule.is_room_mention", true, true},
		{"@room without power", "m.room.message", nil,
			`{"msgtype": "m.text", "body": "all", "m.mentions": {"room": true}}`, group,
			".m.rule.message", true, false},
		{"@room as a string is not a room mention", "m.room.message", nil,
			`{"msgtype": "m.text", "body": "all", "m.mentions": {"room": "true"}}`, mod,
			".m.rule.message", true, false},
		{"DM message", "m.room.message", nil, `{"msgtype": "m.text", "body": "psst"}`, dm,
			".m.rule.room_one_to_one", true, false},
		{"encrypted DM", "m.room.encrypted", nil, `{"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "x"}`, dm,
			".m.rule.encrypted_room_one_to_one", true, false},
		{"encrypted group message", "m.room.encrypted", nil, `{"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "x"}`, group,
			".m.rule.encrypted", true, false},
		{"notice", "m.room.message", nil, `{"msgtype": "m.notice", "body": "bot says"}`, dm,
			".m.rule.suppress_notices", false, false},
		{"notice mentioning the user", "m.room.message", nil,
			`{"msgtype": "m.notice", "body": "bot", "m.mentions": {"user_ids": ["@alice:example.org"]}}`, group,
			".m.rule.suppress_notices", false, false},
		{"edit", "m.room.message", nil,
			`{"msgtype": "m.text", "body": "* fixed", "m.new_content": {"msgtype": "m.text", "body": "fixed"},
			  "m.relates_to": {"rel_type": "m.replace", "event_id": "$orig"}}`, dm,
			".m.rule.suppress_edits", false, false},
		{"edit mentioning the user", "m.room.message", nil,
			`{"msgtype": "m.text", "body": "* hi", "m.mentions": {"user_ids": ["@alice:example.org"]},
			  "m.relates_to": {"rel_type": "m.replace", "event_id": "$orig"}}`, group,
			".m.rule.is_user_mention", true, true},
		{"reaction", "m.reaction", nil, `{"m.relates_to": {"rel_type": "m.annotation", "event_id": "$x", "key": "👍"}}`, dm,
			".m.rule.reaction", false, false},
		{"invite for me", "m.room.member", strp(alice), `{"membership": "invite"}`, group,
			".m.rule.invite_for_me", true, false},
		{"invite for someone else", "m.room.member", strp("@carol:example.org"), `{"membership": "invite"}`, group,
			".m.rule.member_event", false, false},
		{"join", "m.room.member", strp("@carol:example.org"), `{"membership": "join"}`, dm,
			".m.rule.member_event", false, false},
		{"tombstone", "m.room.tombstone", strp(""), `{"body": "moved", "replacement_room": "!new:example.org"}`, group,
			".m.rule.tombstone", true, true},
		{"tombstone with a state key", "m.room.tombstone", strp("x"), `{"replacement_room": "!new:example.org"}`, group,
			"", false, false},
		{"server ACL", "m.room.server_acl", strp(""), `{"allow": ["*"]}`, group,
			".m.rule.room.server_acl", false, false},
		{"call", "m.call.invite", nil, `{"call_id": "1", "version": 1}`, group,
			".m.rule.call", true, false},
		{"topic change", "m.room.topic", strp(""), `{"topic": "x"}`, group,
			"", false, false},
		// The legacy mention rules fire only without m.mentions.
		{"display name without m.mentions", "m.room.message", nil, `{"msgtype": "m.text", "body": "hey Alice!"}`, group,
			".m.rule.contains_display_name", true, true},
		{"display name with m.mentions", "m.room.message", nil,
			`{"msgtype": "m.text", "body": "hey Alice!", "m.mentions": {}}`, group,
			".m.rule.message", true, false},
		{"localpart without m.mentions", "m.room.message", nil, `{"msgtype": "m.text", "body": "ping ALICE."}`, noName,
			".m.rule.contains_user_name", true, true},
		{"localpart with m.mentions", "m.room.message", nil, `{"msgtype": "m.text", "body": "ping alice", "m.mentions": {}}`, group,
			".m.rule.message", true, false},
		{"@room in the body by a moderator", "m.room.message", nil, `{"msgtype": "m.text", "body": "@room hello"}`, mod,
			".m.rule.roomnotif", true, true},
		{"@room in the body without power", "m.room.message", nil, `{"msgtype": "m.text", "body": "@room hello"}`, group,
			".m.rule.message", true, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx := c.ctx
			r := Evaluate(Defaults(), event(t, c.typ, c.stateKey, c.content), &ctx)
			if r.RuleID != c.rule || r.Notify != c.notify || r.Highlight != c.highlight {
				t.Errorf("got rule %q notify %v highlight %v, want %q %v %v", r.RuleID, r.Notify, r.Highlight, c.rule, c.notify, c.highlight)
			}
		})
	}
}

func TestMasterRuleAndOrder(t *testing.T) {
	on, off := true, false
	ev := event(t, "m.room.message", nil, `{"msgtype": "m.text", "body": "hello"}`)
	// The master rule, once enabled, comes before everything, the user's
	// own override rules included.
	user := []sql.PushRule{{Kind: "override", RuleID: "mine", Enabled: true, Conditions: []byte(`[]`),
		Actions: []byte(`["notify", {"set_tweak": "highlight"}]`)}}
	ctx := group
	if r := Evaluate(Compile(user, []sql.PushRuleSetting{{Kind: "override", RuleID: ".m.rule.master", Enabled: &on}}), ev, &ctx); r.RuleID != ".m.rule.master" || r.Notify {
		t.Errorf("with master on: %+v", r)
	}
	// A user's override beats the default overrides, and a user's
	// underride beats the default underrides but not the default
	// overrides.
	if r := Evaluate(Compile(user, nil), ev, &ctx); r.RuleID != "mine" || !r.Highlight {
		t.Errorf("user override: %+v", r)
	}
	under := []sql.PushRule{{Kind: "underride", RuleID: "quiet", Enabled: true, Conditions: []byte(`[]`), Actions: []byte(`[]`)}}
	if r := Evaluate(Compile(under, nil), ev, &ctx); r.RuleID != "quiet" || r.Notify {
		t.Errorf("user underride: %+v", r)
	}
	notice := event(t, "m.room.message", nil, `{"msgtype": "m.notice", "body": "x"}`)
	if r := Evaluate(Compile(under, nil), notice, &ctx); r.RuleID != ".m.rule.suppress_notices" {
		t.Errorf("user underride before default override: %+v", r)
	}
	// Room, sender and content rules, in that order after overrides.
	rules := []sql.PushRule{
		{Kind: "sender", RuleID: "@bob:example.org", Enabled: true, Actions: []byte(`[]`)},
		{Kind: "room", RuleID: "!room:example.org", Enabled: true, Actions: []byte(`["notify", {"set_tweak": "sound", "value": "room"}]`)},
		{Kind: "content", RuleID: "word", Enabled: true, Pattern: strp("hel*"), Actions: []byte(`["notify", {"set_tweak": "sound", "value": "word"}]`)},
	}
	if r := Evaluate(Compile(rules, nil), ev, &ctx); r.RuleID != "word" || r.Sound != "word" {
		t.Errorf("content before room: %+v", r)
	}
	if r := Evaluate(Compile(rules[:2], nil), ev, &ctx); r.RuleID != "!room:example.org" || r.Sound != "room" {
		t.Errorf("room before sender: %+v", r)
	}
	if r := Evaluate(Compile(rules[:1], nil), ev, &ctx); r.RuleID != "@bob:example.org" || r.Notify {
		t.Errorf("sender rule: %+v", r)
	}
	// Room and sender rules compare ids exactly.
	other, err := NewEvent("m.room.message", "@BOB:example.org", "!ROOM:example.org", "", nil, json.RawMessage(`{"body": "x"}`))
	if err != nil {
		t.Fatal(err)
	}
	if r := Evaluate(Compile(rules[:2], nil), other, &ctx); r.RuleID != ".m.rule.message" {
		t.Errorf("room/sender rules matched other ids: %+v", r)
	}
	// Disabled rules never match; changed actions apply.
	settings := []sql.PushRuleSetting{
		{Kind: "underride", RuleID: ".m.rule.message", Enabled: &off},
		{Kind: "underride", RuleID: ".m.rule.encrypted", Actions: []byte(`["notify", {"set_tweak": "highlight"}]`)},
	}
	c := Compile(nil, settings)
	if r := Evaluate(c, ev, &ctx); r.RuleID != "" || r.Notify {
		t.Errorf("disabled .m.rule.message: %+v", r)
	}
	if r := Evaluate(c, event(t, "m.room.encrypted", nil, `{}`), &ctx); !r.Highlight {
		t.Errorf("changed actions of .m.rule.encrypted: %+v", r)
	}
	disabledUser := []sql.PushRule{{Kind: "override", RuleID: "mine", Enabled: false, Conditions: []byte(`[]`), Actions: []byte(`[]`)}}
	if r := Evaluate(Compile(disabledUser, nil), ev, &ctx); r.RuleID != ".m.rule.message" {
		t.Errorf("disabled user rule matched: %+v", r)
	}
}

func TestBuild(t *testing.T) {
	user := []sql.PushRule{
		{Kind: "override", RuleID: "o1", Enabled: true, Conditions: []byte(`[{"kind":"org.example.x","foo":1}]`), Actions: []byte(`[]`)},
		{Kind: "override", RuleID: "o2", Enabled: false, Actions: []byte(`["notify"]`)},
		{Kind: "content", RuleID: "c1", Enabled: true, Pattern: strp("cake*lie"), Actions: []byte(`["notify"]`)},
		{Kind: "room", RuleID: "!r:example.org", Enabled: true, Actions: []byte(`[]`)},
	}
	off := false
	rs := Build("@al\"ice:example.org", user, []sql.PushRuleSetting{
		{Kind: "override", RuleID: ".m.rule.suppress_notices", Enabled: &off},
		{Kind: "underride", RuleID: ".m.rule.message", Actions: []byte(`["notify",{"set_tweak":"sound","value":"x"}]`)},
	})
	var ids []string
	for _, r := range rs.Override {
		ids = append(ids, r.RuleID)
	}
	wantOverride := []string{".m.rule.master", "o1", "o2", ".m.rule.suppress_notices", ".m.rule.invite_for_me",
		".m.rule.member_event", ".m.rule.is_user_mention", ".m.rule.contains_display_name", ".m.rule.is_room_mention",
		".m.rule.roomnotif", ".m.rule.tombstone", ".m.rule.reaction", ".m.rule.room.server_acl", ".m.rule.suppress_edits"}
	if !slices.Equal(ids, wantOverride) {
		t.Errorf("override order %v, want %v", ids, wantOverride)
	}
	if rs.Override[1].Default || !rs.Override[0].Default || rs.Override[2].Enabled {
		t.Errorf("default/enabled flags wrong: %+v", rs.Override[:3])
	}
	if string(rs.Override[1].Conditions) != `[{"kind":"org.example.x","foo":1}]` {
		t.Errorf("unknown conditions not kept as stored: %s", rs.Override[1].Conditions)
	}
	if string(rs.Override[2].Conditions) != `[]` {
		t.Errorf("override rule without conditions shows %s, want []", rs.Override[2].Conditions)
	}
	if rs.Override[3].Enabled {
		t.Error("setting did not disable .m.rule.suppress_notices")
	}
	// Placeholders are replaced, JSON-escaped.
	invite, _ := rs.Find(Override, ".m.rule.invite_for_me")
	if !strings.Contains(string(invite.Conditions), `"pattern":"@al\"ice:example.org"`) {
		t.Errorf("invite_for_me conditions %s", invite.Conditions)
	}
	mention, _ := rs.Find(Override, ".m.rule.is_user_mention")
	if !strings.Contains(string(mention.Conditions), `"value":"@al\"ice:example.org"`) {
		t.Errorf("is_user_mention conditions %s", mention.Conditions)
	}
	if len(rs.Content) != 2 || rs.Content[0].RuleID != "c1" || rs.Content[1].RuleID != ".m.rule.contains_user_name" ||
		*rs.Content[1].Pattern != `al"ice` || rs.Content[1].Conditions != nil {
		t.Errorf("content rules %+v", rs.Content)
	}
	if len(rs.Room) != 1 || rs.Room[0].Conditions != nil || len(rs.Sender) != 0 {
		t.Errorf("room/sender rules %+v %+v", rs.Room, rs.Sender)
	}
	msg, _ := rs.Find(Underride, ".m.rule.message")
	if string(msg.Actions) != `["notify",{"set_tweak":"sound","value":"x"}]` {
		t.Errorf(".m.rule.message actions %s", msg.Actions)
	}
	// The JSON shape: every kind present, room rules without conditions.
	data, _ := json.Marshal(Build(alice, nil, nil))
	var shape map[string][]map[string]any
	if err := json.Unmarshal(data, &shape); err != nil {
		t.Fatal(err)
	}
	for _, k := range Kinds {
		if shape[string(k)] == nil {
			t.Errorf("kind %s missing from %s", k, data)
		}
	}
	for _, r := range shape["underride"] {
		if _, ok := r["conditions"]; !ok || r["default"] != true || r["enabled"] != true {
			t.Errorf("underride rule %v", r)
		}
	}
}
