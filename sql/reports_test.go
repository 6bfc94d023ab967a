package sql_test

import (
	"context"
	"errors"
	"testing"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

func TestReports(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		reason, score := "spam", int64(-100)
		add := func(r sql.Report) int64 {
			t.Helper()
			id, err := db.AddReport(ctx, r)
			if err != nil {
				t.Fatal(err)
			}
			return id
		}
		e1 := add(sql.Report{Kind: sql.ReportEvent, Reporter: "@alice:hs", RoomID: "!r1:hs", EventID: "$e1", TargetUserID: "@mallory:hs",
			Reason: &reason, Score: &score})
		e2 := add(sql.Report{Kind: sql.ReportEvent, Reporter: "@bob:hs", RoomID: "!r2:hs", EventID: "$e2", TargetUserID: "@mallory:hs"})
		// A LIKE wildcard in a filter must match only itself.
		e3 := add(sql.Report{Kind: sql.ReportEvent, Reporter: "@a_b:hs", RoomID: "!r1:hs", EventID: "$e3", TargetUserID: "@eve:hs"})
		add(sql.Report{Kind: sql.ReportRoom, Reporter: "@alice:hs", RoomID: "!r1:hs", Reason: &reason})
		u := add(sql.Report{Kind: sql.ReportUser, Reporter: "@alice:hs", TargetUserID: "@mallory:hs", Reason: &reason})

		got, err := db.ReportByID(ctx, sql.ReportEvent, e1)
		if err != nil || got.Reporter != "@alice:hs" || got.RoomID != "!r1:hs" || got.EventID != "$e1" || got.TargetUserID != "@mallory:hs" ||
			got.Reason == nil || *got.Reason != "spam" || got.Score == nil || *got.Score != -100 || got.ReceivedTS == 0 {
			t.Fatalf("ReportByID = %+v, %v", got, err)
		}
		if got, err := db.ReportByID(ctx, sql.ReportEvent, e2); err != nil || got.Reason != nil || got.Score != nil {
			t.Fatalf("report without reason or score = %+v, %v", got, err)
		}
		if _, err := db.ReportByID(ctx, sql.ReportEvent, u); !errors.Is(err, sql.ErrNotFound) {
			t.Fatalf("a user report read as an event report: %v, want ErrNotFound", err)
		}

		ids := func(q sql.ReportQuery) ([]int64, int64) {
			t.Helper()
			if q.Limit == 0 {
				q.Limit = 10
			}
			rs, total, err := db.Reports(ctx, q)
			if err != nil {
				t.Fatal(err)
			}
			out := []int64{}
			for _, r := range rs {
				out = append(out, r.ID)
			}
			return out, total
		}
		check := func(name string, q sql.ReportQuery, want []int64, wantTotal int64) {
			t.Helper()
			got, total := ids(q)
			if len(got) != len(want) || total != wantTotal {
				t.Fatalf("%s: got %v (total %d), want %v (total %d)", name, got, total, want, wantTotal)
			}
			for i := range got {
				if got[i] != want[i] {
					t.Fatalf("%s: got %v, want %v", name, got, want)
				}
			}
		}
		check("newest first", sql.ReportQuery{Kind: sql.ReportEvent}, []int64{e3, e2, e1}, 3)
		check("oldest first", sql.ReportQuery{Kind: sql.ReportEvent, OldestFirst: true}, []int64{e1, e2, e3}, 3)
		check("page", sql.ReportQuery{Kind: sql.ReportEvent, Offset: 1, Limit: 1}, []int64{e2}, 3)
		check("by room", sql.ReportQuery{Kind: sql.ReportEvent, RoomID: "!r1"}, []int64{e3, e1}, 2)
		check("by reporter substring", sql.ReportQuery{Kind: sql.ReportEvent, Reporter: "alice"}, []int64{e1}, 1)
		check("wildcard is literal", sql.ReportQuery{Kind: sql.ReportEvent, Reporter: "a_b"}, []int64{e3}, 1)
		check("percent is literal", sql.ReportQuery{Kind: sql.ReportEvent, Reporter: "%"}, nil, 0)
		check("by target", sql.ReportQuery{Kind: sql.ReportEvent, TargetUser: "@mallory:hs"}, []int64{e2, e1}, 2)
		check("user reports", sql.ReportQuery{Kind: sql.ReportUser}, []int64{u}, 1)

		if err := db.DeleteReport(ctx, sql.ReportEvent, e2); err != nil {
			t.Fatal(err)
		}
		if err := db.DeleteReport(ctx, sql.ReportEvent, e2); !errors.Is(err, sql.ErrNotFound) {
			t.Fatalf("second delete: %v, want ErrNotFound", err)
		}
		check("after delete", sql.ReportQuery{Kind: sql.ReportEvent}, []int64{e3, e1}, 2)
	})
}
