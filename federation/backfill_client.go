package federation

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/roomserver"
)

// Limits of one round of backfill.
const (
	// backfillLimit bounds how many events a round asks a server for:
	// the most a server answers (Synapse's limit, and ours).
	backfillLimit = backfillMaxLimit
	// backfillServers bounds the servers a round tries, one after the
	// other, until one answers with history.
	backfillServers = 5
	// backfillInputBytes bounds the events of one input, which travels
	// on the bus (whose messages are 1 MiB at most): a larger answer goes
	// in several, newest first, each the history before the one before.
	backfillInputBytes = 512 << 10
)

// BackfillRooms is what the Backfiller needs of the roomserver
// (roomserver.API has it): which gaps in a room's history to fill, and
// the input that stores what fills them.
type BackfillRooms interface {
	BackfillFrom(ctx context.Context, roomID string, prevs []string) (version string, from []string, err error)
	Input(ctx context.Context, req roomserver.InputRequest) (roomserver.InputResponse, error)
}

// JoinedServers lists the servers with users joined to a room, those
// longest in it first (sql.DB has it).
type JoinedServers interface {
	JoinedServersByAge(ctx context.Context, roomID string) ([]string, error)
}

// Backfiller fetches history missing from what this server has of a
// room from the other servers in it (spec: "Backfilling and retrieving
// missing events", GET /backfill) and hands it to the roomserver as a
// Backfill input: the sync API's /messages calls it when a backwards
// page reaches a gap in a room's history here (the start of it, for a
// server that joined the room late). A round asks for the events before
// the gaps' missing prev events that the roomserver lets it claim
// (roomserver.BackfillFrom), from the servers with users joined to the
// room, those longest in it first, until one answers with events the
// roomserver places.
type Backfiller struct {
	client  *Client
	keys    gomatrixserverlib.JSONVerifier
	servers JoinedServers
	rooms   BackfillRooms
	log     *slog.Logger

	mu       sync.Mutex
	inFlight map[string]*backfillRound
}

// backfillRound is a round in flight; those asked for meanwhile in the
// same room wait for its result rather than fetch the same events again.
type backfillRound struct {
	done chan struct{}
	n    int
	err  error
}

// NewBackfiller makes a backfiller that asks through client, checks
// signatures with keys (a *KeyRing) and finds a room's servers with
// servers (a *sql.DB).
func NewBackfiller(client *Client, keys gomatrixserverlib.JSONVerifier, servers JoinedServers, rooms BackfillRooms, log *slog.Logger) *Backfiller {
	log = logOr(log)
	return &Backfiller{client: client, keys: keys, servers: servers, rooms: rooms, log: log, inFlight: make(map[string]*backfillRound)}
}

// Backfill runs one round for a room, asking for up to limit events
// before the missing prev events from, and returns how many events the
// roomserver placed in its history: none when it has nothing to ask for
// (the gaps are filled, or backing off, or before history hidden from
// this server, or this server is not in the room, or no other server
// is). It fails when no server answered with events the roomserver could
// use, with what each server did. A round asked for while another runs
// in the same room waits for that one's result.
func (b *Backfiller) Backfill(ctx context.Context, roomID string, from []string, limit int) (int, error) {
	b.mu.Lock()
	r, running := b.inFlight[roomID]
	if !running {
		r = &backfillRound{done: make(chan struct{})}
		b.inFlight[roomID] = r
	}
	b.mu.Unlock()
	if running {
		select {
		case <-r.done:
			return r.n, r.err
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	r.n, r.err = b.round(ctx, roomID, from, min(max(limit, 1), backfillLimit))
	b.mu.Lock()
	delete(b.inFlight, roomID)
	b.mu.Unlock()
	close(r.done)
	return r.n, r.err
}

func (b *Backfiller) round(ctx context.Context, roomID string, prevs []string, limit int) (int, error) {
	version, from, err := b.rooms.BackfillFrom(ctx, roomID, prevs)
	if err != nil || len(from) == 0 {
		return 0, err
	}
	ver, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(version))
	if err != nil {
		return 0, err
	}
	servers, err := b.servers.JoinedServersByAge(ctx, roomID)
	if err != nil || !slices.Contains(servers, string(b.client.Origin())) {
		// Servers answer /backfill to the servers in the room only.
		return 0, err
	}
	var failures []error
	tried := 0
	for _, s := range servers {
		server := spec.ServerName(s)
		if server == b.client.Origin() {
			continue
		}
		if tried++; tried > backfillServers {
			break
		}
		evs, err := b.fetch(ctx, server, roomID, ver, from, limit)
		if err != nil {
			failures = append(failures, err)
			continue
		}
		placed := 0
		for len(evs) > 0 {
			n, size := 0, 0
			for n < len(evs) && (n == 0 || size+len(evs[n].JSON()) <= backfillInputBytes) {
				size += len(evs[n].JSON())
				n++
			}
			raws := make([]json.RawMessage, n)
			for i, e := range evs[:n] {
				raws[i] = e.JSON()
			}
			evs = evs[n:]
			resp, err := b.rooms.Input(ctx, roomserver.InputRequest{RoomID: roomID,
				Backfill: &roomserver.BackfillRequest{Origin: s, From: from, Events: raws}})
			if err != nil {
				return placed, fmt.Errorf("backfill %s from %s: %w", roomID, s, err)
			}
			placed += len(resp.EventIDs)
		}
		if placed > 0 {
			return placed, nil
		}
		failures = append(failures, fmt.Errorf("%s answered no history before %v", s, from))
	}
	// No other server in the room: nobody to ask, nothing failed.
	return 0, errors.Join(failures...)
}

// fetch asks server for up to limit events before from and returns those
// that pass their checks (redacted where their content hash failed),
// newest first.
func (b *Backfiller) fetch(ctx context.Context, server spec.ServerName, roomID string, ver gomatrixserverlib.IRoomVersion,
	from []string, limit int) ([]gomatrixserverlib.PDU, error) {
	txn, err := b.client.Backfill(ctx, b.client.Origin(), server, roomID, limit, from)
	if err != nil {
		return nil, fmt.Errorf("backfill from %s: %w", server, err)
	}
	raws := txn.PDUs
	if len(raws) > limit {
		// More than asked for: servers answer newest first, and the
		// newest are the ones next to our history.
		raws = raws[:limit]
	}
	pdus, errs, err := verifyPDUs(ctx, b.keys, ver, raws)
	if err != nil {
		return nil, err
	}
	out := make([]gomatrixserverlib.PDU, 0, len(pdus))
	for i, pdu := range pdus {
		switch {
		case errs[i] != nil:
			b.log.WarnContext(ctx, "federation: dropped a backfilled event that failed its checks", "server", server, "room_id", roomID, "err", errs[i])
		case pdu.RoomID().String() != roomID:
			b.log.WarnContext(ctx, "federation: dropped a backfilled event of another room", "server", server, "room_id", roomID,
				"event_id", pdu.EventID())
		default:
			out = append(out, pdu)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s answered no usable events before %v", server, from)
	}
	slices.SortStableFunc(out, func(a, b gomatrixserverlib.PDU) int { return cmp.Compare(b.Depth(), a.Depth()) })
	return out, nil
}
