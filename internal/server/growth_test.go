package server_test

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/mandate-dev/mandate/internal/config"
	"github.com/mandate-dev/mandate/internal/pgtest"
)

// This file must keep compiling in the baseline commit's tree (growthBaseline): TestGrowth copies
// it there and runs it, so it uses only helpers the baseline has.

// growthBaseline is the commit whose growth this tree's is compared with: main before the
// retention work (MANDATE_GROWTH_BASELINE overrides it).
const growthBaseline = "fdf3b74"

// growthFigures are the bytes one measurement added, per database object, for tokens tokens.
type growthFigures struct {
	Dialect string           `json:"dialect"`
	Tokens  int              `json:"tokens"`
	Total   int64            `json:"total"`   // the database: SQLite file + WAL after a checkpoint; PostgreSQL every table with its indexes
	Objects map[string]int64 `json:"objects"` // tables and indexes (SQLite dbstat; PostgreSQL pg_table_size / pg_relation_size)
}

// TestGrowth measures the bytes the database grows by per 10k tokens issued (client_credentials
// through the real server over loopback HTTP: a signed assertion and a DPoP proof each), on
// SQLite and, with MANDATE_TEST_POSTGRES, on PostgreSQL, for this tree and for the baseline
// commit built from the same repository in the same run, and prints both per table and index and
// their ratio. It fails when this tree writes more than the baseline (2% slack for page
// granularity). It runs only when
// MANDATE_GROWTH is set to the number of tokens (10000 for the figures in BENCHMARKS.md):
//
//	MANDATE_GROWTH=10000 go test -run '^TestGrowth$' -v -timeout 30m ./internal/server/
func TestGrowth(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("MANDATE_GROWTH"))
	if n <= 0 {
		t.Skip("MANDATE_GROWTH (a number of tokens) not set: skipping the growth measurement")
	}
	dialects := []string{"sqlite"}
	if os.Getenv(pgtest.EnvVar) != "" {
		dialects = append(dialects, "postgres")
	}
	if out := os.Getenv("MANDATE_GROWTH_OUT"); out != "" { // the baseline's run: measure, write, done
		var all []growthFigures
		for _, d := range dialects {
			all = append(all, measureGrowth(t, d, n))
		}
		b, _ := json.Marshal(all)
		if err := os.WriteFile(out, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return
	}
	base := baselineGrowth(t)
	for i, d := range dialects {
		got := measureGrowth(t, d, n)
		var was growthFigures
		if i < len(base) && base[i].Dialect == d {
			was = base[i]
		}
		t.Logf("%s", growthReport(was, got))
		if was.Total == 0 {
			t.Fatalf("%s: no baseline figures", d)
		}
		ratio := float64(got.Total) / float64(was.Total)
		// Issue 11's acceptance 7 is at most half. Most of what a token writes is its audit event
		// (see BENCHMARKS.md), whose form this part of the work does not change; so the check here
		// is that nothing grew, and the ratio is reported.
		t.Logf("%s: %.2f of the baseline's bytes per token (acceptance 7 wants at most 0.50)", d, ratio)
		if got.Total > was.Total+was.Total/50 {
			t.Errorf("%s: %d bytes per %d tokens, more than the baseline's %d", d, got.Total, n, was.Total)
		}
	}
}

// baselineGrowth extracts the baseline commit into a temporary directory, adds this file, and
// runs TestGrowth there with the same settings.
func baselineGrowth(t *testing.T) []growthFigures {
	commit := growthBaseline
	if c := os.Getenv("MANDATE_GROWTH_BASELINE"); c != "" {
		commit = c
	}
	root, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		t.Fatalf("find the repository: %v", err)
	}
	dir := t.TempDir()
	archive := exec.Command("sh", "-c", `git -C "$1" archive "$2" | tar -x -C "$3"`, "sh", strings.TrimSpace(string(root)), commit, dir)
	if out, err := archive.CombinedOutput(); err != nil {
		t.Fatalf("extract %s: %v\n%s", commit, err, out)
	}
	src, err := os.ReadFile("growth_test.go")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "internal", "server", "growth_test.go"), src, 0o600); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "baseline.json")
	cmd := exec.Command("go", "test", "-count=1", "-run", "^TestGrowth$", "-timeout", "30m", "./internal/server/")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "MANDATE_GROWTH_OUT="+out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("baseline %s: %v\n%s", commit, err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var figs []growthFigures
	if err := json.Unmarshal(b, &figs); err != nil {
		t.Fatal(err)
	}
	return figs
}

// measureGrowth issues n tokens to one agent on a fresh server and returns what the database grew
// by.
func measureGrowth(t *testing.T, dialect string, n int) growthFigures {
	var edit []func(*config.Config)
	dsn := ""
	if dialect == "postgres" {
		dsn = pgtest.URL(t)
		edit = append(edit, func(c *config.Config) { c.Database = dsn })
	}
	ts := newTestServer(t, edit...)
	a := ts.newAgent(t, "growth-agent", true)
	dpopKey, _ := newKey(t)
	ts.token(t, a, dpopKey, nil) // holds a nonce from here on
	before := databaseSize(t, ts, dsn)
	const workers = 4
	var wg sync.WaitGroup
	errs := make(chan string, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += workers {
				resp, body := ts.tokenRequest(t, ts.ccForm(t, a, ts.assertion(t, a, randomID())), ts.proof(t, dpopKey, "POST", ts.URL+"/oauth/token", ""))
				if resp.StatusCode != http.StatusOK && body["error"] != "use_dpop_nonce" {
					errs <- fmt.Sprintf("token: %d %v", resp.StatusCode, body)
					return
				}
				if resp.StatusCode != http.StatusOK {
					i -= workers // a rotated nonce: the same token again
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	after := databaseSize(t, ts, dsn)
	g := growthFigures{Dialect: dialect, Tokens: n, Total: after.Total - before.Total, Objects: map[string]int64{}}
	for k, v := range after.Objects {
		if d := v - before.Objects[k]; d != 0 {
			g.Objects[k] = d
		}
	}
	return g
}

// databaseSize measures the database of ts as it is now.
// dsn is its PostgreSQL URL, "" for SQLite.
func databaseSize(t *testing.T, ts *testServer, dsn string) growthFigures {
	t.Helper()
	g := growthFigures{Objects: map[string]int64{}}
	if dsn != "" {
		db, err := sql.Open("pgx", dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		rows, err := db.QueryContext(t.Context(), `SELECT c.relname, c.relkind, pg_total_relation_size(c.oid),
			CASE c.relkind WHEN 'r' THEN pg_table_size(c.oid) ELSE pg_relation_size(c.oid) END
			FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'i')`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		for rows.Next() {
			var name, kind string
			var total, own int64
			if err := rows.Scan(&name, &kind, &total, &own); err != nil {
				t.Fatal(err)
			}
			g.Objects[name] = own
			if kind == "r" {
				g.Total += total
			}
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		return g
	}
	path := filepath.Join(ts.DataDir, "mandate.db")
	db, err := sql.Open("sqlite", path+"?_busy_timeout=10000")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(t.Context(), `PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{path, path + "-wal"} {
		if fi, err := os.Stat(f); err == nil {
			g.Total += fi.Size()
		}
	}
	rows, err := db.QueryContext(t.Context(), `SELECT name, SUM(pgsize) FROM dbstat GROUP BY name`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var name string
		var size int64
		if err := rows.Scan(&name, &size); err != nil {
			t.Fatal(err)
		}
		g.Objects[name] = size
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return g
}

// growthReport is a table of both measurements, per 10k tokens.
func growthReport(was, got growthFigures) string {
	per10k := func(v int64, n int) string {
		if n == 0 {
			return "-"
		}
		return strconv.FormatInt(v*10000/int64(n), 10)
	}
	names := map[string]bool{}
	for k := range was.Objects {
		names[k] = true
	}
	for k := range got.Objects {
		names[k] = true
	}
	sorted := make([]string, 0, len(names))
	for k := range names {
		sorted = append(sorted, k)
	}
	slices.Sort(sorted)
	var b strings.Builder
	fmt.Fprintf(&b, "%s: bytes per 10k tokens, baseline %s (%d tokens) -> this tree (%d tokens)\n", got.Dialect, growthBaseline, was.Tokens, got.Tokens)
	fmt.Fprintf(&b, "  %-40s %12s %12s\n", "object", "baseline", "now")
	for _, k := range sorted {
		fmt.Fprintf(&b, "  %-40s %12s %12s\n", k, per10k(was.Objects[k], was.Tokens), per10k(got.Objects[k], got.Tokens))
	}
	fmt.Fprintf(&b, "  %-40s %12s %12s\n", "TOTAL (file+WAL / all tables)", per10k(was.Total, was.Tokens), per10k(got.Total, got.Tokens))
	return b.String()
}
