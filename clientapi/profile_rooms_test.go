package clientapi_test

import (
	"context"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/weft-chat/weft/homeserver/hstest"
	"github.com/weft-chat/weft/internal/testclient"
	"github.com/weft-chat/weft/sql/sqltest"
)

// Spec, "Events on Change of Profile Information": a new display name or
// avatar goes out as an updated member event in every joined room.
func TestProfileChangeUpdatesMemberEvents(t *testing.T) {
	for _, engine := range sqltest.Engines() {
		t.Run(string(engine), func(t *testing.T) {
			ctx := context.Background()
			hs := hstest.StartEngine(t, engine)
			alice := testclient.Register(t, hs.ClientURL, "alice")
			var rooms []string
			for range 2 {
				resp, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"})
				if err != nil {
					t.Fatal(err)
				}
				rooms = append(rooms, resp.RoomID.String())
			}
			if err := alice.SetDisplayName(ctx, "Alice A."); err != nil {
				t.Fatal(err)
			}
			if err := alice.SetAvatarURL(ctx, id.ContentURI{Homeserver: "test.local", FileID: "abc"}); err != nil {
				t.Fatal(err)
			}
			for _, roomID := range rooms {
				var member event.MemberEventContent
				if err := alice.StateEvent(ctx, id.RoomID(roomID), event.StateMember, alice.UserID.String(), &member); err != nil {
					t.Fatal(err)
				}
				if member.Displayname != "Alice A." || member.AvatarURL != "mxc://test.local/abc" || member.Membership != event.MembershipJoin {
					t.Fatalf("room %s member event %+v, want the new profile", roomID, member)
				}
			}
			// Removing the display name removes it from the member events.
			if _, err := alice.MakeRequest(ctx, "DELETE", alice.BuildClientURL("v3", "profile", alice.UserID, "displayname"), nil, nil); err != nil {
				t.Fatal(err)
			}
			var member event.MemberEventContent
			if err := alice.StateEvent(ctx, id.RoomID(rooms[0]), event.StateMember, alice.UserID.String(), &member); err != nil {
				t.Fatal(err)
			}
			if member.Displayname != "" || member.AvatarURL != "mxc://test.local/abc" {
				t.Fatalf("after removing the display name: %+v", member)
			}
		})
	}
}
