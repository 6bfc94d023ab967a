package e2ee

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/weft-chat/weft/sql"
)

// fromCache answers for the users of other servers whose device lists
// this server tracks completely (the cache the federation's device-list
// EDUs keep; see sql.FreshRemoteDeviceKeys), as Synapse does: their
// devices with keys (only those asked for, when the list is not empty)
// and their master and self-signing keys, without asking their servers.
// It returns the users answered.
func (s *Service) fromCache(ctx context.Context, users map[string][]string, res *QueryResult) (map[string]bool, error) {
	var remote []string
	for userID := range users {
		if _, err := s.localpart(userID); errors.Is(err, errRemote) {
			remote = append(remote, userID)
		}
	}
	cached, err := s.db.FreshRemoteDeviceKeys(ctx, s.serverName, remote)
	if err != nil {
		return nil, fmt.Errorf("cached remote device lists: %w", err)
	}
	answered := make(map[string]bool, len(cached))
	for userID, c := range cached {
		answered[userID] = true
		want := map[string]bool{}
		for _, id := range users[userID] {
			want[id] = true
		}
		byDevice := map[string]json.RawMessage{}
		for _, d := range c.Devices {
			if d.Keys == nil || (len(want) > 0 && !want[d.DeviceID]) {
				continue
			}
			js := json.RawMessage(d.Keys)
			if d.DisplayName != "" {
				if js, err = addUnsigned(js, map[string]any{"device_display_name": d.DisplayName}); err != nil {
					return nil, fmt.Errorf("cached keys of %s %s: %w", userID, d.DeviceID, err)
				}
			}
			byDevice[d.DeviceID] = js
		}
		res.DeviceKeys[userID] = byDevice
		if k, ok := c.CrossSigning[sql.CrossSigningMaster]; ok {
			res.MasterKeys[userID] = k
		}
		if k, ok := c.CrossSigning[sql.CrossSigningSelfSigning]; ok {
			res.SelfSigningKeys[userID] = k
		}
	}
	return answered, nil
}

// resyncStale refetches, waiting at most wait, the stale cached lists of
// the users of other servers not answered from the cache, and answers
// from the cache those it could; it adds them to cached.
func (s *Service) resyncStale(ctx context.Context, users map[string][]string, cached map[string]bool, res *QueryResult, wait time.Duration) error {
	if s.resync == nil {
		return nil
	}
	missing := map[string][]string{}
	for userID, devices := range users {
		if _, err := s.localpart(userID); errors.Is(err, errRemote) && !cached[userID] {
			missing[userID] = devices
		}
	}
	if len(missing) == 0 {
		return nil
	}
	rctx, cancel := context.WithTimeout(ctx, wait)
	err := s.resync.ResyncStale(rctx, slices.Collect(maps.Keys(missing)))
	timedOut := rctx.Err() != nil
	cancel()
	// Out of time, the users are asked for as the others.
	if err != nil && !timedOut {
		return fmt.Errorf("refetch stale device lists: %w", err)
	}
	answered, err := s.fromCache(ctx, missing, res)
	maps.Copy(cached, answered)
	return err
}
