package cli

import (
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spf13/cobra"

	"github.com/mandate-dev/mandate/client"
	"github.com/mandate-dev/mandate/dpop"
	"github.com/mandate-dev/mandate/internal/api"
	"github.com/mandate-dev/mandate/internal/delegation"
)

func taskPath(id string) string { return "/v1/tasks/" + url.PathEscape(id) }

// taskFile is what task start --out writes (mode 0600): the task's token and, for an instance
// key, that key as a private JWK; client.ResumeTask takes them up.
type taskFile struct {
	Issuer        string          `json:"issuer"`
	TaskID        string          `json:"task_id"`
	GrantID       string          `json:"grant_id"`
	AgentID       string          `json:"agent_id"`
	TokenType     string          `json:"token_type"`
	AccessToken   string          `json:"access_token"`
	Scope         string          `json:"scope"`
	ExpiresAt     time.Time       `json:"expires_at"`      // of the access token
	TaskExpiresAt time.Time       `json:"task_expires_at"` // the latest the task can last
	JKT           string          `json:"jkt"`             // the key the token is bound to
	Key           json.RawMessage `json:"key,omitempty"`   // the instance key (private JWK)
	KeyFile       string          `json:"key_file,omitempty"`
}

// taskStarted is task start's --json answer.
type taskStarted struct {
	TaskID        string    `json:"task_id"`
	GrantID       string    `json:"grant_id"`
	Scope         string    `json:"scope"`
	JKT           string    `json:"jkt"`
	InstanceKey   bool      `json:"instance_key"`
	ExpiresAt     time.Time `json:"expires_at"`
	TaskExpiresAt time.Time `json:"task_expires_at"`
	Out           string    `json:"out,omitempty"`
	AccessToken   string    `json:"access_token,omitempty"`
}

func newTaskCmd() *cobra.Command {
	cmd := managementGroup("task", "Start tasks under grants (as an agent); list, show, end and revoke them")
	cmd.PersistentFlags().String(keyFileFlag, "", "the agent's key file, for task start and task end as the agent (default $MANDATE_AGENT_KEY, else <config dir>/agent/key.jwk)")
	cmd.AddCommand(newTaskStartCmd())

	var grant string
	list := &cobra.Command{
		Use:     "list [--grant G]",
		Short:   "List tasks on your behalf or of your agents (an admin sees all)",
		Example: "  mandate task list --grant gr_01JA…",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path := "/v1/tasks"
			if grant != "" {
				path += "?" + url.Values{"grant": {grant}}.Encode()
			}
			var res struct {
				Tasks []api.TaskJSON `json:"tasks"`
			}
			if done, err := callAPI(cmd, http.MethodGet, path, nil, &res); done {
				return err
			}
			now := time.Now()
			t := newTable(cmd.OutOrStdout(), "ID", "GRANT", "AGENT", "DEPTH", "PARENT", "STATUS", "PURPOSE", "EXPIRES")
			for _, x := range res.Tasks {
				t.row(x.TaskID, x.GrantID, x.AgentID, strconv.Itoa(x.Depth), x.ParentID, x.Status, clip(x.Purpose, 40), ago(x.ExpiresAt, now))
			}
			return t.flush()
		},
	}
	list.Flags().StringVar(&grant, "grant", "", "only the tasks of this grant")

	show := &cobra.Command{
		Use:     "show ID",
		Short:   "Show a task",
		Example: "  mandate task show tsk_01JA…",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var x api.TaskJSON
			if done, err := callAPI(cmd, http.MethodGet, taskPath(args[0]), nil, &x); done {
				return err
			}
			return printTask(cmd.OutOrStdout(), x, time.Now())
		},
	}

	end := &cobra.Command{
		Use:   "end ID",
		Short: "Complete a task, and every task under it",
		Long: `Mark a task completed: its tokens, and those of every task handed on from it, stop working.
Logged in (or with $MANDATE_TOKEN), this goes through the management API; otherwise the agent in
agent.json ends its own task.`,
		Example: "  mandate task end tsk_01JA…",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := managementClient(cmd)
			if errors.Is(err, errNotLoggedIn) {
				return endTaskAsAgent(cmd, args[0])
			}
			if err != nil {
				return err
			}
			var x api.TaskJSON
			if printed, err := c.call(cmd, http.MethodPost, taskPath(args[0])+"/end", nil, &x); printed || err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Task %s is %s; its tokens and those of the tasks under it no longer work.\n", x.TaskID, x.Status)
			return nil
		},
	}

	var yes bool
	revoke := &cobra.Command{
		Use:   "revoke ID [--yes]",
		Short: "Revoke a task, and every task under it",
		Long: `Revoke a task: like task end, but recorded as a revocation (something went wrong). Asks for
confirmation on a terminal; elsewhere pass --yes.`,
		Example: "  mandate task revoke tsk_01JA… --yes",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !yes {
				var x api.TaskJSON
				ok, err := confirmWith(cmd, args[0], taskPath(args[0]), &x, func() string {
					return fmt.Sprintf("Revoke task %s (%s, agent %s)? It and every task under it stop. [y/N] ", x.TaskID, clip(x.Purpose, 40), x.AgentID)
				})
				if err != nil {
					return err
				}
				if !ok {
					return errors.New("not revoked")
				}
			}
			var x api.TaskJSON
			if done, err := callAPI(cmd, http.MethodPost, taskPath(args[0])+"/revoke", nil, &x); done {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Revoked task %s; its tokens and those of the tasks under it no longer work.\n", x.TaskID)
			return nil
		},
	}
	revoke.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")

	cmd.AddCommand(list, show, end, revoke)
	return cmd
}

func endTaskAsAgent(cmd *cobra.Command, id string) error {
	path, err := agentKeyPath(cmd)
	if err != nil {
		return err
	}
	if st, err := loadAgentState(path); err != nil {
		return err
	} else if st == nil {
		return fmt.Errorf("%w (or, as the agent, keep its key and %s at %s)", errNotLoggedIn, agentStateFile, path)
	}
	ts, st, err := agentTokenSource(cmd, "", "")
	if err != nil {
		return err
	}
	if err := client.EndTask(cmd.Context(), ts, id); err != nil {
		return explain(err, st.Server)
	}
	if wantJSON(cmd) {
		return printJSON(cmd.OutOrStdout(), map[string]any{"task_id": id, "status": "completed"})
	}
	fmt.Fprintf(cmd.OutOrStdout(), "Task %s is completed (ended by @%s); its tokens and those of the tasks under it no longer work.\n", id, st.Handle)
	return nil
}

func newTaskStartCmd() *cobra.Command {
	var grant, purpose, ttl, details, out string
	var scopes, resources, budget []string
	var instanceKey, printToken, force bool
	cmd := &cobra.Command{
		Use:   "start --grant G --purpose P [--scope S] [--resource URI] [--ttl 15m] [--instance-key] [--out FILE [--force]]",
		Short: "Start a task under a grant, as the agent, and get its token",
		Long: `As the agent (its key file and agent.json), fetch the grant token of --grant and exchange it
(RFC 8693) for the token of a new task, within the grant: scopes, resources and TTL can only be
narrower. The token is bound to the agent's key, or with --instance-key to a new ephemeral key
made for this task alone: that key exists only in the --out file, so --instance-key needs --out.

--out FILE writes the task's token (and instance key) as JSON with mode 0600; --out - prints it
on standard output instead; an existing FILE is replaced only with --force. Otherwise the token
is printed only with --print-token.`,
		Example: `  mandate task start --grant gr_01JA… --purpose "triage the backlog" --ttl 15m --instance-key --out task.json`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if instanceKey && out == "" {
				return errors.New("--instance-key needs --out FILE (or --out -): the instance key exists nowhere else")
			}
			if out != "" && out != "-" && !force {
				// Before the task starts: a task file overwritten by mistake loses its instance key.
				if _, err := os.Lstat(out); err == nil {
					return fmt.Errorf("--out %s exists: refusing to overwrite it (it may hold another task's key); pass --force to replace it", out)
				}
			}
			req := client.TaskRequest{Purpose: purpose, Scopes: splitScopes(scopes), Resources: resources}
			if ttl != "" {
				d, err := parseDuration(ttl)
				if err != nil {
					return fmt.Errorf("--ttl %w", err)
				}
				req.TTL = d
			}
			if details != "" {
				d, err := readDetails(cmd, details)
				if err != nil {
					return err
				}
				req.AuthorizationDetails = d
			}
			b, err := parseBudget(budget, delegation.BudgetOfTask)
			if err != nil {
				return err
			}
			req.Budget = b
			keyPath, err := agentKeyPath(cmd)
			if err != nil {
				return err
			}
			ts, st, err := agentTokenSource(cmd, "", "")
			if err != nil {
				return err
			}
			key, err := loadAgentKey(keyPath)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			grants, err := ts.Grants(ctx)
			if err != nil {
				return explain(err, st.Server)
			}
			var g *client.Grant
			for i := range grants {
				if grants[i].ID == grant {
					g = &grants[i]
				}
			}
			if g == nil {
				return fmt.Errorf("grant %q is not among the active grants of @%s (see mandate agent grants)", grant, st.Handle)
			}
			if instanceKey {
				if req.InstanceKey, err = client.GenerateKey(); err != nil {
					return err
				}
			}
			started := time.Now()
			task, err := client.StartTask(ctx, newHTTPClient(), st.Server, key, g.Token, req)
			if err != nil {
				return explain(err, st.Server)
			}
			cur := task.Current()
			jkt, err := dpop.Thumbprint(task.Key.Public())
			if err != nil {
				return err
			}
			f := taskFile{Issuer: st.Server, TaskID: task.ID, GrantID: task.GrantID, AgentID: st.AgentID, TokenType: "DPoP",
				AccessToken: cur.AccessToken, Scope: cur.Scope, ExpiresAt: cur.ExpiresAt.UTC(),
				TaskExpiresAt: taskEnds(started, req.TTL, g).UTC(), JKT: jkt}
			if instanceKey {
				if f.Key, err = privateJWK(req.InstanceKey); err != nil {
					return err
				}
			} else {
				f.KeyFile = keyPath
			}
			res := taskStarted{TaskID: f.TaskID, GrantID: f.GrantID, Scope: f.Scope, JKT: jkt, InstanceKey: instanceKey,
				ExpiresAt: f.ExpiresAt, TaskExpiresAt: f.TaskExpiresAt}
			stdout := cmd.OutOrStdout()
			switch out {
			case "":
			case "-":
				// Standard output carries the file alone; the summary goes to standard error.
				if err := printJSON(stdout, f); err != nil {
					return err
				}
				stdout = cmd.ErrOrStderr()
			default:
				if err := writeJSONFile(out, f); err != nil {
					return err
				}
				res.Out = out
			}
			if printToken {
				res.AccessToken = cur.AccessToken
			}
			if wantJSON(cmd) && out != "-" {
				return printJSON(stdout, res)
			}
			return printStarted(stdout, res, st.Handle, time.Now())
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&grant, "grant", "", "the grant to start the task under (required)")
	fl.StringVar(&purpose, "purpose", "", "what the task is for (kept in the audit trail)")
	fl.StringArrayVar(&scopes, "scope", nil, "scopes for the task, within the grant's (default: all of them)")
	fl.StringArrayVar(&resources, "resource", nil, "resources for the task, within the grant's (default: all of them)")
	fl.StringVar(&ttl, "ttl", "", "how long the task lasts, e.g. 15m (default: the grant's max task TTL)")
	fl.StringVar(&details, "details", "", "a JSON file of authorization details, within the grant's (- for stdin)")
	fl.StringArrayVar(&budget, "budget", nil, taskBudgetHelp)
	fl.BoolVar(&instanceKey, "instance-key", false, "bind the task's token to a new ephemeral key (needs --out)")
	fl.StringVar(&out, "out", "", "write the token (and instance key) as JSON to FILE, mode 0600; - for standard output")
	fl.BoolVar(&force, "force", false, "replace the --out file if it exists")
	fl.BoolVar(&printToken, "print-token", false, "print the access token too")
	_ = cmd.MarkFlagRequired("grant")
	return cmd
}

// taskEnds is the latest a task started at start can last: its TTL (or the grant's max task
// TTL), but never past the grant's expiry, as the server computes it.
func taskEnds(start time.Time, ttl time.Duration, g *client.Grant) time.Time {
	if ttl == 0 {
		ttl = g.MaxTaskTTL
	}
	end := start.Add(ttl)
	if !g.ExpiresAt.IsZero() && g.ExpiresAt.Before(end) {
		end = g.ExpiresAt
	}
	return end
}

func privateJWK(key crypto.Signer) (json.RawMessage, error) {
	b, err := (&jose.JSONWebKey{Key: key, Algorithm: string(jose.EdDSA), Use: "sig"}).MarshalJSON()
	if err != nil {
		return nil, fmt.Errorf("encoding the instance key: %w", err)
	}
	return b, nil
}

func printStarted(w io.Writer, r taskStarted, handle string, now time.Time) error {
	t := newTable(w)
	t.row("task", r.TaskID)
	t.row("grant", r.GrantID)
	t.row("scope", r.Scope)
	if r.InstanceKey {
		t.row("bound to", "instance key "+r.JKT)
	} else {
		t.row("bound to", "the key of @"+handle+" ("+r.JKT+")")
	}
	t.row("token expires", when(r.ExpiresAt, now))
	t.row("task ends", when(r.TaskExpiresAt, now))
	if r.Out != "" {
		t.row("written to", r.Out+" (mode 0600)")
	}
	if r.AccessToken != "" {
		t.row("token", r.AccessToken)
	}
	return t.flush()
}

func printTask(w io.Writer, x api.TaskJSON, now time.Time) error {
	t := newTable(w)
	t.row("task", x.TaskID)
	t.row("status", x.Status)
	t.row("purpose", x.Purpose)
	t.row("grant", x.GrantID)
	if x.ParentID != "" {
		t.row("parent", x.ParentID)
	}
	t.row("root", x.RootID)
	t.row("depth", strconv.Itoa(x.Depth))
	t.row("principal", x.PrincipalID)
	t.row("agent", x.AgentID)
	if x.InstanceJKT != "" {
		t.row("instance key", x.InstanceJKT)
	}
	t.row("scopes", strings.Join(x.Scopes, " "))
	t.row("resources", strings.Join(x.Resources, " "))
	for _, d := range x.AuthorizationDetails {
		t.row("details", compactJSON(d))
	}
	t.row("budget", budgetText(x.Budget, nil))
	t.row("created", when(x.CreatedAt, now))
	t.row("expires", when(x.ExpiresAt, now))
	if x.EndedAt != nil {
		t.row("ended", whenPtr(x.EndedAt, now))
	}
	return t.flush()
}
