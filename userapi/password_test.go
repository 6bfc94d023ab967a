package userapi

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

func TestCheckPassword(t *testing.T) {
	t.Parallel()
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		s := newTestService(t, db, testAuth(), nil)
		createUser(t, s, "alice", alicePassword)

		acc, err := s.CheckPassword(ctx, "alice", alicePassword)
		if err != nil || acc.Localpart != "alice" {
			t.Fatalf("right password: %+v %v", acc, err)
		}
		// A wrong password and an unknown user get the same answer, so
		// the answer does not reveal which accounts exist.
		for _, tc := range [][2]string{{"alice", "wrong"}, {"alice", ""}, {"nobody", alicePassword}} {
			_, err := s.CheckPassword(ctx, tc[0], tc[1])
			me := wantErr(t, err, http.StatusForbidden, "M_FORBIDDEN")
			if me.Message != "Invalid username or password" {
				t.Fatalf("%v: message %q", tc, me.Message)
			}
		}
		_, err = s.CheckPassword(ctx, "alice", strings.Repeat("x", MaxPasswordBytes+1))
		wantErr(t, err, http.StatusForbidden, "M_FORBIDDEN")

		if err := s.Deactivate(ctx, "alice", false); err != nil {
			t.Fatal(err)
		}
		_, err = s.CheckPassword(ctx, "alice", alicePassword)
		wantErr(t, err, http.StatusForbidden, "M_USER_DEACTIVATED")
	})
}

func TestPasswordsCountByTheirFirst72Bytes(t *testing.T) {
	t.Parallel()
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		s := newTestService(t, db, testAuth(), nil)
		long := strings.Repeat("p", 72)
		createUser(t, s, "alice", long+"tail")
		// bcrypt reads 72 bytes; like Synapse, so hashes move between
		// the servers, the rest does not count.
		if _, err := s.CheckPassword(context.Background(), "alice", long+"other tail"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.CheckPassword(context.Background(), "alice", long[:71]); err == nil {
			t.Fatal("a 71-byte prefix matched")
		}
	})
}

func TestHashPasswordLimits(t *testing.T) {
	t.Parallel()
	s := &Service{cfg: testAuth()}
	_, err := s.HashPassword(strings.Repeat("x", MaxPasswordBytes+1))
	wantErr(t, err, http.StatusBadRequest, "M_WEAK_PASSWORD")
	if _, err := s.HashPassword(strings.Repeat("x", MaxPasswordBytes)); err != nil {
		t.Fatal(err)
	}
	wantErr(t, ValidNewPassword(""), http.StatusBadRequest, "M_MISSING_PARAM")
	wantErr(t, ValidNewPassword(strings.Repeat("x", MaxPasswordBytes+1)), http.StatusBadRequest, "M_WEAK_PASSWORD")
}

func TestLocalpartFromIdentifier(t *testing.T) {
	t.Parallel()
	s := &Service{serverName: testServer}
	for _, tc := range []struct {
		identifier, legacy string
		want               string
		status             int
		code               string
	}{
		{identifier: `{"type":"m.id.user","user":"alice"}`, want: "alice"},
		{identifier: `{"type":"m.id.user","user":"@Alice:weft.test"}`, want: "alice"},
		{identifier: `{"type":"m.id.user","user":"ALICE"}`, want: "alice"},
		{legacy: "alice", want: "alice"},
		{legacy: "@alice:weft.test", want: "alice"},
		{identifier: `null`, legacy: "alice", want: "alice"},
		// The identifier wins over the deprecated field.
		{identifier: `{"type":"m.id.user","user":"bob"}`, legacy: "alice", want: "bob"},
		{identifier: `{"type":"m.id.user","user":"@alice:elsewhere.test"}`, status: 403, code: "M_FORBIDDEN"},
		{identifier: `{"type":"m.id.user","user":"@:weft.test"}`, status: 403, code: "M_FORBIDDEN"},
		// The spec: a 3PID the server does not know is 403.
		{identifier: `{"type":"m.id.thirdparty","medium":"email","address":"a@example.org"}`, status: 403, code: "M_FORBIDDEN"},
		{identifier: `{"type":"m.id.phone","country":"GB","phone":"123"}`, status: 403, code: "M_FORBIDDEN"},
		{identifier: `{"type":"x.custom"}`, status: 400, code: "M_UNKNOWN"},
		{identifier: `"alice"`, status: 400, code: "M_BAD_JSON"},
		{identifier: `{"type":"m.id.user"}`, status: 400, code: "M_MISSING_PARAM"},
		{status: 400, code: "M_MISSING_PARAM"},
	} {
		var raw json.RawMessage
		if tc.identifier != "" {
			raw = json.RawMessage(tc.identifier)
		}
		got, err := s.LocalpartFromIdentifier(raw, tc.legacy)
		if tc.code != "" {
			wantErr(t, err, tc.status, tc.code)
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s / %q: got %q %v, want %q", tc.identifier, tc.legacy, got, err, tc.want)
		}
	}
}
