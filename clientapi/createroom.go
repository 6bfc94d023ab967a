package clientapi

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"maps"
	"net/http"
	"slices"
	"strings"
	"unicode"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/roomserver"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/userapi"
)

// Room creation presets (create_room.yaml).
const (
	presetPrivate        = "private_chat"
	presetTrustedPrivate = "trusted_private_chat"
	presetPublic         = "public_chat"
)

// createRoomRequest is the body of POST /createRoom. Optional strings are
// pointers because an empty name or topic is still sent, as Synapse does.
type createRoomRequest struct {
	Visibility                string                     `json:"visibility"`
	RoomAliasName             *string                    `json:"room_alias_name"`
	Name                      *string                    `json:"name"`
	Topic                     *string                    `json:"topic"`
	Invite                    []string                   `json:"invite"`
	Invite3PID                []json.RawMessage          `json:"invite_3pid"`
	RoomVersion               *string                    `json:"room_version"`
	CreationContent           map[string]json.RawMessage `json:"creation_content"`
	InitialState              []initialStateEvent        `json:"initial_state"`
	Preset                    string                     `json:"preset"`
	IsDirect                  bool                       `json:"is_direct"`
	PowerLevelContentOverride map[string]json.RawMessage `json:"power_level_content_override"`
}

type initialStateEvent struct {
	Type     string          `json:"type"`
	StateKey string          `json:"state_key"`
	Content  json.RawMessage `json:"content"`
}

// newRoom is a createRoom request checked and resolved: what the events
// are built from.
type newRoom struct {
	creator   string
	version   gomatrixserverlib.IRoomVersion
	preset    string
	alias     string // the full alias, or ""
	invites   []string
	creation  map[string]json.RawMessage
	creators  []string // additional creators (room version 12)
	initial   []initialStateEvent
	initialPL json.RawMessage // an m.room.power_levels in initial_state
	override  map[string]json.RawMessage
	req       createRoomRequest
}

// createRoom is POST /createRoom. Everything the request implies is
// checked before anything is stored; the room's initial events are then
// made in one roomserver input, so the room exists whole or not at all.
func (a *API) createRoom(r *http.Request, dev *userapi.Device) (any, error) {
	ctx := r.Context()
	if err := forbidGuest(dev); err != nil {
		return nil, err
	}
	// Synapse counts room creation against the message rate limit.
	if err := limit(a.messageLimit, dev.UserID); err != nil {
		return nil, err
	}
	var req createRoomRequest
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	nr, err := a.checkCreateRoom(ctx, dev.UserID, req)
	if err != nil {
		return nil, err
	}
	events, err := a.initialEvents(ctx, nr)
	if err != nil {
		return nil, err
	}
	resp, err := a.rooms.Input(ctx, roomserver.InputRequest{InputID: "create:" + rand.Text(),
		CreateRoom: &roomserver.CreateRoom{RoomVersion: string(nr.version.Version()), Events: events}})
	if err != nil {
		var me *mxhttp.Error
		if errors.As(err, &me) && me.Code == "M_FORBIDDEN" {
			// The request's own state broke the auth rules, e.g. a power
			// level too low to set the name (create_room.yaml's 400).
			return nil, mxhttp.Errorf(http.StatusBadRequest, "M_INVALID_ROOM_STATE", "Invalid initial room state: %s", me.Message)
		}
		return nil, err
	}
	roomID := resp.RoomID
	if nr.alias != "" {
		// Checked free above; a concurrent request can still have taken it
		// since, and then the room stays without it.
		switch err := a.db.CreateAlias(ctx, nr.alias, roomID, dev.UserID); {
		case errors.Is(err, sql.ErrExists):
			return nil, mxhttp.Errorf(http.StatusBadRequest, "M_ROOM_IN_USE", "Room alias %s is already taken", nr.alias)
		case err != nil:
			return nil, mxhttp.Internal(err)
		}
	}
	if req.Visibility == "public" {
		if err := a.db.SetRoomPublished(ctx, roomID, true); err != nil {
			return nil, mxhttp.Internal(err)
		}
	}
	return map[string]string{"room_id": roomID}, nil
}

// checkCreateRoom validates a createRoom request, in the order Synapse
// does, and resolves its defaults.
func (a *API) checkCreateRoom(ctx context.Context, creator string, req createRoomRequest) (*newRoom, error) {
	nr := &newRoom{creator: creator, req: req}
	version := defaultRoomVersion
	if req.RoomVersion != nil {
		version = *req.RoomVersion
	}
	if _, ok := roomVersions[version]; !ok {
		return nil, mxhttp.Errorf(http.StatusBadRequest, "M_UNSUPPORTED_ROOM_VERSION", "This server does not support room version %q", version)
	}
	var err error
	if nr.version, err = gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(version)); err != nil {
		return nil, mxhttp.Errorf(http.StatusBadRequest, "M_UNSUPPORTED_ROOM_VERSION", "This server does not support room version %q", version)
	}
	switch req.Visibility {
	case "", "private", "public":
	default:
		return nil, mxhttp.InvalidParam("visibility must be public or private")
	}
	nr.preset = req.Preset
	if nr.preset == "" {
		// The spec: without a preset, the visibility picks one.
		nr.preset = presetPrivate
		if req.Visibility == "public" {
			nr.preset = presetPublic
		}
	}
	switch nr.preset {
	case presetPrivate, presetTrustedPrivate, presetPublic:
	default:
		return nil, mxhttp.BadJSON("%q is not a valid preset", nr.preset)
	}
	if req.RoomAliasName != nil {
		if nr.alias, err = a.newAlias(ctx, *req.RoomAliasName); err != nil {
			return nil, err
		}
	}
	for _, u := range req.Invite {
		if _, err := spec.NewUserID(u, true); err != nil {
			return nil, mxhttp.InvalidParam("Invalid user id %q in invite", u)
		}
		if u == creator {
			return nil, mxhttp.InvalidParam("The room creator cannot invite themselves")
		}
		if slices.Contains(nr.invites, u) {
			continue
		}
		// An invitee who blocks invites fails the request before the room
		// exists: the spec lets the room be made without them, but a
		// client told 403 would not learn its id.
		if localpart, err := a.users.LocalpartOf(u); err == nil {
			if err := a.checkInvitable(ctx, localpart, u); err != nil {
				return nil, err
			}
		}
		nr.invites = append(nr.invites, u)
	}
	if len(req.Invite3PID) > 0 {
		// Third-party invites need an identity server, which Weft does not
		// talk to.
		return nil, mxhttp.InvalidParam("Third-party invites (invite_3pid) are not supported")
	}
	if err := nr.checkInitialState(); err != nil {
		return nil, err
	}
	if err := nr.resolveCreators(); err != nil {
		return nil, err
	}
	if err := nr.checkOverride(); err != nil {
		return nil, err
	}
	return nr, nil
}

// newAlias checks a room_alias_name and that its alias is free: 400
// M_ROOM_IN_USE when taken.
func (a *API) newAlias(ctx context.Context, name string) (string, error) {
	// Like Synapse: a localpart, never a whole alias, and no whitespace.
	if name == "" || strings.ContainsFunc(name, unicode.IsSpace) {
		return "", mxhttp.InvalidParam("room_alias_name must be a non-empty alias localpart without whitespace")
	}
	if strings.Contains(name, ":") {
		return "", mxhttp.InvalidParam("':' is not permitted in room_alias_name: it is a local part ('wombat', not '#wombat:example.com')")
	}
	alias := "#" + name + ":" + a.users.ServerName()
	if _, _, err := parseAlias(alias); err != nil {
		return "", err
	}
	switch _, err := a.db.AliasRoom(ctx, alias); {
	case err == nil:
		return "", mxhttp.Errorf(http.StatusBadRequest, "M_ROOM_IN_USE", "Room alias %s is already taken", alias)
	case !errors.Is(err, sql.ErrNotFound):
		return "", mxhttp.Internal(err)
	}
	return alias, nil
}

// checkInitialState validates initial_state: each entry a type and an
// object content. Entries for the same state replace earlier ones in
// place, as Synapse keeps them; a power_levels entry is taken out, since
// it replaces the default power levels (and their override) where they go.
func (nr *newRoom) checkInitialState() error {
	index := map[sql.StateKey]int{}
	for i, e := range nr.req.InitialState {
		if e.Type == "" {
			return mxhttp.BadJSON("initial_state[%d] has no type", i)
		}
		if len(e.Type) > maxTypeBytes || len(e.StateKey) > maxTypeBytes {
			return mxhttp.TooLarge("initial_state[%d]: type and state_key are limited to %d bytes", i, maxTypeBytes)
		}
		if !isJSONObject(e.Content) {
			return mxhttp.BadJSON("initial_state[%d] needs a content object", i)
		}
		k := sql.StateKey{Type: e.Type, StateKey: e.StateKey}
		if k == (sql.StateKey{Type: spec.MRoomPowerLevels}) {
			nr.initialPL = e.Content
			continue
		}
		if j, ok := index[k]; ok {
			nr.initial[j] = e
			continue
		}
		index[k] = len(nr.initial)
		nr.initial = append(nr.initial, e)
	}
	return nil
}

// resolveCreators fills the m.room.create content: creation_content with
// room_version (and creator before version 11) set by the server. In room
// version 12, additional_creators must be user ids, and a
// trusted_private_chat makes its invitees creators too (create_room.yaml).
func (nr *newRoom) resolveCreators() error {
	nr.creation = maps.Clone(nr.req.CreationContent)
	if nr.creation == nil {
		nr.creation = map[string]json.RawMessage{}
	}
	nr.creation["room_version"] = mustJSON(nr.version.Version())
	delete(nr.creation, "creator")
	if beforeV11(string(nr.version.Version())) {
		// Room version 11 dropped creator for the create event's sender.
		nr.creation["creator"] = mustJSON(nr.creator)
	}
	if !nr.version.PrivilegedCreators() {
		return nil
	}
	if raw, ok := nr.creation["additional_creators"]; ok {
		if err := json.Unmarshal(raw, &nr.creators); err != nil {
			return mxhttp.InvalidParam("creation_content.additional_creators must be a list of user ids")
		}
		for _, c := range nr.creators {
			if _, err := spec.NewUserID(c, true); err != nil {
				return mxhttp.InvalidParam("Invalid user id %q in additional_creators", c)
			}
		}
	}
	if nr.preset == presetTrustedPrivate {
		for _, u := range nr.invites {
			if !slices.Contains(nr.creators, u) {
				nr.creators = append(nr.creators, u)
			}
		}
		if len(nr.creators) > 0 {
			nr.creation["additional_creators"] = mustJSON(nr.creators)
		}
	}
	return nil
}

// checkOverride refuses a power_level_content_override that takes the
// creator's power away: before room version 12 (as Synapse) its users must
// list the creator; from version 12 it must list no creator at all, since
// creators' power is implied and the auth rules reject listing them.
func (nr *newRoom) checkOverride() error {
	nr.override = nr.req.PowerLevelContentOverride
	raw, ok := nr.override["users"]
	if !ok {
		return nil
	}
	var users map[string]json.RawMessage
	if err := json.Unmarshal(raw, &users); err != nil {
		return mxhttp.BadJSON("power_level_content_override.users must be an object")
	}
	if !nr.version.PrivilegedCreators() {
		if _, ok := users[nr.creator]; !ok {
			return mxhttp.InvalidParam("Not a valid power_level_content_override: 'users' did not contain %s", nr.creator)
		}
		return nil
	}
	for _, c := range append([]string{nr.creator}, nr.creators...) {
		if _, ok := users[c]; ok {
			return mxhttp.InvalidParam("Not a valid power_level_content_override: room creators (%s) cannot be given a power level", c)
		}
	}
	return nil
}

// initialEvents lists a new room's events in the spec's order: create,
// the creator's join, power levels, canonical alias, the preset's state,
// initial_state, name, topic, then the invites.
func (a *API) initialEvents(ctx context.Context, nr *newRoom) ([]roomserver.NewEvent, error) {
	creator := nr.creator
	var events []roomserver.NewEvent
	add := func(typ, stateKey string, content any) error {
		raw, ok := content.(json.RawMessage)
		if !ok {
			var err error
			if raw, err = json.Marshal(content); err != nil {
				return mxhttp.Internal(err)
			}
		}
		events = append(events, roomserver.NewEvent{Sender: creator, Type: typ, StateKey: &stateKey, Content: raw})
		return nil
	}
	inInitial := func(typ string) bool {
		return slices.ContainsFunc(nr.initial, func(e initialStateEvent) bool { return e.Type == typ && e.StateKey == "" })
	}
	join := a.memberProfile(ctx, creator)
	join["membership"] = mustJSON(spec.Join)
	pl := nr.initialPL
	if pl == nil {
		pl = nr.powerLevels()
	}
	steps := []struct {
		typ, key string
		content  any
		skip     bool
	}{
		{spec.MRoomCreate, "", nr.creation, false},
		{spec.MRoomMember, creator, join, false},
		{spec.MRoomPowerLevels, "", pl, false},
		{spec.MRoomCanonicalAlias, "", map[string]string{"alias": nr.alias}, nr.alias == "" || inInitial(spec.MRoomCanonicalAlias)},
		{spec.MRoomJoinRules, "", map[string]string{"join_rule": nr.joinRule()}, inInitial(spec.MRoomJoinRules)},
		{spec.MRoomHistoryVisibility, "", map[string]string{"history_visibility": "shared"}, inInitial(spec.MRoomHistoryVisibility)},
		{spec.MRoomGuestAccess, "", map[string]string{"guest_access": "can_join"}, nr.preset == presetPublic || inInitial(spec.MRoomGuestAccess)},
	}
	for _, s := range steps {
		if !s.skip {
			if err := add(s.typ, s.key, s.content); err != nil {
				return nil, err
			}
		}
	}
	for _, e := range nr.initial {
		// name and topic overwrite their initial_state (create_room.yaml).
		if e.StateKey == "" && (e.Type == spec.MRoomName && nr.req.Name != nil || e.Type == spec.MRoomTopic && nr.req.Topic != nil) {
			continue
		}
		if err := add(e.Type, e.StateKey, e.Content); err != nil {
			return nil, err
		}
	}
	if nr.req.Name != nil {
		if err := add(spec.MRoomName, "", map[string]string{"name": *nr.req.Name}); err != nil {
			return nil, err
		}
	}
	if nr.req.Topic != nil {
		// Spec v1.15: the topic also as m.topic rich content, text/plain.
		topic := map[string]any{"topic": *nr.req.Topic, "m.topic": map[string]any{"m.text": []map[string]string{{"body": *nr.req.Topic}}}}
		if err := add(spec.MRoomTopic, "", topic); err != nil {
			return nil, err
		}
	}
	for _, u := range nr.invites {
		invite := a.memberProfile(ctx, u)
		invite["membership"] = mustJSON(spec.Invite)
		if nr.req.IsDirect {
			invite["is_direct"] = mustJSON(true)
		}
		if err := add(spec.MRoomMember, u, invite); err != nil {
			return nil, err
		}
	}
	return events, nil
}

func (nr *newRoom) joinRule() string {
	if nr.preset == presetPublic {
		return spec.Public
	}
	return spec.Invite
}

// powerLevels is the default m.room.power_levels content, Synapse's,
// with the preset's changes and then the request's override laid over
// it key by key, as Synapse does.
func (nr *newRoom) powerLevels() json.RawMessage {
	privileged := nr.version.PrivilegedCreators()
	users := map[string]int{}
	if !privileged {
		// From room version 12 creators are not listed: their power is
		// implied and unbounded.
		users[nr.creator] = 100
		if nr.preset == presetTrustedPrivate {
			for _, u := range nr.invites {
				users[u] = 100
			}
		}
	}
	tombstone := 100
	if privileged {
		// Spec v1.16: above state_default and the old admin level, so that
		// upgrading stays with the creators unless they say otherwise.
		tombstone = 150
	}
	invite := 0
	if nr.preset == presetPublic {
		invite = 50
	}
	content := map[string]json.RawMessage{
		"users":         mustJSON(users),
		"users_default": mustJSON(0),
		"events": mustJSON(map[string]int{
			spec.MRoomName:              50,
			spec.MRoomPowerLevels:       100,
			spec.MRoomHistoryVisibility: 100,
			spec.MRoomCanonicalAlias:    50,
			"m.room.avatar":             50,
			"m.room.tombstone":          tombstone,
			"m.room.server_acl":         100,
			"m.room.encryption":         100,
		}),
		"events_default": mustJSON(0),
		"state_default":  mustJSON(50),
		"ban":            mustJSON(50),
		"kick":           mustJSON(50),
		"redact":         mustJSON(50),
		"invite":         mustJSON(invite),
		"notifications":  mustJSON(map[string]int{"room": 50}),
	}
	maps.Copy(content, nr.override)
	return mustJSON(content)
}

// memberProfile is the profile a local user's membership event carries
// (displayname, avatar_url), as Synapse adds it to joins and invites; empty
// for remote users or when it cannot be read.
func (a *API) memberProfile(ctx context.Context, userID string) map[string]json.RawMessage {
	out := map[string]json.RawMessage{}
	localpart, err := a.users.LocalpartOf(userID)
	if err != nil {
		return out
	}
	fields, err := a.db.ProfileFields(ctx, localpart)
	if err != nil {
		a.log.Warn("read profile for membership", "user_id", userID, "err", err)
		return out
	}
	for _, k := range []string{"displayname", "avatar_url"} {
		if v, ok := fields[k]; ok {
			out[k] = v
		}
	}
	return out
}

// isJSONObject reports whether raw is a JSON object.
func isJSONObject(raw json.RawMessage) bool {
	var m map[string]json.RawMessage
	return len(raw) > 0 && raw[0] == '{' && json.Unmarshal(raw, &m) == nil
}

// mustJSON marshals values that cannot fail to marshal (strings, numbers,
// and maps and slices of them).
func mustJSON(v any) json.RawMessage {
	b, _ := json.Marshal(v)
	return b
}
