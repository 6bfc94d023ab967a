package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Defaults for Consume. AckWait is generous because handlers write to the
// database; NakDelay keeps a failing handler from spinning.
const (
	defaultMaxAckPending = 16
	defaultAckWait       = 30 * time.Second
	defaultNakDelay      = time.Second
	// maxPrefetch caps how many messages are buffered client-side: buffered
	// messages sit unprocessed while their AckWait runs, so a large buffer
	// behind a slow handler turns into spurious redeliveries.
	maxPrefetch = 32
	ackTimeout  = 5 * time.Second
	pullExpiry  = 2 * time.Second
)

// Publish sends v as JSON to subject on JetStream and waits for the stream's
// ack, so a nil error means the message is stored. subject must be captured
// by one of the declared streams, otherwise the publish fails with no
// responders rather than silently going nowhere.
func Publish[T any](ctx context.Context, b *Bus, subject string, v T) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("bus: encode %s: %w", subject, err)
	}
	if _, err := b.js.Publish(ctx, subject, data); err != nil {
		return fmt.Errorf("bus: publish %s: %w", subject, err)
	}
	return nil
}

// ConsumeOption tunes Consume.
type ConsumeOption func(*consumeConfig)

type consumeConfig struct {
	maxAckPending int
	ackWait       time.Duration
	nakDelay      time.Duration
	memoryState   bool
	pinned        bool
}

// Ordered makes the consumer strictly ordered: MaxAckPending 1, so the server
// hands out the next message only after the previous one was acked, even
// across redeliveries and across processes sharing the durable. Use it when
// message N+1 must not be processed before message N succeeded.
func Ordered() ConsumeOption {
	return func(c *consumeConfig) { c.maxAckPending = 1 }
}

// MaxAckPending sets how many messages may be delivered but not yet acked
// (default 16). Values above 1 allow a failed message to be redelivered after
// later ones; use Ordered when that matters.
func MaxAckPending(n int) ConsumeOption {
	return func(c *consumeConfig) {
		if n > 0 {
			c.maxAckPending = n
		}
	}
}

// AckWait sets how long the server waits for an ack before redelivering
// (default 30s). It must exceed the slowest handler run.
func AckWait(d time.Duration) ConsumeOption {
	return func(c *consumeConfig) {
		if d > 0 {
			c.ackWait = d
		}
	}
}

// MemoryState keeps the consumer's delivery state in memory instead of
// writing it to the store several times a second. Only for work-queue
// streams (ROOM_INPUT), where an acked message is deleted from the stream
// itself: after a restart the state starts empty and the consumer is
// handed every message still in the stream, which are exactly those never
// acked. It spares the store the state writes, a visible cost with one
// consumer per room shard.
func MemoryState() ConsumeOption {
	return func(c *consumeConfig) { c.memoryState = true }
}

// Pinned makes the server hand the consumer's messages to one process at
// a time (a JetStream pinned priority group): the process pinned first
// keeps them until it stops pulling for pinnedTTL. With it, a consumer
// that handles its messages in order in batches (MaxAckPending above 1)
// keeps that order across processes sharing the durable; without it, each
// process would be handed messages of its own, in parallel.
func Pinned() ConsumeOption {
	return func(c *consumeConfig) { c.pinned = true }
}

// pinGroup is the priority group pinned consumers pull in, and pinnedTTL
// how long the server keeps a pin whose process no longer pulls: an idle
// consumer pulls every pullExpiry, so a live process keeps its pin, and a
// stopped one hands over within pinnedTTL.
const (
	pinGroup  = "pinned"
	pinnedTTL = 5 * time.Second
)

// NakDelay sets how long a message whose handler failed waits before it is
// redelivered (default 1s).
func NakDelay(d time.Duration) ConsumeOption {
	return func(c *consumeConfig) {
		if d > 0 {
			c.nakDelay = d
		}
	}
}

// Consume runs handle for every message on the durable consumer durable of
// stream, filtered by subject (empty = whole stream). The consumer is created
// or updated before Consume returns; a new durable starts at the beginning of
// the stream, an existing one resumes where it was acked up to, also across
// restarts.
//
// Messages are handled one at a time, in delivery order, on one goroutine.
// When handle returns nil the message is acked (and the ack confirmed by the
// server before the next message, so the durable position is never behind
// what was handled); when it returns an error the message is NAKed and
// redelivered after the NakDelay. A message that does not decode as T is
// terminated and logged, since redelivery cannot fix it. Delivery is
// at-least-once: handlers must be idempotent.
//
// Consuming stops when ctx ends or stop is called. stop blocks until the
// goroutine has exited (the handler in flight, if any, has returned) and may
// be called any number of times. On a WorkQueue stream (ROOM_INPUT) the
// server rejects consumers with overlapping filters.
func Consume[T any](ctx context.Context, b *Bus, stream, durable, subject string, handle func(context.Context, T) error, opts ...ConsumeOption) (stop func(), err error) {
	cfg := consumeConfig{
		maxAckPending: defaultMaxAckPending,
		ackWait:       defaultAckWait,
		nakDelay:      defaultNakDelay,
	}
	for _, o := range opts {
		o(&cfg)
	}
	it, err := messages(ctx, b, stream, durable, subject, cfg)
	if err != nil {
		return nil, err
	}

	log := b.log.With("stream", stream, "durable", durable)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer it.Stop()
		for {
			msg, ok := next(ctx, log, it)
			if !ok {
				return
			}
			handleMsg(ctx, log, msg, handle, cfg.nakDelay)
		}
	}()

	return func() {
		cancel()
		<-done
	}, nil
}

// messages creates or updates the durable consumer and starts pulling.
func messages(ctx context.Context, b *Bus, stream, durable, subject string, cfg consumeConfig) (jetstream.MessagesContext, error) {
	if cfg.memoryState {
		// The server cannot change where a consumer keeps its state, so
		// a durable made before MemoryState is replaced. Nothing is lost:
		// the messages are the work queue's, and the new consumer is
		// handed every one still there.
		if old, err := b.js.Consumer(ctx, stream, durable); err == nil && !old.CachedInfo().Config.MemoryStorage {
			if err := b.js.DeleteConsumer(ctx, stream, durable); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
				return nil, fmt.Errorf("bus: replace consumer %s on %s: %w", durable, stream, err)
			}
		}
	}
	ccfg := jetstream.ConsumerConfig{
		Durable:       durable,
		FilterSubject: subject,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       cfg.ackWait,
		MaxAckPending: cfg.maxAckPending,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		MaxDeliver:    -1,
		MemoryStorage: cfg.memoryState,
	}
	pull := []jetstream.PullMessagesOpt{jetstream.PullMaxMessages(min(cfg.maxAckPending, maxPrefetch)), jetstream.PullExpiry(pullExpiry)}
	if cfg.pinned {
		ccfg.PriorityPolicy, ccfg.PriorityGroups, ccfg.PinnedTTL = jetstream.PriorityPolicyPinned, []string{pinGroup}, pinnedTTL
		pull = append(pull, jetstream.PullPriorityGroup(pinGroup))
	}
	cons, err := b.js.CreateOrUpdateConsumer(ctx, stream, ccfg)
	if err != nil {
		return nil, fmt.Errorf("bus: consumer %s on %s: %w", durable, stream, err)
	}
	// A short pull expiry: after a NAK the iterator is sometimes left
	// without a live pull request until the last one expires, which
	// delays the redelivery by as much (30s by default; seen with
	// nats.go 1.55 and nats-server 2.15). An idle consumer renews its
	// pull every pullExpiry instead.
	it, err := cons.Messages(pull...)
	if err != nil {
		return nil, fmt.Errorf("bus: consume %s on %s: %w", durable, stream, err)
	}
	return it, nil
}

// next waits for the next message; false when consuming must stop.
func next(ctx context.Context, log *slog.Logger, it jetstream.MessagesContext) (jetstream.Msg, bool) {
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err == nil {
			return msg, true
		}
		if ctx.Err() != nil {
			return nil, false
		}
		if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
			// Connection closed (Bus.Close) or consumer deleted.
			log.Debug("consumer stopped", "err", err)
			return nil, false
		}
		// Non-terminal (the iterator stays usable); a terminal error is
		// followed by ErrMsgIteratorClosed.
		log.Warn("consumer error", "err", err)
	}
}

// stopIterator stops it and waits, briefly, until it has unsubscribed.
func stopIterator(it jetstream.MessagesContext) {
	it.Stop()
	c, ok := it.(interface{ Closed() <-chan struct{} })
	if !ok {
		return
	}
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		select {
		case <-c.Closed():
			return
		default:
		}
	}
}

// handleMsg decodes, handles and acks or NAKs one message.
func handleMsg[T any](ctx context.Context, log *slog.Logger, msg jetstream.Msg, handle func(context.Context, T) error, nakDelay time.Duration) {
	var v T
	if err := json.Unmarshal(msg.Data(), &v); err != nil {
		log.Error("dropping undecodable message", "subject", msg.Subject(), "err", err)
		_ = msg.Term()
		return
	}
	if err := handle(ctx, v); err != nil {
		var delivered uint64
		if md, mdErr := msg.Metadata(); mdErr == nil {
			delivered = md.NumDelivered
		}
		log.Warn("handler failed, will redeliver", "subject", msg.Subject(), "delivered", delivered, "err", err)
		if ctx.Err() != nil {
			// Shutting down: let another consumer have it right away.
			_ = msg.Nak()
			return
		}
		if err := msg.NakWithDelay(nakDelay); err != nil {
			log.Warn("nak failed", "err", err)
		}
		return
	}
	// Confirmed ack even if ctx just ended: the work is done and must not be
	// redone after a restart.
	ackCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ackTimeout)
	defer cancel()
	if err := msg.DoubleAck(ackCtx); err != nil {
		log.Warn("ack failed, message may be redelivered", "subject", msg.Subject(), "err", err)
	}
}
