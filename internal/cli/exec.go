package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/mandate-dev/mandate/client"
	"github.com/mandate-dev/mandate/internal/sidecar"
)

// envName is the form of an environment variable's name exec sets.
var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// placeholderPrefix starts every placeholder value: recognisable in a log or a bug report as
// "not a key", and worth nothing.
const placeholderPrefix = "mandate-placeholder-"

// execUpstream is one --upstream NAME=VAR.
type execUpstream struct {
	Name string // the upstream
	Var  string // the variable that gets the sidecar's base URL for it
}

func parseExecUpstreams(vals []string) ([]execUpstream, error) {
	var out []execUpstream
	seen := map[string]bool{}
	for _, v := range vals {
		name, variable, ok := strings.Cut(v, "=")
		name, variable = strings.TrimSpace(name), strings.TrimSpace(variable)
		switch {
		case !ok || variable == "":
			return nil, fmt.Errorf("--upstream %q: want NAME=VAR, e.g. ahrefs=AHREFS_API_BASE", v)
		case !sidecar.UpstreamName.MatchString(name):
			return nil, fmt.Errorf("--upstream %q: %q is not an upstream's name (a-z, 0-9, -)", v, name)
		case !envName.MatchString(variable):
			return nil, fmt.Errorf("--upstream %q: %q is not an environment variable's name", v, variable)
		case mandateVar(variable):
			return nil, fmt.Errorf("--upstream %q: MANDATE_* variables are mandate's own", v)
		case seen[variable]:
			return nil, fmt.Errorf("--upstream %q: %s is given twice", v, variable)
		}
		seen[variable] = true
		out = append(out, execUpstream{Name: name, Var: variable})
	}
	return out, nil
}

func parsePlaceholders(vals []string, ups []execUpstream) ([]string, error) {
	taken := map[string]bool{}
	for _, u := range ups {
		taken[u.Var] = true
	}
	var out []string
	for _, raw := range vals {
		for _, v := range strings.FieldsFunc(raw, func(r rune) bool { return r == ',' || r == ' ' }) {
			switch {
			case !envName.MatchString(v):
				return nil, fmt.Errorf("--placeholder %q: not an environment variable's name", v)
			case mandateVar(v):
				return nil, fmt.Errorf("--placeholder %q: MANDATE_* variables are mandate's own", v)
			case taken[v]:
				return nil, fmt.Errorf("--placeholder %s: given twice, or also an --upstream variable", v)
			}
			taken[v] = true
			out = append(out, v)
		}
	}
	return out, nil
}

// mandateVar reports whether an environment variable's name is mandate's.
func mandateVar(name string) bool { return strings.HasPrefix(strings.ToUpper(name), "MANDATE_") }

// newPlaceholder returns a fresh placeholder value: random, so that it cannot be mistaken for
// (or collide with) anything, and carrying nothing.
func newPlaceholder() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return placeholderPrefix + hex.EncodeToString(b), nil
}

// childEnv is the child's environment: parent without what looks like mandate's own — MANDATE_*
// variables (the agent key file, an API token, the config directory), any value naming one of
// secretPaths (the agent's key file and registration), any value that is a mandate API token
// (mnd_…) — and without the variables set replaces, then set, in a stable order.
func childEnv(parent []string, secretPaths []string, set [][2]string) []string {
	replaced := map[string]bool{}
	for _, kv := range set {
		replaced[kv[0]] = true
	}
	out := make([]string, 0, len(parent)+len(set))
	for _, kv := range parent {
		name, value, _ := strings.Cut(kv, "=")
		if name == "" || replaced[name] || mandateVar(name) || strings.HasPrefix(value, "mnd_") {
			continue
		}
		if namesAny(value, secretPaths) {
			continue
		}
		out = append(out, kv)
	}
	for _, kv := range set {
		out = append(out, kv[0]+"="+kv[1])
	}
	return out
}

func namesAny(value string, paths []string) bool {
	for _, p := range paths {
		if p != "" && strings.Contains(value, p) {
			return true
		}
	}
	return false
}

// execHook, when set (tests), is called once the task and the sidecar run, before the child
// starts.
var execHook func(task *client.Task, sidecarURL string)

// execSignals are forwarded to the child.
var execSignals = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP}

// execKillGrace is how long the child has to exit after exec's own context ended before it is
// killed.
const execKillGrace = 10 * time.Second

func newExecCmd() *cobra.Command {
	var tf proxyTaskFlags
	var upstreamFlags, placeholderFlags []string
	var verbose bool
	cmd := &cobra.Command{
		Use:   "exec --grant G --purpose P --upstream NAME=VAR [--placeholder VAR] [flags] -- CMD [ARGS…]",
		Short: "Run a tool with placeholders for its API keys; its calls go through mandate's proxy",
		Long: `Run an unmodified tool that reads an API key and a base URL from its environment, without
giving it any credential worth stealing.

As the agent (its key file and agent.json), exec starts a task under --grant whose resources are
the proxy of each --upstream ({server}/proxy/NAME) and whose token is bound to an instance key
that exists only in exec's memory. It runs a sidecar on a random loopback port and starts CMD
with the environment of exec, except:

  - each --upstream NAME=VAR sets VAR=http://127.0.0.1:PORT/NAME, the sidecar's base URL for NAME;
  - each --placeholder VAR sets VAR=mandate-placeholder-<random>, never a real secret;
  - MANDATE_* variables, values naming the agent's key file, and mandate API tokens are removed.

The sidecar adds the task's token and a fresh DPoP proof to each call and drops whatever
Authorization the tool sends; mandate's proxy checks the task and the route and adds the real
credential. The token is renewed in the background, so the tool may pause for as long as the task
lives; if it is lost (see mandate agent proxy --help) and a call was refused for it, exec says
why and exits 1 even if CMD exited 0. SIGINT, SIGTERM and SIGHUP are passed on to CMD. When CMD exits, the task is ended,
so nothing it held still works, and exec exits with CMD's exit code.`,
		Example: `  mandate exec --grant gr_01JA… --purpose "weekly SEO report" \
      --upstream ahrefs=AHREFS_API_BASE --placeholder AHREFS_API_KEY -- node examples/ahrefs/ahrefs.mjs ahrefs.com
  mandate exec --grant gr_01JA… --purpose "send the report" --scope resend:send \
      --upstream resend=RESEND_BASE_URL --placeholder RESEND_API_KEY -- ./resend --to ops@example.com --subject Report --text done`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if tf.grant == "" {
				return errors.New("--grant is required: the grant the task runs under (see mandate agent grants)")
			}
			ups, err := parseExecUpstreams(upstreamFlags)
			if err != nil {
				return err
			}
			if len(ups) == 0 {
				return errors.New("give at least one --upstream NAME=VAR: the upstream the tool calls and the variable that holds its base URL")
			}
			placeholders, err := parsePlaceholders(placeholderFlags, ups)
			if err != nil {
				return err
			}
			var names []string
			for _, u := range ups {
				if !contains(names, u.Name) {
					names = append(names, u.Name)
				}
			}
			keyPath, err := agentKeyPath(cmd)
			if err != nil {
				return err
			}
			task, err := startProxyTask(cmd, tf, func(issuer string) []string {
				out := make([]string, 0, len(names))
				for _, n := range names {
					out = append(out, sidecar.ProxyResource(issuer, n))
				}
				return out
			})
			if err != nil {
				return err
			}
			stderr := cmd.ErrOrStderr()
			var side *sidecar.Sidecar // to say, after the run, whether the task's token was lost
			code, runErr := func() (int, error) {
				var logw = stderr
				if !verbose {
					logw = nil
				}
				sc, err := sidecar.New(sidecar.Config{Issuer: task.state.Server, Task: task.Task, Listen: "127.0.0.1:0",
					Upstreams: names, RequestLog: logw, Notices: stderr})
				if err != nil {
					return 0, err
				}
				if err := sc.Start(); err != nil {
					return 0, err
				}
				defer sc.Stop(2 * time.Second)
				side = sc
				if verbose {
					fmt.Fprintf(stderr, "mandate exec: task %s under %s; sidecar %s\n", task.ID, task.GrantID, sc.URL())
				}
				var set [][2]string
				for _, u := range ups {
					set = append(set, [2]string{u.Var, sc.URL() + "/" + u.Name})
				}
				for _, v := range placeholders {
					p, err := newPlaceholder()
					if err != nil {
						return 0, err
					}
					set = append(set, [2]string{v, p})
				}
				secretPaths := []string{keyPath, agentStatePath(keyPath)}
				if abs, err := filepath.Abs(keyPath); err == nil {
					secretPaths = append(secretPaths, abs, agentStatePath(abs))
				}
				if execHook != nil {
					execHook(task.Task, sc.URL())
				}
				return runChild(cmd.Context(), cmd, args, childEnv(os.Environ(), secretPaths, set))
			}()
			if endErr := task.end(cmd.Context()); endErr != nil {
				endErr = fmt.Errorf("ending task %s: %w (end it with mandate task end %s)", task.ID, endErr, task.ID)
				if runErr != nil || code != 0 {
					fmt.Fprintln(stderr, "mandate exec:", endErr)
				} else {
					return endErr
				}
			} else if verbose {
				fmt.Fprintf(stderr, "mandate exec: task %s is completed\n", task.ID)
			}
			if runErr != nil {
				return runErr
			}
			if side != nil && side.Refused() > 0 && side.Err() != nil {
				// The tool's calls were refused for a reason it cannot know: say it last, and
				// do not exit 0 even if the tool did.
				fmt.Fprintf(stderr, "mandate exec: %d of the tool's calls were refused: %v\n", side.Refused(), side.Err())
				if code == 0 {
					code = 1
				}
			}
			if code != 0 {
				return exitError(code)
			}
			return nil
		},
	}
	cmd.Flags().SetInterspersed(false) // flags after CMD are CMD's
	tf.register(cmd)
	fl := cmd.Flags()
	fl.String(keyFileFlag, "", "the agent's key file (default $MANDATE_AGENT_KEY, else <config dir>/agent/key.jwk)")
	fl.StringArrayVar(&upstreamFlags, "upstream", nil, "NAME=VAR: the tool calls upstream NAME at the base URL in $VAR (repeatable)")
	fl.StringArrayVar(&placeholderFlags, "placeholder", nil, "VAR: set $VAR to a placeholder in place of an API key (repeatable)")
	fl.BoolVarP(&verbose, "verbose", "v", false, "say what exec does, and log each proxied request, on standard error")
	return cmd
}

// runChild runs args with env, standard streams of cmd, signals passed on, and returns its exit
// code (128+N when killed by signal N, as a shell reports it).
func runChild(ctx context.Context, cmd *cobra.Command, args []string, env []string) (int, error) {
	c := exec.Command(args[0], args[1:]...)
	c.Env = env
	c.Stdin, c.Stdout, c.Stderr = cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, execSignals...)
	defer signal.Stop(sigs)
	if err := c.Start(); err != nil {
		return 0, fmt.Errorf("starting %s: %w", args[0], err)
	}
	waited := make(chan error, 1)
	go func() { waited <- c.Wait() }()
	var kill <-chan time.Time
	ctxDone := ctx.Done()
	for {
		select {
		case s := <-sigs:
			_ = c.Process.Signal(s)
		case <-ctxDone:
			// exec itself is being stopped (its context ended: SIGINT or SIGTERM, which the
			// child got too, or a caller's deadline). Give the child a moment, then kill it.
			ctxDone = nil
			kill = time.After(execKillGrace)
		case <-kill:
			_ = c.Process.Kill()
		case err := <-waited:
			if err == nil {
				return 0, nil
			}
			var ee *exec.ExitError
			if !errors.As(err, &ee) {
				return 0, fmt.Errorf("running %s: %w", args[0], err)
			}
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				return 128 + int(ws.Signal()), nil
			}
			return ee.ExitCode(), nil
		}
	}
}
