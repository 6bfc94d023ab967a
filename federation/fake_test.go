package federation

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/serverkey"
)

// fakeServers is an in-memory federation for the key ring: each server
// publishes its key document; GetServerKeys and LookupServerKeys answer
// as the real endpoints would, and count their calls.
type fakeServers struct {
	mu      sync.Mutex
	servers map[spec.ServerName]*fakeServer
	direct  map[spec.ServerName]int
	lookups map[spec.ServerName]int
}

type fakeServer struct {
	keys *KeyServer
	down bool
}

func newFakeServers() *fakeServers {
	return &fakeServers{servers: map[spec.ServerName]*fakeServer{}, direct: map[spec.ServerName]int{}, lookups: map[spec.ServerName]int{}}
}

// add makes a server with a fresh key publishing documents valid for
// validity.
func (f *fakeServers) add(t testing.TB, name spec.ServerName, validity time.Duration) *fakeServer {
	t.Helper()
	k, err := serverkey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	s := &fakeServer{keys: &KeyServer{ServerName: name, Key: k, Validity: validity}}
	f.mu.Lock()
	f.servers[name] = s
	f.mu.Unlock()
	return s
}

func (f *fakeServers) set(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn()
}

func (f *fakeServers) directCalls(name spec.ServerName) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.direct[name]
}

func (f *fakeServers) doc(name spec.ServerName) ([]byte, error) {
	s := f.servers[name]
	if s == nil || s.down {
		return nil, errors.New("connection refused")
	}
	return s.keys.SignedKeys(time.Now())
}

func (f *fakeServers) GetServerKeys(_ context.Context, name spec.ServerName) (gomatrixserverlib.ServerKeys, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.direct[name]++
	var keys gomatrixserverlib.ServerKeys
	raw, err := f.doc(name)
	if err != nil {
		return keys, err
	}
	err = json.Unmarshal(raw, &keys)
	return keys, err
}

// LookupServerKeys plays a notary that has every server's current
// document at hand.
func (f *fakeServers) LookupServerKeys(_ context.Context, notary spec.ServerName, reqs map[gomatrixserverlib.PublicKeyLookupRequest]spec.Timestamp) ([]gomatrixserverlib.ServerKeys, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lookups[notary]++
	n := f.servers[notary]
	if n == nil || n.down {
		return nil, errors.New("connection refused")
	}
	seen := map[spec.ServerName]bool{}
	var out []gomatrixserverlib.ServerKeys
	for req := range reqs {
		if seen[req.ServerName] {
			continue
		}
		seen[req.ServerName] = true
		s := f.servers[req.ServerName]
		if s == nil {
			continue
		}
		raw, err := s.keys.SignedKeys(time.Now())
		if err != nil {
			return nil, err
		}
		if raw, err = gomatrixserverlib.SignJSON(string(notary), n.keys.Key.ID, n.keys.Key.Private, raw); err != nil {
			return nil, err
		}
		var keys gomatrixserverlib.ServerKeys
		if err := json.Unmarshal(raw, &keys); err != nil {
			return nil, err
		}
		out = append(out, keys)
	}
	return out, nil
}

// signedBy returns a JSON object signed by server s.
func signedBy(t *testing.T, s *fakeServer, content string) []byte {
	t.Helper()
	out, err := gomatrixserverlib.SignJSON(string(s.keys.ServerName), s.keys.Key.ID, s.keys.Key.Private, []byte(content))
	if err != nil {
		t.Fatal(err)
	}
	return out
}
