package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/mandate-dev/mandate/internal/auditsink"
)

// SinkCursor returns the saved cursor of the named audit sink; the zero Cursor for a sink never
// saved.
func (s *Store) SinkCursor(ctx context.Context, sink string) (auditsink.Cursor, error) {
	var c auditsink.Cursor
	err := s.rdb.QueryRowContext(ctx, `SELECT seq, checkpoint_seq FROM audit_sink_cursors WHERE sink = $1`, sink).
		Scan(&c.Seq, &c.CheckpointSeq)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return c, fmt.Errorf("read the cursor of audit sink %s: %w", sink, err)
	}
	return c, nil
}

// SaveSinkCursor saves the cursor of the named audit sink; each field keeps the greater of the
// saved and the new value, so a late or repeated save never moves it back.
func (s *Store) SaveSinkCursor(ctx context.Context, sink string, c auditsink.Cursor) error {
	err := s.tx(ctx, false, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO audit_sink_cursors (sink, seq, checkpoint_seq, updated_at)
			VALUES ($1, $2, $3, $4)
			ON CONFLICT (sink) DO UPDATE SET
				seq = CASE WHEN excluded.seq > audit_sink_cursors.seq THEN excluded.seq ELSE audit_sink_cursors.seq END,
				checkpoint_seq = CASE WHEN excluded.checkpoint_seq > audit_sink_cursors.checkpoint_seq
					THEN excluded.checkpoint_seq ELSE audit_sink_cursors.checkpoint_seq END,
				updated_at = excluded.updated_at`,
			sink, c.Seq, c.CheckpointSeq, nanos(s.now()))
		return err
	})
	if err != nil {
		return fmt.Errorf("save the cursor of audit sink %s: %w", sink, err)
	}
	return nil
}
