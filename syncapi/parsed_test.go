package syncapi

import (
	"testing"

	"github.com/weft-chat/weft/sql"
)

// TestParsedCache: a stored event parses once; once redacted, its row
// (stripped JSON, redacted_by set) parses anew, as redacted, and so does
// the row stripped in memory for a user who ignores its sender.
func TestParsedCache(t *testing.T) {
	p := newParsed()
	ev := sql.Event{NID: 7, EventID: "$e", RoomVersion: "10",
		JSON: []byte(`{"type":"m.room.message","room_id":"!r:test","sender":"@a:test","content":{"body":"hi"},` +
			`"origin_server_ts":1,"depth":1,"prev_events":[],"auth_events":[],"hashes":{"sha256":"x"},"signatures":{}}`)}
	first, err := p.pdu(ev)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := p.pdu(ev); err != nil || again != first {
		t.Errorf("parsed again: %v, %v", again, err)
	}
	redacted := ev
	redacted.RedactedBy = "$r"
	redacted.JSON = []byte(`{"type":"m.room.message","room_id":"!r:test","sender":"@a:test","content":{},` +
		`"origin_server_ts":1,"depth":1,"prev_events":[],"auth_events":[],"hashes":{"sha256":"x"},"signatures":{}}`)
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
