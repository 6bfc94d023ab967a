package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// Tail runs handle for every message published on subject of stream from
// now on, in order, on one goroutine. It uses an ephemeral ordered
// consumer: no acks, no durable state on the server, and the client
// library recreates it (from the last message seen) after a gap or a lost
// connection. It is for in-memory consumers that every process runs for
// itself and that rebuild from the database after a restart, such as the
// sync notifier's wake-ups: a message published while no process tails it
// is never seen. Messages that do not decode as T are logged and skipped.
//
// Tailing stops when ctx ends or stop is called; stop blocks until the
// goroutine has exited and may be called any number of times.
func Tail[T any](ctx context.Context, b *Bus, stream, subject string, handle func(context.Context, T)) (stop func(), err error) {
	cons, err := b.js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subject},
		DeliverPolicy:  jetstream.DeliverNewPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("bus: tail %s on %s: %w", subject, stream, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return nil, fmt.Errorf("bus: tail %s on %s: %w", subject, stream, err)
	}
	log := b.log.With("stream", stream, "tail", subject)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer it.Stop()
		for {
			msg, err := it.Next(jetstream.NextContext(ctx))
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
					log.Debug("tail stopped", "err", err)
					return
				}
				log.Warn("tail error", "err", err)
				continue
			}
			var v T
			if err := json.Unmarshal(msg.Data(), &v); err != nil {
				log.Error("skipping undecodable message", "subject", msg.Subject(), "err", err)
				continue
			}
			handle(ctx, v)
		}
	}()
	return func() {
		cancel()
		<-done
	}, nil
}
