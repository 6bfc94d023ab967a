// Package stateres resolves the states of forks of a room (spec: state
// resolution). This file holds its API until the algorithm lands.
package stateres

import (
	"context"
	"errors"

	"github.com/matrix-org/gomatrixserverlib"
)

// Key is a piece of state.
type Key = gomatrixserverlib.StateKeyTuple

// Loader returns the events with the given ids.
type Loader func(ctx context.Context, ids []string) (map[string]gomatrixserverlib.PDU, error)

// Resolve returns the resolved state of the given states.
func Resolve(ctx context.Context, ver gomatrixserverlib.IRoomVersion, states []map[Key]string, load Loader) (map[Key]string, error) {
	return nil, errors.New("state resolution of differing states is not built yet")
}
