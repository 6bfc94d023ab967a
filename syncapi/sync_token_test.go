package syncapi

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/weft-chat/weft/internal/mxhttp"
)

func TestSyncTokenRoundTrip(t *testing.T) {
	for _, c := range []struct {
		in   string
		want SyncToken
	}{
		{"s0_0", SyncToken{}},
		{"s12_34", SyncToken{Events: 12, AccountData: 34}},
		{"s12", SyncToken{Events: 12}}, // older: missing streams read as 0
		{"s12_34_56_78", SyncToken{Events: 12, AccountData: 34, Receipts: 56, Typing: 78}},
		{"s1_2_3_4_5_6_7_8_9", SyncToken{1, 2, 3, 4, 5, 6, 7, 8}}, // newer: unknown streams ignored
	} {
		got, err := ParseSyncToken(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseSyncToken(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
	}
	tok := SyncToken{Events: 7, AccountData: 9, ToDevice: 3, Notifications: 11}
	if tok.String() != "s7_9_0_0_0_3_0_11" {
		t.Errorf("String() = %q", tok.String())
	}
	if back, err := ParseSyncToken(tok.String()); err != nil || back != tok {
		t.Errorf("round trip of %+v: %+v %v", tok, back, err)
	}
	// A sync token is a stream token of the timeline endpoints too.
	if pt, err := ParseToken(tok.String()); err != nil || !pt.IsStream || pt.Stream != 7 {
		t.Errorf("ParseToken(%q) = %+v, %v", tok.String(), pt, err)
	}
	for _, bad := range []string{"", "s", "s_1", "s1__2", "t1_2", "x1_2", "s-1_0", "s1_+2", "s99999999999999999999_0", "s1_2 "} {
		_, err := ParseSyncToken(bad)
		var me *mxhttp.Error
		if !errors.As(err, &me) || me.Status != 400 || me.Code != "M_INVALID_PARAM" {
			t.Errorf("ParseSyncToken(%q): %v, want 400 M_INVALID_PARAM", bad, err)
		}
	}
}

func TestSplitFieldPath(t *testing.T) {
	for in, want := range map[string][]string{
		"type":                       {"type"},
		"content.body":               {"content", "body"},
		`content.m\.relates_to.type`: {"content", "m.relates_to", "type"},
		`a\\.b`:                      {`a\`, "b"},
		`a\b`:                        {`a\b`},
	} {
		if got := splitFieldPath(in); !slices.Equal(got, want) {
			t.Errorf("splitFieldPath(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestCopyPath(t *testing.T) {
	src := map[string]any{"content": map[string]any{"body": "x", "n": 1}, "type": "t", "empty": map[string]any{}}
	dst := map[string]any{}
	for _, p := range [][]string{{"content", "body"}, {"content", "missing"}, {"type", "deeper"}, {"empty"}, {"nope"}} {
		copyPath(src, dst, p)
	}
	want := map[string]any{"content": map[string]any{"body": "x"}, "empty": map[string]any{}}
	if fmt.Sprint(dst) != fmt.Sprint(want) {
		t.Errorf("copyPath: %v, want %v", dst, want)
	}
}
