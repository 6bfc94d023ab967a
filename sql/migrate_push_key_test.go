package sql_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// TestPushNotificationsKeyMigration puts push_notifications back as
// migration 0007 made it, with rows in it, and checks that 0022 keeps
// every row and that the new key still takes an event once per user.
func TestPushNotificationsKeyMigration(t *testing.T) {
	ctx := context.Background()
	for _, engine := range sqltest.Engines() {
		t.Run(string(engine), func(t *testing.T) {
			url := sqltest.URL(t, engine)
			db, err := sql.Open(ctx, url, 4)
			if err != nil {
				t.Fatal(err)
			}
			a, err := db.CreateRoom(ctx, "!a:hs", "11")
			if err != nil {
				t.Fatal(err)
			}
			b, err := db.CreateRoom(ctx, "!b:hs", "11")
			if err != nil {
				t.Fatal(err)
			}
			for _, q := range []string{
				`DROP TABLE push_notifications`,
				`CREATE TABLE push_notifications (user_id TEXT NOT NULL, room_nid BIGINT NOT NULL, thread_id TEXT NOT NULL,
					event_nid BIGINT NOT NULL, stream_pos BIGINT NOT NULL, highlight BOOLEAN NOT NULL, PRIMARY KEY (user_id, event_nid))`,
				`CREATE INDEX push_notifications_user_room ON push_notifications (user_id, room_nid, thread_id, stream_pos)`,
				`CREATE INDEX push_notifications_event ON push_notifications (event_nid)`,
				`DELETE FROM schema_version WHERE version = 22`,
			} {
				if err := db.ExecForTest(ctx, q); err != nil {
					t.Fatalf("%s: %v", q, err)
				}
			}
			// Two users, two rooms, a thread: as the counter wrote them.
			rows := []struct {
				user       string
				room       int64
				thread     string
				event, pos int64
				highlight  bool
			}{
				{"@u:hs", a, "main", 10, 1, false},
				{"@v:hs", a, "main", 10, 1, false},
				{"@u:hs", a, "$root", 11, 2, true},
				{"@u:hs", b, "main", 12, 3, false},
			}
			for _, r := range rows {
				if err := db.ExecForTest(ctx, insertNotification(r.user, r.room, r.thread, r.event, r.pos, r.highlight)); err != nil {
					t.Fatal(err)
				}
			}
			db.Close()

			db, err = sql.Open(ctx, url, 4)
			if err != nil {
				t.Fatalf("migrate: %v", err)
			}
			defer db.Close()
			for user, want := range map[string]map[string]int64{
				"@u:hs": {"!a:hs": 2, "!b:hs": 1},
				"@v:hs": {"!a:hs": 1},
			} {
				got, err := db.UnreadCountsByRoom(ctx, user)
				if err != nil {
					t.Fatal(err)
				}
				if len(got) != len(want) {
					t.Fatalf("%s: counts %+v, want %v", user, got, want)
				}
				for room, n := range want {
					if got[room].NotificationCount != n {
						t.Fatalf("%s in %s: %+v, want %d", user, room, got[room], n)
					}
				}
			}
			if c, err := db.UnreadCounts(ctx, "@u:hs", "!a:hs"); err != nil || c.HighlightCount != 1 || c.Threads["$root"].NotificationCount != 1 {
				t.Fatalf("thread and highlight after the migration: %+v, %v", c, err)
			}
			// The event at position 1 again, in another thread: still one row.
			if err := db.AddPushNotifications(ctx, a, 10, 1, []sql.PushNotification{{UserID: "@u:hs", ThreadID: "$root"}}); err != nil {
				t.Fatal(err)
			}
			if c, err := db.UnreadCounts(ctx, "@u:hs", "!a:hs"); err != nil || c.NotificationCount != 2 {
				t.Fatalf("an event counted twice: %+v, %v", c, err)
			}
		})
	}
}

func insertNotification(user string, room int64, thread string, event, pos int64, highlight bool) string {
	return fmt.Sprintf(`INSERT INTO push_notifications (user_id, room_nid, thread_id, event_nid, stream_pos, highlight)
		VALUES ('%s', %d, '%s', %d, %d, %t)`, user, room, thread, event, pos, highlight)
}
