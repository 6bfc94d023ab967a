package federation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/roomserver"
)

// Fetcher gets events and state from other servers for the roomserver
// (spec: "Retrieving events", "Backfilling and retrieving missing
// events"). Every event it returns passed verifyPDUs; the ones that did
// not are left out (get_missing_events) or fail the call (event).
type Fetcher struct {
	client *Client
	keys   gomatrixserverlib.JSONVerifier
	log    *slog.Logger
}

// NewFetcher makes a fetcher that asks through client and checks
// signatures with keys (a *KeyRing).
func NewFetcher(client *Client, keys gomatrixserverlib.JSONVerifier, log *slog.Logger) *Fetcher {
	log = logOr(log)
	return &Fetcher{client: client, keys: keys, log: log}
}

// MissingEvents implements roomserver.Fetcher: POST /get_missing_events.
// Events of another room, events that fail their checks and repeats are
// dropped; a server answering with more than limit events has only the
// newest limit kept (the ones next to latest, which the caller links
// first). The result is oldest first, by depth.
func (f *Fetcher) MissingEvents(ctx context.Context, server spec.ServerName, roomID string, ver gomatrixserverlib.IRoomVersion,
	earliest, latest []string, limit int, minDepth int64) ([]gomatrixserverlib.PDU, error) {
	resp, err := f.client.LookupMissingEvents(ctx, f.client.Origin(), server, roomID, fclient.MissingEvents{
		Limit: limit, MinDepth: int(minDepth), EarliestEvents: earliest, LatestEvents: latest}, ver.Version())
	if err != nil {
		return nil, fmt.Errorf("get_missing_events from %s: %w", server, err)
	}
	raws := make([]json.RawMessage, len(resp.Events))
	for i, ev := range resp.Events {
		raws[i] = json.RawMessage(ev)
	}
	pdus, errs, err := verifyPDUs(ctx, f.keys, ver, raws)
	if err != nil {
		return nil, err
	}
	out := make([]gomatrixserverlib.PDU, 0, len(pdus))
	seen := make(map[string]bool, len(pdus))
	for i, pdu := range pdus {
		switch {
		case errs[i] != nil:
			f.log.WarnContext(ctx, "federation: dropped a missing event that failed its checks", "server", server, "room_id", roomID, "err", errs[i])
		case pdu.RoomID().String() != roomID:
			f.log.WarnContext(ctx, "federation: dropped a missing event of another room", "server", server, "room_id", roomID,
				"event_id", pdu.EventID(), "event_room_id", pdu.RoomID().String())
		case !seen[pdu.EventID()]:
			seen[pdu.EventID()] = true
			out = append(out, pdu)
		}
	}
	slices.SortStableFunc(out, func(a, b gomatrixserverlib.PDU) int {
		switch {
		case a.Depth() < b.Depth():
			return -1
		case a.Depth() > b.Depth():
			return 1
		}
		return 0
	})
	if limit > 0 && len(out) > limit {
		out = out[len(out)-limit:]
	}
	return out, nil
}

// StateIDs implements roomserver.Fetcher: GET /state_ids. The ids are
// what the server claims; the events themselves are checked when fetched.
func (f *Fetcher) StateIDs(ctx context.Context, server spec.ServerName, roomID, eventID string) (state, authChain []string, err error) {
	resp, err := f.client.LookupStateIDs(ctx, f.client.Origin(), server, roomID, eventID)
	if err != nil {
		return nil, nil, fmt.Errorf("state_ids of %s from %s: %w", eventID, server, err)
	}
	return resp.StateEventIDs, resp.AuthEventIDs, nil
}

// Event implements roomserver.Fetcher: GET /event. It fails unless the
// server answers with exactly one event, the one asked for, that passes
// its checks (redacted if its content hash did not match).
func (f *Fetcher) Event(ctx context.Context, server spec.ServerName, ver gomatrixserverlib.IRoomVersion, eventID string) (gomatrixserverlib.PDU, error) {
	txn, err := f.client.GetEvent(ctx, f.client.Origin(), server, eventID)
	if err != nil {
		return nil, fmt.Errorf("event %s from %s: %w", eventID, server, err)
	}
	if len(txn.PDUs) != 1 {
		return nil, fmt.Errorf("event %s from %s: %d PDUs in the answer, want 1", eventID, server, len(txn.PDUs))
	}
	pdus, errs, err := verifyPDUs(ctx, f.keys, ver, txn.PDUs)
	if err != nil {
		return nil, err
	}
	if errs[0] != nil {
		return nil, fmt.Errorf("event %s from %s: %w", eventID, server, errs[0])
	}
	if got := pdus[0].EventID(); got != eventID {
		return nil, fmt.Errorf("event %s from %s: the server sent event %s instead", eventID, server, got)
	}
	return pdus[0], nil
}

// verifyPDUs parses PDUs received from another server in the room
// version ver and makes the spec's first checks on them ("Checks
// performed on receipt of a PDU", 1 to 3; "Validating hashes and
// signatures on received events"): every PDU, whoever relayed it, goes
// through here before the roomserver sees it.
//
// pdus[i] is raws[i] parsed, or nil when it did not parse; errs[i] is
// set when raws[i] must be dropped: it is not a valid event of the room
// version, or a signature the spec requires is missing or wrong (the
// sender's server; for room versions 1 and 2 the server of the event id;
// the authorising server of a restricted join; see signersOf). pdus[i]
// stays set for a PDU that parsed but failed its signatures, so that its
// event id can be named. A PDU whose content hash does not match comes
// back redacted, without error: the spec takes it for a redacted copy
// and keeps it so.
//
// The keys all the PDUs need are looked up in one call to keys (see
// verifySignatures), so a transaction of 50 PDUs costs one key lookup,
// not 50. err is a failure of keys itself (its database), not of
// the PDUs.
func verifyPDUs(ctx context.Context, keys gomatrixserverlib.JSONVerifier, ver gomatrixserverlib.IRoomVersion,
	raws []json.RawMessage) (pdus []gomatrixserverlib.PDU, errs []error, err error) {
	pdus = make([]gomatrixserverlib.PDU, len(raws))
	errs = make([]error, len(raws))
	if ver.Version() == gomatrixserverlib.RoomVersionPseudoIDs {
		// Their signatures are checked against the sender ids themselves,
		// which the key ring does not hold: refuse them rather than pass
		// them unchecked.
		for i := range errs {
			errs[i] = fmt.Errorf("room version %s is not supported", ver.Version())
		}
		return pdus, errs, nil
	}
	for i, raw := range raws {
		pdu, err := parsePDU(ver, raw)
		if err != nil {
			errs[i] = fmt.Errorf("invalid event: %w", err)
			continue
		}
		pdus[i] = pdu
	}
	if err := verifySignatures(ctx, keys, pdus, errs); err != nil {
		return nil, nil, err
	}
	return pdus, errs, nil
}

// verifySignatures checks the signatures of pdus (verifyPDUs), setting
// errs[i] for each that fails; nil entries and those with an error
// already are skipped. pdus[i] is replaced by the same event with its id
// worked out (see signedForms). keys is a *KeyRing: one call to it
// fetches the keys that all of them need (see verifySignedForms). err is
// a failure of keys itself.
func verifySignatures(ctx context.Context, keys gomatrixserverlib.JSONVerifier, pdus []gomatrixserverlib.PDU, errs []error) error {
	return verifySignedForms(ctx, keys, pdus, signedForms(pdus, errs), errs)
}

// parsePDU parses one PDU in the room version: its format, and its
// content hash (gomatrixserverlib redacts an event whose hash fails).
// Events over the byte limits of older room versions that the version
// still lets through are taken, as Synapse and Dendrite take them.
func parsePDU(ver gomatrixserverlib.IRoomVersion, raw []byte) (gomatrixserverlib.PDU, error) {
	// gomatrixserverlib's RoomID panics on a malformed room id: check it
	// first. Only a room version 12 create event has none.
	var head struct {
		RoomID   *string `json:"room_id"`
		Type     string  `json:"type"`
		StateKey *string `json:"state_key"`
	}
	if err := json.Unmarshal(raw, &head); err != nil {
		return nil, err
	}
	switch {
	case head.RoomID != nil:
		if _, err := spec.NewRoomID(*head.RoomID); err != nil {
			return nil, fmt.Errorf("room_id: %w", err)
		}
	case !ver.DomainlessRoomIDs() || head.Type != spec.MRoomCreate || head.StateKey == nil || *head.StateKey != "":
		return nil, errors.New("the event has no room_id")
	}
	pdu, err := ver.NewEventFromUntrustedJSON(raw)
	if err != nil {
		var verr gomatrixserverlib.EventValidationError
		if pdu == nil || !errors.As(err, &verr) || !verr.Persistable {
			return nil, err
		}
	}
	return pdu, nil
}

var _ roomserver.Fetcher = (*Fetcher)(nil)
