package syncapi

import (
	"testing"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/weft-chat/weft/roomserver"
	"github.com/weft-chat/weft/sql"
)

// messageJSON is a stored message event of version 10 with content.
func messageJSON(content string) []byte {
	return []byte(`{"type":"m.room.message","room_id":"!r:test","sender":"@a:test","content":` + content +
		`,"origin_server_ts":1,"depth":1,"prev_events":[],"auth_events":[],"hashes":{"sha256":"x"},"signatures":{}}`)
}

// TestParsedCache: a stored event parses once; once redacted, its row
// (stripped JSON, redacted_by set) parses anew, as redacted, and so does
// the row stripped in memory for a user who ignores its sender.
func TestParsedCache(t *testing.T) {
	p := newParsed(func(string) (sql.Event, gomatrixserverlib.PDU, bool) { return sql.Event{}, nil, false })
	ev := sql.Event{NID: 7, EventID: "$e", RoomVersion: "10",
		JSON: messageJSON(`{"body":"hi"}`)}
	first, err := p.pdu(ev)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := p.pdu(ev); err != nil || again != first {
		t.Errorf("parsed again: %v, %v", again, err)
	}
	redacted := ev
	redacted.RedactedBy = "$r"
	redacted.JSON = messageJSON(`{}`)
	pdu, err := p.pdu(redacted)
	if err != nil {
		t.Fatal(err)
	}
	if pdu == first || !pdu.Redacted() || string(pdu.Content()) != "{}" {
		t.Errorf("the redacted row gave %s (redacted %v)", pdu.Content(), pdu.Redacted())
	}
	stripped := redacted
	stripped.RedactedBy = ""
	if pdu, err := p.pdu(stripped); err != nil || pdu.Redacted() || string(pdu.Content()) != "{}" {
		t.Errorf("the row stripped in memory gave %v, %v", pdu, err)
	}
	if pdu, err := p.pdu(ev); err != nil || pdu != first {
		t.Errorf("the stored event again: %v, %v", pdu, err)
	}
}

// TestParsedRecent: an event the roomserver committed lately is taken as
// built while its row is as committed; redacted, or stripped for a user
// who ignores its sender, it is parsed.
func TestParsedRecent(t *testing.T) {
	committed := sql.Event{NID: 7, EventID: "$e", RoomVersion: "10",
		JSON: messageJSON(`{"body":"hi"}`)}
	built, err := roomserver.ParseStored(committed)
	if err != nil {
		t.Fatal(err)
	}
	p := newParsed(func(id string) (sql.Event, gomatrixserverlib.PDU, bool) {
		return committed, built, id == committed.EventID
	})
	if pdu, err := p.pdu(committed); err != nil || pdu != built {
		t.Errorf("the committed row gave %v, %v, not the built event", pdu, err)
	}
	stripped := committed
	stripped.NID = 8 // not in the cache
	stripped.JSON = messageJSON(`{}`)
	if pdu, err := p.pdu(stripped); err != nil || pdu == built || string(pdu.Content()) != "{}" {
		t.Errorf("the stripped row gave %v, %v", pdu, err)
	}
	redacted := stripped
	redacted.NID, redacted.RedactedBy = 9, "$r"
	if pdu, err := p.pdu(redacted); err != nil || pdu == built || !pdu.Redacted() {
		t.Errorf("the redacted row gave %v, %v", pdu, err)
	}
}
