package roomserver

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"strconv"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// buildFast builds and signs the event b describes, giving byte for byte
// what b.Build gives (a test compares them over every room version and
// many contents), without Build's rounds of parsing and re-encoding the
// event: Build encodes it, parses it to hash its content, encodes it
// again, parses and redacts it to sign it, encodes it again, checks and
// canonicalises it, parses it once more and, for the event id, redacts,
// parses and encodes it yet again. Here the canonical JSON is written
// once, in key order, and the redacted form that is both signed and
// hashed into the event id is written beside it.
//
// It covers the events that are sent most, and leaves to Build (ok
// false) any whose redacted form is not simply its content emptied (the
// event types whose content redaction keeps, redactions), room versions
// 1 and 2 (other event format), events with unsigned data or
// signatures already, and strings that canonical JSON would have to
// escape.
func buildFast(b *gomatrixserverlib.EventBuilder, verImpl gomatrixserverlib.IRoomVersion, now time.Time, origin spec.ServerName,
	keyID gomatrixserverlib.KeyID, key ed25519.PrivateKey) (ev gomatrixserverlib.PDU, ok bool, err error) {
	if verImpl.EventFormat() != gomatrixserverlib.EventFormatV2 || len(b.Unsigned) > 0 || len(b.Signature) > 0 || b.Redacts != "" ||
		b.RoomID == "" || keepsContent[b.Type] {
		return nil, false, nil
	}
	var idEncoding *base64.Encoding
	switch verImpl.EventIDFormat() {
	case gomatrixserverlib.EventIDFormatV2:
		idEncoding = base64.RawStdEncoding
	case gomatrixserverlib.EventIDFormatV3:
		idEncoding = base64.RawURLEncoding
	default:
		return nil, false, nil
	}
	prev, okPrev := b.PrevEvents.([]string)
	auth, okAuth := b.AuthEvents.([]string)
	if (b.PrevEvents != nil && !okPrev) || (b.AuthEvents != nil && !okAuth) {
		return nil, false, nil
	}
	if !plain(b.SenderID) || !plain(b.RoomID) || !plain(b.Type) || !plain(string(origin)) || !plain(string(keyID)) ||
		(b.StateKey != nil && !plain(*b.StateKey)) || !allPlain(prev) || !allPlain(auth) {
		return nil, false, nil
	}
	content, err := gomatrixserverlib.CanonicalJSON(b.Content)
	if err != nil || len(content) == 0 || content[0] != '{' || verImpl.CheckCanonicalJSON(content) != nil {
		// Build refuses it, or accepts what is not an object: let it say.
		return nil, false, nil
	}

	// Version 11 changed which top-level keys redaction keeps: origin and
	// prev_state are dropped from then on.
	var keepOrigin bool
	switch verImpl.Version() {
	case gomatrixserverlib.RoomVersionV3, gomatrixserverlib.RoomVersionV4, gomatrixserverlib.RoomVersionV5, gomatrixserverlib.RoomVersionV6,
		gomatrixserverlib.RoomVersionV7, gomatrixserverlib.RoomVersionV8, gomatrixserverlib.RoomVersionV9, gomatrixserverlib.RoomVersionV10:
		keepOrigin = true
	case gomatrixserverlib.RoomVersionV11, gomatrixserverlib.RoomVersionV12:
	default:
		return nil, false, nil
	}
	ts := strconv.FormatInt(int64(spec.AsTimestamp(now)), 10)
	depth := strconv.FormatInt(b.Depth, 10)
	state := b.StateKey != nil

	// The event and its redacted form, in canonical key order: hashes
	// and signatures go in between later.
	w := eventWriter{buf: make([]byte, 0, 2*len(content)+512)}
	head := func(content []byte) {
		w.key("auth_events")
		w.list(auth)
		w.key("content")
		w.raw(content)
		w.key("depth")
		w.raw([]byte(depth))
	}
	tail := func(redacted bool, hashes, signatures []byte) {
		if hashes != nil {
			w.key("hashes")
			w.raw(hashes)
		}
		if !redacted || keepOrigin {
			w.key("origin")
			w.str(string(origin))
		}
		w.key("origin_server_ts")
		w.raw([]byte(ts))
		w.key("prev_events")
		w.list(prev)
		if state && (!redacted || keepOrigin) {
			w.key("prev_state")
			w.raw([]byte("[]"))
		}
		w.key("room_id")
		w.str(b.RoomID)
		w.key("sender")
		w.str(b.SenderID)
		if signatures != nil {
			w.key("signatures")
			w.raw(signatures)
		}
		if state {
			w.key("state_key")
			w.str(*b.StateKey)
		}
		w.key("type")
		w.str(b.Type)
		w.buf = append(w.buf, '}')
	}

	// The content hash covers the whole event but hashes and signatures.
	w.reopen()
	head(content)
	tail(false, nil, nil)
	contentHash := sha256.Sum256(w.buf)
	hashes := []byte(`{"sha256":"` + base64.RawStdEncoding.EncodeToString(contentHash[:]) + `"}`)

	// The redacted event without signatures is what is signed and, hashed,
	// the event id. It is written over the hashed event, done with.
	w.reopen()
	head([]byte("{}"))
	tail(true, hashes, nil)
	sig := ed25519.Sign(key, w.buf)
	ref := sha256.Sum256(w.buf)
	eventID := "$" + idEncoding.EncodeToString(ref[:])
	signatures := []byte(`{"` + string(origin) + `":{"` + string(keyID) + `":"` + base64.RawStdEncoding.EncodeToString(sig) + `"}}`)

	w.open()
	head(content)
	tail(false, hashes, signatures)
	ev, err = verImpl.NewEventFromTrustedJSONWithEventID(eventID, w.buf, false)
	if err != nil {
		return nil, true, err
	}
	return ev, true, gomatrixserverlib.CheckFields(ev)
}

// keepsContent lists the event types whose content redaction keeps some
// of, in any room version.
var keepsContent = map[string]bool{
	spec.MRoomMember: true, spec.MRoomCreate: true, spec.MRoomJoinRules: true, spec.MRoomPowerLevels: true,
	spec.MRoomHistoryVisibility: true, spec.MRoomRedaction: true, "m.room.aliases": true,
}

// plain reports whether s is written in canonical JSON as it is, between
// quotes: printable ASCII but the quote and the backslash.
func plain(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

func allPlain(ss []string) bool {
	for _, s := range ss {
		if !plain(s) {
			return false
		}
	}
	return true
}

// eventWriter writes a JSON object, key by key: into a fresh buffer each
// time it is opened, or over the last one when reopened.
type eventWriter struct {
	buf   []byte
	first bool
}

func (w *eventWriter) open() {
	w.buf = append(make([]byte, 0, cap(w.buf)), '{')
	w.first = true
}

// reopen starts again in the same buffer.
func (w *eventWriter) reopen() {
	w.buf = append(w.buf[:0], '{')
	w.first = true
}

func (w *eventWriter) key(k string) {
	if !w.first {
		w.buf = append(w.buf, ',')
	}
	w.first = false
	w.str(k)
	w.buf = append(w.buf, ':')
}

func (w *eventWriter) str(s string) {
	w.buf = append(w.buf, '"')
	w.buf = append(w.buf, s...)
	w.buf = append(w.buf, '"')
}

func (w *eventWriter) raw(v []byte) { w.buf = append(w.buf, v...) }

func (w *eventWriter) list(ss []string) {
	w.buf = append(w.buf, '[')
	for i, s := range ss {
		if i > 0 {
			w.buf = append(w.buf, ',')
		}
		w.str(s)
	}
	w.buf = append(w.buf, ']')
}
