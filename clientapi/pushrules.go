package clientapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/push"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/userapi"
)

// pushRuleRoutes serves the push rules API (spec: "Push Rules: API"). Only
// the global scope exists; other scopes answer 404 M_UNRECOGNIZED.
func (a *API) pushRuleRoutes(r *mux.Router) {
	handle(r, "/pushrules/", a.pushAuthed(a.getPushRules), http.MethodGet)
	handle(r, "/pushrules/global/", a.pushAuthed(a.getGlobalPushRules), http.MethodGet)
	handle(r, "/pushrules/global/{kind}/", a.pushAuthed(a.getPushRulesOfKind), http.MethodGet)
	handle(r, "/pushrules/global/{kind}/{ruleId}", a.pushAuthed(a.getPushRule), http.MethodGet)
	handle(r, "/pushrules/global/{kind}/{ruleId}", a.pushAuthed(a.putPushRule), http.MethodPut)
	handle(r, "/pushrules/global/{kind}/{ruleId}", a.pushAuthed(a.deletePushRule), http.MethodDelete)
	handle(r, "/pushrules/global/{kind}/{ruleId}/enabled", a.pushAuthed(a.getPushRuleEnabled), http.MethodGet)
	handle(r, "/pushrules/global/{kind}/{ruleId}/enabled", a.pushAuthed(a.putPushRuleEnabled), http.MethodPut)
	handle(r, "/pushrules/global/{kind}/{ruleId}/actions", a.pushAuthed(a.getPushRuleActions), http.MethodGet)
	handle(r, "/pushrules/global/{kind}/{ruleId}/actions", a.pushAuthed(a.putPushRuleActions), http.MethodPut)
}

// pushAuthed is authedJSON for the push rules endpoints, which guests may
// not use (as in Synapse: 403 M_GUEST_ACCESS_FORBIDDEN).
func (a *API) pushAuthed(f func(r *http.Request, dev *userapi.Device) (any, error)) mxhttp.Handler {
	return a.authedJSON(func(r *http.Request, dev *userapi.Device) (any, error) {
		if err := forbidGuest(dev); err != nil {
			return nil, err
		}
		return f(r, dev)
	})
}

// pushRules is the body of GET /pushrules/ and of the m.push_rules account
// data event.
type pushRules struct {
	Global push.Ruleset `json:"global"`
}

func (a *API) getPushRules(r *http.Request, dev *userapi.Device) (any, error) {
	rs, err := a.ruleset(r.Context(), &a.db.Queries, dev)
	if err != nil {
		return nil, err
	}
	return pushRules{Global: rs}, nil
}

func (a *API) getGlobalPushRules(r *http.Request, dev *userapi.Device) (any, error) {
	return a.ruleset(r.Context(), &a.db.Queries, dev)
}

// getPushRulesOfKind lists one kind's rules, as Synapse does.
func (a *API) getPushRulesOfKind(r *http.Request, dev *userapi.Device) (any, error) {
	kind, err := pushKind(r)
	if err != nil {
		return nil, err
	}
	rs, err := a.ruleset(r.Context(), &a.db.Queries, dev)
	if err != nil {
		return nil, err
	}
	return rs.Of(kind), nil
}

func (a *API) getPushRule(r *http.Request, dev *userapi.Device) (any, error) {
	rule, _, err := a.findPushRule(r, dev)
	return rule, err
}

func (a *API) getPushRuleEnabled(r *http.Request, dev *userapi.Device) (any, error) {
	rule, _, err := a.findPushRule(r, dev)
	if err != nil {
		return nil, err
	}
	return map[string]bool{"enabled": rule.Enabled}, nil
}

func (a *API) getPushRuleActions(r *http.Request, dev *userapi.Device) (any, error) {
	rule, _, err := a.findPushRule(r, dev)
	if err != nil {
		return nil, err
	}
	return map[string]json.RawMessage{"actions": rule.Actions}, nil
}

// putPushRule creates or replaces one of the user's rules. Server-default
// rules cannot be created or redefined (only their enabled state and
// actions change, through their own endpoints): 400 M_INVALID_PARAM, as for
// rule ids with slashes. A rule id naming no room (room rules) or user
// (sender rules) is refused too, since the rule could never match.
func (a *API) putPushRule(r *http.Request, dev *userapi.Device) (any, error) {
	kind, ruleID, err := pushRulePath(r)
	if err != nil {
		return nil, err
	}
	if err := push.CheckRuleID(ruleID); err != nil {
		return nil, mxhttp.InvalidParam("Invalid rule_id: %v", err)
	}
	switch kind {
	case push.Room:
		if _, err := spec.NewRoomID(ruleID); err != nil {
			return nil, mxhttp.InvalidParam("The rule_id of a room rule must be a room id")
		}
	case push.Sender:
		if _, err := spec.NewUserID(ruleID, false); err != nil {
			return nil, mxhttp.InvalidParam("The rule_id of a sender rule must be a user id")
		}
	}
	var body struct {
		Actions    json.RawMessage `json:"actions"`
		Conditions json.RawMessage `json:"conditions"`
		Pattern    *string         `json:"pattern"`
	}
	if err := mxhttp.ReadJSON(r, &body); err != nil {
		return nil, err
	}
	rule := sql.PushRule{Kind: string(kind), RuleID: ruleID}
	if rule.Actions, err = pushActions(body.Actions); err != nil {
		return nil, err
	}
	switch kind {
	case push.Override, push.Underride:
		rule.Conditions = []byte("[]")
		if len(body.Conditions) > 0 && string(body.Conditions) != "null" {
			if rule.Conditions, err = push.CheckConditions(body.Conditions); err != nil {
				return nil, mxhttp.BadJSON("Invalid conditions: %v", err)
			}
		}
	case push.Content:
		if body.Pattern == nil {
			return nil, mxhttp.MissingParam("A content rule needs a pattern")
		}
		rule.Pattern = body.Pattern
	}
	q := r.URL.Query()
	before, after := q.Get("before"), q.Get("after")
	for _, anchor := range []string{before, after} {
		if push.IsServerDefault(anchor) {
			return nil, mxhttp.InvalidParam("Rules cannot be placed relative to server-default rules")
		}
	}
	err = a.changePushRules(r.Context(), dev, func(q *sql.Queries) error {
		return q.PutPushRule(r.Context(), dev.UserID, rule, before, after)
	})
	if errors.Is(err, sql.ErrPushRuleAnchor) {
		// The spec's example of this 400 has M_UNKNOWN.
		return nil, mxhttp.Errorf(http.StatusBadRequest, "M_UNKNOWN", "before/after rule not found")
	}
	if err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// deletePushRule deletes one of the user's rules; server-default rules
// cannot be deleted (400 M_INVALID_PARAM; disable them instead).
func (a *API) deletePushRule(r *http.Request, dev *userapi.Device) (any, error) {
	kind, ruleID, err := pushRulePath(r)
	if err != nil {
		return nil, err
	}
	if push.IsServerDefault(ruleID) {
		return nil, mxhttp.InvalidParam("Server-default rules cannot be deleted")
	}
	err = a.changePushRules(r.Context(), dev, func(q *sql.Queries) error {
		return q.DeletePushRule(r.Context(), dev.UserID, string(kind), ruleID)
	})
	if errors.Is(err, sql.ErrNotFound) {
		return nil, mxhttp.NotFound("The push rule was not found")
	}
	if err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

func (a *API) putPushRuleEnabled(r *http.Request, dev *userapi.Device) (any, error) {
	kind, ruleID, err := pushRulePath(r)
	if err != nil {
		return nil, err
	}
	var body struct {
		Enabled *bool `json:"enabled"`
	}
	if err := mxhttp.ReadJSON(r, &body); err != nil {
		return nil, err
	}
	if body.Enabled == nil {
		return nil, mxhttp.MissingParam("enabled is required")
	}
	return a.setPushRuleAttr(r.Context(), dev, kind, ruleID, func(q *sql.Queries, isDefault bool) error {
		if isDefault {
			return q.SetDefaultPushRuleEnabled(r.Context(), dev.UserID, string(kind), ruleID, *body.Enabled)
		}
		return q.SetPushRuleEnabled(r.Context(), dev.UserID, string(kind), ruleID, *body.Enabled)
	})
}

func (a *API) putPushRuleActions(r *http.Request, dev *userapi.Device) (any, error) {
	kind, ruleID, err := pushRulePath(r)
	if err != nil {
		return nil, err
	}
	var body struct {
		Actions json.RawMessage `json:"actions"`
	}
	if err := mxhttp.ReadJSON(r, &body); err != nil {
		return nil, err
	}
	actions, err := pushActions(body.Actions)
	if err != nil {
		return nil, err
	}
	return a.setPushRuleAttr(r.Context(), dev, kind, ruleID, func(q *sql.Queries, isDefault bool) error {
		if isDefault {
			return q.SetDefaultPushRuleActions(r.Context(), dev.UserID, string(kind), ruleID, actions)
		}
		return q.SetPushRuleActions(r.Context(), dev.UserID, string(kind), ruleID, actions)
	})
}

// setPushRuleAttr changes the enabled state or actions of a rule, a
// server-default one or the user's; 404 M_NOT_FOUND for an unknown rule.
func (a *API) setPushRuleAttr(ctx context.Context, dev *userapi.Device, kind push.Kind, ruleID string, set func(q *sql.Queries, isDefault bool) error) (any, error) {
	isDefault := push.IsServerDefault(ruleID)
	if isDefault && !push.IsDefaultRule(kind, ruleID) {
		return nil, mxhttp.NotFound("The push rule was not found")
	}
	err := a.changePushRules(ctx, dev, func(q *sql.Queries) error { return set(q, isDefault) })
	if errors.Is(err, sql.ErrNotFound) {
		return nil, mxhttp.NotFound("The push rule was not found")
	}
	if err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// changePushRules applies a change and, in the same transaction, writes
// the new ruleset as the m.push_rules account data event, which /sync
// sends to the user's clients (spec: "Push Rules: Events").
func (a *API) changePushRules(ctx context.Context, dev *userapi.Device, change func(q *sql.Queries) error) error {
	err := a.db.WithTx(ctx, func(q *sql.Queries) error {
		if err := change(q); err != nil {
			return err
		}
		rs, err := a.ruleset(ctx, q, dev)
		if err != nil {
			return err
		}
		content, err := json.Marshal(pushRules{Global: rs})
		if err != nil {
			return err
		}
		_, err = q.PutAccountData(ctx, dev.Localpart, "", "m.push_rules", content)
		return err
	})
	if err != nil {
		return err
	}
	a.wake.Users(dev.UserID)
	return nil
}

// ruleset is the user's global ruleset.
func (a *API) ruleset(ctx context.Context, q *sql.Queries, dev *userapi.Device) (push.Ruleset, error) {
	rules, settings, err := q.PushRules(ctx, dev.UserID)
	if err != nil {
		return push.Ruleset{}, mxhttp.Internal(err)
	}
	return push.Build(dev.UserID, rules, settings), nil
}

// findPushRule finds the rule the path names; 404 M_NOT_FOUND if none.
func (a *API) findPushRule(r *http.Request, dev *userapi.Device) (push.Rule, push.Kind, error) {
	kind, ruleID, err := pushRulePath(r)
	if err != nil {
		return push.Rule{}, "", err
	}
	rs, err := a.ruleset(r.Context(), &a.db.Queries, dev)
	if err != nil {
		return push.Rule{}, "", err
	}
	rule, ok := rs.Find(kind, ruleID)
	if !ok {
		return push.Rule{}, "", mxhttp.NotFound("The push rule was not found")
	}
	return rule, kind, nil
}

// pushKind reads the kind in the path: 400 M_INVALID_PARAM for one the
// spec does not define.
func pushKind(r *http.Request) (push.Kind, error) {
	s, err := pathVar(r, "kind")
	if err != nil {
		return "", err
	}
	kind, ok := push.ParseKind(s)
	if !ok {
		return "", mxhttp.InvalidParam("Unknown push rule kind %q", s)
	}
	return kind, nil
}

// pushRulePath reads the kind and rule id in the path.
func pushRulePath(r *http.Request) (push.Kind, string, error) {
	kind, err := pushKind(r)
	if err != nil {
		return "", "", err
	}
	ruleID, err := pathVar(r, "ruleId")
	if err != nil {
		return "", "", err
	}
	return kind, ruleID, nil
}

// pushActions checks the actions of a request body: 400 M_MISSING_PARAM
// when absent, M_BAD_JSON when not valid actions.
func pushActions(raw json.RawMessage) ([]byte, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, mxhttp.MissingParam("actions is required")
	}
	actions, err := push.NormalizeActions(raw)
	if err != nil {
		return nil, mxhttp.BadJSON("Invalid actions: %v", err)
	}
	return actions, nil
}
