package federation

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"

	"github.com/matrix-org/gomatrixserverlib/spec"
)

// EDUHandler handles the content (a JSON object) of one EDU that origin
// sent in a transaction. It returns an error only for a failure worth a
// retry (storage): the transaction then fails with a 500, is not
// recorded, and the sender sends it again, so a handler must tolerate
// seeing an EDU twice. Content it cannot use (malformed, spoofed, for
// users not ours) it drops, logging, and returns nil: a retry would not
// change it.
type EDUHandler func(ctx context.Context, origin spec.ServerName, content json.RawMessage) error

// EDURegistry maps EDU types to their handlers; each feature registers
// the types it handles (m.direct_to_device, m.typing, m.receipt, …).
// EDUs of types nobody registered are ignored, as the spec lets servers
// ignore EDUs they do not understand.
type EDURegistry struct {
	mu       sync.RWMutex
	handlers map[string]EDUHandler
}

// NewEDURegistry makes an empty registry.
func NewEDURegistry() *EDURegistry {
	return &EDURegistry{handlers: make(map[string]EDUHandler)}
}

// Register makes h the handler of eduType; a type has one handler, and a
// second registration of it is an error.
func (r *EDURegistry) Register(eduType string, h EDUHandler) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.handlers[eduType]; dup {
		return fmt.Errorf("federation: EDU type %s already has a handler", eduType)
	}
	r.handlers[eduType] = h
	return nil
}

// handler returns eduType's handler, or nil.
func (r *EDURegistry) handler(eduType string) EDUHandler {
	if r == nil {
		return nil
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.handlers[eduType]
}
