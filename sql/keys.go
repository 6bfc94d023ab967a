package sql

import (
	"context"
	stdsql "database/sql"
	"errors"
	"fmt"
	"slices"
)

// DeviceKeys returns the stored device_keys JSON of the user's devices, by
// device id; only the named devices when deviceIDs is not empty.
func (t *Queries) DeviceKeys(ctx context.Context, localpart string, deviceIDs []string) (map[string][]byte, error) {
	rows, err := t.q.QueryContext(ctx, `SELECT device_id, key_json FROM e2e_device_keys WHERE localpart = $1`, localpart)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	want := map[string]bool{}
	for _, id := range deviceIDs {
		want[id] = true
	}
	out := map[string][]byte{}
	for rows.Next() {
		var id, js string
		if err := rows.Scan(&id, &js); err != nil {
			return nil, err
		}
		if len(want) == 0 || want[id] {
			out[id] = []byte(js)
		}
	}
	return out, rows.Err()
}

// SetDeviceKeys stores the device's keys unless it has some already:
// ErrExists then, with the stored JSON so the caller can tell a harmless
// repeat from a replacement.
func (t *Queries) SetDeviceKeys(ctx context.Context, localpart, deviceID string, keyJSON []byte) ([]byte, error) {
	res, err := t.q.ExecContext(ctx, `INSERT INTO e2e_device_keys (localpart, device_id, key_json, added_ts) VALUES ($1, $2, $3, $4)
		ON CONFLICT (localpart, device_id) DO NOTHING`, localpart, deviceID, string(keyJSON), nowMillis())
	if err != nil {
		return nil, fmt.Errorf("store device keys: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 1 {
		return nil, nil
	}
	var old string
	if err := t.q.QueryRowContext(ctx, `SELECT key_json FROM e2e_device_keys WHERE localpart = $1 AND device_id = $2`,
		localpart, deviceID).Scan(&old); err != nil {
		return nil, noRows(err)
	}
	return []byte(old), ErrExists
}

// OneTimeKey is an uploaded one-time or fallback key.
type OneTimeKey struct {
	KeyID     string // <algorithm>:<key id>
	Algorithm string
	JSON      []byte
}

// AddOneTimeKey stores a one-time key. A key id the device already has is
// ErrExists, with the stored JSON.
func (t *Queries) AddOneTimeKey(ctx context.Context, localpart, deviceID string, k OneTimeKey) ([]byte, error) {
	res, err := t.q.ExecContext(ctx, `INSERT INTO e2e_one_time_keys (localpart, device_id, key_id, algorithm, key_json, added_ts)
		VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (localpart, device_id, key_id) DO NOTHING`,
		localpart, deviceID, k.KeyID, k.Algorithm, string(k.JSON), nowMillis())
	if err != nil {
		return nil, fmt.Errorf("store one-time key: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 1 {
		return nil, nil
	}
	var old string
	if err := t.q.QueryRowContext(ctx, `SELECT key_json FROM e2e_one_time_keys WHERE localpart = $1 AND device_id = $2 AND key_id = $3`,
		localpart, deviceID, k.KeyID).Scan(&old); err != nil {
		return nil, noRows(err)
	}
	return []byte(old), ErrExists
}

// OneTimeKeyCounts counts the device's unclaimed one-time keys by algorithm.
func (t *Queries) OneTimeKeyCounts(ctx context.Context, localpart, deviceID string) (map[string]int, error) {
	rows, err := t.q.QueryContext(ctx, `SELECT algorithm, COUNT(*) FROM e2e_one_time_keys WHERE localpart = $1 AND device_id = $2 GROUP BY algorithm`,
		localpart, deviceID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var alg string
		var n int
		if err := rows.Scan(&alg, &n); err != nil {
			return nil, err
		}
		out[alg] = n
	}
	return out, rows.Err()
}

// SetFallbackKey replaces the device's fallback key for the key's
// algorithm; the new key starts unused.
func (t *Queries) SetFallbackKey(ctx context.Context, localpart, deviceID string, k OneTimeKey) error {
	_, err := t.q.ExecContext(ctx, `INSERT INTO e2e_fallback_keys (localpart, device_id, algorithm, key_id, key_json, used) VALUES ($1, $2, $3, $4, $5, FALSE)
		ON CONFLICT (localpart, device_id, algorithm) DO UPDATE SET key_id = excluded.key_id, key_json = excluded.key_json, used = FALSE`,
		localpart, deviceID, k.Algorithm, k.KeyID, string(k.JSON))
	return err
}

// DeviceKeyCounts returns, in one query, what every /sync tells a device
// of its keys: how many one-time keys it has left per algorithm, and the
// algorithms of its fallback keys that were not used yet, sorted.
func (t *Queries) DeviceKeyCounts(ctx context.Context, localpart, deviceID string) (map[string]int, []string, error) {
	rows, err := t.q.QueryContext(ctx, `SELECT algorithm, COUNT(*), FALSE FROM e2e_one_time_keys WHERE localpart = $1 AND device_id = $2
		GROUP BY algorithm
		UNION ALL
		SELECT algorithm, 0, TRUE FROM e2e_fallback_keys WHERE localpart = $1 AND device_id = $2 AND used = FALSE`,
		localpart, deviceID)
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	counts := map[string]int{}
	fallback := []string{}
	for rows.Next() {
		var alg string
		var n int
		var isFallback bool
		if err := rows.Scan(&alg, &n, &isFallback); err != nil {
			return nil, nil, err
		}
		if isFallback {
			fallback = append(fallback, alg)
		} else {
			counts[alg] = n
		}
	}
	slices.Sort(fallback)
	return counts, fallback, rows.Err()
}

// ClaimOneTimeKey hands out one of the device's keys of algorithm: an
// unclaimed one-time key, deleted as it is handed out, or else the fallback
// key, marked used and kept. ErrNotFound when there is neither.
//
// Two claims never get the same one-time key: the DELETE that hands a key
// out is what claims it, and a claim whose chosen key was taken by a
// concurrent one (zero rows deleted) picks again; each retry means another
// claim succeeded, so the loop ends.
func (t *Queries) ClaimOneTimeKey(ctx context.Context, localpart, deviceID, algorithm string) (OneTimeKey, error) {
	for {
		var keyID string
		err := t.q.QueryRowContext(ctx, `SELECT key_id FROM e2e_one_time_keys WHERE localpart = $1 AND device_id = $2 AND algorithm = $3
			ORDER BY added_ts, key_id LIMIT 1`, localpart, deviceID, algorithm).Scan(&keyID)
		if errors.Is(err, stdsql.ErrNoRows) {
			break
		}
		if err != nil {
			return OneTimeKey{}, err
		}
		var js string
		err = t.q.QueryRowContext(ctx, `DELETE FROM e2e_one_time_keys WHERE localpart = $1 AND device_id = $2 AND key_id = $3 RETURNING key_json`,
			localpart, deviceID, keyID).Scan(&js)
		if errors.Is(err, stdsql.ErrNoRows) {
			continue // a concurrent claim took it
		}
		if err != nil {
			return OneTimeKey{}, err
		}
		return OneTimeKey{KeyID: keyID, Algorithm: algorithm, JSON: []byte(js)}, nil
	}
	var k OneTimeKey
	var js string
	err := t.q.QueryRowContext(ctx, `UPDATE e2e_fallback_keys SET used = TRUE WHERE localpart = $1 AND device_id = $2 AND algorithm = $3
		RETURNING key_id, key_json`, localpart, deviceID, algorithm).Scan(&k.KeyID, &js)
	if err != nil {
		return OneTimeKey{}, noRows(err)
	}
	k.Algorithm, k.JSON = algorithm, []byte(js)
	return k, nil
}

// deleteDeviceKeys removes every key of the device: identity, one-time,
// fallback, and the signatures others made over its identity keys.
func (t *Queries) deleteDeviceKeys(ctx context.Context, localpart, deviceID string) error {
	for _, q := range []string{
		`DELETE FROM e2e_device_keys WHERE localpart = $1 AND device_id = $2`,
		`DELETE FROM e2e_one_time_keys WHERE localpart = $1 AND device_id = $2`,
		`DELETE FROM e2e_fallback_keys WHERE localpart = $1 AND device_id = $2`,
		`DELETE FROM e2e_signatures WHERE target_localpart = $1 AND target_key_id = $2`,
	} {
		if _, err := t.q.ExecContext(ctx, q, localpart, deviceID); err != nil {
			return fmt.Errorf("delete device keys: %w", err)
		}
	}
	return nil
}

// CrossSigningKey is one of a user's cross-signing keys.
type CrossSigningKey struct {
	Type      string // master, self_signing or user_signing
	PublicKey string // unpadded base64
	JSON      []byte
}

// CrossSigningKeys returns the user's cross-signing keys, by type.
func (t *Queries) CrossSigningKeys(ctx context.Context, localpart string) (map[string]CrossSigningKey, error) {
	rows, err := t.q.QueryContext(ctx, `SELECT key_type, public_key, key_json FROM e2e_cross_signing_keys WHERE localpart = $1`, localpart)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]CrossSigningKey{}
	for rows.Next() {
		var k CrossSigningKey
		var js string
		if err := rows.Scan(&k.Type, &k.PublicKey, &js); err != nil {
			return nil, err
		}
		k.JSON = []byte(js)
		out[k.Type] = k
	}
	return out, rows.Err()
}

// SetCrossSigningKey stores or replaces one of the user's cross-signing keys.
func (t *Queries) SetCrossSigningKey(ctx context.Context, localpart string, k CrossSigningKey) error {
	_, err := t.q.ExecContext(ctx, `INSERT INTO e2e_cross_signing_keys (localpart, key_type, public_key, key_json, added_ts) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (localpart, key_type) DO UPDATE SET public_key = excluded.public_key, key_json = excluded.key_json, added_ts = excluded.added_ts`,
		localpart, k.Type, k.PublicKey, string(k.JSON), nowMillis())
	return err
}

// KeySignature is a signature uploaded over a device's keys or a
// cross-signing key.
type KeySignature struct {
	TargetKeyID  string // device id or cross-signing public key
	SignerUserID string
	SignerKeyID  string // ed25519:<device id or public key>
	Signature    string
}

// AddKeySignature stores (or replaces) a signature over one of the user's keys.
func (t *Queries) AddKeySignature(ctx context.Context, targetLocalpart string, s KeySignature) error {
	_, err := t.q.ExecContext(ctx, `INSERT INTO e2e_signatures (target_localpart, target_key_id, signer_user_id, signer_key_id, signature) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (target_localpart, target_key_id, signer_user_id, signer_key_id) DO UPDATE SET signature = excluded.signature`,
		targetLocalpart, s.TargetKeyID, s.SignerUserID, s.SignerKeyID, s.Signature)
	return err
}

// KeySignatures returns the uploaded signatures over the user's keys.
func (t *Queries) KeySignatures(ctx context.Context, targetLocalpart string) ([]KeySignature, error) {
	rows, err := t.q.QueryContext(ctx, `SELECT target_key_id, signer_user_id, signer_key_id, signature FROM e2e_signatures WHERE target_localpart = $1`,
		targetLocalpart)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []KeySignature
	for rows.Next() {
		var s KeySignature
		if err := rows.Scan(&s.TargetKeyID, &s.SignerUserID, &s.SignerKeyID, &s.Signature); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, rows.Err()
}
