package cli

import (
	"fmt"
	"io"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mandate-dev/mandate/internal/loadgen"
)

func newBenchCmd() *cobra.Command {
	cfg := loadgen.Config{}
	var servers, scenarios []string
	cmd := &cobra.Command{
		Use:   "bench [--server URL | --servers URL,URL,…] [--scenario issue,exchange,introspect,proxy,crypto]",
		Short: "Load a running server: issuance, exchange, introspection and proxy calls at a concurrency",
		Long: `Drive a running mandate as agents would, and report rate, latency and CPU per request.

Set-up (not timed) works through the real API as the admin you are logged in as (mandate login,
or MANDATE_TOKEN): it registers --agents agents with fresh did:key keys (kept in memory only),
claims them, and, as a scenario needs, grants them a scope, adds an upstream pointing at a sink
this command serves on --sink-listen, and starts a task per agent. Then it signs a pool of
single-use requests — client assertions and DPoP proofs with fresh jtis, proxy proofs bound to
the task token — so the timed phase only sends. The pool is --requests long, or --duration ×
--max-rate (a pre-signed proof is accepted within the server's 60 s iat window, so a run lasts
at most 45 s).

Scenarios, run in the order given:
  issue       client_credentials: private_key_jwt assertion + DPoP proof (with the server's nonce)
  exchange    RFC 8693 token exchange: the agent's grant token -> a task token (a new task each)
  introspect  RFC 7662 introspection of the agent's token, the agent authenticated by private_key_jwt
  proxy       GET /proxy/<upstream>/v1/items with the DPoP-bound task token, to the sink
  crypto      in this process, no server: two Ed25519 verifies + one sign per op on every core,
              the crypto-only ceiling; the other scenarios of the run report their % of it

--servers spreads the requests round robin over replicas of one issuer (set-up goes to the
first); the report is their aggregate. Server CPU is the change of process_cpu_seconds_total on
each server's /metrics (--metrics when a server serves them on --metrics-listen), or of
/proc/PID/stat with --server-pid; client CPU is this process's own.`,
		Example: "  mandate bench --server http://127.0.0.1:8420 --scenario crypto,issue --concurrency 64 --requests 20000\n" +
			"  mandate bench --servers http://10.0.0.1:8420,http://10.0.0.2:8420 --scenario issue --duration 20s --json",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, s := range scenarios {
				if s != loadgen.ScenarioCrypto && !slices.Contains(loadgen.Scenarios, s) {
					return fmt.Errorf("--scenario %q: want one or more of %s, %s", s, strings.Join(loadgen.Scenarios, ", "), loadgen.ScenarioCrypto)
				}
			}
			if len(scenarios) == 0 {
				return fmt.Errorf("--scenario: name at least one of %s, %s", strings.Join(loadgen.Scenarios, ", "), loadgen.ScenarioCrypto)
			}
			if cmd.Flags().Changed("duration") && !cmd.Flags().Changed("requests") {
				cfg.Requests = 0
			}
			cfg.Progress = cmd.ErrOrStderr()
			ctx := cmd.Context()
			var b *loadgen.Bench
			if slices.ContainsFunc(scenarios, func(s string) bool { return s != loadgen.ScenarioCrypto }) {
				if err := benchServers(cmd, servers, &cfg); err != nil {
					return err
				}
				var err error
				if b, err = loadgen.New(ctx, cfg); err != nil {
					return err
				}
				defer b.Close(ctx)
			}
			var reps []*loadgen.Report
			for _, s := range scenarios {
				var rep *loadgen.Report
				if s == loadgen.ScenarioCrypto {
					fmt.Fprintf(cmd.ErrOrStderr(), "crypto: %v on %d threads\n", cfg.CryptoTime, runtime.GOMAXPROCS(0))
					rep = loadgen.Crypto(ctx, cfg.CryptoTime)
				} else {
					var err error
					if rep, err = b.Run(ctx, s); err != nil {
						return err
					}
				}
				reps = append(reps, rep)
				if ctx.Err() != nil {
					break
				}
			}
			loadgen.CompareToCrypto(reps)
			if b != nil {
				if err := b.Close(ctx); err != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "clean-up: %v\n", err)
				}
			}
			if wantJSON(cmd) {
				issuer := ""
				if b != nil {
					issuer = b.Issuer()
				}
				return printJSON(cmd.OutOrStdout(), map[string]any{"issuer": issuer, "runs": reps})
			}
			return printBench(cmd.OutOrStdout(), reps)
		},
	}
	f := cmd.Flags()
	f.String(serverFlag, "", "the server's URL (default: the one you logged in to)")
	f.StringSliceVar(&servers, "servers", nil, "replicas of one issuer to spread the load over, round robin (set-up goes to the first)")
	f.StringSliceVar(&scenarios, "scenario", []string{loadgen.ScenarioIssue}, "what to run, in order: issue, exchange, introspect, proxy, crypto")
	f.IntVar(&cfg.Concurrency, "concurrency", 64, "requests in flight")
	f.IntVar(&cfg.Requests, "requests", 10000, "requests per scenario (each signed before the run)")
	f.DurationVar(&cfg.Duration, "duration", 0, "run each scenario this long instead of --requests (at most 45s)")
	f.Float64Var(&cfg.MaxRate, "max-rate", 3000, "with --duration: requests per second to sign for (the pool is duration × max-rate)")
	f.IntVar(&cfg.Agents, "agents", 4, "agents to register and spread the requests over")
	f.StringSliceVar(&cfg.Metrics, "metrics", nil, "each server's Prometheus URL, in --servers order (default <server>/metrics)")
	f.IntSliceVar(&cfg.PIDs, "server-pid", nil, "read the servers' CPU from /proc/PID/stat instead of their metrics (servers on this machine)")
	f.StringVar(&cfg.SinkListen, "sink-listen", "127.0.0.1:0", "where the proxy scenario's upstream sink listens; the servers must reach it")
	f.DurationVar(&cfg.CryptoTime, "crypto-time", 2*time.Second, "how long the crypto scenario runs")
	addJSONFlag(cmd)
	return cmd
}

// benchServers fills the servers and the admin's token: the servers are --servers, else
// --server, else the logged-in one; the token is the login's (or MANDATE_TOKEN), for the first.
func benchServers(cmd *cobra.Command, servers []string, cfg *loadgen.Config) error {
	for i, s := range servers {
		n, err := normalizeServer(s)
		if err != nil {
			return fmt.Errorf("--servers: %w", err)
		}
		servers[i] = n
	}
	if len(servers) > 0 {
		if f := cmd.Flags().Lookup(serverFlag); f.Changed && f.Value.String() != servers[0] {
			return fmt.Errorf("--server %s and --servers %s: give one of them (set-up goes to the first of --servers)", f.Value, strings.Join(servers, ","))
		}
		if err := cmd.Flags().Set(serverFlag, servers[0]); err != nil {
			return err
		}
	}
	c, err := managementClient(cmd)
	if err != nil {
		return err
	}
	cfg.AdminToken = c.token
	cfg.Servers = servers
	if len(cfg.Servers) == 0 {
		cfg.Servers = []string{c.server}
	}
	return nil
}

// printBench writes the reports as a table, then their errors and notes.
func printBench(w io.Writer, reps []*loadgen.Report) error {
	ms := func(v float64) string { return strconv.FormatFloat(v, 'f', 2, 64) }
	t := newTable(w, "SCENARIO", "REQUESTS", "ERRORS", "RATE/S", "P50 MS", "P90 MS", "P99 MS", "MAX MS", "SERVER CPU MS/REQ", "CLIENT CPU MS/REQ", "% CRYPTO")
	for _, r := range reps {
		errs := 0
		for _, n := range r.Errors {
			errs += n
		}
		server, crypto := "-", "-"
		if r.ServerCPUPerRequest != nil {
			server = strconv.FormatFloat(*r.ServerCPUPerRequest, 'f', 3, 64)
		}
		if r.PercentOfCrypto != nil {
			crypto = strconv.FormatFloat(*r.PercentOfCrypto, 'f', 1, 64)
		}
		name := r.Scenario
		if r.Scenario == loadgen.ScenarioCrypto {
			name += fmt.Sprintf(" (%d threads)", r.Threads)
		}
		t.row(name, strconv.Itoa(r.Requests), strconv.Itoa(errs), strconv.FormatFloat(r.Rate, 'f', 0, 64),
			ms(r.LatencyMS.P50), ms(r.LatencyMS.P90), ms(r.LatencyMS.P99), ms(r.LatencyMS.Max),
			server, strconv.FormatFloat(r.ClientCPUPerRequest, 'f', 3, 64), crypto)
	}
	if err := t.flush(); err != nil {
		return err
	}
	for _, r := range reps {
		keys := make([]string, 0, len(r.Errors))
		for k := range r.Errors {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			line := fmt.Sprintf("%s: %d × %s", r.Scenario, r.Errors[k], k)
			if d := r.ErrorSamples[k]; d != "" {
				line += " (first: " + d + ")"
			}
			fmt.Fprintln(w, termSafe(line))
		}
		if r.Stopped == "proof window" {
			fmt.Fprintf(w, "%s: stopped after %d of %d requests: the pool's first proofs were 55 s old (the server's window is 60 s); ask for fewer --requests\n", r.Scenario, r.Requests, r.Asked)
		}
		if r.Stopped == "pool" {
			fmt.Fprintf(w, "%s: the pool of %d requests ran out before the duration: pass a larger --max-rate\n", r.Scenario, r.Asked)
		}
		if r.Scenario != loadgen.ScenarioCrypto && r.ServerCPUPerRequest == nil {
			fmt.Fprintf(w, "%s: server CPU unknown: %s\n", r.Scenario, termSafe(r.ServerCPUNote))
		}
	}
	return nil
}
