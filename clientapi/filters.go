package clientapi

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/syncapi/filter"
	"github.com/weft-chat/weft/userapi"
)

func (a *API) filterRoutes(r *mux.Router) {
	// Guests may use filters: they sync too (Synapse allows them here).
	handle(r, "/user/{userId}/filter", a.authedJSON(a.createFilter), http.MethodPost)
	handle(r, "/user/{userId}/filter/{filterId}", a.authedJSON(a.getFilter), http.MethodGet)
}

type createFilterResponse struct {
	FilterID string `json:"filter_id"`
}

// createFilter is POST /user/{userId}/filter. The filter is kept as the
// canonical JSON of what the client sent, unknown keys included, so a GET
// returns it as given; the id is a decimal number, which never starts with
// the '{' that marks an inline filter.
func (a *API) createFilter(r *http.Request, dev *userapi.Device) (any, error) {
	if err := ownFilterUser(r, dev); err != nil {
		return nil, err
	}
	body, err := readObjectBody(r)
	if err != nil {
		return nil, err
	}
	if _, err := filter.Parse(body); err != nil {
		return nil, err
	}
	canonical, err := gomatrixserverlib.CanonicalJSON(body)
	if err != nil {
		return nil, mxhttp.BadJSON("The filter is not valid JSON: %v", err)
	}
	id, err := a.db.CreateFilter(r.Context(), dev.Localpart, canonical)
	if err != nil {
		return nil, mxhttp.Internal(err)
	}
	return createFilterResponse{FilterID: strconv.FormatInt(id, 10)}, nil
}

// getFilter is GET /user/{userId}/filter/{filterId}: 404 M_NOT_FOUND for an
// id the user never received, a number or not (filter.yaml: "Unknown
// filter").
func (a *API) getFilter(r *http.Request, dev *userapi.Device) (any, error) {
	if err := ownFilterUser(r, dev); err != nil {
		return nil, err
	}
	raw, err := pathVar(r, "filterId")
	if err != nil {
		return nil, err
	}
	id, ok := parseFilterID(raw)
	if !ok {
		return nil, mxhttp.NotFound("No such filter")
	}
	f, err := a.db.Filter(r.Context(), dev.Localpart, id)
	if errors.Is(err, sql.ErrNotFound) {
		return nil, mxhttp.NotFound("No such filter")
	}
	if err != nil {
		return nil, mxhttp.Internal(err)
	}
	return json.RawMessage(f), nil
}

// ownFilterUser is 403 M_FORBIDDEN unless the path names the caller.
func ownFilterUser(r *http.Request, dev *userapi.Device) error {
	userID, err := pathVar(r, "userId")
	if err != nil {
		return err
	}
	if userID != dev.UserID {
		return mxhttp.Forbidden("Cannot use the filters of other users")
	}
	return nil
}

// parseFilterID accepts the ids createFilter hands out: plain decimal
// digits (no sign), within int64.
func parseFilterID(s string) (int64, bool) {
	if s == "" {
		return 0, false
	}
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	id, err := strconv.ParseInt(s, 10, 64)
	return id, err == nil
}
