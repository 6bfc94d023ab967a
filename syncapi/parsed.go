package syncapi

import (
	"bytes"
	"hash/maphash"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/weft-chat/weft/internal/bounded"
	"github.com/weft-chat/weft/roomserver"
	"github.com/weft-chat/weft/sql"
)

// parsedMax bounds the parsed events kept.
const parsedMax = 4096

// parsedKey names a stored event as it parses: its NID, a hash of its
// JSON, which changes when it is redacted (in the database, or as served
// to a user who ignores its sender), and whether the row says it is
// redacted, which the parsed event reports.
type parsedKey struct {
	nid      int64
	json     uint64
	redacted bool
}

// parsed keeps the events syncs parsed: an event wakes every member of its
// room, and each of their syncs serves it (parsing was a quarter of the
// CPU of those syncs). Parsed events are read-only, so they are shared.
// An event this process committed lately is not parsed at all: recent
// (roomserver.RecentEvent) has it as built.
type parsed struct {
	m      *bounded.Map[parsedKey, gomatrixserverlib.PDU]
	seed   maphash.Seed
	recent func(eventID string) (sql.Event, gomatrixserverlib.PDU, bool)
}

func newParsed(recent func(eventID string) (sql.Event, gomatrixserverlib.PDU, bool)) parsed {
	return parsed{m: bounded.New[parsedKey, gomatrixserverlib.PDU](parsedMax), seed: maphash.MakeSeed(), recent: recent}
}

// pdu is roomserver.ParseStored(ev), from the cache where it can.
func (p parsed) pdu(ev sql.Event) (gomatrixserverlib.PDU, error) {
	k := parsedKey{ev.NID, maphash.Bytes(p.seed, ev.JSON), ev.RedactedBy != ""}
	if pdu, ok := p.m.Get(k); ok {
		return pdu, nil
	}
	// As committed only while the row is as committed: not redacted
	// since, nor stripped for a user who ignores its sender.
	if row, pdu, ok := p.recent(ev.EventID); ok && ev.RedactedBy == "" && bytes.Equal(row.JSON, ev.JSON) {
		p.m.Put(k, pdu)
		return pdu, nil
	}
	pdu, err := roomserver.ParseStored(ev)
	if err != nil {
		return nil, err
	}
	p.m.Put(k, pdu)
	return pdu, nil
}
