package clientapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"regexp"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/userapi"
)

// Profile limits of spec v1.16 (profile.yaml): a key of at most 255 bytes,
// a whole profile under 64 KiB.
const (
	maxProfileKeyBytes = 255
	maxProfileBytes    = 64 * 1024
)

// profileKeyPattern is profile.yaml's keyName pattern, widened by '-',
// which the Common Namespaced Identifier Grammar it cites allows: the
// fields the spec defines, or a namespaced custom key such as
// org.example.job_title.
var profileKeyPattern = regexp.MustCompile(`^(avatar_url|displayname|m\.tz|[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)+)$`)

func (a *API) profileRoutes(r *mux.Router) {
	// Reading a profile needs no access token (profile.yaml lists no
	// security for the GETs); changing one does.
	handle(r, "/profile/{userId}", mxhttp.JSON(a.getProfile), http.MethodGet)
	handle(r, "/profile/{userId}/{keyName}", mxhttp.JSON(a.getProfileField), http.MethodGet)
	handle(r, "/profile/{userId}/{keyName}", a.authedJSON(a.setProfileField), http.MethodPut)
	handle(r, "/profile/{userId}/{keyName}", a.authedJSON(a.deleteProfileField), http.MethodDelete)
}

// getProfile is GET /profile/{userId}: every field, or 404 M_NOT_FOUND when
// the user has none or does not exist (spec and Synapse). A user of
// another server's profile comes from their server.
func (a *API) getProfile(r *http.Request) (any, error) {
	localpart, remote, err := a.profileOwner(r)
	if err != nil {
		return nil, err
	}
	if remote != nil {
		return a.remoteProfile(r.Context(), *remote, "")
	}
	fields, err := a.db.ProfileFields(r.Context(), localpart)
	if err != nil {
		return nil, mxhttp.Internal(err)
	}
	if len(fields) == 0 {
		return nil, mxhttp.NotFound("Profile not found")
	}
	return fields, nil
}

// getProfileField is GET /profile/{userId}/{keyName}: {keyName: value}.
func (a *API) getProfileField(r *http.Request) (any, error) {
	key, err := profileKey(r)
	if err != nil {
		return nil, err
	}
	localpart, remote, err := a.profileOwner(r)
	if err != nil {
		return nil, err
	}
	if remote != nil {
		return a.remoteProfile(r.Context(), *remote, key)
	}
	value, err := a.db.ProfileField(r.Context(), localpart, key)
	if errors.Is(err, sql.ErrNotFound) {
		return nil, mxhttp.NotFound("The user has no profile field %q", key)
	}
	if err != nil {
		return nil, mxhttp.Internal(err)
	}
	return map[string]json.RawMessage{key: value}, nil
}

// RemoteProfiles asks other servers for their users' profiles.
type RemoteProfiles interface {
	// Profile returns every field of the user's profile, or only field
	// when it is not "". Its errors are the client API's answers (404
	// M_NOT_FOUND, 502 when the server cannot be reached).
	Profile(ctx context.Context, userID spec.UserID, field string) (map[string]json.RawMessage, error)
}

// WithRemoteProfiles reads the profiles of other servers' users through
// f; without it they are 404 M_NOT_FOUND.
func WithRemoteProfiles(f RemoteProfiles) Option {
	return func(a *API) { a.remoteProfiles = f }
}

// remoteProfile asks the user's server for their profile, or one field.
func (a *API) remoteProfile(ctx context.Context, userID spec.UserID, field string) (any, error) {
	if a.remoteProfiles == nil {
		return nil, mxhttp.NotFound("Profiles of users on other servers need federation, which is not available")
	}
	return a.remoteProfiles.Profile(ctx, userID, field)
}

// setProfileField is PUT /profile/{userId}/{keyName} with {keyName: value}.
// Keys other than keyName in the body are ignored, as Synapse does.
// A new displayname or avatar_url also goes out as an updated member event
// in every room the user is joined to, after the commit.
//
// TODO(presence): and as a presence update, once presence exists.
func (a *API) setProfileField(r *http.Request, dev *userapi.Device) (any, error) {
	key, err := a.ownProfileKey(r, dev)
	if err != nil {
		return nil, err
	}
	var body map[string]json.RawMessage
	if err := mxhttp.ReadJSON(r, &body); err != nil {
		return nil, err
	}
	value, ok := body[key]
	if !ok {
		return nil, mxhttp.MissingParam("The request body has no %q property", key)
	}
	// Custom values may be any JSON, null included (stored, not a deletion).
	compact, err := compactJSON(value)
	if err != nil {
		return nil, mxhttp.BadJSON("Bad value for %s", key)
	}
	switch key {
	case "displayname", "avatar_url", "m.tz":
		// The spec types these as strings. Like Synapse, avatar_url is not
		// checked for the mxc:// scheme: older clients clear it with "".
		if len(compact) == 0 || compact[0] != '"' {
			return nil, mxhttp.BadJSON("%s must be a string", key)
		}
	}
	ctx := r.Context()
	err = a.db.WithTx(ctx, func(q *sql.Queries) error {
		if err := q.LockProfile(ctx, dev.Localpart); err != nil {
			return err
		}
		fields, err := q.ProfileFields(ctx, dev.Localpart)
		if err != nil {
			return err
		}
		fields[key] = compact
		whole, err := json.Marshal(fields)
		if err != nil {
			return err
		}
		if len(whole) >= maxProfileBytes {
			return mxhttp.Errorf(http.StatusBadRequest, "M_PROFILE_TOO_LARGE",
				"The profile would be %d bytes; it must stay under %d", len(whole), maxProfileBytes)
		}
		return q.SetProfileField(ctx, dev.Localpart, key, compact)
	})
	if err != nil {
		return nil, profileWriteError(err)
	}
	a.propagateProfile(ctx, dev, key, compact)
	return struct{}{}, nil
}

// deleteProfileField is DELETE /profile/{userId}/{keyName}: 200 whether or
// not the field was set.
func (a *API) deleteProfileField(r *http.Request, dev *userapi.Device) (any, error) {
	key, err := a.ownProfileKey(r, dev)
	if err != nil {
		return nil, err
	}
	if err := a.db.DeleteProfileField(r.Context(), dev.Localpart, key); err != nil {
		return nil, mxhttp.Internal(err)
	}
	a.propagateProfile(r.Context(), dev, key, nil)
	return struct{}{}, nil
}

// profileOwner resolves the path's user for reading: the localpart of a
// local user, or the id of another server's; 400 M_INVALID_PARAM for a
// malformed id.
func (a *API) profileOwner(r *http.Request) (string, *spec.UserID, error) {
	userID, err := pathVar(r, "userId")
	if err != nil {
		return "", nil, err
	}
	localpart, err := a.users.LocalpartOf(userID)
	if userapi.IsRemoteUser(err) {
		if remote, err := spec.NewUserID(userID, true); err == nil {
			return "", remote, nil
		}
	}
	if err != nil {
		return "", nil, mxhttp.InvalidParam("%q is not a valid user id", userID)
	}
	return localpart, nil, nil
}

// ownProfileKey checks a change to a profile: only the user themself may
// make it (403 M_FORBIDDEN), a guest only to displayname (spec: guest
// access), and the key must be valid.
func (a *API) ownProfileKey(r *http.Request, dev *userapi.Device) (string, error) {
	userID, err := pathVar(r, "userId")
	if err != nil {
		return "", err
	}
	if userID != dev.UserID {
		return "", mxhttp.Forbidden("You may only change your own profile")
	}
	key, err := profileKey(r)
	if err != nil {
		return "", err
	}
	if key != "displayname" {
		if err := forbidGuest(dev); err != nil {
			return "", err
		}
	}
	return key, nil
}

// profileKey is the path's keyName: 400 M_KEY_TOO_LARGE past 255 bytes,
// 400 M_INVALID_PARAM when it breaks the key grammar.
func profileKey(r *http.Request) (string, error) {
	key, err := pathVar(r, "keyName")
	if err != nil {
		return "", err
	}
	if len(key) > maxProfileKeyBytes {
		return "", mxhttp.Errorf(http.StatusBadRequest, "M_KEY_TOO_LARGE", "Profile keys are at most %d bytes", maxProfileKeyBytes)
	}
	if !profileKeyPattern.MatchString(key) {
		return "", mxhttp.InvalidParam("Invalid profile key %q: use displayname, avatar_url, m.tz or a namespaced key such as com.example.field", key)
	}
	return key, nil
}

// profileWriteError maps a failed profile transaction: Matrix errors pass
// through; a missing account (deactivated and purged under a live token)
// is 404.
func profileWriteError(err error) error {
	var me *mxhttp.Error
	if errors.As(err, &me) {
		return me
	}
	if errors.Is(err, sql.ErrNotFound) {
		return mxhttp.NotFound("No such user")
	}
	return mxhttp.Internal(err)
}
