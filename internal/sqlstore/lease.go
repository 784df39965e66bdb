package sqlstore

import (
	"context"
	"fmt"
	"time"
)

// TakeRefreshLease takes the lease on refreshing the access token of upstream for holder until
// now+ttl, and reports whether it did: it does when no lease is held, the lease held has
// expired, or holder holds it already (then it is extended). One atomic statement, so two
// replicas never both take it.
func (s *Store) TakeRefreshLease(ctx context.Context, upstream, holder string, now time.Time, ttl time.Duration) (bool, error) {
	res, err := s.db.ExecContext(ctx, `INSERT INTO upstream_refresh_leases (upstream, holder, expires_at) VALUES ($1, $2, $3)
		ON CONFLICT (upstream) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
		WHERE upstream_refresh_leases.expires_at <= $4 OR upstream_refresh_leases.holder = excluded.holder`,
		upstream, holder, nanos(now.Add(ttl)), nanos(now))
	if err != nil {
		return false, fmt.Errorf("take the refresh lease of %s: %w", upstream, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("take the refresh lease of %s: %w", upstream, err)
	}
	return n == 1, nil
}

// ReleaseRefreshLease gives up holder's lease on refreshing upstream's access token (nothing
// when another holder has it).
func (s *Store) ReleaseRefreshLease(ctx context.Context, upstream, holder string) error {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM upstream_refresh_leases WHERE upstream = $1 AND holder = $2`, upstream, holder); err != nil {
		return fmt.Errorf("release the refresh lease of %s: %w", upstream, err)
	}
	return nil
}
