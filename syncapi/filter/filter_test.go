package filter_test

import (
	"errors"
	"testing"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/syncapi/filter"
)

func TestParseAccepts(t *testing.T) {
	// The example of filter.yaml, plus unknown keys (the schema allows them).
	f, err := filter.Parse([]byte(`{
		"room": {
			"state": {"types": ["m.room.*"], "not_rooms": ["!726s6s6q:example.com"], "lazy_load_members": true},
			"timeline": {"limit": 10, "types": ["m.room.message"], "not_rooms": ["!726s6s6q:example.com"],
				"not_senders": ["@spam:example.com"], "contains_url": false},
			"ephemeral": {"types": ["m.receipt", "m.typing"], "not_senders": ["@spam:example.com"]},
			"rooms": [], "include_leave": true
		},
		"presence": {"types": ["m.presence"], "not_senders": ["@alice:example.com"]},
		"account_data": {"limit": 1},
		"event_format": "client",
		"event_fields": ["type", "content", "sender"],
		"org.example.unknown": {"anything": [1, 2]}
	}`))
	if err != nil {
		t.Fatal(err)
	}
	if f.Room.Timeline.Limit == nil || *f.Room.Timeline.Limit != 10 {
		t.Fatalf("timeline limit %v", f.Room.Timeline.Limit)
	}
	if f.Room.Timeline.ContainsURL == nil || *f.Room.Timeline.ContainsURL {
		t.Fatal("contains_url false must be kept apart from absent")
	}
	if f.Room.Rooms == nil || len(f.Room.Rooms) != 0 {
		t.Fatal("rooms: [] (no rooms) must be kept apart from absent (all rooms)")
	}
	if f.Room.State.Rooms != nil || f.Room.State.Limit != nil {
		t.Fatal("absent keys must stay nil")
	}
	if !f.Room.State.LazyLoadMembers || !f.Room.IncludeLeave {
		t.Fatal("booleans lost")
	}
	// A v12 room id has no server name.
	if _, err := filter.Parse([]byte(`{"room":{"rooms":["!abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ"]}}`)); err != nil {
		t.Fatalf("v12 room id: %v", err)
	}
	if _, err := filter.Parse([]byte(`{}`)); err != nil {
		t.Fatalf("empty filter: %v", err)
	}
	if _, err := filter.Parse([]byte(`{"event_format":"federation","room":{"timeline":null}}`)); err != nil {
		t.Fatalf("federation format: %v", err)
	}
}

func TestParseRejects(t *testing.T) {
	for _, c := range []struct {
		name, body, code string
	}{
		{"not json", `{"room":`, "M_NOT_JSON"},
		{"not an object", `[1]`, "M_BAD_JSON"},
		{"room not an object", `{"room":"all"}`, "M_BAD_JSON"},
		{"limit a string", `{"room":{"timeline":{"limit":"10"}}}`, "M_BAD_JSON"},
		{"limit a fraction", `{"room":{"timeline":{"limit":1.5}}}`, "M_BAD_JSON"},
		{"limit zero", `{"room":{"timeline":{"limit":0}}}`, "M_BAD_JSON"},
		{"limit negative", `{"presence":{"limit":-3}}`, "M_BAD_JSON"},
		{"limit huge", `{"account_data":{"limit":1e40}}`, "M_BAD_JSON"},
		{"event_format unknown", `{"event_format":"raw"}`, "M_BAD_JSON"},
		{"event_format not a string", `{"event_format":1}`, "M_BAD_JSON"},
		{"event_fields not strings", `{"event_fields":["type",3]}`, "M_BAD_JSON"},
		{"event_fields not a list", `{"event_fields":"type"}`, "M_BAD_JSON"},
		{"types not strings", `{"room":{"state":{"types":[true]}}}`, "M_BAD_JSON"},
		{"bad room id", `{"room":{"rooms":["#alias:example.com"]}}`, "M_BAD_JSON"},
		{"bad not_rooms id", `{"room":{"ephemeral":{"not_rooms":["nope"]}}}`, "M_BAD_JSON"},
		{"bad sender", `{"room":{"timeline":{"senders":["alice"]}}}`, "M_BAD_JSON"},
		{"bad not_sender", `{"presence":{"not_senders":["@alice"]}}`, "M_BAD_JSON"},
		{"include_leave not a boolean", `{"room":{"include_leave":"yes"}}`, "M_BAD_JSON"},
		{"lazy_load_members not a boolean", `{"room":{"state":{"lazy_load_members":1}}}`, "M_BAD_JSON"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := filter.Parse([]byte(c.body))
			var me *mxhttp.Error
			if !errors.As(err, &me) || me.Code != c.code || me.Status != 400 {
				t.Fatalf("%s: got %v, want 400 %s", c.body, err, c.code)
			}
		})
	}
}
