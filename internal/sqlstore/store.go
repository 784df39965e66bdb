// Package sqlstore implements every mandate store (audit, registry, principal, token, delegation
// and the DPoP replay cache) on SQLite and PostgreSQL through database/sql. Only the composition
// root imports it; domain packages see their own small Store interfaces.
//
// # Dialects and SQL
//
// Queries are written once, with PostgreSQL's numbered placeholders ($1, $2, …), and run
// unchanged on both dialects. This is safe because SQLite treats "$1" as a named parameter and
// modernc.org/sqlite binds a parameter named "$N" to the argument with ordinal N (see argFinder
// and scanArgs in its conn.go), and SQLite gives every occurrence of one name the same index, so
// a "$1" used twice or placeholders out of order bind correctly (the Placeholders test in
// dialect_test.go checks it on both dialects). Never rewrite placeholders. One SQLite quirk to
// respect: a "$name" may carry "::" and a "(…)" suffix, so never write a PostgreSQL cast such as
// "$1::text" right after a placeholder; write CAST($1 AS TEXT) instead. Only the migrations
// (migrations/<dialect>/) and a few dialect-only statements (advisory locks, transaction
// options) differ per dialect.
//
// # Portable schema
//
// Times are BIGINT unix nanoseconds UTC with 0 for the zero time; booleans are INTEGER (SQLite)
// or BOOLEAN (PostgreSQL); ids are TEXT.
//
// # Writes and the audit chain
//
// Every mutating method that takes an audit.Event appends it to the hash chain in the same
// transaction as its change, and marks it OutcomeSuccess; when the change fails nothing is
// written. Appends are serialised so the chain never forks: SQLite has a single writer
// connection with BEGIN IMMEDIATE transactions, and PostgreSQL takes a transaction-scoped
// advisory lock at the start of every audited write transaction (see writeTx). The hot path's
// writes — token issues with their single-use ids, refusals, proxied calls' records, and on
// SQLite new tasks — are committed in batches by one writer goroutine, one transaction (and one
// chain lock) for what queued while the last one ran (see groupcommit.go). Every error that
// means an event is not on record wraps audit.ErrUnavailable.
package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"runtime"
	"strings"
	"sync/atomic"
	"time"

	"github.com/mandate-dev/mandate/internal/audit"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver
	_ "modernc.org/sqlite"             // registers the "sqlite" database/sql driver
)

// Dialect names, as returned by Store.Dialect.
const (
	DialectSQLite   = "sqlite"
	DialectPostgres = "postgres"
)

// Store is every mandate store on one database. It is safe for concurrent use.
type Store struct {
	dialect string
	path    string // the SQLite database file; "" on PostgreSQL
	// db runs every write. On SQLite it holds exactly one connection (the single writer); on
	// PostgreSQL it is the one pool for reads and writes.
	db *sql.DB
	// rdb runs reads outside write transactions. On SQLite it is a separate pool of read-only
	// connections that WAL lets run concurrently with the writer; on PostgreSQL it is db.
	rdb *sql.DB
	now func() time.Time
	// appended, when set, is called after every commit of a transaction that may have appended
	// to the audit chain (see OnAppend).
	appended atomic.Pointer[func()]
	// gc commits the hot path's writes in batches (see groupcommit.go).
	gc *committer
	// stmts are the hot path's prepared statements (see prepared.go).
	stmts    [stmtCount]*sql.Stmt
	rowStmts map[rowStmtKey]*sql.Stmt // multi-row statements (see batchrows.go)
	// changes delivers committed changes to OnChange's functions (see notify.go).
	changes changeFeed
}

// OnAppend makes the store call fn after every commit that may have appended audit events, so
// that the audit sinks read the chain at once instead of at their next poll. fn must not block.
func (s *Store) OnAppend(fn func()) { s.appended.Store(&fn) }

// Open opens and migrates the database. dsn is a postgres:// or postgresql:// URL for
// PostgreSQL; anything else is a SQLite file path (whose directory must exist). Open refuses,
// with an error wrapping ErrDatabaseNewer, a database migrated by a newer mandate. Every call to
// the database is bounded by a deadline (DefaultTimeout, or WithTimeout; see deadline.go).
func Open(ctx context.Context, dsn string, opts ...Option) (*Store, error) {
	o := openOptions(opts)
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		return openPostgres(ctx, dsn, o)
	}
	return openSQLite(ctx, dsn, o)
}

// SQLite connection settings.
//
// SQLite allows one writer at a time. Rather than letting several pooled connections race for
// the write lock (and fail with SQLITE_BUSY, or deadlock when two deferred transactions both
// try to upgrade from read to write), the store funnels every write through one connection:
// database/sql queues writers in Go, where waiting is cheap and respects contexts, and
// transactions begin IMMEDIATE (_txlock) so a write transaction holds the write lock from its
// first statement. Reads go to a separate pool of query_only connections; in WAL mode they run
// concurrently with the writer and see the last committed state. busy_timeout covers other
// processes on the same file (a CLI next to the server) and WAL checkpoints, for as long as the store's
// timeout. synchronous=FULL
// makes every commit durable across power loss: a revocation or an audit record must not
// silently disappear (NORMAL would be faster and still consistent, but may lose the last
// commits).
const (
	sqliteWriterParams = "_foreign_keys=1&_journal_mode=WAL&_synchronous=FULL&_txlock=immediate"
	sqliteReaderParams = "_foreign_keys=1&_query_only=1"
)

// sqliteParams adds to params a busy_timeout of the store's timeout: a lock held by another
// process is waited for no longer than any other database call.
func sqliteParams(params string, timeout time.Duration) string {
	return fmt.Sprintf("_busy_timeout=%d&%s", timeout.Milliseconds(), params)
}

func openSQLite(ctx context.Context, path string, o options) (_ *Store, err error) {
	switch {
	case path == "":
		return nil, errors.New("open sqlite: empty database path")
	case strings.ContainsAny(path, "?#"):
		return nil, fmt.Errorf("open sqlite %q: the path must not contain '?' or '#'", path)
	case path == ":memory:" || strings.HasPrefix(path, "file:"):
		// The writer and reader pools must see the same database, which an in-memory
		// database is not; and URIs would bypass the settings above.
		return nil, fmt.Errorf("open sqlite %q: want a file path", path)
	}
	w, err := openBounded("sqlite", path+"?"+sqliteParams(sqliteWriterParams, o.timeout), o.timeout)
	if err != nil {
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)
	defer func() {
		if err != nil {
			w.Close()
		}
	}()
	if err := w.PingContext(ctx); err != nil { // creates the file and switches it to WAL
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	if err := migrate(unbounded(ctx), w, DialectSQLite); err != nil {
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}

	r, err := openBounded("sqlite", path+"?"+sqliteParams(sqliteReaderParams, o.timeout), o.timeout)
	if err != nil {
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	n := max(4, runtime.GOMAXPROCS(0))
	r.SetMaxOpenConns(n)
	r.SetMaxIdleConns(n)
	if err := r.PingContext(ctx); err != nil {
		r.Close()
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	s := &Store{dialect: DialectSQLite, path: path, db: w, rdb: r, now: time.Now}
	if err := s.prepare(ctx); err != nil {
		r.Close()
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	s.startCommitter()
	return s, nil
}

func openPostgres(ctx context.Context, dsn string, o options) (_ *Store, err error) {
	db, err := openPostgresBounded(dsn, o.timeout)
	if err != nil {
		return nil, fmt.Errorf("open postgres: %w", err) // never print the URL: it may hold a password
	}
	// Bounded so that several replicas stay well under max_connections (100 by default);
	// connections are recycled so that a fail-over or a DNS change is picked up.
	db.SetMaxOpenConns(20)
	db.SetMaxIdleConns(10)
	db.SetConnMaxLifetime(30 * time.Minute)
	db.SetConnMaxIdleTime(5 * time.Minute)
	defer func() {
		if err != nil {
			db.Close()
		}
	}()
	if err := db.PingContext(ctx); err != nil {
		return nil, fmt.Errorf("open postgres: %w", err)
	}
	if err := migrate(unbounded(ctx), db, DialectPostgres); err != nil {
		return nil, fmt.Errorf("open postgres: %w", err)
	}
	s := &Store{dialect: DialectPostgres, db: db, rdb: db, now: time.Now}
	if err := s.prepare(ctx); err != nil {
		return nil, fmt.Errorf("open postgres: %w", err)
	}
	if err := s.setUpChanges(ctx, dsn); err != nil {
		s.closeStmts()
		return nil, fmt.Errorf("open postgres: %w", err)
	}
	s.startCommitter()
	return s, nil
}

// Close commits the events already queued by AppendEvent, refuses new ones, and closes the
// database.
func (s *Store) Close() error {
	s.gc.close()
	s.changes.close()
	err := errors.Join(s.closeStmts(), s.db.Close())
	if s.rdb != s.db {
		err = errors.Join(err, s.rdb.Close())
	}
	return err
}

// Ping checks that the database answers, for /readyz.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.db.PingContext(ctx); err != nil {
		return fmt.Errorf("ping %s: %w", s.dialect, err)
	}
	if s.rdb != s.db {
		if err := s.rdb.PingContext(ctx); err != nil {
			return fmt.Errorf("ping %s readers: %w", s.dialect, err)
		}
	}
	return nil
}

// Dialect returns "sqlite" or "postgres".
func (s *Store) Dialect() string { return s.dialect }

// PostgreSQL advisory lock keys: "mandate" followed by one byte, as a big-endian integer.
const (
	// chainLockID serialises audited write transactions, and with them appends to the audit
	// hash chain (transaction-scoped).
	chainLockID int64 = 0x6d616e64617465_01
	// migrateLockID serialises migrations of replicas starting together (session-scoped).
	migrateLockID int64 = 0x6d616e64617465_02
)

// querier is what both *sql.DB and *sql.Tx offer, so that reads can run inside or outside a
// write transaction.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// writeTx runs fn in a write transaction that may append to the audit chain, and commits when fn
// returns nil. On PostgreSQL it first takes the chain lock, so audited writes are serialised
// across every replica just as SQLite's single writer serialises them; the chain's order is
// then the commit order, and read-modify-write methods (UpdateAgent, RotateKey, AddSigningKey)
// need no row locks of their own.
//
// fn must use tx only: on SQLite the writer pool has one connection, which tx holds.
func (s *Store) writeTx(ctx context.Context, fn func(tx *sql.Tx) error) (err error) {
	return s.tx(ctx, true, fn)
}

// tx runs fn in a write transaction, taking the chain lock first on PostgreSQL when lockChain
// is set (writes that append no audit event need not wait for those that do).
func (s *Store) tx(ctx context.Context, lockChain bool, fn func(tx *sql.Tx) error) (err error) {
	return s.txOn(ctx, s.db, lockChain, fn)
}

// beginner is what begins a transaction: the pool (*sql.DB) or one of its connections.
type beginner interface {
	BeginTx(ctx context.Context, opts *sql.TxOptions) (*sql.Tx, error)
}

// txOn is tx on db (see groupcommit.go for why the writer keeps a connection of its own).
func (s *Store) txOn(ctx context.Context, db beginner, lockChain bool, fn func(tx *sql.Tx) error) (err error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	changes := trackChanges(tx)
	defer func() {
		if err != nil {
			changes()
			tx.Rollback()
		}
	}()
	if lockChain && s.dialect == DialectPostgres {
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, chainLockID); err != nil {
			return fmt.Errorf("lock audit chain: %w", err)
		}
	}
	if err := fn(tx); err != nil {
		return err
	}
	cs := changes()
	if err := s.sendChanges(ctx, tx, cs); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		if lockChain {
			// What fn appended to the audit chain is not on record (a full disk, a lost
			// connection): nor is anything else it did.
			return fmt.Errorf("commit: %w: %w", audit.ErrUnavailable, err)
		}
		return fmt.Errorf("commit: %w", err)
	}
	if fn := s.appended.Load(); lockChain && fn != nil {
		(*fn)()
	}
	s.changes.publishLocal(cs)
	return nil
}

// nanos turns t into the stored form: unix nanoseconds, 0 for the zero time. Times outside the
// int64 range (years before 1678 or after 2261) are clamped.
func nanos(t time.Time) int64 {
	switch {
	case t.IsZero():
		return 0
	case t.Before(minTime):
		return math.MinInt64
	case t.After(maxTime):
		return math.MaxInt64
	}
	return t.UnixNano()
}

var (
	minTime = time.Unix(0, math.MinInt64)
	maxTime = time.Unix(0, math.MaxInt64)
)

// fromNanos is the inverse of nanos; times come back in UTC.
func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

// nullString stores "" as NULL, for optional unique or foreign-key columns.
func nullString(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// queryAll runs a query and scans every row; what names the operation in errors.
func queryAll[T any](ctx context.Context, db *sql.DB, what string, scan func(rowScanner) (T, error), query string, args ...any) ([]T, error) {
	rows, err := db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return out, nil
}

// execOne runs a statement that must change one row (an update or delete by key); none changed
// is notFound.
func execOne(ctx context.Context, tx *sql.Tx, notFound error, query string, args ...any) error {
	res, err := tx.ExecContext(ctx, query, args...)
	if err != nil {
		return err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return notFound
	}
	return nil
}
