package userapi

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"slices"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
)

// The auth stages Weft offers.
const (
	StageDummy             = "m.login.dummy"
	StagePassword          = "m.login.password"
	StageRegistrationToken = "m.login.registration_token"
)

// UIA describes one user-interactive auth check.
type UIA struct {
	// Auth is the request body's "auth" dict (nil or empty if absent).
	Auth json.RawMessage
	// Flows are the stage sequences any one of which completes the check.
	Flows [][]string
	// Params are the per-stage parameters sent to the client.
	Params map[string]any
	// Localpart is the authenticated user whose password m.login.password
	// must prove; empty on registration.
	Localpart string
	// Request binds the session to one operation (method and path), so a
	// session started for one action cannot authorise another.
	Request string
}

// RequestOf names an HTTP request for UIA session binding.
func RequestOf(r *http.Request) string { return r.Method + " " + r.URL.Path }

type authDict struct {
	Type       string          `json:"type"`
	Session    string          `json:"session"`
	Identifier json.RawMessage `json:"identifier"`
	User       string          `json:"user"`
	Password   string          `json:"password"`
	Token      string          `json:"token"`
}

// Results is what completed stages found out, e.g. the registration token.
type Results map[string]string

// InteractiveAuth runs user-interactive auth. It returns the results when a
// flow is complete; otherwise a 401 whose body lists the flows, params,
// session and completed stages (with errcode and error when a stage
// failed), exactly as the spec's UIA section shows. A finished session is
// deleted, so it cannot authorise a second operation.
func (s *Service) InteractiveAuth(ctx context.Context, u UIA) (Results, error) {
	var auth authDict
	if len(u.Auth) > 0 && string(u.Auth) != "null" {
		if err := json.Unmarshal(u.Auth, &auth); err != nil {
			return nil, mxhttp.BadJSON("auth must be an object")
		}
	}
	now := s.now()
	sess := sql.UIASession{Request: u.Request, CreatedTS: now.UnixMilli(), Results: map[string]string{}}
	if auth.Session != "" {
		loaded, err := s.db.UIASession(ctx, auth.Session)
		if errors.Is(err, sql.ErrNotFound) || err == nil && now.UnixMilli()-loaded.CreatedTS > s.cfg.UIASessionExpiry.Milliseconds() {
			return nil, s.challenge(u, sql.UIASession{}, mxhttp.Errorf(400, "M_UNKNOWN", "Unknown or expired UIA session"))
		}
		if err != nil {
			return nil, internal("load uia session", err)
		}
		if loaded.Request != u.Request {
			return nil, mxhttp.Forbidden("Requested operation has changed during the UI authentication session")
		}
		sess = loaded
	} else {
		sess.ID = newSessionID()
		if err := s.db.CreateUIASession(ctx, sess); err != nil {
			return nil, internal("create uia session", err)
		}
	}
	if auth.Type == "" {
		if complete(u.Flows, sess.Completed) {
			return s.finish(ctx, sess)
		}
		return nil, s.challenge(u, sess, nil)
	}
	if !slices.Contains(sess.Completed, auth.Type) {
		if !nextStageAllowed(u.Flows, sess.Completed, auth.Type) {
			return nil, s.challenge(u, sess, mxhttp.Errorf(400, "M_UNRECOGNIZED", "Stage %s is not the next stage of any flow", auth.Type))
		}
		if stageErr := s.runStage(ctx, u, auth, &sess); stageErr != nil {
			var me *mxhttp.Error
			if !errors.As(stageErr, &me) || me.Status >= 500 {
				return nil, stageErr
			}
			return nil, s.challenge(u, sess, me)
		}
		sess.Completed = append(sess.Completed, auth.Type)
		if err := s.db.UpdateUIASession(ctx, sess); err != nil {
			return nil, internal("update uia session", err)
		}
	}
	if complete(u.Flows, sess.Completed) {
		return s.finish(ctx, sess)
	}
	return nil, s.challenge(u, sess, nil)
}

func (s *Service) finish(ctx context.Context, sess sql.UIASession) (Results, error) {
	if err := s.db.DeleteUIASession(ctx, sess.ID); err != nil {
		return nil, internal("delete uia session", err)
	}
	return Results(sess.Results), nil
}

// runStage checks one stage's credentials.
func (s *Service) runStage(ctx context.Context, u UIA, auth authDict, sess *sql.UIASession) error {
	switch auth.Type {
	case StageDummy:
		return nil
	case StagePassword:
		localpart, err := s.LocalpartFromIdentifier(auth.Identifier, auth.User)
		if err != nil {
			return err
		}
		if u.Localpart != "" && localpart != u.Localpart {
			return mxhttp.Forbidden("Password auth must be for the logged-in user")
		}
		if _, err := s.CheckPassword(ctx, localpart, auth.Password); err != nil {
			return err
		}
		sess.Results["user"] = localpart
		return nil
	case StageRegistrationToken:
		ok, err := s.RegistrationTokenUsable(ctx, auth.Token)
		if err != nil {
			return err
		}
		if !ok {
			return mxhttp.Forbidden("Invalid registration token")
		}
		sess.Results[StageRegistrationToken] = auth.Token
		return nil
	}
	return mxhttp.Errorf(400, "M_UNRECOGNIZED", "Unknown auth stage %s", auth.Type)
}

// RegistrationTokenUsable reports whether a registration token exists, has
// uses left and has not expired.
func (s *Service) RegistrationTokenUsable(ctx context.Context, token string) (bool, error) {
	if token == "" {
		return false, nil
	}
	rt, err := s.db.RegistrationToken(ctx, token)
	if errors.Is(err, sql.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, internal("load registration token", err)
	}
	return rt.Usable(s.now().UnixMilli()), nil
}

// challenge builds the 401 UIA response, carrying stageErr's errcode and
// message when a stage failed.
func (s *Service) challenge(u UIA, sess sql.UIASession, stageErr *mxhttp.Error) error {
	flows := make([]map[string][]string, len(u.Flows))
	for i, f := range u.Flows {
		flows[i] = map[string][]string{"stages": f}
	}
	params := u.Params
	if params == nil {
		params = map[string]any{}
	}
	e := &mxhttp.Error{Status: http.StatusUnauthorized, Extra: map[string]any{"flows": flows, "params": params}}
	if sess.ID != "" {
		e.Extra["session"] = sess.ID
	}
	if len(sess.Completed) > 0 {
		e.Extra["completed"] = sess.Completed
	}
	// Without a failed stage the body carries no errcode: clients show an
	// errcode to the user as a failure.
	if stageErr != nil {
		e.Code, e.Message = stageErr.Code, stageErr.Message
	}
	return e
}

// complete reports whether the completed stages finish some flow.
func complete(flows [][]string, done []string) bool {
	for _, f := range flows {
		if len(done) >= len(f) && slices.Equal(f, done[:len(f)]) {
			return true
		}
	}
	return false
}

// nextStageAllowed reports whether stage is the next stage of some flow
// that the completed stages follow, in order.
func nextStageAllowed(flows [][]string, done []string, stage string) bool {
	for _, f := range flows {
		if len(f) > len(done) && slices.Equal(f[:len(done)], done) && f[len(done)] == stage {
			return true
		}
	}
	return false
}

func newSessionID() string {
	b := make([]byte, 18)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
