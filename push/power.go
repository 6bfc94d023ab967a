package push

import (
	"context"
	"fmt"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/roomserver"
	"github.com/weft-chat/weft/sql"
)

// powerCacheMax bounds the state snapshots whose power levels are kept.
// A snapshot never changes, and the events of a room that change no state
// share the snapshot before them, so a room's messages read their power
// levels once.
const powerCacheMax = 10_000

var (
	createKey = sql.StateKey{Type: spec.MRoomCreate}
	powerKey  = sql.StateKey{Type: spec.MRoomPowerLevels}
)

// powerAt returns the power levels in force before ev: those its sender's
// rights are judged by (as Synapse evaluates push rules with the power
// levels of the event's auth events, not the room's current ones).
func (c *Counter) powerAt(ctx context.Context, ev sql.Event) (roomserver.Power, error) {
	if p, ok := c.powers.Get(ev.StateBeforeNID); ok {
		return p, nil
	}
	keys, err := c.db.SnapshotKeys(ctx, ev.StateBeforeNID, []sql.StateKey{createKey, powerKey})
	if err != nil {
		return roomserver.Power{}, fmt.Errorf("power levels before %s: %w", ev.EventID, err)
	}
	var nids []int64
	for _, nid := range keys {
		nids = append(nids, nid)
	}
	evs, err := c.db.EventsByNID(ctx, nids)
	if err != nil {
		return roomserver.Power{}, fmt.Errorf("power levels before %s: %w", ev.EventID, err)
	}
	var create, pl gomatrixserverlib.PDU
	for _, e := range evs {
		pdu, err := roomserver.ParseStored(e)
		if err != nil {
			return roomserver.Power{}, err
		}
		switch e.NID {
		case keys[createKey]:
			create = pdu
		case keys[powerKey]:
			pl = pdu
		}
	}
	p := roomserver.PowerFrom(create, pl)
	c.powers.Put(ev.StateBeforeNID, p)
	return p, nil
}

// powerAfter keeps power, the power levels before ev, as those of the
// state after it too, unless ev may change them: the room's next event
// stands on that state, and finds them without a read (the roomserver
// knows the state after the events this process committed lately).
func (c *Counter) powerAfter(ev sql.Event, pdu gomatrixserverlib.PDU, power roomserver.Power) {
	if t := pdu.Type(); t == spec.MRoomPowerLevels || t == spec.MRoomCreate {
		return
	}
	if after, ok := c.rooms.StateAfter(ev.EventID); ok && after != ev.StateBeforeNID {
		c.powers.Put(after, power)
	}
}
