package server

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/auditsink"
	"github.com/mandate-dev/mandate/internal/sqlstore"
)

// buildTrail builds the audit chain's checkpointer and checks the chain's tail against the last
// signed checkpoint. A tail that does not verify is logged as an ERROR and shown by
// mandate_audit_chain_ok, but the server starts: an operator must be able to investigate.
func (s *Server) buildTrail(ctx context.Context, masters [][]byte, reg prometheus.Registerer, now func() time.Time) error {
	keys, err := audit.NewCheckpointKeys(masters...)
	if err != nil {
		return err
	}
	chainOK := prometheus.NewGauge(prometheus.GaugeOpts{Name: "mandate_audit_chain_ok",
		Help: "1 when the audit chain's last verification (the tail at start, or mandate audit verify) found it intact, 0 when it did not."})
	chainOK.Set(1)
	reg.MustRegister(chainOK)
	s.trail = audit.NewCheckpointer(audit.CheckpointerConfig{
		Store: s.store, Keys: keys, Issuer: s.cfg.Issuer,
		Events: int64(s.cfg.AuditCheckpointEvents), Interval: s.cfg.AuditCheckpointInterval,
		Retention: s.cfg.AuditRetention,
		Floor:     s.retentionFloor(),
		OnVerify: func(ok bool) {
			if ok {
				chainOK.Set(1)
			} else {
				chainOK.Set(0)
			}
		},
		Log: s.log, Now: now,
	})
	return s.checkTail(ctx)
}

// retentionFloor keeps retention from removing an event a sink has not shipped; nil without
// sinks.
func (s *Server) retentionFloor() audit.RetentionFloor {
	if s.sinks == nil {
		return nil
	}
	return s.sinks.Delivered
}

// checkTail verifies the chain from the last signed checkpoint on, and says loudly when it does
// not match.
func (s *Server) checkTail(ctx context.Context) error {
	rep, ok, err := s.trail.CheckTail(ctx)
	switch {
	case err != nil:
		return fmt.Errorf("check the audit chain's tail: %w", err)
	case !ok:
		s.log.Info("the audit chain has no signed checkpoint yet; the first is signed once events are written")
	case !rep.OK:
		s.log.Error(fmt.Sprintf("THE AUDIT CHAIN DOES NOT MATCH ITS LAST SIGNED CHECKPOINT: %v. The trail was changed outside mandate; investigate with mandate audit verify --checkpoints FILE (with a copy kept outside the database) before trusting it. mandate keeps serving.", rep.Err()),
			slog.Int64("seq", rep.Problem.Seq), slog.String("reason", rep.Problem.Reason))
	default:
		s.log.Info("the audit chain's tail matches its last signed checkpoint",
			slog.Int64("checkpoint_seq", rep.LastCheckpoint.Seq), slog.Int64("last_seq", rep.LastSeq))
	}
	return nil
}

// sinkCheckpoints hands the stored signed checkpoints to the audit sinks, so a copy of each lives
// outside the database beside the events it covers.
type sinkCheckpoints struct{ store *sqlstore.Store }

func (c sinkCheckpoints) CheckpointsAfter(ctx context.Context, seq int64) ([]auditsink.Checkpoint, error) {
	cps, err := c.store.ListCheckpoints(ctx, seq, 1000)
	if err != nil {
		return nil, err
	}
	out := make([]auditsink.Checkpoint, len(cps))
	for i, cp := range cps {
		out[i] = auditsink.Checkpoint{Seq: cp.Seq, Hash: cp.Hash, Time: cp.Time, JWS: cp.JWS}
	}
	return out, nil
}
