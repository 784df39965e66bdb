package sqlreplay_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/mandate-dev/mandate/dpop"
	"github.com/mandate-dev/mandate/dpop/sqlreplay"
	"github.com/mandate-dev/mandate/verify"
)

// Two replicas of a resource server share one database: a proof the first accepted, the
// second refuses. With PostgreSQL, open the *sql.DB with sql.Open("pgx", url) instead.
func Example() {
	dir, _ := os.MkdirTemp("", "sqlreplay")
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "shared.db")
	ctx := context.Background()

	replica := func() *sqlreplay.Store {
		db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(5000)")
		if err != nil {
			log.Fatal(err)
		}
		store, err := sqlreplay.New(ctx, db, sqlreplay.Options{})
		if err != nil {
			log.Fatal(err)
		}
		return store
	}
	a, b := replica(), replica()

	// Each replica's verifier uses its store: verify.New(verify.Config{…, DPoP:
	// dpop.Config{Replay: a}}). What the verifier records for a proof is its ReplayID:
	_ = verify.Config{DPoP: dpop.Config{Replay: a}}
	exp := time.Now().Add(2 * time.Minute)
	fmt.Println("at A:", a.Use(ctx, "jkt:proof-1", exp))
	fmt.Println("at B, replayed:", errors.Is(b.Use(ctx, "jkt:proof-1", exp), dpop.ErrReplay))
	// Output:
	// at A: <nil>
	// at B, replayed: true
}
