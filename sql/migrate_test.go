package sql_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

func TestMigrationsApplyOnceOnEachEngine(t *testing.T) {
	ctx := context.Background()
	for _, engine := range sqltest.Engines() {
		t.Run(string(engine), func(t *testing.T) {
			url := sqltest.URL(t, engine)
			want := make([]int, sql.SchemaVersion())
			for i := range want {
				want[i] = i + 1
			}
			for start := 1; start <= 2; start++ {
				db, err := sql.Open(ctx, url, 4)
				if err != nil {
					t.Fatalf("start %d: %v", start, err)
				}
				got, err := db.AppliedMigrations(ctx)
				db.Close()
				if err != nil {
					t.Fatal(err)
				}
				// The second start finds everything applied and records nothing new.
				if !slices.Equal(got, want) {
					t.Fatalf("start %d: applied %v, want %v", start, got, want)
				}
			}
		})
	}
}

func TestRefusesNewerSchema(t *testing.T) {
	ctx := context.Background()
	for _, engine := range sqltest.Engines() {
		t.Run(string(engine), func(t *testing.T) {
			url := sqltest.URL(t, engine)
			db, err := sql.Open(ctx, url, 4)
			if err != nil {
				t.Fatal(err)
			}
			if err := db.MarkSchemaVersionForTest(ctx, sql.SchemaVersion()+1); err != nil {
				t.Fatal(err)
			}
			db.Close()
			_, err = sql.Open(ctx, url, 4)
			if err == nil || !strings.Contains(err.Error(), "newer than this binary") {
				t.Fatalf("open on a newer schema: %v, want a refusal", err)
			}
		})
	}
}
