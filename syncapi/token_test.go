package syncapi

import (
	"errors"
	"testing"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
)

func TestParseToken(t *testing.T) {
	for s, want := range map[string]Token{
		"t0_0":           {},
		"t12_345":        {Topo: sql.TopoPos{Depth: 12, Stream: 345}},
		"s77":            {Stream: 77, IsStream: true},
		"s77_3_whatever": {Stream: 77, IsStream: true},                 // a /sync next_batch
		"t12_-345":       {Topo: sql.TopoPos{Depth: 12, Stream: -345}}, // history fetched by backfill
		"s-1":            {Stream: -1, IsStream: true},                 // a thread list's next_batch there
	} {
		got, err := ParseToken(s)
		if err != nil || got != want {
			t.Errorf("ParseToken(%q) = %+v, %v; want %+v", s, got, err, want)
		}
	}
	for _, s := range []string{"", "t", "t1", "t1_", "t_1", "t-1_2", "t1_+2", "t1_2_3", "t 1_2", "s", "s--1", "s-", "t1_-", "t1_--2", "s+1", "sx", "x1_2",
		"t9223372036854775808_1"} {
		_, err := ParseToken(s)
		var me *mxhttp.Error
		if !errors.As(err, &me) || me.Status != 400 || me.Code != "M_INVALID_PARAM" {
			t.Errorf("ParseToken(%q): %v, want 400 M_INVALID_PARAM", s, err)
		}
	}
}

// FuzzParseToken: any input either fails with M_INVALID_PARAM or is a
// token whose written form reads back the same.
func FuzzParseToken(f *testing.F) {
	for _, s := range []string{"t1_2", "s5", "s5_6", "t", "t0_0", "t9223372036854775807_9223372036854775807"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := ParseToken(s)
		if err != nil {
			var me *mxhttp.Error
			if !errors.As(err, &me) || me.Code != "M_INVALID_PARAM" {
				t.Fatalf("ParseToken(%q): %v", s, err)
			}
			return
		}
		if tok.IsStream || tok.Topo.Depth < 0 {
			return
		}
		again, err := ParseToken(TopoToken(tok.Topo))
		if err != nil || again != tok {
			t.Fatalf("%q reads back as %+v, %v", TopoToken(tok.Topo), again, err)
		}
	})
}

// The token before an event and the event's own boundary split the
// timeline around it.
func TestPrevBatch(t *testing.T) {
	ev := sql.Event{Depth: 7, StreamPos: 40}
	if got := PrevBatch(ev); got != "t7_39" {
		t.Fatalf("PrevBatch = %s", got)
	}
	p := before(ev)
	if !p.Less(ev.Key()) || (sql.TopoPos{Depth: 7, Stream: 39}).Less(p) {
		t.Fatalf("before(%+v) = %+v", ev, p)
	}
}

func TestTypeMatches(t *testing.T) {
	for _, c := range []struct {
		pattern, typ string
		want         bool
	}{
		{"m.room.message", "m.room.message", true},
		{"m.room.message", "m.room.messages", false},
		{"m.room.*", "m.room.message", true},
		{"m.room.*", "m.room.", true},
		{"m.room.*", "m.roomy", false},
		{"*", "anything", true},
		{"*.message", "m.room.message", true},
		{"m.*.message", "m.room.message", true},
		{"m.*.message", "m.message", false},
		{"a*b*c", "abc", true},
		{"a*b*c", "axxbyyc", true},
		{"a*b*c", "acb", false},
		{"a**", "a", true},
	} {
		if got := typeMatches(c.pattern, c.typ); got != c.want {
			t.Errorf("typeMatches(%q, %q) = %v, want %v", c.pattern, c.typ, got, c.want)
		}
	}
}
