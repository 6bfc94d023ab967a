package clientapi

import (
	"context"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/weft-chat/weft/roomserver"
	"github.com/weft-chat/weft/sql"
)

// Rooms is what the client API needs of the roomserver (roomserver.API
// provides it): inputs, which return once committed, and reads.
type Rooms interface {
	Input(ctx context.Context, req roomserver.InputRequest) (roomserver.InputResponse, error)
	PreviousInput(ctx context.Context, inputID string) (roomserver.InputResponse, bool, error)
	Event(ctx context.Context, eventID string) (sql.Event, gomatrixserverlib.PDU, error)
	RoomVersion(ctx context.Context, roomID string) (string, error)
	CurrentStateEvent(ctx context.Context, roomID, eventType, stateKey string) (gomatrixserverlib.PDU, error)
	CurrentState(ctx context.Context, roomID string) ([]gomatrixserverlib.PDU, error)
	StateBefore(ctx context.Context, ev sql.Event) ([]gomatrixserverlib.PDU, error)
	Membership(ctx context.Context, roomID, userID string) (string, error)
	RoomsWithMembership(ctx context.Context, userID, membership string) ([]string, error)
	Power(ctx context.Context, roomID string) (roomserver.Power, error)
	VisibleTo(ctx context.Context, userID, currentMembership string, ev sql.Event) (bool, error)
	LastEventAt(ctx context.Context, roomID string, streamPos int64) (sql.Event, gomatrixserverlib.PDU, error)
	RecentTransactions
}

var _ Rooms = roomserver.API{}
