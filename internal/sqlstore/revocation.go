package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/mandate-dev/mandate/internal/token"
)

// appendRevocation appends one entry to the revocation log, in tx, the transaction of the change
// it records.
//
// Seq must grow in commit order, so that a verifier that has read up to seq N never sees a later
// entry with seq ≤ N appear. tx must come from writeTx: on SQLite the single writer assigns
// AUTOINCREMENT seqs, which are never reused even after Purge deletes the newest entries; on
// PostgreSQL the identity sequence (CACHE 1) is drawn only under the chain lock, which is
// released after the commit is visible, so the next transaction draws a larger seq and commits
// later (see migrations/*/0002_delegation.sql). A seq drawn by a transaction that rolls back is
// a gap, which cursors skip.
//
// The entry is a Change for OnChange, delivered once tx commits.
func appendRevocation(ctx context.Context, tx *sql.Tx, kind, id string, expires, revoked time.Time) error {
	var seq int64
	err := tx.QueryRowContext(ctx, `INSERT INTO revocations (kind, id, expires_at, revoked_at) VALUES ($1, $2, $3, $4)
		RETURNING seq`, kind, id, nanos(expires), nanos(revoked)).Scan(&seq)
	if err != nil {
		return fmt.Errorf("append %s %s to the revocation log: %w", kind, id, err)
	}
	noteChange(tx, Change{Kind: kind, ID: id, Seq: seq})
	return nil
}

// defaultRevocationLimit is how many entries ListRevocations returns when limit is not positive.
const defaultRevocationLimit = 1000

// ListRevocations returns up to limit (1000 when limit ≤ 0) log entries with Seq > after,
// oldest first, leaving out those expired at now. Seqs may have gaps.
func (s *Store) ListRevocations(ctx context.Context, after int64, now time.Time, limit int) ([]token.Revocation, error) {
	if limit <= 0 {
		limit = defaultRevocationLimit
	}
	rows, err := s.rdb.QueryContext(ctx, `SELECT seq, kind, id, expires_at, revoked_at FROM revocations
		WHERE seq > $1 AND (expires_at = 0 OR expires_at > $2)
		ORDER BY seq LIMIT $3`, after, nanos(now), int64(limit))
	if err != nil {
		return nil, fmt.Errorf("list revocations after %d: %w", after, err)
	}
	defer rows.Close()
	var revs []token.Revocation
	for rows.Next() {
		var r token.Revocation
		var expires, revoked int64
		if err := rows.Scan(&r.Seq, &r.Kind, &r.ID, &expires, &revoked); err != nil {
			return nil, fmt.Errorf("list revocations after %d: %w", after, err)
		}
		r.ExpiresAt, r.RevokedAt = fromNanos(expires), fromNanos(revoked)
		revs = append(revs, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list revocations after %d: %w", after, err)
	}
	return revs, nil
}
