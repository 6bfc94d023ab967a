package clientapi

import (
	"context"
	"encoding/json"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/roomserver"
	"github.com/weft-chat/weft/userapi"
)

// propagateProfile sends an updated m.room.member join event, carrying the
// new displayname or avatar_url (value nil: removed), into every room the
// user is joined to (spec: "Events on Change of Profile Information").
// Other fields of the member content are kept. A room that refuses the
// update (say, one where the user may not change state) is logged and
// skipped, as Synapse does: the profile change itself has succeeded.
func (a *API) propagateProfile(ctx context.Context, dev *userapi.Device, key string, value json.RawMessage) {
	if key != "displayname" && key != "avatar_url" {
		return
	}
	rooms, err := a.rooms.RoomsWithMembership(ctx, dev.UserID, spec.Join)
	if err != nil {
		a.log.Warn("profile change: list joined rooms", "user", dev.UserID, "err", err)
		return
	}
	for _, roomID := range rooms {
		if err := a.updateMemberProfile(ctx, dev.UserID, roomID, key, value); err != nil {
			a.log.Warn("profile change: update member event", "user", dev.UserID, "room_id", roomID, "err", err)
		}
	}
}

func (a *API) updateMemberProfile(ctx context.Context, userID, roomID, key string, value json.RawMessage) error {
	current, err := a.rooms.CurrentStateEvent(ctx, roomID, spec.MRoomMember, userID)
	if err != nil || current == nil {
		return err
	}
	content := map[string]json.RawMessage{}
	if err := json.Unmarshal(current.Content(), &content); err != nil {
		return err
	}
	if m, _ := current.Membership(); m != spec.Join {
		return nil // left or was kicked since the room list was read
	}
	if value == nil {
		delete(content, key)
	} else {
		content[key] = value
	}
	body, err := json.Marshal(content)
	if err != nil {
		return err
	}
	_, err = a.rooms.Input(ctx, roomserver.InputRequest{RoomID: roomID, NewEvent: &roomserver.NewEvent{
		Sender: userID, Type: spec.MRoomMember, StateKey: &userID, Content: body,
	}})
	return err
}
