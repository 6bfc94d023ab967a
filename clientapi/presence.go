package clientapi

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/presence"
	"github.com/weft-chat/weft/userapi"
)

// presenceStates are the states a user may set (spec: presence.yaml).
var presenceStates = []string{presence.Online, presence.Unavailable, presence.Offline}

func (a *API) presenceRoutes(r *mux.Router) {
	// Guests may use both routes (spec: Guest access).
	p := a.presence
	handle(r, "/presence/{userId}/status", a.authedJSON(func(r *http.Request, dev *userapi.Device) (any, error) {
		return a.getPresence(r, dev, p)
	}), http.MethodGet)
	handle(r, "/presence/{userId}/status", a.authedJSON(func(r *http.Request, dev *userapi.Device) (any, error) {
		return a.setPresence(r, dev, p)
	}), http.MethodPut)
}

// WithPresenceOptions tunes the presence service of the client API (its
// federation: presence.WithFederation).
func WithPresenceOptions(opts ...presence.Option) Option {
	return func(a *API) { a.presenceOpts = opts }
}

// active records that the user did something (sent an event, started
// typing): their last_active_ago restarts and unavailable turns online
// (spec: Presence, "Last active ago"; Synapse bumps it on the same
// actions). Best effort: the action itself has succeeded already.
func (a *API) active(ctx context.Context, userID string) {
	if !a.cfg.Presence.Enabled {
		return
	}
	if err := a.presence.Active(ctx, userID); err != nil && ctx.Err() == nil {
		a.log.Warn("record presence activity", "user_id", userID, "err", err)
	}
}

// getPresence is GET /presence/{userId}/status: the user's presence, for
// themself and for users who share a joined room with them (Synapse's
// is_visible); 404 M_NOT_FOUND for a local user who does not exist, 403
// M_FORBIDDEN for anyone else. With presence off, everyone is offline,
// as Synapse answers.
func (a *API) getPresence(r *http.Request, dev *userapi.Device, p *presence.Service) (any, error) {
	userID, err := pathVar(r, "userId")
	if err != nil {
		return nil, err
	}
	if _, err := spec.NewUserID(userID, true); err != nil {
		return nil, mxhttp.InvalidParam("%q is not a valid user id", userID)
	}
	if !a.cfg.Presence.Enabled {
		return presence.Content{Presence: presence.Offline}, nil
	}
	ctx := r.Context()
	if userID != dev.UserID {
		if localpart, err := a.users.LocalpartOf(userID); err == nil {
			exists, err := a.db.AccountExists(ctx, localpart)
			if err != nil {
				return nil, err
			}
			if !exists {
				return nil, mxhttp.NotFound("No such user")
			}
		}
		ok, err := p.CanSee(ctx, dev.UserID, userID)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, mxhttp.Forbidden("You are not allowed to see their presence")
		}
	}
	return p.Get(ctx, userID)
}

// setPresence is PUT /presence/{userId}/status with {presence,
// status_msg?}: only for oneself (403 M_FORBIDDEN). As in Synapse, a body
// with other keys or a status_msg that is not a string is refused, and a
// missing status_msg clears the message. With presence off the body is
// checked and nothing is stored (Synapse answers 200 the same way).
func (a *API) setPresence(r *http.Request, dev *userapi.Device, p *presence.Service) (any, error) {
	userID, err := pathVar(r, "userId")
	if err != nil {
		return nil, err
	}
	if userID != dev.UserID {
		return nil, mxhttp.Forbidden("You may only set your own presence")
	}
	var body map[string]json.RawMessage
	if err := mxhttp.ReadJSON(r, &body); err != nil {
		return nil, err
	}
	raw, ok := body["presence"]
	if !ok {
		return nil, mxhttp.MissingParam("The request body has no presence property")
	}
	var state string
	if err := json.Unmarshal(raw, &state); err != nil {
		return nil, mxhttp.BadJSON("presence must be a string")
	}
	if !slices.Contains(presenceStates, state) {
		return nil, mxhttp.InvalidParam(`presence must be "online", "unavailable" or "offline"`)
	}
	var statusMsg string
	if raw, ok := body["status_msg"]; ok {
		if err := json.Unmarshal(raw, &statusMsg); err != nil || string(raw) == "null" {
			return nil, mxhttp.BadJSON("status_msg must be a string")
		}
	}
	for k := range body {
		if k != "presence" && k != "status_msg" {
			return nil, mxhttp.BadJSON("Unknown property %q", k)
		}
	}
	if !a.cfg.Presence.Enabled {
		return struct{}{}, nil
	}
	if err := p.Set(r.Context(), userID, state, statusMsg); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}
