package presence

import (
	"context"
	"time"

	"github.com/weft-chat/weft/internal/periodic"
	"github.com/weft-chat/weft/sql"
)

const (
	// SweepInterval is how often each process applies the due timeouts.
	// A timeout fires up to this late, against Synapse's 5 s wheel timer.
	SweepInterval = 5 * time.Second
	// sweepBatch bounds the rows one transaction of a sweep moves.
	sweepBatch = 500
	// sweepBatches bounds the batches of one sweep, so that a backlog
	// (after a long stop) drains over a few ticks instead of one.
	sweepBatches = 20
)

// Start runs the sweeper every SweepInterval until ctx ends or the
// returned stop is called; stop waits for the sweeper to finish. Every
// process may run one: their writes are conditional, so a user moved by
// one process is left alone by the others.
func (s *Service) Start(ctx context.Context) (stop func()) {
	return periodic.Start(ctx, SweepInterval, func(ctx context.Context) {
		if _, err := s.Sweep(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("presence sweep", "err", err)
		}
	})
}

// Sweep applies the timeouts due now and returns how many users' presence
// changed in a way clients see; those users' rooms are woken.
func (s *Service) Sweep(ctx context.Context) (int, error) {
	changed := 0
	for range sweepBatches {
		now := ms(s.now())
		due, err := s.db.DuePresence(ctx, now, sweepBatch)
		if err != nil {
			return changed, err
		}
		changes := make([]sql.PresenceChange, 0, len(due))
		for _, p := range due {
			o := onTimeout(p, now)
			if o.next.TimerTS == p.TimerTS && !o.write {
				continue
			}
			changes = append(changes, sql.PresenceChange{Prev: p, Next: o.next, Notify: o.notify})
		}
		applied, err := s.db.ApplyPresence(ctx, changes)
		if err != nil {
			return changed, err
		}
		var woken []string
		var rows []sql.Presence
		for i, c := range changes {
			if applied[i] {
				s.hints.Forget(c.Prev.UserID)
			}
			if applied[i] && c.Notify {
				woken = append(woken, c.Prev.UserID)
				rows = append(rows, c.Next)
			}
		}
		changed += len(woken)
		s.wakeFor(ctx, woken)
		s.federate(ctx, rows)
		if len(due) < sweepBatch {
			break
		}
	}
	return changed, nil
}
