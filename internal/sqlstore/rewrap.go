package sqlstore

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"strings"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/token"
	"github.com/mandate-dev/mandate/internal/vault"
)

// Master key rotation: every sealed blob of the database (the upstream secrets and the signing
// keys' private keys) is read in pages and written back re-wrapped under the newest master key,
// each row only if it still holds the blob that was read (compare-and-swap), so a write by a
// running server between the read and the write is never lost: the row is left as that server
// wrote it, and a later pass re-wraps it. A re-wrap changes no secret, so it keeps the secret's
// version: a server's refresh that compares versions (SwapSecrets) is not disturbed by it.

// SealedSecrets returns up to limit stored secrets (expired ones too) after the row (after.Upstream,
// after.Kind), in (upstream, kind) order; the zero SealedRow starts at the first.
func (s *Store) SealedSecrets(ctx context.Context, after vault.SealedRow, limit int) ([]vault.SealedRow, error) {
	rows, err := s.rdb.QueryContext(ctx, `SELECT upstream, kind, sealed FROM upstream_secrets
		WHERE upstream > $1 OR (upstream = $1 AND kind > $2)
		ORDER BY upstream, kind LIMIT $3`, after.Upstream, after.Kind, limit)
	if err != nil {
		return nil, fmt.Errorf("list sealed secrets: %w", err)
	}
	list, err := scanAll(rows, func(row rowScanner) (vault.SealedRow, error) {
		var r vault.SealedRow
		err := row.Scan(&r.Upstream, &r.Kind, &r.Sealed)
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("list sealed secrets: %w", err)
	}
	return list, nil
}

// RewrapSecrets writes each row's New blob in place of its Sealed one, only where the row still
// holds Sealed, in one transaction, and returns how many rows it wrote. ev is appended (with
// " rows=N" added to its Detail) when it wrote at least one.
func (s *Store) RewrapSecrets(ctx context.Context, rows []vault.SealedRow, ev audit.Event) (int, error) {
	n, err := s.casBlobs(ctx, len(rows), func(tx *sql.Tx, i int) (sql.Result, error) {
		r := rows[i]
		if len(r.New) == 0 || bytes.Equal(r.New, r.Sealed) {
			return nil, nil
		}
		return tx.ExecContext(ctx, `UPDATE upstream_secrets SET sealed = $3
			WHERE upstream = $1 AND kind = $2 AND sealed = $4`, r.Upstream, r.Kind, r.New, r.Sealed)
	}, ev)
	if err != nil {
		return 0, fmt.Errorf("rewrap secrets: %w", err)
	}
	return n, nil
}

// SealedSigningKeys returns up to limit signing keys (retired ones too) after the kid after, in
// kid order, with their sealed private keys.
func (s *Store) SealedSigningKeys(ctx context.Context, after string, limit int) ([]token.SealedKey, error) {
	rows, err := s.rdb.QueryContext(ctx, `SELECT kid, private FROM signing_keys WHERE kid > $1
		ORDER BY kid LIMIT $2`, after, limit)
	if err != nil {
		return nil, fmt.Errorf("list sealed signing keys: %w", err)
	}
	list, err := scanAll(rows, func(row rowScanner) (token.SealedKey, error) {
		var k token.SealedKey
		err := row.Scan(&k.KID, &k.Sealed)
		return k, err
	})
	if err != nil {
		return nil, fmt.Errorf("list sealed signing keys: %w", err)
	}
	return list, nil
}

// ResealSigningKeys writes each key's New blob in place of its Sealed one, only where the row
// still holds Sealed, in one transaction, and returns how many rows it wrote. ev is appended
// (with " rows=N" added to its Detail) when it wrote at least one.
func (s *Store) ResealSigningKeys(ctx context.Context, keys []token.SealedKey, ev audit.Event) (int, error) {
	n, err := s.casBlobs(ctx, len(keys), func(tx *sql.Tx, i int) (sql.Result, error) {
		k := keys[i]
		if len(k.New) == 0 || bytes.Equal(k.New, k.Sealed) {
			return nil, nil
		}
		return tx.ExecContext(ctx, `UPDATE signing_keys SET private = $2 WHERE kid = $1 AND private = $3`,
			k.KID, k.New, k.Sealed)
	}, ev)
	if err != nil {
		return 0, fmt.Errorf("reseal signing keys: %w", err)
	}
	return n, nil
}

// casBlobs runs update for each of n rows in one audited write transaction and counts the rows
// changed.
func (s *Store) casBlobs(ctx context.Context, n int, update func(tx *sql.Tx, i int) (sql.Result, error), ev audit.Event) (int, error) {
	written := 0
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		written = 0
		for i := range n {
			res, err := update(tx, i)
			if err != nil {
				return err
			}
			if res == nil {
				continue
			}
			c, err := res.RowsAffected()
			if err != nil {
				return err
			}
			written += int(c)
		}
		if written == 0 {
			return nil
		}
		ev.Detail = strings.TrimSpace(fmt.Sprintf("%s rows=%d", ev.Detail, written))
		return appendSuccess(ctx, tx, &ev)
	})
	if err != nil {
		return 0, err
	}
	return written, nil
}
