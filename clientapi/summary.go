package clientapi

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/roomserver"
	"github.com/weft-chat/weft/userapi"
)

// Room previews: what someone who may not be in a room can see of it,
// for GET /room_summary (room_summary.yaml, spec v1.15) and the rooms of
// GET /hierarchy (space_hierarchy.yaml). Only rooms this server has are
// previewed: a remote room needs federation, which does not exist yet, so
// it is "not found".

// clientV1 is the prefix of the endpoints the spec added under v1.
const clientV1 = "/_matrix/client/v1"

// roomPreview is a RoomSummary (definitions/room_summary.yaml): the
// published room directory's chunk with the v1.15 fields.
type roomPreview struct {
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

// roomAccess is the part of a room's state that decides who may preview
// it, and whether it is a space.
type roomAccess struct {
	roomID   string
	version  string
	roomType string
	// joinRule is the current join rule: invite when the room has none, as
	// the auth rules then only let invited users in.
	joinRule string
	// allow lists the rooms whose members may join a restricted room.
	allow         []string
	worldReadable bool
}

// loadRoomAccess reads a room's access settings; found is false for rooms
// this server does not have.
func (a *API) loadRoomAccess(ctx context.Context, roomID string) (acc roomAccess, found bool, err error) {
	version, err := a.rooms.RoomVersion(ctx, roomID)
	if isNotFound(err) {
		return acc, false, nil
	}
	if err != nil {
		return acc, false, err
	}
	acc = roomAccess{roomID: roomID, version: version}
	create, err := a.rooms.CurrentStateEvent(ctx, roomID, spec.MRoomCreate, "")
	if err != nil {
		return acc, false, err
	}
	if create != nil {
		var c struct {
			Type any `json:"type"`
		}
		_ = json.Unmarshal(create.Content(), &c)
		acc.roomType, _ = c.Type.(string)
	}
	jr, err := a.currentJoinRules(ctx, roomID)
	if err != nil {
		return acc, false, err
	}
	acc.joinRule = jr.JoinRule
	for _, cond := range jr.Allow {
		if cond.Type == spec.MRoomMembership && isRoomID(cond.RoomID) {
			acc.allow = append(acc.allow, cond.RoomID)
		}
	}
	hv, err := a.rooms.CurrentStateEvent(ctx, roomID, spec.MRoomHistoryVisibility, "")
	if err != nil {
		return acc, false, err
	}
	if hv != nil {
		if v, err := hv.HistoryVisibility(); err == nil {
			acc.worldReadable = string(v) == roomserver.VisWorldReadable
		}
	}
	return acc, true, nil
}

// knockable, restricted: whether the join rule is one the room's version
// supports (knock from version 7, restricted from 8, knock_restricted from
// 10); in older versions the auth rules treat them as invite-only.
func (acc roomAccess) knockable() bool {
	return acc.joinRule == spec.Knock && versionAtLeast(acc.version, 7) ||
		acc.joinRule == spec.KnockRestricted && versionAtLeast(acc.version, 10)
}

func (acc roomAccess) restricted() bool {
	return acc.joinRule == spec.Restricted && versionAtLeast(acc.version, 8) ||
		acc.joinRule == spec.KnockRestricted && versionAtLeast(acc.version, 10)
}

// versionAtLeast reports whether a (numeric) room version is n or later.
func versionAtLeast(version string, n int) bool {
	v, err := strconv.Atoi(version)
	return err == nil && v >= n
}

// mayPreview applies the spec's rule for which rooms a user is shown
// (space_hierarchy.yaml's rooms; room_summary.yaml): anyone may preview a
// room that is public, knockable or world_readable; otherwise its joined
// and invited members may, and for a restricted room the members of a room
// its join rules allow. userID is "" for an unauthenticated caller. The
// caller's membership ("" for none) comes back too.
func (a *API) mayPreview(ctx context.Context, acc roomAccess, userID string) (membership string, ok bool, err error) {
	if userID != "" {
		if membership, err = a.rooms.Membership(ctx, acc.roomID, userID); err != nil {
			return "", false, err
		}
	}
	if acc.joinRule == spec.Public || acc.knockable() || acc.worldReadable {
		return membership, true, nil
	}
	if userID == "" {
		return "", false, nil
	}
	if membership == spec.Join || membership == spec.Invite {
		return membership, true, nil
	}
	if acc.restricted() {
		for _, allowed := range acc.allow {
			m, err := a.rooms.Membership(ctx, allowed, userID)
			if err != nil {
				return "", false, err
			}
			if m == spec.Join {
				return membership, true, nil
			}
		}
	}
	return membership, false, nil
}

// previewRoom reads what a RoomSummary shows of a room.
func (a *API) previewRoom(ctx context.Context, acc roomAccess) (roomPreview, error) {
	p := roomPreview{RoomID: acc.roomID, RoomVersion: acc.version, RoomType: acc.roomType, JoinRule: acc.joinRule,
		WorldReadable: acc.worldReadable}
	if acc.restricted() {
		p.AllowedRoomIDs = acc.allow
	}
	n, err := a.db.JoinedMemberCount(ctx, acc.roomID)
	if err != nil {
		return p, err
	}
	p.NumJoinedMembers = n
	for _, typ := range []string{spec.MRoomName, spec.MRoomTopic, spec.MRoomAvatar, spec.MRoomCanonicalAlias, spec.MRoomGuestAccess, spec.MRoomEncryption} {
		ev, err := a.rooms.CurrentStateEvent(ctx, acc.roomID, typ, "")
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

// roomSummaryResponse is a room summary with the caller's membership,
// which is absent for unauthenticated callers.
type roomSummaryResponse struct {
	roomPreview
	Membership string `json:"membership,omitempty"`
}

// getRoomSummary is GET /_matrix/client/v1/room_summary/{roomIdOrAlias}. The
// spec lets servers answer without an access token for rooms anyone may
// preview, as Synapse does; rooms the caller may not preview and unknown
// rooms are alike 404 M_NOT_FOUND. The via parameter names servers to ask
// over federation, which does not exist yet, so it is not used.
func (a *API) getRoomSummary(r *http.Request) (any, error) {
	ctx := r.Context()
	dev, err := a.optionalDevice(r)
	if err != nil {
		return nil, err
	}
	idOrAlias, err := pathVar(r, "roomIdOrAlias")
	if err != nil {
		return nil, err
	}
	roomID, err := a.resolveRoomIDOrAlias(ctx, idOrAlias)
	if err != nil {
		return nil, err
	}
	notFound := mxhttp.NotFound("Room not found or is not accessible")
	acc, found, err := a.loadRoomAccess(ctx, roomID)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, notFound
	}
	userID := ""
	if dev != nil {
		userID = dev.UserID
	}
	membership, ok, err := a.mayPreview(ctx, acc, userID)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, notFound
	}
	p, err := a.previewRoom(ctx, acc)
	if err != nil {
		return nil, err
	}
	resp := roomSummaryResponse{roomPreview: p}
	if dev != nil {
		// As Synapse: "leave" when the caller has no membership at all.
		resp.Membership = membership
		if resp.Membership == "" {
			resp.Membership = spec.Leave
		}
	}
	return resp, nil
}

// optionalDevice authenticates the caller of an endpoint that also
// answers without an access token: nil when the request carries none; a
// token that is given must be valid (401 otherwise).
func (a *API) optionalDevice(r *http.Request) (*userapi.Device, error) {
	token, ok := userapi.AccessTokenFrom(r)
	if !ok {
		return nil, nil
	}
	dev, err := a.users.Authenticate(r.Context(), token)
	if err != nil {
		return nil, err
	}
	a.users.Touch(r.Context(), dev, clientIP(r), r.UserAgent())
	return dev, nil
}
