package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/principal"
)

const (
	userCols     = `id, name, admin, created_at, grantable`
	apiTokenCols = `id, user_id, name, hash, created_at, expires_at, revoked_at, bootstrap`
)

// CreateUser stores u with ev (Target defaults to u.ID). A used name gives principal.ErrNameTaken.
func (s *Store) CreateUser(ctx context.Context, u principal.User, ev audit.Event) error {
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		grantable, err := grantableJSON(u.Grantable)
		if err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO users (`+userCols+`) VALUES ($1, $2, $3, $4, $5)`,
			u.ID, u.Name, u.Admin, nanos(u.CreatedAt), grantable)
		if uniqueViolation(err, "users", "name") {
			return fmt.Errorf("name %q: %w", u.Name, principal.ErrNameTaken)
		}
		if err != nil {
			return err
		}
		if ev.Target == "" {
			ev.Target = u.ID
		}
		return appendSuccess(ctx, tx, &ev)
	})
	if err != nil {
		return fmt.Errorf("create user %s: %w", u.ID, err)
	}
	return nil
}

// GetUser finds a user by id, or else by name.
func (s *Store) GetUser(ctx context.Context, ref string) (principal.User, error) {
	u, err := scanUser(s.rdb.QueryRowContext(ctx, `SELECT `+userCols+` FROM users
		WHERE kind = 'user' AND (id = $1 OR name = $1) ORDER BY CASE WHEN id = $1 THEN 0 ELSE 1 END LIMIT 1`, ref))
	if errors.Is(err, sql.ErrNoRows) {
		err = principal.ErrNotFound
	}
	if err != nil {
		return principal.User{}, fmt.Errorf("get user %s: %w", ref, err)
	}
	return u, nil
}

// ListUsers returns every user, by name.
func (s *Store) ListUsers(ctx context.Context) ([]principal.User, error) {
	return queryAll(ctx, s.rdb, "list users", scanUser, `SELECT `+userCols+` FROM users WHERE kind = 'user' ORDER BY name`)
}

// CountUsers returns how many users there are.
func (s *Store) CountUsers(ctx context.Context) (int, error) {
	var n int
	if err := s.rdb.QueryRowContext(ctx, `SELECT COUNT(*) FROM users WHERE kind = 'user'`).Scan(&n); err != nil {
		return 0, fmt.Errorf("count users: %w", err)
	}
	return n, nil
}

func scanUser(r rowScanner) (principal.User, error) {
	var u principal.User
	var created int64
	var grantable sql.NullString
	if err := r.Scan(&u.ID, &u.Name, &u.Admin, &created, &grantable); err != nil {
		return principal.User{}, err
	}
	u.CreatedAt = fromNanos(created)
	return u, parseGrantable(grantable, &u)
}

// grantableJSON is the stored form of a user's bound: NULL for none.
func grantableJSON(g *principal.Grantable) (any, error) {
	if g == nil {
		return nil, nil
	}
	b, err := json.Marshal(g)
	if err != nil {
		return nil, fmt.Errorf("encode grantable: %w", err)
	}
	return string(b), nil
}

func parseGrantable(s sql.NullString, u *principal.User) error {
	if !s.Valid {
		return nil
	}
	u.Grantable = &principal.Grantable{}
	if err := json.Unmarshal([]byte(s.String), u.Grantable); err != nil {
		return fmt.Errorf("user %s: grantable: %w", u.ID, err)
	}
	return nil
}

// CreateAPIToken stores t with ev (Target defaults to t.ID). An unknown user gives
// principal.ErrNotFound.
func (s *Store) CreateAPIToken(ctx context.Context, t principal.APIToken, ev audit.Event) error {
	err := s.writeTx(ctx, func(tx *sql.Tx) error { return insertAPIToken(ctx, tx, t, ev) })
	if err != nil {
		return fmt.Errorf("create api token %s: %w", t.ID, err)
	}
	return nil
}

func insertAPIToken(ctx context.Context, tx *sql.Tx, t principal.APIToken, ev audit.Event) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO api_tokens (`+apiTokenCols+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
		t.ID, t.UserID, t.Name, t.Hash, nanos(t.CreatedAt), nanos(t.ExpiresAt), nanos(t.RevokedAt), t.Bootstrap)
	if foreignKeyViolation(err) {
		return fmt.Errorf("user %s: %w", t.UserID, principal.ErrNotFound)
	}
	if err != nil {
		return err
	}
	if ev.Target == "" {
		ev.Target = t.ID
	}
	return appendSuccess(ctx, tx, &ev)
}

// ExchangeBootstrapToken revokes the unrevoked bootstrap token id at at and stores next in its
// place, with both audit events, in one transaction: of two logins racing with the same
// bootstrap token, one gets a token. A token that is not an unrevoked bootstrap token gives
// principal.ErrNotFound.
func (s *Store) ExchangeBootstrapToken(ctx context.Context, id string, at time.Time, next principal.APIToken, revoked, created audit.Event) error {
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		if err := execOne(ctx, tx, principal.ErrNotFound, `UPDATE api_tokens SET revoked_at = $2
			WHERE id = $1 AND revoked_at = 0 AND bootstrap = $3`, id, nanos(at), true); err != nil {
			return err
		}
		if revoked.Target == "" {
			revoked.Target = id
		}
		if err := appendSuccess(ctx, tx, &revoked); err != nil {
			return err
		}
		return insertAPIToken(ctx, tx, next, created)
	})
	if err != nil {
		return fmt.Errorf("exchange bootstrap token %s: %w", id, err)
	}
	return nil
}

// LookupBootstrapToken finds a bootstrap token by hash, revoked or not: enough to tell its
// holder it was used, and the server that its file can go.
func (s *Store) LookupBootstrapToken(ctx context.Context, hash string) (principal.APIToken, error) {
	t, err := scanAPIToken(s.rdb.QueryRowContext(ctx, `SELECT `+apiTokenCols+` FROM api_tokens WHERE hash = $1 AND bootstrap = $2`, hash, true))
	if errors.Is(err, sql.ErrNoRows) {
		err = principal.ErrNotFound
	}
	if err != nil {
		return principal.APIToken{}, fmt.Errorf("look up bootstrap token: %w", err)
	}
	return t, nil
}

func scanAPIToken(r rowScanner) (principal.APIToken, error) {
	var t principal.APIToken
	var created, expires, revoked int64
	if err := r.Scan(&t.ID, &t.UserID, &t.Name, &t.Hash, &created, &expires, &revoked, &t.Bootstrap); err != nil {
		return principal.APIToken{}, err
	}
	t.CreatedAt, t.ExpiresAt, t.RevokedAt = fromNanos(created), fromNanos(expires), fromNanos(revoked)
	return t, nil
}

// LookupAPIToken finds an unrevoked token by hash, and its user. Expiry is the caller's check.
func (s *Store) LookupAPIToken(ctx context.Context, hash string) (principal.APIToken, principal.User, error) {
	var t principal.APIToken
	var u principal.User
	var tCreated, tExpires, tRevoked, uCreated int64
	var grantable sql.NullString
	err := s.rdb.QueryRowContext(ctx, `SELECT t.id, t.user_id, t.name, t.hash, t.created_at, t.expires_at,
			t.revoked_at, t.bootstrap, u.id, u.name, u.admin, u.created_at, u.grantable
		FROM api_tokens t JOIN users u ON u.id = t.user_id
		WHERE t.hash = $1 AND t.revoked_at = 0 AND u.kind = 'user'`, hash).
		Scan(&t.ID, &t.UserID, &t.Name, &t.Hash, &tCreated, &tExpires, &tRevoked, &t.Bootstrap, &u.ID, &u.Name, &u.Admin, &uCreated, &grantable)
	if errors.Is(err, sql.ErrNoRows) {
		err = principal.ErrNotFound
	}
	if err != nil {
		// Never put the hash in the message: it is a lookup key for a bearer secret.
		return principal.APIToken{}, principal.User{}, fmt.Errorf("look up api token: %w", err)
	}
	t.CreatedAt, t.ExpiresAt, t.RevokedAt = fromNanos(tCreated), fromNanos(tExpires), fromNanos(tRevoked)
	u.CreatedAt = fromNanos(uCreated)
	return t, u, parseGrantable(grantable, &u)
}

// ListAPITokens returns every token of the user, revoked ones included, newest first.
func (s *Store) ListAPITokens(ctx context.Context, userID string) ([]principal.APIToken, error) {
	return queryAll(ctx, s.rdb, "list api tokens of "+userID, scanAPIToken, `SELECT `+apiTokenCols+` FROM api_tokens
		WHERE user_id = $1 ORDER BY created_at DESC, id`, userID)
}

// RevokeAPIToken marks the token revoked at at, with ev (Target defaults to id). Revoking a
// revoked token succeeds and keeps the first revocation time; an unknown id gives
// principal.ErrNotFound.
func (s *Store) RevokeAPIToken(ctx context.Context, id string, at time.Time, ev audit.Event) error {
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		var revoked int64
		err := tx.QueryRowContext(ctx, `SELECT revoked_at FROM api_tokens WHERE id = $1`, id).Scan(&revoked)
		if errors.Is(err, sql.ErrNoRows) {
			return principal.ErrNotFound
		}
		if err != nil {
			return err
		}
		if revoked == 0 {
			if _, err := tx.ExecContext(ctx, `UPDATE api_tokens SET revoked_at = $2 WHERE id = $1`, id, nanos(at)); err != nil {
				return err
			}
		}
		if ev.Target == "" {
			ev.Target = id
		}
		return appendSuccess(ctx, tx, &ev)
	})
	if err != nil {
		return fmt.Errorf("revoke api token %s: %w", id, err)
	}
	return nil
}
