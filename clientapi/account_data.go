package clientapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/userapi"
)

// serverManagedAccountData are the types clients may read but not set
// through the account data API (spec: Client Config, server behaviour):
// m.fully_read goes through /read_markers, m.push_rules through /pushrules.
var serverManagedAccountData = map[string]bool{"m.fully_read": true, "m.push_rules": true}

// maxAccountDataIDBytes bounds room ids and account data types, like the spec's limit
// on ids and event types: 255 bytes (and an index entry PostgreSQL can hold).
const maxAccountDataIDBytes = 255

func (a *API) accountDataRoutes(r *mux.Router) {
	handle(r, "/user/{userId}/account_data/{type}", a.authedJSON(a.getAccountData), http.MethodGet)
	handle(r, "/user/{userId}/account_data/{type}", a.authedJSON(a.putAccountData), http.MethodPut)
	handle(r, "/user/{userId}/rooms/{roomId}/account_data/{type}", a.authedJSON(a.getAccountData), http.MethodGet)
	handle(r, "/user/{userId}/rooms/{roomId}/account_data/{type}", a.authedJSON(a.putAccountData), http.MethodPut)
}

// getAccountData is GET of global or room account data: the content as
// stored, 404 M_NOT_FOUND when the type was never set. m.push_rules is
// the user's current push rules, which live with the push rules.
func (a *API) getAccountData(r *http.Request, dev *userapi.Device) (any, error) {
	roomID, typ, err := accountDataTarget(r, dev)
	if err != nil {
		return nil, err
	}
	if roomID == "" && typ == "m.push_rules" {
		return a.getPushRules(r, dev)
	}
	content, err := a.db.AccountDataContent(r.Context(), dev.Localpart, roomID, typ)
	if errors.Is(err, sql.ErrNotFound) {
		if roomID != "" {
			return nil, mxhttp.NotFound("No account data of type %q for this room", typ)
		}
		return nil, mxhttp.NotFound("No account data of type %q", typ)
	}
	if err != nil {
		return nil, mxhttp.Internal(err)
	}
	return json.RawMessage(content), nil
}

// putAccountData is PUT of global or room account data. Each write takes the
// next position of the account data stream, which /sync reads.
func (a *API) putAccountData(r *http.Request, dev *userapi.Device) (any, error) {
	roomID, typ, err := accountDataTarget(r, dev)
	if err != nil {
		return nil, err
	}
	if serverManagedAccountData[typ] {
		// The spec's status and errcode for this case: 405 M_BAD_JSON.
		return nil, mxhttp.Errorf(http.StatusMethodNotAllowed, "M_BAD_JSON", "Cannot set %s through this API", typ)
	}
	content, err := readObjectBody(r)
	if err != nil {
		return nil, err
	}
	if _, err := a.db.PutAccountData(r.Context(), dev.Localpart, roomID, typ, content); err != nil {
		return nil, mxhttp.Internal(err)
	}
	a.wake.Users(dev.UserID)
	return struct{}{}, nil
}

// accountDataTarget checks the path: the caller's own user id (403
// M_FORBIDDEN otherwise; guests get 403 M_GUEST_ACCESS_FORBIDDEN, as in
// Synapse) and, for room data, a valid room id (400 M_INVALID_PARAM). The
// room id is empty for global data.
func accountDataTarget(r *http.Request, dev *userapi.Device) (roomID, typ string, err error) {
	userID, err := pathVar(r, "userId")
	if err != nil {
		return "", "", err
	}
	if userID != dev.UserID {
		return "", "", mxhttp.Forbidden("Cannot access the account data of other users")
	}
	if err := forbidGuest(dev); err != nil {
		return "", "", err
	}
	if _, ok := mux.Vars(r)["roomId"]; ok {
		if roomID, err = pathVar(r, "roomId"); err != nil {
			return "", "", err
		}
		if _, err := spec.NewRoomID(roomID); err != nil || len(roomID) > maxAccountDataIDBytes {
			return "", "", mxhttp.InvalidParam("%q is not a valid room id", roomID)
		}
	}
	if typ, err = pathVar(r, "type"); err != nil {
		return "", "", err
	}
	if len(typ) > maxAccountDataIDBytes {
		return "", "", mxhttp.InvalidParam("Account data types are at most %d bytes", maxAccountDataIDBytes)
	}
	return roomID, typ, nil
}

// readObjectBody reads a body that must be a JSON object (400 M_NOT_JSON,
// M_BAD_JSON, 413 M_TOO_LARGE otherwise) and returns it compacted, for
// endpoints that store what the client sent.
func readObjectBody(r *http.Request) ([]byte, error) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, mxhttp.TooLarge("Request body is larger than %d bytes", tooBig.Limit)
		}
		return nil, mxhttp.BadJSON("Could not read the request body")
	}
	var obj map[string]json.RawMessage
	if err := mxhttp.DecodeJSON(body, &obj); err != nil {
		return nil, err
	}
	return compactJSON(body)
}

// compactJSON strips insignificant whitespace from valid JSON.
func compactJSON(raw []byte) (json.RawMessage, error) {
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
