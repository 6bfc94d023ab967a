// Package roomsummary reads what may be shown of a room to someone who is
// not in it: room previews (the spec's RoomSummary), the space children
// of a space and the published room directory. The client API
// (/room_summary, /hierarchy, /publicRooms) and the federation API
// (/hierarchy, /publicRooms) share it, so that both show a room the same
// way; who may see what is decided by the callers, who know whether they
// serve a user or a server.
package roomsummary

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strconv"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
)

// Rooms is what summaries read of the roomserver (roomserver.API provides
// it). RoomVersion answers 404 M_NOT_FOUND for a room it does not have.
type Rooms interface {
	RoomVersion(ctx context.Context, roomID string) (string, error)
	CurrentStateEvent(ctx context.Context, roomID, eventType, stateKey string) (gomatrixserverlib.PDU, error)
}

// Reader reads room summaries from a room's current state.
type Reader struct {
	DB    *sql.DB
	Rooms Rooms
}

// Preview is a RoomSummary (definitions/room_summary.yaml): the published
// room directory's chunk with the v1.15 fields.
type Preview struct {
	RoomID           string   `json:"room_id"`
	CanonicalAlias   string   `json:"canonical_alias,omitempty"`
	Name             string   `json:"name,omitempty"`
	Topic            string   `json:"topic,omitempty"`
	AvatarURL        string   `json:"avatar_url,omitempty"`
	NumJoinedMembers int      `json:"num_joined_members"`
	WorldReadable    bool     `json:"world_readable"`
	GuestCanJoin     bool     `json:"guest_can_join"`
	JoinRule         string   `json:"join_rule,omitempty"`
	RoomType         string   `json:"room_type,omitempty"`
	AllowedRoomIDs   []string `json:"allowed_room_ids,omitempty"`
	Encryption       string   `json:"encryption,omitempty"`
	RoomVersion      string   `json:"room_version,omitempty"`
}

// Access is the part of a room's current state that decides who may
// preview it, and whether it is a space.
type Access struct {
	RoomID   string
	Version  string
	RoomType string
	// JoinRule is the current join rule: invite when the room has none, as
	// the auth rules then only let invited users in.
	JoinRule string
	// Allow lists the rooms whose members may join a restricted room.
	Allow         []string
	WorldReadable bool
}

// joinRulesContent is the part of m.room.join_rules that previews read.
type joinRulesContent struct {
	JoinRule string `json:"join_rule"`
	Allow    []struct {
		Type   string `json:"type"`
		RoomID string `json:"room_id"`
	} `json:"allow"`
}

// Access reads a room's access settings; found is false for rooms this
// server does not have.
func (r *Reader) Access(ctx context.Context, roomID string) (acc Access, found bool, err error) {
	version, err := r.Rooms.RoomVersion(ctx, roomID)
	if isNotFound(err) {
		return acc, false, nil
	}
	if err != nil {
		return acc, false, err
	}
	acc = Access{RoomID: roomID, Version: version}
	create, err := r.Rooms.CurrentStateEvent(ctx, roomID, spec.MRoomCreate, "")
	if err != nil {
		return acc, false, err
	}
	if create != nil {
		var c struct {
			Type any `json:"type"`
		}
		_ = json.Unmarshal(create.Content(), &c)
		acc.RoomType, _ = c.Type.(string)
	}
	jr := joinRulesContent{JoinRule: spec.Invite}
	ev, err := r.Rooms.CurrentStateEvent(ctx, roomID, spec.MRoomJoinRules, "")
	if err != nil {
		return acc, false, err
	}
	if ev != nil {
		_ = json.Unmarshal(ev.Content(), &jr)
	}
	acc.JoinRule = jr.JoinRule
	for _, cond := range jr.Allow {
		if cond.Type == spec.MRoomMembership && IsRoomID(cond.RoomID) {
			acc.Allow = append(acc.Allow, cond.RoomID)
		}
	}
	hv, err := r.Rooms.CurrentStateEvent(ctx, roomID, spec.MRoomHistoryVisibility, "")
	if err != nil {
		return acc, false, err
	}
	if hv != nil {
		if v, err := hv.HistoryVisibility(); err == nil {
			acc.WorldReadable = v == gomatrixserverlib.HistoryVisibilityWorldReadable
		}
	}
	return acc, true, nil
}

// Knockable and Restricted report whether the join rule is one the room's
// version supports (knock from version 7, restricted from 8,
// knock_restricted from 10); in older versions the auth rules treat them
// as invite-only.
func (acc Access) Knockable() bool {
	return acc.JoinRule == spec.Knock && versionAtLeast(acc.Version, 7) ||
		acc.JoinRule == spec.KnockRestricted && versionAtLeast(acc.Version, 10)
}

// Restricted: see Knockable.
func (acc Access) Restricted() bool {
	return acc.JoinRule == spec.Restricted && versionAtLeast(acc.Version, 8) ||
		acc.JoinRule == spec.KnockRestricted && versionAtLeast(acc.Version, 10)
}

// Open reports whether anyone may preview the room: it is public,
// knockable or world_readable (space_hierarchy.yaml, room_summary.yaml).
func (acc Access) Open() bool {
	return acc.JoinRule == spec.Public || acc.Knockable() || acc.WorldReadable
}

// versionAtLeast reports whether a (numeric) room version is n or later.
func versionAtLeast(version string, n int) bool {
	v, err := strconv.Atoi(version)
	return err == nil && v >= n
}

// Preview reads what a RoomSummary shows of a room.
func (r *Reader) Preview(ctx context.Context, acc Access) (Preview, error) {
	p := Preview{RoomID: acc.RoomID, RoomVersion: acc.Version, RoomType: acc.RoomType, JoinRule: acc.JoinRule,
		WorldReadable: acc.WorldReadable}
	if acc.Restricted() {
		p.AllowedRoomIDs = acc.Allow
	}
	n, err := r.DB.JoinedMemberCount(ctx, acc.RoomID)
	if err != nil {
		return p, err
	}
	p.NumJoinedMembers = n
	for _, typ := range []string{spec.MRoomName, spec.MRoomTopic, spec.MRoomAvatar, spec.MRoomCanonicalAlias, spec.MRoomGuestAccess, spec.MRoomEncryption} {
		ev, err := r.Rooms.CurrentStateEvent(ctx, acc.RoomID, typ, "")
		if err != nil {
			return p, err
		}
		if ev == nil {
			continue
		}
		var c map[string]json.RawMessage
		if json.Unmarshal(ev.Content(), &c) != nil {
			continue
		}
		// A field of the wrong type reads as unset.
		str := func(k string) string {
			var s string
			_ = json.Unmarshal(c[k], &s)
			return s
		}
		switch typ {
		case spec.MRoomName:
			p.Name = str("name")
		case spec.MRoomTopic:
			p.Topic = plainTopic(c)
		case spec.MRoomAvatar:
			p.AvatarURL = str("url")
		case spec.MRoomCanonicalAlias:
			p.CanonicalAlias = str("alias")
		case spec.MRoomGuestAccess:
			p.GuestCanJoin = str("guest_access") == "can_join"
		case spec.MRoomEncryption:
			p.Encryption = str("algorithm")
		}
	}
	return p, nil
}

// plainTopic is the text/plain topic of an m.room.topic content: the
// text/plain entry of m.topic (spec v1.15: a missing mimetype is
// text/plain), else the topic property, which is its plain-text fallback.
func plainTopic(c map[string]json.RawMessage) string {
	var rich struct {
		Text []struct {
			Body     string `json:"body"`
			Mimetype string `json:"mimetype"`
		} `json:"m.text"`
	}
	if json.Unmarshal(c["m.topic"], &rich) == nil {
		for _, t := range rich.Text {
			if t.Mimetype == "" || t.Mimetype == "text/plain" {
				return t.Body
			}
		}
	}
	var s string
	_ = json.Unmarshal(c["topic"], &s)
	return s
}

// SpaceChild is an m.space.child event as /hierarchy lists it: a stripped
// state event with its origin_server_ts (StrippedChildStateEvent).
type SpaceChild struct {
	Type           string          `json:"type"`
	StateKey       string          `json:"state_key"`
	Content        json.RawMessage `json:"content"`
	Sender         string          `json:"sender"`
	OriginServerTS int64           `json:"origin_server_ts"`

	order     string // a valid order, or "" without one
	suggested bool
}

// SpaceChildren returns a space's valid m.space.child events (suggested
// ones only when asked) in the spec's order ("Ordering of children within
// a space"): children with a valid order first, by order, then the rest;
// ties by origin_server_ts, then by room id.
func (r *Reader) SpaceChildren(ctx context.Context, roomID string, suggestedOnly bool) ([]SpaceChild, error) {
	evs, err := r.DB.CurrentStateEventsOfType(ctx, roomID, spec.MSpaceChild)
	if err != nil {
		return nil, err
	}
	out := []SpaceChild{}
	for _, ev := range evs {
		if ev.StateKey == nil || !IsRoomID(*ev.StateKey) {
			continue
		}
		var e struct {
			Content json.RawMessage `json:"content"`
		}
		if json.Unmarshal(ev.JSON, &e) != nil {
			continue
		}
		var c struct {
			Via       any `json:"via"`
			Order     any `json:"order"`
			Suggested any `json:"suggested"`
		}
		if json.Unmarshal(e.Content, &c) != nil || !validVia(c.Via) {
			// Without a valid via the room is not a child (m.space.child):
			// this is how children are removed.
			continue
		}
		child := SpaceChild{Type: ev.Type, StateKey: *ev.StateKey, Content: e.Content, Sender: ev.Sender, OriginServerTS: ev.OriginServerTS}
		child.suggested, _ = c.Suggested.(bool)
		if o, ok := c.Order.(string); ok && validChildOrder(o) {
			child.order = o
		}
		if suggestedOnly && !child.suggested {
			continue
		}
		out = append(out, child)
	}
	slices.SortFunc(out, func(x, y SpaceChild) int {
		if (x.order == "") != (y.order == "") {
			if x.order != "" {
				return -1
			}
			return 1
		}
		return cmp.Or(cmp.Compare(x.order, y.order), cmp.Compare(x.OriginServerTS, y.OriginServerTS), cmp.Compare(x.StateKey, y.StateKey))
	})
	return out, nil
}

// validVia reports whether an m.space.child via is a non-empty list of
// strings.
func validVia(v any) bool {
	list, ok := v.([]any)
	if !ok || len(list) == 0 {
		return false
	}
	for _, s := range list {
		if _, ok := s.(string); !ok {
			return false
		}
	}
	return true
}

// validChildOrder reports whether an order is valid (m.space.child): 1 to
// 50 characters between \x20 and \x7E.
func validChildOrder(o string) bool {
	if o == "" || len(o) > 50 {
		return false
	}
	for i := 0; i < len(o); i++ {
		if o[i] < 0x20 || o[i] > 0x7E {
			return false
		}
	}
	return true
}

// IsRoomID reports whether id looks like a room id: "!" and something.
func IsRoomID(id string) bool {
	return len(id) > 1 && id[0] == '!'
}

func isNotFound(err error) bool {
	var me *mxhttp.Error
	return errors.As(err, &me) && me.Status == http.StatusNotFound
}
