package clientapi

import (
	"encoding/json"
	"net/http"

	"github.com/gorilla/mux"

	"github.com/weft-chat/weft/e2ee"
	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/userapi"
)

// backupRoutes registers server-side key backup (/room_keys).
func (k *keyHandlers) backupRoutes(r *mux.Router) {
	a := k.API
	handle(r, "/room_keys/version", a.authedJSON(k.createBackup), http.MethodPost)
	handle(r, "/room_keys/version", a.authedJSON(k.getBackup), http.MethodGet)
	handle(r, "/room_keys/version/{version}", a.authedJSON(k.getBackup), http.MethodGet)
	handle(r, "/room_keys/version/{version}", a.authedJSON(k.updateBackup), http.MethodPut)
	handle(r, "/room_keys/version/{version}", a.authedJSON(k.deleteBackup), http.MethodDelete)
	for _, p := range []string{"/room_keys/keys", "/room_keys/keys/{roomId}", "/room_keys/keys/{roomId}/{sessionId}"} {
		handle(r, p, a.authedJSON(k.putBackupKeys), http.MethodPut)
		handle(r, p, a.authedJSON(k.getBackupKeys), http.MethodGet)
		handle(r, p, a.authedJSON(k.deleteBackupKeys), http.MethodDelete)
	}
}

type backupVersionBody struct {
	Algorithm string          `json:"algorithm"`
	AuthData  json.RawMessage `json:"auth_data"`
	Version   string          `json:"version"`
}

func (k *keyHandlers) createBackup(r *http.Request, dev *userapi.Device) (any, error) {
	var req backupVersionBody
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	v, err := k.keys.CreateBackup(r.Context(), dev.Localpart, req.Algorithm, req.AuthData)
	if err != nil {
		return nil, err
	}
	return map[string]string{"version": v}, nil
}

// versionVar is the {version} path variable, "" on /room_keys/version.
func versionVar(r *http.Request) (string, error) {
	if _, ok := mux.Vars(r)["version"]; !ok {
		return "", nil
	}
	return pathVar(r, "version")
}

func (k *keyHandlers) getBackup(r *http.Request, dev *userapi.Device) (any, error) {
	v, err := versionVar(r)
	if err != nil {
		return nil, err
	}
	return k.keys.Backup(r.Context(), dev.Localpart, v)
}

func (k *keyHandlers) updateBackup(r *http.Request, dev *userapi.Device) (any, error) {
	v, err := versionVar(r)
	if err != nil {
		return nil, err
	}
	var req backupVersionBody
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	if err := k.keys.UpdateBackup(r.Context(), dev.Localpart, v, req.Algorithm, req.Version, req.AuthData); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

func (k *keyHandlers) deleteBackup(r *http.Request, dev *userapi.Device) (any, error) {
	v, err := versionVar(r)
	if err != nil {
		return nil, err
	}
	if err := k.keys.DeleteBackup(r.Context(), dev.Localpart, v); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// backupPath reads the optional {roomId} and {sessionId} path variables.
func backupPath(r *http.Request) (roomID, sessionID string, err error) {
	vars := mux.Vars(r)
	if _, ok := vars["roomId"]; ok {
		if roomID, err = pathVar(r, "roomId"); err != nil {
			return "", "", err
		}
	}
	if _, ok := vars["sessionId"]; ok {
		if sessionID, err = pathVar(r, "sessionId"); err != nil {
			return "", "", err
		}
	}
	return roomID, sessionID, nil
}

// putBackupKeys takes the body shape of its path: {rooms: {...}} for all
// keys, {sessions: {...}} for a room, one KeyBackupData for a session.
func (k *keyHandlers) putBackupKeys(r *http.Request, dev *userapi.Device) (any, error) {
	roomID, sessionID, err := backupPath(r)
	if err != nil {
		return nil, err
	}
	keys := map[string]map[string]e2ee.KeyBackupData{}
	switch {
	case sessionID != "":
		var one e2ee.KeyBackupData
		if err := mxhttp.ReadJSON(r, &one); err != nil {
			return nil, err
		}
		keys[roomID] = map[string]e2ee.KeyBackupData{sessionID: one}
	case roomID != "":
		var room struct {
			Sessions map[string]e2ee.KeyBackupData `json:"sessions"`
		}
		if err := mxhttp.ReadJSON(r, &room); err != nil {
			return nil, err
		}
		if room.Sessions == nil {
			return nil, mxhttp.MissingParam("sessions is required")
		}
		keys[roomID] = room.Sessions
	default:
		var all struct {
			Rooms map[string]struct {
				Sessions map[string]e2ee.KeyBackupData `json:"sessions"`
			} `json:"rooms"`
		}
		if err := mxhttp.ReadJSON(r, &all); err != nil {
			return nil, err
		}
		if all.Rooms == nil {
			return nil, mxhttp.MissingParam("rooms is required")
		}
		for id, room := range all.Rooms {
			keys[id] = room.Sessions
		}
	}
	return k.keys.PutBackupKeys(r.Context(), dev.Localpart, r.URL.Query().Get("version"), keys)
}

type keyBackupJSON struct {
	FirstMessageIndex int64           `json:"first_message_index"`
	ForwardedCount    int64           `json:"forwarded_count"`
	IsVerified        bool            `json:"is_verified"`
	SessionData       json.RawMessage `json:"session_data"`
}

func toKeyBackupJSON(s sql.BackupSession) keyBackupJSON {
	return keyBackupJSON{FirstMessageIndex: s.FirstMessageIndex, ForwardedCount: s.ForwardedCount, IsVerified: s.IsVerified, SessionData: s.SessionData}
}

// getBackupKeys answers in the shape of its path, like putBackupKeys; an
// empty room is {"sessions": {}}, as in Synapse.
func (k *keyHandlers) getBackupKeys(r *http.Request, dev *userapi.Device) (any, error) {
	roomID, sessionID, err := backupPath(r)
	if err != nil {
		return nil, err
	}
	keys, err := k.keys.BackupKeys(r.Context(), dev.Localpart, r.URL.Query().Get("version"), roomID, sessionID)
	if err != nil {
		return nil, err
	}
	if sessionID != "" {
		return toKeyBackupJSON(keys[0]), nil
	}
	type roomKeys struct {
		Sessions map[string]keyBackupJSON `json:"sessions"`
	}
	rooms := map[string]roomKeys{}
	for _, s := range keys {
		if rooms[s.RoomID].Sessions == nil {
			rooms[s.RoomID] = roomKeys{Sessions: map[string]keyBackupJSON{}}
		}
		rooms[s.RoomID].Sessions[s.SessionID] = toKeyBackupJSON(s)
	}
	if roomID != "" {
		if _, ok := rooms[roomID]; !ok {
			return roomKeys{Sessions: map[string]keyBackupJSON{}}, nil
		}
		return rooms[roomID], nil
	}
	return map[string]any{"rooms": rooms}, nil
}

func (k *keyHandlers) deleteBackupKeys(r *http.Request, dev *userapi.Device) (any, error) {
	roomID, sessionID, err := backupPath(r)
	if err != nil {
		return nil, err
	}
	return k.keys.DeleteBackupKeys(r.Context(), dev.Localpart, r.URL.Query().Get("version"), roomID, sessionID)
}
