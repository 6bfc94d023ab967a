package clientapi_test

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// syncResult is a sync a mautrix client made in the background.
type e2eSync struct {
	resp *mautrix.RespSync
	err  error
}

// longPoll starts a /sync of cli from since that waits up to timeout.
func longPoll(cli *mautrix.Client, since string, timeout time.Duration) <-chan e2eSync {
	out := make(chan e2eSync, 1)
	go func() {
		resp, err := cli.FullSyncRequest(context.Background(), mautrix.ReqSync{Since: since, Timeout: int(timeout.Milliseconds())})
		out <- e2eSync{resp, err}
	}()
	return out
}

// awaitSync waits for a background sync, failing after within.
func awaitSync(t *testing.T, c <-chan e2eSync, within time.Duration) *mautrix.RespSync {
	t.Helper()
	select {
	case r := <-c:
		if r.err != nil {
			t.Fatalf("sync: %v", r.err)
		}
		return r.resp
	case <-time.After(within):
		t.Fatalf("the sync did not answer within %s", within)
	}
	return nil
}

// syncNow is an incremental (or, with since "", initial) sync that answers
// at once.
func syncNow(t *testing.T, cli *mautrix.Client, since string) *mautrix.RespSync {
	t.Helper()
	resp, err := cli.FullSyncRequest(context.Background(), mautrix.ReqSync{Since: since})
	if err != nil {
		t.Fatalf("%s syncs: %v", cli.UserID, err)
	}
	return resp
}

// ephemeralOf returns the events of type typ in a joined room's ephemeral
// section, as raw contents.
func ephemeralOf(resp *mautrix.RespSync, roomID, typ string) []json.RawMessage {
	room := resp.Rooms.Join[id.RoomID(roomID)]
	if room == nil {
		return nil
	}
	var out []json.RawMessage
	for _, e := range room.Ephemeral.Events {
		if e.Type.Type == typ {
			out = append(out, e.Content.VeryRaw)
		}
	}
	return out
}

// typingUsers returns the m.typing list of a room, and whether there was
// one.
func typingUsers(t *testing.T, resp *mautrix.RespSync, roomID string) ([]string, bool) {
	t.Helper()
	evs := ephemeralOf(resp, roomID, "m.typing")
	if len(evs) == 0 {
		return nil, false
	}
	var c event.TypingEventContent
	if err := json.Unmarshal(evs[0], &c); err != nil {
		t.Fatal(err)
	}
	out := make([]string, len(c.UserIDs))
	for i, u := range c.UserIDs {
		out[i] = u.String()
	}
	return out, true
}

// receiptsIn merges the m.receipt contents of a room.
func receiptsIn(t *testing.T, resp *mautrix.RespSync, roomID string) event.ReceiptEventContent {
	t.Helper()
	out := event.ReceiptEventContent{}
	for _, raw := range ephemeralOf(resp, roomID, "m.receipt") {
		var c event.ReceiptEventContent
		if err := json.Unmarshal(raw, &c); err != nil {
			t.Fatal(err)
		}
		for ev, byType := range c {
			for typ, users := range byType {
				for u, r := range users {
					out.Set(ev, typ, u, r)
				}
			}
		}
	}
	return out
}

// roomTags returns the m.tag account data of a room in a sync, and whether
// there was one.
func roomTags(t *testing.T, resp *mautrix.RespSync, roomID string) (event.Tags, bool) {
	t.Helper()
	room := resp.Rooms.Join[id.RoomID(roomID)]
	if room == nil {
		return nil, false
	}
	for _, e := range room.AccountData.Events {
		if e.Type.Type == "m.tag" {
			var c event.TagEventContent
			if err := json.Unmarshal(e.Content.VeryRaw, &c); err != nil {
				t.Fatal(err)
			}
			return c.Tags, true
		}
	}
	return nil, false
}

// TestEphemeralEndToEnd drives typing, receipts, read markers and tags
// with two real clients against a whole server.
func TestEphemeralEndToEnd(t *testing.T) {
	forEachHS(t, func(t *testing.T, h *roomsHS) {
		ctx := context.Background()
		alice, bob := h.user(t, "alice"), h.user(t, "bob")
		room := h.createRoom(t, alice, map[string]any{"preset": "public_chat"})
		h.join(t, bob, room)
		aliceID, bobID := alice.UserID.String(), bob.UserID.String()
		b0 := syncNow(t, bob, "")

		// Typing wakes bob's long-poll; then the stop does.
		wait := longPoll(bob, b0.NextBatch, 30*time.Second)
		time.Sleep(100 * time.Millisecond) // let the poll start waiting
		if _, err := alice.UserTyping(ctx, id.RoomID(room), true, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		b1 := awaitSync(t, wait, 10*time.Second)
		if users, ok := typingUsers(t, b1, room); !ok || !slices.Equal(users, []string{aliceID}) {
			t.Fatalf("bob's sync after alice started typing: %v %v", users, ok)
		}
		wait = longPoll(bob, b1.NextBatch, 30*time.Second)
		time.Sleep(100 * time.Millisecond)
		if _, err := alice.UserTyping(ctx, id.RoomID(room), false, 0); err != nil {
			t.Fatal(err)
		}
		b2 := awaitSync(t, wait, 10*time.Second)
		if users, ok := typingUsers(t, b2, room); !ok || len(users) != 0 {
			t.Fatalf("bob's sync after alice stopped: %v %v", users, ok)
		}

		// Alice's message notifies bob; his m.read receipt reaches alice
		// and clears his unread count.
		a0 := syncNow(t, alice, "")
		msg := h.send(t, alice, room, "hello bob")
		stored, err := h.db.EventByID(ctx, msg)
		if err != nil {
			t.Fatal(err)
		}
		unread := func() int64 {
			t.Helper()
			deadline := time.Now().Add(10 * time.Second)
			for {
				counted, err := h.db.PushCountedUpTo(ctx, room)
				if err != nil {
					t.Fatal(err)
				}
				if counted >= stored.StreamPos {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the push counter did not count the message")
				}
				time.Sleep(20 * time.Millisecond)
			}
			c, err := h.db.UnreadCounts(ctx, bobID, room)
			if err != nil {
				t.Fatal(err)
			}
			return c.NotificationCount
		}
		if n := unread(); n != 1 {
			t.Fatalf("bob's unread count before his receipt = %d", n)
		}
		// No body at all, as mautrix sends a nil content.
		if err := bob.SendReceipt(ctx, id.RoomID(room), id.EventID(msg), event.ReceiptTypeRead, nil); err != nil {
			t.Fatal(err)
		}
		if n := unread(); n != 0 {
			t.Fatalf("bob's unread count after his receipt = %d", n)
		}
		a1 := syncNow(t, alice, a0.NextBatch)
		if r, ok := receiptsIn(t, a1, room)[id.EventID(msg)][event.ReceiptTypeRead][bob.UserID]; !ok || r.Timestamp.IsZero() {
			t.Fatalf("alice's sync lacks bob's m.read: %s", mustJSON(a1.Rooms.Join[id.RoomID(room)]))
		}

		// A private receipt: bob's syncs have it, alice's never do.
		msg2 := h.send(t, alice, room, "again")
		a2 := syncNow(t, alice, a1.NextBatch)
		b3 := syncNow(t, bob, b2.NextBatch)
		if err := bob.SendReceipt(ctx, id.RoomID(room), id.EventID(msg2), event.ReceiptTypeReadPrivate, nil); err != nil {
			t.Fatal(err)
		}
		for _, r := range []*mautrix.RespSync{syncNow(t, alice, a2.NextBatch), syncNow(t, alice, "")} {
			for _, byType := range receiptsIn(t, r, room) {
				if _, ok := byType[event.ReceiptTypeReadPrivate]; ok {
					t.Fatalf("alice got a private receipt: %s", mustJSON(r.Rooms.Join[id.RoomID(room)].Ephemeral))
				}
			}
		}
		for _, r := range []*mautrix.RespSync{syncNow(t, bob, b3.NextBatch), syncNow(t, bob, "")} {
			if _, ok := receiptsIn(t, r, room)[id.EventID(msg2)][event.ReceiptTypeReadPrivate][bob.UserID]; !ok {
				t.Fatalf("bob's sync lacks his private receipt: %s", mustJSON(r.Rooms.Join[id.RoomID(room)].Ephemeral))
			}
		}

		// Tags: put, get, delete, each seen in bob's sync.
		b4 := syncNow(t, bob, "")
		if err := bob.AddTag(ctx, id.RoomID(room), event.RoomTagFavourite, 0.5); err != nil {
			t.Fatal(err)
		}
		tags, err := bob.GetTags(ctx, id.RoomID(room))
		if err != nil {
			t.Fatal(err)
		}
		if fav, ok := tags.Tags[event.RoomTagFavourite]; !ok || fav.Order != "0.5" {
			t.Fatalf("GET tags = %+v", tags)
		}
		b5 := syncNow(t, bob, b4.NextBatch)
		if got, ok := roomTags(t, b5, room); !ok || len(got) != 1 {
			t.Fatalf("bob's sync after tagging: %v %v", got, ok)
		}
		if err := bob.RemoveTag(ctx, id.RoomID(room), event.RoomTagFavourite); err != nil {
			t.Fatal(err)
		}
		b6 := syncNow(t, bob, b5.NextBatch)
		if got, ok := roomTags(t, b6, room); !ok || len(got) != 0 {
			t.Fatalf("bob's sync after untagging: %v %v", got, ok)
		}
		// Alice sees none of bob's tags.
		if got, ok := roomTags(t, syncNow(t, alice, ""), room); ok {
			t.Fatalf("alice sees tags %v", got)
		}

		// The fully read marker through /read_markers is bob's room
		// account data.
		if err := bob.SetReadMarkers(ctx, id.RoomID(room), &mautrix.ReqSetReadMarkers{FullyRead: id.EventID(msg2)}); err != nil {
			t.Fatal(err)
		}
		b7 := syncNow(t, bob, b6.NextBatch)
		found := false
		for _, e := range b7.Rooms.Join[id.RoomID(room)].AccountData.Events {
			if e.Type.Type == "m.fully_read" {
				var c struct {
					EventID string `json:"event_id"`
				}
				_ = json.Unmarshal(e.Content.VeryRaw, &c)
				found = c.EventID == msg2
			}
		}
		if !found {
			t.Fatalf("bob's sync lacks m.fully_read: %s", mustJSON(b7.Rooms.Join[id.RoomID(room)]))
		}
	})
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
