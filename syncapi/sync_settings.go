package syncapi

import (
	"context"
	"sync"

	"github.com/weft-chat/weft/syncapi/view"
)

// settingsCacheMax bounds the users whose settings are kept; past it the
// cache starts again empty.
const settingsCacheMax = 100_000

// settingsCache keeps what every sync reads of its user's account data
// (whom they ignore, whether they block invites), so that a sync reads it
// only after it changed. An entry is good for a sync when no change to
// those settings lies between the account data position it was read at and
// the sync's upper bound: the sync's own window of account data tells.
type settingsCache struct {
	mu sync.Mutex
	m  map[string]syncSettings
}

// syncSettings are a user's settings, read after the account data stream
// was at pos.
type syncSettings struct {
	pos            int64
	ignored        map[string]bool
	invitesBlocked bool
}

// settings gives the builder the caller's settings. changed says whether
// the account data the sync read in (since, ...] holds a setting, which
// accountData (called before) recorded.
func (b *syncBuilder) settings(ctx context.Context, changed bool) error {
	c, localpart := &b.a.settings, b.req.dev.Localpart
	c.mu.Lock()
	s, ok := c.m[localpart]
	c.mu.Unlock()
	if ok && (s.pos >= b.upper.AccountData || (s.pos >= b.since.AccountData && !changed)) {
		b.ignored, b.invitesBlocked = s.ignored, s.invitesBlocked
		return nil
	}
	var err error
	if b.ignored, b.invitesBlocked, err = view.SyncSettings(ctx, b.a.db, localpart); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= settingsCacheMax {
		c.m = make(map[string]syncSettings)
	}
	// Read after upper: at least as new as upper.
	if cur, ok := c.m[localpart]; !ok || cur.pos <= b.upper.AccountData {
		c.m[localpart] = syncSettings{pos: b.upper.AccountData, ignored: b.ignored, invitesBlocked: b.invitesBlocked}
	}
	return nil
}
