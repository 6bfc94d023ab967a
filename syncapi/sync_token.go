package syncapi

import (
	"strconv"
	"strings"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
)

// SyncToken is a /sync position: one position per stream the sync reads,
// written "s<events>_<account_data>_<receipts>_<typing>_<presence>_
// <to_device>_<device_lists>_<notifications>". The room event position
// leads, so the token is also a stream token of /messages (ParseToken
// reads the component before the first "_").
//
// Parsing stays compatible both ways: a token with fewer components than
// this binary knows (minted before a stream existed) reads the missing
// ones as 0, which each stream must treat as "from the start of what is
// kept" (to-device and device lists need exactly that; account data and
// receipts resend their latest values, which is harmless); components
// this binary does not know (a token from a newer version, after a
// rollback) are ignored.
type SyncToken sql.StreamPositions

// fields are the token's components in wire order. New streams go last.
func (t *SyncToken) fields() []*int64 {
	return []*int64{&t.Events, &t.AccountData, &t.Receipts, &t.Typing, &t.Presence,
		&t.ToDevice, &t.DeviceLists, &t.Notifications}
}

// String is the token's wire form.
func (t SyncToken) String() string {
	b := []byte{'s'}
	for i, f := range t.fields() {
		if i > 0 {
			b = append(b, '_')
		}
		b = strconv.AppendInt(b, *f, 10)
	}
	return string(b)
}

// clamp is t with no component past upper's.
func (t SyncToken) clamp(upper SyncToken) SyncToken {
	out := t
	up := upper.fields()
	for i, f := range out.fields() {
		*f = min(*f, *up[i])
	}
	return out
}

// ParseSyncToken reads a since parameter. Anything that is not a sync
// token is 400 M_INVALID_PARAM (spec: since "should be the next_batch
// token returned by an earlier call"; Synapse answers 400 too).
func ParseSyncToken(s string) (SyncToken, error) {
	bad := mxhttp.InvalidParam("Invalid sync token %q", s)
	rest, ok := strings.CutPrefix(s, "s")
	if !ok {
		return SyncToken{}, bad
	}
	var t SyncToken
	fields := t.fields()
	for i, p := range strings.Split(rest, "_") {
		n, err := parseUint(p)
		if err != nil {
			return SyncToken{}, bad
		}
		if i < len(fields) {
			*fields[i] = n
		}
	}
	return t, nil
}
