package push

import (
	"context"
	"fmt"
	"sync"

	"github.com/weft-chat/weft/sql"
)

// RuleLoader reads a user's rules and settings (sql.Queries.PushRules).
type RuleLoader func(ctx context.Context, userID string) ([]sql.PushRule, []sql.PushRuleSetting, error)

// Cache keeps each user's compiled ruleset for the version of their rules
// it was compiled from (sql.PushRulesVersion, which every change bumps),
// so a ruleset is compiled once per user per change. Callers pass the
// version they read, typically along with the room's members
// (sql.PushMembers), so one query validates the whole room's rulesets and
// a change made by any process is seen at the next event.
type Cache struct {
	load RuleLoader

	mu sync.Mutex
	m  map[string]cacheEntry
}

type cacheEntry struct {
	version int64
	rules   *Compiled
}

// cacheMax bounds the cache; past it the cache starts over. Users without
// rules of their own (version 0) never take an entry.
const cacheMax = 50_000

// NewCache makes a cache that loads rules with load.
func NewCache(load RuleLoader) *Cache {
	return &Cache{load: load, m: make(map[string]cacheEntry)}
}

// Get returns the user's compiled ruleset at version. Version 0 (no change
// ever) is the shared Defaults without a lookup.
func (c *Cache) Get(ctx context.Context, userID string, version int64) (*Compiled, error) {
	if version == 0 {
		return Defaults(), nil
	}
	c.mu.Lock()
	e, ok := c.m[userID]
	c.mu.Unlock()
	if ok && e.version == version {
		return e.rules, nil
	}
	rules, settings, err := c.load(ctx, userID)
	if err != nil {
		return nil, fmt.Errorf("load push rules of %s: %w", userID, err)
	}
	compiled := Defaults()
	if len(rules) > 0 || len(settings) > 0 {
		compiled = Compile(rules, settings)
	}
	// The rules read may be newer than version; tagging them with version
	// only costs a reload at the next event.
	c.mu.Lock()
	if len(c.m) >= cacheMax {
		clear(c.m)
	}
	c.m[userID] = cacheEntry{version: version, rules: compiled}
	c.mu.Unlock()
	return compiled, nil
}
