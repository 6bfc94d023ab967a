package presence

import (
	"context"
	"fmt"
	"time"

	"github.com/weft-chat/weft/sql"
)

// Presence of other servers' users, which their servers report in
// m.presence EDUs (spec: Server-Server API, "Presence").

// FederationTimeout is how long a remote user keeps the presence their
// server last reported: after it without a report they go offline, as
// Synapse does (FEDERATION_TIMEOUT), against servers that stopped
// talking. Servers re-send their online users' presence more often than
// this.
const FederationTimeout = 30 * time.Minute

// RemoteUpdate is a remote user's presence as their server reported it.
type RemoteUpdate struct {
	UserID string
	// State is online, unavailable or offline (the caller checks it).
	State         string
	StatusMsg     string
	LastActiveAgo time.Duration
}

// ApplyRemote stores the presence other servers reported for their users
// (the caller checked that each is the reporting server's) and wakes
// those who share a room with them when clients see a change.
func (s *Service) ApplyRemote(ctx context.Context, updates []RemoteUpdate) error {
	for _, u := range updates {
		now := ms(s.now())
		if err := s.update(ctx, u.UserID, func(p sql.Presence) outcome { return onRemote(p, u, now) }); err != nil {
			return fmt.Errorf("remote presence: %w", err)
		}
	}
	return nil
}

// onRemote is a report of a remote user's presence. The row holds what
// the report says, and the rules of local users then apply to it: the
// idle timeout and currently_active follow the last active time, as the
// user's own server derives them, and the report counts as a sync that
// lasts until the federation timeout, so that the sync timeout takes the
// user offline FederationTimeout after the report unless another comes.
func onRemote(p sql.Presence, u RemoteUpdate, now int64) outcome {
	n := p
	n.State = u.State
	n.StatusMsg = u.StatusMsg
	n.LastActiveTS = now - u.LastActiveAgo.Milliseconds()
	n.LastSyncTS = now + (FederationTimeout - SyncTimeout).Milliseconds()
	return settle(p, expire(n, now), now)
}
