package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/mandate-dev/mandate/dpop"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/delegation"
	"github.com/mandate-dev/mandate/internal/principal"
	"github.com/mandate-dev/mandate/internal/registry"
	"github.com/mandate-dev/mandate/internal/token"
)

// The stores Store implements.
var (
	_ audit.Store      = (*Store)(nil)
	_ registry.Store   = (*Store)(nil)
	_ principal.Store  = (*Store)(nil)
	_ token.Store      = (*Store)(nil)
	_ delegation.Store = (*Store)(nil)
	_ dpop.ReplayStore = (*Store)(nil)
)

// Use records a single-use identifier (a DPoP proof's, a registration JWS's or a client
// assertion's jti) until exp, and returns dpop.ErrReplay if it is already recorded and unexpired.
// One statement decides, so of concurrent uses exactly one succeeds; an expired record is
// replaced. Expired records are deleted by Purge.
func (s *Store) Use(ctx context.Context, id string, exp time.Time) error {
	return s.use(ctx, s.db, id, exp)
}

// RecordIssue uses up the ids and appends ev in one write transaction.
func (s *Store) RecordIssue(ctx context.Context, uses []token.SingleUse, ev audit.Event) error {
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		for _, u := range uses {
			if err := s.use(ctx, tx, u.ID, u.ExpiresAt); err != nil {
				return err
			}
		}
		return appendSuccess(ctx, tx, &ev)
	})
	if err != nil {
		return fmt.Errorf("record token issue %s: %w", ev.TokenID, err)
	}
	return nil
}

func (s *Store) use(ctx context.Context, q querier, id string, exp time.Time) error {
	res, err := q.ExecContext(ctx, `INSERT INTO used_jtis (id, expires_at) VALUES ($1, $2)
		ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at
		WHERE used_jtis.expires_at <= $3`, id, nanos(exp), nanos(s.now()))
	if err != nil {
		return fmt.Errorf("use %s: %w", id, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("use %s: %w", id, err)
	}
	if n == 0 {
		return fmt.Errorf("use %s: %w", id, dpop.ErrReplay)
	}
	return nil
}
