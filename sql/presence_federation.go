package sql

import "context"

// LocalPresenceNotOffline returns the presence rows of localServer's
// users who are not offline, in user id order after the user id after,
// at most limit: whose presence other servers must hear again before
// their federation timeout.
func (t *Queries) LocalPresenceNotOffline(ctx context.Context, localServer, after string, limit int) ([]Presence, error) {
	suffix := ":" + localServer
	return t.queryPresence(ctx, `SELECT `+presenceColumns+` FROM presence p
		WHERE p.state <> 'offline' AND `+localSuffix("p.user_id", 1)+` AND p.user_id > $3
		ORDER BY p.user_id LIMIT $4`, suffix, len(suffix), after, limit)
}
