package cli

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/api"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/config"
	"github.com/mandate-dev/mandate/internal/pgtest"
	"github.com/mandate-dev/mandate/internal/server"
	"github.com/mandate-dev/mandate/internal/servertest"
)

// tamperBackends are the databases the tamper tests run on: SQLite always, PostgreSQL with
// MANDATE_TEST_POSTGRES. Each returns the server options and the raw database an attacker with
// database access (and no master key) opens.
var tamperBackends = map[string]func(t *testing.T) (servertest.Options, func(ts *testServer) *sql.DB){
	"sqlite": func(t *testing.T) (servertest.Options, func(*testServer) *sql.DB) {
		return servertest.Options{}, func(ts *testServer) *sql.DB {
			return openRaw(t, "sqlite", filepath.Join(ts.DataDir, server.DatabaseFile)+"?_busy_timeout=10000")
		}
	},
	"postgres": func(t *testing.T) (servertest.Options, func(*testServer) *sql.DB) {
		url := pgtest.URL(t)
		return servertest.Options{Config: func(c *config.Config) { c.Database = url }},
			func(*testServer) *sql.DB { return openRaw(t, "pgx", url) }
	},
}

func openRaw(t *testing.T, driver, dsn string) *sql.DB {
	t.Helper()
	db, err := sql.Open(driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// trail is a server with a chain of events, two signed checkpoints (at cp1 and at head), and a
// copy of them (and of their keys) kept outside the database with mandate audit checkpoints.
type trail struct {
	ts               *testServer
	db               *sql.DB
	cpFile, keysFile string
	cp1, head        int64
	purposeSeq       int64 // an event whose purpose is in the ext column
}

func newTrail(t *testing.T, backend string) *trail {
	t.Helper()
	opts, raw := tamperBackends[backend](t)
	ts := newTestServerWith(t, opts)
	ok(t, "login", "--server", ts.URL, "--token-file", filepath.Join(ts.DataDir, server.BootstrapFile))
	tr := &trail{ts: ts, db: raw(ts), cpFile: filepath.Join(t.TempDir(), "outside", "checkpoints.jsonl"),
		keysFile: filepath.Join(t.TempDir(), "keys.json")}
	if err := os.MkdirAll(filepath.Dir(tr.cpFile), 0o700); err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	st := ts.Srv.Store()
	appendN := func(n int) {
		for i := range n {
			ev := audit.New(time.Now(), "req_test", audit.ActionTokenIssue)
			ev.ActorType, ev.ActorID, ev.Detail = audit.ActorAgent, "agt_test", fmt.Sprintf("issued token %d", i)
			if i == 1 {
				ev.TaskID, ev.Purpose, ev.Terms = "tsk_test", "original purpose", json.RawMessage(`{"scopes":["read"]}`)
			}
			if err := st.AppendEvent(ctx, ev); err != nil {
				t.Fatal(err)
			}
		}
	}
	appendN(8)
	tr.cp1 = tr.checkpoint(t)
	tr.purposeSeq = tr.cp1 - 6
	appendN(6)
	tr.head = tr.checkpoint(t)
	ok(t, "audit", "checkpoints", "--out", tr.cpFile, "--keys-out", tr.keysFile)
	return tr
}

func (tr *trail) checkpoint(t *testing.T) int64 {
	t.Helper()
	c, signed, err := tr.ts.Srv.Checkpointer().Checkpoint(t.Context())
	if err != nil || !signed {
		t.Fatalf("Checkpoint = %v, %v", signed, err)
	}
	return c.Seq
}

func (tr *trail) exec(t *testing.T, q string, args ...any) {
	t.Helper()
	if _, err := tr.db.ExecContext(t.Context(), q, args...); err != nil {
		t.Fatalf("tamper %q: %v", q, err)
	}
}

// export writes the chain as an auditor's copy holds it: JSON lines of events.
func (tr *trail) export(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "events.jsonl")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := tr.ts.Srv.Store().ScanEvents(t.Context(), 0, func(ev *audit.Event) error { return audit.WriteLine(f, ev) }); err != nil {
		t.Fatal(err)
	}
	return path
}

// rehash recomputes every hash of the chain with the public algorithm after edit, as anyone
// with write access to the database can, and removes the stored checkpoints too.
func (tr *trail) rehash(t *testing.T, edit func(*audit.Event)) {
	t.Helper()
	var evs []audit.Event
	if err := tr.ts.Srv.Store().ScanEvents(t.Context(), 0, func(ev *audit.Event) error { evs = append(evs, *ev); return nil }); err != nil {
		t.Fatal(err)
	}
	prev := ""
	for i := range evs {
		edit(&evs[i])
		evs[i].PrevHash = prev
		evs[i].Hash = evs[i].ComputeHash()
		prev = evs[i].Hash
		tr.exec(t, `UPDATE audit_events SET detail = $1, prev_hash = $2, hash = $3 WHERE seq = $4`, evs[i].Detail, evs[i].PrevHash, evs[i].Hash, evs[i].Seq)
	}
	tr.exec(t, `DELETE FROM audit_checkpoints`)
}

// Acceptance: edit a field (a column, and one inside ext), delete an event, truncate the tail,
// re-hash the whole chain after an edit — mandate audit verify with the checkpoints kept
// outside detects each and names the sequence number; a clean chain verifies. On SQLite and
// PostgreSQL, through the real commands.
func TestAuditVerifyTamper(t *testing.T) {
	for _, backend := range []string{"sqlite", "postgres"} {
		t.Run(backend, func(t *testing.T) {
			if backend == "postgres" {
				pgtest.BaseURL(t)
			}
			t.Run("clean", func(t *testing.T) {
				tr := newTrail(t, backend)
				// Two of ours at least; the server may have signed one of its own meanwhile.
				out := ok(t, "audit", "verify")
				hasAll(t, out, "audit chain OK", "signatures checked")
				if !regexp.MustCompile(`\b([2-9]|\d\d+) checkpoints matched`).MatchString(out) {
					t.Errorf("want at least 2 checkpoints matched:\n%s", out)
				}
				out = ok(t, "audit", "verify", "--checkpoints", tr.cpFile)
				hasAll(t, out, "audit chain OK", fmt.Sprintf("seq 1 to %d", tr.head), "2 given from outside",
					fmt.Sprintf("last checkpoint: seq %d", tr.head), "checkpoint keys: ")
				var res api.VerifyJSON
				decodeJSON(t, ok(t, "audit", "verify", "--checkpoints", tr.cpFile, "--json"), &res)
				if !res.Report.OK || res.Report.LastSeq != tr.head || len(res.Keys.Keys) != 1 {
					t.Errorf("--json = %+v", res)
				}
				// Offline, from an export and the published keys: no server needed.
				events := tr.export(t)
				hasAll(t, ok(t, "audit", "verify", "--events", events, "--checkpoints", tr.cpFile, "--keys", tr.keysFile),
					"audit chain OK", fmt.Sprintf("seq 1 to %d", tr.head))
				// mandate audit checkpoints --out keeps what it has and appends only what is new.
				before, _ := os.ReadFile(tr.cpFile)
				ok(t, "audit", "checkpoints", "--out", tr.cpFile)
				if after, _ := os.ReadFile(tr.cpFile); string(after) != string(before) {
					t.Errorf("a second export changed the file:\n%s\n%s", before, after)
				}
				// An edited line of the export is named by its seq.
				raw, _ := os.ReadFile(events)
				edited := strings.Replace(string(raw), "issued token 3", "issued token 4", 1)
				if err := os.WriteFile(events, []byte(edited), 0o600); err != nil {
					t.Fatal(err)
				}
				var ev audit.Event
				for _, l := range strings.Split(edited, "\n") {
					if strings.Contains(l, "issued token 4") {
						json.Unmarshal([]byte(l), &ev)
						break
					}
				}
				fails(t, "", []string{"audit", "verify", "--events", events, "--checkpoints", tr.cpFile, "--keys", tr.keysFile},
					fmt.Sprintf("audit hash chain broken at seq %d", ev.Seq), "does not match its hash")
				// Without the keys, offline verification refuses to run.
				fails(t, "", []string{"audit", "verify", "--events", events}, "--events needs --keys")
			})
			t.Run("edit a column", func(t *testing.T) {
				tr := newTrail(t, backend)
				tr.exec(t, `UPDATE audit_events SET detail = 'nothing happened' WHERE seq = 3`)
				fails(t, "", []string{"audit", "verify", "--checkpoints", tr.cpFile}, "broken at seq 3:", "does not match its hash")
			})
			t.Run("edit a field inside ext", func(t *testing.T) {
				tr := newTrail(t, backend)
				tr.exec(t, `UPDATE audit_events SET ext = REPLACE(ext, 'original purpose', 'harmless purpose') WHERE seq = $1`, tr.purposeSeq)
				fails(t, "", []string{"audit", "verify", "--checkpoints", tr.cpFile}, fmt.Sprintf("broken at seq %d:", tr.purposeSeq))
			})
			t.Run("delete an event", func(t *testing.T) {
				tr := newTrail(t, backend)
				tr.exec(t, `DELETE FROM audit_events WHERE seq = 4`)
				fails(t, "", []string{"audit", "verify", "--checkpoints", tr.cpFile}, "broken at seq 4:", "missing")
			})
			t.Run("truncate the tail", func(t *testing.T) {
				tr := newTrail(t, backend)
				cut := tr.cp1 + 2
				tr.exec(t, `DELETE FROM audit_events WHERE seq > $1`, cut)
				tr.exec(t, `DELETE FROM audit_checkpoints WHERE seq > $1`, cut)
				// Nothing left in the database tells: only the copy outside does.
				hasAll(t, ok(t, "audit", "verify"), "audit chain OK")
				fails(t, "", []string{"audit", "verify", "--checkpoints", tr.cpFile},
					fmt.Sprintf("broken at seq %d:", cut+1), fmt.Sprintf("events %d..%d were removed", cut+1, tr.head), "truncated")
			})
			t.Run("re-hash the whole chain after an edit", func(t *testing.T) {
				tr := newTrail(t, backend)
				tr.rehash(t, func(ev *audit.Event) {
					if ev.Seq == 5 {
						ev.Detail = "nothing happened"
					}
				})
				hasAll(t, ok(t, "audit", "verify"), "audit chain OK") // every link and hash is consistent
				fails(t, "", []string{"audit", "verify", "--checkpoints", tr.cpFile},
					fmt.Sprintf("broken at seq %d (changed at or after seq 1)", tr.cp1), "checkpoint_mismatch")
				// Offline, on an export of the rewritten chain: the same.
				fails(t, "", []string{"audit", "verify", "--events", tr.export(t), "--checkpoints", tr.cpFile, "--keys", tr.keysFile},
					fmt.Sprintf("broken at seq %d", tr.cp1))
			})
		})
	}
}

// Acceptance: a task's purpose edited in the tasks table changes nothing the trail says: the
// chain verifies with the checkpoints kept outside, and the task's start event still carries
// the purpose it was started with.
func TestAuditVerifyTaskPurposeEdited(t *testing.T) {
	for _, backend := range []string{"sqlite", "postgres"} {
		t.Run(backend, func(t *testing.T) {
			if backend == "postgres" {
				pgtest.BaseURL(t)
			}
			opts, raw := tamperBackends[backend](t)
			ts := newTestServerWith(t, opts)
			ok(t, "login", "--server", ts.URL, "--token-file", filepath.Join(ts.DataDir, server.BootstrapFile))
			key := newAgent(t, ts, "analyst")
			var grant api.GrantJSON
			decodeJSON(t, ok(t, "grant", "create", "--agent", "@analyst", "--scope", "repo:read", "--resource", "https://api.example.com/", "--json"), &grant)
			var task taskStarted
			decodeJSON(t, ok(t, "task", "start", "--key-file", key, "--grant", grant.GrantID, "--purpose", "triage the backlog", "--json"), &task)
			ctx := t.Context()
			st := ts.Srv.Store()
			// The task's start event carries its purpose (the trail, not the table, is the record).
			// Where task start does not record it yet, the event it will write is appended here.
			if startEvent(t, ts, task.TaskID) == nil {
				ev := audit.New(time.Now(), "req_test", "task.start")
				ev.ActorType, ev.TaskID, ev.GrantID, ev.Purpose, ev.Outcome = audit.ActorAgent, task.TaskID, grant.GrantID, "triage the backlog", audit.OutcomeSuccess
				if err := st.AppendEvent(ctx, ev); err != nil {
					t.Fatal(err)
				}
			}
			if _, _, err := ts.Srv.Checkpointer().Checkpoint(ctx); err != nil {
				t.Fatal(err)
			}
			cpFile := filepath.Join(t.TempDir(), "checkpoints.jsonl")
			ok(t, "audit", "checkpoints", "--out", cpFile)

			db := raw(ts)
			if _, err := db.ExecContext(ctx, `UPDATE tasks SET purpose = 'routine maintenance' WHERE id = $1`, task.TaskID); err != nil {
				t.Fatal(err)
			}
			got, err := st.GetTask(ctx, task.TaskID)
			if err != nil || got.Purpose != "routine maintenance" {
				t.Fatalf("the tasks table was not edited: %+v, %v", got, err)
			}
			hasAll(t, ok(t, "audit", "verify", "--checkpoints", cpFile), "audit chain OK")
			if ev := startEvent(t, ts, task.TaskID); ev == nil || ev.Purpose != "triage the backlog" {
				t.Errorf("the task's start event = %+v, want the purpose it started with", ev)
			}
		})
	}
}

// startEvent is the event of the trail that carries the task's purpose, nil if none does.
func startEvent(t *testing.T, ts *testServer, taskID string) *audit.Event {
	t.Helper()
	evs, err := ts.Srv.Store().ListEvents(context.WithoutCancel(t.Context()), audit.Filter{TaskID: taskID, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	for i := range evs {
		if evs[i].Purpose != "" {
			return &evs[i]
		}
	}
	return nil
}

// docs/audit-verify.md runs as pasted: a copy of the checkpoints kept outside, the chain verified
// against it online, and then offline from an export of the events (what a file sink writes;
// made here from the database once the server stopped) with the saved keys.
func TestAuditVerifyDocs(t *testing.T) {
	dir := t.TempDir()
	env := docEnv(t, dir, "./cmd/mandate")
	addr := servertest.FreeAddr(t)
	env = append(env, "MANDATE_LISTEN="+addr)
	script := docBlocks(t, "../../docs/audit-verify.md", "## Keep a copy outside the database", true)
	out := runScript(t, dir, substitute(t, script, [][2]string{{"127.0.0.1:8420", addr}}), env)
	hasAll(t, out, "audit chain OK", "1 given from outside", "checkpoint keys: ")

	cfg := config.Default()
	cfg.DataDir = filepath.Join(dir, "mandate-data")
	db, err := server.OpenMaintenance(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	st := db.Store()
	f, err := os.Create(filepath.Join(dir, "audit-events.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	err = st.ScanEvents(t.Context(), 0, func(ev *audit.Event) error { return audit.WriteLine(f, ev) })
	db.Close()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	out = runScript(t, dir, docBlocks(t, "../../docs/audit-verify.md", "### Offline, without a server", true), env)
	hasAll(t, out, "audit chain OK", "signatures checked")

	// Torn lines: one a crash tore, then that record sent again, is no tampering; lines torn one
	// after another, or a file of nothing but torn lines, are (the outside attack cut the last
	// byte off every line and verify said OK).
	raw, err := os.ReadFile(filepath.Join(dir, "audit-events.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(strings.TrimSuffix(string(raw), "\n"), "\n")
	cut := func(l string) string { return strings.TrimSuffix(l, "\n")[:len(strings.TrimSuffix(l, "\n"))-1] + "\n" }
	verifyWith := func(name string, ls []string) (string, error) {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(strings.Join(ls, "")), 0o600); err != nil {
			t.Fatal(err)
		}
		// No outside checkpoints: the file alone must not pass (with them, a cut tail shows anyway).
		return mandate(t, "", "audit", "verify", "--events", path, "--keys", filepath.Join(dir, "audit-keys.json"))
	}
	k := len(lines) / 2
	resent := append(append(slices.Clone(lines[:k]), cut(lines[k])), lines[k:]...)
	if out, err := verifyWith("resent.jsonl", resent); err != nil || !strings.Contains(out, "skipped 1 torn lines") {
		t.Errorf("a torn line sent again: %v\n%s", err, out)
	}
	torn := slices.Clone(lines)
	for i := k; i < len(torn); i++ {
		torn[i] = cut(torn[i])
	}
	if _, err := verifyWith("torn-tail.jsonl", torn); err == nil {
		t.Error("verify passed a file whose second half is torn lines")
	}
	for i := range torn {
		torn[i] = cut(torn[i])
	}
	if _, err := verifyWith("all-torn.jsonl", torn); err == nil {
		t.Error("verify passed a file of torn lines only")
	}
}
