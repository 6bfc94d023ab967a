// Package view decides what one user may see of a room's events, and adds
// the server-side aggregations of child events (unsigned["m.relations"])
// to the events served to them. Every read path that serves room events
// (/messages, /context, relations, threads, GET /event, /sync) goes
// through a Viewer, so membership, history visibility and ignored users
// are applied in one place.
package view

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
)

// Rooms is what a view needs of the roomserver (roomserver.API has it).
type Rooms interface {
	Membership(ctx context.Context, roomID, userID string) (string, error)
	CurrentStateEvent(ctx context.Context, roomID, eventType, stateKey string) (gomatrixserverlib.PDU, error)
	VisibleTo(ctx context.Context, userID, currentMembership string, ev sql.Event) (bool, error)
}

// AccountData reads a user's account data (sql.DB has it).
type AccountData interface {
	AccountDataContent(ctx context.Context, localpart, roomID, typ string) ([]byte, error)
}

// Viewer is one user's view of one room, for the length of one request:
// it remembers visibility answers, which depend only on the state before
// an event, so a page of messages between two state changes costs one
// visibility check instead of one per event.
type Viewer struct {
	rooms Rooms
	// RoomID and UserID say whose view of which room this is.
	RoomID, UserID string
	// Membership is the user's current membership of the room ("" for
	// none), which history visibility needs.
	Membership string
	ignored    map[string]bool
	// memo maps a state snapshot to the answer for ordinary events after
	// it (the user's own membership events and history visibility changes
	// are asked each time: their answer depends on the event itself).
	memo map[int64]bool
}

// Open gives the user's view of a room after checking they may read it at
// all: 403 M_FORBIDDEN unless they are joined, have left (or been banned
// or kicked: they still see what they saw before), or the room is
// world_readable now. An unknown room is 403 as well, so that the answer
// does not tell which rooms exist. Invited users are refused: the spec
// says that outside world_readable rooms "a user needs to join a room to
// view events in that room" (Room History Visibility), as Synapse does.
// The ignored users come from the user's m.ignored_user_list account data.
func Open(ctx context.Context, rooms Rooms, data AccountData, roomID, userID string) (*Viewer, error) {
	membership, err := rooms.Membership(ctx, roomID, userID)
	if err != nil {
		return nil, fmt.Errorf("membership of %s in %s: %w", userID, roomID, err)
	}
	switch membership {
	case spec.Join, spec.Leave, spec.Ban:
	default:
		readable, err := WorldReadable(ctx, rooms, roomID)
		if err != nil {
			return nil, err
		}
		if !readable {
			return nil, mxhttp.Forbidden("User %s is not in room %s, and it is not world readable", userID, roomID)
		}
	}
	v := &Viewer{rooms: rooms, RoomID: roomID, UserID: userID, Membership: membership, memo: make(map[int64]bool)}
	if v.ignored, err = IgnoredUsers(ctx, data, userID); err != nil {
		return nil, err
	}
	return v, nil
}

// WorldReadable reports whether a room's history visibility is
// world_readable now (false for unknown rooms).
func WorldReadable(ctx context.Context, rooms Rooms, roomID string) (bool, error) {
	ev, err := rooms.CurrentStateEvent(ctx, roomID, spec.MRoomHistoryVisibility, "")
	if err != nil {
		var me *mxhttp.Error
		if errors.As(err, &me) && me.Status == 404 {
			return false, nil
		}
		return false, fmt.Errorf("history visibility of %s: %w", roomID, err)
	}
	if ev == nil {
		return false, nil
	}
	var c struct {
		HistoryVisibility string `json:"history_visibility"`
	}
	_ = json.Unmarshal(ev.Content(), &c)
	return c.HistoryVisibility == "world_readable", nil
}

// IgnoredUsers reads the user ids in a user's m.ignored_user_list.
// Malformed account data ignores nobody rather than failing every read.
func IgnoredUsers(ctx context.Context, data AccountData, userID string) (map[string]bool, error) {
	uid, err := spec.NewUserID(userID, true)
	if err != nil {
		return nil, fmt.Errorf("user id %s: %w", userID, err)
	}
	raw, err := data.AccountDataContent(ctx, uid.Local(), "", ignoredUsersType)
	if errors.Is(err, sql.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("ignored users of %s: %w", userID, err)
	}
	return ignoredIn(raw), nil
}

// ignoredUsersType is the account data listing the users a user ignores.
const ignoredUsersType = "m.ignored_user_list"

// ignoredIn reads m.ignored_user_list content.
func ignoredIn(raw []byte) map[string]bool {
	var c struct {
		IgnoredUsers map[string]json.RawMessage `json:"ignored_users"`
	}
	if json.Unmarshal(raw, &c) != nil {
		return nil
	}
	out := make(map[string]bool, len(c.IgnoredUsers))
	for u := range c.IgnoredUsers {
		out[u] = true
	}
	return out
}

// InvitePermissionType is the account data with which a user blocks
// invites (spec v1.18, Invite permission).
const InvitePermissionType = "m.invite_permission_config"

// InvitesBlocked reads the user's m.invite_permission_config: a
// default_action of "block" refuses every invite; anything else, or no
// config, lets invites through.
func InvitesBlocked(ctx context.Context, data AccountData, localpart string) (bool, error) {
	raw, err := data.AccountDataContent(ctx, localpart, "", InvitePermissionType)
	if errors.Is(err, sql.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return blocksInvites(raw), nil
}

// blocksInvites reads m.invite_permission_config content.
func blocksInvites(raw []byte) bool {
	var c struct {
		DefaultAction any `json:"default_action"`
	}
	_ = json.Unmarshal(raw, &c)
	return c.DefaultAction == "block"
}

// SyncSettingTypes are the types of global account data that every /sync
// needs: whom the user ignores and whether they block invites.
var SyncSettingTypes = []string{ignoredUsersType, InvitePermissionType}

// ParseSyncSettings reads the settings out of the account data of
// SyncSettingTypes, by type.
func ParseSyncSettings(m map[string][]byte) (ignored map[string]bool, invitesBlocked bool) {
	if raw, ok := m[ignoredUsersType]; ok {
		ignored = ignoredIn(raw)
	}
	if raw, ok := m[InvitePermissionType]; ok {
		invitesBlocked = blocksInvites(raw)
	}
	return ignored, invitesBlocked
}

// Sees applies history visibility to one event of the room.
func (v *Viewer) Sees(ctx context.Context, ev sql.Event) (bool, error) {
	special := ev.StateKey != nil && ((ev.Type == spec.MRoomMember && *ev.StateKey == v.UserID) ||
		ev.Type == spec.MRoomHistoryVisibility)
	if !special {
		if ok, known := v.memo[ev.StateBeforeNID]; known {
			return ok, nil
		}
	}
	ok, err := v.rooms.VisibleTo(ctx, v.UserID, v.Membership, ev)
	if err != nil {
		return false, fmt.Errorf("visibility of %s: %w", ev.EventID, err)
	}
	if !special {
		v.memo[ev.StateBeforeNID] = ok
	}
	return ok, nil
}

// Ignores reports whether the event comes from a user the viewer ignores.
// State events are never ignored (spec: Ignoring Users, "Servers must
// still send state events sent by ignored users").
func (v *Viewer) Ignores(ev sql.Event) bool {
	return ev.StateKey == nil && v.ignored[ev.Sender]
}

// Shows reports whether the event is served to the viewer: visible to
// them and not from a user they ignore.
func (v *Viewer) Shows(ctx context.Context, ev sql.Event) (bool, error) {
	if v.Ignores(ev) {
		return false, nil
	}
	return v.Sees(ctx, ev)
}
