package cli

import (
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mandate-dev/mandate/client"
	"github.com/mandate-dev/mandate/internal/api"
)

// newAgentCmd is the agent's side: its own key and registration, no login needed.
func newAgentCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Be an agent: create a key, register, rotate the key, get tokens",
		Long: `Commands an agent runs for itself. Its identity is an Ed25519 key in a private JWK file
(--key-file, else $MANDATE_AGENT_KEY, else <config dir>/agent/key.jwk); after registration its
server, agent id and handle are kept in agent.json beside the key file. No login is needed.`,
		Args: cobra.NoArgs,
	}
	addJSONFlag(cmd)
	cmd.PersistentFlags().String(keyFileFlag, "", "the agent's key file (default $MANDATE_AGENT_KEY, else <config dir>/agent/key.jwk)")
	cmd.AddCommand(newAgentInitCmd(), newAgentRegisterCmd(), newAgentClaimCodeCmd(), newAgentRotateKeyCmd(), newAgentTokenCmd(), newAgentWhoamiCmd(),
		newAgentRequestGrantCmd(), newAgentGrantsCmd(), newAgentProxyCmd())
	return cmd
}

func newAgentInitCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "init [--key-file F]",
		Short:   "Create the agent's Ed25519 key and print its did:key",
		Example: "  mandate agent init --key-file ./agent/key.jwk",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path, err := agentKeyPath(cmd)
			if err != nil {
				return err
			}
			if _, err := os.Lstat(path); err == nil {
				return fmt.Errorf("an agent key already exists at %s; refusing to overwrite it (use another --key-file for another agent)", path)
			} else if !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			key, err := client.GenerateKey()
			if err != nil {
				return err
			}
			if err := client.SaveKey(path, key); err != nil {
				return err
			}
			did, err := client.DID(key)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if wantJSON(cmd) {
				return printJSON(out, map[string]string{"key_file": path, "did": did})
			}
			fmt.Fprintf(out, "Created agent key %s (mode 0600)\n%s\n\nNext: mandate agent register --server URL --handle NAME%s\n", path, did, keyFileArg(cmd, path))
			return nil
		},
	}
}

// keyFileArg repeats --key-file in suggested commands when the user gave it.
func keyFileArg(cmd *cobra.Command, path string) string {
	if cmd.Flags().Changed(keyFileFlag) {
		return " --key-file " + path
	}
	return ""
}

// loadAgentKey reads the agent's key with a hint when there is none.
func loadAgentKey(path string) (crypto.Signer, error) {
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no agent key at %s: create one with mandate agent init", path)
	}
	key, err := client.LoadKey(path)
	if err != nil {
		return nil, err
	}
	return key, nil
}

func newAgentRegisterCmd() *cobra.Command {
	var server, handle, name, description string
	cmd := &cobra.Command{
		Use:   "register --server URL --handle H [--name N] [--description D]",
		Short: "Register the agent's key with a server and get a claim code for its owner",
		Long: `Register the agent at the server with a request signed by its key. The server answers
with the agent id and a one-time claim code: the agent's owner claims it with
mandate agents claim CODE, and only then can the agent get tokens.`,
		Example: "  mandate agent register --server http://127.0.0.1:8420 --handle release-bot --name \"Release bot\"",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			srv, err := normalizeServer(server)
			if err != nil {
				return err
			}
			path, err := agentKeyPath(cmd)
			if err != nil {
				return err
			}
			key, err := loadAgentKey(path)
			if err != nil {
				return err
			}
			if st, err := loadAgentState(path); err != nil {
				return err
			} else if st != nil {
				if err := stateMatchesKey(path, st, key); err != nil {
					return err
				}
				return fmt.Errorf("the key %s is already registered as @%s (%s) at %s; to register another agent, create a key elsewhere with mandate agent init --key-file F", path, st.Handle, st.AgentID, st.Server)
			}
			hc := newHTTPClient()
			ctx := cmd.Context()
			if _, err := fetchMetadata(ctx, hc, srv); err != nil {
				return err
			}
			reg, err := client.Register(ctx, hc, srv, key, client.RegisterRequest{Handle: handle, Name: name, Description: description})
			if err != nil {
				return explain(err, srv)
			}
			st := agentState{Server: srv, AgentID: reg.AgentID, Handle: reg.Handle, DID: reg.DID}
			statePath := agentStatePath(path)
			if err := writeJSONFile(statePath, st); err != nil {
				return fmt.Errorf("registered as %s, but %w", reg.AgentID, err)
			}
			return printClaimCode(cmd, reg, srv, statePath)
		},
	}
	cmd.Flags().StringVar(&server, serverFlag, "", "the server's URL (required)")
	cmd.Flags().StringVar(&handle, "handle", "", "the agent's stable, unique name: 3-40 of a-z 0-9 - (required)")
	cmd.Flags().StringVar(&name, "name", "", "a display name")
	cmd.Flags().StringVar(&description, "description", "", "what the agent does")
	_ = cmd.MarkFlagRequired("handle")
	return cmd
}

// printClaimCode shows a registration or a new claim code, and what the owner does with it.
func printClaimCode(cmd *cobra.Command, reg *client.Registration, srv, statePath string) error {
	out := cmd.OutOrStdout()
	if wantJSON(cmd) {
		return printJSON(out, map[string]any{
			"agent_id": reg.AgentID, "handle": reg.Handle, "did": reg.DID, "status": reg.Status,
			"claim_code": reg.ClaimCode, "claim_code_expires_at": reg.ClaimCodeExpiresAt, "server": srv, "state_file": statePath,
		})
	}
	t := newTable(out)
	t.row("agent", reg.AgentID)
	t.row("handle", "@"+reg.Handle)
	t.row("did", reg.DID)
	t.row("status", reg.Status)
	t.row("claim code", reg.ClaimCode)
	t.row("expires", when(reg.ClaimCodeExpiresAt, time.Now()))
	if err := t.flush(); err != nil {
		return err
	}
	fmt.Fprintf(out, "\nAsk the agent's owner to run: mandate agents claim %s\n", reg.ClaimCode)
	return nil
}

func newAgentClaimCodeCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "claim-code [--key-file F]",
		Short: "Get a new claim code for the registered, not yet claimed agent",
		Long: `Ask the server for a new one-time claim code, with a request signed by the agent's key, when
the owner has not claimed the agent in time. The old code stops working. An agent that is never
claimed is removed some time after its code lapsed (a day by default); after that, register again.`,
		Example: "  mandate agent claim-code",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path, st, key, err := registeredAgent(cmd)
			if err != nil {
				return err
			}
			reg, err := client.NewClaimCode(cmd.Context(), newHTTPClient(), st.Server, st.AgentID, key)
			var ce *client.Error
			if errors.As(err, &ce) && ce.Status == http.StatusNotFound {
				return fmt.Errorf("@%s (%s) is no longer registered at %s: an agent never claimed is removed some time after its claim code lapsed. Remove %s and register again with mandate agent register", st.Handle, st.AgentID, st.Server, agentStatePath(path))
			}
			if err != nil {
				return explain(err, st.Server)
			}
			return printClaimCode(cmd, reg, st.Server, agentStatePath(path))
		},
	}
}

func newAgentRotateKeyCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "rotate-key [--key-file F]",
		Short: "Replace the agent's key; its id and handle stay",
		Long: `Generate a new key and register it in place of the current one, with one request signed by
both. The new key is written to KEY.new first; only after the server has accepted it does it
replace KEY (the old key is kept as KEY.old until then). The old key keeps working on the server
for its grace period, so running processes can switch over.`,
		Example: "  mandate agent rotate-key",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path, st, current, err := registeredAgent(cmd)
			if err != nil {
				return err
			}
			newPath, oldPath := path+".new", path+".old"
			if _, err := os.Lstat(newPath); err == nil {
				return fmt.Errorf("%s exists: an earlier rotation did not finish. If mandate agent token works with the current key, delete %s and try again; otherwise the server took the new key: move %s to %s", newPath, newPath, newPath, path)
			}
			next, err := client.GenerateKey()
			if err != nil {
				return err
			}
			if err := client.SaveKey(newPath, next); err != nil {
				return err
			}
			if err := client.RotateKey(cmd.Context(), newHTTPClient(), st.Server, st.AgentID, current, next); err != nil {
				_ = os.Remove(newPath)
				return explain(err, st.Server)
			}
			// Accepted: now only next is the agent's current key. Keep the old key beside it while
			// the files are swapped, so no step leaves the agent without a key file.
			if err := os.Remove(oldPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("the server accepted the new key, which is in %s: %w", newPath, err)
			}
			if err := client.SaveKey(oldPath, current); err != nil {
				return fmt.Errorf("the server accepted the new key, which is in %s: keeping the old key: %w", newPath, err)
			}
			if err := os.Rename(newPath, path); err != nil {
				return fmt.Errorf("the server accepted the new key, which is in %s; move it to %s: %w", newPath, path, err)
			}
			did, err := client.DID(next)
			if err != nil {
				return err
			}
			oldDID := st.DID
			st.DID = did
			if err := writeJSONFile(agentStatePath(path), st); err != nil {
				return err
			}
			if err := os.Remove(oldPath); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if wantJSON(cmd) {
				return printJSON(out, map[string]string{"agent_id": st.AgentID, "handle": st.Handle, "did": did, "old_did": oldDID, "key_file": path})
			}
			fmt.Fprintf(out, "Rotated the key of @%s (%s).\nnew did: %s\nThe old key keeps working on the server for its grace period; %s now holds the new one.\n", st.Handle, st.AgentID, did, path)
			return nil
		},
	}
}

func newAgentTokenCmd() *cobra.Command {
	var scope, resource string
	cmd := &cobra.Command{
		Use:   "token [--scope S] [--resource R]",
		Short: "Print a DPoP-bound access token for the agent",
		Long: `Get an access token for the agent itself (client_credentials with private_key_jwt, bound to
the agent's key with DPoP) and print it. Every use of the token needs a DPoP proof by the same
key, so the token alone is worth little; it is meant for scripts, tests and mandate token inspect.`,
		Example: "  mandate agent token | mandate token inspect -",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ts, st, err := agentTokenSource(cmd, scope, resource)
			if err != nil {
				return err
			}
			tok, err := ts.Token(cmd.Context())
			if err != nil {
				return explain(err, st.Server)
			}
			out := cmd.OutOrStdout()
			if wantJSON(cmd) {
				return printJSON(out, map[string]any{"access_token": tok.AccessToken, "token_type": "DPoP", "scope": tok.Scope, "expires_at": tok.ExpiresAt.UTC()})
			}
			fmt.Fprintln(out, tok.AccessToken)
			return nil
		},
	}
	cmd.Flags().StringVar(&scope, "scope", "", "space-separated scopes (default: the server's, agent)")
	cmd.Flags().StringVar(&resource, "resource", "", "the resource (RFC 8707) the token is for; default the server itself")
	return cmd
}

// registeredAgent reads the agent's key file path, its agent.json and its key, saying what to
// do when it is not registered.
func registeredAgent(cmd *cobra.Command) (path string, st *agentState, key crypto.Signer, err error) {
	if path, err = agentKeyPath(cmd); err != nil {
		return "", nil, nil, err
	}
	if st, err = requireAgentState(path); err != nil {
		return "", nil, nil, err
	}
	if key, err = loadAgentKey(path); err != nil {
		return "", nil, nil, err
	}
	if err = stateMatchesKey(path, st, key); err != nil {
		return "", nil, nil, err
	}
	return path, st, key, nil
}

// stateMatchesKey checks that the agent.json beside the key file at path records that key: two
// key files in one directory would otherwise share one registration, and every command of the
// second key would act as, or be refused as, the first agent.
func stateMatchesKey(path string, st *agentState, key crypto.Signer) error {
	did, err := client.DID(key)
	if err != nil {
		return err
	}
	if st.DID == "" || st.DID == did {
		return nil
	}
	return fmt.Errorf("%s records agent @%s with key %s, but %s is key %s: keep each agent's key in a directory of its own "+
		"(mandate agent init --key-file DIR/key.jwk); if this key just replaced @%s's in mandate agent rotate-key, set \"did\" in %s to %s",
		agentStatePath(path), st.Handle, st.DID, path, did, st.Handle, agentStatePath(path), did)
}

// agentTokenSource builds the client SDK's token source from the key file and agent.json.
func agentTokenSource(cmd *cobra.Command, scope, resource string) (*client.TokenSource, *agentState, error) {
	_, st, key, err := registeredAgent(cmd)
	if err != nil {
		return nil, nil, err
	}
	ts, err := client.NewTokenSource(client.Config{
		Issuer: st.Server, AgentID: st.AgentID, Key: key, Scope: scope, Resource: resource, HTTPClient: newHTTPClient(),
	})
	if err != nil {
		return nil, nil, err
	}
	return ts, st, nil
}

// agentCaller mirrors the answer of GET /v1/agent/whoami.
type agentCaller struct {
	Sub      string   `json:"sub"`
	ClientID string   `json:"client_id"`
	AgentID  string   `json:"agent_id"`
	Handle   string   `json:"handle"`
	DID      string   `json:"did"`
	Scope    []string `json:"scope"`
	Aud      []string `json:"aud"`
	JTI      string   `json:"jti"`
	JKT      string   `json:"jkt"`
	Exp      int64    `json:"exp"`
}

func newAgentWhoamiCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "whoami",
		Short: "Call the server as the agent and print who it says the caller is",
		Long: `Get a token and call GET /v1/agent/whoami with it and a DPoP proof, through the client SDK's
transport: a check, end to end, that the agent's key, registration and token work.`,
		Example: "  mandate agent whoami",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ts, st, err := agentTokenSource(cmd, "", "")
			if err != nil {
				return err
			}
			hc := &http.Client{Timeout: requestTimeout, Transport: ts.Transport(nil)}
			req, err := http.NewRequestWithContext(cmd.Context(), http.MethodGet, st.Server+"/v1/agent/whoami", nil)
			if err != nil {
				return err
			}
			req.Header.Set("Accept", "application/json")
			resp, err := hc.Do(req)
			if err != nil {
				return explain(err, st.Server)
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return readServerError(resp)
			}
			var who agentCaller
			raw, err := readJSON(resp, &who)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if wantJSON(cmd) {
				return printJSON(out, raw)
			}
			now := time.Now()
			t := newTable(out)
			t.row("agent", who.AgentID)
			t.row("handle", "@"+who.Handle)
			t.row("did", who.DID)
			t.row("subject", who.Sub)
			t.row("scope", strings.Join(who.Scope, " "))
			t.row("audience", strings.Join(who.Aud, " "))
			t.row("key (jkt)", who.JKT)
			t.row("token", who.JTI)
			t.row("expires", when(time.Unix(who.Exp, 0), now))
			return t.flush()
		},
	}
}

func newAgentRequestGrantCmd() *cobra.Command {
	var spec specFlags
	var reason string
	var wait bool
	cmd := &cobra.Command{
		Use:   "request-grant --scope S --resource URI [--reason R] [--wait] [flags]",
		Short: "Ask the agent's owner for a grant",
		Long: `Ask the agent's owner for a grant: the owner sees it in mandate grant requests and answers
with mandate grant approve (possibly narrower) or mandate grant deny. With --wait the command
polls until the owner answers and prints the grant id; a denial or a lapsed request is an error.`,
		Example: `  mandate agent request-grant --scope repo:read --resource https://api.github.com/ --reason "nightly triage" --wait`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sp, err := spec.spec(cmd)
			if err != nil {
				return err
			}
			ts, st, err := agentTokenSource(cmd, "", "")
			if err != nil {
				return err
			}
			req := client.GrantRequest{Scopes: sp.Scopes, Resources: sp.Resources, AuthorizationDetails: sp.AuthorizationDetails,
				Limits: client.Limits{MaxTaskTTL: time.Duration(sp.MaxTaskTTL) * time.Second, MaxTokenTTL: time.Duration(sp.MaxTokenTTL) * time.Second,
					MaxDepth: sp.MaxDepth, AllowSubdelegation: sp.AllowSubdelegation, Budget: sp.Budget}, Reason: reason}
			ctx := cmd.Context()
			id, err := client.RequestGrant(ctx, ts, req)
			if err != nil {
				return explain(err, st.Server)
			}
			out := cmd.OutOrStdout()
			if !wait {
				if wantJSON(cmd) {
					return printJSON(out, map[string]string{"request_id": id, "status": "pending"})
				}
				fmt.Fprintf(out, "Asked for a grant: request %s is pending.\nAsk the owner of @%s to run: mandate grant approve %s\n", id, st.Handle, id)
				return nil
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "Asked for a grant: request %s. Waiting for the owner of @%s to answer (mandate grant approve %s)…\n", id, st.Handle, id)
			g, err := client.PollGrant(ctx, ts, id)
			var ce *client.Error
			if errors.As(err, &ce) {
				switch ce.Code {
				case "access_denied":
					return fmt.Errorf("the owner denied grant request %s", id)
				case "expired_token":
					return fmt.Errorf("grant request %s lapsed unanswered: ask again", id)
				}
			}
			if err != nil {
				return explain(err, st.Server)
			}
			if wantJSON(cmd) {
				return printJSON(out, map[string]string{"request_id": id, "status": "approved", "grant_id": g.ID})
			}
			fmt.Fprintln(out, g.ID)
			return nil
		},
	}
	spec.register(cmd, "ask for")
	cmd.Flags().StringVar(&reason, "reason", "", "why the agent needs it, for the owner")
	cmd.Flags().BoolVar(&wait, "wait", false, "wait for the answer and print the grant id")
	return cmd
}

// agentGrant is a grant as agent grants --json shows it: never with its grant token.
type agentGrant struct {
	GrantID              string            `json:"grant_id"`
	PrincipalID          string            `json:"principal_id"`
	Scopes               []string          `json:"scopes"`
	Resources            []string          `json:"resources"`
	AuthorizationDetails []json.RawMessage `json:"authorization_details,omitempty"`
	api.LimitsJSON
	Status    string    `json:"status"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
}

func newAgentGrantsCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "grants",
		Short: "List the agent's grants",
		Long: `List the grants the agent holds, as the agent sees them. Grant tokens are not printed: task
start fetches a fresh one each time.`,
		Example: "  mandate agent grants",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ts, st, err := agentTokenSource(cmd, "", "")
			if err != nil {
				return err
			}
			grants, err := ts.Grants(cmd.Context())
			if err != nil {
				return explain(err, st.Server)
			}
			list := make([]agentGrant, 0, len(grants))
			for _, g := range grants {
				list = append(list, agentGrant{GrantID: g.ID, PrincipalID: g.PrincipalID, Scopes: g.Scopes, Resources: g.Resources,
					AuthorizationDetails: g.AuthorizationDetails, LimitsJSON: api.LimitsJSON{MaxTaskTTL: int64(g.MaxTaskTTL / time.Second),
						MaxTokenTTL: int64(g.MaxTokenTTL / time.Second), MaxDepth: g.MaxDepth, AllowSubdelegation: g.AllowSubdelegation, Budget: g.Budget},
					Status: g.Status, CreatedAt: g.CreatedAt, ExpiresAt: g.ExpiresAt})
			}
			out := cmd.OutOrStdout()
			if wantJSON(cmd) {
				return printJSON(out, map[string]any{"grants": list})
			}
			now := time.Now()
			t := newTable(out, "ID", "FOR", "STATUS", "SCOPES", "RESOURCES", "MAX TASK", "SUB-DELEGATION", "EXPIRES")
			for _, g := range list {
				t.row(g.GrantID, g.PrincipalID, g.Status, strings.Join(g.Scopes, " "), strings.Join(g.Resources, " "),
					secondsText(g.MaxTaskTTL), yesNo(g.AllowSubdelegation), ago(g.ExpiresAt, now))
			}
			return t.flush()
		},
	}
}
