package sqlstore

import (
	"context"
	"database/sql"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/ids"
	"github.com/mandate-dev/mandate/internal/storetest"
)

// newPostgresDSN creates a schema of its own for the test, dropped at cleanup, and returns
// MANDATE_TEST_POSTGRES with search_path set to it. Without MANDATE_TEST_POSTGRES it skips.
func newPostgresDSN(t *testing.T) string {
	t.Helper()
	base := postgresURL(t)
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("MANDATE_TEST_POSTGRES is not a URL: %v", err)
	}
	admin, err := sql.Open("pgx", base)
	if err != nil {
		t.Fatalf("open MANDATE_TEST_POSTGRES: %v", err)
	}
	t.Cleanup(func() { admin.Close() })
	schema := strings.ReplaceAll(ids.New("mandate_test"), "-", "_")
	if _, err := admin.ExecContext(t.Context(), `CREATE SCHEMA `+schema); err != nil {
		t.Fatalf("create schema: %v", err)
	}
	t.Cleanup(func() {
		// Runs after the store's cleanup (cleanups run last first), so nothing holds the schema.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := admin.ExecContext(ctx, `DROP SCHEMA `+schema+` CASCADE`); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
	})
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

// postgresURL returns MANDATE_TEST_POSTGRES, or skips the test.
func postgresURL(t *testing.T) string {
	t.Helper()
	base := os.Getenv("MANDATE_TEST_POSTGRES")
	if base == "" {
		t.Skip("MANDATE_TEST_POSTGRES not set: skipping PostgreSQL store tests")
	}
	return base
}

func TestPostgres(t *testing.T) {
	postgresURL(t)
	storetest.Run(t, func(t *testing.T) storetest.Store { return mustOpen(t, newPostgresDSN(t)) })
}

func TestPostgresDialect(t *testing.T) {
	postgresURL(t)
	runDialectTests(t, DialectPostgres, newPostgresDSN)
}
