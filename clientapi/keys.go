package clientapi

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/gorilla/mux"

	"github.com/weft-chat/weft/e2ee"
	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/userapi"
)

// keyRoutes registers the end-to-end encryption endpoints (GET
// /keys/changes: KeyChangesRoute).
func (a *API) keyRoutes(r *mux.Router) {
	k := &keyHandlers{API: a, keys: e2ee.New(a.db, a.users.ServerName(), e2ee.WithWake(a.wake), e2ee.WithRemoteKeys(a.remoteKeys),
		e2ee.WithDeviceListResync(a.deviceListResync))}
	handle(r, "/keys/upload", a.authedJSON(k.upload), http.MethodPost)
	handle(r, "/keys/query", a.authedJSON(k.query), http.MethodPost)
	handle(r, "/keys/claim", a.authedJSON(k.claim), http.MethodPost)
	handle(r, "/keys/device_signing/upload", a.authedJSON(k.uploadCrossSigning), http.MethodPost)
	handle(r, "/keys/signatures/upload", a.authedJSON(k.uploadSignatures), http.MethodPost)
	k.backupRoutes(r)
}

// WithRemoteKeys makes /keys/query and /keys/claim ask other servers
// about their users through r.
func WithRemoteKeys(r e2ee.RemoteKeys) Option {
	return func(a *API) { a.remoteKeys = r }
}

// WithDeviceListResync makes /keys/query refetch the stale cached device
// lists of other servers' users it is asked about through r.
func WithDeviceListResync(r e2ee.DeviceListResync) Option {
	return func(a *API) { a.deviceListResync = r }
}

// keyHandlers are the handlers of the key endpoints, over the e2ee service.
type keyHandlers struct {
	*API
	keys *e2ee.Service
}

func callerOf(dev *userapi.Device) e2ee.Caller {
	return e2ee.Caller{UserID: dev.UserID, Localpart: dev.Localpart, DeviceID: dev.DeviceID}
}

func (k *keyHandlers) upload(r *http.Request, dev *userapi.Device) (any, error) {
	var req e2ee.Upload
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	counts, err := k.keys.UploadKeys(r.Context(), callerOf(dev), req)
	if err != nil {
		return nil, err
	}
	return map[string]any{"one_time_key_counts": counts}, nil
}

func (k *keyHandlers) query(r *http.Request, dev *userapi.Device) (any, error) {
	var req struct {
		DeviceKeys map[string][]string `json:"device_keys"`
		Timeout    *int64              `json:"timeout"`
	}
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	if req.DeviceKeys == nil {
		return nil, mxhttp.MissingParam("device_keys is required")
	}
	timeout, err := remoteTimeout(req.Timeout)
	if err != nil {
		return nil, err
	}
	return k.keys.QueryKeysWithin(r.Context(), dev.UserID, req.DeviceKeys, timeout)
}

func (k *keyHandlers) claim(r *http.Request, dev *userapi.Device) (any, error) {
	var req struct {
		OneTimeKeys map[string]map[string]string `json:"one_time_keys"`
		Timeout     *int64                       `json:"timeout"`
	}
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	if req.OneTimeKeys == nil {
		return nil, mxhttp.MissingParam("one_time_keys is required")
	}
	timeout, err := remoteTimeout(req.Timeout)
	if err != nil {
		return nil, err
	}
	return k.keys.ClaimKeysWithin(r.Context(), req.OneTimeKeys, timeout)
}

// maxRemoteTimeout caps the wait for other servers that a client may ask
// for: the federation client gives up on a request after a minute anyway.
const maxRemoteTimeout = time.Minute

// remoteTimeout is the "timeout" of /keys/query and /keys/claim, in
// milliseconds: how long to wait for other servers (spec default 10 s).
func remoteTimeout(ms *int64) (time.Duration, error) {
	if ms == nil {
		return e2ee.DefaultRemoteTimeout, nil
	}
	if *ms < 0 {
		return 0, mxhttp.InvalidParam("timeout must not be negative")
	}
	if *ms > maxRemoteTimeout.Milliseconds() {
		return maxRemoteTimeout, nil
	}
	return time.Duration(*ms) * time.Millisecond, nil
}

// uploadCrossSigning is POST /keys/device_signing/upload: the first upload
// needs no user-interactive auth (MSC3967, in the spec since v1.11);
// replacing keys needs the caller's password.
func (k *keyHandlers) uploadCrossSigning(r *http.Request, dev *userapi.Device) (any, error) {
	var req struct {
		e2ee.CrossSigningUpload
		Auth json.RawMessage `json:"auth"`
	}
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	err := k.keys.UploadCrossSigningKeys(r.Context(), callerOf(dev), req.CrossSigningUpload, func() error {
		return k.passwordUIA(r, dev, req.Auth)
	})
	if err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

func (k *keyHandlers) uploadSignatures(r *http.Request, dev *userapi.Device) (any, error) {
	var req map[string]map[string]json.RawMessage
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	failures, err := k.keys.UploadSignatures(r.Context(), callerOf(dev), req)
	if err != nil {
		return nil, err
	}
	return map[string]any{"failures": failures}, nil
}
