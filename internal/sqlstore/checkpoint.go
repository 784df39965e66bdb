package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/mandate-dev/mandate/internal/audit"
)

// The audit chain's signed checkpoints (migration 0009), the snapshot scan verification reads,
// and retention's cut. See audit.Checkpointer.

// ChainHead is the last event's seq and hash; 0 and "" when the chain is empty.
func (s *Store) ChainHead(ctx context.Context) (int64, string, error) {
	var seq int64
	var hash string
	err := s.rdb.QueryRowContext(ctx, `SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1`).Scan(&seq, &hash)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, "", nil
	}
	if err != nil {
		return 0, "", fmt.Errorf("read audit chain head: %w", err)
	}
	return seq, hash, nil
}

// FirstSeq is the seq of the oldest event kept; 0 when the chain is empty.
func (s *Store) FirstSeq(ctx context.Context) (int64, error) {
	var seq int64
	err := s.rdb.QueryRowContext(ctx, `SELECT seq FROM audit_events ORDER BY seq LIMIT 1`).Scan(&seq)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read audit chain start: %w", err)
	}
	return seq, nil
}

// AddCheckpoint stores c. A checkpoint of the same seq already stored (signed by another
// replica for the same head) is kept.
func (s *Store) AddCheckpoint(ctx context.Context, c audit.Checkpoint) error {
	err := s.tx(ctx, false, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO audit_checkpoints (seq, hash, time, jws) VALUES ($1, $2, $3, $4)
			ON CONFLICT (seq) DO NOTHING`, c.Seq, c.Hash, nanos(c.Time), c.JWS)
		return err
	})
	if err != nil {
		return fmt.Errorf("add audit checkpoint of seq %d: %w", c.Seq, err)
	}
	return nil
}

const checkpointCols = `seq, hash, time, jws`

func scanCheckpoint(r rowScanner) (audit.Checkpoint, error) {
	var c audit.Checkpoint
	var t int64
	if err := r.Scan(&c.Seq, &c.Hash, &t, &c.JWS); err != nil {
		return c, err
	}
	c.Time = fromNanos(t)
	if d, err := audit.DecodeCheckpoint(c.JWS); err == nil {
		c.Issuer, c.KeyID = d.Issuer, d.KeyID
	}
	return c, nil
}

// ListCheckpoints returns the checkpoints with seq > after, oldest first, at most limit (0 =
// all).
func (s *Store) ListCheckpoints(ctx context.Context, after int64, limit int) ([]audit.Checkpoint, error) {
	n := int64(limit)
	if n <= 0 {
		n = math.MaxInt64
	}
	return queryAll(ctx, s.rdb, "list audit checkpoints", scanCheckpoint,
		`SELECT `+checkpointCols+` FROM audit_checkpoints WHERE seq > $1 ORDER BY seq LIMIT $2`, after, n)
}

// LastCheckpoint is the checkpoint of the highest seq; ok is false when there is none.
func (s *Store) LastCheckpoint(ctx context.Context) (audit.Checkpoint, bool, error) {
	return s.oneCheckpoint(ctx, `SELECT `+checkpointCols+` FROM audit_checkpoints ORDER BY seq DESC LIMIT 1`)
}

// CheckpointBefore is the checkpoint of the highest seq ≤ maxSeq signed before t.
func (s *Store) CheckpointBefore(ctx context.Context, t time.Time, maxSeq int64) (audit.Checkpoint, bool, error) {
	return s.oneCheckpoint(ctx, `SELECT `+checkpointCols+` FROM audit_checkpoints WHERE time < $1 AND seq <= $2
		ORDER BY seq DESC LIMIT 1`, nanos(t), maxSeq)
}

func (s *Store) oneCheckpoint(ctx context.Context, q string, args ...any) (audit.Checkpoint, bool, error) {
	c, err := scanCheckpoint(s.rdb.QueryRowContext(ctx, q, args...))
	if errors.Is(err, sql.ErrNoRows) {
		return audit.Checkpoint{}, false, nil
	}
	if err != nil {
		return audit.Checkpoint{}, false, fmt.Errorf("read audit checkpoint: %w", err)
	}
	return c, true, nil
}

// ScanEvents calls fn with every event of seq ≥ from, in seq order, in one consistent snapshot
// (a read-only repeatable-read transaction on PostgreSQL; a read transaction on SQLite's WAL).
func (s *Store) ScanEvents(ctx context.Context, from int64, fn func(*audit.Event) error) error {
	var opts *sql.TxOptions
	if s.dialect == DialectPostgres {
		opts = &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true}
	}
	tx, err := s.rdb.BeginTx(ctx, opts)
	if err != nil {
		return fmt.Errorf("scan audit events: %w", err)
	}
	defer tx.Rollback()
	rows, err := tx.QueryContext(ctx, `SELECT `+eventCols+` FROM audit_events WHERE seq >= $1 ORDER BY seq`, from)
	if err != nil {
		return fmt.Errorf("scan audit events: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		ev, err := scanEvent(rows)
		if err != nil {
			return fmt.Errorf("scan audit events: %w", err)
		}
		if err := fn(&ev); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("scan audit events: %w", err)
	}
	return nil
}

// PruneEvents deletes every event of seq ≤ through in one transaction and returns how many.
// Retention calls it from checkpoint to checkpoint, so the chain always starts right after a
// signed one (audit.Checkpointer.Prune).
func (s *Store) PruneEvents(ctx context.Context, through int64) (int64, error) {
	var n int64
	err := s.tx(ctx, false, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM audit_events WHERE seq <= $1`, through)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("remove audit events up to seq %d: %w", through, err)
	}
	return n, nil
}
