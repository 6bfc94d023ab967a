package sql_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

func TestPushRulesStorage(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		const u = "@alice:hs"
		ids := func(kind string) []string {
			t.Helper()
			rules, _, err := db.PushRules(ctx, u)
			if err != nil {
				t.Fatal(err)
			}
			var out []string
			for _, r := range rules {
				if r.Kind == kind {
					out = append(out, r.RuleID)
				}
			}
			return out
		}
		put := func(id, before, after string) error {
			return db.PutPushRule(ctx, u, sql.PushRule{Kind: "override", RuleID: id, Conditions: []byte(`[]`), Actions: []byte(`["notify"]`)}, before, after)
		}
		version := func() int64 {
			t.Helper()
			v, err := db.PushRulesVersion(ctx, u)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
		if v := version(); v != 0 {
			t.Fatalf("version before any change = %d", v)
		}
		// New rules go on top; before and after place them.
		for _, id := range []string{"a", "b", "c"} {
			if err := put(id, "", ""); err != nil {
				t.Fatal(err)
			}
		}
		if got := ids("override"); !slices.Equal(got, []string{"c", "b", "a"}) {
			t.Fatalf("order %v", got)
		}
		if err := put("d", "b", ""); err != nil {
			t.Fatal(err)
		}
		if err := put("e", "", "b"); err != nil {
			t.Fatal(err)
		}
		if got := ids("override"); !slices.Equal(got, []string{"c", "d", "b", "e", "a"}) {
			t.Fatalf("after before/after: %v", got)
		}
		// before wins over after; an existing rule moves.
		if err := put("a", "c", "e"); err != nil {
			t.Fatal(err)
		}
		if got := ids("override"); !slices.Equal(got, []string{"a", "c", "d", "b", "e"}) {
			t.Fatalf("after moving a: %v", got)
		}
		if err := put("x", "nope", ""); !errors.Is(err, sql.ErrPushRuleAnchor) {
			t.Fatalf("unknown anchor: %v", err)
		}
		if got := ids("override"); slices.Contains(got, "x") {
			t.Fatal("rule with an unknown anchor was stored")
		}
		// Updating keeps the place and the enabled state.
		if err := db.SetPushRuleEnabled(ctx, u, "override", "d", false); err != nil {
			t.Fatal(err)
		}
		v := version()
		pattern := "p"
		if err := db.PutPushRule(ctx, u, sql.PushRule{Kind: "override", RuleID: "d", Conditions: []byte(`[{"kind":"x"}]`),
			Pattern: &pattern, Actions: []byte(`[]`)}, "", ""); err != nil {
			t.Fatal(err)
		}
		if version() <= v {
			t.Fatal("version not bumped by an update")
		}
		rules, _, _ := db.PushRules(ctx, u)
		for _, r := range rules {
			if r.RuleID == "d" && (r.Enabled || string(r.Conditions) != `[{"kind":"x"}]` || string(r.Actions) != `[]` || r.Pattern == nil) {
				t.Fatalf("updated rule %+v", r)
			}
		}
		if got := ids("override"); !slices.Equal(got, []string{"a", "c", "d", "b", "e"}) {
			t.Fatalf("update moved the rule: %v", got)
		}
		// Kinds are separate namespaces.
		if err := db.PutPushRule(ctx, u, sql.PushRule{Kind: "room", RuleID: "a", Actions: []byte(`[]`)}, "", ""); err != nil {
			t.Fatal(err)
		}
		if err := db.PutPushRule(ctx, u, sql.PushRule{Kind: "room", RuleID: "z", Actions: []byte(`[]`)}, "a", ""); err != nil {
			t.Fatal(err)
		}
		if got := ids("room"); !slices.Equal(got, []string{"z", "a"}) {
			t.Fatalf("room rules %v", got)
		}
		if err := db.SetPushRuleActions(ctx, u, "room", "a", []byte(`["notify"]`)); err != nil {
			t.Fatal(err)
		}
		if err := db.DeletePushRule(ctx, u, "override", "c"); err != nil {
			t.Fatal(err)
		}
		if got := ids("override"); !slices.Equal(got, []string{"a", "d", "b", "e"}) {
			t.Fatalf("after delete: %v", got)
		}
		for _, err := range []error{
			db.DeletePushRule(ctx, u, "override", "c"),
			db.DeletePushRule(ctx, u, "content", "a"),
			db.SetPushRuleEnabled(ctx, u, "override", "zz", true),
			db.SetPushRuleActions(ctx, u, "sender", "a", []byte(`[]`)),
		} {
			if !errors.Is(err, sql.ErrNotFound) {
				t.Fatalf("change of a missing rule: %v", err)
			}
		}
		// Settings of default rules: enabled and actions independently.
		v = version()
		if err := db.SetDefaultPushRuleEnabled(ctx, u, "override", ".m.rule.master", true); err != nil {
			t.Fatal(err)
		}
		if err := db.SetDefaultPushRuleActions(ctx, u, "underride", ".m.rule.message", []byte(`[]`)); err != nil {
			t.Fatal(err)
		}
		if err := db.SetDefaultPushRuleActions(ctx, u, "override", ".m.rule.master", []byte(`["notify"]`)); err != nil {
			t.Fatal(err)
		}
		if version() != v+3 {
			t.Fatalf("version %d after three changes from %d", version(), v)
		}
		_, settings, err := db.PushRules(ctx, u)
		if err != nil || len(settings) != 2 {
			t.Fatalf("settings %+v, %v", settings, err)
		}
		for _, s := range settings {
			switch s.RuleID {
			case ".m.rule.master":
				if s.Enabled == nil || !*s.Enabled || string(s.Actions) != `["notify"]` {
					t.Fatalf("master setting %+v", s)
				}
			case ".m.rule.message":
				if s.Enabled != nil || string(s.Actions) != `[]` {
					t.Fatalf("message setting %+v", s)
				}
			}
		}
		// Another user's rules are theirs.
		if rules, settings, _ := db.PushRules(ctx, "@bob:hs"); len(rules) != 0 || len(settings) != 0 {
			t.Fatal("rules leaked to another user")
		}
	})
}

func TestPushCounts(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		room, err := db.CreateRoom(ctx, "!r:hs", "12")
		if err != nil {
			t.Fatal(err)
		}
		other, err := db.CreateRoom(ctx, "!other:hs", "12")
		if err != nil {
			t.Fatal(err)
		}
		const u, v = "@alice:hs", "@bob:hs"
		add := func(roomNID, nid int64, ns ...sql.PushNotification) {
			t.Helper()
			if err := db.AddPushNotifications(ctx, roomNID, nid, nid, ns); err != nil {
				t.Fatal(err)
			}
		}
		counts := func(user, roomID string) sql.UnreadCounts {
			t.Helper()
			c, err := db.UnreadCounts(ctx, user, roomID)
			if err != nil {
				t.Fatal(err)
			}
			return c
		}
		nc := func(n, h int64) sql.NotificationCounts {
			return sql.NotificationCounts{NotificationCount: n, HighlightCount: h}
		}
		main := func(user string, hl bool) sql.PushNotification {
			return sql.PushNotification{UserID: user, ThreadID: "main", Highlight: hl}
		}
		thread := func(user, root string, hl bool) sql.PushNotification {
			return sql.PushNotification{UserID: user, ThreadID: root, Highlight: hl}
		}
		if c := counts(u, "!r:hs"); c.NotificationCounts != nc(0, 0) || c.Threads != nil {
			t.Fatalf("empty counts %+v", c)
		}
		add(room, 1, main(u, false), main(v, true))
		add(room, 2, main(u, true))
		add(room, 3, thread(u, "$root", false))
		add(room, 4, thread(u, "$root", true), thread(u, "$root2", false))
		add(room, 4, thread(u, "$root", true)) // redelivered: no change
		add(other, 5, main(u, false))
		c := counts(u, "!r:hs")
		if c.NotificationCounts != nc(4, 2) || c.Main != nc(2, 1) || len(c.Threads) != 1 || c.Threads["$root"] != nc(2, 1) {
			t.Fatalf("counts %+v", c)
		}
		if c := counts(v, "!r:hs"); c.NotificationCounts != nc(1, 1) {
			t.Fatalf("bob's counts %+v", c)
		}
		byRoom, err := db.UnreadCountsByRoom(ctx, u)
		if err != nil || len(byRoom) != 2 || byRoom["!other:hs"].NotificationCounts != nc(1, 0) || byRoom["!r:hs"].NotificationCounts != nc(4, 2) {
			t.Fatalf("by room %+v, %v", byRoom, err)
		}
		// A threaded receipt reads its thread only.
		if err := db.ResetCounts(ctx, u, "!r:hs", "main", 1); err != nil {
			t.Fatal(err)
		}
		if c := counts(u, "!r:hs"); c.Main != nc(1, 1) || c.Threads["$root"] != nc(2, 1) {
			t.Fatalf("after main receipt at 1: %+v", c)
		}
		if err := db.ResetCounts(ctx, u, "!r:hs", "$root", 3); err != nil {
			t.Fatal(err)
		}
		if c := counts(u, "!r:hs"); c.Threads["$root"] != nc(1, 1) || c.Main != nc(1, 1) {
			t.Fatalf("after thread receipt at 3: %+v", c)
		}
		// A receipt behind an earlier one changes nothing, even for
		// notifications counted after the marker moved (the counter lags).
		if err := db.ResetCounts(ctx, u, "!r:hs", "main", 0); err != nil {
			t.Fatal(err)
		}
		add(room, 1, main(u, false))
		if c := counts(u, "!r:hs"); c.Main != nc(1, 1) {
			t.Fatalf("late notification behind the marker counted: %+v", c)
		}
		// An unthreaded receipt reads every thread, but not other rooms
		// or users.
		if err := db.ResetCounts(ctx, u, "!r:hs", "", 4); err != nil {
			t.Fatal(err)
		}
		if c := counts(u, "!r:hs"); c.NotificationCounts != nc(0, 0) || c.Threads != nil {
			t.Fatalf("after unthreaded receipt: %+v", c)
		}
		add(room, 3, thread(u, "$root", true)) // late, behind the unthreaded marker
		if c := counts(u, "!r:hs"); c.NotificationCounts != nc(0, 0) {
			t.Fatalf("late threaded notification behind the unthreaded marker counted: %+v", c)
		}
		if c := counts(u, "!other:hs"); c.NotificationCounts != nc(1, 0) {
			t.Fatalf("other room %+v", c)
		}
		if c := counts(v, "!r:hs"); c.NotificationCounts != nc(1, 1) {
			t.Fatalf("bob's counts after alice read: %+v", c)
		}
		if err := db.ResetCounts(ctx, u, "!unknown:hs", "", 10); err != nil {
			t.Fatalf("unknown room: %v", err)
		}
		// Redactions and leaving drop notifications.
		add(room, 6, main(u, false), main(v, false))
		add(room, 7, main(u, false), main(v, false))
		if _, err := db.DeleteEventPushNotifications(ctx, 6); err != nil {
			t.Fatal(err)
		}
		if c := counts(v, "!r:hs"); c.NotificationCounts != nc(2, 1) {
			t.Fatalf("after redaction: %+v", c)
		}
		if err := db.DeleteRoomPushNotifications(ctx, u, room); err != nil {
			t.Fatal(err)
		}
		if c := counts(u, "!r:hs"); c.NotificationCounts != nc(0, 0) {
			t.Fatalf("after leaving: %+v", c)
		}
		// Batches beyond one INSERT.
		var many []sql.PushNotification
		for i := range 1234 {
			many = append(many, main(fmt.Sprintf("@u%d:hs", i), i%2 == 0))
		}
		add(room, 8, many...)
		if c := counts("@u1233:hs", "!r:hs"); c.NotificationCounts != nc(1, 0) {
			t.Fatalf("last of a large batch: %+v", c)
		}
		// The counted position only moves forward.
		for _, p := range []int64{5, 9, 7} {
			if err := db.SetPushCounted(ctx, room, p); err != nil {
				t.Fatal(err)
			}
		}
		if p, err := db.PushCountedUpTo(ctx, "!r:hs"); err != nil || p != 9 {
			t.Fatalf("counted up to %d, %v", p, err)
		}
		if p, err := db.PushCountedUpTo(ctx, "!other:hs"); err != nil || p != 0 {
			t.Fatalf("uncounted room at %d, %v", p, err)
		}
		// Several rooms at once, each only forward.
		other, cerr := db.CreateRoom(ctx, "!third:hs", "12")
		if cerr != nil {
			t.Fatal(cerr)
		}
		if err := db.SetPushCountedIn(ctx, map[int64]int64{room: 8, other: 3}); err != nil {
			t.Fatal(err)
		}
		for id, want := range map[string]int64{"!r:hs": 9, "!third:hs": 3} {
			if p, err := db.PushCountedUpTo(ctx, id); err != nil || p != want {
				t.Fatalf("%s counted up to %d (%v), want %d", id, p, err, want)
			}
		}

		// Several events at once, across rooms: a user notified twice in
		// a room has one summary of both; a read marker between events
		// keeps out only the one before it; an event added again is not
		// counted twice.
		b1, cerr := db.CreateRoom(ctx, "!batch1:hs", "12")
		if cerr != nil {
			t.Fatal(cerr)
		}
		b2, cerr := db.CreateRoom(ctx, "!batch2:hs", "12")
		if cerr != nil {
			t.Fatal(cerr)
		}
		if err := db.ResetCounts(ctx, u, "!batch1:hs", "", 2005); err != nil {
			t.Fatal(err)
		}
		ev := func(room, pos int64, ns ...sql.PushNotification) sql.EventNotifications {
			return sql.EventNotifications{RoomNID: room, EventNID: pos, StreamPos: pos, Notes: ns}
		}
		batch := []sql.EventNotifications{ev(b1, 2004, main(u, false)), ev(b1, 2006, main(u, true), main(v, false)),
			ev(b2, 2007, thread(u, "$root", false)), ev(b1, 2008, main(u, false)), ev(b1, 2006, main(u, true))}
		for range 2 {
			if err := db.AddEventsPushNotifications(ctx, batch); err != nil {
				t.Fatal(err)
			}
		}
		if c := counts(u, "!batch1:hs"); c.NotificationCounts != nc(2, 1) {
			t.Fatalf("batched events in one room: %+v", c)
		}
		if c := counts(v, "!batch1:hs"); c.NotificationCounts != nc(1, 0) {
			t.Fatalf("another user of the batch: %+v", c)
		}
		if c := counts(u, "!batch2:hs"); c.NotificationCounts != nc(1, 0) || c.Threads["$root"].NotificationCount != 1 {
			t.Fatalf("batched event in another room: %+v", c)
		}
		// What reading up to a position would clear, after another.
		had, herr := db.HasPushNotificationsIn(ctx, []sql.ReadUpTo{
			{UserID: u, RoomNID: b1, ThreadID: "main", UpTo: 2005},               // 2004 was read already
			{UserID: u, RoomNID: b1, ThreadID: "main", UpTo: 2006},               // 2006
			{UserID: u, RoomNID: b1, ThreadID: "main", After: 2006, UpTo: 2007},  // nothing in (2006, 2007]
			{UserID: u, RoomNID: b2, ThreadID: "main", UpTo: 2010},               // only a thread there
			{UserID: u, RoomNID: b2, ThreadID: "$root", After: 2006, UpTo: 2007}, // 2007
		})
		if herr != nil || !slices.Equal(had, []bool{false, true, false, false, true}) {
			t.Fatalf("notifications to read: %v, %v", had, herr)
		}
	})
}

func TestPushMembers(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		room, err := db.CreateRoom(ctx, "!r:a_b.org", "12")
		if err != nil {
			t.Fatal(err)
		}
		for i, m := range []struct{ user, membership string }{
			{"@joined:a_b.org", "join"}, {"@invited:a_b.org", "invite"}, {"@left:a_b.org", "leave"},
			{"@remote:elsewhere.org", "join"}, {"@tricky:aXb.org", "join"}, {"@upper:A_B.ORG", "join"},
		} {
			if err := db.SetMembership(ctx, room, m.user, m.membership, int64(10+i), int64(100+i)); err != nil {
				t.Fatal(err)
			}
		}
		if err := db.SetDefaultPushRuleEnabled(ctx, "@joined:a_b.org", "override", ".m.rule.master", true); err != nil {
			t.Fatal(err)
		}
		members, joined, err := db.PushMembers(ctx, room, "a_b.org")
		if err != nil {
			t.Fatal(err)
		}
		if joined != 4 {
			t.Errorf("joined = %d, want 4 (remote members count)", joined)
		}
		got := map[string]sql.PushMember{}
		for _, m := range members {
			got[m.UserID] = m
		}
		if len(got) != 2 || got["@joined:a_b.org"].RulesVersion != 1 || got["@joined:a_b.org"].EventNID != 10 ||
			got["@joined:a_b.org"].StreamPos != 100 || got["@invited:a_b.org"].Membership != "invite" ||
			got["@invited:a_b.org"].RulesVersion != 0 {
			t.Fatalf("members %+v", members)
		}
	})
}
