package federation

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
)

// Notary limits: fetches one query may start, and how many run at once.
// Servers beyond the first maxNotaryFetches are answered from the cache
// only (keys_query.yaml lets a notary leave out what it cannot get).
const (
	maxNotaryFetches    = 100
	notaryFetchParallel = 8
)

// serverKeyFetcher fetches a server's key document from the server itself
// and keeps it for the notary (KeyRing.FetchServerKeys).
type serverKeyFetcher interface {
	FetchServerKeys(ctx context.Context, serverName spec.ServerName) (gomatrixserverlib.ServerKeys, error)
}

// Notary answers key queries for other servers (spec: "Querying Keys
// Through Another Server"): from the documents kept from direct fetches, or
// by fetching anew, each document signed by us as well as by its server.
// Our own keys come from the KeyServer.
type Notary struct {
	Keys  *KeyServer
	DB    *sql.DB
	Fetch serverKeyFetcher
	Log   *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Routes registers GET /_matrix/key/v2/query/{serverName} and POST
// /_matrix/key/v2/query. Neither needs request signing.
func (n *Notary) Routes(r *mux.Router) {
	r.Handle("/_matrix/key/v2/query/{serverName}", mxhttp.JSON(n.queryOne)).Methods(http.MethodGet)
	r.Handle("/_matrix/key/v2/query", mxhttp.JSON(n.queryMany)).Methods(http.MethodPost)
}

func (n *Notary) now() time.Time {
	if n.Now != nil {
		return n.Now()
	}
	return time.Now()
}

// keysResponse is keys_query_response.yaml: signed documents, as is.
type keysResponse struct {
	ServerKeys []json.RawMessage `json:"server_keys"`
}

// queryOne is GET /_matrix/key/v2/query/{serverName}.
func (n *Notary) queryOne(r *http.Request) (any, error) {
	name, err := pathVar(r, "serverName")
	if err != nil {
		return nil, err
	}
	if _, _, ok := spec.ParseAndValidateServerName(spec.ServerName(name)); !ok {
		return nil, mxhttp.InvalidParam("%q is not a server name", name)
	}
	minValid := spec.AsTimestamp(n.now())
	if v := r.URL.Query().Get("minimum_valid_until_ts"); v != "" {
		ts, err := strconv.ParseInt(v, 10, 64)
		if err != nil || ts < 0 {
			return nil, mxhttp.InvalidParam("minimum_valid_until_ts must be a timestamp in milliseconds")
		}
		minValid = spec.Timestamp(ts)
	}
	return n.answer(r.Context(), []notaryQuery{{server: spec.ServerName(name), minValid: minValid}}), nil
}

// queryMany is POST /_matrix/key/v2/query.
func (n *Notary) queryMany(r *http.Request) (any, error) {
	var body struct {
		ServerKeys *map[string]map[string]struct {
			MinimumValidUntilTS *int64 `json:"minimum_valid_until_ts"`
		} `json:"server_keys"`
	}
	if err := mxhttp.ReadJSON(r, &body); err != nil {
		return nil, err
	}
	if body.ServerKeys == nil {
		return nil, mxhttp.MissingParam("The request body has no server_keys")
	}
	now := spec.AsTimestamp(n.now())
	var queries []notaryQuery
	for name, ids := range *body.ServerKeys {
		if _, _, ok := spec.ParseAndValidateServerName(spec.ServerName(name)); !ok {
			continue // nothing to say about a name that cannot exist
		}
		q := notaryQuery{server: spec.ServerName(name), minValid: now}
		for id, criteria := range ids {
			q.keyIDs = append(q.keyIDs, id)
			// "If not supplied, the notary server MUST use the current
			// time"; with several key ids the strictest wins.
			if criteria.MinimumValidUntilTS != nil && spec.Timestamp(*criteria.MinimumValidUntilTS) > q.minValid {
				q.minValid = spec.Timestamp(*criteria.MinimumValidUntilTS)
			}
		}
		queries = append(queries, q)
	}
	return n.answer(r.Context(), queries), nil
}

// notaryQuery asks for the keys of one server: keyIDs (all when empty),
// valid until at least minValid.
type notaryQuery struct {
	server   spec.ServerName
	keyIDs   []string
	minValid spec.Timestamp
}

// answer collects the signed documents for queries, fetching those the
// cache cannot answer well enough.
func (n *Notary) answer(ctx context.Context, queries []notaryQuery) keysResponse {
	results := make([][]json.RawMessage, len(queries))
	var wg sync.WaitGroup
	sem := make(chan struct{}, notaryFetchParallel)
	fetches := 0
	for i, q := range queries {
		if q.server == n.Keys.ServerName {
			results[i] = n.own()
			continue
		}
		docs, fresh := n.cached(ctx, q)
		if fresh || fetches >= maxNotaryFetches {
			results[i] = n.sign(docs)
			continue
		}
		fetches++
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			if _, err := n.Fetch.FetchServerKeys(ctx, q.server); err != nil {
				// keys_server.yaml: a notary keeps serving the last documents
				// it has of a server that does not answer.
				n.log().Debug("notary fetch failed", "server", q.server, "err", err)
			} else {
				docs, _ = n.cached(ctx, q)
			}
			results[i] = n.sign(docs)
		})
	}
	wg.Wait()
	resp := keysResponse{ServerKeys: []json.RawMessage{}}
	for _, r := range results {
		resp.ServerKeys = append(resp.ServerKeys, r...)
	}
	return resp
}

func (n *Notary) log() *slog.Logger {
	if n.Log != nil {
		return n.Log
	}
	return slog.New(slog.DiscardHandler)
}

// cached returns the kept documents answering q, one copy of each, and
// whether they are fresh enough to answer without fetching: every asked
// key is known, and the newest document is valid until minValid and
// within the first half of its lifetime (keys_server.yaml: "Intermediate
// notary servers should cache a response for half of its lifetime").
func (n *Notary) cached(ctx context.Context, q notaryQuery) ([][]byte, bool) {
	rows, err := n.DB.ServerKeyJSONs(ctx, string(q.server))
	if err != nil {
		n.log().Warn("notary cache", "server", q.server, "err", err)
		return nil, false
	}
	byID := make(map[string]sql.ServerKeyJSON, len(rows))
	for _, r := range rows {
		byID[r.KeyID] = r
	}
	var picked []sql.ServerKeyJSON
	fresh := len(rows) > 0
	if len(q.keyIDs) == 0 {
		picked = rows
	} else {
		for _, id := range q.keyIDs {
			r, ok := byID[id]
			if !ok {
				fresh = false
				continue
			}
			picked = append(picked, r)
		}
	}
	if len(rows) > 0 {
		newest := rows[0] // ServerKeyJSONs sorts newest fetch first
		halfLife := newest.FetchedTS + (newest.ValidUntilTS-newest.FetchedTS)/2
		now := n.now().UnixMilli()
		if newest.ValidUntilTS < int64(q.minValid) || now > halfLife {
			fresh = false
		}
	}
	seen := make(map[string]bool, len(picked))
	var docs [][]byte
	for _, r := range picked {
		if !seen[string(r.JSON)] {
			seen[string(r.JSON)] = true
			docs = append(docs, r.JSON)
		}
	}
	return docs, fresh
}

// sign adds our signature to each document, keeping its server's.
func (n *Notary) sign(docs [][]byte) []json.RawMessage {
	out := make([]json.RawMessage, 0, len(docs))
	for _, d := range docs {
		signed, err := gomatrixserverlib.SignJSON(string(n.Keys.ServerName), n.Keys.Key.ID, n.Keys.Key.Private, d)
		if err != nil {
			n.log().Warn("notary cannot sign a kept key document", "err", err)
			continue
		}
		out = append(out, signed)
	}
	return out
}

// own is our own key document, which the KeyServer signs.
func (n *Notary) own() []json.RawMessage {
	doc, err := n.Keys.SignedKeys(n.now())
	if err != nil {
		n.log().Error("cannot sign our own keys", "err", err)
		return nil
	}
	return []json.RawMessage{doc}
}
