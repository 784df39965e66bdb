package cli

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/mandate-dev/mandate/internal/config"
	"github.com/mandate-dev/mandate/internal/loadgen"
	"github.com/mandate-dev/mandate/internal/pgtest"
	"github.com/mandate-dev/mandate/internal/servertest"
)

type benchOutput struct {
	Issuer string           `json:"issuer"`
	Runs   []loadgen.Report `json:"runs"`
}

// checkRuns checks that every scenario ran in order, sent exactly the requests asked, all of them
// succeeded, and the server's CPU per request was measured.
func checkRuns(t *testing.T, out benchOutput, scenarios []string, requests int) {
	t.Helper()
	if len(out.Runs) != len(scenarios) {
		t.Fatalf("%d runs, want %d: %+v", len(out.Runs), len(scenarios), out.Runs)
	}
	for i, r := range out.Runs {
		if r.Scenario != scenarios[i] {
			t.Errorf("run %d is %q, want %q", i, r.Scenario, scenarios[i])
		}
		if len(r.Errors) != 0 || r.OK != r.Requests {
			t.Errorf("%s: %d of %d ok, errors %v %v", r.Scenario, r.OK, r.Requests, r.Errors, r.ErrorSamples)
		}
		if r.Rate <= 0 || r.LatencyMS.P50 <= 0 || r.LatencyMS.P50 > r.LatencyMS.P99 || r.LatencyMS.P99 > r.LatencyMS.Max {
			t.Errorf("%s: rate %v, latency %+v", r.Scenario, r.Rate, r.LatencyMS)
		}
		if r.Scenario == loadgen.ScenarioCrypto {
			if r.Requests == 0 || r.Threads < 1 {
				t.Errorf("crypto: %d ops on %d threads", r.Requests, r.Threads)
			}
			continue
		}
		if r.Requests != requests || r.Asked != requests || r.Stopped != "requests" {
			t.Errorf("%s: %d requests of %d signed (stopped by %s), want %d", r.Scenario, r.Requests, r.Asked, r.Stopped, requests)
		}
		if r.ServerCPUSeconds == nil || *r.ServerCPUSeconds <= 0 || r.ServerCPUPerRequest == nil || *r.ServerCPUPerRequest <= 0 {
			t.Errorf("%s: server CPU %s, per request %s (%s)", r.Scenario, fmtPtr(r.ServerCPUSeconds), fmtPtr(r.ServerCPUPerRequest), r.ServerCPUNote)
		}
		if r.ClientCPUSeconds <= 0 {
			t.Errorf("%s: client CPU %v", r.Scenario, r.ClientCPUSeconds)
		}
		if r.PercentOfCrypto == nil || *r.PercentOfCrypto <= 0 {
			t.Errorf("%s: %% of crypto ceiling %s", r.Scenario, fmtPtr(r.PercentOfCrypto))
		}
		if r.Scenario == loadgen.ScenarioProxy && (r.UpstreamCalls == nil || *r.UpstreamCalls != int64(requests)) {
			t.Errorf("proxy: the upstream received %v calls, want %d", fmtPtr(r.UpstreamCalls), requests)
		}
	}
}

// mandate bench, as a user runs it after mandate login, drives every scenario against a real
// server and reports each request it was asked for, none failed, and the server's CPU.
func TestBench(t *testing.T) {
	ts := newTestServer(t)
	ok(t, "login", "--server", ts.URL, "--token", ts.AdminToken)
	scenarios := []string{loadgen.ScenarioCrypto, loadgen.ScenarioIssue, loadgen.ScenarioExchange, loadgen.ScenarioIntrospect, loadgen.ScenarioProxy}
	const requests = 60
	raw := ok(t, "bench", "--server", ts.URL, "--scenario", strings.Join(scenarios, ","), "--requests", fmt.Sprint(requests),
		"--concurrency", "8", "--agents", "3", "--crypto-time", "200ms", "--json")
	// The progress of set-up goes to stderr, which the test's buffer shares: the JSON is the end.
	var out benchOutput
	decodeJSON(t, raw[strings.Index(raw, "{\n"):], &out)
	if out.Issuer != ts.URL {
		t.Errorf("issuer %q, want %q", out.Issuer, ts.URL)
	}
	checkRuns(t, out, scenarios, requests)

	// The table, for a person: one row per scenario, no error lines.
	table := ok(t, "bench", "--scenario", "issue,proxy", "--requests", "20", "--concurrency", "4", "--agents", "1")
	hasAll(t, table, "SCENARIO", "RATE/S", "P99 MS", "SERVER CPU MS/REQ", "\nissue ", "\nproxy ")
	if strings.Contains(table, "×") || strings.Contains(table, "unknown") {
		t.Errorf("the table shows errors:\n%s", table)
	}
	// The sink's upstream is removed at the end: it would point at nothing.
	if n := strings.Count(ok(t, "upstream", "list"), "bench-"); n != 0 {
		t.Errorf("%d bench upstreams left behind", n)
	}
}

// Two replicas of one issuer on one database (SQLite file; PostgreSQL below): --servers spreads
// the requests over both, and reads each one's metrics; the report is the aggregate.
func TestBenchReplicas(t *testing.T) { benchReplicas(t, "") }

func TestBenchReplicasPostgres(t *testing.T) { benchReplicas(t, pgtest.URL(t)) }

func benchReplicas(t *testing.T, database string) {
	ts := newTestServerWith(t, servertest.Options{Config: func(c *config.Config) { c.Database = database }})
	b := servertest.Start(t, servertest.Options{Config: func(c *config.Config) {
		c.DataDir, c.Issuer, c.Database = ts.DataDir, ts.URL, database
		c.MetricsListen = "127.0.0.1:0"
	}})
	t.Setenv(envToken, ts.AdminToken)
	scenarios := []string{loadgen.ScenarioIssue, loadgen.ScenarioExchange, loadgen.ScenarioProxy}
	const requests = 40
	servers := ts.URL + ",http://" + b.Addr
	raw := ok(t, "bench", "--servers", servers, "--metrics", ts.URL+"/metrics,http://"+b.MetricsAddr+"/metrics",
		"--scenario", strings.Join(scenarios, ","), "--requests", fmt.Sprint(requests), "--concurrency", "4", "--agents", "2", "--json")
	var out benchOutput
	decodeJSON(t, raw[strings.Index(raw, "{\n"):], &out)
	for i := range out.Runs {
		one := 100.0
		out.Runs[i].PercentOfCrypto = &one // no crypto scenario in this run
		if got := strings.Join(out.Runs[i].Servers, ","); got != servers {
			t.Errorf("%s ran on %s, want %s", out.Runs[i].Scenario, got, servers)
		}
	}
	checkRuns(t, out, scenarios, requests)

	// Replica b's metrics are not on its API listener: without --metrics the CPU is unknown,
	// and the report says where to look.
	table := ok(t, "bench", "--servers", servers, "--requests", "10", "--concurrency", "2", "--agents", "1")
	hasAll(t, table, "issue: server CPU unknown", "--metrics URL")
}

func TestBenchRefuses(t *testing.T) {
	ts := newTestServer(t)
	for name, tc := range map[string]struct {
		args []string
		want string
	}{
		"not logged in":    {[]string{"bench", "--server", ts.URL}, "not logged in"},
		"no scenario":      {[]string{"bench", "--server", ts.URL, "--scenario", "isue"}, `--scenario "isue": want one or more of issue, exchange`},
		"long duration":    {[]string{"bench", "--server", ts.URL, "--duration", "2m"}, "at most 45s"},
		"metrics per":      {[]string{"bench", "--servers", ts.URL + "," + ts.URL, "--metrics", ts.URL + "/metrics"}, "1 --metrics URLs for 2 servers"},
		"two server flags": {[]string{"bench", "--server", "http://127.0.0.1:1", "--servers", ts.URL}, "give one of them"},
	} {
		t.Run(name, func(t *testing.T) {
			if name != "not logged in" {
				t.Setenv(envToken, ts.AdminToken)
			}
			fails(t, "", tc.args, tc.want)
		})
	}
}

func fmtPtr[T any](p *T) string {
	if p == nil {
		return "nil"
	}
	return fmt.Sprint(*p)
}

// docs/benchmarks.md's "How to reproduce", as pasted, with a small request count.
func TestBenchDocs(t *testing.T) {
	dir := t.TempDir()
	env := docEnv(t, dir, "./cmd/mandate")
	addr := servertest.FreeAddr(t)
	env = append(env, "MANDATE_LISTEN="+addr)
	script := docBlocks(t, "../../docs/benchmarks.md", "## How to reproduce", true)
	script = substitute(t, script, [][2]string{
		{"go build -o mandate ./cmd/mandate\n", "ln -s bin/mandate mandate\n"}, // built above
		{"127.0.0.1:8420", addr},
		{"--requests 20000", "--requests 30 --crypto-time 200ms"},
	})
	out := runScript(t, dir, script, env)
	hasAll(t, out, "Logged in to http://"+addr+" as admin", "SERVER CPU MS/REQ", "\ncrypto (", "\nissue ", "\nexchange ", "\nintrospect ", "\nproxy ")
	if strings.Contains(out, "×") || strings.Contains(out, "unknown") {
		t.Errorf("the run shows errors:\n%s", out)
	}
}

// bench/replicas.sh, the scaling measurement of docs/benchmarks.md, runs through (briefly). It
// needs root for its cgroups and PostgreSQL, so it runs only when asked: MANDATE_BENCH_REPLICAS=1.
func TestReplicasScript(t *testing.T) {
	if os.Getenv("MANDATE_BENCH_REPLICAS") != "1" {
		t.Skip("MANDATE_BENCH_REPLICAS not 1: bench/replicas.sh (root, cgroups, PostgreSQL) not run")
	}
	pgtest.BaseURL(t)
	cmd := exec.Command("bash", "bench/replicas.sh")
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(), "DURATION=3s", "MAX_RATE=500", "CONCURRENCY=8", "AGENTS=1", "BASE_PORT="+strings.TrimPrefix(servertest.FreeAddr(t), "127.0.0.1:"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("bench/replicas.sh: %v\n%s", err, out)
	}
	hasAll(t, string(out), "one replica (30% of a core):", "three replicas (30% of a core each):", `"errors":{}`, "aggregate issuance, three replicas / one: ")
}
