package push_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/homeserver/hstest"
	"github.com/weft-chat/weft/internal/serverkey"
	"github.com/weft-chat/weft/internal/testclient"
	"github.com/weft-chat/weft/push"
	"github.com/weft-chat/weft/roomserver"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// countsHS is a test homeserver with a second connection to its database,
// where the counts are read.
type countsHS struct {
	t   *testing.T
	srv *hstest.Server
	db  *sql.DB
}

func startCountsHS(t *testing.T, engine config.Engine) *countsHS {
	cfg := hstest.Config(t, engine)
	srv := hstest.Start(t, cfg)
	db, err := sql.Open(context.Background(), cfg.Database.URL, 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return &countsHS{t: t, srv: srv, db: db}
}

// roomOfThree registers alice, bob and carol and makes a private room of
// the three.
func (h *countsHS) roomOfThree() (alice, bob, carol *mautrix.Client, room id.RoomID) {
	h.t.Helper()
	ctx, base := context.Background(), h.srv.ClientURL
	alice, bob, carol = testclient.Register(h.t, base, "alice"), testclient.Register(h.t, base, "bob"), testclient.Register(h.t, base, "carol")
	created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{bob.UserID, carol.UserID}})
	if err != nil {
		h.t.Fatal(err)
	}
	for _, c := range []*mautrix.Client{bob, carol} {
		if _, err := c.JoinRoomByID(ctx, created.RoomID); err != nil {
			h.t.Fatal(err)
		}
	}
	return alice, bob, carol, created.RoomID
}

// counted waits until the counter has handled the event (it runs behind
// the room, on room.output).
func (h *countsHS) counted(roomID id.RoomID, eventID id.EventID) {
	h.t.Helper()
	ctx := context.Background()
	ev, err := h.db.EventByID(ctx, eventID.String())
	if err != nil {
		h.t.Fatalf("event %s: %v", eventID, err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		pos, err := h.db.PushCountedUpTo(ctx, roomID.String())
		if err != nil {
			h.t.Fatal(err)
		}
		if pos >= ev.StreamPos {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("event %s (position %d) not counted; counted up to %d", eventID, ev.StreamPos, pos)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// send sends an event as cli and waits until it is counted.
func (h *countsHS) send(cli *mautrix.Client, roomID id.RoomID, typ event.Type, content any) id.EventID {
	h.t.Helper()
	resp, err := cli.SendMessageEvent(context.Background(), roomID, typ, content)
	if err != nil {
		h.t.Fatalf("%s sends %s: %v", cli.UserID, typ.Type, err)
	}
	h.counted(roomID, resp.EventID)
	return resp.EventID
}

func (h *countsHS) text(cli *mautrix.Client, roomID id.RoomID, body string, extra map[string]any) id.EventID {
	h.t.Helper()
	content := map[string]any{"msgtype": "m.text", "body": body, "m.mentions": map[string]any{}}
	for k, v := range extra {
		content[k] = v
	}
	return h.send(cli, roomID, event.EventMessage, content)
}

type want struct{ n, h int64 }

// expect checks a user's counts in a room: the total, the main timeline,
// and each thread named.
func (h *countsHS) expect(what string, user *mautrix.Client, roomID id.RoomID, total, main want, threads map[id.EventID]want) {
	h.t.Helper()
	c, err := h.db.UnreadCounts(context.Background(), user.UserID.String(), roomID.String())
	if err != nil {
		h.t.Fatal(err)
	}
	got := func(n sql.NotificationCounts) want { return want{n.NotificationCount, n.HighlightCount} }
	if got(c.NotificationCounts) != total || got(c.Main) != main || len(c.Threads) != len(threads) {
		h.t.Errorf("%s: %s has total %v main %v threads %v; want %v %v %v", what, user.UserID, got(c.NotificationCounts), got(c.Main), c.Threads, total, main, threads)
		return
	}
	for root, w := range threads {
		if got(c.Threads[root.String()]) != w {
			h.t.Errorf("%s: %s has thread %s %v, want %v", what, user.UserID, root, got(c.Threads[root.String()]), w)
		}
	}
}

func (h *countsHS) pos(eventID id.EventID) int64 {
	h.t.Helper()
	ev, err := h.db.EventByID(context.Background(), eventID.String())
	if err != nil {
		h.t.Fatal(err)
	}
	return ev.StreamPos
}

// pushAPI calls the push rules API as cli.
func (h *countsHS) pushAPI(cli *mautrix.Client, method, path string, body any) {
	h.t.Helper()
	data, _ := json.Marshal(body)
	req, err := http.NewRequest(method, h.srv.ClientURL+"/_matrix/client/v3/pushrules/global/"+path, strings.NewReader(string(data)))
	if err != nil {
		h.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+cli.AccessToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		h.t.Fatalf("%s %s: %d", method, path, resp.StatusCode)
	}
}

func TestNotificationCounts(t *testing.T) {
	for _, e := range sqltest.Engines() {
		t.Run(string(e), func(t *testing.T) {
			h := startCountsHS(t, e)
			ctx := context.Background()
			alice, bob, carol, room := h.roomOfThree()
			// Joining is sending an event: it reads what came before,
			// the invite included.
			last := h.text(alice, room, "sync point", nil)
			h.expect("after joining", bob, room, want{1, 0}, want{1, 0}, nil)
			if err := h.db.ResetCounts(ctx, bob.UserID.String(), room.String(), "", h.pos(last)); err != nil {
				t.Fatal(err)
			}
			if err := h.db.ResetCounts(ctx, carol.UserID.String(), room.String(), "", h.pos(last)); err != nil {
				t.Fatal(err)
			}
			h.expect("after reading", bob, room, want{0, 0}, want{0, 0}, nil)

			// A plain message in a room of three: .m.rule.message.
			root := h.text(alice, room, "hello everyone", nil)
			h.expect("message", bob, room, want{1, 0}, want{1, 0}, nil)
			h.expect("message", carol, room, want{1, 0}, want{1, 0}, nil)
			h.expect("own message", alice, room, want{0, 0}, want{0, 0}, nil)
			// A mention by user id highlights for the one mentioned.
			h.text(alice, room, "bob, look", map[string]any{"m.mentions": map[string]any{"user_ids": []string{bob.UserID.String()}}})
			h.expect("mention", bob, room, want{2, 1}, want{2, 1}, nil)
			h.expect("mention of another", carol, room, want{2, 0}, want{2, 0}, nil)
			// @room highlights only from someone with the power for it:
			// carol has 0, alice (the creator) all.
			h.text(carol, room, "everyone!", map[string]any{"m.mentions": map[string]any{"room": true}})
			h.expect("@room without power", bob, room, want{3, 1}, want{3, 1}, nil)
			h.text(alice, room, "everyone!", map[string]any{"m.mentions": map[string]any{"room": true}})
			h.expect("@room with power", bob, room, want{4, 2}, want{4, 2}, nil)
			// Carol's own @room was not counted for her, and sending it
			// read what came before.
			h.expect("@room with power", carol, room, want{1, 1}, want{1, 1}, nil)
			// Notices, edits and reactions do not notify.
			h.send(alice, room, event.EventMessage, map[string]any{"msgtype": "m.notice", "body": "bot", "m.mentions": map[string]any{}})
			h.send(alice, room, event.EventMessage, map[string]any{"msgtype": "m.text", "body": "* hello", "m.mentions": map[string]any{},
				"m.new_content": map[string]any{"msgtype": "m.text", "body": "hello"},
				"m.relates_to":  map[string]any{"rel_type": "m.replace", "event_id": root}})
			h.send(alice, room, event.EventReaction, map[string]any{"m.relates_to": map[string]any{"rel_type": "m.annotation", "event_id": root, "key": "👍"}})
			h.expect("notice, edit, reaction", bob, room, want{4, 2}, want{4, 2}, nil)
			// Encrypted events in a group room: .m.rule.encrypted.
			h.send(alice, room, event.EventEncrypted, map[string]any{"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "x", "session_id": "s", "sender_key": "k", "device_id": "D"})
			h.expect("encrypted", bob, room, want{5, 2}, want{5, 2}, nil)

			// Threads: a reply in a thread counts in the thread, and so
			// does an event related to an event in the thread (spec: up
			// to 3 hops).
			reply := h.text(carol, room, "in thread", map[string]any{"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": root}})
			h.expect("thread reply", bob, room, want{6, 2}, want{5, 2}, map[id.EventID]want{root: {1, 0}})
			ref := h.text(carol, room, "see above", map[string]any{"m.relates_to": map[string]any{"rel_type": "m.reference", "event_id": reply},
				"m.mentions": map[string]any{"user_ids": []string{bob.UserID.String()}}})
			h.expect("related to a thread reply", bob, room, want{7, 3}, want{5, 2}, map[id.EventID]want{root: {2, 1}})
			h.text(carol, room, "deeper", map[string]any{"m.relates_to": map[string]any{"rel_type": "m.reference", "event_id": ref}})
			h.expect("two hops into the thread", bob, room, want{8, 3}, want{5, 2}, map[id.EventID]want{root: {3, 1}})
			// An event related to the root by a non-thread relation is in
			// the main timeline.
			mainRef := h.text(carol, room, "about the root", map[string]any{"m.relates_to": map[string]any{"rel_type": "m.reference", "event_id": root}})
			h.expect("related to the root", bob, room, want{9, 3}, want{6, 2}, map[id.EventID]want{root: {3, 1}})

			// Receipts: a threaded one reads its thread up to the event,
			// an unthreaded one everything up to it.
			if err := h.db.ResetCounts(ctx, bob.UserID.String(), room.String(), "main", h.pos(mainRef)); err != nil {
				t.Fatal(err)
			}
			h.expect("main receipt", bob, room, want{3, 1}, want{0, 0}, map[id.EventID]want{root: {3, 1}})
			if err := h.db.ResetCounts(ctx, bob.UserID.String(), room.String(), root.String(), h.pos(reply)); err != nil {
				t.Fatal(err)
			}
			h.expect("thread receipt", bob, room, want{2, 1}, want{0, 0}, map[id.EventID]want{root: {2, 1}})
			if err := h.db.ResetCounts(ctx, bob.UserID.String(), room.String(), "", h.pos(mainRef)); err != nil {
				t.Fatal(err)
			}
			h.expect("unthreaded receipt", bob, room, want{0, 0}, want{0, 0}, nil)

			// Sending reads the sender's thread up to the event; carol
			// (who last spoke in the main timeline) is not affected by
			// bob's reading.
			h.expect("carol after bob's receipts", carol, room, want{0, 0}, want{0, 0}, nil)
			h.text(alice, room, "more", nil)
			h.expect("before bob speaks", bob, room, want{1, 0}, want{1, 0}, nil)
			h.text(bob, room, "ok", nil)
			h.expect("after bob speaks", bob, room, want{0, 0}, want{0, 0}, nil)
			h.expect("after bob speaks", carol, room, want{2, 0}, want{2, 0}, nil)

			// A redaction takes its event's notification back.
			before := want{2, 0}
			gone := h.text(alice, room, "oops", nil)
			h.expect("redactable", carol, room, want{3, 0}, want{3, 0}, nil)
			red, err := alice.RedactEvent(ctx, room, gone)
			if err != nil {
				t.Fatal(err)
			}
			h.counted(room, red.EventID)
			h.expect("after redaction", carol, room, before, before, nil)

			// A room rule muting the room takes effect at the next event.
			h.pushAPI(carol, "PUT", "room/"+url.PathEscape(room.String()), map[string]any{"actions": []any{}})
			h.text(alice, room, "muted", nil)
			h.expect("muted room", carol, room, before, before, nil)
			h.pushAPI(carol, "DELETE", "room/"+url.PathEscape(room.String()), nil)
			h.text(alice, room, "unmuted", nil)
			h.expect("unmuted room", carol, room, want{3, 0}, want{3, 0}, nil)

			// Leaving drops the notifications.
			if _, err := carol.LeaveRoom(ctx, room); err != nil {
				t.Fatal(err)
			}
			h.text(alice, room, "after carol left", nil)
			h.expect("left", carol, room, want{0, 0}, want{0, 0}, nil)

			// A redelivered event is not counted twice.
			rs := roomserver.New(h.db, nil, h.srv.Config.ServerName, serverkey.Key{}, slog.New(slog.DiscardHandler))
			counter := push.NewCounter(h.db, roomserver.API{Roomserver: rs}, h.srv.Config.ServerName, slog.New(slog.DiscardHandler))
			bobBefore, _ := h.db.UnreadCounts(ctx, bob.UserID.String(), room.String())
			// In one batch, with an unknown event amid them: skipped, not
			// retried.
			var again []roomserver.OutputEvent
			for _, ev := range []id.EventID{root, reply, "$unknown", ref, gone, red.EventID} {
				again = append(again, roomserver.OutputEvent{RoomID: room.String(), EventID: ev.String()})
			}
			if err := counter.HandleBatch(ctx, again); err != nil {
				t.Fatal(err)
			}
			if bobAfter, _ := h.db.UnreadCounts(ctx, bob.UserID.String(), room.String()); bobAfter.NotificationCounts != bobBefore.NotificationCounts {
				t.Errorf("redelivery changed bob's counts from %+v to %+v", bobBefore, bobAfter)
			}
		})
	}
}

func TestNotificationCountsDirectChat(t *testing.T) {
	for _, e := range sqltest.Engines() {
		t.Run(string(e), func(t *testing.T) {
			h := startCountsHS(t, e)
			ctx := context.Background()
			alice, dave := testclient.Register(t, h.srv.ClientURL, "alice"), testclient.Register(t, h.srv.ClientURL, "dave")
			// Dave turns .m.rule.message off: what still notifies in the
			// room of two is .m.rule.room_one_to_one.
			h.pushAPI(dave, "PUT", "underride/.m.rule.message/enabled", map[string]any{"enabled": false})
			created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "trusted_private_chat", IsDirect: true})
			if err != nil {
				t.Fatal(err)
			}
			dm := created.RoomID
			inv, err := alice.InviteUser(ctx, dm, &mautrix.ReqInviteUser{UserID: dave.UserID})
			if err != nil {
				t.Fatal(err)
			}
			_ = inv
			// The invite notifies the invitee (.m.rule.invite_for_me).
			invite, err := h.db.CurrentStateEvent(ctx, dm.String(), sql.StateKey{Type: "m.room.member", StateKey: dave.UserID.String()})
			if err != nil {
				t.Fatal(err)
			}
			h.counted(dm, id.EventID(invite.EventID))
			h.expect("invite", dave, dm, want{1, 0}, want{1, 0}, nil)
			if _, err := dave.JoinRoomByID(ctx, dm); err != nil {
				t.Fatal(err)
			}
			h.text(alice, dm, "hi dave", nil)
			h.expect("DM message", dave, dm, want{1, 0}, want{1, 0}, nil)
			h.send(alice, dm, event.EventEncrypted, map[string]any{"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "x", "session_id": "s", "sender_key": "k", "device_id": "D"})
			h.expect("encrypted DM", dave, dm, want{2, 0}, want{2, 0}, nil)
			// With a third member the room is no longer one to one, and
			// dave's disabled .m.rule.message leaves messages silent.
			carol := testclient.Register(t, h.srv.ClientURL, "carol")
			if _, err := alice.InviteUser(ctx, dm, &mautrix.ReqInviteUser{UserID: carol.UserID}); err != nil {
				t.Fatal(err)
			}
			if _, err := carol.JoinRoomByID(ctx, dm); err != nil {
				t.Fatal(err)
			}
			h.text(alice, dm, "now three", nil)
			h.expect("three members", dave, dm, want{2, 0}, want{2, 0}, nil)
			// alice's counts in the DM never include her own events.
			h.expect("sender", alice, dm, want{0, 0}, want{0, 0}, nil)
		})
	}
}

// Messages sent all at once reach the counter together, and it counts
// them in batches: each member's count is still that of the messages after
// the member's own last one (sending reads the room), whatever the batches.
func TestNotificationCountsBackToBack(t *testing.T) {
	for _, e := range sqltest.Engines() {
		t.Run(string(e), func(t *testing.T) {
			h := startCountsHS(t, e)
			ctx := context.Background()
			alice, bob, carol, room := h.roomOfThree()
			for _, c := range []*mautrix.Client{alice, bob, carol} {
				h.text(c, room, "here", nil)
			}

			senders := []*mautrix.Client{alice, alice, alice, bob, alice, alice, bob, alice, alice, alice}
			sent := make([]id.EventID, len(senders))
			var wg sync.WaitGroup
			for i, c := range senders {
				wg.Go(func() {
					resp, err := c.SendText(ctx, room, fmt.Sprint("burst ", i))
					if err != nil {
						t.Error(err)
						return
					}
					sent[i] = resp.EventID
				})
			}
			wg.Wait()
			if t.Failed() {
				return
			}
			positions := make([]int64, len(sent))
			for i, ev := range sent {
				h.counted(room, ev)
				positions[i] = h.pos(ev)
			}
			// Each member's count is the burst's messages by others after
			// the member's own last message.
			for _, member := range []*mautrix.Client{alice, bob, carol} {
				var lastOwn int64
				for i, c := range senders {
					if c == member {
						lastOwn = max(lastOwn, positions[i])
					}
				}
				var n int64
				for i, c := range senders {
					if c != member && positions[i] > lastOwn {
						n++
					}
				}
				h.expect("burst", member, room, want{n, 0}, want{n, 0}, nil)
			}
		})
	}
}
