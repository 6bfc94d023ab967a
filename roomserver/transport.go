package roomserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/nats-io/nats.go"

	"github.com/weft-chat/weft/internal/bus"
	"github.com/weft-chat/weft/internal/mxhttp"
)

// Shards is how many input shards rooms are spread over. Each shard has one
// durable consumer, which makes its process the writer of the shard's
// rooms. Every process of a deployment must use the same number.
//
// A consumer takes up to maxShardInFlight inputs at a time, so with
// several processes two of them may hold inputs of one shard at once. The room
// row's check at commit (sql.ErrStale) keeps one writer per room in the
// database all the same: the later writer's events are built again on the
// room as the earlier one left it. Pinning each consumer to one process
// (JetStream priority groups) would spare those rebuilds.
const Shards = 16

// maxInputBatch is how many queued inputs of a room are handled
// together, in one transaction. Batches form only under load: a lone
// input is handled at once.
const maxInputBatch = 32

// maxShardInFlight is how many inputs of a shard may be taken from the
// bus and not yet handled: a room's next batch queues up while its
// current one commits, and other rooms' inputs meanwhile.
const maxShardInFlight = 4 * maxInputBatch

// envelope is an input on the ROOM_INPUT stream with the inbox that waits
// for its result.
type envelope struct {
	Reply string       `json:"reply"`
	Req   InputRequest `json:"req"`
}

// reply is the result sent back to the inbox.
type reply struct {
	Resp  *InputResponse `json:"resp,omitempty"`
	Error *inputError    `json:"error,omitempty"`
}

// Serve starts one consumer per shard. It returns a stop function that
// waits for the inputs taken to be handled.
func (rs *Roomserver) Serve(ctx context.Context) (stop func(), err error) {
	d := newDispatcher(rs.handleEnvelopes)
	var stops []func()
	stopAll := func() {
		for _, s := range stops {
			s()
		}
		d.stop()
	}
	for shard := range Shards {
		subject := "room.input." + strconv.Itoa(shard)
		s, err := bus.ConsumeAsync(ctx, rs.bus, bus.StreamRoomInput, "roomserver-"+strconv.Itoa(shard), subject, maxInputBatch, d.handle,
			// The inputs are a work queue, and the database, not the
			// consumer's position, says what was done (the input ids).
			bus.MemoryState(), bus.MaxAckPending(maxShardInFlight))
		if err != nil {
			stopAll()
			return nil, fmt.Errorf("roomserver shard %d: %w", shard, err)
		}
		stops = append(stops, s)
	}
	return stopAll, nil
}

// handleEnvelopes runs a batch of inputs and replies to each. Every
// outcome, refusals and internal failures alike, is replied and
// acknowledged: redelivering a refused input cannot change the answer, and
// the client retries failures with its transaction id, which the input id
// makes safe.
func (rs *Roomserver) handleEnvelopes(ctx context.Context, envs []envelope) error {
	reqs := make([]InputRequest, len(envs))
	for i, env := range envs {
		reqs[i] = env.Req
	}
	results := rs.handleInputs(ctx, reqs)
	for i, env := range envs {
		var r reply
		if err := results[i].err; err != nil {
			var me *mxhttp.Error
			if !errors.As(err, &me) {
				rs.log.Error("room input failed", "room_id", env.Req.RoomID, "err", err)
				me = mxhttp.Internal(err)
			}
			r.Error = &inputError{Status: me.Status, Code: me.Code, Message: me.Message}
		} else {
			r.Resp = &results[i].resp
		}
		if env.Reply == "" {
			continue
		}
		data, err := json.Marshal(r)
		if err != nil {
			return fmt.Errorf("encode room input reply: %w", err)
		}
		if err := rs.bus.Conn().Publish(env.Reply, data); err != nil {
			rs.log.Warn("reply to room input", "err", err)
		}
	}
	return nil
}

// Client submits inputs to whichever process owns the room's shard.
type Client struct {
	bus *bus.Bus

	// Replies come to one subscription, <inbox>.<n>, and are handed to
	// the waiting Input by n: a subscription per input would cost a
	// subscribe, an unsubscribe and a large buffer each time.
	once    sync.Once
	inbox   string
	initErr error
	seq     atomic.Uint64
	mu      sync.Mutex
	waiting map[string]chan []byte
}

// NewClient makes a client on the bus.
func NewClient(b *bus.Bus) *Client { return &Client{bus: b} }

func (c *Client) subscribe() error {
	c.once.Do(func() {
		c.inbox = nats.NewInbox()
		c.waiting = make(map[string]chan []byte)
		prefix := len(c.inbox) + 1
		_, c.initErr = c.bus.Conn().Subscribe(c.inbox+".*", func(m *nats.Msg) {
			if len(m.Subject) <= prefix {
				return
			}
			c.mu.Lock()
			ch := c.waiting[m.Subject[prefix:]]
			delete(c.waiting, m.Subject[prefix:])
			c.mu.Unlock()
			if ch != nil {
				ch <- m.Data // buffered: never blocks
			}
		})
	})
	return c.initErr
}

// Input submits req and waits for the roomserver's result: the events are
// committed when it returns without error. Refusals come back as Matrix
// errors (e.g. 403 M_FORBIDDEN from the auth rules).
func (c *Client) Input(ctx context.Context, req InputRequest) (InputResponse, error) {
	if err := c.subscribe(); err != nil {
		return InputResponse{}, fmt.Errorf("room input inbox: %w", err)
	}
	token := strconv.FormatUint(c.seq.Add(1), 36)
	ch := make(chan []byte, 1)
	c.mu.Lock()
	c.waiting[token] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.waiting, token)
		c.mu.Unlock()
	}()
	shardKey := req.RoomID
	if shardKey == "" {
		shardKey = req.InputID // a new room: any shard will do
	}
	if err := bus.Publish(ctx, c.bus, bus.RoomInputSubject(shardKey, Shards), envelope{Reply: c.inbox + "." + token, Req: req}); err != nil {
		return InputResponse{}, fmt.Errorf("submit room input: %w", err)
	}
	var data []byte
	select {
	case data = <-ch:
	case <-ctx.Done():
		return InputResponse{}, fmt.Errorf("wait for room input: %w", ctx.Err())
	}
	var r reply
	if err := json.Unmarshal(data, &r); err != nil {
		return InputResponse{}, fmt.Errorf("decode room input reply: %w", err)
	}
	if r.Error != nil {
		return InputResponse{}, r.Error.matrix()
	}
	if r.Resp == nil {
		return InputResponse{}, errors.New("room input reply has no result")
	}
	return *r.Resp, nil
}

// API is the roomserver as the other components use it: inputs go over the
// bus to the room's writer; reads come straight from the database.
type API struct {
	*Client
	*Roomserver
}
