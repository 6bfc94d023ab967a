package clientapi

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"maps"
	"math"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/roomserver"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/userapi"
)

// roomExtrasRoutes registers room upgrades, space hierarchies, room
// summaries, mutual rooms and content reports.
func (a *API) roomExtrasRoutes(r *mux.Router) {
	u := &upgrades{API: a, runs: map[string]*upgradeRun{}}
	handle(r, "/rooms/{roomId}/upgrade", a.authedJSON(u.upgrade), http.MethodPost)
	r.Handle(clientV1+"/rooms/{roomId}/hierarchy", a.authedJSON(a.hierarchy)).Methods(http.MethodGet)
	r.Handle(clientV1+"/room_summary/{roomIdOrAlias}", mxhttp.JSON(a.getRoomSummary)).Methods(http.MethodGet)
	r.Handle(clientV1+"/mutual_rooms", a.authedJSON(a.mutualRooms)).Methods(http.MethodGet)
	handle(r, "/rooms/{roomId}/report/{eventId}", a.authedJSON(a.reportEvent), http.MethodPost)
	handle(r, "/rooms/{roomId}/report", a.authedJSON(a.reportRoom), http.MethodPost)
	handle(r, "/users/{userId}/report", a.authedJSON(a.reportUser), http.MethodPost)
	r.Handle(adminPrefix+"/event_reports", a.adminJSON(a.listEventReports)).Methods(http.MethodGet)
	r.Handle(adminPrefix+"/event_reports/{reportId}", a.adminJSON(a.getEventReport)).Methods(http.MethodGet)
	r.Handle(adminPrefix+"/event_reports/{reportId}", a.adminJSON(a.deleteEventReport)).Methods(http.MethodDelete)
}

// Room upgrades (spec: "Room Upgrades", room_upgrades.yaml), done as
// Synapse does them: the replacement room is made first, whole, in one
// roomserver input (its create event naming the old room as predecessor,
// the old room's transferable state, bans and space children); then the
// old room gets its tombstone, its local aliases and directory entry move,
// and its power levels are raised so that ordinary members can no longer
// talk or invite there. The steps after the tombstone are best effort: the
// room is upgraded once the tombstone is sent, so their failures are
// logged rather than failing the request.

// tombstoneType is the m.room.tombstone event type.
const tombstoneType = "m.room.tombstone"

// upgradeReplay is how long an upgrade's answer is given again to the same
// user asking for the same upgrade of the same room (Synapse's response
// cache), so that a retried request does not make a second room.
const upgradeReplay = 5 * time.Minute

// maxPowerLevel is the largest integer canonical JSON allows.
const maxPowerLevel = 1<<53 - 1

// upgrades serves POST /rooms/{roomId}/upgrade and keeps the upgrades in
// progress or recently done, by old room id. mu guards runs only and is
// never held while an upgrade runs.
type upgrades struct {
	*API
	mu   sync.Mutex
	runs map[string]*upgradeRun
}

// upgradeRun is one upgrade of a room. Its result fields are written
// before done is closed and read only after.
type upgradeRun struct {
	userID, version string
	done            chan struct{}
	replacement     string
	err             error
	finished        time.Time
}

type upgradeRequest struct {
	version  gomatrixserverlib.IRoomVersion
	creators []string // additional creators, for versions with privileged creators
}

// upgrade is POST /rooms/{roomId}/upgrade {new_version, additional_creators?}.
func (u *upgrades) upgrade(r *http.Request, dev *userapi.Device) (any, error) {
	ctx := r.Context()
	if err := forbidGuest(dev); err != nil {
		return nil, err
	}
	roomID, err := roomIDPath(r)
	if err != nil {
		return nil, err
	}
	req, err := readUpgradeRequest(r, dev.UserID)
	if err != nil {
		return nil, err
	}
	if err := limit(u.messageLimit, dev.UserID); err != nil {
		return nil, err
	}
	if _, err := u.rooms.RoomVersion(ctx, roomID); err != nil {
		return nil, err // 404 M_NOT_FOUND for unknown rooms, as in Synapse
	}
	if err := u.mayUpgrade(ctx, roomID, dev.UserID); err != nil {
		return nil, err
	}
	run, leader, err := u.claim(roomID, dev.UserID, string(req.version.Version()))
	if err != nil {
		return nil, err
	}
	if leader {
		// The upgrade runs to its end even if the client goes away: a half
		// upgraded room is worse than an answer nobody reads.
		replacement, err := u.run(context.WithoutCancel(ctx), roomID, dev, req)
		u.finish(roomID, run, replacement, err)
	}
	select {
	case <-run.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if run.err != nil {
		return nil, run.err
	}
	return map[string]string{"replacement_room": run.replacement}, nil
}

// readUpgradeRequest reads and checks the body: 400 M_MISSING_PARAM
// without new_version, M_UNSUPPORTED_ROOM_VERSION for a version this
// server does not support, M_INVALID_PARAM for additional creators that
// are not user ids (checked only when the new version has them; the spec
// says they are ignored otherwise).
func readUpgradeRequest(r *http.Request, caller string) (upgradeRequest, error) {
	var body struct {
		NewVersion         json.RawMessage `json:"new_version"`
		AdditionalCreators json.RawMessage `json:"additional_creators"`
	}
	var req upgradeRequest
	if err := mxhttp.ReadJSON(r, &body); err != nil {
		return req, err
	}
	if !jsonPresent(body.NewVersion) {
		return req, mxhttp.MissingParam("Missing new_version")
	}
	var version string
	if json.Unmarshal(body.NewVersion, &version) != nil {
		return req, mxhttp.BadJSON("new_version must be a string")
	}
	unsupported := mxhttp.Errorf(http.StatusBadRequest, "M_UNSUPPORTED_ROOM_VERSION", "This server does not support room version %q", version)
	if _, ok := roomVersions[version]; !ok {
		return req, unsupported
	}
	var err error
	if req.version, err = gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(version)); err != nil {
		return req, unsupported
	}
	if !req.version.PrivilegedCreators() || !jsonPresent(body.AdditionalCreators) {
		return req, nil
	}
	var creators []string
	if json.Unmarshal(body.AdditionalCreators, &creators) != nil {
		return req, mxhttp.BadJSON("additional_creators must be a list of user ids")
	}
	for _, c := range creators {
		if _, err := spec.NewUserID(c, true); err != nil {
			return req, mxhttp.InvalidParam("Invalid user id %q in additional_creators", c)
		}
		// The caller is the creator; listing them again changes nothing.
		if c != caller && !slices.Contains(req.creators, c) {
			req.creators = append(req.creators, c)
		}
	}
	return req, nil
}

// mayUpgrade is the spec's first step: the user must be able to send
// m.room.tombstone in the room (403 M_FORBIDDEN otherwise), which needs
// being joined and the event's power level.
func (u *upgrades) mayUpgrade(ctx context.Context, roomID, userID string) error {
	m, err := u.rooms.Membership(ctx, roomID, userID)
	if err != nil {
		return err
	}
	if m != spec.Join {
		return mxhttp.Forbidden("You are not in the room, so you cannot upgrade it")
	}
	power, err := u.rooms.Power(ctx, roomID)
	if err != nil {
		return err
	}
	levels := power.Levels()
	if power.UserLevel(userID) < levels.EventLevel(tombstoneType, true) {
		return mxhttp.Forbidden("You cannot upgrade this room: you need the power to send %s", tombstoneType)
	}
	return nil
}

// claim registers an upgrade of roomID. leader is true when the caller
// must run it; otherwise run is an upgrade by the same user to wait for
// (still going, or done within upgradeReplay). Another user's upgrade in
// progress is a 400, as in Synapse.
func (u *upgrades) claim(roomID, userID, version string) (run *upgradeRun, leader bool, err error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	now := time.Now()
	for id, r := range u.runs {
		if !r.finished.IsZero() && now.Sub(r.finished) > upgradeReplay {
			delete(u.runs, id)
		}
	}
	if r, ok := u.runs[roomID]; ok {
		switch {
		case r.finished.IsZero() && r.userID != userID:
			return nil, false, mxhttp.Errorf(http.StatusBadRequest, "M_UNKNOWN", "An upgrade for this room is currently in progress")
		case r.finished.IsZero(), r.userID == userID && r.version == version:
			return r, false, nil
		}
	}
	run = &upgradeRun{userID: userID, version: version, done: make(chan struct{})}
	u.runs[roomID] = run
	return run, true, nil
}

// finish records an upgrade's outcome. A failed upgrade is forgotten at
// once, so that it can be tried again.
func (u *upgrades) finish(roomID string, run *upgradeRun, replacement string, err error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	run.replacement, run.err, run.finished = replacement, err, time.Now()
	if err != nil && u.runs[roomID] == run {
		delete(u.runs, roomID)
	}
	close(run.done)
}

// oldRoom is the state of the room being upgraded.
type oldRoom struct {
	id      string
	version gomatrixserverlib.IRoomVersion
	state   map[sql.StateKey]gomatrixserverlib.PDU
	power   roomserver.Power
}

func (o *oldRoom) get(typ, key string) gomatrixserverlib.PDU {
	return o.state[sql.StateKey{Type: typ, StateKey: key}]
}

// run performs an upgrade and returns the replacement room's id.
func (u *upgrades) run(ctx context.Context, roomID string, dev *userapi.Device, req upgradeRequest) (string, error) {
	old, err := u.loadOldRoom(ctx, roomID)
	if err != nil {
		return "", err
	}
	events, err := u.replacementEvents(ctx, old, dev.UserID, req)
	if err != nil {
		return "", err
	}
	resp, err := u.rooms.Input(ctx, roomserver.InputRequest{InputID: "upgrade:" + rand.Text(),
		CreateRoom: &roomserver.CreateRoom{RoomVersion: string(req.version.Version()), Events: events}})
	if err != nil {
		return "", err
	}
	newID := resp.RoomID
	u.log.Info("room upgraded", "old_room_id", roomID, "new_room_id", newID, "user_id", dev.UserID, "version", req.version.Version())
	tombstone := map[string]string{"body": "This room has been replaced", "replacement_room": newID}
	if err := u.sendState(ctx, roomID, dev.UserID, tombstoneType, tombstone); err != nil {
		return "", err
	}
	u.moveAliases(ctx, old, newID, dev.UserID)
	u.moveDirectoryEntry(ctx, roomID, newID)
	u.restrictOldRoom(ctx, old, dev.UserID)
	return newID, nil
}

func (u *upgrades) loadOldRoom(ctx context.Context, roomID string) (*oldRoom, error) {
	v, err := u.rooms.RoomVersion(ctx, roomID)
	if err != nil {
		return nil, err
	}
	o := &oldRoom{id: roomID, state: map[sql.StateKey]gomatrixserverlib.PDU{}}
	if o.version, err = gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(v)); err != nil {
		return nil, mxhttp.Internal(err)
	}
	state, err := u.rooms.CurrentState(ctx, roomID)
	if err != nil {
		return nil, err
	}
	for _, ev := range state {
		if sk := ev.StateKey(); sk != nil {
			o.state[sql.StateKey{Type: ev.Type(), StateKey: *sk}] = ev
		}
	}
	if o.power, err = u.rooms.Power(ctx, roomID); err != nil {
		return nil, err
	}
	return o, nil
}

// copiedState lists the state an upgrade copies (the spec's recommended
// list, as Synapse copies it), in the order it is sent.
var copiedState = []string{spec.MRoomJoinRules, spec.MRoomHistoryVisibility, spec.MRoomGuestAccess, spec.MRoomName,
	spec.MRoomTopic, spec.MRoomAvatar, spec.MRoomEncryption, "m.room.server_acl"}

// replacementEvents lists the replacement room's initial events, all sent
// by the upgrading user: create, join, power levels, the copied state, the
// canonical alias (its local aliases, which move), the space children of a
// space, and the old room's bans.
func (u *upgrades) replacementEvents(ctx context.Context, old *oldRoom, caller string, req upgradeRequest) ([]roomserver.NewEvent, error) {
	var events []roomserver.NewEvent
	add := func(typ, key string, content any) {
		raw, ok := content.(json.RawMessage)
		if !ok {
			raw = mustJSON(content)
		}
		events = append(events, roomserver.NewEvent{Sender: caller, Type: typ, StateKey: &key, Content: raw})
	}
	newVersion := string(req.version.Version())
	creation := map[string]any{"room_version": newVersion}
	// The spec asks for the event id of the old room's last event; Synapse
	// gives the tombstone's, but the room ids of new rooms are chosen by
	// the roomserver, so the tombstone (which names the new room) comes
	// after, and the last event before it is named instead. From version
	// 12 the spec lets event_id be omitted; it is given all the same.
	last, _, err := u.rooms.LastEventAt(ctx, old.id, math.MaxInt64)
	if err != nil {
		return nil, err
	}
	creation["predecessor"] = map[string]string{"room_id": old.id, "event_id": last.EventID}
	if beforeV11(newVersion) {
		creation["creator"] = caller
	}
	if req.version.PrivilegedCreators() && len(req.creators) > 0 {
		creation["additional_creators"] = req.creators
	}
	oldCreate := old.get(spec.MRoomCreate, "")
	var oldCreation map[string]json.RawMessage
	if oldCreate != nil {
		_ = json.Unmarshal(oldCreate.Content(), &oldCreation)
	}
	// The room type carries over (spec v1.4), as does a room's refusal to
	// federate (Synapse).
	var roomType string
	if t, ok := oldCreation["type"]; ok {
		creation["type"] = t
		_ = json.Unmarshal(t, &roomType)
	}
	if f, ok := oldCreation["m.federate"]; ok && string(f) == "false" {
		creation["m.federate"] = false
	}
	add(spec.MRoomCreate, "", creation)

	join := u.memberProfile(ctx, caller)
	join["membership"] = mustJSON(spec.Join)
	add(spec.MRoomMember, caller, join)

	newCreators := append([]string{caller}, req.creators...)
	pl := upgradedPowerLevels(old, caller, newCreators, req.version)
	add(spec.MRoomPowerLevels, "", pl.content)

	for _, typ := range copiedState {
		if ev := old.get(typ, ""); ev != nil {
			add(typ, "", json.RawMessage(ev.Content()))
		}
	}
	if alias := u.splitCanonicalAlias(old).moved; alias != nil {
		add(spec.MRoomCanonicalAlias, "", alias)
	}
	var children, bans []gomatrixserverlib.PDU
	for k, ev := range old.state {
		switch {
		case k.Type == spec.MSpaceChild && roomType == "m.space":
			children = append(children, ev)
		case k.Type == spec.MRoomMember:
			if m, err := ev.Membership(); err == nil && m == spec.Ban {
				bans = append(bans, ev)
			}
		}
	}
	byKey := func(x, y gomatrixserverlib.PDU) int { return cmp.Compare(*x.StateKey(), *y.StateKey()) }
	slices.SortFunc(children, byKey)
	slices.SortFunc(bans, byKey)
	for _, ev := range children {
		// A child with empty content was removed from the space (Synapse).
		if string(ev.Content()) != "{}" {
			add(spec.MSpaceChild, *ev.StateKey(), json.RawMessage(ev.Content()))
		}
	}
	for _, ev := range bans {
		// A ban the upgrading user may not make in the new room would fail
		// the whole room, so it is left out: a creator of the new room, or
		// a user whose level there is not below the upgrading user's.
		if pl.mayBan(*ev.StateKey()) {
			add(spec.MRoomMember, *ev.StateKey(), json.RawMessage(ev.Content()))
		}
	}
	return events, nil
}

// newPowerLevels is the replacement room's m.room.power_levels.
type newPowerLevels struct {
	content  map[string]json.RawMessage
	levels   gomatrixserverlib.PowerLevelContent // as the auth rules read content
	caller   string
	creators []string // privileged creators of the new room; nil before version 12
}

// callerLevel is the upgrading user's level in the new room.
func (p *newPowerLevels) callerLevel() int64 {
	if p.creators != nil {
		return math.MaxInt64
	}
	return p.levels.UserLevel(spec.SenderID(p.caller))
}

// mayBan reports whether the upgrading user may ban target in the new room.
func (p *newPowerLevels) mayBan(target string) bool {
	if slices.Contains(p.creators, target) || target == p.caller {
		return false
	}
	level := p.callerLevel()
	return level >= p.levels.Ban && level > p.levels.UserLevel(spec.SenderID(target))
}

// upgradedPowerLevels is the replacement room's power levels: the old
// room's, with every level it sets written as an integer (room versions
// 10 and later refuse the strings older ones allowed), then adapted:
//
//   - Up to version 11 the upgrading user is raised, if need be, to the
//     level that sending the copied state and bans needs (Synapse's
//     clone_existing_room). Coming from a version with privileged creators,
//     the old creators, whose power was implied, get a level above every
//     other user, so they keep the last word (Synapse's fix for downgrades).
//   - From version 12 the creators (the upgrading user and the additional
//     creators) must not be listed. Coming from an older version, the level
//     for m.room.tombstone is raised to 150 and above state_default, as in
//     a new room (spec v1.16, MSC4289): upgrading becomes the creators'
//     business, not every admin's.
//
// The spec's list of what to copy leaves the rest to the server: this
// sends the power levels once, in their final form, since the room is
// made whole in one input (Synapse's second power levels event only
// restored the first's temporary raise).
func upgradedPowerLevels(old *oldRoom, caller string, newCreators []string, newVersion gomatrixserverlib.IRoomVersion) *newPowerLevels {
	levels := old.power.Levels()
	oldPL := old.get(spec.MRoomPowerLevels, "")
	content := map[string]json.RawMessage{}
	if oldPL != nil {
		_ = json.Unmarshal(oldPL.Content(), &content)
		if content == nil {
			content = map[string]json.RawMessage{}
		}
	}
	has := func(k string) bool {
		_, ok := content[k]
		return ok || oldPL == nil
	}
	for k, v := range map[string]int64{"ban": levels.Ban, "invite": levels.Invite, "kick": levels.Kick, "redact": levels.Redact,
		"users_default": levels.UsersDefault, "events_default": levels.EventsDefault, "state_default": levels.StateDefault} {
		if has(k) {
			content[k] = mustJSON(v)
		}
	}
	if has("notifications") {
		content["notifications"] = mustJSON(levels.Notifications)
	}
	users := maps.Clone(levels.Users)
	if users == nil {
		users = map[string]int64{}
	}
	events := maps.Clone(levels.Events)
	if events == nil {
		events = map[string]int64{}
	}
	needed := max(levels.StateDefault, levels.Ban)
	for _, l := range events {
		needed = max(needed, l)
	}
	fromPrivileged, toPrivileged := old.version.PrivilegedCreators(), newVersion.PrivilegedCreators()
	p := &newPowerLevels{caller: caller}
	if toPrivileged {
		p.creators = newCreators
		for _, c := range newCreators {
			delete(users, c)
		}
		if !fromPrivileged {
			tombstone := levels.EventLevel(tombstoneType, true)
			if want := max(tombstone, levels.StateDefault+1, 150); want != tombstone {
				events[tombstoneType] = min(want, maxPowerLevel)
			}
		}
	} else {
		if fromPrivileged {
			top := needed
			for _, l := range users {
				top = max(top, l+1)
			}
			for _, c := range oldCreators(old) {
				users[c] = min(top, maxPowerLevel)
			}
		}
		cur, ok := users[caller]
		if !ok {
			cur = levels.UsersDefault
		}
		if cur < needed {
			users[caller] = needed
		}
	}
	content["users"] = mustJSON(users)
	if has("events") || len(events) > 0 {
		content["events"] = mustJSON(events)
	}
	p.content = content
	p.levels.Defaults()
	_ = json.Unmarshal(mustJSON(content), &p.levels)
	return p
}

// oldCreators lists the creators of a room: the sender of its create
// event and, from version 12, its additional creators.
func oldCreators(old *oldRoom) []string {
	create := old.get(spec.MRoomCreate, "")
	if create == nil {
		return nil
	}
	out := []string{string(create.SenderID())}
	var c struct {
		AdditionalCreators []string `json:"additional_creators"`
	}
	_ = json.Unmarshal(create.Content(), &c)
	return append(out, c.AdditionalCreators...)
}

// canonicalAliasSplit is how an upgrade splits the old room's canonical
// alias event (Synapse's _move_aliases_to_new_room): local aliases move to
// the new room with the alias table; other servers' stay behind.
type canonicalAliasSplit struct {
	moved map[string]any // content for the new room; nil for none
	kept  map[string]any // the old room's new content; nil when unchanged
}

func (u *upgrades) splitCanonicalAlias(old *oldRoom) canonicalAliasSplit {
	var split canonicalAliasSplit
	ev := old.get(spec.MRoomCanonicalAlias, "")
	if ev == nil {
		return split
	}
	var content map[string]any
	if json.Unmarshal(ev.Content(), &content) != nil {
		return split
	}
	local := func(v any) bool {
		alias, ok := v.(string)
		if !ok {
			return false
		}
		_, domain, err := parseAlias(alias)
		return err == nil && domain == u.users.ServerName()
	}
	moved, kept := map[string]any{}, maps.Clone(content)
	if local(content["alias"]) {
		moved["alias"] = content["alias"]
		delete(kept, "alias")
	}
	if alts, ok := content["alt_aliases"].([]any); ok {
		var stay, move []any
		for _, a := range alts {
			if local(a) {
				move = append(move, a)
			} else {
				stay = append(stay, a)
			}
		}
		if len(move) > 0 {
			moved["alt_aliases"] = move
			if len(stay) > 0 {
				kept["alt_aliases"] = stay
			} else {
				delete(kept, "alt_aliases")
			}
		}
	}
	if len(moved) > 0 {
		split.moved, split.kept = moved, kept
	}
	return split
}

// moveAliases points the old room's local aliases at the new room and
// takes the moved ones out of the old room's canonical alias event.
func (u *upgrades) moveAliases(ctx context.Context, old *oldRoom, newID, caller string) {
	err := u.db.WithTx(ctx, func(q *sql.Queries) error {
		aliases, err := q.RoomAliases(ctx, old.id)
		if err != nil {
			return err
		}
		for _, alias := range aliases {
			_, creator, err := q.AliasCreator(ctx, alias)
			if err != nil {
				return err
			}
			if _, err := q.DeleteAlias(ctx, alias); err != nil {
				return err
			}
			if err := q.CreateAlias(ctx, alias, newID, creator); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		u.log.Error("upgrade: move aliases", "old_room_id", old.id, "new_room_id", newID, "err", err)
	}
	if kept := u.splitCanonicalAlias(old).kept; kept != nil {
		if err := u.sendState(ctx, old.id, caller, spec.MRoomCanonicalAlias, kept); err != nil {
			u.log.Warn("upgrade: update the old room's canonical alias", "room_id", old.id, "err", err)
		}
	}
}

// moveDirectoryEntry publishes the new room in the room directory in the
// old one's place, if the old one was published.
func (u *upgrades) moveDirectoryEntry(ctx context.Context, oldID, newID string) {
	err := u.db.WithTx(ctx, func(q *sql.Queries) error {
		public, err := q.RoomPublished(ctx, oldID)
		if err != nil || !public {
			return err
		}
		if err := q.SetRoomPublished(ctx, newID, true); err != nil {
			return err
		}
		return q.SetRoomPublished(ctx, oldID, false)
	})
	if err != nil {
		u.log.Error("upgrade: move the directory entry", "old_room_id", oldID, "new_room_id", newID, "err", err)
	}
}

// restrictOldRoom raises the levels to send events and to invite in the
// old room to at least the greater of 50 and users_default+1, as the spec
// suggests and Synapse does, so that only moderators still talk there.
func (u *upgrades) restrictOldRoom(ctx context.Context, old *oldRoom, caller string) {
	oldPL := old.get(spec.MRoomPowerLevels, "")
	if oldPL == nil {
		// Without power levels, the defaults apply and cannot be raised
		// without taking the creator's implied power (Synapse skips it too).
		return
	}
	levels := old.power.Levels()
	restricted := max(levels.UsersDefault+1, 50)
	if levels.EventsDefault >= restricted && levels.Invite >= restricted {
		return
	}
	var content map[string]json.RawMessage
	if json.Unmarshal(oldPL.Content(), &content) != nil || content == nil {
		return
	}
	content["events_default"] = mustJSON(max(levels.EventsDefault, restricted))
	content["invite"] = mustJSON(max(levels.Invite, restricted))
	if err := u.sendState(ctx, old.id, caller, spec.MRoomPowerLevels, content); err != nil {
		var me *mxhttp.Error
		if errors.As(err, &me) && me.Code == "M_FORBIDDEN" {
			u.log.Info("upgrade: not allowed to restrict the old room's power levels", "room_id", old.id, "err", err)
			return
		}
		u.log.Warn("upgrade: restrict the old room's power levels", "room_id", old.id, "err", err)
	}
}

// sendState sends a state event with an empty state key.
func (u *upgrades) sendState(ctx context.Context, roomID, sender, typ string, content any) error {
	key := ""
	_, err := u.rooms.Input(ctx, roomserver.InputRequest{RoomID: roomID, NewEvent: &roomserver.NewEvent{
		Sender: sender, Type: typ, StateKey: &key, Content: mustJSON(content),
	}})
	return err
}
