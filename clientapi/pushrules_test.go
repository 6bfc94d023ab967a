package clientapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/pushrules"

	"github.com/weft-chat/weft/homeserver/hstest"
	"github.com/weft-chat/weft/internal/testclient"
	"github.com/weft-chat/weft/sql/sqltest"
)

// pushResp is a raw response of the push rules tests.
type pushResp struct {
	status int
	body   []byte
}

func (r pushResp) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("body %s: %v", r.body, err)
	}
	return m
}

// pushReq makes a raw request as cli (nil: no token) under
// /_matrix/client/v3; body is sent as is when a string, as JSON otherwise.
func pushReq(t *testing.T, base string, cli *mautrix.Client, method, path string, body any) pushResp {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		data, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, base+"/_matrix/client/v3"+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if cli != nil {
		req.Header.Set("Authorization", "Bearer "+cli.AccessToken)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return pushResp{status: resp.StatusCode, body: data}
}

// expectErr checks a Matrix error response.
func (r pushResp) expectErr(t *testing.T, what string, status int, errcode string) {
	t.Helper()
	if r.status != status {
		t.Errorf("%s: status %d, want %d (%s)", what, r.status, status, r.body)
		return
	}
	if code, _ := r.json(t)["errcode"].(string); code != errcode {
		t.Errorf("%s: errcode %q, want %q (%s)", what, code, errcode, r.body)
	}
}

func (r pushResp) expectOK(t *testing.T, what string) {
	t.Helper()
	if r.status != http.StatusOK {
		t.Fatalf("%s: status %d (%s)", what, r.status, r.body)
	}
}

// ruleIDs lists the rule ids of one kind in a ruleset body.
func ruleIDs(t *testing.T, ruleset map[string]any, kind string) []string {
	t.Helper()
	var ids []string
	rules, _ := ruleset[kind].([]any)
	for _, r := range rules {
		ids = append(ids, r.(map[string]any)["rule_id"].(string))
	}
	return ids
}

func TestPushRulesAPI(t *testing.T) {
	for _, e := range sqltest.Engines() {
		t.Run(string(e), func(t *testing.T) {
			cfg := hstest.Config(t, e)
			cfg.Registration.AllowGuests = true
			srv := hstest.Start(t, cfg)
			base := srv.ClientURL
			ctx := context.Background()
			alice := testclient.Register(t, base, "alice")
			bob := testclient.Register(t, base, "bob")
			do := func(method, path string, body any) pushResp { return pushReq(t, base, alice, method, path, body) }

			// The whole ruleset, through a real client library.
			rs, err := alice.GetPushRules(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(rs.Override) == 0 || rs.Override[0].RuleID != ".m.rule.master" || rs.Override[0].Enabled || !rs.Override[0].Default {
				t.Fatalf("override rules %+v", rs.Override)
			}
			if len(rs.Underride) == 0 || rs.Underride[len(rs.Underride)-1].RuleID != ".m.rule.encrypted" {
				t.Fatalf("underride rules %+v", rs.Underride)
			}
			all := do("GET", "/pushrules/", nil)
			all.expectOK(t, "GET /pushrules/")
			global, _ := all.json(t)["global"].(map[string]any)
			for _, k := range []string{"override", "content", "room", "sender", "underride"} {
				if _, ok := global[k].([]any); !ok {
					t.Errorf("kind %s missing from %s", k, all.body)
				}
			}
			if !strings.Contains(string(all.body), `"pattern":"@alice:`+cfg.ServerName+`"`) ||
				!strings.Contains(string(all.body), `"pattern":"alice"`) {
				t.Errorf("the defaults do not name the user: %s", all.body)
			}
			g := do("GET", "/pushrules/global/", nil)
			g.expectOK(t, "GET /pushrules/global/")
			if !slices.Equal(ruleIDs(t, g.json(t), "override"), ruleIDs(t, global, "override")) {
				t.Error("/pushrules/global/ differs from /pushrules/'s global")
			}

			// One rule, and the errors of the path.
			master := do("GET", "/pushrules/global/override/.m.rule.master", nil)
			master.expectOK(t, "GET master")
			if m := master.json(t); m["rule_id"] != ".m.rule.master" || m["enabled"] != false || m["default"] != true {
				t.Errorf("master %s", master.body)
			}
			do("GET", "/pushrules/global/override/nope", nil).expectErr(t, "GET unknown rule", 404, "M_NOT_FOUND")
			do("GET", "/pushrules/global/content/.m.rule.master", nil).expectErr(t, "GET rule of another kind", 404, "M_NOT_FOUND")
			do("GET", "/pushrules/global/bogus/x", nil).expectErr(t, "GET bad kind", 400, "M_INVALID_PARAM")
			do("GET", "/pushrules/global/bogus/", nil).expectErr(t, "GET bad kind list", 400, "M_INVALID_PARAM")
			do("GET", "/pushrules/device/override/x", nil).expectErr(t, "GET other scope", 404, "M_UNRECOGNIZED")
			do("POST", "/pushrules/global/override/x", "{}").expectErr(t, "POST", 405, "M_UNRECOGNIZED")
			pushReq(t, base, nil, "GET", "/pushrules/", nil).expectErr(t, "no token", 401, "M_MISSING_TOKEN")
			list := do("GET", "/pushrules/global/underride/", nil)
			list.expectOK(t, "GET kind list")
			var underride []map[string]any
			if err := json.Unmarshal(list.body, &underride); err != nil || len(underride) != 5 {
				t.Errorf("underride list %s", list.body)
			}

			// Creating content rules, in order (spec examples).
			if err := alice.PutPushRule(ctx, "global", pushrules.ContentRule, "SSByZWFsbHkgbGlrZSBjYWtl", &mautrix.ReqPutPushRule{
				Pattern: "cake",
				Actions: []*pushrules.PushAction{{Action: pushrules.ActionNotify}, {Action: pushrules.ActionSetTweak, Tweak: pushrules.TweakSound, Value: "cakealarm.wav"}},
			}); err != nil {
				t.Fatal(err)
			}
			do("PUT", "/pushrules/global/content/U3BvbmdlIGNha2UgaXMgYmVzdA?before=SSByZWFsbHkgbGlrZSBjYWtl",
				map[string]any{"pattern": "cake*lie", "actions": []any{"notify"}}).expectOK(t, "PUT before")
			do("PUT", "/pushrules/global/content/last?after=SSByZWFsbHkgbGlrZSBjYWtl",
				map[string]any{"pattern": "x", "actions": []any{"dont_notify"}}).expectOK(t, "PUT after")
			do("PUT", "/pushrules/global/content/first", map[string]any{"pattern": "y", "actions": []any{}}).expectOK(t, "PUT new")
			content := ruleIDs(t, do("GET", "/pushrules/global/", nil).json(t), "content")
			want := []string{"first", "U3BvbmdlIGNha2UgaXMgYmVzdA", "SSByZWFsbHkgbGlrZSBjYWtl", "last", ".m.rule.contains_user_name"}
			if !slices.Equal(content, want) {
				t.Errorf("content rules %v, want %v", content, want)
			}
			cake, err := alice.GetPushRule(ctx, "global", pushrules.ContentRule, "SSByZWFsbHkgbGlrZSBjYWtl")
			if err != nil || cake.Pattern != "cake" || cake.Default || !cake.Enabled || len(cake.Actions) != 2 {
				t.Errorf("cake rule %+v, %v", cake, err)
			}
			// Historical actions are stripped.
			if a := do("GET", "/pushrules/global/content/last/actions", nil); a.status != 200 || string(a.body) != `{"actions":[]}` {
				t.Errorf("actions of a dont_notify rule: %d %s", a.status, a.body)
			}

			// Bad puts.
			putRule := map[string]any{"actions": []any{"notify"}, "conditions": []any{}}
			do("PUT", "/pushrules/global/override/.mine", putRule).expectErr(t, "PUT dot rule", 400, "M_INVALID_PARAM")
			do("PUT", "/pushrules/global/override/.m.rule.master", putRule).expectErr(t, "PUT over a default rule", 400, "M_INVALID_PARAM")
			do("PUT", "/pushrules/global/override/a%2Fb", putRule).expectErr(t, "PUT slash", 400, "M_INVALID_PARAM")
			do("PUT", "/pushrules/global/override/a%5Cb", putRule).expectErr(t, "PUT backslash", 400, "M_INVALID_PARAM")
			do("PUT", "/pushrules/global/nope/x", putRule).expectErr(t, "PUT bad kind", 400, "M_INVALID_PARAM")
			do("PUT", "/pushrules/global/room/not-a-room", putRule).expectErr(t, "PUT room rule for no room", 400, "M_INVALID_PARAM")
			do("PUT", "/pushrules/global/sender/not-a-user", putRule).expectErr(t, "PUT sender rule for no user", 400, "M_INVALID_PARAM")
			do("PUT", "/pushrules/global/override/x?before=nope", putRule).expectErr(t, "PUT before unknown", 400, "M_UNKNOWN")
			do("PUT", "/pushrules/global/override/x?after=nope", putRule).expectErr(t, "PUT after unknown", 400, "M_UNKNOWN")
			do("PUT", "/pushrules/global/override/x?before=.m.rule.master", putRule).expectErr(t, "PUT before default", 400, "M_INVALID_PARAM")
			do("PUT", "/pushrules/global/override/x", map[string]any{"conditions": []any{}}).expectErr(t, "PUT no actions", 400, "M_MISSING_PARAM")
			do("PUT", "/pushrules/global/override/x", map[string]any{"actions": []any{"boom"}}).expectErr(t, "PUT bad action", 400, "M_BAD_JSON")
			do("PUT", "/pushrules/global/override/x", map[string]any{"actions": "notify"}).expectErr(t, "PUT actions not an array", 400, "M_BAD_JSON")
			do("PUT", "/pushrules/global/override/x", map[string]any{"actions": []any{}, "conditions": []any{map[string]any{"key": "type"}}}).
				expectErr(t, "PUT condition without kind", 400, "M_BAD_JSON")
			do("PUT", "/pushrules/global/override/x", map[string]any{"actions": []any{}, "conditions": "x"}).
				expectErr(t, "PUT conditions not an array", 400, "M_BAD_JSON")
			do("PUT", "/pushrules/global/content/x", map[string]any{"actions": []any{}}).expectErr(t, "PUT content without pattern", 400, "M_MISSING_PARAM")
			do("PUT", "/pushrules/global/content/x", map[string]any{"actions": []any{}, "pattern": 5}).expectErr(t, "PUT pattern not a string", 400, "M_BAD_JSON")
			do("PUT", "/pushrules/global/override/x", "{not json").expectErr(t, "PUT not JSON", 400, "M_NOT_JSON")
			do("PUT", "/pushrules/global/override/x", "[]").expectErr(t, "PUT array body", 400, "M_BAD_JSON")
			if ids := ruleIDs(t, do("GET", "/pushrules/global/", nil).json(t), "override"); slices.Contains(ids, "x") {
				t.Error("a refused rule was stored")
			}

			// Override rules with conditions (spec example), room and
			// sender rules with ids that need escaping.
			beer := map[string]any{
				"conditions": []any{
					map[string]any{"kind": "event_match", "key": "content.body", "pattern": "beer"},
					map[string]any{"kind": "room_member_count", "is": "<=10"},
					map[string]any{"kind": "org.example.future", "extra": true},
				},
				"actions": []any{"notify", map[string]any{"set_tweak": "sound", "value": "beeroclock.wav"}},
			}
			do("PUT", "/pushrules/global/override/U2VlIHlvdSBpbiBUaGUgRHVrZQ", beer).expectOK(t, "PUT override")
			got := do("GET", "/pushrules/global/override/U2VlIHlvdSBpbiBUaGUgRHVrZQ", nil)
			got.expectOK(t, "GET override")
			if !strings.Contains(string(got.body), `{"extra":true,"kind":"org.example.future"}`) {
				t.Errorf("conditions not kept as sent: %s", got.body)
			}
			override := ruleIDs(t, do("GET", "/pushrules/global/", nil).json(t), "override")
			if len(override) < 3 || override[0] != ".m.rule.master" || override[1] != "U2VlIHlvdSBpbiBUaGUgRHVrZQ" || override[2] != ".m.rule.suppress_notices" {
				t.Errorf("user override rules go after the master rule and before the other defaults: %v", override)
			}
			do("PUT", "/pushrules/global/override/bare", map[string]any{"actions": []any{}}).expectOK(t, "PUT override without conditions")
			if b := do("GET", "/pushrules/global/override/bare", nil).json(t); b["conditions"] == nil {
				t.Errorf("override rule without conditions shows none: %v", b)
			}
			roomID := "!dj234r78wl45Gh4D:matrix.org"
			do("PUT", "/pushrules/global/room/"+url.PathEscape(roomID), map[string]any{"actions": []any{}}).expectOK(t, "PUT room rule")
			do("PUT", "/pushrules/global/sender/"+url.PathEscape("@spambot:matrix.org"), map[string]any{"actions": []any{}}).expectOK(t, "PUT sender rule")
			if r := do("GET", "/pushrules/global/room/"+url.PathEscape(roomID), nil).json(t); r["rule_id"] != roomID || r["conditions"] != nil {
				t.Errorf("room rule %v", r)
			}

			// Updating keeps the enabled state and the place.
			do("PUT", "/pushrules/global/content/first/enabled", map[string]any{"enabled": false}).expectOK(t, "disable")
			do("PUT", "/pushrules/global/content/first", map[string]any{"pattern": "z", "actions": []any{"notify"}}).expectOK(t, "update")
			if r := do("GET", "/pushrules/global/content/first", nil).json(t); r["enabled"] != false || r["pattern"] != "z" {
				t.Errorf("updated rule %v", r)
			}
			if c := ruleIDs(t, do("GET", "/pushrules/global/", nil).json(t), "content"); c[0] != "first" {
				t.Errorf("update moved the rule: %v", c)
			}

			// enabled.
			if r := do("GET", "/pushrules/global/underride/.m.rule.message/enabled", nil); r.status != 200 || string(r.body) != `{"enabled":true}` {
				t.Errorf("enabled of .m.rule.message: %d %s", r.status, r.body)
			}
			if err := alice.SetPushRuleEnabled(ctx, "global", pushrules.UnderrideRule, ".m.rule.message", false); err != nil {
				t.Fatal(err)
			}
			if r := do("GET", "/pushrules/global/underride/.m.rule.message/enabled", nil); string(r.body) != `{"enabled":false}` {
				t.Errorf("enabled after disabling: %s", r.body)
			}
			do("PUT", "/pushrules/global/override/.m.rule.master/enabled", map[string]any{"enabled": true}).expectOK(t, "enable master")
			if r := do("GET", "/pushrules/global/override/.m.rule.master", nil).json(t); r["enabled"] != true || r["default"] != true {
				t.Errorf("master after enabling %v", r)
			}
			do("GET", "/pushrules/global/override/nope/enabled", nil).expectErr(t, "GET enabled unknown", 404, "M_NOT_FOUND")
			do("PUT", "/pushrules/global/override/nope/enabled", map[string]any{"enabled": true}).expectErr(t, "PUT enabled unknown", 404, "M_NOT_FOUND")
			do("PUT", "/pushrules/global/override/.m.rule.nope/enabled", map[string]any{"enabled": true}).expectErr(t, "PUT enabled unknown default", 404, "M_NOT_FOUND")
			do("PUT", "/pushrules/global/content/.m.rule.master/enabled", map[string]any{"enabled": true}).expectErr(t, "PUT enabled default of another kind", 404, "M_NOT_FOUND")
			do("PUT", "/pushrules/global/override/.m.rule.master/enabled", map[string]any{}).expectErr(t, "PUT enabled missing", 400, "M_MISSING_PARAM")
			do("PUT", "/pushrules/global/override/.m.rule.master/enabled", map[string]any{"enabled": "yes"}).expectErr(t, "PUT enabled not bool", 400, "M_BAD_JSON")
			do("PUT", "/pushrules/global/nope/x/enabled", map[string]any{"enabled": true}).expectErr(t, "PUT enabled bad kind", 400, "M_INVALID_PARAM")

			// actions, of a default rule and of the user's.
			do("PUT", "/pushrules/global/underride/.m.rule.call/actions",
				map[string]any{"actions": []any{"notify", map[string]any{"set_tweak": "highlight"}}}).expectOK(t, "PUT default actions")
			if r := do("GET", "/pushrules/global/underride/.m.rule.call/actions", nil); string(r.body) != `{"actions":["notify",{"set_tweak":"highlight"}]}` {
				t.Errorf("actions of .m.rule.call: %s", r.body)
			}
			if r := do("GET", "/pushrules/global/underride/.m.rule.call", nil).json(t); r["default"] != true || r["enabled"] != true {
				t.Errorf(".m.rule.call after new actions %v", r)
			}
			do("PUT", "/pushrules/global/room/"+url.PathEscape(roomID)+"/actions", map[string]any{"actions": []any{"notify"}}).expectOK(t, "PUT user rule actions")
			if r := do("GET", "/pushrules/global/room/"+url.PathEscape(roomID)+"/actions", nil); string(r.body) != `{"actions":["notify"]}` {
				t.Errorf("actions of the room rule: %s", r.body)
			}
			do("GET", "/pushrules/global/room/nope/actions", nil).expectErr(t, "GET actions unknown", 404, "M_NOT_FOUND")
			do("PUT", "/pushrules/global/room/nope/actions", map[string]any{"actions": []any{}}).expectErr(t, "PUT actions unknown", 404, "M_NOT_FOUND")
			do("PUT", "/pushrules/global/underride/.m.rule.call/actions", map[string]any{}).expectErr(t, "PUT actions missing", 400, "M_MISSING_PARAM")
			do("PUT", "/pushrules/global/underride/.m.rule.call/actions", map[string]any{"actions": []any{5}}).expectErr(t, "PUT actions bad", 400, "M_BAD_JSON")

			// Deleting.
			if err := alice.DeletePushRule(ctx, "global", pushrules.ContentRule, "last"); err != nil {
				t.Fatal(err)
			}
			do("GET", "/pushrules/global/content/last", nil).expectErr(t, "GET deleted", 404, "M_NOT_FOUND")
			do("DELETE", "/pushrules/global/content/last", nil).expectErr(t, "DELETE again", 404, "M_NOT_FOUND")
			do("DELETE", "/pushrules/global/override/.m.rule.master", nil).expectErr(t, "DELETE default", 400, "M_INVALID_PARAM")
			do("DELETE", "/pushrules/global/override/.m.rule.nope", nil).expectErr(t, "DELETE dot rule", 400, "M_INVALID_PARAM")
			do("DELETE", "/pushrules/global/nope/x", nil).expectErr(t, "DELETE bad kind", 400, "M_INVALID_PARAM")

			// Every change is also the m.push_rules account data event.
			ad := do("GET", "/user/"+url.PathEscape(alice.UserID.String())+"/account_data/m.push_rules", nil)
			ad.expectOK(t, "m.push_rules account data")
			adGlobal, _ := ad.json(t)["global"].(map[string]any)
			if !slices.Equal(ruleIDs(t, adGlobal, "content"), ruleIDs(t, do("GET", "/pushrules/global/", nil).json(t), "content")) {
				t.Errorf("m.push_rules account data is not the current ruleset: %s", ad.body)
			}

			// Before any change of theirs, the account data is the live
			// ruleset too.
			bobAD := pushReq(t, base, bob, "GET", "/user/"+url.PathEscape(bob.UserID.String())+"/account_data/m.push_rules", nil)
			bobAD.expectOK(t, "bob's m.push_rules")
			if g, _ := bobAD.json(t)["global"].(map[string]any); len(ruleIDs(t, g, "underride")) != 5 {
				t.Errorf("bob's m.push_rules account data: %s", bobAD.body)
			}

			// Rules are per user.
			bobRules := pushReq(t, base, bob, "GET", "/pushrules/global/", nil)
			bobRules.expectOK(t, "bob's rules")
			if c := ruleIDs(t, bobRules.json(t), "content"); !slices.Equal(c, []string{".m.rule.contains_user_name"}) {
				t.Errorf("bob sees %v", c)
			}
			if !strings.Contains(string(bobRules.body), `"pattern":"bob"`) {
				t.Errorf("bob's defaults do not name bob: %s", bobRules.body)
			}
			pushReq(t, base, bob, "GET", "/pushrules/global/content/first", nil).expectErr(t, "bob reads alice's rule", 404, "M_NOT_FOUND")

			// Guests may not use push rules (as in Synapse).
			guest := testclient.RegisterGuest(t, base)
			pushReq(t, base, guest, "GET", "/pushrules/", nil).expectErr(t, "guest GET", 403, "M_GUEST_ACCESS_FORBIDDEN")
			pushReq(t, base, guest, "PUT", "/pushrules/global/content/x", map[string]any{"pattern": "x", "actions": []any{}}).
				expectErr(t, "guest PUT", 403, "M_GUEST_ACCESS_FORBIDDEN")
			pushReq(t, base, guest, "PUT", "/pushrules/global/override/.m.rule.master/enabled", map[string]any{"enabled": true}).
				expectErr(t, "guest PUT enabled", 403, "M_GUEST_ACCESS_FORBIDDEN")
		})
	}
}
