package push

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/weft-chat/weft/sql"
)

// BenchmarkEvaluate10kMembers evaluates one message for every member of a
// 10,000-member room, as the counter does: the event is flattened once,
// nine members in ten share the compiled defaults and one in ten has rules
// of their own (a muted room, a keyword, a changed default). The metric
// ns/member is what each member costs.
func BenchmarkEvaluate10kMembers(b *testing.B) {
	const members = 10_000
	off := false
	custom := Compile([]sql.PushRule{
		{Kind: "room", RuleID: "!other:example.org", Enabled: true, Actions: []byte(`[]`)},
		{Kind: "content", RuleID: "kw", Enabled: true, Pattern: strp("deploy*"), Actions: []byte(`["notify", {"set_tweak": "highlight"}]`)},
		{Kind: "override", RuleID: "o", Enabled: true, Actions: []byte(`[]`),
			Conditions: []byte(`[{"kind": "event_match", "key": "content.body", "pattern": "spam*"}]`)},
	}, []sql.PushRuleSetting{{Kind: "override", RuleID: ".m.rule.suppress_notices", Enabled: &off}})
	users := make([]string, members)
	rules := make([]*Compiled, members)
	for i := range users {
		users[i] = fmt.Sprintf("@user%d:example.org", i)
		rules[i] = Defaults()
		if i%10 == 0 {
			rules[i] = custom
		}
	}
	content := json.RawMessage(`{"msgtype": "m.text", "body": "The deploy is done, thanks everyone for the help today",
		"format": "org.matrix.custom.html", "formatted_body": "The <b>deploy</b> is done",
		"m.mentions": {"user_ids": ["@user42:example.org"]}}`)
	b.ReportAllocs()
	b.ResetTimer()
	notified := 0
	for b.Loop() {
		ev, err := NewEvent("m.room.message", "@user1:example.org", "!room:example.org", "$ev", nil, content)
		if err != nil {
			b.Fatal(err)
		}
		ctx := Context{MemberCount: members, SenderPower: 0}
		notified = 0
		for i, u := range users {
			ctx.UserID = u
			if Evaluate(rules[i], ev, &ctx).Notify {
				notified++
			}
		}
	}
	if notified != members {
		b.Fatalf("%d of %d members notified", notified, members)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/members, "ns/member")
}
