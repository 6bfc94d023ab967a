package syncapi

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
)

// Token is a pagination token. Clients treat tokens as opaque; two forms
// exist:
//
//   - "t<depth>_<stream>": a topological boundary, just after the event
//     at that (depth, stream position); the position is negative for
//     history fetched from other servers (sql.BackfillStream).
//     /messages, /context and the relations API hand these out. Events
//     "before" it are those whose (depth, stream_pos) is <= it, so
//     paginating backwards from a token and forwards from the same token
//     splits the room in two with no event on both sides and none on
//     neither.
//   - "s<stream>[_<anything>]": a position in the room event stream, as
//     /sync's next_batch carries (its leading component; whatever follows
//     the first "_" belongs to /sync). In a room it means the boundary
//     after the newest event at or below that position.
type Token struct {
	Topo sql.TopoPos
	// Stream is set (and Topo unset) for a stream token.
	Stream   int64
	IsStream bool
}

// TopoToken is the token for a topological boundary.
func TopoToken(p sql.TopoPos) string {
	return "t" + strconv.FormatInt(p.Depth, 10) + "_" + strconv.FormatInt(p.Stream, 10)
}

// PrevBatch is the boundary just before an event: /messages with dir=b
// from it returns the events before ev, and never ev itself. /sync's
// prev_batch for a timeline starting at ev.
func PrevBatch(ev sql.Event) string {
	return TopoToken(before(ev))
}

// before is the boundary just before an event. Stream positions are
// integers, so "key < (d, s)" is "key <= (d, s-1)".
func before(ev sql.Event) sql.TopoPos {
	return sql.TopoPos{Depth: ev.Depth, Stream: ev.StreamPos - 1}
}

// ParseToken reads a token; anything else is 400 M_INVALID_PARAM.
func ParseToken(s string) (Token, error) {
	bad := mxhttp.InvalidParam("Invalid pagination token %q", s)
	switch {
	case strings.HasPrefix(s, "t"):
		d, st, ok := strings.Cut(s[1:], "_")
		depth, err1 := parseUint(d)
		stream, err2 := parseStream(st)
		if !ok || err1 != nil || err2 != nil {
			return Token{}, bad
		}
		return Token{Topo: sql.TopoPos{Depth: depth, Stream: stream}}, nil
	case strings.HasPrefix(s, "s"):
		pos, _, _ := strings.Cut(s[1:], "_")
		stream, err := parseStream(pos)
		if err != nil {
			return Token{}, bad
		}
		return Token{Stream: stream, IsStream: true}, nil
	}
	return Token{}, bad
}

// parseUint reads a non-negative decimal int64: digits only, no sign.
func parseUint(s string) (int64, error) {
	if s == "" || strings.TrimLeft(s, "0123456789") != "" {
		return 0, fmt.Errorf("not a number: %q", s)
	}
	return strconv.ParseInt(s, 10, 64)
}

// parseStream reads a stream position: decimal digits, after a minus
// sign for history fetched from other servers.
func parseStream(s string) (int64, error) {
	if rest, ok := strings.CutPrefix(s, "-"); ok {
		n, err := parseUint(rest)
		return -n, err
	}
	return parseUint(s)
}

// boundary resolves a token to a topological boundary in a room.
func (a *API) boundary(ctx context.Context, roomNID int64, t Token) (sql.TopoPos, error) {
	if !t.IsStream {
		return t.Topo, nil
	}
	p, err := a.db.TopoPosAtStream(ctx, roomNID, t.Stream)
	if err != nil {
		return sql.TopoPos{}, fmt.Errorf("resolve stream token: %w", err)
	}
	return p, nil
}
