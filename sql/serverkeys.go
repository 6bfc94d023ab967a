package sql

import (
	"context"
	"fmt"
	"strconv"
	"strings"
)

// ServerKey is a remote server's signing key as the key ring caches it.
type ServerKey struct {
	ServerName string
	KeyID      string
	// PublicKey is the ed25519 public key, unpadded base64.
	PublicKey string
	// ValidUntilTS is when a current key stops being usable, in
	// milliseconds (0 for an old key).
	ValidUntilTS int64
	// ExpiredTS is when an old key stopped being used, in milliseconds (0
	// for a current key).
	ExpiredTS int64
	// FetchedTS is when the row was stored, in milliseconds.
	FetchedTS int64
}

// StoreServerKeys inserts or replaces keys, all in one transaction.
func (t *Queries) StoreServerKeys(ctx context.Context, keys []ServerKey) error {
	if len(keys) == 0 {
		return nil
	}
	err := t.ensureTx(ctx, func(q *Queries) error {
		for _, k := range keys {
			_, err := q.q.ExecContext(ctx, `INSERT INTO server_keys (server_name, key_id, public_key, valid_until_ts, expired_ts, fetched_ts)
				VALUES ($1, $2, $3, $4, $5, $6)
				ON CONFLICT (server_name, key_id) DO UPDATE SET public_key = excluded.public_key,
					valid_until_ts = excluded.valid_until_ts, expired_ts = excluded.expired_ts, fetched_ts = excluded.fetched_ts`,
				k.ServerName, k.KeyID, k.PublicKey, k.ValidUntilTS, k.ExpiredTS, k.FetchedTS)
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store server keys: %w", err)
	}
	return nil
}

// ServerKeysFor returns every cached key of the named servers, in one
// query, ordered by server name and key id.
func (t *Queries) ServerKeysFor(ctx context.Context, serverNames []string) ([]ServerKey, error) {
	if len(serverNames) == 0 {
		return nil, nil
	}
	args := make([]any, len(serverNames))
	marks := make([]string, len(serverNames))
	for i, name := range serverNames {
		args[i] = name
		marks[i] = "$" + strconv.Itoa(i+1)
	}
	rows, err := t.q.QueryContext(ctx, `SELECT server_name, key_id, public_key, valid_until_ts, expired_ts, fetched_ts
		FROM server_keys WHERE server_name IN (`+strings.Join(marks, ", ")+`) ORDER BY server_name, key_id`, args...)
	if err != nil {
		return nil, fmt.Errorf("server keys: %w", err)
	}
	defer rows.Close()
	var out []ServerKey
	for rows.Next() {
		var k ServerKey
		if err := rows.Scan(&k.ServerName, &k.KeyID, &k.PublicKey, &k.ValidUntilTS, &k.ExpiredTS, &k.FetchedTS); err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	return out, rows.Err()
}

// ServerKeyJSON is a key document as its server signed it, found through
// one of the key ids it lists.
type ServerKeyJSON struct {
	KeyID        string
	JSON         []byte
	ValidUntilTS int64
	FetchedTS    int64
}

// StoreServerKeyJSON keeps a key document of serverName under each of
// keyIDs (the ids it lists), replacing the documents stored for them.
func (t *Queries) StoreServerKeyJSON(ctx context.Context, serverName string, keyIDs []string, doc []byte, validUntilTS, fetchedTS int64) error {
	err := t.ensureTx(ctx, func(q *Queries) error {
		for _, id := range keyIDs {
			_, err := q.q.ExecContext(ctx, `INSERT INTO server_key_json (server_name, key_id, key_json, valid_until_ts, fetched_ts)
				VALUES ($1, $2, $3, $4, $5)
				ON CONFLICT (server_name, key_id) DO UPDATE SET key_json = excluded.key_json,
					valid_until_ts = excluded.valid_until_ts, fetched_ts = excluded.fetched_ts`,
				serverName, id, string(doc), validUntilTS, fetchedTS)
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store key document of %s: %w", serverName, err)
	}
	return nil
}

// ServerKeyJSONs returns the stored key documents of serverName, one per
// key id, newest fetch first.
func (t *Queries) ServerKeyJSONs(ctx context.Context, serverName string) ([]ServerKeyJSON, error) {
	rows, err := t.q.QueryContext(ctx, `SELECT key_id, key_json, valid_until_ts, fetched_ts FROM server_key_json
		WHERE server_name = $1 ORDER BY fetched_ts DESC, key_id`, serverName)
	if err != nil {
		return nil, fmt.Errorf("key documents of %s: %w", serverName, err)
	}
	defer rows.Close()
	var out []ServerKeyJSON
	for rows.Next() {
		var d ServerKeyJSON
		var doc string
		if err := rows.Scan(&d.KeyID, &doc, &d.ValidUntilTS, &d.FetchedTS); err != nil {
			return nil, err
		}
		d.JSON = []byte(doc)
		out = append(out, d)
	}
	return out, rows.Err()
}
