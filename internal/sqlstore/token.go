package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/token"
)

// AddSigningKey stores k and sets PublishUntil = retireUntil on every other key whose
// PublishUntil is zero, with ev (Target defaults to k.KID), in one transaction.
func (s *Store) AddSigningKey(ctx context.Context, k token.SigningKey, retireUntil time.Time, ev audit.Event) error {
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		if !retireUntil.IsZero() {
			if _, err := tx.ExecContext(ctx, `UPDATE signing_keys SET publish_until = $1 WHERE publish_until = 0`,
				nanos(retireUntil)); err != nil {
				return fmt.Errorf("retire current keys: %w", err)
			}
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO signing_keys (kid, alg, public_jwk, private, created_at, active_at, publish_until)
			VALUES ($1, $2, $3, $4, $5, $6, $7)`,
			k.KID, k.Alg, nonNil(k.PublicJWK), nonNil(k.Private), nanos(k.CreatedAt), nanos(k.ActiveAt), nanos(k.PublishUntil))
		if uniqueViolation(err, "signing_keys", "kid") {
			return fmt.Errorf("kid already used: %w", err)
		}
		if err != nil {
			return err
		}
		if ev.Target == "" {
			ev.Target = k.KID
		}
		return appendSuccess(ctx, tx, &ev)
	})
	if err != nil {
		return fmt.Errorf("add signing key %s: %w", k.KID, err)
	}
	return nil
}

// nonNil stores a nil byte slice as an empty one, for NOT NULL BLOB/BYTEA columns.
func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// ListSigningKeys returns every key whose PublishUntil is zero or after now, newest first.
func (s *Store) ListSigningKeys(ctx context.Context, now time.Time) ([]token.SigningKey, error) {
	rows, err := s.rdb.QueryContext(ctx, `SELECT kid, alg, public_jwk, private, created_at, active_at, publish_until
		FROM signing_keys WHERE publish_until = 0 OR publish_until > $1
		ORDER BY created_at DESC, kid`, nanos(now))
	if err != nil {
		return nil, fmt.Errorf("list signing keys: %w", err)
	}
	defer rows.Close()
	var keys []token.SigningKey
	for rows.Next() {
		var k token.SigningKey
		var created, active, until int64
		if err := rows.Scan(&k.KID, &k.Alg, &k.PublicJWK, &k.Private, &created, &active, &until); err != nil {
			return nil, fmt.Errorf("list signing keys: %w", err)
		}
		k.CreatedAt, k.ActiveAt, k.PublishUntil = fromNanos(created), fromNanos(active), fromNanos(until)
		keys = append(keys, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list signing keys: %w", err)
	}
	return keys, nil
}

// RevokeToken records t as revoked until t.ExpiresAt, appends a revocation log entry (kind
// token, expiring with the token) and ev (TokenID and Target default to t.JTI, AgentID to
// t.AgentID), in one transaction. Revoking a revoked token succeeds, keeps the first record and
// appends ev but no second log entry.
func (s *Store) RevokeToken(ctx context.Context, t token.RevokedToken, ev audit.Event) error {
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `INSERT INTO revoked_tokens (jti, agent_id, expires_at, revoked_at)
			VALUES ($1, $2, $3, $4) ON CONFLICT (jti) DO NOTHING`,
			t.JTI, t.AgentID, nanos(t.ExpiresAt), nanos(t.RevokedAt))
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return err
		}
		if n > 0 {
			if err := appendRevocation(ctx, tx, token.KindToken, t.JTI, t.ExpiresAt, t.RevokedAt); err != nil {
				return err
			}
		}
		if ev.TokenID == "" {
			ev.TokenID = t.JTI
		}
		if ev.Target == "" {
			ev.Target = t.JTI
		}
		if ev.AgentID == "" {
			ev.AgentID = t.AgentID
		}
		return appendSuccess(ctx, tx, &ev)
	})
	if err != nil {
		return fmt.Errorf("revoke token %s: %w", t.JTI, err)
	}
	return nil
}

// IsTokenRevoked reports whether the token has been revoked (and not yet purged).
func (s *Store) IsTokenRevoked(ctx context.Context, jti string) (bool, error) {
	var n int
	err := s.rdb.QueryRowContext(ctx, `SELECT COUNT(*) FROM revoked_tokens WHERE jti = $1`, jti).Scan(&n)
	if err != nil {
		return false, fmt.Errorf("is token %s revoked: %w", jti, err)
	}
	return n > 0, nil
}

// ListRevokedTokens returns the revoked tokens not yet expired at now, oldest revocation first.
func (s *Store) ListRevokedTokens(ctx context.Context, now time.Time) ([]token.RevokedToken, error) {
	rows, err := s.rdb.QueryContext(ctx, `SELECT jti, agent_id, expires_at, revoked_at FROM revoked_tokens
		WHERE expires_at > $1 ORDER BY revoked_at, jti`, nanos(now))
	if err != nil {
		return nil, fmt.Errorf("list revoked tokens: %w", err)
	}
	defer rows.Close()
	var toks []token.RevokedToken
	for rows.Next() {
		var t token.RevokedToken
		var expires, revoked int64
		if err := rows.Scan(&t.JTI, &t.AgentID, &expires, &revoked); err != nil {
			return nil, fmt.Errorf("list revoked tokens: %w", err)
		}
		t.ExpiresAt, t.RevokedAt = fromNanos(expires), fromNanos(revoked)
		toks = append(toks, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list revoked tokens: %w", err)
	}
	return toks, nil
}

// purgeBatch is how many rows one DELETE of Purge removes at most, so that no single statement
// holds the write lock (SQLite) or row locks (PostgreSQL) for long.
const purgeBatch = 1000

// Purge deletes, in batches, revoked tokens expired at now, used jtis expired at now, signing
// keys whose PublishUntil has passed and revocation log entries expired at now (never those
// with no expiry). Grants, grant requests and tasks are state and stay. It returns how many rows
// went.
func (s *Store) Purge(ctx context.Context, now time.Time) (int64, error) {
	// The subquery form of a limited DELETE works on both dialects (SQLite's DELETE … LIMIT
	// needs a compile-time option).
	steps := []purgeStep{
		{"revoked tokens", `DELETE FROM revoked_tokens WHERE jti IN
			(SELECT jti FROM revoked_tokens WHERE expires_at <= $1 LIMIT $2)`},
		{"used jtis", `DELETE FROM used_jtis WHERE id IN
			(SELECT id FROM used_jtis WHERE expires_at <= $1 LIMIT $2)`},
		{"signing keys", `DELETE FROM signing_keys WHERE kid IN
			(SELECT kid FROM signing_keys WHERE publish_until <> 0 AND publish_until <= $1 LIMIT $2)`},
		{"revocation log", `DELETE FROM revocations WHERE seq IN
			(SELECT seq FROM revocations WHERE expires_at <> 0 AND expires_at <= $1 LIMIT $2)`},
	}
	return s.purgeSteps(ctx, steps, now)
}

// purgeStep is one DELETE of a purge: it removes at most $2 rows that stopped mattering at $1.
type purgeStep struct{ what, query string }

// purgeSteps runs each step until it removes nothing more (a step may uncover rows for itself:
// a parent task whose last child went), and returns how many rows went.
func (s *Store) purgeSteps(ctx context.Context, steps []purgeStep, at time.Time) (int64, error) {
	var total int64
	for _, st := range steps {
		for {
			if err := ctx.Err(); err != nil {
				return total, fmt.Errorf("purge %s: %w", st.what, err)
			}
			res, err := s.db.ExecContext(ctx, st.query, nanos(at), int64(purgeBatch))
			if err != nil {
				return total, fmt.Errorf("purge %s: %w", st.what, err)
			}
			n, err := res.RowsAffected()
			if err != nil {
				return total, fmt.Errorf("purge %s: %w", st.what, err)
			}
			total += n
			if n == 0 {
				break
			}
		}
	}
	return total, nil
}
