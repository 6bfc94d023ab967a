package userapi

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

func TestChangePassword(t *testing.T) {
	t.Parallel()
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		s := newTestService(t, db, testAuth(), nil)
		createUser(t, s, "alice", alicePassword)
		tokens := map[string]string{}
		for _, id := range []string{"MINE", "OTHER1", "OTHER2"} {
			sess, err := s.StartSession(ctx, "alice", id, "", id == "OTHER2")
			if err != nil {
				t.Fatal(err)
			}
			tokens[id] = sess.AccessToken
			if _, err := s.Authenticate(ctx, sess.AccessToken); err != nil { // cached
				t.Fatal(err)
			}
		}

		if err := s.ChangePassword(ctx, "alice", "second", false, "MINE"); err != nil {
			t.Fatal(err)
		}
		for id, tok := range tokens {
			if _, err := s.Authenticate(ctx, tok); err != nil {
				t.Fatalf("logout_devices false logged out %s: %v", id, err)
			}
		}
		_, err := s.CheckPassword(ctx, "alice", alicePassword)
		wantErr(t, err, http.StatusForbidden, "M_FORBIDDEN")
		if _, err := s.CheckPassword(ctx, "alice", "second"); err != nil {
			t.Fatal(err)
		}

		if err := s.ChangePassword(ctx, "alice", "third", true, "MINE"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Authenticate(ctx, tokens["MINE"]); err != nil {
			t.Fatalf("the caller's own token must survive: %v", err)
		}
		for _, id := range []string{"OTHER1", "OTHER2"} {
			_, err := s.Authenticate(ctx, tokens[id])
			wantErr(t, err, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
		}
		ds, err := s.Devices(ctx, "alice")
		if err != nil || len(ds) != 1 || ds[0].DeviceID != "MINE" {
			t.Fatalf("devices after change: %+v %v", ds, err)
		}

		wantErr(t, s.ChangePassword(ctx, "alice", "", true, "MINE"), http.StatusBadRequest, "M_MISSING_PARAM")
		wantErr(t, s.ChangePassword(ctx, "nobody", "x", true, ""), http.StatusNotFound, "M_NOT_FOUND")
	})
}

func TestDeactivate(t *testing.T) {
	t.Parallel()
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		s := newTestService(t, db, testAuth(), nil)
		createUser(t, s, "alice", alicePassword)
		createUser(t, s, "bob", "bob's")
		a1, err := s.StartSession(ctx, "alice", "A1", "", true)
		if err != nil {
			t.Fatal(err)
		}
		bob, err := s.StartSession(ctx, "bob", "B1", "", false)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Authenticate(ctx, a1.AccessToken); err != nil {
			t.Fatal(err)
		}
		loginToken, err := s.NewLoginToken(ctx, "alice")
		if err != nil {
			t.Fatal(err)
		}

		if err := s.Deactivate(ctx, "alice", true); err != nil {
			t.Fatal(err)
		}
		_, err = s.Authenticate(ctx, a1.AccessToken)
		wantErr(t, err, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
		_, err = s.Refresh(ctx, a1.RefreshToken)
		wantErr(t, err, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
		_, err = s.TakeLoginToken(ctx, loginToken)
		wantErr(t, err, http.StatusForbidden, "M_FORBIDDEN")
		_, err = s.CheckPassword(ctx, "alice", alicePassword)
		wantErr(t, err, http.StatusForbidden, "M_USER_DEACTIVATED")
		if ds, err := s.Devices(ctx, "alice"); err != nil || len(ds) != 0 {
			t.Fatalf("devices left: %+v %v", ds, err)
		}
		// The name stays taken.
		if ok, err := db.AccountExists(ctx, "alice"); err != nil || !ok {
			t.Fatalf("account gone: %v %v", ok, err)
		}
		// Other users are untouched.
		if _, err := s.Authenticate(ctx, bob.AccessToken); err != nil {
			t.Fatal(err)
		}
		wantErr(t, s.Deactivate(ctx, "nobody", false), http.StatusNotFound, "M_NOT_FOUND")
	})
}

func TestLoginTokens(t *testing.T) {
	t.Parallel()
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		s := newTestService(t, db, testAuth(), nil)
		clk := useClock(s)
		createUser(t, s, "alice", alicePassword)

		tok, err := s.NewLoginToken(ctx, "alice")
		if err != nil {
			t.Fatal(err)
		}
		acc, err := s.TakeLoginToken(ctx, tok)
		if err != nil || acc.Localpart != "alice" {
			t.Fatalf("take: %+v %v", acc, err)
		}
		// The spec: single use.
		_, err = s.TakeLoginToken(ctx, tok)
		wantErr(t, err, http.StatusForbidden, "M_FORBIDDEN")

		tok, err = s.NewLoginToken(ctx, "alice")
		if err != nil {
			t.Fatal(err)
		}
		clk.advance(LoginTokenLifetime)
		_, err = s.TakeLoginToken(ctx, tok)
		wantErr(t, err, http.StatusForbidden, "M_FORBIDDEN")

		_, err = s.TakeLoginToken(ctx, "wfl_never-issued")
		wantErr(t, err, http.StatusForbidden, "M_FORBIDDEN")

		tok, err = s.NewLoginToken(ctx, "alice")
		if err != nil {
			t.Fatal(err)
		}
		if err := db.Deactivate(ctx, "alice"); err != nil {
			t.Fatal(err)
		}
		_, err = s.TakeLoginToken(ctx, tok)
		wantErr(t, err, http.StatusForbidden, "M_USER_DEACTIVATED")
	})
}

func TestRenameDevice(t *testing.T) {
	t.Parallel()
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		s := newTestService(t, db, testAuth(), nil)
		createUser(t, s, "alice", alicePassword)
		if _, err := s.StartSession(ctx, "alice", "D", "old", false); err != nil {
			t.Fatal(err)
		}
		if err := s.RenameDevice(ctx, "alice", "D", "new"); err != nil {
			t.Fatal(err)
		}
		if d, err := s.Device(ctx, "alice", "D"); err != nil || d.DisplayName != "new" {
			t.Fatalf("%+v %v", d, err)
		}
		wantErr(t, s.RenameDevice(ctx, "alice", "NOPE", "x"), http.StatusNotFound, "M_NOT_FOUND")
		// Another user's device is as unknown as a missing one.
		createUser(t, s, "bob", "b")
		wantErr(t, s.RenameDevice(ctx, "bob", "D", "x"), http.StatusNotFound, "M_NOT_FOUND")
		wantErr(t, s.RenameDevice(ctx, "alice", "D", strings.Repeat("é", MaxDeviceDisplayName+1)), http.StatusBadRequest, "M_TOO_LARGE")
		if err := s.RenameDevice(ctx, "alice", "D", strings.Repeat("é", MaxDeviceDisplayName)); err != nil {
			t.Fatal(err)
		}
		_, err := s.Device(ctx, "bob", "D")
		wantErr(t, err, http.StatusNotFound, "M_NOT_FOUND")
	})
}
