// Package bus is Weft's message bus: NATS JetStream, either embedded in the
// process (single-binary deployments, tests) or an external cluster.
//
// All streams are declared in streams.go. Publish/Consume move JSON-encoded
// values through JetStream (durable, at-least-once); Request/Serve do
// request-reply over core NATS (not persisted) for callers that need a
// result back.
package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Limits for the embedded server. They are modest because the embedded
// server shares the process with the homeserver; larger deployments are
// expected to run an external cluster.
const (
	embeddedMaxMemory = 256 << 20 // JetStream memory storage budget
	embeddedMaxStore  = 8 << 30   // JetStream file storage budget
	readyTimeout      = 10 * time.Second
	drainTimeout      = 10 * time.Second
	declareTimeout    = 30 * time.Second
)

// Config says where NATS is.
type Config struct {
	// URLs of an external NATS cluster. Empty means run an embedded server.
	URLs []string
	// StoreDir is the embedded JetStream file store directory; it is
	// created if missing. Ignored with URLs.
	StoreDir string
	// Listen is an optional "host:port" on which the embedded server also
	// accepts TCP clients (port 0 picks a free port). Empty means no
	// listener: the bus is reachable only in-process.
	Listen string
}

// Bus is a connection to NATS with Weft's streams declared. It is safe for
// concurrent use.
type Bus struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	srv    *server.Server // nil when connected to an external cluster
	log    *slog.Logger
	closed chan struct{} // closed by the connection's ClosedHandler

	closeOnce sync.Once
	closeErr  error
}

// Open starts the embedded server (connected in-process, with a TCP listener
// only if cfg.Listen is set, JetStream file store in cfg.StoreDir) or
// connects to the external cluster in cfg.URLs, then declares the streams.
// ctx bounds stream declaration, not the lifetime of the Bus; call Close.
func Open(ctx context.Context, cfg Config, log *slog.Logger) (*Bus, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "bus")
	b := &Bus{log: log, closed: make(chan struct{})}

	opts := []nats.Option{
		nats.Name("weft"),
		nats.DrainTimeout(drainTimeout),
		nats.ClosedHandler(func(*nats.Conn) { close(b.closed) }),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subj := ""
			if sub != nil {
				subj = sub.Subject
			}
			log.Warn("nats async error", "subject", subj, "err", err)
		}),
	}

	if len(cfg.URLs) == 0 {
		srv, err := startEmbedded(cfg, log)
		if err != nil {
			return nil, err
		}
		b.srv = srv
		opts = append(opts, nats.InProcessServer(srv))
	} else {
		// An external cluster can restart under us; keep reconnecting
		// forever rather than leave the homeserver with a dead bus.
		opts = append(opts,
			nats.MaxReconnects(-1),
			nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
				// err is nil for our own Drain/Close; only an unexpected
				// disconnect is worth a warning.
				if err != nil {
					log.Warn("nats disconnected", "err", err)
				}
			}),
			nats.ReconnectHandler(func(nc *nats.Conn) {
				log.Info("nats reconnected", "url", nc.ConnectedUrlRedacted())
			}),
		)
	}

	url := strings.Join(cfg.URLs, ",")
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		b.shutdownServer()
		return nil, fmt.Errorf("bus: connect to nats: %w", err)
	}
	b.nc = nc

	js, err := jetstream.New(nc)
	if err != nil {
		_ = b.Close()
		return nil, fmt.Errorf("bus: jetstream: %w", err)
	}
	b.js = js

	if err := b.declareStreams(ctx); err != nil {
		_ = b.Close()
		return nil, err
	}
	if b.srv != nil {
		log.Info("bus open", "mode", "embedded", "store_dir", cfg.StoreDir, "listen", cfg.Listen)
	} else {
		log.Info("bus open", "mode", "external", "url", nc.ConnectedUrlRedacted())
	}
	return b, nil
}

// startEmbedded runs an in-process NATS server with JetStream and waits until
// it accepts connections.
func startEmbedded(cfg Config, log *slog.Logger) (*server.Server, error) {
	if cfg.StoreDir == "" {
		return nil, errors.New("bus: StoreDir is required for the embedded server")
	}
	if err := os.MkdirAll(cfg.StoreDir, 0o750); err != nil {
		return nil, fmt.Errorf("bus: create store dir: %w", err)
	}
	opts := &server.Options{
		ServerName:         "weft",
		JetStream:          true,
		StoreDir:           cfg.StoreDir,
		JetStreamMaxMemory: embeddedMaxMemory,
		JetStreamMaxStore:  embeddedMaxStore,
		// The process owns signal handling; the server must not exit or
		// reload on SIGTERM/SIGHUP by itself.
		NoSigs: true,
		// Logs go through slog (see natsLogger), never to stdout.
		NoLog:      true,
		DontListen: cfg.Listen == "",
	}
	if cfg.Listen != "" {
		host, portStr, err := net.SplitHostPort(cfg.Listen)
		if err != nil {
			return nil, fmt.Errorf("bus: listen address %q: %w", cfg.Listen, err)
		}
		port, err := strconv.Atoi(portStr)
		if err != nil || port < 0 || port > 65535 {
			return nil, fmt.Errorf("bus: listen address %q: bad port", cfg.Listen)
		}
		if port == 0 {
			// For nats-server, Port 0 means the default 4222; a free port
			// has to be asked for explicitly.
			port = server.RANDOM_PORT
		}
		opts.Host, opts.Port = host, port
	}

	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("bus: new nats server: %w", err)
	}
	srv.SetLoggerV2(natsLogger{log: log.With("component", "nats-server")}, false, false, false)
	srv.Start()
	if !srv.ReadyForConnections(readyTimeout) {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, fmt.Errorf("bus: embedded nats server not ready after %s", readyTimeout)
	}
	return srv, nil
}

// declareStreams creates or updates every stream in the streams table, so
// that restarts and config changes converge on the same declaration.
func (b *Bus) declareStreams(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, declareTimeout)
	defer cancel()
	for _, cfg := range streams {
		if _, err := b.js.CreateOrUpdateStream(ctx, cfg); err != nil {
			return fmt.Errorf("bus: declare stream %s: %w", cfg.Name, err)
		}
	}
	return nil
}

// Close drains the connection (pending publishes and acks are flushed,
// subscriptions finish their in-flight messages), then shuts the embedded
// server down and waits for it. It is idempotent: later calls return the
// first call's result.
func (b *Bus) Close() error {
	b.closeOnce.Do(func() {
		if err := b.nc.Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
			b.closeErr = fmt.Errorf("bus: drain: %w", err)
			b.nc.Close()
		}
		// Drain is asynchronous; the ClosedHandler fires when it is done.
		// DrainTimeout bounds it, the extra second covers the close itself.
		select {
		case <-b.closed:
		case <-time.After(drainTimeout + time.Second):
			b.nc.Close()
		}
		b.shutdownServer()
		b.log.Info("bus closed")
	})
	return b.closeErr
}

func (b *Bus) shutdownServer() {
	if b.srv == nil {
		return
	}
	b.srv.Shutdown()
	b.srv.WaitForShutdown()
}

// Conn returns the underlying NATS connection, for core NATS use not covered
// by this package.
func (b *Bus) Conn() *nats.Conn { return b.nc }

// JetStream returns the JetStream context, for stream and consumer operations
// not covered by this package.
func (b *Bus) JetStream() jetstream.JetStream { return b.js }

// natsLogger routes the embedded server's logs into slog. Notices go to debug
// because the server is chatty at startup and its notices are not
// actionable for a homeserver operator; warnings and errors keep their level.
type natsLogger struct{ log *slog.Logger }

func (l natsLogger) Noticef(format string, v ...any) { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l natsLogger) Warnf(format string, v ...any)   { l.log.Warn(fmt.Sprintf(format, v...)) }

// Fatalf only logs: the standard nats logger would exit the process, which
// an embedded server must never do to its host.
func (l natsLogger) Fatalf(format string, v ...any) { l.log.Error(fmt.Sprintf(format, v...)) }
func (l natsLogger) Errorf(format string, v ...any) { l.log.Error(fmt.Sprintf(format, v...)) }
func (l natsLogger) Debugf(format string, v ...any) { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l natsLogger) Tracef(format string, v ...any) { l.log.Debug(fmt.Sprintf(format, v...)) }
