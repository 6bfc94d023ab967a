package roomserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go"

	"github.com/weft-chat/weft/internal/bus"
	"github.com/weft-chat/weft/internal/mxhttp"
)

// Shards is how many input shards rooms are spread over. Each shard has one
// durable consumer processing one input at a time, which makes its
// process the only writer of the shard's rooms. Every process of a
// deployment must use the same number.
const Shards = 16

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
// waits for the consumers to finish their current input.
func (rs *Roomserver) Serve(ctx context.Context) (stop func(), err error) {
	var stops []func()
	stopAll := func() {
		for _, s := range stops {
			s()
		}
	}
	for shard := range Shards {
		subject := "room.input." + strconv.Itoa(shard)
		s, err := bus.Consume(ctx, rs.bus, bus.StreamRoomInput, "roomserver-"+strconv.Itoa(shard), subject, rs.handleEnvelope, bus.Ordered())
		if err != nil {
			stopAll()
			return nil, fmt.Errorf("roomserver shard %d: %w", shard, err)
		}
		stops = append(stops, s)
	}
	return stopAll, nil
}

// handleEnvelope runs an input and replies. Every outcome, refusals and
// internal failures alike, is replied and acknowledged: redelivering a
// refused input cannot change the answer, and the client retries failures
// with its transaction id, which the input id makes safe.
func (rs *Roomserver) handleEnvelope(ctx context.Context, env envelope) error {
	resp, err := rs.HandleInput(ctx, env.Req)
	var r reply
	if err != nil {
		var me *mxhttp.Error
		if !errors.As(err, &me) {
			rs.log.Error("room input failed", "room_id", env.Req.RoomID, "err", err)
			me = mxhttp.Internal(err)
		}
		r.Error = &inputError{Status: me.Status, Code: me.Code, Message: me.Message}
	} else {
		r.Resp = &resp
	}
	if env.Reply == "" {
		return nil
	}
	data, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode room input reply: %w", err)
	}
	if err := rs.bus.Conn().Publish(env.Reply, data); err != nil {
		rs.log.Warn("reply to room input", "err", err)
	}
	return nil
}

// Client submits inputs to whichever process owns the room's shard.
type Client struct {
	bus *bus.Bus
}

// NewClient makes a client on the bus.
func NewClient(b *bus.Bus) *Client { return &Client{bus: b} }

// Input submits req and waits for the roomserver's result: the events are
// committed when it returns without error. Refusals come back as Matrix
// errors (e.g. 403 M_FORBIDDEN from the auth rules).
func (c *Client) Input(ctx context.Context, req InputRequest) (InputResponse, error) {
	inbox := nats.NewInbox()
	sub, err := c.bus.Conn().SubscribeSync(inbox)
	if err != nil {
		return InputResponse{}, fmt.Errorf("room input inbox: %w", err)
	}
	defer sub.Unsubscribe()
	shardKey := req.RoomID
	if shardKey == "" {
		shardKey = req.InputID // a new room: any shard will do
	}
	if err := bus.Publish(ctx, c.bus, bus.RoomInputSubject(shardKey, Shards), envelope{Reply: inbox, Req: req}); err != nil {
		return InputResponse{}, fmt.Errorf("submit room input: %w", err)
	}
	msg, err := sub.NextMsgWithContext(ctx)
	if err != nil {
		return InputResponse{}, fmt.Errorf("wait for room input: %w", err)
	}
	var r reply
	if err := json.Unmarshal(msg.Data, &r); err != nil {
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
