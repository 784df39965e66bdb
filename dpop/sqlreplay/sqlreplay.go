// Package sqlreplay is a dpop.ReplayStore on a SQL database that the replicas of a resource
// server share, so a DPoP proof one replica accepted is refused by every other (RFC 9449 §11.1).
// A dpop.MemoryReplayStore is complete for one process only: behind a load balancer each
// replica would accept a captured proof once more within its window.
//
// The store keeps one small table of its own (created by New when absent): the proof's id and
// until when it must be remembered. One INSERT … ON CONFLICT statement decides, so of
// concurrent uses of one id on any number of replicas exactly one succeeds. Expired rows are
// deleted in bounded batches, at most once per PurgeInterval, by a background purge that a Use
// starts. It runs on PostgreSQL and on SQLite (3.24 or later, e.g. modernc.org/sqlite), and on
// engines that speak their dialect of INSERT … ON CONFLICT; the caller opens the *sql.DB with
// its driver. On SQLite give it a busy timeout (modernc.org/sqlite:
// "file:replay.db?_pragma=busy_timeout(5000)"): the background purge writes alongside Use, and
// without one a Use that meets it fails at once with SQLITE_BUSY instead of waiting.
//
// An in-process cache in front refuses a proof replayed at the same replica without a database
// round trip; every first use costs one single-statement write.
//
//	db, _ := sql.Open("pgx", os.Getenv("DATABASE_URL"))
//	replay, err := sqlreplay.New(ctx, db, sqlreplay.Options{})
//	…
//	v, err := verify.New(verify.Config{…, DPoP: dpop.Config{Replay: replay}})
package sqlreplay

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mandate-dev/mandate/dpop"
)

// Options configures a Store. The zero value is ready to use.
type Options struct {
	// Table is the table's name: 1 to 63 ASCII letters, digits and underscores, not starting
	// with a digit; "" = "dpop_replay". Replicas that share proofs name the same table.
	Table string
	// PurgeInterval is the least time between two purges of expired rows; 0 = 1 minute.
	// Negative = never purge by itself (call Purge).
	PurgeInterval time.Duration
	// PurgeBatch bounds the rows one purge statement deletes; 0 = 1000.
	PurgeBatch int
	// Now is the clock, which must agree with the checker's (dpop.Config.Now); nil = time.Now.
	Now func() time.Time
}

// Store is a dpop.ReplayStore on a database. It is safe for concurrent use.
type Store struct {
	db    *sql.DB
	now   func() time.Time
	front *dpop.MemoryReplayStore

	useSQL, purgeSQL string
	interval         time.Duration
	batch            int

	purging   atomic.Bool
	lastPurge atomic.Int64 // unix nanoseconds of the last purge started
	wg        sync.WaitGroup
}

var _ dpop.ReplayStore = (*Store)(nil)

// New returns a Store on db, creating its table and index when they do not exist (several
// replicas may call it at once).
func New(ctx context.Context, db *sql.DB, opts Options) (*Store, error) {
	if db == nil {
		return nil, errors.New("sqlreplay: New: db is nil")
	}
	table := opts.Table
	if table == "" {
		table = "dpop_replay"
	}
	if !validName(table) {
		return nil, fmt.Errorf("sqlreplay: New: table name %q: use 1 to 63 letters, digits and underscores, not starting with a digit", table)
	}
	s := &Store{db: db, now: opts.Now, interval: opts.PurgeInterval, batch: opts.PurgeBatch}
	if s.now == nil {
		s.now = time.Now
	}
	if s.interval == 0 {
		s.interval = time.Minute
	}
	if s.batch <= 0 {
		s.batch = 1000
	}
	s.front = dpop.NewMemoryReplayStore()
	s.front.Now = s.now
	// expires_at is in unix nanoseconds. An expired row is taken over by the next use of its
	// id: the WHERE makes the update (and so the use) happen only then.
	s.useSQL = `INSERT INTO ` + table + ` (id, expires_at) VALUES ($1, $2)
		ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at
		WHERE ` + table + `.expires_at <= $3`
	s.purgeSQL = `DELETE FROM ` + table + ` WHERE id IN
		(SELECT id FROM ` + table + ` WHERE expires_at <= $1 LIMIT $2)`
	ddl := []string{
		`CREATE TABLE IF NOT EXISTS ` + table + ` (id TEXT PRIMARY KEY, expires_at BIGINT NOT NULL)`,
		`CREATE INDEX IF NOT EXISTS ` + table + `_expires_at ON ` + table + ` (expires_at)`,
	}
	for _, q := range ddl {
		if err := createOnce(ctx, db, q); err != nil {
			return nil, fmt.Errorf("sqlreplay: create table %s: %w", table, err)
		}
	}
	s.lastPurge.Store(s.now().UnixNano() - int64(s.interval)) // the first Use purges
	return s, nil
}

// createOnce runs a CREATE … IF NOT EXISTS. On PostgreSQL two of them at once may both find
// the name free and one then fails on a catalog constraint: the statement is tried once more,
// when it finds what the other created.
func createOnce(ctx context.Context, db *sql.DB, q string) error {
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if _, err = db.ExecContext(ctx, q); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Duration(attempt+1) * 50 * time.Millisecond):
		}
	}
	return err
}

func validName(s string) bool {
	if s == "" || len(s) > 63 || ('0' <= s[0] && s[0] <= '9') {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// Use implements dpop.ReplayStore: it records id until exp and returns dpop.ErrReplay
// (wrapped) if id is recorded and unexpired, by this replica or another.
func (s *Store) Use(ctx context.Context, id string, exp time.Time) error {
	if err := s.front.Use(ctx, id, exp); err != nil {
		return err
	}
	now := s.now()
	if !exp.After(now) {
		return nil // expired already: a checker refuses such a proof on its iat
	}
	res, err := s.db.ExecContext(ctx, s.useSQL, id, exp.UnixNano(), now.UnixNano())
	if err != nil {
		// Not recorded where the replicas decide: forget it here too, so the client's retry of
		// the refused request is judged afresh rather than refused as a replay at this replica.
		s.front.Forget(id)
		return fmt.Errorf("sqlreplay: record proof id: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("sqlreplay: record proof id: %w", err)
	}
	s.maybePurge(now)
	if n == 0 {
		return fmt.Errorf("sqlreplay: %w", dpop.ErrReplay)
	}
	return nil
}

// maybePurge starts a purge in the background when the last one began at least
// PurgeInterval ago and none is running.
func (s *Store) maybePurge(now time.Time) {
	if s.interval < 0 || now.UnixNano()-s.lastPurge.Load() < int64(s.interval) {
		return
	}
	if !s.purging.CompareAndSwap(false, true) {
		return
	}
	s.lastPurge.Store(now.UnixNano())
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer s.purging.Store(false)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = s.Purge(ctx) // a failed purge leaves rows for the next one
	}()
}

// Purge deletes the rows expired by now, in batches of PurgeBatch, and returns how many it
// deleted. A Store purges by itself (see PurgeInterval); call Purge to do it on a schedule
// of your own.
func (s *Store) Purge(ctx context.Context) (int64, error) {
	var total int64
	for {
		res, err := s.db.ExecContext(ctx, s.purgeSQL, s.now().UnixNano(), s.batch)
		if err != nil {
			return total, fmt.Errorf("sqlreplay: purge: %w", err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return total, fmt.Errorf("sqlreplay: purge: %w", err)
		}
		total += n
		if n < int64(s.batch) {
			return total, nil
		}
	}
}

// Close waits for a purge the store started to finish. It does not close the *sql.DB.
func (s *Store) Close() error {
	s.wg.Wait()
	return nil
}
