package federation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// TestToDeviceEDUsSplit: messages are grouped per destination server and
// split into EDUs under MaxEDUBytes, each with its own message_id, every
// user in exactly one; a user whose messages cannot fit one EDU is 413.
func TestToDeviceEDUsSplit(t *testing.T) {
	blob := strings.Repeat("x", 1000)
	msgs := map[string]map[string]json.RawMessage{}
	for i := range 300 {
		msgs[fmt.Sprintf("@u%03d:a.example", i)] = map[string]json.RawMessage{"DEV": json.RawMessage(`{"k":"` + blob + `"}`)}
	}
	msgs["@v:b.example"] = map[string]json.RawMessage{"*": json.RawMessage(`{"k":1}`), "D": json.RawMessage(`{"k":2}`)}
	msgs["@w:skipped.example"] = map[string]json.RawMessage{"D": json.RawMessage(`{}`)}
	msgs["nobody"] = map[string]json.RawMessage{"D": json.RawMessage(`{}`)}
	accept := func(s spec.ServerName) bool { return s != "skipped.example" }

	edus, err := toDeviceEDUs("@alice:ours.example", "m.room_key", msgs, accept)
	if err != nil {
		t.Fatal(err)
	}
	seenUsers := map[string]int{}
	seenIDs := map[string]bool{}
	var dests []spec.ServerName
	for _, e := range edus {
		if len(e.Content) > MaxEDUBytes || e.Type != ToDeviceEDUType {
			t.Fatalf("EDU of %d bytes, type %s", len(e.Content), e.Type)
		}
		var c toDeviceContent
		if err := json.Unmarshal(e.Content, &c); err != nil {
			t.Fatal(err)
		}
		if c.Sender != "@alice:ours.example" || c.Type != "m.room_key" || len(c.MessageID) != 16 || seenIDs[c.MessageID] {
			t.Fatalf("EDU envelope %+v", c)
		}
		seenIDs[c.MessageID] = true
		for u := range c.Messages {
			if s, _ := serverOf(u); s != e.Destination {
				t.Fatalf("%s in an EDU for %s", u, e.Destination)
			}
			seenUsers[u]++
		}
		dests = append(dests, e.Destination)
	}
	if len(seenUsers) != 301 {
		t.Fatalf("%d users sent to, want 301", len(seenUsers))
	}
	for u, n := range seenUsers {
		if n != 1 {
			t.Fatalf("%s in %d EDUs", u, n)
		}
	}
	if n := len(edus); n < 5 || n > 7 {
		t.Fatalf("%d EDUs for 300 KB to a.example and one to b.example", n)
	}
	if !slices.IsSorted(dests) || dests[len(dests)-1] != "b.example" {
		t.Fatalf("destinations in order %v", dests)
	}

	huge := map[string]map[string]json.RawMessage{"@big:a.example": {"D": json.RawMessage(`{"k":"` + strings.Repeat("y", MaxEDUBytes) + `"}`)}}
	var merr *mxhttp.Error
	if _, err := toDeviceEDUs("@alice:ours.example", "m.x", huge, accept); !errors.As(err, &merr) || merr.Status != 413 {
		t.Fatalf("too large: %v", err)
	}
}

// TestToDeviceReceiver: an inbound m.direct_to_device EDU lands in the
// local devices' inboxes (explicit devices and "*"), once per message_id
// and origin; a spoofed sender, a missing message_id or type, and a
// malformed EDU are dropped; users of other servers are left out.
func TestToDeviceReceiver(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		for _, d := range []struct{ lp, dev string }{{"bob", "B1"}, {"bob", "B2"}, {"carol", "C1"}} {
			if err := db.UpsertDevice(ctx, d.lp, d.dev, ""); err != nil {
				t.Fatal(err)
			}
		}
		r := &ToDeviceReceiver{DB: db, ServerName: ours}
		inbox := func(lp, dev string) []string {
			msgs, err := db.ToDeviceMessages(ctx, lp, dev, 0, 1<<62, 100)
			if err != nil {
				t.Fatal(err)
			}
			var out []string
			for _, m := range msgs {
				out = append(out, m.Sender+" "+m.Type+" "+string(m.Content))
			}
			return out
		}
		handle := func(origin spec.ServerName, content string) {
			t.Helper()
			if err := r.Handle(ctx, origin, json.RawMessage(content)); err != nil {
				t.Fatalf("Handle(%s): %v", content, err)
			}
		}
		edu := `{"sender":"@alice:remote.example","type":"m.room_key","message_id":"m1","messages":{
			"@bob:ours.example":{"B1":{"n":1}},
			"@carol:ours.example":{"*":{"n":2}},
			"@dave:elsewhere.example":{"D":{"n":3}},
			"@bob:ours.example:8448":{"B2":{"n":4}}}}`
		handle(remote, edu)
		handle(remote, edu) // the same message_id again: nothing new
		if got := fmt.Sprint(inbox("bob", "B1"), inbox("bob", "B2"), inbox("carol", "C1")); got !=
			`[@alice:remote.example m.room_key {"n":1}] [] [@alice:remote.example m.room_key {"n":2}]` {
			t.Fatalf("inboxes %s", got)
		}
		// The same message_id from another origin is another message.
		handle("other.example", `{"sender":"@eve:other.example","type":"m.x","message_id":"m1","messages":{"@bob:ours.example":{"*":{"n":5}}}}`)
		for _, bad := range []string{
			`{"sender":"@mallory:evil.example","type":"m.x","message_id":"m2","messages":{"@bob:ours.example":{"B1":{}}}}`,
			`{"sender":"@alice:remote.example","type":"m.x","messages":{"@bob:ours.example":{"B1":{}}}}`,
			`{"sender":"@alice:remote.example","message_id":"m3","messages":{"@bob:ours.example":{"B1":{}}}}`,
			`{"sender":"@alice:remote.example","type":"m.x","message_id":"m4","messages":{"@bob:ours.example":{"B1":"not an object"}}}`,
			`{"sender":"@alice:remote.example","type":"m.x","message_id":"m5","messages":[]}`,
			`{"sender":"not a user","type":"m.x","message_id":"m6","messages":{}}`,
		} {
			handle(remote, bad)
		}
		if got := fmt.Sprint(inbox("bob", "B1"), inbox("bob", "B2")); got !=
			`[@alice:remote.example m.room_key {"n":1} @eve:other.example m.x {"n":5}] [@eve:other.example m.x {"n":5}]` {
			t.Fatalf("inboxes after the bad EDUs %s", got)
		}
	})
}
