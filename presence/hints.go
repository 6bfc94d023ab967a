package presence

import (
	"time"

	"github.com/weft-chat/weft/internal/bounded"
	"github.com/weft-chat/weft/sql"
)

// hintMaxUsers bounds the rows Hints keeps.
const hintMaxUsers = 100_000

// Hints are presence rows a process read or wrote lately, by user. Every
// sync and every message its user sends runs a presence rule, which
// almost always changes nothing (writes are throttled); with a hint, such
// a rule skips its read of the row as well.
//
// A hint may only make a rule skip work it would have skipped on the row
// itself. Writes by this process replace the hint; the writes of other
// processes that clients see wake the user's syncs, and those wake-ups
// drop it (Forget); their other writes only move timestamps forward, which
// makes a rule run on the older hint write more often, not less. A hint
// is trusted for hintTTL at most, in case a wake-up is lost.
type Hints struct {
	rows *bounded.Map[string, hint]
}

type hint struct {
	row sql.Presence
	at  time.Time
}

// hintTTL is how long a hint is trusted: no longer than the write
// throttle, past which the rules write anyway.
const hintTTL = writeThrottle

// NewHints makes an empty hint store. Share one between the Services of
// a process (WithHints), and have every presence wake-up drop the hints
// of its users (Forget).
func NewHints() *Hints {
	return &Hints{rows: bounded.New[string, hint](hintMaxUsers)}
}

// WithHints makes the Service keep and use hints in h.
func WithHints(h *Hints) Option {
	return func(s *Service) { s.hints = h }
}

// Forget drops the hints of the users, whose presence may have changed
// elsewhere.
func (h *Hints) Forget(userIDs ...string) {
	if h == nil {
		return
	}
	for _, u := range userIDs {
		h.rows.Delete(u)
	}
}

// get returns the user's hint if it is younger than hintTTL at now.
func (h *Hints) get(userID string, now time.Time) (sql.Presence, bool) {
	if h == nil {
		return sql.Presence{}, false
	}
	e, ok := h.rows.Get(userID)
	if !ok || now.Sub(e.at) >= hintTTL || now.Before(e.at) {
		return sql.Presence{}, false
	}
	return e.row, true
}

// put records row as the user's presence at now.
func (h *Hints) put(row sql.Presence, now time.Time) {
	if h == nil {
		return
	}
	h.rows.Put(row.UserID, hint{row: row, at: now})
}
