package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/vault"
)

const upstreamCols = `name, base_url, auth, param, oauth2, allow_private, routes, created_at, updated_at, identity_assertion`

// CreateUpstream stores u (without secrets) with ev (Target defaults to u.Name).
// vault.ErrExists if an upstream of that name exists.
func (s *Store) CreateUpstream(ctx context.Context, u vault.Upstream, ev audit.Event) error {
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		if err := insertUpstream(ctx, tx, u); err != nil {
			return err
		}
		defaultTarget(&ev, u.Name)
		return appendSuccess(ctx, tx, &ev)
	})
	if err != nil {
		return fmt.Errorf("create upstream %s: %w", u.Name, err)
	}
	return nil
}

func insertUpstream(ctx context.Context, tx *sql.Tx, u vault.Upstream) error {
	oauth2, routes, err := encodeUpstream(u)
	if err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO upstreams (`+upstreamCols+`)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
		u.Name, u.BaseURL, string(u.Auth), u.Param, oauth2, u.AllowPrivate, routes, nanos(u.CreatedAt), nanos(u.UpdatedAt), u.IdentityAssertion)
	if uniqueViolation(err, "upstreams", "name") {
		return vault.ErrExists
	}
	return err
}

func encodeUpstream(u vault.Upstream) (oauth2 any, routes string, err error) {
	if u.OAuth2 != nil {
		b, err := json.Marshal(u.OAuth2)
		if err != nil {
			return nil, "", fmt.Errorf("encode oauth2: %w", err)
		}
		oauth2 = string(b)
	}
	r := u.Routes
	if r == nil {
		r = []vault.Route{}
	}
	b, err := json.Marshal(r)
	if err != nil {
		return nil, "", fmt.Errorf("encode routes: %w", err)
	}
	return oauth2, string(b), nil
}

func defaultTarget(ev *audit.Event, target string) {
	if ev.Target == "" {
		ev.Target = target
	}
}

func scanUpstream(row rowScanner) (vault.Upstream, error) {
	var u vault.Upstream
	var auth, routes string
	var oauth2 sql.NullString
	var created, updated int64
	if err := row.Scan(&u.Name, &u.BaseURL, &auth, &u.Param, &oauth2, &u.AllowPrivate, &routes, &created, &updated, &u.IdentityAssertion); err != nil {
		return vault.Upstream{}, err
	}
	u.Auth, u.CreatedAt, u.UpdatedAt = vault.AuthKind(auth), fromNanos(created), fromNanos(updated)
	if oauth2.Valid {
		u.OAuth2 = &vault.OAuth2{}
		if err := json.Unmarshal([]byte(oauth2.String), u.OAuth2); err != nil {
			return vault.Upstream{}, fmt.Errorf("decode oauth2 of %s: %w", u.Name, err)
		}
	}
	if err := json.Unmarshal([]byte(routes), &u.Routes); err != nil {
		return vault.Upstream{}, fmt.Errorf("decode routes of %s: %w", u.Name, err)
	}
	if len(u.Routes) == 0 {
		u.Routes = nil
	}
	return u, nil
}

// secretKinds returns the kinds of secret stored and not expired at now, per upstream (of one
// upstream when name is not ""), sorted.
func secretKinds(ctx context.Context, q querier, name string, now time.Time) (map[string][]string, error) {
	query, args := `SELECT upstream, kind FROM upstream_secrets WHERE (expires_at = 0 OR expires_at > $1)`, []any{nanos(now)}
	if name != "" {
		query, args = query+` AND upstream = $2`, append(args, name)
	}
	rows, err := q.QueryContext(ctx, query+` ORDER BY upstream, kind`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string][]string{}
	for rows.Next() {
		var u, k string
		if err := rows.Scan(&u, &k); err != nil {
			return nil, err
		}
		out[u] = append(out[u], k)
	}
	return out, rows.Err()
}

func getUpstream(ctx context.Context, q querier, name string, now time.Time) (vault.Upstream, error) {
	u, err := scanUpstream(q.QueryRowContext(ctx, `SELECT `+upstreamCols+` FROM upstreams WHERE name = $1`, name))
	if errors.Is(err, sql.ErrNoRows) {
		return vault.Upstream{}, vault.ErrNotFound
	}
	if err != nil {
		return vault.Upstream{}, err
	}
	kinds, err := secretKinds(ctx, q, name, now)
	if err != nil {
		return vault.Upstream{}, err
	}
	u.Secrets = kinds[name]
	return u, nil
}

// GetUpstream finds an upstream by name, with the kinds of secret it has (expired ones left
// out).
func (s *Store) GetUpstream(ctx context.Context, name string) (vault.Upstream, error) {
	u, err := getUpstream(ctx, s.rdb, name, s.now())
	if err != nil {
		return vault.Upstream{}, fmt.Errorf("get upstream %s: %w", name, err)
	}
	return u, nil
}

// ListUpstreams returns every upstream, by name, with the kinds of secret each has.
func (s *Store) ListUpstreams(ctx context.Context) ([]vault.Upstream, error) {
	rows, err := s.rdb.QueryContext(ctx, `SELECT `+upstreamCols+` FROM upstreams ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list upstreams: %w", err)
	}
	list, err := scanAll(rows, scanUpstream)
	if err != nil {
		return nil, fmt.Errorf("list upstreams: %w", err)
	}
	kinds, err := secretKinds(ctx, s.rdb, "", s.now())
	if err != nil {
		return nil, fmt.Errorf("list upstreams: %w", err)
	}
	for i := range list {
		list[i].Secrets = kinds[list[i].Name]
	}
	return list, nil
}

// UpdateUpstream applies fn to the stored upstream and stores the result with ev (Target
// defaults to name), in one transaction. fn may not rename it or change CreatedAt; an error from
// fn is returned as it is and nothing is written.
func (s *Store) UpdateUpstream(ctx context.Context, name string, fn func(*vault.Upstream) error, ev audit.Event) (vault.Upstream, error) {
	var u vault.Upstream
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		var err error
		u, err = getUpstream(ctx, tx, name, s.now())
		if err != nil {
			return err
		}
		kinds, created := u.Secrets, u.CreatedAt
		if err := fn(&u); err != nil {
			return err
		}
		u.Name, u.CreatedAt, u.Secrets = name, created, kinds
		oauth2, routes, err := encodeUpstream(u)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE upstreams SET base_url = $2, auth = $3, param = $4, oauth2 = $5,
			allow_private = $6, routes = $7, updated_at = $8, identity_assertion = $9 WHERE name = $1`,
			name, u.BaseURL, string(u.Auth), u.Param, oauth2, u.AllowPrivate, routes, nanos(u.UpdatedAt), u.IdentityAssertion); err != nil {
			return err
		}
		defaultTarget(&ev, name)
		return appendSuccess(ctx, tx, &ev)
	})
	if err != nil {
		return vault.Upstream{}, fmt.Errorf("update upstream %s: %w", name, err)
	}
	u.CreatedAt, u.UpdatedAt = fromNanos(nanos(u.CreatedAt)), fromNanos(nanos(u.UpdatedAt))
	return u, nil
}

// DeleteUpstream deletes an upstream and every secret of it with ev (Target defaults to name).
// vault.ErrNotFound if there is none.
func (s *Store) DeleteUpstream(ctx context.Context, name string, ev audit.Event) error {
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM upstream_secrets WHERE upstream = $1`, name); err != nil {
			return err
		}
		if err := execOne(ctx, tx, vault.ErrNotFound, `DELETE FROM upstreams WHERE name = $1`, name); err != nil {
			return err
		}
		defaultTarget(&ev, name)
		return appendSuccess(ctx, tx, &ev)
	})
	if err != nil {
		return fmt.Errorf("delete upstream %s: %w", name, err)
	}
	return nil
}

// PutSecret stores a sealed secret of an upstream, replacing one of the same kind, with ev
// (Target defaults to upstream). vault.ErrNotFound if there is no such upstream.
func (s *Store) PutSecret(ctx context.Context, upstream, kind string, sealed []byte, expiresAt time.Time, ev audit.Event) error {
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		if err := putSecret(ctx, tx, upstream, kind, vault.SealedSecret{Sealed: sealed, ExpiresAt: expiresAt}, s.now()); err != nil {
			return err
		}
		defaultTarget(&ev, upstream)
		return appendSuccess(ctx, tx, &ev)
	})
	if err != nil {
		return fmt.Errorf("put %s secret of %s: %w", kind, upstream, err)
	}
	return nil
}

// putSecret upserts one secret. Its version becomes the time of the write in unix nanoseconds,
// or the old version + 1 when that is not larger: versions only grow, even across a delete and
// re-creation of the upstream, so a replica holding an old version can never match a new row.
func putSecret(ctx context.Context, tx *sql.Tx, upstream, kind string, sec vault.SealedSecret, now time.Time) error {
	if kind == "" {
		return errors.New("empty secret kind")
	}
	t := nanos(now)
	_, err := tx.ExecContext(ctx, `INSERT INTO upstream_secrets (upstream, kind, sealed, expires_at, version, updated_at)
		VALUES ($1, $2, $3, $4, $5, $5)
		ON CONFLICT (upstream, kind) DO UPDATE SET sealed = excluded.sealed, expires_at = excluded.expires_at,
			version = CASE WHEN upstream_secrets.version >= excluded.version THEN upstream_secrets.version + 1
				ELSE excluded.version END,
			updated_at = excluded.updated_at`,
		upstream, kind, sec.Sealed, nanos(sec.ExpiresAt), t)
	if foreignKeyViolation(err) {
		return vault.ErrNotFound
	}
	return err
}

// GetSecret returns a sealed secret, its expiry and its version. vault.ErrNotFound if there is
// none.
func (s *Store) GetSecret(ctx context.Context, upstream, kind string) ([]byte, time.Time, int64, error) {
	var sealed []byte
	var exp, version int64
	err := s.rdb.QueryRowContext(ctx, `SELECT sealed, expires_at, version FROM upstream_secrets
		WHERE upstream = $1 AND kind = $2`, upstream, kind).Scan(&sealed, &exp, &version)
	if errors.Is(err, sql.ErrNoRows) {
		err = vault.ErrNotFound
	}
	if err != nil {
		return nil, time.Time{}, 0, fmt.Errorf("get %s secret of %s: %w", kind, upstream, err)
	}
	return sealed, fromNanos(exp), version, nil
}

// SwapSecrets writes every secret of secrets, with ev (Target defaults to upstream), in one
// transaction, only if the secret of kind checkKind has version checkVersion (0: there is
// none). vault.ErrConflict otherwise, and nothing is written; vault.ErrNotFound if there is no
// such upstream. Audited writes are serialised (see writeTx), so the check and the writes are
// atomic across replicas.
func (s *Store) SwapSecrets(ctx context.Context, upstream, checkKind string, checkVersion int64, secrets map[string]vault.SealedSecret, ev audit.Event) error {
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		var version int64
		err := tx.QueryRowContext(ctx, `SELECT version FROM upstream_secrets WHERE upstream = $1 AND kind = $2`,
			upstream, checkKind).Scan(&version)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			version = 0
		case err != nil:
			return err
		}
		if version != checkVersion {
			if _, err := getUpstream(ctx, tx, upstream, s.now()); err != nil {
				return err
			}
			return vault.ErrConflict
		}
		kinds := make([]string, 0, len(secrets))
		for k := range secrets {
			kinds = append(kinds, k)
		}
		sort.Strings(kinds)
		now := s.now()
		for _, k := range kinds {
			if err := putSecret(ctx, tx, upstream, k, secrets[k], now); err != nil {
				return err
			}
		}
		defaultTarget(&ev, upstream)
		return appendSuccess(ctx, tx, &ev)
	})
	if err != nil {
		return fmt.Errorf("swap secrets of %s: %w", upstream, err)
	}
	return nil
}
