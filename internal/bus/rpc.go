package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

const flushTimeout = 5 * time.Second

// envelope is the reply wire format of Serve. Carrying ok/error beside the
// result lets a handler error reach the requester as an error instead of a
// zero value or a timeout.
type envelope struct {
	OK     bool            `json:"ok"`
	Error  string          `json:"error,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
}

// RemoteError is returned by Request when the serving handler failed (as
// opposed to transport failures such as no responders or a timeout), so
// callers can tell "the request was processed and refused" from "nobody
// processed it".
type RemoteError struct {
	Subject string
	Msg     string
}

// Error implements error.
func (e *RemoteError) Error() string {
	return fmt.Sprintf("bus: %s: remote: %s", e.Subject, e.Msg)
}

// Request sends req as JSON to subject over core NATS and decodes the reply
// of a Serve handler. It is not persisted: if no server is subscribed it
// fails at once with nats.ErrNoResponders, otherwise it waits until ctx ends,
// so give ctx a deadline. A handler error comes back as *RemoteError.
//
// subject must not be captured by a stream: JetStream would answer the
// request itself with a publish ack. Request and Serve refuse such subjects.
func Request[Req, Resp any](ctx context.Context, b *Bus, subject string, req Req) (Resp, error) {
	var zero Resp
	if err := checkRPCSubject(subject); err != nil {
		return zero, err
	}
	data, err := json.Marshal(req)
	if err != nil {
		return zero, fmt.Errorf("bus: encode request %s: %w", subject, err)
	}
	msg, err := b.nc.RequestWithContext(ctx, subject, data)
	if err != nil {
		return zero, fmt.Errorf("bus: request %s: %w", subject, err)
	}
	var env envelope
	if err := json.Unmarshal(msg.Data, &env); err != nil {
		return zero, fmt.Errorf("bus: decode reply %s: %w", subject, err)
	}
	if !env.OK {
		return zero, &RemoteError{Subject: subject, Msg: env.Error}
	}
	var resp Resp
	if len(env.Result) > 0 {
		if err := json.Unmarshal(env.Result, &resp); err != nil {
			return zero, fmt.Errorf("bus: decode result %s: %w", subject, err)
		}
	}
	return resp, nil
}

// Serve answers requests on subject (wildcards allowed) as a member of queue
// group queue, so running Serve in several processes spreads requests over
// them and each request is handled once. Requests are handled one at a time
// per Serve call. A handler error, or a request that does not decode, is
// returned to the requester as an error.
//
// The subscription is registered with the server before Serve returns.
// Serving stops when ctx ends or stop is called; stop lets requests already
// received finish (the subscription is drained), blocks until the handler
// has returned, and may be called any number of times. handle receives a
// context derived from ctx.
func Serve[Req, Resp any](ctx context.Context, b *Bus, subject, queue string, handle func(context.Context, Req) (Resp, error)) (stop func(), err error) {
	if err := checkRPCSubject(subject); err != nil {
		return nil, err
	}
	log := b.log.With("subject", subject, "queue", queue)
	ctx, cancel := context.WithCancel(ctx)

	sub, err := b.nc.QueueSubscribe(subject, queue, func(m *nats.Msg) {
		env := serveOne(ctx, m.Data, handle)
		data, err := json.Marshal(env)
		if err != nil {
			// Resp itself does not encode; still answer so the requester
			// does not wait for its timeout.
			data, _ = json.Marshal(envelope{Error: "encode result: " + err.Error()})
		}
		if err := m.Respond(data); err != nil {
			log.Warn("reply failed", "err", err)
		}
	})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("bus: serve %s: %w", subject, err)
	}
	done := make(chan struct{})
	// The closed handler runs after the last callback has returned, whether
	// the subscription was drained or the connection closed.
	sub.SetClosedHandler(func(string) { close(done) })
	// Flush so the server knows the subscription before Serve returns;
	// otherwise an immediate Request could see no responders. ctx is a
	// lifetime context, usually without a deadline, hence FlushTimeout.
	if err := b.nc.FlushTimeout(flushTimeout); err != nil {
		_ = sub.Unsubscribe()
		<-done
		cancel()
		return nil, fmt.Errorf("bus: serve %s: flush: %w", subject, err)
	}

	shutdown := sync.OnceFunc(func() { _ = sub.Drain() })
	go func() {
		select {
		case <-ctx.Done():
		case <-done:
		}
		shutdown()
		<-done
		cancel()
	}()
	return func() {
		shutdown()
		<-done
	}, nil
}

// serveOne decodes and handles one request, turning every failure into an
// error envelope.
func serveOne[Req, Resp any](ctx context.Context, data []byte, handle func(context.Context, Req) (Resp, error)) envelope {
	var req Req
	if err := json.Unmarshal(data, &req); err != nil {
		return envelope{Error: "decode request: " + err.Error()}
	}
	resp, err := handle(ctx, req)
	if err != nil {
		return envelope{Error: err.Error()}
	}
	result, err := json.Marshal(resp)
	if err != nil {
		return envelope{Error: "encode result: " + err.Error()}
	}
	return envelope{OK: true, Result: result}
}

// errStreamSubject is wrapped by Request and Serve for subjects a stream
// captures.
var errStreamSubject = errors.New("subject is captured by a JetStream stream; request-reply needs a subject outside the streams")

func checkRPCSubject(subject string) error {
	for _, s := range streams {
		for _, ss := range s.Subjects {
			if subjectsOverlap(subject, ss) {
				return fmt.Errorf("bus: %s (stream %s): %w", subject, s.Name, errStreamSubject)
			}
		}
	}
	return nil
}

// subjectsOverlap reports whether some literal subject matches both a and b,
// which may contain '*' and '>' wildcards.
func subjectsOverlap(a, b string) bool {
	at, bt := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; ; i++ {
		switch {
		case i == len(at) && i == len(bt):
			return true
		case i == len(at) || i == len(bt):
			return false
		case at[i] == ">" || bt[i] == ">":
			return true
		case at[i] == "*" || bt[i] == "*" || at[i] == bt[i]:
			continue
		default:
			return false
		}
	}
}
