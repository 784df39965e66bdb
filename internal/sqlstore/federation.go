package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/federation"
	"github.com/mandate-dev/mandate/internal/principal"
)

const serviceAccountCols = `id, name, owner_id, description, disabled, created_at`

// CreateServiceAccount stores a with ev (Target defaults to a.ID). A name used by any principal
// gives principal.ErrNameTaken; an unknown owner principal.ErrNotFound.
func (s *Store) CreateServiceAccount(ctx context.Context, a principal.ServiceAccount, ev audit.Event) error {
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO users (id, name, admin, created_at, kind, owner_id, description, disabled)
			VALUES ($1, $2, $3, $4, 'service', $5, $6, $7)`,
			a.ID, a.Name, false, nanos(a.CreatedAt), a.OwnerID, a.Description, a.Disabled)
		switch {
		case uniqueViolation(err, "users", "name"):
			return fmt.Errorf("name %q: %w", a.Name, principal.ErrNameTaken)
		case foreignKeyViolation(err):
			return fmt.Errorf("owner %s: %w", a.OwnerID, principal.ErrNotFound)
		case err != nil:
			return err
		}
		defaultTarget(&ev, a.ID)
		return appendSuccess(ctx, tx, &ev)
	})
	if err != nil {
		return fmt.Errorf("create service account %s: %w", a.ID, err)
	}
	return nil
}

// GetServiceAccount finds a service account by id, or else by name.
func (s *Store) GetServiceAccount(ctx context.Context, ref string) (principal.ServiceAccount, error) {
	a, err := scanServiceAccount(s.rdb.QueryRowContext(ctx, `SELECT `+serviceAccountCols+` FROM users
		WHERE kind = 'service' AND (id = $1 OR name = $1) ORDER BY CASE WHEN id = $1 THEN 0 ELSE 1 END LIMIT 1`, ref))
	if errors.Is(err, sql.ErrNoRows) {
		err = principal.ErrNotFound
	}
	if err != nil {
		return principal.ServiceAccount{}, fmt.Errorf("get service account %s: %w", ref, err)
	}
	return a, nil
}

// ListServiceAccounts returns every service account, by name.
func (s *Store) ListServiceAccounts(ctx context.Context) ([]principal.ServiceAccount, error) {
	return queryAll(ctx, s.rdb, "list service accounts", scanServiceAccount,
		`SELECT `+serviceAccountCols+` FROM users WHERE kind = 'service' ORDER BY name`)
}

// SetServiceAccountDisabled disables or enables a service account, with ev (Target defaults to
// id). An unknown id gives principal.ErrNotFound.
func (s *Store) SetServiceAccountDisabled(ctx context.Context, id string, disabled bool, ev audit.Event) error {
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		if err := execOne(ctx, tx, principal.ErrNotFound, `UPDATE users SET disabled = $1 WHERE id = $2 AND kind = 'service'`, disabled, id); err != nil {
			return err
		}
		defaultTarget(&ev, id)
		return appendSuccess(ctx, tx, &ev)
	})
	if err != nil {
		return fmt.Errorf("set service account %s disabled=%t: %w", id, disabled, err)
	}
	return nil
}

func scanServiceAccount(r rowScanner) (principal.ServiceAccount, error) {
	var a principal.ServiceAccount
	var owner sql.NullString
	var created int64
	if err := r.Scan(&a.ID, &a.Name, &owner, &a.Description, &a.Disabled, &created); err != nil {
		return principal.ServiceAccount{}, err
	}
	a.OwnerID, a.CreatedAt = owner.String, fromNanos(created)
	return a, nil
}

const (
	issuerCols = `url, jwks, max_assertion_lifetime, require_jti, shared, created_at`
	ruleCols   = `id, issuer, audience, subject_prefix, claims, condition, service_account, scopes, resources,
		token_ttl, require_dpop, disabled, created_at`
)

// CreateIssuer stores is with ev (Target defaults to is.URL). A known URL gives
// federation.ErrExists.
func (s *Store) CreateIssuer(ctx context.Context, is federation.Issuer, ev audit.Event) error {
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		var jwks any
		if is.JWKS != nil {
			jwks = string(is.JWKS)
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO federation_issuers (`+issuerCols+`) VALUES ($1, $2, $3, $4, $5, $6)`,
			is.URL, jwks, int64(is.MaxAssertionLifetime), is.RequireJTI, is.Shared, nanos(is.CreatedAt))
		if uniqueViolation(err, "federation_issuers", "url") {
			return federation.ErrExists
		}
		if err != nil {
			return err
		}
		defaultTarget(&ev, is.URL)
		return appendSuccess(ctx, tx, &ev)
	})
	if err != nil {
		return fmt.Errorf("create issuer %s: %w", is.URL, err)
	}
	return nil
}

// GetIssuer finds an issuer by its exact URL.
func (s *Store) GetIssuer(ctx context.Context, url string) (federation.Issuer, error) {
	is, err := scanIssuer(s.rdb.QueryRowContext(ctx, `SELECT `+issuerCols+` FROM federation_issuers WHERE url = $1`, url))
	if errors.Is(err, sql.ErrNoRows) {
		err = federation.ErrNotFound
	}
	if err != nil {
		return federation.Issuer{}, fmt.Errorf("get issuer %s: %w", url, err)
	}
	return is, nil
}

// ListIssuers returns every issuer, by URL.
func (s *Store) ListIssuers(ctx context.Context) ([]federation.Issuer, error) {
	return queryAll(ctx, s.rdb, "list issuers", scanIssuer, `SELECT `+issuerCols+` FROM federation_issuers ORDER BY url`)
}

// RemoveIssuer deletes an issuer and its rules, with ev (Target defaults to url). An unknown
// URL gives federation.ErrNotFound.
func (s *Store) RemoveIssuer(ctx context.Context, url string, ev audit.Event) error {
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		// Rules go first and explicitly: the cascade needs foreign keys on, which is the
		// connection's setting, not the schema's.
		if _, err := tx.ExecContext(ctx, `DELETE FROM federation_rules WHERE issuer = $1`, url); err != nil {
			return err
		}
		if err := execOne(ctx, tx, federation.ErrNotFound, `DELETE FROM federation_issuers WHERE url = $1`, url); err != nil {
			return err
		}
		defaultTarget(&ev, url)
		return appendSuccess(ctx, tx, &ev)
	})
	if err != nil {
		return fmt.Errorf("remove issuer %s: %w", url, err)
	}
	return nil
}

func scanIssuer(r rowScanner) (federation.Issuer, error) {
	var is federation.Issuer
	var jwks sql.NullString
	var maxLife, created int64
	if err := r.Scan(&is.URL, &jwks, &maxLife, &is.RequireJTI, &is.Shared, &created); err != nil {
		return federation.Issuer{}, err
	}
	if jwks.Valid {
		is.JWKS = []byte(jwks.String)
	}
	is.MaxAssertionLifetime, is.CreatedAt = time.Duration(maxLife), fromNanos(created)
	return is, nil
}

// CreateRule stores r with ev (Target defaults to r.ID). An unknown issuer or service account
// gives federation.ErrNotFound.
func (s *Store) CreateRule(ctx context.Context, r federation.Rule, ev audit.Event) error {
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		claims, scopes, resources, err := ruleJSON(r)
		if err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO federation_rules (`+ruleCols+`)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)`,
			r.ID, r.Issuer, r.Audience, r.SubjectPrefix, claims, r.Condition, r.ServiceAccount, scopes, resources,
			int64(r.TokenTTL), r.RequireDPoP, r.Disabled, nanos(r.CreatedAt))
		if foreignKeyViolation(err) {
			return fmt.Errorf("issuer %s or service account %s: %w", r.Issuer, r.ServiceAccount, federation.ErrNotFound)
		}
		if err != nil {
			return err
		}
		defaultTarget(&ev, r.ID)
		return appendSuccess(ctx, tx, &ev)
	})
	if err != nil {
		return fmt.Errorf("create rule %s: %w", r.ID, err)
	}
	return nil
}

// GetRule finds a rule by id.
func (s *Store) GetRule(ctx context.Context, id string) (federation.Rule, error) {
	r, err := scanRule(s.rdb.QueryRowContext(ctx, `SELECT `+ruleCols+` FROM federation_rules WHERE id = $1`, id))
	if errors.Is(err, sql.ErrNoRows) {
		err = federation.ErrNotFound
	}
	if err != nil {
		return federation.Rule{}, fmt.Errorf("get rule %s: %w", id, err)
	}
	return r, nil
}

// ListRules lists the rules of one issuer ("" = all), oldest first.
func (s *Store) ListRules(ctx context.Context, issuer string) ([]federation.Rule, error) {
	return queryAll(ctx, s.rdb, "list rules", scanRule, `SELECT `+ruleCols+` FROM federation_rules
		WHERE $1 = '' OR issuer = $1 ORDER BY created_at, id`, issuer)
}

// SetRuleDisabled disables or enables a rule, with ev (Target defaults to id). An unknown id
// gives federation.ErrNotFound.
func (s *Store) SetRuleDisabled(ctx context.Context, id string, disabled bool, ev audit.Event) error {
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		if err := execOne(ctx, tx, federation.ErrNotFound, `UPDATE federation_rules SET disabled = $1 WHERE id = $2`, disabled, id); err != nil {
			return err
		}
		defaultTarget(&ev, id)
		return appendSuccess(ctx, tx, &ev)
	})
	if err != nil {
		return fmt.Errorf("set rule %s disabled=%t: %w", id, disabled, err)
	}
	return nil
}

func ruleJSON(r federation.Rule) (claims, scopes, resources string, err error) {
	enc := func(v any) string {
		if err != nil {
			return ""
		}
		var b []byte
		b, err = json.Marshal(v)
		return string(b)
	}
	claims, scopes, resources = enc(nonNilMap(r.Claims)), enc(nonNilSlice(r.Scopes)), enc(nonNilSlice(r.Resources))
	if err != nil {
		err = fmt.Errorf("encode rule %s: %w", r.ID, err)
	}
	return claims, scopes, resources, err
}

func nonNilMap(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

func nonNilSlice(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func scanRule(row rowScanner) (federation.Rule, error) {
	var r federation.Rule
	var claims, scopes, resources string
	var ttl, created int64
	if err := row.Scan(&r.ID, &r.Issuer, &r.Audience, &r.SubjectPrefix, &claims, &r.Condition, &r.ServiceAccount,
		&scopes, &resources, &ttl, &r.RequireDPoP, &r.Disabled, &created); err != nil {
		return federation.Rule{}, err
	}
	r.TokenTTL, r.CreatedAt = time.Duration(ttl), fromNanos(created)
	for _, f := range []struct {
		raw string
		dst any
	}{{claims, &r.Claims}, {scopes, &r.Scopes}, {resources, &r.Resources}} {
		if err := json.Unmarshal([]byte(f.raw), f.dst); err != nil {
			return federation.Rule{}, fmt.Errorf("rule %s: %w", r.ID, err)
		}
	}
	if len(r.Claims) == 0 {
		r.Claims = nil
	}
	if len(r.Scopes) == 0 {
		r.Scopes = nil
	}
	if len(r.Resources) == 0 {
		r.Resources = nil
	}
	return r, nil
}
