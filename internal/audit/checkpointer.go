package audit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// CheckpointStore is what the Checkpointer needs of the store.
type CheckpointStore interface {
	// ChainHead is the last event's seq and hash; 0 and "" when the chain is empty.
	ChainHead(ctx context.Context) (seq int64, hash string, err error)
	// AddCheckpoint stores c; a checkpoint of the same seq already stored (by another
	// replica) is kept and c dropped.
	AddCheckpoint(ctx context.Context, c Checkpoint) error
	// ListCheckpoints returns the stored checkpoints with seq > after, oldest first, at most
	// limit (0 = all).
	ListCheckpoints(ctx context.Context, after int64, limit int) ([]Checkpoint, error)
	// LastCheckpoint is the stored checkpoint of the highest seq; ok is false when there is none.
	LastCheckpoint(ctx context.Context) (c Checkpoint, ok bool, err error)
	// ScanEvents calls fn with every event of seq ≥ from, in seq order, in one consistent
	// snapshot; an error from fn stops it and is returned.
	ScanEvents(ctx context.Context, from int64, fn func(*Event) error) error
	// CheckpointBefore is the stored checkpoint of the highest seq ≤ maxSeq signed before t.
	CheckpointBefore(ctx context.Context, t time.Time, maxSeq int64) (c Checkpoint, ok bool, err error)
	// FirstSeq is the seq of the oldest event kept; 0 when the chain is empty.
	FirstSeq(ctx context.Context) (int64, error)
	// PruneEvents deletes every event of seq ≤ through, in one transaction, and returns how many.
	PruneEvents(ctx context.Context, through int64) (int64, error)
	AppendEvent(ctx context.Context, ev Event) error
}

// RetentionFloor is the highest seq retention may remove: what every sink has delivered. The
// composition root wires it to the sinks' lowest cursor; nil = no floor.
type RetentionFloor func(ctx context.Context) (int64, error)

// CheckpointerConfig wires a Checkpointer.
type CheckpointerConfig struct {
	Store  CheckpointStore
	Keys   *CheckpointKeys
	Issuer string
	// A checkpoint is signed once Events events were appended since the last, or Interval has
	// passed, whichever comes first, and only when the head moved.
	Events   int64
	Interval time.Duration
	// Retention removes events older than this, but only up to a signed checkpoint and never
	// past Floor; 0 keeps every event.
	Retention time.Duration
	Floor     RetentionFloor
	// OnVerify, if set, is told the outcome of every Verify and CheckTail (a metric).
	OnVerify func(ok bool)
	Log      *slog.Logger
	Now      func() time.Time
}

// Checkpointer signs checkpoints of the chain head, verifies the chain against them, and
// applies retention.
type Checkpointer struct {
	cfg CheckpointerConfig

	mu   sync.Mutex // serialises Checkpoint
	last Checkpoint // the last checkpoint this one signed or found
}

// NewCheckpointer returns a Checkpointer. Events ≤ 0 means 1000, Interval ≤ 0 a minute.
func NewCheckpointer(cfg CheckpointerConfig) *Checkpointer {
	if cfg.Events <= 0 {
		cfg.Events = 1000
	}
	if cfg.Interval <= 0 {
		cfg.Interval = time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Checkpointer{cfg: cfg}
}

// JWKS is the public keys checkpoints verify with.
func (c *Checkpointer) JWKS() jose.JSONWebKeySet { return c.cfg.Keys.JWKS() }

// Checkpoint signs and stores a checkpoint of the head if it moved since the last one stored,
// and returns it (ok false when the head had not moved).
func (c *Checkpointer) Checkpoint(ctx context.Context) (Checkpoint, bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.checkpointLocked(ctx, true)
}

// CheckpointIfDue signs and stores a checkpoint of the head when it moved and Events events were
// appended since the last checkpoint or Interval has passed, as Run does every second.
func (c *Checkpointer) CheckpointIfDue(ctx context.Context) (Checkpoint, bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.checkpointLocked(ctx, false)
}

// checkpointLocked signs the head when it moved and, unless always, when enough events or time
// have passed since the last checkpoint.
func (c *Checkpointer) checkpointLocked(ctx context.Context, always bool) (Checkpoint, bool, error) {
	seq, hash, err := c.cfg.Store.ChainHead(ctx)
	if err != nil {
		return Checkpoint{}, false, fmt.Errorf("checkpoint: %w", err)
	}
	if c.last.Seq == 0 || seq < c.last.Seq {
		last, ok, err := c.cfg.Store.LastCheckpoint(ctx)
		if err != nil {
			return Checkpoint{}, false, fmt.Errorf("checkpoint: %w", err)
		}
		if ok {
			c.last = last
		}
	}
	now := c.cfg.Now()
	switch {
	case seq == 0 || seq <= c.last.Seq:
		return Checkpoint{}, false, nil
	case !always && seq-c.last.Seq < c.cfg.Events && now.Sub(c.last.Time) < c.cfg.Interval:
		return Checkpoint{}, false, nil
	}
	cp, err := c.cfg.Keys.Sign(c.cfg.Issuer, seq, hash, now)
	if err != nil {
		return Checkpoint{}, false, err
	}
	if err := c.cfg.Store.AddCheckpoint(ctx, cp); err != nil {
		return Checkpoint{}, false, fmt.Errorf("store checkpoint of seq %d: %w", seq, err)
	}
	c.last = cp
	return cp, true, nil
}

// Run signs checkpoints as configured, and applies retention every minute, until ctx ends.
// The caller signs a last one at shutdown (Checkpoint).
func (c *Checkpointer) Run(ctx context.Context) {
	poll := min(c.cfg.Interval, time.Second)
	t := time.NewTicker(poll)
	defer t.Stop()
	lastPrune := time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cp, ok, err := c.CheckpointIfDue(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			c.cfg.Log.Error("sign audit checkpoint", slog.String("error", err.Error()))
		case ok:
			c.cfg.Log.Debug("signed audit checkpoint", slog.Int64("seq", cp.Seq))
		}
		if c.cfg.Retention > 0 && time.Since(lastPrune) >= time.Minute {
			lastPrune = time.Now()
			if _, err := c.Prune(ctx); err != nil && ctx.Err() == nil {
				c.cfg.Log.Error("audit retention", slog.String("error", err.Error()))
			}
		}
	}
}

// Verify checks the whole chain in the store against the stored checkpoints and outside ones
// (from a file or a sink), whose signatures must verify under the published keys or extra.
func (c *Checkpointer) Verify(ctx context.Context, outside []Checkpoint, extra jose.JSONWebKeySet) (Report, error) {
	stored, err := c.cfg.Store.ListCheckpoints(ctx, 0, 0)
	if err != nil {
		return Report{}, fmt.Errorf("verify audit chain: %w", err)
	}
	keys := c.JWKS()
	keys.Keys = append(keys.Keys, extra.Keys...)
	v := NewVerifier(&keys, append(stored, outside...))
	return c.scan(ctx, 0, v)
}

// CheckTail verifies the chain from the last stored checkpoint on: the event at its seq has
// the hash it signs and every event after links and hashes. Cheap enough for every start. ok
// is false when there is no checkpoint yet.
func (c *Checkpointer) CheckTail(ctx context.Context) (rep Report, ok bool, err error) {
	last, ok, err := c.cfg.Store.LastCheckpoint(ctx)
	if err != nil || !ok {
		return Report{}, false, err
	}
	keys := c.JWKS()
	// The row's seq and hash are not signed: the JWS is. A row holding another checkpoint's
	// JWS (or none that verifies) is itself the tampering.
	signed, perr := ParseCheckpoint(last.JWS, keys)
	if perr == nil && (signed.Seq != last.Seq || signed.Hash != last.Hash) {
		perr = fmt.Errorf("it holds the signed checkpoint of seq %d", signed.Seq)
	}
	if perr != nil {
		rep = Report{Problem: &Problem{Seq: last.Seq, Reason: ReasonBadCheckpoint,
			Detail: fmt.Sprintf("the last stored checkpoint (seq %d) is not one the server signed: %v; the checkpoints table was edited", last.Seq, perr)}}
		if c.cfg.OnVerify != nil {
			c.cfg.OnVerify(false)
		}
		return rep, true, nil
	}
	rep, err = c.scan(ctx, last.Seq, NewTailVerifier(&keys, signed))
	return rep, true, err
}

// errStop stops a scan at the first problem.
var errStop = errors.New("stop")

func (c *Checkpointer) scan(ctx context.Context, from int64, v *Verifier) (Report, error) {
	err := c.cfg.Store.ScanEvents(ctx, from, func(ev *Event) error {
		if !v.Add(ev) {
			return errStop
		}
		return nil
	})
	if err != nil && !errors.Is(err, errStop) {
		return Report{}, fmt.Errorf("verify audit chain: %w", err)
	}
	rep := v.Finish()
	if c.cfg.OnVerify != nil {
		c.cfg.OnVerify(rep.OK)
	}
	return rep, nil
}

// Prune removes the events older than the retention, up to and including the newest signed
// checkpoint old enough, never the last event (the chain goes on from it) and never past the
// floor. It moves from checkpoint to checkpoint, one transaction each, so the chain always
// starts right after a checkpoint, and records each cut as an audit.prune event first. It
// returns how many events it removed.
func (c *Checkpointer) Prune(ctx context.Context) (int64, error) {
	if c.cfg.Retention <= 0 {
		return 0, nil
	}
	head, _, err := c.cfg.Store.ChainHead(ctx)
	if err != nil {
		return 0, fmt.Errorf("audit retention: %w", err)
	}
	limit := head - 1
	if c.cfg.Floor != nil {
		floor, err := c.cfg.Floor(ctx)
		if err != nil {
			return 0, fmt.Errorf("audit retention: the sinks' delivered position: %w", err)
		}
		limit = min(limit, floor)
	}
	cut, ok, err := c.cfg.Store.CheckpointBefore(ctx, c.cfg.Now().Add(-c.cfg.Retention), limit)
	if err != nil || !ok {
		return 0, err
	}
	signed, err := ParseCheckpoint(cut.JWS, c.JWKS())
	if err != nil {
		return 0, fmt.Errorf("audit retention: the checkpoint of seq %d does not verify; nothing removed: %w", cut.Seq, err)
	}
	// The stored time, seq and hash are not signed: only what the JWS says decides the cut.
	if signed.Seq != cut.Seq || signed.Hash != cut.Hash || signed.Time.After(c.cfg.Now().Add(-c.cfg.Retention)) {
		return 0, fmt.Errorf("audit retention: the checkpoint stored for seq %d does not say what its signature says (signed for seq %d at %s); the checkpoints table was edited; nothing removed",
			cut.Seq, signed.Seq, signed.Time.Format(time.RFC3339))
	}
	cut = signed
	first, err := c.cfg.Store.FirstSeq(ctx)
	if err != nil {
		return 0, fmt.Errorf("audit retention: %w", err)
	}
	if first == 0 || first > cut.Seq {
		return 0, nil
	}
	steps, err := c.cfg.Store.ListCheckpoints(ctx, first-1, 0)
	if err != nil {
		return 0, fmt.Errorf("audit retention: %w", err)
	}
	ev := New(c.cfg.Now(), "", ActionAuditPrune)
	ev.ActorType, ev.Outcome, ev.Target = ActorSystem, OutcomeSuccess, fmt.Sprint(cut.Seq)
	ev.Detail = fmt.Sprintf("retention %v: removing events %d..%d, up to the checkpoint signed at %s", c.cfg.Retention, first, cut.Seq, cut.Time.Format(time.RFC3339))
	if err := c.cfg.Store.AppendEvent(ctx, ev); err != nil {
		return 0, fmt.Errorf("audit retention: record the cut: %w", err)
	}
	// A verifier accepts a chain that starts after seq 1 only with a signed record of the cut:
	// sign the head, this record included, before anything goes.
	if _, _, err := c.Checkpoint(ctx); err != nil {
		return 0, fmt.Errorf("audit retention: sign the record of the cut: %w", err)
	}
	var n int64
	for _, s := range steps {
		if s.Seq > cut.Seq {
			break
		}
		m, err := c.cfg.Store.PruneEvents(ctx, s.Seq)
		n += m
		if err != nil {
			return n, fmt.Errorf("audit retention: remove events up to seq %d: %w", s.Seq, err)
		}
	}
	c.cfg.Log.Info("audit retention removed old events", slog.Int64("events", n), slog.Int64("through_seq", cut.Seq))
	return n, nil
}

// ListCheckpoints returns the stored checkpoints with seq > after, oldest first, at most limit.
func (c *Checkpointer) ListCheckpoints(ctx context.Context, after int64, limit int) ([]Checkpoint, error) {
	cps, err := c.cfg.Store.ListCheckpoints(ctx, after, limit)
	if err != nil {
		return nil, fmt.Errorf("list audit checkpoints: %w", err)
	}
	return cps, nil
}

// LastCheckpoint is the stored checkpoint of the highest seq; ok is false when there is none.
func (c *Checkpointer) LastCheckpoint(ctx context.Context) (Checkpoint, bool, error) {
	cp, ok, err := c.cfg.Store.LastCheckpoint(ctx)
	if err != nil {
		return Checkpoint{}, false, fmt.Errorf("last audit checkpoint: %w", err)
	}
	return cp, ok, nil
}
