package e2ee

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
)

// Caller is the signed-in device making a request.
type Caller struct {
	UserID, Localpart, DeviceID string
}

// Upload is the body of POST /keys/upload.
type Upload struct {
	DeviceKeys   json.RawMessage            `json:"device_keys"`
	OneTimeKeys  map[string]json.RawMessage `json:"one_time_keys"`
	FallbackKeys map[string]json.RawMessage `json:"fallback_keys"`
}

// deviceKeys is the spec's DeviceKeys object, as far as the server checks it.
type deviceKeys struct {
	UserID     string            `json:"user_id"`
	DeviceID   string            `json:"device_id"`
	Algorithms []string          `json:"algorithms"`
	Keys       map[string]string `json:"keys"`
}

// checkDeviceKeys validates the caller's device keys: ids, algorithms,
// the ed25519 and curve25519 keys of the device, and the device's
// self-signature. It returns them in canonical JSON.
func checkDeviceKeys(c Caller, raw json.RawMessage) ([]byte, error) {
	var dk deviceKeys
	if err := json.Unmarshal(raw, &dk); err != nil {
		return nil, mxhttp.InvalidParam("device_keys is malformed: %v", err)
	}
	if dk.UserID != c.UserID || dk.DeviceID != c.DeviceID {
		return nil, mxhttp.InvalidParam("device_keys must be for user %s and device %s", c.UserID, c.DeviceID)
	}
	if len(dk.Algorithms) == 0 {
		return nil, mxhttp.InvalidParam("device_keys.algorithms must not be empty")
	}
	ed, curve := dk.Keys["ed25519:"+c.DeviceID], dk.Keys["curve25519:"+c.DeviceID]
	if ed == "" || curve == "" {
		return nil, mxhttp.InvalidParam("device_keys.keys must hold ed25519:%s and curve25519:%s", c.DeviceID, c.DeviceID)
	}
	if err := verify(raw, c.UserID, "ed25519:"+c.DeviceID, ed); err != nil {
		return nil, mxhttp.InvalidParam("device_keys are not signed by the device's ed25519 key: %v", err)
	}
	return canonical(raw)
}

// parseKeyID splits <algorithm>:<key id>.
func parseKeyID(id string) (algorithm string, err error) {
	alg, rest, ok := strings.Cut(id, ":")
	if !ok || alg == "" || rest == "" {
		return "", mxhttp.InvalidParam("key id %q is not <algorithm>:<key id>", id)
	}
	return alg, nil
}

// UploadKeys stores the caller's device keys, one-time keys and fallback
// keys in one transaction, and returns the device's one-time key counts.
//
// Device keys that differ from the device's stored ones are refused (400
// M_INVALID_PARAM): a device's identity keys are fixed for its lifetime,
// and a repeat of the same keys is fine. So is a one-time key id uploaded
// again with another key. Fallback keys replace the previous key of their
// algorithm and start unused. A device's first device keys change its
// owner's device list, which wakes the syncs tracking it.
func (s *Service) UploadKeys(ctx context.Context, c Caller, up Upload) (map[string]int, error) {
	var counts map[string]int
	var change *sql.DeviceListChange
	err := s.db.WithTx(ctx, func(q *sql.Queries) error {
		var err error
		counts, change, err = s.UploadKeysIn(ctx, q, c, up)
		return err
	})
	if err != nil {
		return nil, err
	}
	WakeDeviceList(s.wake, change)
	return counts, nil
}

// UploadKeysIn is UploadKeys inside the caller's transaction q, for
// writes that store a device and its keys together (a dehydrated device).
// The caller wakes change's syncs (WakeDeviceList) once q commits; change
// is nil when the device list did not change.
func (s *Service) UploadKeysIn(ctx context.Context, q *sql.Queries, c Caller, up Upload) (map[string]int, *sql.DeviceListChange, error) {
	var devKeys []byte
	if len(up.DeviceKeys) > 0 && string(up.DeviceKeys) != "null" {
		var err error
		if devKeys, err = checkDeviceKeys(c, up.DeviceKeys); err != nil {
			return nil, nil, err
		}
	}
	otks, err := parseKeys(up.OneTimeKeys, "one_time_keys")
	if err != nil {
		return nil, nil, err
	}
	fallbacks, err := parseKeys(up.FallbackKeys, "fallback_keys")
	if err != nil {
		return nil, nil, err
	}
	seen := map[string]bool{}
	for _, k := range fallbacks {
		if seen[k.Algorithm] {
			return nil, nil, mxhttp.InvalidParam("fallback_keys holds more than one %s key", k.Algorithm)
		}
		seen[k.Algorithm] = true
	}
	var change *sql.DeviceListChange
	if devKeys != nil {
		old, err := q.SetDeviceKeys(ctx, c.Localpart, c.DeviceID, devKeys)
		switch {
		case errors.Is(err, sql.ErrExists):
			if !sameKey(old, devKeys) {
				return nil, nil, mxhttp.InvalidParam("Device key already exists for device %s; it cannot be changed", c.DeviceID)
			}
		case err != nil:
			return nil, nil, err
		default:
			if change, err = q.AddDeviceListChange(ctx, c.UserID); err != nil {
				return nil, nil, err
			}
		}
	}
	for _, k := range otks {
		old, err := q.AddOneTimeKey(ctx, c.Localpart, c.DeviceID, k)
		if errors.Is(err, sql.ErrExists) {
			if !sameKey(old, k.JSON) {
				return nil, nil, mxhttp.InvalidParam("One-time key %s already exists with another value", k.KeyID)
			}
		} else if err != nil {
			return nil, nil, err
		}
	}
	for _, k := range fallbacks {
		if err := q.SetFallbackKey(ctx, c.Localpart, c.DeviceID, k); err != nil {
			return nil, nil, err
		}
	}
	counts, err := q.OneTimeKeyCounts(ctx, c.Localpart, c.DeviceID)
	if err != nil {
		return nil, nil, err
	}
	return counts, change, nil
}

// parseKeys checks and canonicalizes uploaded one-time or fallback keys,
// objects for signed algorithms and strings for unsigned ones.
func parseKeys(keys map[string]json.RawMessage, field string) ([]sql.OneTimeKey, error) {
	var out []sql.OneTimeKey
	for id, raw := range keys {
		alg, err := parseKeyID(id)
		if err != nil {
			return nil, err
		}
		trimmed := strings.TrimSpace(string(raw))
		if !strings.HasPrefix(trimmed, "{") && !strings.HasPrefix(trimmed, `"`) {
			return nil, mxhttp.InvalidParam("%s.%s must be an object or a string", field, id)
		}
		js, err := canonical(raw)
		if err != nil {
			return nil, mxhttp.InvalidParam("%s.%s is malformed", field, id)
		}
		out = append(out, sql.OneTimeKey{KeyID: id, Algorithm: alg, JSON: js})
	}
	return out, nil
}

// QueryResult is the body of a /keys/query answer.
type QueryResult struct {
	DeviceKeys      map[string]map[string]json.RawMessage `json:"device_keys"`
	MasterKeys      map[string]json.RawMessage            `json:"master_keys"`
	SelfSigningKeys map[string]json.RawMessage            `json:"self_signing_keys"`
	UserSigningKeys map[string]json.RawMessage            `json:"user_signing_keys"`
	Failures        map[string]any                        `json:"failures"`
}

// QueryKeys returns the device and cross-signing keys of the users asked
// for (all their devices when the list is empty), with the signatures
// uploaded over them. Only the caller sees their own user-signing key and
// signatures that other users made, so nobody learns whom others verified.
// Unknown users and devices are absent. Users of other servers come from
// the cache of their device lists when this server tracks them
// completely (after refetching it when it is stale, with a
// DeviceListResync), and are otherwise asked for through RemoteKeys,
// within DefaultRemoteTimeout.
func (s *Service) QueryKeys(ctx context.Context, callerUserID string, users map[string][]string) (QueryResult, error) {
	return s.QueryKeysWithin(ctx, callerUserID, users, DefaultRemoteTimeout)
}

// QueryKeysWithin is QueryKeys waiting at most timeout for other servers,
// which are asked concurrently, while the local users are read. A server
// that fails or is too slow is listed in Failures; its users are absent.
func (s *Service) QueryKeysWithin(ctx context.Context, callerUserID string, users map[string][]string, timeout time.Duration) (QueryResult, error) {
	res := QueryResult{
		DeviceKeys:      map[string]map[string]json.RawMessage{},
		MasterKeys:      map[string]json.RawMessage{},
		SelfSigningKeys: map[string]json.RawMessage{},
		UserSigningKeys: map[string]json.RawMessage{},
		Failures:        map[string]any{},
	}
	deadline := time.Now().Add(timeout)
	cached, err := s.fromCache(ctx, users, &res)
	if err != nil {
		return QueryResult{}, err
	}
	if err := s.resyncStale(ctx, users, cached, &res, timeout/2); err != nil {
		return QueryResult{}, err
	}
	remote := map[string]map[string][]string{}
	for userID, devices := range users {
		if _, err := s.localpart(userID); errors.Is(err, errRemote) && !cached[userID] {
			srv := domainOf(userID)
			if remote[srv] == nil {
				remote[srv] = map[string][]string{}
			}
			if devices == nil {
				devices = []string{}
			}
			remote[srv][userID] = devices
		}
	}
	waitRemote, cancel := s.queryRemote(ctx, remote, time.Until(deadline))
	defer cancel()
	for userID, devices := range users {
		local, err := s.localpart(userID)
		if err != nil {
			continue // not a user id: no such user
		}
		sigs, err := s.visibleSignatures(ctx, local, userID, callerUserID)
		if err != nil {
			return QueryResult{}, err
		}
		keys, err := s.db.DeviceKeys(ctx, local, devices)
		if err != nil {
			return QueryResult{}, fmt.Errorf("query device keys: %w", err)
		}
		names := map[string]string{}
		if len(keys) > 0 {
			ds, err := s.db.Devices(ctx, local)
			if err != nil {
				return QueryResult{}, fmt.Errorf("query devices: %w", err)
			}
			for _, d := range ds {
				names[d.DeviceID] = d.DisplayName
			}
		}
		byDevice := map[string]json.RawMessage{}
		for id, js := range keys {
			js, err := addSignatures(js, sigs[id])
			if err == nil && names[id] != "" {
				js, err = addUnsigned(js, map[string]any{"device_display_name": names[id]})
			}
			if err != nil {
				return QueryResult{}, fmt.Errorf("device keys of %s %s: %w", userID, id, err)
			}
			byDevice[id] = js
		}
		res.DeviceKeys[userID] = byDevice
		cross, err := s.db.CrossSigningKeys(ctx, local)
		if err != nil {
			return QueryResult{}, fmt.Errorf("query cross-signing keys: %w", err)
		}
		for typ, dst := range map[string]map[string]json.RawMessage{
			typeMaster: res.MasterKeys, typeSelfSigning: res.SelfSigningKeys, typeUserSigning: res.UserSigningKeys,
		} {
			k, ok := cross[typ]
			if !ok || (typ == typeUserSigning && userID != callerUserID) {
				continue
			}
			js, err := addSignatures(k.JSON, sigs[k.PublicKey])
			if err != nil {
				return QueryResult{}, fmt.Errorf("%s key of %s: %w", typ, userID, err)
			}
			dst[userID] = js
		}
	}
	waitRemote(&res)
	return res, nil
}

// visibleSignatures returns the uploaded signatures over the user's keys
// that the caller may see, by signed key id.
func (s *Service) visibleSignatures(ctx context.Context, local, userID, callerUserID string) (map[string]signatures, error) {
	all, err := s.db.KeySignatures(ctx, local)
	if err != nil {
		return nil, fmt.Errorf("query key signatures: %w", err)
	}
	out := map[string]signatures{}
	for _, sg := range all {
		if sg.SignerUserID != userID && sg.SignerUserID != callerUserID {
			continue
		}
		if out[sg.TargetKeyID] == nil {
			out[sg.TargetKeyID] = signatures{}
		}
		if out[sg.TargetKeyID][sg.SignerUserID] == nil {
			out[sg.TargetKeyID][sg.SignerUserID] = map[string]string{}
		}
		out[sg.TargetKeyID][sg.SignerUserID][sg.SignerKeyID] = sg.Signature
	}
	return out, nil
}

// addUnsigned returns obj with fields set in its "unsigned".
func addUnsigned(obj []byte, fields map[string]any) ([]byte, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(obj, &m); err != nil {
		return nil, err
	}
	u := map[string]any{}
	if raw, ok := m["unsigned"]; ok {
		_ = json.Unmarshal(raw, &u)
	}
	for k, v := range fields {
		u[k] = v
	}
	raw, err := json.Marshal(u)
	if err != nil {
		return nil, err
	}
	m["unsigned"] = raw
	return json.Marshal(m)
}

// ClaimResult is the body of a /keys/claim answer.
type ClaimResult struct {
	OneTimeKeys map[string]map[string]map[string]json.RawMessage `json:"one_time_keys"`
	Failures    map[string]any                                   `json:"failures"`
}

// ClaimKeys claims one key of the requested algorithm for each device: a
// one-time key, deleted as it is handed out, or when none is left the
// device's fallback key, which stays. Devices with neither, unknown devices
// and unknown users are absent from the answer. Keys of other servers'
// users are claimed through RemoteKeys, within DefaultRemoteTimeout.
func (s *Service) ClaimKeys(ctx context.Context, req map[string]map[string]string) (ClaimResult, error) {
	return s.ClaimKeysWithin(ctx, req, DefaultRemoteTimeout)
}

// ClaimKeysWithin is ClaimKeys waiting at most timeout for other servers,
// as QueryKeysWithin.
func (s *Service) ClaimKeysWithin(ctx context.Context, req map[string]map[string]string, timeout time.Duration) (ClaimResult, error) {
	res := ClaimResult{OneTimeKeys: map[string]map[string]map[string]json.RawMessage{}, Failures: map[string]any{}}
	remote := map[string]map[string]map[string]string{}
	for userID, devices := range req {
		if _, err := s.localpart(userID); errors.Is(err, errRemote) && len(devices) > 0 {
			srv := domainOf(userID)
			if remote[srv] == nil {
				remote[srv] = map[string]map[string]string{}
			}
			remote[srv][userID] = devices
		}
	}
	waitRemote, cancel := s.claimRemote(ctx, remote, timeout)
	defer cancel()
	for userID, devices := range req {
		local, err := s.localpart(userID)
		if err != nil {
			continue
		}
		for deviceID, alg := range devices {
			k, err := s.db.ClaimOneTimeKey(ctx, local, deviceID, alg)
			if errors.Is(err, sql.ErrNotFound) {
				continue
			}
			if err != nil {
				return ClaimResult{}, fmt.Errorf("claim key of %s %s: %w", userID, deviceID, err)
			}
			if res.OneTimeKeys[userID] == nil {
				res.OneTimeKeys[userID] = map[string]map[string]json.RawMessage{}
			}
			res.OneTimeKeys[userID][deviceID] = map[string]json.RawMessage{k.KeyID: k.JSON}
		}
	}
	waitRemote(&res)
	return res, nil
}
