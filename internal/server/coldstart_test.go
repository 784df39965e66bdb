package server_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/config"
	"github.com/mandate-dev/mandate/internal/ids"
	"github.com/mandate-dev/mandate/internal/masterkey"
	"github.com/mandate-dev/mandate/internal/pgtest"
	"github.com/mandate-dev/mandate/internal/server"
	"github.com/mandate-dev/mandate/internal/sqlstore"
)

// TestColdStartReplicas (acceptance 6): five replicas started together on an empty PostgreSQL
// database, twenty times, each time on a fresh database (every other one migrated beforehand, so
// that the replicas meet at the bootstrap at once): every replica comes up and is ready,
// and there is exactly one user (the bootstrap admin), one bootstrap token file among the
// replicas' data directories, and one signing key.
func TestColdStartReplicas(t *testing.T) {
	base := pgtest.BaseURL(t)
	admin, err := sql.Open("pgx", base)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close() }) // after the databases' cleanups, which run first
	const replicas, runs = 5, 20
	// The replicas share the master key, as replicas must (each its own copy of the file).
	masterKey := filepath.Join(t.TempDir(), "master.key")
	if _, _, err := masterkey.LoadOrCreate(masterKey); err != nil {
		t.Fatal(err)
	}
	for run := range runs {
		dsn, drop := freshDatabase(t, admin, base)
		if run%2 == 1 {
			// Every other database is migrated beforehand, still empty (a migration job ran, or
			// an upgrade): the replicas then meet at once at the bootstrap, not one after another
			// behind the migrations' lock.
			st, err := sqlstore.Open(t.Context(), dsn)
			if err != nil {
				t.Fatal(err)
			}
			st.Close()
		}
		dirs := make([]string, replicas)
		errs := make([]error, replicas)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range replicas {
			dirs[i] = filepath.Join(t.TempDir(), fmt.Sprintf("replica%d", i))
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				errs[i] = startReplica(dirs[i], masterKey, dsn)
			}()
		}
		close(start)
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("run %d: replica %d: %v", run, i, err)
			}
		}
		db, err := sql.Open("pgx", dsn)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct{ what, query string }{
			{"users", `SELECT count(*) FROM users`},
			{"admins", `SELECT count(*) FROM users WHERE name = 'admin'`},
			{"signing keys", `SELECT count(*) FROM signing_keys`},
			{"bootstrap tokens", `SELECT count(*) FROM api_tokens`},
		} {
			var n int
			if err := db.QueryRowContext(t.Context(), c.query).Scan(&n); err != nil {
				t.Fatalf("run %d: count %s: %v", run, c.what, err)
			}
			if n != 1 {
				t.Errorf("run %d: %d %s, want 1", run, n, c.what)
			}
		}
		db.Close()
		files := 0
		for _, d := range dirs {
			if _, err := os.Stat(filepath.Join(d, server.BootstrapFile)); err == nil {
				files++
			}
		}
		if files != 1 {
			t.Errorf("run %d: %d replicas wrote a bootstrap token file, want 1", run, files)
		}
		drop()
		if t.Failed() {
			return
		}
	}
}

// freshDatabase creates an empty database on the server of base and returns its URL and the
// function that drops it (called at the test's end if not before).
func freshDatabase(t *testing.T, admin *sql.DB, base string) (dsn string, drop func()) {
	t.Helper()
	name := strings.ReplaceAll(ids.New("mandate_cold"), "-", "_")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := admin.ExecContext(ctx, `CREATE DATABASE `+name); err != nil {
		t.Fatalf("create database: %v", err)
	}
	var once sync.Once
	drop = func() {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if _, err := admin.ExecContext(ctx, `DROP DATABASE `+name+` WITH (FORCE)`); err != nil {
				t.Errorf("drop database %s: %v", name, err)
			}
		})
	}
	t.Cleanup(drop)
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + name
	return u.String(), drop
}

// startReplica starts a server as mandate serve does, waits until /readyz answers 200, and
// stops it.
func startReplica(dir, masterKey, dsn string) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	cfg := config.Default()
	cfg.DataDir, cfg.MasterKeyFile, cfg.Database, cfg.Listen = dir, masterKey, dsn, ln.Addr().String()
	if err := cfg.Validate(); err != nil {
		ln.Close()
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv, err := server.New(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err != nil {
		ln.Close()
		return err
	}
	defer srv.Close()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln, nil) }()
	resp, err := http.Get(cfg.Issuer + "/readyz")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("/readyz: %s", resp.Status)
		}
	}
	cancel()
	if serr := <-done; serr != nil && !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	return err
}
