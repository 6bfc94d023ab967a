package sql_test

import (
	"context"
	"testing"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// TestServerMemberships checks the federation API's membership reads on
// both engines: user ids match a server by their exact suffix (SQLite's
// LIKE ignores case, and a server name is no pattern).
func TestServerMemberships(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		nid, err := db.CreateRoom(ctx, "!r:ours.example", "10")
		if err != nil {
			t.Fatal(err)
		}
		for i, m := range []struct{ user, membership string }{
			{"@a:remote.example", "join"}, {"@b:REMOTE.example", "join"}, {"@c:xremote.example", "join"},
			{"@d:other.example", "invite"}, {"@e:a_b.example", "leave"}, {"@f:a%b.example", "join"},
		} {
			if err := db.SetMembership(ctx, nid, m.user, m.membership, int64(i+1), int64(i+1)); err != nil {
				t.Fatal(err)
			}
		}
		for _, c := range []struct {
			server      string
			memberships []string
			want        bool
		}{
			{"remote.example", []string{"join"}, true},
			{"emote.example", []string{"join"}, false},
			{"Remote.example", []string{"join"}, false},
			{"REMOTE.example", []string{"join"}, true},
			{"other.example", []string{"join"}, false},
			{"other.example", []string{"join", "invite"}, true},
			{"a_b.example", []string{"join"}, false},
			{"axb.example", []string{"join"}, false},
			{"a%b.example", []string{"join"}, true},
			{"remote.example", nil, false},
		} {
			got, err := db.ServerHasMembership(ctx, nid, c.server, c.memberships...)
			if err != nil || got != c.want {
				t.Errorf("%s %v: %v %v, want %v", c.server, c.memberships, got, err, c.want)
			}
		}

		base, err := db.AddSnapshot(ctx, nid, 0, 0, sql.StateMap{
			{Type: "m.room.member", StateKey: "@a:remote.example"}:  1,
			{Type: "m.room.member", StateKey: "@b:REMOTE.example"}:  2,
			{Type: "m.room.member", StateKey: "@c:xremote.example"}: 3,
			{Type: "m.room.name", StateKey: ""}:                     4,
		})
		if err != nil {
			t.Fatal(err)
		}
		top, err := db.AddSnapshot(ctx, nid, base, 1, sql.StateMap{{Type: "m.room.member", StateKey: "@a:remote.example"}: 5})
		if err != nil {
			t.Fatal(err)
		}
		got, err := db.SnapshotServerMembers(ctx, top, "remote.example")
		if err != nil || len(got) != 1 || got[sql.StateKey{Type: "m.room.member", StateKey: "@a:remote.example"}] != 5 {
			t.Errorf("members of remote.example: %v %v", got, err)
		}
		if got, err := db.SnapshotServerMembers(ctx, 0, "remote.example"); err != nil || len(got) != 0 {
			t.Errorf("empty snapshot: %v %v", got, err)
		}
	})
}
