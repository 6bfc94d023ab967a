package e2ee

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
)

// The cross-signing key types, as stored and as named in "usage".
const (
	typeMaster      = "master"
	typeSelfSigning = "self_signing"
	typeUserSigning = "user_signing"
)

// CrossSigningUpload is the body of POST /keys/device_signing/upload,
// without its auth.
type CrossSigningUpload struct {
	MasterKey      json.RawMessage `json:"master_key"`
	SelfSigningKey json.RawMessage `json:"self_signing_key"`
	UserSigningKey json.RawMessage `json:"user_signing_key"`
}

// crossSigningKey is the spec's CrossSigningKey object.
type crossSigningKey struct {
	UserID string            `json:"user_id"`
	Usage  []string          `json:"usage"`
	Keys   map[string]string `json:"keys"`
}

// checkCrossSigningKey validates one uploaded key of type typ and returns
// it with its public key.
func checkCrossSigningKey(userID, typ string, raw json.RawMessage) (sql.CrossSigningKey, error) {
	var k crossSigningKey
	if err := json.Unmarshal(raw, &k); err != nil {
		return sql.CrossSigningKey{}, mxhttp.InvalidParam("%s_key is malformed: %v", typ, err)
	}
	if k.UserID != userID {
		return sql.CrossSigningKey{}, mxhttp.InvalidParam("%s_key must be for user %s", typ, userID)
	}
	if !slices.Contains(k.Usage, typ) {
		return sql.CrossSigningKey{}, mxhttp.InvalidParam("%s_key.usage must include %q", typ, typ)
	}
	if len(k.Keys) != 1 {
		return sql.CrossSigningKey{}, mxhttp.InvalidParam("%s_key.keys must hold exactly one key", typ)
	}
	var pub string
	for id, v := range k.Keys {
		p, ok := strings.CutPrefix(id, "ed25519:")
		if !ok || p != v {
			return sql.CrossSigningKey{}, mxhttp.InvalidParam("%s_key.keys must be {\"ed25519:<public key>\": \"<public key>\"}", typ)
		}
		if _, err := decodeKey(p); err != nil {
			return sql.CrossSigningKey{}, mxhttp.InvalidParam("%s_key: %v", typ, err)
		}
		pub = p
	}
	js, err := canonical(raw)
	if err != nil {
		return sql.CrossSigningKey{}, mxhttp.InvalidParam("%s_key is malformed", typ)
	}
	return sql.CrossSigningKey{Type: typ, PublicKey: pub, JSON: js}, nil
}

// UploadCrossSigningKeys validates and stores the caller's cross-signing
// keys. The self-signing and user-signing keys must be signed by the master
// key (uploaded with them, or stored). The first upload needs nothing more;
// replacing stored keys with different ones calls authorize first (the
// caller's user-interactive auth), whose error is returned as is.
func (s *Service) UploadCrossSigningKeys(ctx context.Context, c Caller, up CrossSigningUpload, authorize func() error) error {
	stored, err := s.db.CrossSigningKeys(ctx, c.Localpart)
	if err != nil {
		return fmt.Errorf("read cross-signing keys: %w", err)
	}
	var keys []sql.CrossSigningKey
	for _, u := range []struct {
		typ string
		raw json.RawMessage
	}{{typeMaster, up.MasterKey}, {typeSelfSigning, up.SelfSigningKey}, {typeUserSigning, up.UserSigningKey}} {
		if len(u.raw) == 0 || string(u.raw) == "null" {
			continue
		}
		k, err := checkCrossSigningKey(c.UserID, u.typ, u.raw)
		if err != nil {
			return err
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return mxhttp.MissingParam("Upload at least one of master_key, self_signing_key and user_signing_key")
	}
	master, hasMaster := stored[typeMaster]
	if keys[0].Type == typeMaster {
		master, hasMaster = keys[0], true
	}
	if !hasMaster {
		return mxhttp.MissingParam("master_key is required: the user has none yet")
	}
	devices, err := s.db.Devices(ctx, c.Localpart)
	if err != nil {
		return fmt.Errorf("list devices: %w", err)
	}
	changed := false
	for _, k := range keys {
		if k.Type != typeMaster {
			if err := verify(k.JSON, c.UserID, "ed25519:"+master.PublicKey, master.PublicKey); err != nil {
				return invalidSignature("%s_key is not signed by the master key: %v", k.Type, err)
			}
		}
		// The spec forbids devices whose ids are cross-signing public keys:
		// clients tell keys apart by id.
		for _, d := range devices {
			if d.DeviceID == k.PublicKey {
				return mxhttp.InvalidParam("%s_key's public key is the id of one of your devices", k.Type)
			}
		}
		if old, ok := stored[k.Type]; !ok || !sameKey(old.JSON, k.JSON) {
			changed = true
		}
	}
	if !changed {
		return nil // a repeat, as clients do on retries
	}
	if len(stored) > 0 {
		if err := authorize(); err != nil {
			return err
		}
	}
	var change *sql.DeviceListChange
	err = s.db.WithTx(ctx, func(q *sql.Queries) error {
		for _, k := range keys {
			if err := q.SetCrossSigningKey(ctx, c.Localpart, k); err != nil {
				return fmt.Errorf("store %s key: %w", k.Type, err)
			}
		}
		// Others verify the user's devices through these keys: they
		// must fetch them again.
		var err error
		change, err = q.AddDeviceListChange(ctx, c.UserID)
		return err
	})
	if err != nil {
		return err
	}
	WakeDeviceList(s.wake, change)
	return nil
}

// UploadSignatures verifies and stores the caller's signatures over keys:
// user id → key id (a device id or a cross-signing public key) → the signed
// object. What may sign what follows the spec: the caller's self-signing
// key signs the caller's devices, the caller's devices sign the caller's
// master key, and the caller's user-signing key signs other users' master
// keys. The answer is the "failures" map: user id → key id → error, for
// each key whose signatures were refused; the others are stored.
func (s *Service) UploadSignatures(ctx context.Context, c Caller, body map[string]map[string]json.RawMessage) (map[string]map[string]any, error) {
	failures := map[string]map[string]any{}
	fail := func(userID, keyID string, f map[string]any) {
		if failures[userID] == nil {
			failures[userID] = map[string]any{}
		}
		failures[userID][keyID] = f
	}
	own, err := s.db.CrossSigningKeys(ctx, c.Localpart)
	if err != nil {
		return nil, fmt.Errorf("read cross-signing keys: %w", err)
	}
	ownSigned, othersSigned := false, []string(nil)
	for userID, objs := range body {
		local, err := s.localpart(userID)
		for keyID, obj := range objs {
			if errors.Is(err, errRemote) {
				fail(userID, keyID, failure("M_UNRECOGNIZED", "Signing keys of users on other servers is not supported yet"))
				continue
			}
			if err != nil {
				fail(userID, keyID, failure("M_INVALID_PARAM", "%s is not a user id", userID))
				continue
			}
			sigs, f, err := s.checkSignatureUpload(ctx, c, own, userID, local, keyID, obj)
			if err != nil {
				return nil, err
			}
			if f != nil {
				fail(userID, keyID, f)
				continue
			}
			if len(sigs) == 0 {
				continue // nothing new: no change to announce
			}
			for _, sg := range sigs {
				if err := s.db.AddKeySignature(ctx, local, sg); err != nil {
					return nil, fmt.Errorf("store signature: %w", err)
				}
			}
			if userID == c.UserID {
				ownSigned = true
			} else if !slices.Contains(othersSigned, userID) {
				othersSigned = append(othersSigned, userID)
			}
		}
	}
	// As Synapse: signatures over the caller's own keys change their
	// device list for everyone; signatures over other users' keys concern
	// only the caller's devices, which show those users as changed.
	if ownSigned {
		change, err := s.db.AddDeviceListChange(ctx, c.UserID)
		if err != nil {
			return nil, err
		}
		WakeDeviceList(s.wake, change)
	}
	if len(othersSigned) > 0 {
		if err := s.db.AddSignatureChange(ctx, c.UserID, othersSigned); err != nil {
			return nil, err
		}
		s.wake.Users(c.UserID)
	}
	return failures, nil
}

// checkSignatureUpload finds the key that obj claims to be, checks that it
// is that key, and verifies the caller's new signatures over it. It returns
// the signatures to store, or a failure entry.
func (s *Service) checkSignatureUpload(ctx context.Context, c Caller, own map[string]sql.CrossSigningKey,
	userID, local, keyID string, obj json.RawMessage) ([]sql.KeySignature, map[string]any, error) {
	var storedKey []byte
	var signer *sql.CrossSigningKey // a cross-signing key of the caller's, or nil for a device
	if userID == c.UserID {
		if m, ok := own[typeMaster]; ok && m.PublicKey == keyID {
			storedKey = m.JSON // signed by one of the caller's devices
		} else {
			keys, err := s.db.DeviceKeys(ctx, local, []string{keyID})
			if err != nil {
				return nil, nil, fmt.Errorf("read device keys: %w", err)
			}
			storedKey = keys[keyID]
			if ss, ok := own[typeSelfSigning]; ok {
				signer = &ss
			}
			if storedKey != nil && signer == nil {
				return nil, failure("M_MISSING_PARAM", "Upload a self-signing key before signing devices"), nil
			}
		}
	} else {
		theirs, err := s.db.CrossSigningKeys(ctx, local)
		if err != nil {
			return nil, nil, fmt.Errorf("read cross-signing keys: %w", err)
		}
		if m, ok := theirs[typeMaster]; ok && m.PublicKey == keyID {
			storedKey = m.JSON
		}
		us, ok := own[typeUserSigning]
		if storedKey != nil && !ok {
			return nil, failure("M_MISSING_PARAM", "Upload a user-signing key before signing other users"), nil
		}
		signer = &us
	}
	if storedKey == nil {
		return nil, failure("M_NOT_FOUND", "No key %s for %s", keyID, userID), nil
	}
	if !sameKey(storedKey, obj) {
		return nil, failure("M_INVALID_SIGNATURE", "The signed object is not the stored key %s", keyID), nil
	}
	var signed struct {
		Signatures signatures `json:"signatures"`
	}
	if err := json.Unmarshal(obj, &signed); err != nil {
		return nil, failure("M_INVALID_PARAM", "Malformed signatures"), nil
	}
	var storedSigs struct {
		Signatures signatures `json:"signatures"`
	}
	_ = json.Unmarshal(storedKey, &storedSigs)
	var out []sql.KeySignature
	known := 0
	for sigKeyID, sig := range signed.Signatures[c.UserID] {
		if storedSigs.Signatures[c.UserID][sigKeyID] == sig {
			// Already part of the key as uploaded: sending it again is no
			// error (mautrix signs its master key with the device at
			// upload and then once more, and Synapse accepts both).
			known++
			continue
		}
		pub, err := s.signerKey(ctx, c, signer, sigKeyID)
		if err != nil {
			return nil, nil, err
		}
		if pub == "" {
			return nil, failure("M_INVALID_SIGNATURE", "%s may not sign %s", sigKeyID, keyID), nil
		}
		if err := verify(obj, c.UserID, sigKeyID, pub); err != nil {
			return nil, failure("M_INVALID_SIGNATURE", "Signature %s over %s does not verify", sigKeyID, keyID), nil
		}
		out = append(out, sql.KeySignature{TargetKeyID: keyID, SignerUserID: c.UserID, SignerKeyID: sigKeyID, Signature: sig})
	}
	if len(out) == 0 && known == 0 {
		return nil, failure("M_INVALID_SIGNATURE", "No signature by %s over %s", c.UserID, keyID), nil
	}
	return out, nil, nil
}

// signerKey is the public key behind sigKeyID if it may sign here: the
// cross-signing key signer when set, or else one of the caller's devices.
// It is "" for any other key.
func (s *Service) signerKey(ctx context.Context, c Caller, signer *sql.CrossSigningKey, sigKeyID string) (string, error) {
	id, ok := strings.CutPrefix(sigKeyID, "ed25519:")
	if !ok {
		return "", nil
	}
	if signer != nil {
		if signer.PublicKey == id {
			return id, nil
		}
		return "", nil
	}
	keys, err := s.db.DeviceKeys(ctx, c.Localpart, []string{id})
	if err != nil {
		return "", fmt.Errorf("read device keys: %w", err)
	}
	if keys[id] == nil {
		return "", nil
	}
	var dk deviceKeys
	if err := json.Unmarshal(keys[id], &dk); err != nil {
		return "", nil
	}
	return dk.Keys["ed25519:"+id], nil
}
