package e2ee

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sync"
	"time"
)

// DefaultRemoteTimeout is how long /keys/query and /keys/claim wait for
// other servers when the request names no timeout (the spec's
// recommended 10 seconds).
const DefaultRemoteTimeout = 10 * time.Second

// RemoteKeys asks another server about its users' keys (the federation
// /user/keys/query and /user/keys/claim). The service owns the interface
// so that it does not depend on the federation client.
type RemoteKeys interface {
	// QueryKeys returns the keys of users of server: all their devices
	// when a user's list is empty.
	QueryKeys(ctx context.Context, server string, deviceKeys map[string][]string) (RemoteQuery, error)
	// ClaimKeys claims one key per device (user → device → algorithm)
	// and returns them as user → device → key id → key.
	ClaimKeys(ctx context.Context, server string, oneTimeKeys map[string]map[string]string) (map[string]map[string]map[string]json.RawMessage, error)
}

// DeviceListResync refetches the cached device lists of other servers'
// users (the federation's device-list cache; see fromCache).
type DeviceListResync interface {
	// ResyncStale fetches the lists of those of the users whose cache is
	// stale, waiting for them until ctx ends.
	ResyncStale(ctx context.Context, userIDs []string) error
}

// WithDeviceListResync makes /keys/query refetch, through r, the stale
// cached lists of the users asked about before answering, within half
// the time it gives other servers; those still stale are asked for as
// the users not cached.
func WithDeviceListResync(r DeviceListResync) Option {
	return func(s *Service) { s.resync = r }
}

// RemoteQuery is another server's answer to a key query. It has no
// user-signing keys: servers do not share them.
type RemoteQuery struct {
	DeviceKeys      map[string]map[string]json.RawMessage `json:"device_keys"`
	MasterKeys      map[string]json.RawMessage            `json:"master_keys"`
	SelfSigningKeys map[string]json.RawMessage            `json:"self_signing_keys"`
}

// RemoteError is an error answer of another server, which a RemoteKeys
// returns so that the failure entry carries the server's status.
type RemoteError struct {
	Status  int
	Message string
}

func (e *RemoteError) Error() string { return e.Message }

// WithRemoteKeys makes the service ask other servers, through r, about
// their users' keys. Without it they are listed in "failures".
func WithRemoteKeys(r RemoteKeys) Option {
	return func(s *Service) { s.remote = r }
}

// remoteFailure is the "failures" entry of a server that did not answer,
// in Synapse's shape: the status the server gave (503 when it gave none,
// as when it is unreachable or too slow) and a message.
func remoteFailure(err error) map[string]any {
	var re *RemoteError
	if errors.As(err, &re) {
		return map[string]any{"status": re.Status, "message": re.Message}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return map[string]any{"status": http.StatusServiceUnavailable, "message": "Timed out waiting for the server"}
	}
	return map[string]any{"status": http.StatusServiceUnavailable, "message": err.Error()}
}

// fanOut runs ask for each server concurrently, within timeout, and
// returns a function that waits for all of them; the context of the
// asks ends when the wait returns or cancel is called, whichever is
// first. merge runs in the waiting goroutine, one server at a time.
func fanOut[T any](ctx context.Context, servers []string, timeout time.Duration,
	ask func(ctx context.Context, server string) (T, error)) (wait func(merge func(server string, v T, err error)), cancel func()) {
	ctx, cancel = context.WithTimeout(ctx, timeout)
	type answer struct {
		server string
		v      T
		err    error
	}
	// Buffered: an ask whose waiter has gone (the local part failed)
	// still ends.
	answers := make(chan answer, len(servers))
	var wg sync.WaitGroup
	for _, srv := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err := ask(ctx, srv)
			answers <- answer{srv, v, err}
		}()
	}
	return func(merge func(string, T, error)) {
		defer cancel()
		wg.Wait()
		close(answers)
		for a := range answers {
			merge(a.server, a.v, a.err)
		}
	}, cancel
}

// mergeRemoteQuery adds a server's answer to res, for the users it was
// asked about only: a server speaks for its own users, and only the
// caller's own server hands out user-signing keys.
func mergeRemoteQuery(res *QueryResult, asked map[string][]string, q RemoteQuery) {
	for userID := range asked {
		if devs, ok := q.DeviceKeys[userID]; ok && devs != nil {
			res.DeviceKeys[userID] = devs
		}
		if k, ok := q.MasterKeys[userID]; ok && len(k) > 0 && string(k) != "null" {
			res.MasterKeys[userID] = k
		}
		if k, ok := q.SelfSigningKeys[userID]; ok && len(k) > 0 && string(k) != "null" {
			res.SelfSigningKeys[userID] = k
		}
	}
}

// queryRemote starts asking each server of byServer (server → user →
// devices) for its users' keys; the returned wait merges the answers into
// res and lists the servers that failed or were too slow in its failures.
// Without a RemoteKeys every server is a failure.
func (s *Service) queryRemote(ctx context.Context, byServer map[string]map[string][]string, timeout time.Duration) (wait func(res *QueryResult), cancel func()) {
	if s.remote == nil || len(byServer) == 0 {
		return func(res *QueryResult) {
			for srv := range byServer {
				res.Failures[srv] = failure("M_UNRECOGNIZED", "Querying keys of users on other servers is not supported")
			}
		}, func() {}
	}
	servers := make([]string, 0, len(byServer))
	for srv := range byServer {
		servers = append(servers, srv)
	}
	w, cancel := fanOut(ctx, servers, timeout, func(ctx context.Context, srv string) (RemoteQuery, error) {
		return s.remote.QueryKeys(ctx, srv, byServer[srv])
	})
	return func(res *QueryResult) {
		w(func(srv string, q RemoteQuery, err error) {
			if err != nil {
				res.Failures[srv] = remoteFailure(err)
				return
			}
			mergeRemoteQuery(res, byServer[srv], q)
		})
	}, cancel
}

// claimRemote is queryRemote for /keys/claim.
func (s *Service) claimRemote(ctx context.Context, byServer map[string]map[string]map[string]string, timeout time.Duration) (wait func(res *ClaimResult), cancel func()) {
	if s.remote == nil || len(byServer) == 0 {
		return func(res *ClaimResult) {
			for srv := range byServer {
				res.Failures[srv] = failure("M_UNRECOGNIZED", "Claiming keys of users on other servers is not supported")
			}
		}, func() {}
	}
	servers := make([]string, 0, len(byServer))
	for srv := range byServer {
		servers = append(servers, srv)
	}
	w, cancel := fanOut(ctx, servers, timeout, func(ctx context.Context, srv string) (map[string]map[string]map[string]json.RawMessage, error) {
		return s.remote.ClaimKeys(ctx, srv, byServer[srv])
	})
	return func(res *ClaimResult) {
		w(func(srv string, keys map[string]map[string]map[string]json.RawMessage, err error) {
			if err != nil {
				res.Failures[srv] = remoteFailure(err)
				return
			}
			for userID, asked := range byServer[srv] {
				for deviceID := range asked {
					if k := keys[userID][deviceID]; len(k) > 0 {
						if res.OneTimeKeys[userID] == nil {
							res.OneTimeKeys[userID] = map[string]map[string]json.RawMessage{}
						}
						res.OneTimeKeys[userID][deviceID] = k
					}
				}
			}
		})
	}, cancel
}
