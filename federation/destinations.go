package federation

import (
	"context"
	"slices"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/sql"
)

// Whom outbound EDUs go to. Typing and receipts concern one room: its
// servers get them. Presence and device lists concern a user: every
// server sharing a room with them gets them (spec: "Servers must send
// m.device_list_update EDUs to all the servers who share a room with a
// given local user"; presence goes to "the receiving server sharing a
// room with a given user").

// roomDestinations are the servers other than self with a user joined to
// the room now, less those the room's server ACL denies, sorted. q may be
// a transaction's. (Events go to the servers joined in the state before
// them instead: Sender.destinations.)
func roomDestinations(ctx context.Context, q *sql.Queries, roomID string, self spec.ServerName) ([]spec.ServerName, error) {
	members, err := q.RoomMembers(ctx, roomID, spec.Join)
	if err != nil {
		return nil, err
	}
	return withoutDenied(ctx, q, roomID, serversOf(members, self))
}

// withoutDenied drops, in place, the servers the room's current server
// ACL denies (spec: "Server Access Control Lists": nothing is sent to
// them).
func withoutDenied(ctx context.Context, q *sql.Queries, roomID string, servers []spec.ServerName) ([]spec.ServerName, error) {
	if len(servers) == 0 {
		return nil, nil
	}
	allows, err := roomACL(ctx, q, roomID)
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(servers, func(d spec.ServerName) bool { return !allows(d) }), nil
}

// userDestinations are, for each of the local users, the other servers
// with a user joined to a room they are joined to, sorted. q may be a
// transaction's.
func userDestinations(ctx context.Context, q *sql.Queries, self spec.ServerName, userIDs []string) (map[string][]spec.ServerName, error) {
	members, err := q.RemoteMembersSharingRoom(ctx, string(self), userIDs)
	if err != nil {
		return nil, err
	}
	out := make(map[string][]spec.ServerName, len(members))
	for u, ms := range members {
		out[u] = serversOf(ms, self)
	}
	return out, nil
}

// serversOf is the valid server names of the users, other than self, each
// once, sorted.
func serversOf(userIDs []string, self spec.ServerName) []spec.ServerName {
	seen := map[spec.ServerName]bool{self: true}
	var out []spec.ServerName
	for _, u := range userIDs {
		s, ok := serverOf(u)
		if !ok || seen[s] {
			continue
		}
		seen[s] = true
		if _, _, ok := spec.ParseAndValidateServerName(s); ok {
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return out
}
