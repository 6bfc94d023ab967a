package push

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/weft-chat/weft/sql"
)

func strp(s string) *string { return &s }

// event flattens a test event; content is JSON.
func event(t testing.TB, typ string, stateKey *string, content string) *Event {
	t.Helper()
	ev, err := NewEvent(typ, "@bob:example.org", "!room:example.org", "$ev", stateKey, json.RawMessage(content))
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

// condRules compiles one override rule with the given conditions (JSON).
func condRules(t testing.TB, conditions string) *Compiled {
	t.Helper()
	return Compile([]sql.PushRule{{Kind: "override", RuleID: "test", Enabled: true,
		Conditions: []byte(conditions), Actions: []byte(`["notify"]`)}}, masterOnly())
}

// masterOnly disables every default rule but the (already disabled)
// master, so a test rule is evaluated alone.
func masterOnly() []sql.PushRuleSetting {
	off := false
	var s []sql.PushRuleSetting
	for _, k := range Kinds {
		for _, r := range defaultRules.Of(k) {
			s = append(s, sql.PushRuleSetting{Kind: string(k), RuleID: r.RuleID, Enabled: &off})
		}
	}
	return s
}

func matched(rules *Compiled, ev *Event, ctx *Context) bool {
	if ctx == nil {
		ctx = &Context{UserID: "@alice:example.org"}
	}
	return Evaluate(rules, ev, ctx).RuleID == "test"
}

func TestGlob(t *testing.T) {
	cases := []struct {
		pattern, value string
		want           bool
	}{
		// Spec, event_match: key content.topic, pattern lunc?*.
		{"lunc?*", "Lunch plans", true},
		{"lunc?*", "LUNCH", true},
		{"lunc?*", " lunch", false},
		{"lunc?*", "lunc", false},
		{"", "", true},
		{"", "a", false},
		{"*", "", true},
		{"*", "anything at all", true},
		{"?", "", false},
		{"?", "é", true}, // one character, two bytes
		{"??", "é", false},
		{"a*b*c", "aXXbYYc", true},
		{"a*b*c", "aXXbYY", false},
		{"a*b", "abab", true},
		{"*a*a*a*a*b", strings.Repeat("a", 40), false}, // backtracking stays polynomial
		{"m.room.*", "m.room.message", true},
		{"m.room.*", "m.roomy", false},
		{"[a]", "[a]", true}, // no character classes in Matrix globs
		{"a.c", "abc", false},
	}
	for _, c := range cases {
		g := compileGlob(c.pattern, false)
		if got := g.match(strings.ToLower(c.value)); got != c.want {
			t.Errorf("glob %q on %q = %v, want %v", c.pattern, c.value, got, c.want)
		}
	}
}

func TestGlobWordBoundaries(t *testing.T) {
	cases := []struct {
		pattern, body string
		want          bool
	}{
		// Spec, event_match on content.body: pattern ex*ple.
		{"ex*ple", "An example event.", true},
		{"ex*ple", "exple", true},
		{"ex*ple", "An exciting triple-whammy", true},
		{"ex*ple", "examples", false},
		{"cake", "I like cake!", true},
		{"cake", "CAKE", true},
		{"cake", "cakes", false},
		{"cake", "pancake", false},
		{"cake", "pan_cake", false}, // _ is a word character
		{"cake", "pan-cake", true},
		{"cake", "ücake", true}, // non-ASCII characters are boundaries
		{"@room", "hi @room", true},
		{"@room", "hi@room", false},
		{"@room", "@roomy", false},
		{"c?ke", "a coke.", true},
		{"c?ke", "a cooke.", false},
		{"cake*lie", "the cake is a lie", true},
		{"cake*lie", "the cake is a lie\nreally", true},
	}
	for _, c := range cases {
		g := compileGlob(c.pattern, true)
		if got := g.match(strings.ToLower(c.body)); got != c.want {
			t.Errorf("body glob %q on %q = %v, want %v", c.pattern, c.body, got, c.want)
		}
		// The same through a content rule and an event_match condition.
		rules := condRules(t, `[{"kind": "event_match", "key": "content.body", "pattern": `+jsonString(c.pattern)+`}]`)
		if got := matched(rules, event(t, "m.room.message", nil, `{"body": `+jsonString(c.body)+`}`), nil); got != c.want {
			t.Errorf("event_match content.body %q on %q = %v, want %v", c.pattern, c.body, got, c.want)
		}
	}
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func TestEventMatch(t *testing.T) {
	topic := condRules(t, `[{"kind": "event_match", "key": "content.topic", "pattern": "lunc?*"}]`)
	for content, want := range map[string]bool{
		`{"topic": "Lunch plans"}`: true,
		`{"topic": "LUNCH"}`:       true,
		`{"topic": " lunch"}`:      false,
		`{"topic": "lunc"}`:        false,
		`{"topic": null}`:          false, // not a string
		`{}`:                       false,
	} {
		if got := matched(topic, event(t, "m.room.topic", strp(""), content), nil); got != want {
			t.Errorf("lunc?* on %s = %v, want %v", content, got, want)
		}
	}
	// Absent or non-string values never match, even "*" (spec).
	star := condRules(t, `[{"kind": "event_match", "key": "content.n", "pattern": "*"}]`)
	for content, want := range map[string]bool{`{"n": 1}`: false, `{"n": true}`: false, `{"n": ["a"]}`: false,
		`{"n": {"a": "b"}}`: false, `{}`: false, `{"n": ""}`: true} {
		if got := matched(star, event(t, "m.room.message", nil, content), nil); got != want {
			t.Errorf("* on %s = %v, want %v", content, got, want)
		}
	}
	// Top-level keys.
	typ := condRules(t, `[{"kind": "event_match", "key": "type", "pattern": "M.ROOM.*"}]`)
	if !matched(typ, event(t, "m.room.message", nil, `{}`), nil) {
		t.Error("type glob did not match")
	}
	sk := condRules(t, `[{"kind": "event_match", "key": "state_key", "pattern": ""}]`)
	if matched(sk, event(t, "m.room.message", nil, `{}`), nil) {
		t.Error("state_key matched a message event, which has none")
	}
	if !matched(sk, event(t, "m.room.name", strp(""), `{}`), nil) {
		t.Error("state_key \"\" did not match")
	}
	// Missing key or pattern: the condition never matches.
	for _, c := range []string{`[{"kind": "event_match", "key": "type"}]`, `[{"kind": "event_match", "pattern": "*"}]`,
		`[{"kind": "event_match", "key": "type", "pattern": 3}]`} {
		if matched(condRules(t, c), event(t, "m.room.message", nil, `{}`), nil) {
			t.Errorf("malformed %s matched", c)
		}
	}
}

func TestDottedKeyEscaping(t *testing.T) {
	cases := []struct {
		key, content string
		want         bool
	}{
		{`content.m\.relates_to.rel_type`, `{"m.relates_to": {"rel_type": "x"}}`, true},
		{`content.m.relates_to.rel_type`, `{"m.relates_to": {"rel_type": "x"}}`, false},
		{`content.m.relates_to.rel_type`, `{"m": {"relates_to": {"rel_type": "x"}}}`, true},
		{`content.m\.relates_to.rel_type`, `{"m": {"relates_to": {"rel_type": "x"}}}`, false},
		// Spec: a property m\foo is content.m\\foo.
		{`content.m\\foo`, `{"m\\foo": "x"}`, true},
		// Other escapes are literal: \x is a backslash and an x.
		{`content.m\x`, `{"m\\x": "x"}`, true},
		{`content.m\x`, `{"mx": "x"}`, false},
		// A trailing backslash is literal too.
		{`content.a\`, `{"a\\": "x"}`, true},
		{`content.a\\.b`, `{"a\\": {"b": "x"}}`, true},
		{`content.a\\\.b`, `{"a\\.b": "x"}`, true},
		{`content.`, `{"": "x"}`, true},
	}
	for _, c := range cases {
		rules := condRules(t, `[{"kind": "event_match", "key": `+jsonString(c.key)+`, "pattern": "x"}]`)
		if got := matched(rules, event(t, "m.room.message", nil, c.content), nil); got != c.want {
			t.Errorf("key %s on %s = %v, want %v", c.key, c.content, got, c.want)
		}
	}
}

func TestEventPropertyIs(t *testing.T) {
	// Spec example: content.m\.federate is true.
	federate := condRules(t, `[{"kind": "event_property_is", "key": "content.m\\.federate", "value": true}]`)
	for content, want := range map[string]bool{
		`{"m.federate": true}`:   true,
		`{"m.federate": "true"}`: false, // no casts
		`{"m.federate": 1}`:      false,
		`{"m.federate": false}`:  false,
		`{}`:                     false,
	} {
		if got := matched(federate, event(t, "m.room.create", strp(""), content), nil); got != want {
			t.Errorf("m.federate is true on %s = %v, want %v", content, got, want)
		}
	}
	cases := []struct {
		value, content string
		want           bool
	}{
		{`null`, `{"v": null}`, true},
		{`null`, `{}`, false},
		{`null`, `{"v": "null"}`, false},
		{`5`, `{"v": 5}`, true},
		{`5`, `{"v": 5.0}`, false}, // floats are not canonical JSON
		{`5`, `{"v": "5"}`, false},
		{`-9007199254740991`, `{"v": -9007199254740991}`, true},
		{`"Abc"`, `{"v": "Abc"}`, true},
		{`"Abc"`, `{"v": "abc"}`, false}, // exact, not case-insensitive
		{`"a"`, `{"v": ["a"]}`, false},
		{`["a"]`, `{"v": ["a"]}`, false}, // compound values are not allowed
		{`9007199254740992`, `{"v": 9007199254740992}`, false},
		{`1.5`, `{"v": 1.5}`, false},
	}
	for _, c := range cases {
		rules := condRules(t, `[{"kind": "event_property_is", "key": "content.v", "value": `+c.value+`}]`)
		if got := matched(rules, event(t, "m.room.message", nil, c.content), nil); got != c.want {
			t.Errorf("is %s on %s = %v, want %v", c.value, c.content, got, c.want)
		}
	}
	// No value at all never matches.
	if matched(condRules(t, `[{"kind": "event_property_is", "key": "content.v"}]`), event(t, "m.room.message", nil, `{"v": null}`), nil) {
		t.Error("event_property_is without value matched")
	}
}

func TestEventPropertyContains(t *testing.T) {
	// Spec example: content.alt_aliases contains "#myroom:example.com".
	rules := condRules(t, `[{"kind": "event_property_contains", "key": "content.alt_aliases", "value": "#myroom:example.com"}]`)
	for content, want := range map[string]bool{
		`{"alt_aliases": ["#somewhere:example.org", "#myroom:example.com"]}`: true,
		`{"alt_aliases": [":example.com"]}`:                                  false, // partial values do not match
		`{"alt_aliases": "#myroom:example.com"}`:                             false, // not an array
		`{"alt_aliases": [{"a": 1}, "#myroom:example.com"]}`:                 true,  // compound elements are ignored
		`{}`: false,
	} {
		if got := matched(rules, event(t, "m.room.canonical_alias", strp(""), content), nil); got != want {
			t.Errorf("contains on %s = %v, want %v", content, got, want)
		}
	}
	ints := condRules(t, `[{"kind": "event_property_contains", "key": "content.n", "value": 2}]`)
	if !matched(ints, event(t, "x", nil, `{"n": [1, 2]}`), nil) || matched(ints, event(t, "x", nil, `{"n": ["2"]}`), nil) {
		t.Error("integer contains")
	}
	null := condRules(t, `[{"kind": "event_property_contains", "key": "content.n", "value": null}]`)
	if !matched(null, event(t, "x", nil, `{"n": [null]}`), nil) || matched(null, event(t, "x", nil, `{"n": []}`), nil) {
		t.Error("null contains")
	}
}

func TestContainsDisplayName(t *testing.T) {
	rules := condRules(t, `[{"kind": "contains_display_name"}]`)
	cases := []struct {
		name, body string
		want       bool
	}{
		{"Alice", "hello alice!", true},
		{"Alice", "hello ALICE", true},
		{"Alice", "hello alicette", false},
		{"Alice Smith", "hey Alice Smith, hi", true},
		{"", "hello", false}, // no display name: no match
		{"Zoë", "salut zoë", true},
		{"a.b", "axb", false}, // names are literal, not patterns
		{"a*", "aaa", false},
	}
	for _, c := range cases {
		ctx := &Context{UserID: "@alice:example.org", DisplayName: c.name}
		if got := matched(rules, event(t, "m.room.message", nil, `{"body": `+jsonString(c.body)+`}`), ctx); got != c.want {
			t.Errorf("display name %q in %q = %v, want %v", c.name, c.body, got, c.want)
		}
	}
	if !rules.NeedsDisplayName(event(t, "m.room.message", nil, `{"body": "x"}`)) {
		t.Error("NeedsDisplayName false for a rule with contains_display_name")
	}
	if rules.NeedsDisplayName(event(t, "m.room.message", nil, `{"body": 5}`)) {
		t.Error("NeedsDisplayName true for an event without a string body")
	}
	if Defaults().NeedsDisplayName(event(t, "m.room.message", nil, `{"body": "x", "m.mentions": {}}`)) {
		t.Error("the defaults need display names for events with m.mentions, where the legacy rule is off")
	}
}

func TestRoomMemberCount(t *testing.T) {
	cases := []struct {
		is    string
		count int64
		want  bool
	}{
		{"2", 2, true}, {"2", 3, false}, {"==2", 2, true}, {"==2", 1, false},
		{"<2", 1, true}, {"<2", 2, false}, {">2", 3, true}, {">2", 2, false},
		{"<=10", 10, true}, {"<=10", 11, false}, {">=10", 10, true}, {">=10", 9, false},
		{"", 0, false}, {"=2", 2, false}, {"x", 2, false}, {"<", 0, false}, {"-1", -1, false}, {"+2", 2, false},
	}
	for _, c := range cases {
		rules := condRules(t, `[{"kind": "room_member_count", "is": `+jsonString(c.is)+`}]`)
		ctx := &Context{UserID: "@alice:example.org", MemberCount: c.count}
		if got := matched(rules, event(t, "m.room.message", nil, `{}`), ctx); got != c.want {
			t.Errorf("room_member_count %q with %d = %v, want %v", c.is, c.count, got, c.want)
		}
	}
	if matched(condRules(t, `[{"kind": "room_member_count"}]`), event(t, "x", nil, `{}`), &Context{MemberCount: 0}) {
		t.Error("room_member_count without is matched")
	}
}

func TestSenderNotificationPermission(t *testing.T) {
	rules := condRules(t, `[{"kind": "sender_notification_permission", "key": "room"}]`)
	ev := event(t, "m.room.message", nil, `{}`)
	cases := []struct {
		power  int64
		levels map[string]int64
		want   bool
	}{
		{50, nil, true}, // the default level is 50
		{49, nil, false},
		{0, map[string]int64{"room": 0}, true},
		{99, map[string]int64{"room": 100}, false},
		{100, map[string]int64{"room": 100}, true},
		{50, map[string]int64{"other": 0}, true},
	}
	for _, c := range cases {
		ctx := &Context{UserID: "@alice:example.org", SenderPower: c.power, NotificationPowers: c.levels}
		if got := matched(rules, ev, ctx); got != c.want {
			t.Errorf("power %d levels %v = %v, want %v", c.power, c.levels, got, c.want)
		}
	}
	other := condRules(t, `[{"kind": "sender_notification_permission", "key": "custom"}]`)
	if !matched(other, ev, &Context{SenderPower: 10, NotificationPowers: map[string]int64{"custom": 10}}) {
		t.Error("custom notification key")
	}
}

func TestUnknownConditionNeverMatches(t *testing.T) {
	ev := event(t, "m.room.message", nil, `{"body": "hi"}`)
	for _, c := range []string{
		`[{"kind": "org.example.future"}]`,
		`[{"kind": "event_match", "key": "type", "pattern": "m.room.message"}, {"kind": "nope"}]`,
		`[{}]`,
		`"not an array"`,
	} {
		if matched(condRules(t, c), ev, nil) {
			t.Errorf("conditions %s matched", c)
		}
	}
	if !matched(condRules(t, `[]`), ev, nil) {
		t.Error("a rule without conditions did not match")
	}
}

func TestActions(t *testing.T) {
	cases := []struct {
		actions         string
		notify, highlit bool
		sound           string
	}{
		{`["notify"]`, true, false, ""},
		{`[]`, false, false, ""},
		{`["notify", {"set_tweak": "highlight"}]`, true, true, ""},
		{`["notify", {"set_tweak": "highlight", "value": false}]`, true, false, ""},
		{`["notify", {"set_tweak": "highlight", "value": true}, {"set_tweak": "sound", "value": "ring"}]`, true, true, "ring"},
	}
	for _, c := range cases {
		r := resultOf(Override, "x", json.RawMessage(c.actions))
		if r.Notify != c.notify || r.Highlight != c.highlit || r.Sound != c.sound {
			t.Errorf("%s: got notify %v highlight %v sound %q", c.actions, r.Notify, r.Highlight, r.Sound)
		}
	}
	got, err := NormalizeActions(json.RawMessage(`["dont_notify", "notify", "coalesce", {"set_tweak": "sound", "value": "x"}]`))
	if err != nil || string(got) != `["notify",{"set_tweak":"sound","value":"x"}]` {
		t.Errorf("NormalizeActions stripped to %s, %v", got, err)
	}
	for _, bad := range []string{`["boom"]`, `[{"value": 1}]`, `[{"set_tweak": 5}]`, `[5]`, `{}`, `"notify"`, `null`} {
		if _, err := NormalizeActions(json.RawMessage(bad)); err == nil {
			t.Errorf("NormalizeActions accepted %s", bad)
		}
	}
	if _, err := CheckConditions(json.RawMessage(`[{"kind": "x", "other": 1}]`)); err != nil {
		t.Errorf("unknown condition kind refused: %v", err)
	}
	for _, bad := range []string{`[{"key": "x"}]`, `[5]`, `[null]`, `{}`, `[{"kind": 5}]`} {
		if _, err := CheckConditions(json.RawMessage(bad)); err == nil {
			t.Errorf("CheckConditions accepted %s", bad)
		}
	}
}

// FuzzGlob checks the regexp-free matcher against the regexp translation
// of the same glob, and that flattening and evaluating arbitrary content
// never panics.
func FuzzGlob(f *testing.F) {
	for _, s := range [][2]string{{"lunc?*", "lunch plans"}, {"*a*b", "aab"}, {"?", "é"}, {"a**b", "ab"}, {"", ""}, {"*?*", "x"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, s string) {
		if !utf8.ValidString(pattern) || !utf8.ValidString(s) {
			return
		}
		var b strings.Builder
		b.WriteString(`^(?s)`)
		for _, r := range pattern {
			switch r {
			case '*':
				b.WriteString(`.*`)
			case '?':
				b.WriteString(`.`)
			default:
				b.WriteString(regexp.QuoteMeta(string(r)))
			}
		}
		b.WriteString(`$`)
		if got, want := globMatch(pattern, s), regexp.MustCompile(b.String()).MatchString(s); got != want {
			t.Fatalf("globMatch(%q, %q) = %v, regexp says %v", pattern, s, got, want)
		}
		content, _ := json.Marshal(map[string]any{"body": s, pattern: map[string]any{s: []any{s, 1, nil}}})
		ev, err := NewEvent("m.room.message", "@a:b", "!r:b", "$e", nil, content)
		if err != nil {
			t.Fatal(err)
		}
		rules := Compile([]sql.PushRule{{Kind: "content", RuleID: "c", Enabled: true, Pattern: &pattern, Actions: []byte(`["notify"]`)},
			{Kind: "override", RuleID: "o", Enabled: true, Actions: []byte(`[]`),
				Conditions: []byte(`[{"kind": "event_match", "key": ` + jsonString("content."+pattern) + `, "pattern": ` + jsonString(s) + `}]`)}}, nil)
		Evaluate(rules, ev, &Context{UserID: "@" + s + ":b", DisplayName: pattern})
		Evaluate(Defaults(), ev, &Context{UserID: "@" + s + ":b", DisplayName: pattern})
	})
}
