package sqlstore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"embed"
	"errors"
	"fmt"
	"io/fs"

	"github.com/pressly/goose/v3"
)

// ErrDatabaseNewer is returned (wrapped, with both versions) by Open when the database has been
// migrated by a newer mandate than this one: running old code on a newer schema could corrupt
// it, so the store refuses to start.
var ErrDatabaseNewer = errors.New("database was migrated by a newer mandate")

//go:embed migrations/sqlite/*.sql migrations/postgres/*.sql
var migrations embed.FS

// migrationFS returns the numbered migrations of one dialect.
func migrationFS(dialect string) (fs.FS, error) {
	return fs.Sub(migrations, "migrations/"+dialect)
}

// migrate brings db to the newest embedded migration, or refuses with ErrDatabaseNewer. It uses
// goose's Provider API, so no global goose state is touched.
func migrate(ctx context.Context, db *sql.DB, dialect string) (err error) {
	fsys, err := migrationFS(dialect)
	if err != nil {
		return err
	}
	gd := goose.DialectSQLite3
	if dialect == DialectPostgres {
		gd = goose.DialectPostgres
		// Replicas starting together must not migrate at once. pg_advisory_lock waits
		// (without polling) for the one that got there first; the lock is released by
		// unlock below, or by closing the connection's pool if Open fails.
		unlock, err := lockSession(ctx, db, migrateLockID)
		if err != nil {
			return fmt.Errorf("lock migrations: %w", err)
		}
		defer func() { err = errors.Join(err, unlock()) }()
	}
	p, err := goose.NewProvider(gd, db, fsys,
		goose.WithDisableGlobalRegistry(true),
		goose.WithLogger(goose.NopLogger()),
	)
	if err != nil {
		return fmt.Errorf("migrations: %w", err)
	}
	current, err := p.GetDBVersion(ctx)
	if err != nil {
		return fmt.Errorf("read migration version: %w", err)
	}
	sources := p.ListSources()
	newest := sources[len(sources)-1].Version
	if current > newest {
		return fmt.Errorf("%w: the database is at migration %d but this mandate knows migrations up to %d only; upgrade mandate",
			ErrDatabaseNewer, current, newest)
	}
	if _, err := p.Up(ctx); err != nil {
		return fmt.Errorf("migrate from version %d to %d: %w", current, newest, err)
	}
	return nil
}

// lockSession takes a PostgreSQL session advisory lock on a connection of its own and returns
// the function that releases it and gives the connection back.
func lockSession(ctx context.Context, db *sql.DB, key int64) (unlock func() error, err error) {
	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock($1)`, key); err != nil {
		conn.Close()
		return nil, err
	}
	return func() error {
		_, err := conn.ExecContext(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, key)
		if err != nil {
			// Do not give a connection that may still hold the lock back to the pool.
			_ = conn.Raw(func(any) error { return driver.ErrBadConn })
		}
		return errors.Join(err, conn.Close())
	}, nil
}
