package syncapi

import (
	"strconv"
	"strings"

	"github.com/weft-chat/weft/internal/mxhttp"
)

// SyncToken is a /sync position: one position per stream the sync reads,
// written "s<events>_<account_data>". The room event position leads, so
// the token is also a stream token of /messages (ParseToken reads the
// component before the first "_").
//
// Later streams (receipts, typing, to-device, device lists, presence …)
// append their positions. Parsing stays compatible both ways: a token
// with fewer components than this binary knows (minted before a stream
// existed) reads the missing ones as 0, which each stream must treat as
// "from the start of what is kept" (to-device and device lists need
// exactly that; account data resends its latest values, which is
// harmless); components this binary does not know (a token from a newer
// version, after a rollback) are ignored.
type SyncToken struct {
	// Events is a position in the room event stream, which carries
	// memberships too.
	Events int64
	// AccountData is a position in the account data stream.
	AccountData int64
}

// String is the token's wire form.
func (t SyncToken) String() string {
	return "s" + strconv.FormatInt(t.Events, 10) + "_" + strconv.FormatInt(t.AccountData, 10)
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
	parts := strings.Split(rest, "_")
	var pos [2]int64
	for i, p := range parts {
		n, err := parseUint(p)
		if err != nil {
			return SyncToken{}, bad
		}
		if i < len(pos) {
			pos[i] = n
		}
	}
	return SyncToken{Events: pos[0], AccountData: pos[1]}, nil
}
