package sqlstore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/mandate-dev/mandate/internal/apperr"
)

// DefaultTimeout bounds every database call when Open is given no WithTimeout.
const DefaultTimeout = 5 * time.Second

// Option changes how Open opens the database.
type Option func(*options)

type options struct{ timeout time.Duration }

// WithTimeout bounds every call to the database (a connect, a statement, reading its rows, a
// begin, a commit, a ping) by d; 0 or less keeps DefaultTimeout.
func WithTimeout(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.timeout = d
		}
	}
}

func openOptions(opts []Option) options {
	o := options{timeout: DefaultTimeout}
	for _, f := range opts {
		f(&o)
	}
	return o
}

// The deadline of every database call.
//
// A database that does not answer (a black-holed network, a server that froze) would otherwise
// hold a request, and the pooled connection it uses, for as long as the operating system keeps
// the TCP connection: minutes. Rather than giving each of the store's methods its own timeout,
// the store reaches its database through a connector that bounds every driver call by the
// store's timeout: a connect, Exec, Query and the reading of its rows up to Close, Prepare and
// the prepared statement's calls, Begin, Commit and Rollback each, Ping, and the session reset
// database/sql runs (a ping on PostgreSQL) before it hands out an idle connection. A call past
// its deadline is cancelled (pgx closes the connection, SQLite interrupts the statement) and
// fails with an error that wraps apperr.ErrUnavailable, as does every error meaning that the
// database could not be reached or did not answer (see unavailable), so the edge answers 503
// with Retry-After, never a refusal of the caller's credentials.
//
// Waiting for a free connection of the pool is not a driver call: it is bounded by the caller's
// context only, and by the deadline of the calls that hold the connections.
//
// What may rightly wait longer marks its context with unbounded: migrations and the advisory
// locks that make replicas starting together take turns.

type unboundedKey struct{}

// unbounded marks ctx so that the store's calls under it keep only ctx's own deadline.
func unbounded(ctx context.Context) context.Context {
	return context.WithValue(ctx, unboundedKey{}, true)
}

// bound returns ctx limited to d from now, unless ctx is marked unbounded.
func bound(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if ctx.Value(unboundedKey{}) != nil {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}

// boundedConnector opens connections through c and bounds each of their calls by timeout.
type boundedConnector struct {
	c       driver.Connector
	timeout time.Duration
}

func (b *boundedConnector) Connect(ctx context.Context) (driver.Conn, error) {
	bctx, cancel := bound(ctx, b.timeout)
	defer cancel()
	c, err := b.c.Connect(bctx)
	if err != nil {
		return nil, outcome(ctx, bctx, b.timeout, err)
	}
	return &boundedConn{c: c, timeout: b.timeout}, nil
}

func (b *boundedConnector) Driver() driver.Driver { return b.c.Driver() }

// dsnConnector is the connector of a driver that has none of its own (modernc.org/sqlite).
type dsnConnector struct {
	d   driver.Driver
	dsn string
}

func (c dsnConnector) Connect(context.Context) (driver.Conn, error) { return c.d.Open(c.dsn) }
func (c dsnConnector) Driver() driver.Driver                        { return c.d }

// errTimedOut is the error of a call that ran out its deadline. It does not match
// driver.ErrBadConn, though the connection is lost (pgx closes it): database/sql would otherwise
// retry on two more connections, each up to the deadline, and hold the caller three times as long.
func errTimedOut(timeout time.Duration) error {
	return &unavailableError{fmt.Errorf("the database did not answer within %v: %w", timeout, context.DeadlineExceeded)}
}

// outcome is the error to return for err, from a call run under bctx, bound from the caller's
// ctx: errTimedOut when the call's own deadline passed (and not the caller's), else err as
// markUnavailable has it.
func outcome(ctx, bctx context.Context, timeout time.Duration, err error) error {
	if err == nil {
		return nil
	}
	if bctx.Err() != nil && ctx.Err() == nil && err != io.EOF {
		return errTimedOut(timeout)
	}
	return markUnavailable(err)
}

// boundedConn is a driver connection whose every call has a deadline. It offers each optional
// interface of database/sql/driver that the connections of both drivers offer, and falls back
// as database/sql itself would where the wrapped connection lacks one.
//
// A connection one of whose calls timed out is lost: its later calls fail at once, and it is
// not valid, so database/sql closes it when it comes back to the pool.
type boundedConn struct {
	c       driver.Conn
	timeout time.Duration
	lost    atomic.Pointer[error] // the error of the call that timed out
}

var (
	_ driver.Conn               = (*boundedConn)(nil)
	_ driver.ConnBeginTx        = (*boundedConn)(nil)
	_ driver.ConnPrepareContext = (*boundedConn)(nil)
	_ driver.ExecerContext      = (*boundedConn)(nil)
	_ driver.QueryerContext     = (*boundedConn)(nil)
	_ driver.Pinger             = (*boundedConn)(nil)
	_ driver.SessionResetter    = (*boundedConn)(nil)
	_ driver.Validator          = (*boundedConn)(nil)
	_ driver.NamedValueChecker  = (*boundedConn)(nil)
)

// outcome is outcome for a call on b, marking b lost when the call timed out.
func (b *boundedConn) outcome(ctx, bctx context.Context, err error) error {
	err = outcome(ctx, bctx, b.timeout, err)
	if errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, driver.ErrBadConn) {
		b.lost.CompareAndSwap(nil, &err)
	}
	return err
}

// lostErr is the error of the call that made b lost, or nil.
func (b *boundedConn) lostErr() error {
	if e := b.lost.Load(); e != nil {
		return *e
	}
	return nil
}

func (b *boundedConn) Prepare(query string) (driver.Stmt, error) {
	return b.PrepareContext(context.Background(), query)
}

func (b *boundedConn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	if err := b.lostErr(); err != nil {
		return nil, err
	}
	bctx, cancel := bound(ctx, b.timeout)
	defer cancel()
	var s driver.Stmt
	var err error
	if p, ok := b.c.(driver.ConnPrepareContext); ok {
		s, err = p.PrepareContext(bctx, query)
	} else {
		s, err = b.c.Prepare(query)
	}
	if err != nil {
		return nil, b.outcome(ctx, bctx, err)
	}
	return &boundedStmt{s: s, conn: b}, nil
}

func (b *boundedConn) Close() error { return b.c.Close() }

func (b *boundedConn) Begin() (driver.Tx, error) {
	return b.BeginTx(context.Background(), driver.TxOptions{})
}

// BeginTx begins under a context of the transaction's own, which a driver may keep for Commit
// and Rollback (pgx does): the begin, the commit and the rollback each get their own deadline
// on it, and it ends with the transaction.
func (b *boundedConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	if err := b.lostErr(); err != nil {
		return nil, err
	}
	tctx, cancel := context.WithCancel(ctx)
	tx := &boundedTx{conn: b, cancel: cancel, timeout: b.timeout}
	if ctx.Value(unboundedKey{}) != nil {
		tx.timeout = 0
	}
	var t driver.Tx
	err := tx.run(func() (err error) {
		if bt, ok := b.c.(driver.ConnBeginTx); ok {
			t, err = bt.BeginTx(tctx, opts)
		} else {
			t, err = b.c.Begin() //nolint:staticcheck // the fallback database/sql itself uses
		}
		return err
	})
	if err != nil {
		cancel()
		return nil, err
	}
	tx.t = t
	return tx, nil
}

func (b *boundedConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	e, ok := b.c.(driver.ExecerContext)
	if !ok {
		return nil, driver.ErrSkip
	}
	if err := b.lostErr(); err != nil {
		return nil, err
	}
	bctx, cancel := bound(ctx, b.timeout)
	defer cancel()
	r, err := e.ExecContext(bctx, query, args)
	return r, b.outcome(ctx, bctx, err)
}

func (b *boundedConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	q, ok := b.c.(driver.QueryerContext)
	if !ok {
		return nil, driver.ErrSkip
	}
	if err := b.lostErr(); err != nil {
		return nil, err
	}
	bctx, cancel := bound(ctx, b.timeout)
	r, err := q.QueryContext(bctx, query, args)
	if err != nil {
		err = b.outcome(ctx, bctx, err)
		cancel()
		return nil, err
	}
	return &boundedRows{r: r, conn: b, ctx: ctx, bctx: bctx, cancel: cancel}, nil
}

func (b *boundedConn) Ping(ctx context.Context) error {
	p, ok := b.c.(driver.Pinger)
	if !ok {
		return nil
	}
	if err := b.lostErr(); err != nil {
		return err
	}
	bctx, cancel := bound(ctx, b.timeout)
	defer cancel()
	return b.outcome(ctx, bctx, p.Ping(bctx))
}

// ResetSession runs before database/sql hands out an idle connection (pgx pings one idle for
// more than a second). driver.ErrBadConn passes as it is: database/sql takes another connection.
// A reset that timed out leaves the connection lost: database/sql ignores any other error of a
// reset, and the caller's call then fails at once without a retry.
func (b *boundedConn) ResetSession(ctx context.Context) error {
	r, ok := b.c.(driver.SessionResetter)
	if !ok {
		return nil
	}
	if err := b.lostErr(); err != nil {
		return err
	}
	bctx, cancel := bound(ctx, b.timeout)
	defer cancel()
	err := r.ResetSession(bctx)
	if err != nil && bctx.Err() != nil && ctx.Err() == nil {
		return b.outcome(ctx, bctx, err)
	}
	return err
}

func (b *boundedConn) IsValid() bool {
	if b.lostErr() != nil {
		return false
	}
	if v, ok := b.c.(driver.Validator); ok {
		return v.IsValid()
	}
	return true
}

func (b *boundedConn) CheckNamedValue(nv *driver.NamedValue) error {
	if c, ok := b.c.(driver.NamedValueChecker); ok {
		return c.CheckNamedValue(nv)
	}
	return driver.ErrSkip
}

// boundedTx bounds a transaction's begin, commit and rollback, each, by timeout (none when 0).
type boundedTx struct {
	t       driver.Tx
	conn    *boundedConn
	cancel  context.CancelFunc // ends the transaction's context
	timeout time.Duration
}

// run runs f, one call of the transaction, cancelling the transaction's context if f does not
// return within timeout.
func (b *boundedTx) run(f func() error) error {
	if b.timeout <= 0 {
		return markUnavailable(f())
	}
	var fired atomic.Bool
	t := time.AfterFunc(b.timeout, func() { fired.Store(true); b.cancel() })
	err := f()
	t.Stop()
	if err != nil && fired.Load() {
		err = errTimedOut(b.timeout)
		b.conn.lost.CompareAndSwap(nil, &err)
		return err
	}
	return markUnavailable(err)
}

func (b *boundedTx) Commit() error {
	defer b.cancel()
	return b.run(b.t.Commit)
}

func (b *boundedTx) Rollback() error {
	defer b.cancel()
	return b.run(b.t.Rollback)
}

// boundedStmt is a prepared statement whose every call has a deadline.
type boundedStmt struct {
	s    driver.Stmt
	conn *boundedConn
}

var (
	_ driver.StmtExecContext   = (*boundedStmt)(nil)
	_ driver.StmtQueryContext  = (*boundedStmt)(nil)
	_ driver.NamedValueChecker = (*boundedStmt)(nil)
)

func (b *boundedStmt) Close() error  { return b.s.Close() }
func (b *boundedStmt) NumInput() int { return b.s.NumInput() }

func (b *boundedStmt) Exec(args []driver.Value) (driver.Result, error) {
	return b.ExecContext(context.Background(), valuesNamed(args))
}

func (b *boundedStmt) Query(args []driver.Value) (driver.Rows, error) {
	return b.QueryContext(context.Background(), valuesNamed(args))
}

func (b *boundedStmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	if err := b.conn.lostErr(); err != nil {
		return nil, err
	}
	bctx, cancel := bound(ctx, b.conn.timeout)
	defer cancel()
	var r driver.Result
	var err error
	if e, ok := b.s.(driver.StmtExecContext); ok {
		r, err = e.ExecContext(bctx, args)
	} else {
		var vals []driver.Value
		if vals, err = namedValues(args); err == nil {
			r, err = b.s.Exec(vals) //nolint:staticcheck // the wrapped statement has nothing better
		}
	}
	return r, b.conn.outcome(ctx, bctx, err)
}

func (b *boundedStmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	if err := b.conn.lostErr(); err != nil {
		return nil, err
	}
	bctx, cancel := bound(ctx, b.conn.timeout)
	var r driver.Rows
	var err error
	if q, ok := b.s.(driver.StmtQueryContext); ok {
		r, err = q.QueryContext(bctx, args)
	} else {
		var vals []driver.Value
		if vals, err = namedValues(args); err == nil {
			r, err = b.s.Query(vals) //nolint:staticcheck // the wrapped statement has nothing better
		}
	}
	if err != nil {
		err = b.conn.outcome(ctx, bctx, err)
		cancel()
		return nil, err
	}
	return &boundedRows{r: r, conn: b.conn, ctx: ctx, bctx: bctx, cancel: cancel}, nil
}

func (b *boundedStmt) CheckNamedValue(nv *driver.NamedValue) error {
	if c, ok := b.s.(driver.NamedValueChecker); ok {
		return c.CheckNamedValue(nv)
	}
	return driver.ErrSkip
}

func namedValues(args []driver.NamedValue) ([]driver.Value, error) {
	vals := make([]driver.Value, len(args))
	for i, a := range args {
		if a.Name != "" {
			return nil, errors.New("sqlstore: the driver takes no named parameters")
		}
		vals[i] = a.Value
	}
	return vals, nil
}

func valuesNamed(vals []driver.Value) []driver.NamedValue {
	args := make([]driver.NamedValue, len(vals))
	for i, v := range vals {
		args[i] = driver.NamedValue{Ordinal: i + 1, Value: v}
	}
	return args
}

// boundedRows are a query's rows, read under the query's deadline, which ends at Close.
type boundedRows struct {
	r         driver.Rows
	conn      *boundedConn
	ctx, bctx context.Context // the caller's, and the query's bound from it
	once      sync.Once
	cancel    context.CancelFunc
}

var (
	_ driver.RowsColumnTypeDatabaseTypeName = (*boundedRows)(nil)
	_ driver.RowsColumnTypeScanType         = (*boundedRows)(nil)
	_ driver.RowsColumnTypeNullable         = (*boundedRows)(nil)
	_ driver.RowsColumnTypeLength           = (*boundedRows)(nil)
	_ driver.RowsColumnTypePrecisionScale   = (*boundedRows)(nil)
)

func (b *boundedRows) Columns() []string { return b.r.Columns() }

func (b *boundedRows) Close() error {
	err := b.r.Close()
	err = b.conn.outcome(b.ctx, b.bctx, err)
	b.once.Do(b.cancel)
	return err
}

// Next passes io.EOF on as it is: database/sql compares it, unwrapped.
func (b *boundedRows) Next(dest []driver.Value) error {
	return b.conn.outcome(b.ctx, b.bctx, b.r.Next(dest))
}

func (b *boundedRows) ColumnTypeDatabaseTypeName(i int) string {
	if c, ok := b.r.(driver.RowsColumnTypeDatabaseTypeName); ok {
		return c.ColumnTypeDatabaseTypeName(i)
	}
	return ""
}

func (b *boundedRows) ColumnTypeScanType(i int) reflect.Type {
	if c, ok := b.r.(driver.RowsColumnTypeScanType); ok {
		return c.ColumnTypeScanType(i)
	}
	return reflect.TypeFor[any]()
}

func (b *boundedRows) ColumnTypeNullable(i int) (nullable, ok bool) {
	if c, ok := b.r.(driver.RowsColumnTypeNullable); ok {
		return c.ColumnTypeNullable(i)
	}
	return false, false
}

func (b *boundedRows) ColumnTypeLength(i int) (int64, bool) {
	if c, ok := b.r.(driver.RowsColumnTypeLength); ok {
		return c.ColumnTypeLength(i)
	}
	return 0, false
}

func (b *boundedRows) ColumnTypePrecisionScale(i int) (precision, scale int64, ok bool) {
	if c, ok := b.r.(driver.RowsColumnTypePrecisionScale); ok {
		return c.ColumnTypePrecisionScale(i)
	}
	return 0, 0, false
}

// unavailableError marks a driver error that means the database could not be reached or did
// not answer: errors.Is finds apperr.ErrUnavailable in it, and errors.As the driver's error.
type unavailableError struct{ err error }

func (e *unavailableError) Error() string   { return "database unavailable: " + e.err.Error() }
func (e *unavailableError) Unwrap() []error { return []error{apperr.ErrUnavailable, e.err} }

// markUnavailable wraps err so that it matches apperr.ErrUnavailable when it means the database
// is unavailable, and returns any other error (and nil, and the sentinels database/sql compares
// with ==) as it is.
func markUnavailable(err error) error {
	if err == nil || err == io.EOF || err == driver.ErrSkip || err == driver.ErrRemoveArgument {
		return err
	}
	var ue *unavailableError
	if errors.As(err, &ue) || !unavailable(err) {
		return err
	}
	return &unavailableError{err}
}

// unavailable reports whether a driver error means that the database could not be reached, did
// not answer in time, or refused for a reason of its own state (shutting down, out of
// connections or disk, a lock held by another process) rather than for what was asked: the same
// call may succeed later. A constraint violation, a malformed statement or an unknown error is
// not unavailability.
func unavailable(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch class := pe.Code[:min(2, len(pe.Code))]; class {
		case "08", // connection exception
			"53", // insufficient resources: too many connections, disk full, out of memory
			"57", // operator intervention: shutting down, query canceled by a deadline
			"58", // system error: I/O
			"40", // transaction rollback: serialization failure, deadlock — retry
			"55": // object not in prerequisite state: lock not available
			return true
		case "25":
			return pe.Code == "25006" // read-only transaction: a replica after a fail-over
		}
		return false
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() & 0xff {
		case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_NOMEM, sqlite3.SQLITE_READONLY,
			sqlite3.SQLITE_INTERRUPT, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL, sqlite3.SQLITE_CANTOPEN,
			sqlite3.SQLITE_PROTOCOL:
			return true
		}
		return false
	}
	var ne net.Error
	var ce *pgconn.ConnectError
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) ||
		errors.Is(err, driver.ErrBadConn) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) ||
		errors.As(err, &ne) || errors.As(err, &ce) || pgconn.Timeout(err) || pgconn.SafeToRetry(err)
}

// openBounded opens a pool of driverName's connections to dsn whose every call is bounded by
// timeout.
func openBounded(driverName, dsn string, timeout time.Duration) (*sql.DB, error) {
	// sql.Open connects to nothing: it only finds the registered driver.
	probe, err := sql.Open(driverName, dsn)
	if err != nil {
		return nil, err
	}
	d := probe.Driver()
	probe.Close()
	var c driver.Connector = dsnConnector{d: d, dsn: dsn}
	if dc, ok := d.(driver.DriverContext); ok {
		if c, err = dc.OpenConnector(dsn); err != nil {
			return nil, err
		}
	}
	return sql.OpenDB(&boundedConnector{c: c, timeout: timeout}), nil
}

// openPostgresBounded opens a pool of PostgreSQL connections whose every call is bounded by
// timeout. A connect (TCP, TLS and the start-up exchange) is bounded by the URL's
// connect_timeout, else by timeout; the TCP connections send keep-alive probes after 15 s of
// silence, so a peer that vanished is noticed by the kernel even between calls.
func openPostgresBounded(dsn string, timeout time.Duration) (*sql.DB, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, err // pgconn's ParseConfigError redacts the password
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = timeout
	}
	d := &net.Dialer{Timeout: cfg.ConnectTimeout,
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 15 * time.Second, Interval: 5 * time.Second, Count: 3}}
	cfg.DialFunc = d.DialContext
	return sql.OpenDB(&boundedConnector{c: stdlib.GetConnector(*cfg), timeout: timeout}), nil
}
