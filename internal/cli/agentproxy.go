package cli

import (
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spf13/cobra"

	"github.com/mandate-dev/mandate/client"
	"github.com/mandate-dev/mandate/internal/delegation"
	"github.com/mandate-dev/mandate/internal/sidecar"
)

// proxyTaskFlags are the flags that start a task for the sidecar (agent proxy, exec).
type proxyTaskFlags struct {
	grant, purpose, ttl string
	scopes, budget      []string
}

func (f *proxyTaskFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.grant, "grant", "", "the grant to start the task under")
	fl.StringVar(&f.purpose, "purpose", "", "what the task is for (kept in the audit trail)")
	fl.StringArrayVar(&f.scopes, "scope", nil, "scopes for the task, within the grant's (default: all of them)")
	fl.StringVar(&f.ttl, "ttl", "", "how long the task lasts, e.g. 15m (default: the grant's max task TTL)")
	fl.StringArrayVar(&f.budget, "budget", nil, taskBudgetHelp)
}

// proxyTask is a task started by the sidecar for itself, with an instance key that exists in
// this process's memory only.
type proxyTask struct {
	*client.Task
	agent *client.TokenSource // to end it
	state *agentState
}

// startProxyTask starts a task under f.grant as the agent of the key file, bound to a new
// in-memory instance key, for resources (computed from the server's URL by resourcesFor).
func startProxyTask(cmd *cobra.Command, f proxyTaskFlags, resourcesFor func(issuer string) []string) (*proxyTask, error) {
	req := client.TaskRequest{Purpose: f.purpose, Scopes: splitScopes(f.scopes)}
	if f.ttl != "" {
		d, err := parseDuration(f.ttl)
		if err != nil {
			return nil, fmt.Errorf("--ttl %w", err)
		}
		req.TTL = d
	}
	b, err := parseBudget(f.budget, delegation.BudgetOfTask)
	if err != nil {
		return nil, err
	}
	req.Budget = b
	keyPath, err := agentKeyPath(cmd)
	if err != nil {
		return nil, err
	}
	ts, st, err := agentTokenSource(cmd, "", "")
	if err != nil {
		return nil, err
	}
	key, err := loadAgentKey(keyPath)
	if err != nil {
		return nil, err
	}
	req.Resources = resourcesFor(st.Server)
	ctx := cmd.Context()
	grants, err := ts.Grants(ctx)
	if err != nil {
		return nil, explain(err, st.Server)
	}
	var g *client.Grant
	for i := range grants {
		if grants[i].ID == f.grant {
			g = &grants[i]
		}
	}
	if g == nil {
		return nil, fmt.Errorf("grant %q is not among the active grants of @%s (see mandate agent grants)", f.grant, st.Handle)
	}
	if req.InstanceKey, err = client.GenerateKey(); err != nil {
		return nil, err
	}
	task, err := client.StartTask(ctx, newHTTPClient(), st.Server, key, g.Token, req)
	if err != nil {
		return nil, explain(err, st.Server)
	}
	return &proxyTask{Task: task, agent: ts, state: st}, nil
}

// end completes the task (whatever became of the command's context).
func (p *proxyTask) end(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), requestTimeout)
	defer cancel()
	if err := p.End(ctx, p.agent); err != nil {
		return explain(err, p.state.Server)
	}
	return nil
}

// loadTaskFile takes up a task written by task start --out.
func loadTaskFile(path string) (*client.Task, *taskFile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("reading the task file: %w", err)
	}
	var f taskFile
	if err := json.Unmarshal(data, &f); err != nil || f.Issuer == "" || f.AccessToken == "" {
		return nil, nil, fmt.Errorf("%s is not a task file (mandate task start --out FILE writes one)", path)
	}
	var key crypto.Signer
	switch {
	case len(f.Key) > 0:
		var jwk jose.JSONWebKey
		if err := jwk.UnmarshalJSON(f.Key); err != nil || jwk.IsPublic() {
			return nil, nil, fmt.Errorf("%s: the instance key is not a private JWK", path)
		}
		s, ok := jwk.Key.(crypto.Signer)
		if !ok {
			return nil, nil, fmt.Errorf("%s: unsupported instance key type %T", path, jwk.Key)
		}
		key = s
	case f.KeyFile != "":
		if key, err = loadAgentKey(f.KeyFile); err != nil {
			return nil, nil, err
		}
	default:
		return nil, nil, fmt.Errorf("%s names no key (neither key nor key_file)", path)
	}
	task, err := client.ResumeTask(f.Issuer, newHTTPClient(), f.AccessToken, key)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return task, &f, nil
}

func newAgentProxyCmd() *cobra.Command {
	var listen, taskPath string
	var resources, upstreams []string
	var quiet bool
	var tf proxyTaskFlags
	cmd := &cobra.Command{
		Use:   "proxy --listen 127.0.0.1:PORT (--task-file FILE | --grant G --purpose P [flags])",
		Short: "Run a loopback sidecar that sends requests to upstream APIs through mandate's proxy",
		Long: `Listen on a loopback address and forward every request for
http://127.0.0.1:PORT/{upstream}/{path…}?{query} to the server's proxy,
{server}/proxy/{upstream}/{path…}?{query}, with the task's token and a fresh DPoP proof. The token
is renewed in the background for the task's whole life; once that is no longer possible (the task
ended or was revoked, its TTL ran out, or the token expired while the network was down or the
machine slept) every request gets 401 saying why. Bodies stream both ways; status and headers come back as the
upstream sent them. Any Authorization, Cookie or DPoP header the tool sends is dropped: give the
tool a placeholder key and the sidecar's URL as its base URL. The proxy adds the real credential.

The task is either one started earlier (--task-file, from mandate task start --out) or one the
sidecar starts itself (--grant): then its token is bound to an instance key that exists only in
this process's memory, and the task is ended when the sidecar stops (SIGINT, SIGTERM).

--listen must be a loopback address: whoever reaches the sidecar acts with the task's authority.
Requests that name another host than a loopback one are refused (DNS rebinding).`,
		Example: `  mandate agent proxy --listen 127.0.0.1:8421 --grant gr_01JA… --purpose "weekly SEO report" --upstream ahrefs --ttl 1h
  AHREFS_API_BASE=http://127.0.0.1:8421/ahrefs AHREFS_API_KEY=placeholder node examples/ahrefs/ahrefs.mjs ahrefs.com`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := sidecar.CheckListen(listen); err != nil {
				return err
			}
			for _, u := range upstreams { // before a task is started for nothing
				if !sidecar.UpstreamName.MatchString(u) {
					return fmt.Errorf("--upstream %q: want an upstream's name (a-z, 0-9, -)", u)
				}
			}
			ctx := cmd.Context()
			var task *client.Task
			var started *proxyTask
			var issuer string
			switch {
			case taskPath != "" && tf.grant != "":
				return errors.New("give either --task-file or --grant, not both")
			case taskPath != "":
				if cmd.Flags().Changed("purpose") || len(tf.scopes) > 0 || tf.ttl != "" || len(resources) > 0 || len(tf.budget) > 0 {
					return errors.New("--purpose, --scope, --resource, --ttl and --budget start a task: use them with --grant, not --task-file")
				}
				t, f, err := loadTaskFile(taskPath)
				if err != nil {
					return err
				}
				task, issuer = t, f.Issuer
			case tf.grant != "":
				p, err := startProxyTask(cmd, tf, func(issuer string) []string {
					if len(resources) > 0 {
						return resources
					}
					var out []string
					for _, u := range upstreams {
						out = append(out, sidecar.ProxyResource(issuer, u))
					}
					return out
				})
				if err != nil {
					return err
				}
				started, task, issuer = p, p.Task, p.state.Server
			default:
				return errors.New("give --task-file FILE (from mandate task start --out) or --grant G to start a task")
			}
			var logw io.Writer
			if !quiet {
				logw = cmd.ErrOrStderr()
			}
			sc, err := sidecar.New(sidecar.Config{Issuer: issuer, Task: task, Listen: listen, Upstreams: upstreams,
				RequestLog: logw, Notices: cmd.ErrOrStderr()})
			if err == nil {
				if err = sc.Start(); err == nil {
					out := cmd.OutOrStdout()
					if wantJSON(cmd) {
						_ = printJSON(out, map[string]any{"url": sc.URL(), "task_id": task.ID, "grant_id": task.GrantID, "server": issuer})
					} else {
						fmt.Fprintf(out, "Forwarding %s/{upstream}/{path} to %s/proxy/{upstream}/{path} for task %s.\n", sc.URL(), issuer, task.ID)
						if started != nil {
							fmt.Fprintln(out, "The task ends when the sidecar stops (Ctrl-C).")
						}
					}
					select {
					case <-ctx.Done():
					case err = <-sc.Done():
						err = fmt.Errorf("the sidecar stopped: %w", err)
					}
					sc.Stop(5 * time.Second)
				}
			}
			if started != nil {
				if endErr := started.end(ctx); endErr != nil {
					return errors.Join(err, fmt.Errorf("ending task %s: %w", task.ID, endErr))
				}
				if !quiet {
					fmt.Fprintf(cmd.ErrOrStderr(), "Task %s is completed; its tokens no longer work.\n", task.ID)
				}
			}
			return err
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&listen, "listen", "127.0.0.1:8421", "the loopback address to listen on (port 0 picks a free one)")
	fl.StringVar(&taskPath, "task-file", "", "a task file written by mandate task start --out")
	tf.register(cmd)
	fl.StringArrayVar(&resources, "resource", nil, "with --grant: resources for the task (default: {server}/proxy/NAME for each --upstream, else all of the grant's)")
	fl.StringArrayVar(&upstreams, "upstream", nil, "forward only to this upstream (repeatable; default: any)")
	fl.BoolVarP(&quiet, "quiet", "q", false, "do not log requests on standard error")
	return cmd
}
