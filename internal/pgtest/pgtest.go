// Package pgtest gives tests a PostgreSQL database of their own: a fresh schema in the server
// named by MANDATE_TEST_POSTGRES, dropped when the test ends.
package pgtest

import (
	"context"
	"database/sql"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver

	"github.com/mandate-dev/mandate/internal/ids"
)

// EnvVar names the connection URL of the PostgreSQL server tests may use.
const EnvVar = "MANDATE_TEST_POSTGRES"

// BaseURL returns MANDATE_TEST_POSTGRES, or skips the test saying so.
func BaseURL(t testing.TB) string {
	t.Helper()
	base := os.Getenv(EnvVar)
	if base == "" {
		t.Skip(EnvVar + " not set: skipping PostgreSQL tests")
	}
	return base
}

// URL creates a schema of the test's own, dropped at cleanup, and returns MANDATE_TEST_POSTGRES
// with search_path set to it. An unreachable server fails the test: when the variable is set,
// PostgreSQL is expected.
func URL(t testing.TB) string {
	t.Helper()
	base := BaseURL(t)
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("%s is not a URL: %v", EnvVar, err)
	}
	admin, err := sql.Open("pgx", base)
	if err != nil {
		t.Fatalf("open %s: %v", EnvVar, err)
	}
	t.Cleanup(func() { admin.Close() })
	schema := strings.ReplaceAll(ids.New("mandate_test"), "-", "_")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := admin.ExecContext(ctx, `CREATE SCHEMA `+schema); err != nil {
		t.Fatalf("create schema in %s: %v", EnvVar, err)
	}
	t.Cleanup(func() {
		// Runs after the cleanups registered later (a store's Close), so nothing holds the schema.
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
