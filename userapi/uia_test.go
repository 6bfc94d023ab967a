package userapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

const (
	reqDeleteA    = "DELETE /_matrix/client/v3/devices/A"
	reqPassword   = "POST /_matrix/client/v3/account/password"
	alicePassword = "correct horse battery staple"
)

func passwordAuth(session, user, password string) json.RawMessage {
	b, _ := json.Marshal(map[string]any{
		"type":       StagePassword,
		"session":    session,
		"identifier": map[string]string{"type": "m.id.user", "user": user},
		"password":   password,
	})
	return b
}

func stageAuth(session, stage string) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(`{"type":%q,"session":%q}`, stage, session))
}

// startUIA makes the first, auth-less request and returns the session the
// 401 hands out.
func startUIA(t *testing.T, s *Service, u UIA) string {
	t.Helper()
	u.Auth = nil
	_, err := s.InteractiveAuth(context.Background(), u)
	me := wantErr(t, err, http.StatusUnauthorized, "")
	sess, _ := me.Extra["session"].(string)
	if sess == "" {
		t.Fatalf("401 without a session: %v", me.Extra)
	}
	return sess
}

func TestUIAChallengeBodyFollowsSpec(t *testing.T) {
	t.Parallel()
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		s := newTestService(t, db, testAuth(), nil)
		u := UIA{Flows: [][]string{{StageDummy, StagePassword}, {StageRegistrationToken}},
			Params: map[string]any{"x.example": map[string]string{"k": "v"}}, Request: reqPassword}
		_, err := s.InteractiveAuth(context.Background(), u)
		status, body := wireBody(t, err)
		// The spec's first 401 has flows, params and session and no
		// errcode (clients show an errcode as a failure).
		if status != 401 {
			t.Fatalf("status %d", status)
		}
		if _, ok := body["errcode"]; ok {
			t.Fatalf("first challenge carries an errcode: %v", body)
		}
		flows, _ := json.Marshal(body["flows"])
		if string(flows) != `[{"stages":["m.login.dummy","m.login.password"]},{"stages":["m.login.registration_token"]}]` {
			t.Fatalf("flows %s", flows)
		}
		if _, ok := body["params"].(map[string]any)["x.example"]; !ok {
			t.Fatalf("params %v", body["params"])
		}
		if s, _ := body["session"].(string); s == "" {
			t.Fatalf("no session: %v", body)
		}
	})
}

func TestUIANeverSucceedsWithoutAuth(t *testing.T) {
	t.Parallel()
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		s := newTestService(t, db, testAuth(), nil)
		// The spec: even a dummy-only flow gives a 401 to a request with no
		// auth data.
		_, err := s.InteractiveAuth(context.Background(), UIA{Flows: [][]string{{StageDummy}}, Request: reqPassword})
		wantErr(t, err, http.StatusUnauthorized, "")
	})
}

func TestUIAStagesMustFollowFlowOrder(t *testing.T) {
	t.Parallel()
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		s := newTestService(t, db, testAuth(), nil)
		createUser(t, s, "alice", alicePassword)
		u := UIA{Flows: [][]string{{StageDummy, StagePassword}}, Localpart: "alice", Request: reqPassword}
		sess := startUIA(t, s, u)

		// The password is right but it is not the first stage of the flow:
		// the spec requires a 401.
		u.Auth = passwordAuth(sess, "alice", alicePassword)
		_, err := s.InteractiveAuth(ctx, u)
		me := wantErr(t, err, http.StatusUnauthorized, "M_UNRECOGNIZED")
		if me.Extra["completed"] != nil {
			t.Fatalf("out-of-order stage was recorded: %v", me.Extra["completed"])
		}

		u.Auth = stageAuth(sess, StageDummy)
		_, err = s.InteractiveAuth(ctx, u)
		me = wantErr(t, err, http.StatusUnauthorized, "")
		if c, _ := me.Extra["completed"].([]string); !slices.Equal(c, []string{StageDummy}) {
			t.Fatalf("completed %v, want [dummy]", me.Extra["completed"])
		}

		u.Auth = passwordAuth(sess, "alice", alicePassword)
		res, err := s.InteractiveAuth(ctx, u)
		if err != nil {
			t.Fatalf("flow in order: %v", err)
		}
		if res["user"] != "alice" {
			t.Fatalf("results %v", res)
		}
	})
}

func TestUIASessionBoundToRequest(t *testing.T) {
	t.Parallel()
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		s := newTestService(t, db, testAuth(), nil)
		createUser(t, s, "alice", alicePassword)
		flows := [][]string{{StagePassword}}
		sess := startUIA(t, s, UIA{Flows: flows, Localpart: "alice", Request: reqDeleteA})

		// A session started to delete a device cannot change the password.
		_, err := s.InteractiveAuth(context.Background(), UIA{Flows: flows, Localpart: "alice", Request: reqPassword,
			Auth: passwordAuth(sess, "alice", alicePassword)})
		wantErr(t, err, http.StatusForbidden, "M_FORBIDDEN")

		// Nor another device: the path is part of the binding.
		_, err = s.InteractiveAuth(context.Background(), UIA{Flows: flows, Localpart: "alice",
			Request: "DELETE /_matrix/client/v3/devices/B", Auth: passwordAuth(sess, "alice", alicePassword)})
		wantErr(t, err, http.StatusForbidden, "M_FORBIDDEN")

		// It still works for what it was started for.
		if _, err := s.InteractiveAuth(context.Background(), UIA{Flows: flows, Localpart: "alice", Request: reqDeleteA,
			Auth: passwordAuth(sess, "alice", alicePassword)}); err != nil {
			t.Fatalf("original request: %v", err)
		}
	})
}

func TestUIAWrongPasswordKeepsSession(t *testing.T) {
	t.Parallel()
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		s := newTestService(t, db, testAuth(), nil)
		createUser(t, s, "alice", alicePassword)
		u := UIA{Flows: [][]string{{StagePassword}}, Localpart: "alice", Request: reqPassword}
		sess := startUIA(t, s, u)

		u.Auth = passwordAuth(sess, "alice", "wrong")
		_, err := s.InteractiveAuth(ctx, u)
		// The spec: a failed stage is the 401 body plus errcode and error.
		status, body := wireBody(t, err)
		if status != 401 || body["errcode"] != "M_FORBIDDEN" || body["error"] == "" || body["session"] != sess || body["flows"] == nil {
			t.Fatalf("wrong password: %d %v", status, body)
		}

		u.Auth = passwordAuth(sess, "@alice:"+testServer, alicePassword)
		if _, err := s.InteractiveAuth(ctx, u); err != nil {
			t.Fatalf("retry with the right password (as a user id): %v", err)
		}
	})
}

func TestUIAPasswordMustBeTheCallers(t *testing.T) {
	t.Parallel()
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		s := newTestService(t, db, testAuth(), nil)
		createUser(t, s, "alice", alicePassword)
		createUser(t, s, "mallory", "mallory's own")
		u := UIA{Flows: [][]string{{StagePassword}}, Localpart: "alice", Request: reqPassword}
		sess := startUIA(t, s, u)
		u.Auth = passwordAuth(sess, "mallory", "mallory's own")
		_, err := s.InteractiveAuth(context.Background(), u)
		wantErr(t, err, http.StatusUnauthorized, "M_FORBIDDEN")
	})
}

func TestUIAExpiredSession(t *testing.T) {
	t.Parallel()
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		cfg := testAuth()
		s := newTestService(t, db, cfg, nil)
		clk := useClock(s)
		createUser(t, s, "alice", alicePassword)
		u := UIA{Flows: [][]string{{StagePassword}}, Localpart: "alice", Request: reqPassword}
		sess := startUIA(t, s, u)

		clk.advance(cfg.UIASessionExpiry + time.Second)
		u.Auth = passwordAuth(sess, "alice", alicePassword)
		_, err := s.InteractiveAuth(context.Background(), u)
		// Weft answers an expired session with a fresh challenge (no
		// session) carrying M_UNKNOWN, so the client starts over.
		me := wantErr(t, err, http.StatusUnauthorized, "M_UNKNOWN")
		if _, ok := me.Extra["session"]; ok {
			t.Fatalf("expired challenge names a session: %v", me.Extra)
		}
		if me.Extra["flows"] == nil {
			t.Fatalf("expired challenge without flows: %v", me.Extra)
		}
	})
}

func TestUIAFinishedSessionIsSpent(t *testing.T) {
	t.Parallel()
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		s := newTestService(t, db, testAuth(), nil)
		createUser(t, s, "alice", alicePassword)
		u := UIA{Flows: [][]string{{StagePassword}}, Localpart: "alice", Request: reqPassword}
		sess := startUIA(t, s, u)
		u.Auth = passwordAuth(sess, "alice", alicePassword)
		if _, err := s.InteractiveAuth(context.Background(), u); err != nil {
			t.Fatal(err)
		}
		// A completed session cannot authorise a second operation.
		u.Auth = stageAuth(sess, "")
		_, err := s.InteractiveAuth(context.Background(), u)
		wantErr(t, err, http.StatusUnauthorized, "M_UNKNOWN")
	})
}

func TestUIABadAuthDict(t *testing.T) {
	t.Parallel()
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		s := newTestService(t, db, testAuth(), nil)
		_, err := s.InteractiveAuth(context.Background(), UIA{Flows: [][]string{{StagePassword}}, Request: reqPassword,
			Auth: json.RawMessage(`"not an object"`)})
		wantErr(t, err, http.StatusBadRequest, "M_BAD_JSON")
	})
}
