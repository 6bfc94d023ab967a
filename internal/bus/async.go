package bus

import (
	"context"
	"encoding/json"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ConsumeAsync is Consume for handlers that do better with several
// messages at once (one database transaction for many inputs) and that
// finish them later than they receive them and in any order, so that a
// message whose work waits (on a database commit, say) does not hold up
// the messages behind it. handle is called on the consumer's goroutine with each batch as it
// forms (the first message waiting and every one already arrived, at most
// maxBatch) and must return without waiting for the work: it calls
// finish once for the batch when the work is done, nil to ack the batch,
// an error to NAK it for redelivery after the NakDelay. finish may be
// called from any goroutine. Its acks are not confirmed: no order between
// batches has to be kept, and an ack that got lost only brings its message
// back after the AckWait, as a crash would, which the handler must bear
// anyway.
//
// Up to MaxAckPending messages (default maxBatch; maxBatch is capped at
// the client-side prefetch limit) are unfinished at a time: the server hands out no more
// until some are acked. Order is the handler's business: messages are
// handed over in delivery order, but a NAKed one comes back after later
// ones. Stopping waits for every batch handed over to be finished; those
// finished with an error while stopping, and those not handed over yet,
// are handed back. Everything else is as with Consume.
func ConsumeAsync[T any](ctx context.Context, b *Bus, stream, durable, subject string, maxBatch int,
	handle func(ctx context.Context, vals []T, finish func(error)), opts ...ConsumeOption) (stop func(), err error) {
	maxBatch = min(max(maxBatch, 1), maxPrefetch)
	cfg := consumeConfig{
		maxAckPending: maxBatch,
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
	arrived := make(chan jetstream.Msg, min(cfg.maxAckPending, maxPrefetch))
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		defer close(arrived)
		for {
			msg, ok := next(ctx, log, it)
			if !ok {
				break
			}
			arrived <- msg
		}
		it.Drain()
		for {
			msg, err := it.Next(jetstream.NextMaxWait(time.Second))
			if err != nil {
				return
			}
			arrived <- msg
		}
	}()

	// Batches handed over and not finished yet, and the messages to hand
	// back (NAK) once the iterator no longer listens: the server
	// redelivers a NAKed message at once, to any pull request still
	// waiting, and one of ours would take it with it.
	var (
		inFlight sync.WaitGroup
		mu       sync.Mutex
		handBack []jetstream.Msg
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for first := range arrived {
			batch := []jetstream.Msg{first}
		more:
			for len(batch) < maxBatch {
				select {
				case m, ok := <-arrived:
					if !ok {
						break more
					}
					batch = append(batch, m)
				default:
					break more
				}
			}
			if ctx.Err() != nil {
				mu.Lock()
				handBack = append(handBack, batch...)
				mu.Unlock()
				continue
			}
			vals, msgs := decodeBatch[T](log, batch)
			if len(msgs) == 0 {
				continue
			}
			inFlight.Add(1)
			var once sync.Once
			handle(ctx, vals, func(err error) {
				once.Do(func() {
					defer inFlight.Done()
					if err != nil && ctx.Err() != nil {
						mu.Lock()
						handBack = append(handBack, msgs...)
						mu.Unlock()
						return
					}
					if err != nil {
						finishBatch(ctx, log, msgs, err, cfg.nakDelay)
						return
					}
					for _, msg := range msgs {
						if err := msg.Ack(); err != nil {
							log.Warn("ack failed, message may be redelivered", "subject", msg.Subject(), "err", err)
						}
					}
				})
			})
		}
		<-readerDone
		inFlight.Wait()
		stopIterator(it)
		for _, m := range handBack {
			_ = m.Nak()
		}
	}()

	return func() {
		cancel()
		<-done
	}, nil
}

// decodeBatch decodes a batch's messages, terminating (and logging) those
// that do not decode, since redelivery cannot fix them. It returns the
// values and the messages they came from.
func decodeBatch[T any](log *slog.Logger, batch []jetstream.Msg) ([]T, []jetstream.Msg) {
	vals := make([]T, 0, len(batch))
	msgs := batch[:0]
	for _, msg := range batch {
		var v T
		if err := json.Unmarshal(msg.Data(), &v); err != nil {
			log.Error("dropping undecodable message", "subject", msg.Subject(), "err", err)
			_ = msg.Term()
			continue
		}
		vals, msgs = append(vals, v), append(msgs, msg)
	}
	return vals, msgs
}

// finishBatch acks a batch whose handling succeeded, NAKs one that failed.
func finishBatch(ctx context.Context, log *slog.Logger, msgs []jetstream.Msg, err error, nakDelay time.Duration) {
	if err != nil {
		log.Warn("batch handler failed, will redeliver", "messages", len(msgs), "err", err)
		for _, msg := range msgs {
			if err := msg.NakWithDelay(nakDelay); err != nil {
				log.Warn("nak failed", "err", err)
			}
		}
		return
	}
	// The acks travel in order on one connection and the server handles
	// them in order, so the confirmed ack of the last message confirms the
	// ones before it: one round trip per batch.
	last := len(msgs) - 1
	for _, msg := range msgs[:last] {
		if err := msg.Ack(); err != nil {
			log.Warn("ack failed, message may be redelivered", "subject", msg.Subject(), "err", err)
		}
	}
	ackCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ackTimeout)
	defer cancel()
	if err := msgs[last].DoubleAck(ackCtx); err != nil {
		log.Warn("ack failed, message may be redelivered", "subject", msgs[last].Subject(), "err", err)
	}
}
