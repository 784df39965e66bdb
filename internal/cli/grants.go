package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mandate-dev/mandate/internal/api"
	"github.com/mandate-dev/mandate/internal/delegation"
)

// parseDuration reads a duration as Go writes it (90m, 1h30m) with days allowed in front: 30d,
// 1d12h. It must be positive.
func parseDuration(s string) (time.Duration, error) {
	in := strings.TrimSpace(s)
	rest := in
	var total time.Duration
	if i := strings.IndexByte(rest, 'd'); i >= 0 {
		days, err := strconv.ParseUint(rest[:i], 10, 32)
		if err != nil || days > 100000 {
			return 0, fmt.Errorf("%q: want a duration such as 90m, 12h or 30d", s)
		}
		total = time.Duration(days) * 24 * time.Hour
		rest = rest[i+1:]
	}
	if rest != "" {
		d, err := time.ParseDuration(rest)
		if err != nil || d < 0 || strings.HasPrefix(rest, "+") || (total > 0 && strings.HasPrefix(rest, "-")) {
			return 0, fmt.Errorf("%q: want a duration such as 90m, 12h or 30d", s)
		}
		total += d
	}
	if total <= 0 {
		return 0, fmt.Errorf("%q: want a positive duration such as 90m, 12h or 30d", s)
	}
	return total, nil
}

// taskBudgetHelp describes --budget of a task.
const taskBudgetHelp = "the task's own limit as key=N, within the grant's (repeatable): calls (this task and those it hands on), calls:UPSTREAM, max_request_bytes"

// parseBudget reads key=N pairs, given as repeated flags or comma-separated: calls=500, and
// refuses keys a budget set on of does not know, before anything is sent.
func parseBudget(items []string, of delegation.BudgetOf) (map[string]int64, error) {
	out := map[string]int64{}
	for _, item := range items {
		for _, pair := range strings.Split(item, ",") {
			pair = strings.TrimSpace(pair)
			if pair == "" {
				continue
			}
			name, val, ok := strings.Cut(pair, "=")
			if !ok || name == "" || strings.TrimSpace(name) != name {
				return nil, fmt.Errorf("--budget %q: want key=N without spaces, e.g. calls=100 (keys: %s)", pair, delegation.KnownBudgetKeys(of))
			}
			n, err := delegation.ParseBudgetValue(name, val)
			if err != nil {
				return nil, fmt.Errorf("--budget: %w", err)
			}
			if _, dup := out[name]; dup {
				return nil, fmt.Errorf("--budget %s is given twice", name)
			}
			out[name] = n
		}
	}
	if err := delegation.CheckBudget(out, of); err != nil {
		return nil, fmt.Errorf("--budget: %w", err)
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

// splitScopes takes --scope values, each one scope or several separated by spaces.
func splitScopes(vals []string) []string {
	var out []string
	for _, v := range vals {
		out = append(out, strings.Fields(v)...)
	}
	return out
}

// readDetails reads RFC 9396 authorization details from a file ("-" = stdin): a JSON array of
// objects, or one object.
func readDetails(cmd *cobra.Command, path string) ([]json.RawMessage, error) {
	var data []byte
	var err error
	if path == "-" {
		data, err = io.ReadAll(io.LimitReader(cmd.InOrStdin(), 1<<20))
	} else {
		data, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, fmt.Errorf("--details: %w", err)
	}
	data = bytes.TrimSpace(data)
	var list []json.RawMessage
	if len(data) > 0 && data[0] == '{' {
		list = []json.RawMessage{data}
	} else if err := json.Unmarshal(data, &list); err != nil {
		return nil, fmt.Errorf("--details %s: want a JSON array of authorization details objects (RFC 9396), or one object", path)
	}
	for i, d := range list {
		var obj map[string]any
		if err := json.Unmarshal(d, &obj); err != nil || obj == nil {
			return nil, fmt.Errorf("--details %s: entry %d is not a JSON object", path, i+1)
		}
		if typ, _ := obj["type"].(string); typ == "" {
			return nil, fmt.Errorf("--details %s: entry %d has no \"type\"", path, i+1)
		}
	}
	return list, nil
}

// specFlags are the flags that describe a grant: what grant create takes, what an agent asks for,
// and what an approval narrows to.
type specFlags struct {
	scopes, resources, budget []string
	details                   string
	maxTaskTTL, maxTokenTTL   string
	expires                   string
	maxDepth                  int
	allowSub                  bool
}

func (f *specFlags) register(cmd *cobra.Command, verb string) {
	fl := cmd.Flags()
	fl.StringArrayVar(&f.scopes, "scope", nil, "scopes to "+verb+" (repeat the flag, or separate with spaces)")
	fl.StringArrayVar(&f.resources, "resource", nil, "resource URIs (RFC 8707) to "+verb+" (repeatable)")
	fl.StringVar(&f.details, "details", "", "a JSON file of RFC 9396 authorization details (- for stdin)")
	fl.StringVar(&f.maxTaskTTL, "max-task-ttl", "", "the longest a task may live, e.g. 1h (default 1h)")
	fl.StringVar(&f.maxTokenTTL, "max-token-ttl", "", "the longest one access token may live, e.g. 5m (default: the server's token TTL)")
	fl.IntVar(&f.maxDepth, "max-depth", 0, "agents in a delegation chain, the first included (default 1, or 2 with --allow-subdelegation)")
	fl.BoolVar(&f.allowSub, "allow-subdelegation", false, "let a task be handed on, narrower, to another agent")
	fl.StringArrayVar(&f.budget, "budget", nil, "a limit as key=N (repeatable): calls (in total, across all tasks), task_calls (each task's own), calls:UPSTREAM, task_calls:UPSTREAM, max_request_bytes")
}

func (f *specFlags) registerExpires(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.expires, "expires", "", "how long the grant lasts, e.g. 30d or 12h (default 30d)")
}

// spec builds the request body from the flags that were given.
func (f *specFlags) spec(cmd *cobra.Command) (api.SpecJSON, error) {
	sp := api.SpecJSON{Scopes: splitScopes(f.scopes), Resources: f.resources}
	var problems []error
	if f.details != "" {
		d, err := readDetails(cmd, f.details)
		if err != nil {
			problems = append(problems, err)
		}
		sp.AuthorizationDetails = d
	}
	for _, x := range []struct {
		flag, val string
		dst       *int64
	}{{"--max-task-ttl", f.maxTaskTTL, &sp.MaxTaskTTL}, {"--max-token-ttl", f.maxTokenTTL, &sp.MaxTokenTTL}, {"--expires", f.expires, &sp.ExpiresIn}} {
		if x.val == "" {
			continue
		}
		d, err := parseDuration(x.val)
		if err != nil {
			problems = append(problems, fmt.Errorf("%s %w", x.flag, err))
			continue
		}
		*x.dst = int64((d + time.Second - 1) / time.Second)
	}
	if f.maxDepth < 0 {
		problems = append(problems, fmt.Errorf("--max-depth %d: want 1 or more", f.maxDepth))
	}
	sp.MaxDepth, sp.AllowSubdelegation = f.maxDepth, f.allowSub
	budget, err := parseBudget(f.budget, delegation.BudgetOfGrant)
	if err != nil {
		problems = append(problems, err)
	}
	sp.Budget = budget
	return sp, errors.Join(problems...)
}

// anySet reports whether any of the spec flags was given.
func anySet(cmd *cobra.Command) bool {
	for _, name := range []string{"scope", "resource", "details", "max-task-ttl", "max-token-ttl", "max-depth", "allow-subdelegation", "budget", "expires"} {
		if f := cmd.Flags().Lookup(name); f != nil && f.Changed {
			return true
		}
	}
	return false
}

func grantPath(id string) string { return "/v1/grants/" + url.PathEscape(id) }

func newGrantCmd() *cobra.Command {
	cmd := managementGroup("grant", "Grant agents standing authority, and answer their requests for it")

	var create specFlags
	var agent string
	createCmd := &cobra.Command{
		Use:   "create --agent @handle --scope S --resource URI [flags]",
		Short: "Let an agent act for you with some scopes on some resources",
		Long: `Create a grant: a standing delegation that lets the agent act for you with the scopes on the
resources, within limits. The agent starts tasks under it (mandate task start); each task gets
short-lived tokens, never more than the grant. Durations take s, m, h and d (days).

--budget limits calls through the mandate proxy: calls=500 is 500 calls in total, shared by every
task of the grant; task_calls=50 lets each task make at most 50; calls:UPSTREAM and
task_calls:UPSTREAM do the same for one upstream; max_request_bytes bounds one request body.
mandate grant show prints what the totals have used.`,
		Example: `  mandate grant create --agent @orchestrator --scope "repo:read repo:write" \
    --resource https://api.github.com/ --max-task-ttl 1h --allow-subdelegation --max-depth 2 \
    --budget calls=500,task_calls=50 --expires 30d`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkAgentRef(agent); err != nil {
				return fmt.Errorf("--agent: %w", err)
			}
			sp, err := create.spec(cmd)
			if err != nil {
				return err
			}
			sp.Agent = agent
			warnUnknownResources(cmd, sp.Resources)
			var g api.GrantJSON
			if done, err := callAPI(cmd, http.MethodPost, "/v1/grants", sp, &g); done {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "Granted %s to %s.\n\n", g.GrantID, agent)
			if err := printGrant(out, g, time.Now()); err != nil {
				return err
			}
			fmt.Fprintf(out, "\nThe agent starts a task under it with: mandate task start --grant %s --purpose \"…\"\n", g.GrantID)
			return nil
		},
	}
	createCmd.Flags().StringVar(&agent, "agent", "", "the agent: @handle or agt_… id (required)")
	_ = createCmd.MarkFlagRequired("agent")
	create.register(createCmd, "grant")
	create.registerExpires(createCmd)

	var listAgent string
	list := &cobra.Command{
		Use:     "list [--agent @handle]",
		Short:   "List the grants you gave or that your agents hold (an admin sees all)",
		Example: "  mandate grant list --agent @orchestrator",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path := "/v1/grants"
			if listAgent != "" {
				if err := checkAgentRef(listAgent); err != nil {
					return fmt.Errorf("--agent: %w", err)
				}
				path += "?" + url.Values{"agent": {listAgent}}.Encode()
			}
			var res struct {
				Grants []api.GrantJSON `json:"grants"`
			}
			if done, err := callAPI(cmd, http.MethodGet, path, nil, &res); done {
				return err
			}
			return printGrantList(cmd.OutOrStdout(), res.Grants, time.Now())
		},
	}
	list.Flags().StringVar(&listAgent, "agent", "", "only the grants of this agent (@handle or id)")

	show := &cobra.Command{
		Use:     "show ID",
		Short:   "Show a grant and its limits",
		Example: "  mandate grant show gr_01JA…",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var g api.GrantJSON
			if done, err := callAPI(cmd, http.MethodGet, grantPath(args[0]), nil, &g); done {
				return err
			}
			return printGrant(cmd.OutOrStdout(), g, time.Now())
		},
	}

	var yes bool
	revoke := &cobra.Command{
		Use:   "revoke ID [--yes]",
		Short: "Revoke a grant: every task and token under it stops working",
		Long: `Revoke a grant for good. Every task started under it, every task handed on from those, and
all their tokens stop working at once. Asks for confirmation on a terminal; elsewhere pass --yes.`,
		Example: "  mandate grant revoke gr_01JA… --yes",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !yes {
				var g api.GrantJSON
				ok, err := confirmWith(cmd, args[0], grantPath(args[0]), &g, func() string {
					return fmt.Sprintf("Revoke grant %s (agent %s, scopes %s)? Every task under it stops. [y/N] ", g.GrantID, g.AgentID, strings.Join(g.Scopes, " "))
				})
				if err != nil {
					return err
				}
				if !ok {
					return errors.New("not revoked")
				}
			}
			var g api.GrantJSON
			if done, err := callAPI(cmd, http.MethodPost, grantPath(args[0])+"/revoke", nil, &g); done {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Revoked grant %s; its tasks and their tokens no longer work.\n", g.GrantID)
			return nil
		},
	}
	revoke.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")

	var status string
	requests := &cobra.Command{
		Use:   "requests [--status pending|approved|denied|all]",
		Short: "List agents' requests for grants that you can answer",
		Long: `List the grant requests of your agents (an admin sees all). An agent asks with
mandate agent request-grant; answer with mandate grant approve or mandate grant deny.`,
		Example: "  mandate grant requests",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path := "/v1/grant-requests"
			switch s := strings.ToLower(status); s {
			case "all", "":
			case "pending", "approved", "denied":
				path += "?" + url.Values{"status": {s}}.Encode()
			default:
				return fmt.Errorf("--status %q: want pending, approved, denied or all", status)
			}
			var res struct {
				Requests []api.GrantRequestJSON `json:"requests"`
			}
			if done, err := callAPI(cmd, http.MethodGet, path, nil, &res); done {
				return err
			}
			now := time.Now()
			t := newTable(cmd.OutOrStdout(), "ID", "AGENT", "STATUS", "SCOPES", "RESOURCES", "REASON", "ASKED", "GRANT")
			for _, r := range res.Requests {
				t.row(r.RequestID, r.AgentID, r.Status, strings.Join(r.Scopes, " "), strings.Join(r.Resources, " "),
					clip(r.Reason, 60), ago(r.CreatedAt, now), r.GrantID)
			}
			return t.flush()
		},
	}
	requests.Flags().StringVar(&status, "status", "pending", "pending, approved, denied, or all")

	var approve specFlags
	approveCmd := &cobra.Command{
		Use:   "approve ID [--scope S] [--resource URI] [--max-task-ttl D] [flags]",
		Short: "Approve an agent's grant request, as asked or narrower",
		Long: `Answer a grant request with a grant. Without flags the grant is what the agent asked for;
the flags narrow it (scopes and resources to a subset, smaller limits, --max-depth 1 to forbid
handing tasks on); they can never widen it.`,
		Example: "  mandate grant approve grq_01JA… --scope repo:read --max-task-ttl 15m",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var body any
			if anySet(cmd) {
				sp, err := approve.spec(cmd)
				if err != nil {
					return err
				}
				// The server switches sub-delegation off when a depth is given without it: a
				// depth above 1 keeps what the agent asked for.
				sp.AllowSubdelegation = sp.MaxDepth > 1
				body = sp
			}
			var g api.GrantJSON
			if done, err := callAPI(cmd, http.MethodPost, "/v1/grant-requests/"+url.PathEscape(args[0])+"/approve", body, &g); done {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "Approved %s: grant %s.\n\n", args[0], g.GrantID)
			return printGrant(out, g, time.Now())
		},
	}
	approve.register(approveCmd, "grant (a subset of those asked for)")
	approve.registerExpires(approveCmd)
	approveCmd.Flags().Lookup("allow-subdelegation").Hidden = true

	deny := &cobra.Command{
		Use:     "deny ID",
		Short:   "Deny an agent's grant request",
		Example: "  mandate grant deny grq_01JA…",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var r api.GrantRequestJSON
			if done, err := callAPI(cmd, http.MethodPost, "/v1/grant-requests/"+url.PathEscape(args[0])+"/deny", nil, &r); done {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Denied grant request %s of %s.\n", r.RequestID, r.AgentID)
			return nil
		},
	}

	cmd.AddCommand(createCmd, list, show, revoke, requests, approveCmd, deny)
	return cmd
}

// warnUnknownResources warns, on standard error, about each resource that names no upstream of
// the server and no resource of a grant the caller can see: most likely a typo, which would give
// the agent a grant that no proxy call or resource server accepts. When the caller may not list
// upstreams (not an admin) nothing is said, nor with --json (a script's run).
func warnUnknownResources(cmd *cobra.Command, resources []string) {
	if len(resources) == 0 || wantJSON(cmd) {
		return
	}
	c, err := managementClient(cmd)
	if err != nil {
		return
	}
	var ups struct {
		Upstreams []api.UpstreamJSON `json:"upstreams"`
	}
	var grants struct {
		Grants []api.GrantJSON `json:"grants"`
	}
	if _, err := c.do(cmd.Context(), http.MethodGet, "/v1/upstreams", nil, &ups); err != nil {
		return
	}
	if _, err := c.do(cmd.Context(), http.MethodGet, "/v1/grants", nil, &grants); err != nil {
		return
	}
	known := map[string]bool{}
	var upstreams []string
	for _, u := range ups.Upstreams {
		known[strings.TrimSuffix(u.Resource, "/")] = true
		upstreams = append(upstreams, u.Resource)
	}
	for _, g := range grants.Grants {
		for _, r := range g.Resources {
			known[strings.TrimSuffix(r, "/")] = true
		}
	}
	list := "none yet"
	if len(upstreams) > 0 {
		list = strings.Join(upstreams, " ")
	}
	for _, r := range resources {
		if !known[strings.TrimSuffix(r, "/")] {
			fmt.Fprintf(cmd.ErrOrStderr(), "warning: --resource %s names no upstream of this server (theirs: %s) and no resource of another grant; check it for a typo\n", r, list)
		}
	}
}

// confirmWith asks on the terminal before a revocation, after fetching what it concerns into v
// (question is called once v is filled). With no terminal it refuses.
func confirmWith(cmd *cobra.Command, what, path string, v any, question func() string) (bool, error) {
	return confirmTo(cmd, "revoke", what, path, v, question)
}

// confirmTo is confirmWith for any destructive verb ("revoke", "remove").
func confirmTo(cmd *cobra.Command, verb, what, path string, v any, question func() string) (bool, error) {
	in := cmd.InOrStdin()
	if !isTerminal(in) {
		return false, fmt.Errorf("refusing to %s %s without confirmation (there is no terminal to ask on): pass --yes", verb, what)
	}
	c, err := managementClient(cmd)
	if err != nil {
		return false, err
	}
	if _, err := c.do(cmd.Context(), http.MethodGet, path, nil, v); err != nil {
		return false, err
	}
	return confirm(in, cmd.ErrOrStderr(), question())
}

func clip(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

// secondsText prints a limit in seconds as a short duration; 0 is "-".
func secondsText(s int64) string {
	if s <= 0 {
		return "-"
	}
	return shortDuration(time.Duration(s) * time.Second)
}

// budgetText prints a budget as key=N pairs; a key in used (a grant's total) also says how
// much of it is used and left.
func budgetText(b, used map[string]int64) string {
	if len(b) == 0 {
		return "-"
	}
	names := make([]string, 0, len(b))
	for k := range b {
		names = append(names, k)
	}
	sort.Strings(names)
	parts := make([]string, 0, len(names))
	for _, k := range names {
		part := fmt.Sprintf("%s=%d", k, b[k])
		if n, ok := used[k]; ok {
			part += fmt.Sprintf(" (%d used, %d left)", n, max(b[k]-n, 0))
		}
		parts = append(parts, part)
	}
	return strings.Join(parts, ", ")
}

func printGrantList(w io.Writer, grants []api.GrantJSON, now time.Time) error {
	t := newTable(w, "ID", "AGENT", "STATUS", "SCOPES", "RESOURCES", "MAX TASK", "DEPTH", "EXPIRES")
	for _, g := range grants {
		t.row(g.GrantID, g.AgentID, g.Status, strings.Join(g.Scopes, " "), strings.Join(g.Resources, " "),
			secondsText(g.MaxTaskTTL), strconv.Itoa(g.MaxDepth), ago(g.ExpiresAt, now))
	}
	return t.flush()
}

func printGrant(w io.Writer, g api.GrantJSON, now time.Time) error {
	t := newTable(w)
	t.row("grant", g.GrantID)
	t.row("status", g.Status)
	t.row("agent", g.AgentID)
	t.row("principal", g.PrincipalID)
	t.row("scopes", strings.Join(g.Scopes, " "))
	t.row("resources", strings.Join(g.Resources, " "))
	for _, d := range g.AuthorizationDetails {
		t.row("details", compactJSON(d))
	}
	t.row("max task ttl", secondsText(g.MaxTaskTTL))
	t.row("max token ttl", secondsText(g.MaxTokenTTL))
	t.row("max depth", strconv.Itoa(g.MaxDepth))
	t.row("sub-delegation", yesNo(g.AllowSubdelegation))
	t.row("budget", budgetText(g.Budget, g.BudgetUsed))
	t.row("created", when(g.CreatedAt, now))
	t.row("expires", when(g.ExpiresAt, now))
	if g.RevokedAt != nil {
		t.row("revoked", whenPtr(g.RevokedAt, now))
	}
	if g.RequestID != "" {
		t.row("request", g.RequestID)
	}
	return t.flush()
}

// compactJSON prints a JSON value on one line.
func compactJSON(raw []byte) string {
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return string(raw)
	}
	return buf.String()
}
