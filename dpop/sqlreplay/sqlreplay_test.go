package sqlreplay_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
	_ "modernc.org/sqlite"

	"github.com/mandate-dev/mandate/dpop"
	"github.com/mandate-dev/mandate/dpop/sqlreplay"
)

// database is one shared database and a way to open another connection pool on it, as
// another replica would.
type database struct {
	name string
	open func(t *testing.T) *sql.DB
}

// databases are SQLite (a file) always, and PostgreSQL when MANDATE_TEST_POSTGRES is set.
func databases(t *testing.T) []database {
	t.Helper()
	path := filepath.Join(t.TempDir(), "replay.db")
	dbs := []database{{"sqlite", func(t *testing.T) *sql.DB {
		db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		return db
	}}}
	dsn := os.Getenv("MANDATE_TEST_POSTGRES")
	if dsn == "" {
		t.Log("MANDATE_TEST_POSTGRES is not set: PostgreSQL is skipped (set it to a postgres:// URL to run it)")
		return dbs
	}
	return append(dbs, database{"postgres", func(t *testing.T) *sql.DB {
		db, err := sql.Open("pgx", dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		return db
	}})
}

// table is a table name of this test run alone, so runs on one PostgreSQL database do not meet.
func table(t *testing.T) string {
	b := make([]byte, 6)
	rand.Read(b)
	name := "dpop_replay_test_" + hex.EncodeToString(b)
	return name
}

func newStore(t *testing.T, db *sql.DB, opts sqlreplay.Options) *sqlreplay.Store {
	t.Helper()
	s, err := sqlreplay.New(context.Background(), db, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func dropTable(t *testing.T, db *sql.DB, name string) {
	t.Cleanup(func() { db.Exec(`DROP TABLE IF EXISTS ` + name) })
}

type clock struct{ ns atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.ns.Store(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC).UnixNano())
	return c
}
func (c *clock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *clock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// TestUse is the table of known cases: on one replica and across two, before and after expiry
// and purge.
func TestUse(t *testing.T) {
	for _, d := range databases(t) {
		t.Run(d.name, func(t *testing.T) {
			ctx := context.Background()
			clk := newClock()
			name := table(t)
			dbA, dbB := d.open(t), d.open(t)
			dropTable(t, dbA, name)
			opts := sqlreplay.Options{Table: name, Now: clk.now, PurgeInterval: -1}
			a, b := newStore(t, dbA, opts), newStore(t, dbB, opts)
			exp := clk.now().Add(2 * time.Minute)

			steps := []struct {
				what  string
				store *sqlreplay.Store
				id    string
				exp   time.Time
				want  error
			}{
				{"first use at A", a, "jkt:1", exp, nil},
				{"again at A (the cache in front)", a, "jkt:1", exp, dpop.ErrReplay},
				{"at B (the database)", b, "jkt:1", exp, dpop.ErrReplay},
				{"another id at B", b, "jkt:2", exp, nil},
				{"that id at A", a, "jkt:2", exp, dpop.ErrReplay},
				{"an id expired already", a, "jkt:3", clk.now().Add(-time.Second), nil},
				{"that id again", b, "jkt:3", clk.now().Add(-time.Second), nil},
			}
			for _, st := range steps {
				if err := st.store.Use(ctx, st.id, st.exp); !errors.Is(err, st.want) || (st.want == nil) != (err == nil) {
					t.Errorf("%s: Use(%s) = %v, want %v", st.what, st.id, err, st.want)
				}
			}

			// Past its expiry an id may be used again (a checker refuses such an old proof on
			// its iat; the row is only taken over), and a purge removes what expired.
			clk.advance(3 * time.Minute)
			if err := b.Use(ctx, "jkt:1", clk.now().Add(2*time.Minute)); err != nil {
				t.Errorf("use of an expired id: %v", err)
			}
			n, err := a.Purge(ctx)
			if err != nil || n != 1 {
				t.Errorf("Purge = %d, %v; want the 1 expired row (jkt:2)", n, err)
			}
			if err := a.Use(ctx, "jkt:1", clk.now().Add(2*time.Minute)); !errors.Is(err, dpop.ErrReplay) {
				t.Errorf("a live id survives the purge: Use = %v, want ErrReplay", err)
			}
		})
	}
}

// TestExactlyOneAcrossReplicas is the class: any interleaving of N replicas × M presentations
// of one proof, in sequence or all at once, accepts it exactly once.
func TestExactlyOneAcrossReplicas(t *testing.T) {
	for _, d := range databases(t) {
		t.Run(d.name, func(t *testing.T) {
			ctx := context.Background()
			name := table(t)
			const maxReplicas = 4
			replicas := make([]*sqlreplay.Store, maxReplicas)
			for i := range replicas {
				db := d.open(t)
				if i == 0 {
					dropTable(t, db, name)
				}
				replicas[i] = newStore(t, db, sqlreplay.Options{Table: name})
			}
			seed := uint64(time.Now().UnixNano())
			t.Logf("seed %d", seed)
			rng := mrand.New(mrand.NewPCG(seed, 0))
			for round := 0; round < 40; round++ {
				n, m := 1+rng.IntN(maxReplicas), 1+rng.IntN(5)
				concurrent := rng.IntN(2) == 0
				id := fmt.Sprintf("jkt:round-%d-%d", seed, round)
				exp := time.Now().Add(2 * time.Minute)
				var order []int
				for r := 0; r < n; r++ {
					for range m {
						order = append(order, r)
					}
				}
				rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
				errs := make([]error, len(order))
				if concurrent {
					var wg sync.WaitGroup
					for i, r := range order {
						wg.Add(1)
						go func() { defer wg.Done(); errs[i] = replicas[r].Use(ctx, id, exp) }()
					}
					wg.Wait()
				} else {
					for i, r := range order {
						errs[i] = replicas[r].Use(ctx, id, exp)
					}
				}
				accepted := 0
				for _, err := range errs {
					switch {
					case err == nil:
						accepted++
					case !errors.Is(err, dpop.ErrReplay):
						t.Fatalf("round %d: Use: %v", round, err)
					}
				}
				if accepted != 1 {
					t.Errorf("round %d (%d replicas × %d presentations, concurrent %v, order %v): accepted %d times, want once",
						round, n, m, concurrent, order, accepted)
				}
			}
		})
	}
}

// TestNewConcurrently: replicas starting together all create (or find) the table.
func TestNewConcurrently(t *testing.T) {
	for _, d := range databases(t) {
		t.Run(d.name, func(t *testing.T) {
			name := table(t)
			var wg sync.WaitGroup
			errs := make([]error, 5)
			dbs := make([]*sql.DB, 5)
			for i := range dbs {
				dbs[i] = d.open(t)
			}
			dropTable(t, dbs[0], name)
			for i := range errs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, errs[i] = sqlreplay.New(context.Background(), dbs[i], sqlreplay.Options{Table: name})
				}()
			}
			wg.Wait()
			for i, err := range errs {
				if err != nil {
					t.Errorf("replica %d: New: %v", i, err)
				}
			}
		})
	}
}

func TestNewRefusesTableName(t *testing.T) {
	db, err := sql.Open("sqlite", filepath.Join(t.TempDir(), "x.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, name := range []string{"1abc", "a-b", "a;DROP TABLE x", "a b", string(make([]byte, 64))} {
		if _, err := sqlreplay.New(context.Background(), db, sqlreplay.Options{Table: name}); err == nil {
			t.Errorf("New accepted table name %q", name)
		}
	}
}

// TestPurgesByItself: a Use past PurgeInterval deletes expired rows in the background.
func TestPurgesByItself(t *testing.T) {
	ctx := context.Background()
	// The busy timeout the package doc asks for: the purge the first Use starts writes alongside
	// the next Uses (without one CI saw SQLITE_BUSY).
	db, err := sql.Open("sqlite", "file:"+filepath.Join(t.TempDir(), "x.db")+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	clk := newClock()
	s := newStore(t, db, sqlreplay.Options{Now: clk.now, PurgeInterval: time.Minute, PurgeBatch: 2})
	for i := range 5 {
		if err := s.Use(ctx, fmt.Sprint("old-", i), clk.now().Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	s.Close() // the purge the first Use started (nothing had expired)
	clk.advance(2 * time.Minute)
	if err := s.Use(ctx, "new", clk.now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM dpop_replay`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Errorf("%d rows after the purge, want 1 (the live one)", n)
	}
}
