package federation

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/internal/serverkey"
	"github.com/weft-chat/weft/sql"
)

// keyValidityCap is the spec's rule for room versions 5 and later: a key's
// valid_until_ts counts for at most 7 days into the future. We apply it
// when storing a fetched key, so the cache also refetches a key published
// with a far-future validity within 7 days. gomatrixserverlib applies the
// same cap again when it checks a signature
// (StrictValiditySignatureCheck), measured from the time of the check.
const keyValidityCap = 7 * 24 * time.Hour

// refetchInterval is how soon the keys of one server are fetched again from
// it: a request claiming an unknown key of some victim server would
// otherwise make us fetch the victim's keys once per request.
const refetchInterval = 30 * time.Second

// directFetchTimeout bounds one fetch of a server's key document.
const directFetchTimeout = 15 * time.Second

// KeyRingConfig configures a KeyRing.
type KeyRingConfig struct {
	DB *sql.DB
	// ServerName, Key and OldKeys are our own: answered from here, never
	// fetched.
	ServerName spec.ServerName
	Key        serverkey.Key
	OldKeys    []config.OldSigningKey
	// Client fetches keys from other servers (a *Client).
	Client gomatrixserverlib.KeyClient
	// Notaries are asked, in order, for the keys a direct fetch could not
	// get (config: key_notaries).
	Notaries []spec.ServerName
	Log      *slog.Logger
	// RefetchInterval overrides refetchInterval (tests); 0 keeps it.
	RefetchInterval time.Duration
}

// KeyRing verifies signatures of other servers: it finds their keys in the
// database cache, or fetches them from the server itself and then through
// the configured notaries, and caches what it fetched.
type KeyRing struct {
	ring   gomatrixserverlib.KeyRing
	db     keyDatabase
	direct *directClient
}

// NewKeyRing builds the key ring.
func NewKeyRing(cfg KeyRingConfig) *KeyRing {
	log := cfg.Log
	log = logOr(log)
	interval := cfg.RefetchInterval
	if interval == 0 {
		interval = refetchInterval
	}
	kdb := keyDatabase{db: cfg.DB, serverName: cfg.ServerName, key: cfg.Key, old: cfg.OldKeys, now: time.Now}
	direct := &directClient{KeyClient: cfg.Client, db: cfg.DB, log: log, interval: interval, now: time.Now,
		recent: make(map[spec.ServerName]recentFetch)}
	isLocal := func(s spec.ServerName) bool { return s == cfg.ServerName }
	fetchers := []gomatrixserverlib.KeyFetcher{&gomatrixserverlib.DirectKeyFetcher{
		Client: direct, IsLocalServerName: isLocal, LocalPublicKey: spec.Base64Bytes(cfg.Key.Public()),
	}}
	for _, n := range cfg.Notaries {
		if n == cfg.ServerName {
			continue
		}
		fetchers = append(fetchers, &notaryFetcher{name: n, client: cfg.Client, db: kdb, direct: direct, log: log})
	}
	return &KeyRing{
		ring:   gomatrixserverlib.KeyRing{KeyDatabase: kdb, KeyFetchers: fetchers},
		db:     kdb,
		direct: direct,
	}
}

// VerifyJSONs implements gomatrixserverlib.JSONVerifier.
// A request without a ValidityCheckingFunc gets the strict check (the
// 7-day rule), rather than the nil call gomatrixserverlib would make.
func (k *KeyRing) VerifyJSONs(ctx context.Context, requests []gomatrixserverlib.VerifyJSONRequest) ([]gomatrixserverlib.VerifyJSONResult, error) {
	for i := range requests {
		if requests[i].ValidityCheckingFunc == nil {
			requests = slices.Clone(requests)
			for j := range requests {
				if requests[j].ValidityCheckingFunc == nil {
					requests[j].ValidityCheckingFunc = gomatrixserverlib.StrictValiditySignatureCheck
				}
			}
			break
		}
	}
	return k.ring.VerifyJSONs(ctx, requests)
}

// FetchServerKeys fetches the key document of serverName from the server
// itself, keeping it for our notary when it checks out; repeated calls
// within a short interval share one fetch.
func (k *KeyRing) FetchServerKeys(ctx context.Context, serverName spec.ServerName) (gomatrixserverlib.ServerKeys, error) {
	return k.direct.GetServerKeys(ctx, serverName)
}

// keyDatabase is the key ring's cache: our own keys from the config, the
// others' from the server_keys table.
type keyDatabase struct {
	db         *sql.DB
	serverName spec.ServerName
	key        serverkey.Key
	old        []config.OldSigningKey
	now        func() time.Time
}

// ownKeyValidUntil marks our current key valid for as long as it is
// configured (DirectKeyFetcher uses the same far-future date).
var ownKeyValidUntil = spec.AsTimestamp(time.Unix(1<<37, 0))

func (d keyDatabase) FetcherName() string { return "database" }

// FetchKeys implements gomatrixserverlib.KeyFetcher from the cache.
func (d keyDatabase) FetchKeys(ctx context.Context, requests map[gomatrixserverlib.PublicKeyLookupRequest]spec.Timestamp) (map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult, error) {
	out := make(map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult, len(requests))
	var remote []string
	seen := make(map[spec.ServerName]bool)
	for req := range requests {
		if req.ServerName == d.serverName {
			if res, ok := d.ownKey(req.KeyID); ok {
				out[req] = res
			}
			continue
		}
		if !seen[req.ServerName] {
			seen[req.ServerName] = true
			remote = append(remote, string(req.ServerName))
		}
	}
	if len(remote) == 0 {
		return out, nil
	}
	rows, err := d.db.ServerKeysFor(ctx, remote)
	if err != nil {
		return nil, err
	}
	for _, row := range rows {
		req := gomatrixserverlib.PublicKeyLookupRequest{ServerName: spec.ServerName(row.ServerName), KeyID: gomatrixserverlib.KeyID(row.KeyID)}
		if _, wanted := requests[req]; !wanted {
			continue
		}
		pub, err := base64.RawStdEncoding.DecodeString(row.PublicKey)
		if err != nil {
			continue // not written by us; refetch
		}
		out[req] = gomatrixserverlib.PublicKeyLookupResult{
			VerifyKey:    gomatrixserverlib.VerifyKey{Key: pub},
			ValidUntilTS: spec.Timestamp(row.ValidUntilTS),
			ExpiredTS:    spec.Timestamp(row.ExpiredTS),
		}
	}
	return out, nil
}

// ownKey answers for one of our own key ids from the config.
func (d keyDatabase) ownKey(id gomatrixserverlib.KeyID) (gomatrixserverlib.PublicKeyLookupResult, bool) {
	if id == d.key.ID {
		return gomatrixserverlib.PublicKeyLookupResult{
			VerifyKey: gomatrixserverlib.VerifyKey{Key: spec.Base64Bytes(d.key.Public())}, ValidUntilTS: ownKeyValidUntil,
		}, true
	}
	for _, o := range d.old {
		if gomatrixserverlib.KeyID(o.KeyID) != id {
			continue
		}
		pub, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(o.PublicKey, "="))
		if err != nil || len(pub) != ed25519.PublicKeySize {
			return gomatrixserverlib.PublicKeyLookupResult{}, false
		}
		return gomatrixserverlib.PublicKeyLookupResult{VerifyKey: gomatrixserverlib.VerifyKey{Key: pub}, ExpiredTS: spec.Timestamp(o.ExpiredTS)}, true
	}
	return gomatrixserverlib.PublicKeyLookupResult{}, false
}

// StoreKeys implements gomatrixserverlib.KeyDatabase. The ring calls it
// with every key it used, cached ones included: storing those again is
// harmless, since the cap below only ever lowers valid_until_ts to a
// bound it already meets.
func (d keyDatabase) StoreKeys(ctx context.Context, results map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult) error {
	now := d.now()
	limit := spec.AsTimestamp(now.Add(keyValidityCap))
	rows := make([]sql.ServerKey, 0, len(results))
	for req, res := range results {
		if req.ServerName == d.serverName || req.KeyID == "" || len(res.Key) != ed25519.PublicKeySize {
			continue
		}
		valid := res.ValidUntilTS
		if res.ExpiredTS != gomatrixserverlib.PublicKeyNotExpired {
			valid = gomatrixserverlib.PublicKeyNotValid
		} else if valid > limit {
			valid = limit
		}
		rows = append(rows, sql.ServerKey{
			ServerName:   string(req.ServerName),
			KeyID:        string(req.KeyID),
			PublicKey:    base64.RawStdEncoding.EncodeToString(res.Key),
			ValidUntilTS: int64(valid),
			ExpiredTS:    int64(res.ExpiredTS),
			FetchedTS:    now.UnixMilli(),
		})
	}
	return d.db.StoreServerKeys(ctx, rows)
}

// directClient is the KeyClient of the direct fetcher. It keeps each key
// document fetched from its own server for the notary, and it rate-limits
// fetches per server (see refetchInterval).
type directClient struct {
	gomatrixserverlib.KeyClient
	db       *sql.DB
	log      *slog.Logger
	interval time.Duration
	now      func() time.Time

	flights flights[spec.ServerName, gomatrixserverlib.ServerKeys]
	// mu guards recent.
	mu     sync.Mutex
	recent map[spec.ServerName]recentFetch
}

type recentFetch struct {
	keys gomatrixserverlib.ServerKeys
	err  error
	at   time.Time
}

// GetServerKeys fetches /_matrix/key/v2/server of serverName.
func (c *directClient) GetServerKeys(ctx context.Context, serverName spec.ServerName) (gomatrixserverlib.ServerKeys, error) {
	c.mu.Lock()
	if r, ok := c.recent[serverName]; ok && c.now().Sub(r.at) < c.interval {
		c.mu.Unlock()
		return r.keys, r.err
	}
	c.mu.Unlock()
	return c.flights.do(serverName, func() (gomatrixserverlib.ServerKeys, error) {
		// Other callers wait on this fetch: one caller giving up must not
		// fail it for them.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), directFetchTimeout)
		defer cancel()
		keys, err := c.KeyClient.GetServerKeys(ctx, serverName)
		if err == nil {
			err = c.keep(ctx, serverName, keys)
		}
		now := c.now()
		c.mu.Lock()
		defer c.mu.Unlock()
		for name, r := range c.recent {
			if now.Sub(r.at) >= c.interval {
				delete(c.recent, name)
			}
		}
		c.recent[serverName] = recentFetch{keys: keys, err: err, at: now}
		return keys, err
	})
}

// keep checks a fetched document (server name, self-signatures by every
// key it lists) and stores it for the notary.
func (c *directClient) keep(ctx context.Context, serverName spec.ServerName, keys gomatrixserverlib.ServerKeys) error {
	checks, _ := gomatrixserverlib.CheckKeys(serverName, time.Unix(0, 0), keys)
	if !checks.AllChecksOK {
		return fmt.Errorf("key document of %s failed its checks", serverName)
	}
	canonical, err := gomatrixserverlib.CanonicalJSON(keys.Raw)
	if err != nil {
		return fmt.Errorf("key document of %s: %w", serverName, err)
	}
	ids := make([]string, 0, len(keys.VerifyKeys)+len(keys.OldVerifyKeys))
	for id := range keys.VerifyKeys {
		ids = append(ids, string(id))
	}
	for id := range keys.OldVerifyKeys {
		if _, dup := keys.VerifyKeys[id]; !dup {
			ids = append(ids, string(id))
		}
	}
	if err := c.db.StoreServerKeyJSON(ctx, string(serverName), ids, canonical, int64(keys.ValidUntilTS), c.now().UnixMilli()); err != nil {
		// The keys are good; only the notary's copy is lost.
		c.log.Warn("cannot keep key document", "server", serverName, "err", err)
	}
	return nil
}

// notaryFetcher asks one notary server for keys. The notary's own keys are
// fetched from it directly over TLS (Synapse's behaviour for a trusted key
// server configured without verify_keys), then gomatrixserverlib's
// PerspectiveKeyFetcher checks the answer against them.
type notaryFetcher struct {
	name   spec.ServerName
	client gomatrixserverlib.KeyClient
	db     keyDatabase
	direct *directClient
	log    *slog.Logger
}

func (n *notaryFetcher) FetcherName() string { return "notary " + string(n.name) }

// FetchKeys implements gomatrixserverlib.KeyFetcher.
func (n *notaryFetcher) FetchKeys(ctx context.Context, requests map[gomatrixserverlib.PublicKeyLookupRequest]spec.Timestamp) (map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult, error) {
	keys, err := n.notaryKeys(ctx)
	if err != nil {
		n.log.Warn("cannot get the keys of a notary", "notary", n.name, "err", err)
		return nil, err
	}
	p := &gomatrixserverlib.PerspectiveKeyFetcher{PerspectiveServerName: n.name, PerspectiveServerKeys: keys, Client: n.client}
	return p.FetchKeys(ctx, requests)
}

// notaryKeys returns the notary's current keys: cached, or fetched from it
// and cached.
func (n *notaryFetcher) notaryKeys(ctx context.Context) (map[gomatrixserverlib.KeyID]ed25519.PublicKey, error) {
	now := spec.AsTimestamp(n.db.now())
	rows, err := n.db.db.ServerKeysFor(ctx, []string{string(n.name)})
	if err != nil {
		return nil, err
	}
	keys := make(map[gomatrixserverlib.KeyID]ed25519.PublicKey)
	for _, r := range rows {
		pub, err := base64.RawStdEncoding.DecodeString(r.PublicKey)
		if err == nil && r.ExpiredTS == 0 && spec.Timestamp(r.ValidUntilTS) > now {
			keys[gomatrixserverlib.KeyID(r.KeyID)] = pub
		}
	}
	if len(keys) > 0 {
		return keys, nil
	}
	doc, err := n.direct.GetServerKeys(ctx, n.name)
	if err != nil {
		return nil, err
	}
	checks, verified := gomatrixserverlib.CheckKeys(n.name, n.db.now(), doc)
	if !checks.AllChecksOK {
		return nil, fmt.Errorf("key document of notary %s failed its checks", n.name)
	}
	store := make(map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult, len(verified))
	for id, pub := range verified {
		keys[id] = ed25519.PublicKey(pub)
		store[gomatrixserverlib.PublicKeyLookupRequest{ServerName: n.name, KeyID: id}] = gomatrixserverlib.PublicKeyLookupResult{
			VerifyKey: gomatrixserverlib.VerifyKey{Key: pub}, ValidUntilTS: doc.ValidUntilTS,
		}
	}
	if err := n.db.StoreKeys(ctx, store); err != nil {
		n.log.Warn("cannot cache the keys of a notary", "notary", n.name, "err", err)
	}
	return keys, nil
}

var (
	_ gomatrixserverlib.KeyDatabase  = keyDatabase{}
	_ gomatrixserverlib.KeyFetcher   = (*notaryFetcher)(nil)
	_ gomatrixserverlib.JSONVerifier = (*KeyRing)(nil)
)
