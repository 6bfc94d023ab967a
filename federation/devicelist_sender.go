package federation

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/nats-io/nats.go"

	"github.com/weft-chat/weft/e2ee"
	"github.com/weft-chat/weft/internal/wake"
	"github.com/weft-chat/weft/sql"
)

// deviceListBatch is how many users' changes one pass of the sender
// reads.
const deviceListBatch = 100

// kindDevice names a device in what was sent about a user.
const kindDevice = "device"

// DeviceListSender tells other servers about changes of this server's
// users' devices and cross-signing keys (spec: "Servers must send
// m.device_list_update EDUs to all the servers who share a room with a
// given local user ... whenever that user's device list changes"). It
// follows the device_lists stream, where every change is recorded in the
// transaction that makes it (new device keys, deleted devices, new
// cross-signing keys or signatures), and compares each changed user's
// keys with what it last sent about them: a device whose keys are new or
// changed gets an update, a device gone a deleted one, and new master or
// self-signing keys an m.signing_key_update. What it sent, its place in
// the stream and the EDUs are written in one transaction, so a crash
// loses nothing and sends nothing twice; processes sharing the database
// take turns at that place.
//
// Device display names are not sent, as Synapse by default
// (allow_device_name_lookup_over_federation) and as /user/devices.
type DeviceListSender struct {
	db         *sql.DB
	queue      *Queue
	keys       *e2ee.Service
	serverName spec.ServerName
	log        *slog.Logger
	// kick asks the loop for a pass; one pending kick covers any number.
	kick chan struct{}
}

// NewDeviceListSender makes the sender of serverName's users' device
// lists, reading their keys through keys and sending through queue.
func NewDeviceListSender(db *sql.DB, queue *Queue, keys *e2ee.Service, serverName spec.ServerName, log *slog.Logger) *DeviceListSender {
	return &DeviceListSender{db: db, queue: queue, keys: keys, serverName: serverName, log: logOr(log), kick: make(chan struct{}, 1)}
}

// Start sends what the stream holds beyond the sender's place (changes
// made while no process sent), then a pass whenever a wake-up on nc
// names a local user, as every device-list change wakes its user's syncs
// (wake.Subject). stop ends the loop and waits for it.
func (s *DeviceListSender) Start(ctx context.Context, nc *nats.Conn) (stop func(), err error) {
	sub, err := wake.Subscribe(nc, func(m wake.Message) {
		if slices.ContainsFunc(m.Users, func(u string) bool { return userOf(u, s.serverName) }) {
			s.Notify()
		}
	})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	s.Notify()
	wg.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-s.kick:
			}
			for {
				more, err := s.pass(ctx)
				if err != nil && ctx.Err() == nil {
					s.log.Error("federation: send device list updates", "err", err)
				}
				if err != nil || !more {
					break
				}
			}
		}
	})
	return func() { _ = sub.Unsubscribe(); cancel(); wg.Wait() }, nil
}

// Notify asks for a pass over the changes not sent yet.
func (s *DeviceListSender) Notify() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// userKeys is what a pass sends about a user: their devices' keys by id,
// and their master and self-signing keys by type.
type userKeys struct {
	devices map[string]json.RawMessage
	cross   map[string]json.RawMessage
}

// pass sends the updates of one batch of changed users; more reports
// that the batch was full (or that another process moved first) and
// another pass should follow.
func (s *DeviceListSender) pass(ctx context.Context) (more bool, err error) {
	from, err := s.db.DeviceListOutboundPos(ctx)
	if err != nil {
		return false, err
	}
	changes, err := s.db.LocalDeviceListChanges(ctx, string(s.serverName), from, deviceListBatch)
	if err != nil || len(changes) == 0 {
		return false, err
	}
	users := make(map[string][]string, len(changes))
	for _, c := range changes {
		users[c.UserID] = []string{}
	}
	// The keys are read after the changes committed, so they hold at
	// least those changes.
	res, err := s.keys.QueryKeys(ctx, "", users)
	if err != nil {
		return false, err
	}
	current := make(map[string]userKeys, len(users))
	for u := range users {
		k := userKeys{devices: map[string]json.RawMessage{}, cross: map[string]json.RawMessage{}}
		for id, js := range res.DeviceKeys[u] {
			if k.devices[id], err = withoutDisplayName(js); err != nil {
				return false, err
			}
		}
		if js, ok := res.MasterKeys[u]; ok {
			k.cross[sql.CrossSigningMaster] = js
		}
		if js, ok := res.SelfSigningKeys[u]; ok {
			k.cross[sql.CrossSigningSelfSigning] = js
		}
		current[u] = k
	}
	var dests []spec.ServerName
	err = s.db.WithTx(ctx, func(q *sql.Queries) error {
		if err := q.AdvanceDeviceListOutbound(ctx, from, changes[len(changes)-1].Pos); err != nil {
			return err
		}
		userIDs := slices.Sorted(maps.Keys(users))
		servers, err := userDestinations(ctx, q, s.serverName, userIDs)
		if err != nil {
			return err
		}
		var edus []EDU
		for _, u := range userIDs {
			contents, err := s.updatesOf(ctx, q, u, current[u])
			if err != nil {
				return err
			}
			for _, c := range contents {
				edus = append(edus, eduFor(servers[u], c.eduType, c.content)...)
			}
		}
		dests = destinationsOf(edus)
		return s.queue.StoreEDUs(ctx, q, edus)
	})
	if errors.Is(err, sql.ErrMoved) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	s.queue.Wake(dests...)
	return len(changes) == deviceListBatch, nil
}

// eduContent is an EDU's type and content, for every destination alike.
type eduContent struct {
	eduType string
	content json.RawMessage
}

// updatesOf compares a user's keys with what was last sent about them,
// records the new state in q and returns the EDUs to send: an
// m.device_list_update per device changed or gone, in a chain of
// stream_ids that continues the user's sequence, and an
// m.signing_key_update when their master or self-signing key changed.
func (s *DeviceListSender) updatesOf(ctx context.Context, q *sql.Queries, userID string, cur userKeys) ([]eduContent, error) {
	last, sent, err := q.DeviceListSent(ctx, userID)
	if err != nil {
		return nil, err
	}
	record := map[sql.DeviceListSentKey]string{}
	var updates []deviceListUpdate
	for _, id := range slices.Sorted(maps.Keys(cur.devices)) {
		key := sql.DeviceListSentKey{Kind: kindDevice, DeviceID: id}
		if h := hashOf(cur.devices[id]); sent[key] != h {
			record[key] = h
			updates = append(updates, deviceListUpdate{UserID: userID, DeviceID: id, Keys: cur.devices[id]})
		}
	}
	for _, key := range slices.SortedFunc(maps.Keys(sent), func(a, b sql.DeviceListSentKey) int {
		return cmp.Or(strings.Compare(a.Kind, b.Kind), strings.Compare(a.DeviceID, b.DeviceID))
	}) {
		if _, ok := cur.devices[key.DeviceID]; key.Kind == kindDevice && !ok {
			record[key] = ""
			updates = append(updates, deviceListUpdate{UserID: userID, DeviceID: key.DeviceID, Deleted: true})
		}
	}
	signing := false
	for _, typ := range []string{sql.CrossSigningMaster, sql.CrossSigningSelfSigning} {
		key := sql.DeviceListSentKey{Kind: typ}
		h := ""
		if js, ok := cur.cross[typ]; ok {
			h = hashOf(js)
		}
		if sent[key] != h {
			record[key] = h
			signing = true
		}
	}
	if len(record) == 0 {
		return nil, nil
	}
	var out []eduContent
	for i := range updates {
		u := &updates[i]
		u.PrevID = []int64{}
		if last > 0 {
			u.PrevID = []int64{last}
		}
		last++
		u.StreamID = last
		raw, err := json.Marshal(u)
		if err != nil {
			return nil, err
		}
		out = append(out, eduContent{DeviceListUpdateEDUType, raw})
	}
	if signing {
		raw, err := json.Marshal(signingKeyUpdate{UserID: userID, MasterKey: cur.cross[sql.CrossSigningMaster],
			SelfSigningKey: cur.cross[sql.CrossSigningSelfSigning]})
		if err != nil {
			return nil, err
		}
		out = append(out, eduContent{SigningKeyUpdateEDUType, raw})
	}
	return out, q.RecordDeviceListSent(ctx, userID, last, record)
}

// hashOf is the hash under which what was sent is remembered.
func hashOf(js []byte) string {
	sum := sha256.Sum256(js)
	return hex.EncodeToString(sum[:])
}
