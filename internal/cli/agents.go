package cli

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mandate-dev/mandate/internal/api"
)

// agentPath is the API path of an agent given as an id or @handle.
func agentPath(ref string) string { return "/v1/agents/" + url.PathEscape(ref) }

// checkAgentRef refuses an agent named neither by @handle nor by id: the server would only say
// there is no such agent, when the handle merely lacks its @.
func checkAgentRef(ref string) error {
	if strings.HasPrefix(ref, "@") || strings.HasPrefix(ref, "agt_") {
		return nil
	}
	return fmt.Errorf("%q is neither a handle nor an agent id: write a handle with its @ (@%s) or an id (agt_…)", ref, ref)
}

// agentID resolves an agent given as @handle to its id; an id stays as it is.
func agentID(cmd *cobra.Command, ref string) (string, error) {
	if err := checkAgentRef(ref); err != nil {
		return "", err
	}
	if !strings.HasPrefix(ref, "@") {
		return ref, nil
	}
	c, err := managementClient(cmd)
	if err != nil {
		return "", err
	}
	var a api.AgentJSON
	if _, err := c.do(cmd.Context(), http.MethodGet, agentPath(ref), nil, &a); err != nil {
		return "", err
	}
	return a.AgentID, nil
}

func newAgentsCmd() *cobra.Command {
	cmd := managementGroup("agents", "Claim, list, show and revoke agents (as their owner or an admin)")

	claim := &cobra.Command{
		Use:   "claim CODE",
		Short: "Become the owner of a newly registered agent",
		Long: `Claim the agent that printed CODE when it registered (mandate agent register). The code
works once and expires; until it is claimed, the agent can get no tokens.`,
		Example: "  mandate agents claim ABCD-EFGH-JKMN-PQRS",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var a api.AgentJSON
			if done, err := callAPI(cmd, http.MethodPost, "/v1/agents/claim", map[string]string{"claim_code": args[0]}, &a); done {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Claimed agent @%s (%s); you are its owner and it can now get tokens.\n", a.Handle, a.AgentID)
			return nil
		},
	}

	var owner, status string
	list := &cobra.Command{
		Use:     "list [--owner ID] [--status S]",
		Short:   "List agents (yours; an admin sees all)",
		Example: "  mandate agents list --status CLAIMED",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := url.Values{}
			if owner != "" {
				q.Set("owner", owner)
			}
			if status != "" {
				q.Set("status", strings.ToUpper(status))
			}
			path := "/v1/agents"
			if len(q) > 0 {
				path += "?" + q.Encode()
			}
			var res struct {
				Agents []api.AgentJSON `json:"agents"`
			}
			if done, err := callAPI(cmd, http.MethodGet, path, nil, &res); done {
				return err
			}
			now := time.Now()
			t := newTable(cmd.OutOrStdout(), "ID", "HANDLE", "STATUS", "OWNER", "CREATED")
			for _, a := range res.Agents {
				t.row(a.AgentID, "@"+a.Handle, a.Status, a.OwnerID, ago(a.CreatedAt, now))
			}
			return t.flush()
		},
	}
	list.Flags().StringVar(&owner, "owner", "", "only agents of this principal id (admin)")
	list.Flags().StringVar(&status, "status", "", "only agents with this status: UNCLAIMED, CLAIMED or REVOKED")

	show := &cobra.Command{
		Use:     "show ID|@handle",
		Short:   "Show an agent and its keys",
		Example: "  mandate agents show @release-bot",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkAgentRef(args[0]); err != nil {
				return err
			}
			var a api.AgentJSON
			if done, err := callAPI(cmd, http.MethodGet, agentPath(args[0]), nil, &a); done {
				return err
			}
			return printAgent(cmd.OutOrStdout(), a, time.Now())
		},
	}

	var yes bool
	revoke := &cobra.Command{
		Use:   "revoke ID|@handle [--yes]",
		Short: "Revoke an agent for good: every token it holds stops working",
		Long: `Revoke an agent permanently. Its tokens stop working at once and it can get no new ones.
Asks for confirmation on a terminal; elsewhere (scripts, CI) pass --yes.`,
		Example: "  mandate agents revoke @release-bot --yes",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ref := args[0]
			if err := checkAgentRef(ref); err != nil {
				return err
			}
			if !yes {
				var a api.AgentJSON
				ok, err := confirmWith(cmd, ref, agentPath(ref), &a, func() string {
					return fmt.Sprintf("Revoke agent @%s (%s) for good? Every token it holds stops working. [y/N] ", a.Handle, a.AgentID)
				})
				if err != nil {
					return err
				}
				if !ok {
					return errors.New("not revoked")
				}
				ref = a.AgentID
			}
			var a api.AgentJSON
			if done, err := callAPI(cmd, http.MethodPost, agentPath(ref)+"/revoke", nil, &a); done {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Revoked agent @%s (%s); its tokens no longer work.\n", a.Handle, a.AgentID)
			return nil
		},
	}
	revoke.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")

	cmd.AddCommand(claim, list, show, revoke)
	return cmd
}

// confirm asks question on w and reads a yes from r.
func confirm(r io.Reader, w io.Writer, question string) (bool, error) {
	fmt.Fprint(w, question)
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return false, err
	}
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return true, nil
	}
	return false, nil
}

func printAgent(w io.Writer, a api.AgentJSON, now time.Time) error {
	t := newTable(w)
	t.row("agent", a.AgentID)
	t.row("handle", "@"+a.Handle)
	if a.Name != "" {
		t.row("name", a.Name)
	}
	if a.Description != "" {
		t.row("description", a.Description)
	}
	t.row("status", a.Status)
	t.row("owner", a.OwnerID)
	t.row("did", a.DID)
	t.row("created", when(a.CreatedAt, now))
	t.row("claimed", whenPtr(a.ClaimedAt, now))
	if a.RevokedAt != nil {
		t.row("revoked", whenPtr(a.RevokedAt, now))
	}
	if err := t.flush(); err != nil {
		return err
	}
	fmt.Fprintln(w, "\nkeys:")
	kt := newTable(w, "  DID", "JKT", "CREATED", "EXPIRES")
	for _, k := range a.Keys {
		kt.row("  "+k.DID, k.JKT, ago(k.CreatedAt, now), agoPtr(k.ExpiresAt, now))
	}
	return kt.flush()
}
