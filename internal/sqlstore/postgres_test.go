package sqlstore

import (
	"testing"

	"github.com/mandate-dev/mandate/internal/pgtest"
	"github.com/mandate-dev/mandate/internal/storetest"
)

func TestPostgres(t *testing.T) {
	pgtest.BaseURL(t)
	storetest.Run(t, func(t *testing.T) storetest.Store { return mustOpen(t, pgtest.URL(t)) })
}

func TestPostgresAuditFaults(t *testing.T) {
	pgtest.BaseURL(t)
	storetest.RunAuditFaults(t, func(t *testing.T) (storetest.Store, string) {
		dsn := pgtest.URL(t)
		return mustOpen(t, dsn), dsn
	})
}

func TestPostgresDialect(t *testing.T) {
	pgtest.BaseURL(t)
	runDialectTests(t, DialectPostgres, func(t *testing.T) string { return pgtest.URL(t) })
}
