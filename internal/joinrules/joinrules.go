// Package joinrules decides restricted joins (spec: "Restricted rooms")
// the same way for this server's users (client API join) and for other
// servers' users joining through this one (federation make_join and
// send_join): whether the user meets a condition, and which of this
// server's members authorises the join in join_authorised_via_users_server.
package joinrules

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/roomserver"
	"github.com/weft-chat/weft/sql"
)

// FieldAuthorisedVia is the member event field naming a restricted join's
// authoriser.
const FieldAuthorisedVia = "join_authorised_via_users_server"

// Content is the content of m.room.join_rules.
type Content struct {
	JoinRule string      `json:"join_rule"`
	Allow    []Condition `json:"allow"`
}

// Condition is one entry of allow.
type Condition struct {
	Type   string `json:"type"`
	RoomID string `json:"room_id"`
}

// FromEvent reads an m.room.join_rules event (nil: none). Without the
// event, or with unreadable content, the auth rules treat the room as
// invite-only.
func FromEvent(ev gomatrixserverlib.PDU) Content {
	c := Content{JoinRule: spec.Invite}
	if ev != nil {
		_ = json.Unmarshal(ev.Content(), &c)
	}
	return c
}

// Restricted reports whether the rules let users of other rooms join
// without an invite in the room version: restricted (version 8 and
// later) or knock_restricted (version 10 and later).
func (c Content) Restricted(verImpl gomatrixserverlib.IRoomVersion) bool {
	if verImpl.CheckRestrictedJoinsAllowed() != nil {
		return false
	}
	return c.JoinRule == spec.Restricted || c.JoinRule == spec.KnockRestricted && KnockRestrictedKnown(verImpl)
}

// KnockRestrictedKnown reports whether the room version knows the
// knock_restricted join rule (room version 10 and later). The auth rules
// of gomatrixserverlib accept it in every version with knocking, but in
// versions 7 to 9 it is an unknown join rule, which only lets invited
// users in.
func KnockRestrictedKnown(verImpl gomatrixserverlib.IRoomVersion) bool {
	n, err := strconv.Atoi(string(verImpl.Version()))
	return err != nil || n >= 10
}

// Authorise decides the restricted join of userID to roomID, whose rules
// are c, and returns the member of server (this server) who authorises
// it. The user must be joined to one of the rooms the conditions name
// (403 M_FORBIDDEN otherwise). When that is not so for a user of another
// server and this server is not in one of those rooms, it cannot know:
// 400 M_UNABLE_TO_AUTHORISE_JOIN, so that the joining server tries
// another (spec: "Restricted rooms", as Synapse). The authoriser is the
// joined member of server with the highest power level, at least the
// invite level, as the auth rules require (ties: the smallest user id);
// when there is none, a remote join gets 400 M_UNABLE_TO_GRANT_JOIN and a
// local one 403.
func Authorise(ctx context.Context, db *sql.DB, server, roomID, userID string, c Content) (string, error) {
	remote := !strings.HasSuffix(userID, ":"+server)
	allowed, unknown := false, false
	for _, cond := range c.Allow {
		if cond.Type != spec.MRoomMembership || cond.RoomID == "" {
			continue
		}
		m, err := db.Membership(ctx, cond.RoomID, userID)
		if err != nil {
			return "", err
		}
		if m == spec.Join {
			allowed = true
			break
		}
		if remote && !unknown {
			in, err := serverJoined(ctx, db, cond.RoomID, server)
			if err != nil {
				return "", err
			}
			unknown = !in
		}
	}
	if !allowed {
		if unknown {
			return "", mxhttp.Errorf(http.StatusBadRequest, "M_UNABLE_TO_AUTHORISE_JOIN",
				"This server is not in every room that allows joining this one, so it cannot tell whether %s may join", userID)
		}
		return "", mxhttp.Forbidden("You do not belong to any of the rooms or spaces this room requires to join it")
	}
	power, err := currentPower(ctx, db, roomID)
	if err != nil {
		return "", err
	}
	members, err := db.RoomMembers(ctx, roomID, spec.Join)
	if err != nil {
		return "", err
	}
	inviteLevel := power.Levels().Invite
	best, bestLevel := "", int64(0)
	for _, member := range members {
		if !strings.HasSuffix(member, ":"+server) {
			continue
		}
		level := power.UserLevel(member)
		if level < inviteLevel {
			continue
		}
		// members come sorted by user id: the first of a level wins.
		if best == "" || level > bestLevel {
			best, bestLevel = member, level
		}
	}
	if best == "" {
		if remote {
			return "", mxhttp.Errorf(http.StatusBadRequest, "M_UNABLE_TO_GRANT_JOIN",
				"No member of this room on this server can authorise the join; try another server")
		}
		return "", mxhttp.Forbidden("No member of this room on this server can authorise your join")
	}
	return best, nil
}

// serverJoined reports whether a user of server is joined to roomID.
func serverJoined(ctx context.Context, db *sql.DB, roomID, server string) (bool, error) {
	info, err := db.Room(ctx, roomID)
	if errors.Is(err, sql.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return db.ServerHasMembership(ctx, info.NID, server, spec.Join)
}

// currentPower reads the room's current power levels.
func currentPower(ctx context.Context, db *sql.DB, roomID string) (roomserver.Power, error) {
	var evs [2]gomatrixserverlib.PDU
	for i, typ := range []string{spec.MRoomCreate, spec.MRoomPowerLevels} {
		s, err := db.CurrentStateEvent(ctx, roomID, sql.StateKey{Type: typ})
		if errors.Is(err, sql.ErrNotFound) {
			continue
		}
		if err != nil {
			return roomserver.Power{}, err
		}
		if evs[i], err = roomserver.ParseStored(s); err != nil {
			return roomserver.Power{}, err
		}
	}
	return roomserver.PowerFrom(evs[0], evs[1]), nil
}
