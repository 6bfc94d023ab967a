package roomserver

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/serverkey"
)

// buildFast must give exactly the event gomatrixserverlib's Build gives:
// the same JSON bytes (so the same hashes and signature) and the same
// event id, in every room version it covers, and leave the rest to Build.
func TestBuildFastMatchesBuild(t *testing.T) {
	key, err := serverkey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	now := time.UnixMilli(1_700_000_000_123)
	contents := []string{
		`{}`,
		`{"msgtype":"m.text","body":"hello"}`,
		` { "b" : 1 , "a" : [ 1, 2, { "z": null, "y": true, "x": false } ], "c": {} } `,
		`{"body":"<b>tom & jerry</b> \u003cscript\u003e"}`,
		`{"body":"héllo 😀 \u00e9 \u2028 \u2029 \u0001 \u001f \n\t\r\b\f \"quoted\" \\ \/ end"}`,
		`{"\u006d.relates_to":{"rel_type":"m.thread","event_id":"$parent"},"ünïcode key":"v"}`,
		`{"n":9007199254740991,"m":-9007199254740991,"z":0,"neg":-12}`,
		`{"n":1.5}`,              // refused from version 6 on
		`{"n":1e3}`,              // ditto
		`{"n":9007199254740992}`, // out of range from version 6 on
		`{"nested":{"deeper":{"deepest":["a",{"k":"v"}]}}}`,
		`[]`, `"text"`, `{`, `{"a":1}x`,
	}
	stateKey := func(s string) *string { return &s }
	events := []struct {
		typ      string
		stateKey *string
		fast     bool // whether buildFast takes it (for a covered version and content)
	}{
		{"m.room.message", nil, true},
		{"m.reaction", nil, true},
		{"com.example.custom <&>", nil, true},
		{"m.room.encrypted", nil, true},
		{"m.room.name", stateKey(""), true},
		{"m.room.topic", stateKey(""), true},
		{"com.example.state", stateKey("@alice:test.local"), true},
		{"com.example.state", stateKey(`with "quote"`), false},
		{"com.example.ünicode", nil, false},
		{"m.room.member", stateKey("@alice:test.local"), false},
		{"m.room.power_levels", stateKey(""), false},
		{"m.room.join_rules", stateKey(""), false},
		{"m.room.history_visibility", stateKey(""), false},
		{"m.room.redaction", nil, false},
		{"m.room.aliases", stateKey("test.local"), false},
	}
	matched := 0
	for _, ver := range []gomatrixserverlib.RoomVersion{"1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"} {
		verImpl := gomatrixserverlib.MustGetRoomVersion(ver)
		covered := verImpl.EventFormat() == gomatrixserverlib.EventFormatV2
		for ei, e := range events {
			for ci, c := range contents {
				t.Run(fmt.Sprintf("v%s/%d/%d", ver, ei, ci), func(t *testing.T) {
					proto := gomatrixserverlib.ProtoEvent{SenderID: "@alice:test.local", RoomID: "!room:test.local", Type: e.typ,
						StateKey: e.stateKey, Content: spec.RawJSON(c), PrevEvents: []string{"$prev1", "$prev2"}, Depth: 42, Version: verImpl}
					b := verImpl.NewEventBuilderFromProtoEvent(&proto)
					if covered {
						b.AuthEvents = []string{"$auth1", "$auth2", "$auth3"}
					}
					want, wantErr := b.Build(now, "test.local", key.ID, key.Private)
					got, ok, gotErr := buildFast(b, verImpl, now, "test.local", key.ID, key.Private)
					if !ok {
						if covered && e.fast && wantErr == nil && (c[0] == '{' || c[0] == ' ') {
							t.Fatalf("left to Build: %s", want.JSON())
						}
						return
					}
					if !covered || !e.fast {
						t.Fatalf("took an event it must leave to Build")
					}
					if (gotErr == nil) != (wantErr == nil) {
						t.Fatalf("error %v, Build's %v", gotErr, wantErr)
					}
					if wantErr != nil {
						return
					}
					if !bytes.Equal(got.JSON(), want.JSON()) {
						t.Fatalf("JSON differs:\n got  %s\n want %s", got.JSON(), want.JSON())
					}
					if got.EventID() != want.EventID() {
						t.Fatalf("event id %s, Build's %s", got.EventID(), want.EventID())
					}
					// And it is a valid event, as a remote server would see it.
					if _, err := verImpl.NewEventFromUntrustedJSON(got.JSON()); err != nil {
						t.Fatalf("not valid as received over federation: %v", err)
					}
					matched++
				})
			}
		}
	}
	// Ten versions, seven event types, the contents every version takes.
	if want := 10 * 7 * 8; matched < want {
		t.Fatalf("%d events built the fast way, want at least %d", matched, want)
	}
}
