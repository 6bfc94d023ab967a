package federation

import (
	"context"
	"encoding/json"
	"errors"
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
// the room, less those the room's server ACL denies (spec: "Server Access
// Control Lists"), sorted. q may be a transaction's.
func roomDestinations(ctx context.Context, q *sql.Queries, roomID string, self spec.ServerName) ([]spec.ServerName, error) {
	members, err := q.RoomMembers(ctx, roomID, spec.Join)
	if err != nil {
		return nil, err
	}
	out := serversOf(members, self)
	if len(out) == 0 {
		return nil, nil
	}
	allows, err := roomACLIn(ctx, q, roomID)
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(out, func(d spec.ServerName) bool { return !allows(d) }), nil
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

// roomACLIn reads the room's current m.room.server_acl once, through q,
// and returns the check of a server against it (see aclAllows). A room
// without the event allows everyone.
func roomACLIn(ctx context.Context, q *sql.Queries, roomID string) (func(spec.ServerName) bool, error) {
	everyone := func(spec.ServerName) bool { return true }
	ev, err := q.CurrentStateEvent(ctx, roomID, sql.StateKey{Type: "m.room.server_acl"})
	if errors.Is(err, sql.ErrNotFound) {
		return everyone, nil
	}
	if err != nil {
		return nil, err
	}
	var parsed struct {
		Content struct {
			AllowIPLiterals any `json:"allow_ip_literals"`
			Allow           any `json:"allow"`
			Deny            any `json:"deny"`
		} `json:"content"`
	}
	if json.Unmarshal(ev.JSON, &parsed) != nil {
		return everyone, nil // unreadable content is no ACL
	}
	c := parsed.Content
	return func(server spec.ServerName) bool { return aclAllows(c.AllowIPLiterals, c.Allow, c.Deny, server) }, nil
}
