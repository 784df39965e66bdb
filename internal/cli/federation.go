package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mandate-dev/mandate/internal/api"
)

func newServiceAccountsCmd() *cobra.Command {
	cmd := managementGroup("service-accounts", "Create and manage service accounts (non-human principals for CI jobs and workloads)")
	var description string
	create := &cobra.Command{
		Use:   "create NAME [--description D]",
		Short: "Create a service account you own",
		Long: `Create a service account: a principal for a CI pipeline or a cluster workload. It has no
authority until an admin's federation rule maps a workload's tokens to it (mandate federation
rules add); then it can own agents and grant them authority, like a user.`,
		Example: "  mandate service-accounts create ci-deploy --description 'GitHub Actions deploys of acme/app'",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return showServiceAccount(cmd, http.MethodPost, "/v1/service-accounts", map[string]any{"name": args[0], "description": description}, "Created")
		},
	}
	create.Flags().StringVar(&description, "description", "", "what the account is for")
	list := &cobra.Command{
		Use: "list", Short: "List service accounts (yours; an admin's: all)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var res struct {
				ServiceAccounts []api.ServiceAccountJSON `json:"service_accounts"`
			}
			if done, err := callAPI(cmd, http.MethodGet, "/v1/service-accounts", nil, &res); done {
				return err
			}
			now := time.Now()
			t := newTable(cmd.OutOrStdout(), "ID", "NAME", "OWNER", "DISABLED", "CREATED", "DESCRIPTION")
			for _, a := range res.ServiceAccounts {
				t.row(a.ID, a.Name, a.OwnerID, yesNo(a.Disabled), ago(a.CreatedAt, now), a.Description)
			}
			return t.flush()
		},
	}
	show := &cobra.Command{
		Use: "show ID|NAME", Short: "Show a service account", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return showServiceAccount(cmd, http.MethodGet, "/v1/service-accounts/"+url.PathEscape(args[0]), nil, "")
		},
	}
	disable := &cobra.Command{
		Use: "disable ID|NAME", Short: "Disable a service account: no new tokens, and its tokens stop working", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return showServiceAccount(cmd, http.MethodPost, "/v1/service-accounts/"+url.PathEscape(args[0])+"/disable", nil, "Disabled")
		},
	}
	enable := &cobra.Command{
		Use: "enable ID|NAME", Short: "Enable a disabled service account", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return showServiceAccount(cmd, http.MethodPost, "/v1/service-accounts/"+url.PathEscape(args[0])+"/enable", nil, "Enabled")
		},
	}
	cmd.AddCommand(create, list, show, disable, enable)
	return cmd
}

func showServiceAccount(cmd *cobra.Command, method, path string, body any, verb string) error {
	var a api.ServiceAccountJSON
	if done, err := callAPI(cmd, method, path, body, &a); done {
		return err
	}
	out := cmd.OutOrStdout()
	if verb != "" {
		fmt.Fprintf(out, "%s service account %s (%s).\n", verb, a.Name, a.ID)
		return nil
	}
	fmt.Fprintf(out, "ID:          %s\nName:        %s\nOwner:       %s\nDisabled:    %s\nCreated:     %s\nDescription: %s\n",
		a.ID, a.Name, a.OwnerID, yesNo(a.Disabled), a.CreatedAt.Format(time.RFC3339), a.Description)
	return nil
}

func newFederationCmd() *cobra.Command {
	cmd := managementGroup("federation", "Trust external identity providers: workloads trade their OIDC tokens for mandate tokens (admin)")
	cmd.Long = `Workload identity federation (RFC 7523 jwt-bearer): a CI job, a Kubernetes pod or a SPIFFE
workload trades the short-lived token its platform gives it for a service account's mandate token,
with no static secret. Add the issuer, then rules that map its tokens to a service account.
See docs/federation.md for tested rules for GitHub Actions, Kubernetes, SPIFFE, GitLab, Google,
Azure and AWS.`
	cmd.AddCommand(newIssuersCmd(), newRulesCmd(), newFederationTestCmd())
	return cmd
}

func newIssuersCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "issuers", Short: "Trusted token issuers", Args: cobra.NoArgs}
	var jwksFile, maxLife string
	var requireJTI, shared bool
	var issuer string
	add := &cobra.Command{
		Use:   "add --issuer URL [--jwks-file F] [--max-assertion-lifetime 1h] [--require-jti] [--shared]",
		Short: "Trust an issuer: its keys come from OIDC discovery, or from a pinned JWKS file",
		Long: `Trust an issuer. Without --jwks-file its keys are read from OIDC discovery
(URL/.well-known/openid-configuration), cached, and refreshed on expiry and on an unknown kid (at
most once a minute). With --jwks-file the keys are pinned (air-gapped issuers; a SPIFFE trust
bundle in JWKS form works as is). Multi-tenant issuers (GitHub Actions, GitLab.com, Buildkite,
Google, Terraform Cloud) are marked shared whatever --shared says: their rules must pin a tenant.`,
		Example: "  mandate federation issuers add --issuer https://token.actions.githubusercontent.com\n" +
			"  mandate federation issuers add --issuer https://spire.example.org --jwks-file bundle.jwks --max-assertion-lifetime 5m",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			body := map[string]any{"issuer": issuer, "max_assertion_lifetime": maxLife, "require_jti": requireJTI, "shared": shared}
			if jwksFile != "" {
				b, err := readInput(cmd, jwksFile)
				if err != nil {
					return err
				}
				if !json.Valid(b) {
					return fmt.Errorf("%s is not JSON: a JWKS is {\"keys\": [...]}", jwksFile)
				}
				body["jwks"] = json.RawMessage(b)
			}
			var is api.IssuerJSON
			if done, err := callAPI(cmd, http.MethodPost, "/v1/federation/issuers", body, &is); done {
				return err
			}
			src := "OIDC discovery"
			if len(is.JWKS) > 0 {
				src = "a pinned JWKS"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Trusted %s (keys from %s; assertions live at most %s).\nNow map its tokens to a service account: mandate federation rules add --issuer %s ...\n",
				is.Issuer, src, is.MaxAssertionLifetime, is.Issuer)
			return nil
		},
	}
	add.Flags().StringVar(&issuer, "issuer", "", "the issuer URL, exactly as in the tokens' iss claim (required)")
	add.Flags().StringVar(&jwksFile, "jwks-file", "", "pin the issuer's keys from this JWKS file (- = stdin) instead of discovery")
	add.Flags().StringVar(&maxLife, "max-assertion-lifetime", "", "refuse assertions that live longer than this, exp - iat (default 1h)")
	add.Flags().BoolVar(&requireJTI, "require-jti", false, "assertions must carry a jti, and each is accepted once")
	add.Flags().BoolVar(&shared, "shared", false, "a multi-tenant issuer: rules must pin the tenant")
	_ = add.MarkFlagRequired("issuer")

	list := &cobra.Command{
		Use: "list", Short: "List trusted issuers", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var res struct {
				Issuers []api.IssuerJSON `json:"issuers"`
			}
			if done, err := callAPI(cmd, http.MethodGet, "/v1/federation/issuers", nil, &res); done {
				return err
			}
			t := newTable(cmd.OutOrStdout(), "ISSUER", "KEYS", "MAX LIFETIME", "JTI", "SHARED")
			for _, is := range res.Issuers {
				keys := "discovery"
				if len(is.JWKS) > 0 {
					keys = "pinned"
				}
				t.row(is.Issuer, keys, is.MaxAssertionLifetime, yesNo(is.RequireJTI), yesNo(is.Shared))
			}
			return t.flush()
		},
	}
	var yes bool
	remove := &cobra.Command{
		Use: "remove URL [--yes]", Short: "Stop trusting an issuer (its rules go with it)", Args: cobra.ExactArgs(1),
		Long: `Stop trusting an issuer: its rules are deleted with it, and the workloads they let in get no
new tokens. Asks for confirmation on a terminal; elsewhere pass --yes.`,
		Example: "  mandate federation issuers remove https://token.actions.githubusercontent.com --yes",
		RunE: func(cmd *cobra.Command, args []string) error {
			if !yes {
				var res struct {
					Rules []api.RuleJSON `json:"rules"`
				}
				ok, err := confirmTo(cmd, "remove", "issuer "+args[0], "/v1/federation/rules?issuer="+url.QueryEscape(args[0]), &res, func() string {
					return fmt.Sprintf("Stop trusting %s and delete its %d rules? Its workloads get no new tokens. [y/N] ", args[0], len(res.Rules))
				})
				if err != nil {
					return err
				}
				if !ok {
					return errors.New("not removed")
				}
			}
			c, err := managementClient(cmd)
			if err != nil {
				return err
			}
			if _, err := c.do(cmd.Context(), http.MethodDelete, "/v1/federation/issuers?issuer="+url.QueryEscape(args[0]), nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Removed %s and its rules.\n", args[0])
			return nil
		},
	}
	remove.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")
	cmd.AddCommand(add, list, remove)
	return cmd
}

func newRulesCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "rules", Short: "Rules mapping an issuer's tokens to service accounts", Args: cobra.NoArgs}
	var r struct {
		issuer, audience, prefix, condition, svc, ttl string
		claims, scopes, resources                     []string
		dpop                                          bool
	}
	add := &cobra.Command{
		Use:   "add --issuer URL --audience AUD (--subject-prefix P | --claim k=v ... | --condition CEL) --service-account SVC --scope S [--resource URI] [--token-ttl 10m] [--require-dpop]",
		Short: "Map tokens of an issuer, for an audience, meeting conditions, to a service account",
		Long: `Add a rule. An assertion matches when it is for the audience and meets every condition given:
its sub starts with --subject-prefix, each --claim k=v holds (k may be a path: kubernetes.io/namespace),
and the CEL --condition over its claims is true (claims.repository == "acme/app" && claims.ref ==
"refs/heads/main"). The condition is compiled and type-checked now. On a shared issuer the rule must
pin the tenant (owner, group, organisation); a rule that would match every tenant is refused.`,
		Example: `  mandate federation rules add --issuer https://token.actions.githubusercontent.com \
    --audience https://mandate.example.com --subject-prefix repo:acme/app:ref:refs/heads/main \
    --condition 'claims.workflow_ref.startsWith("acme/app/.github/workflows/deploy.yml@")' \
    --service-account ci-deploy --scope "deploy:write" --token-ttl 10m`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			claims := map[string]string{}
			for _, kv := range r.claims {
				k, v, ok := strings.Cut(kv, "=")
				if !ok || k == "" {
					return fmt.Errorf("--claim %q: write it as name=value", kv)
				}
				claims[k] = v
			}
			body := api.RuleJSON{Issuer: r.issuer, Audience: r.audience, SubjectPrefix: r.prefix, Claims: claims, Condition: r.condition,
				ServiceAccount: r.svc, Scope: strings.Join(splitScopes(r.scopes), " "), Resources: r.resources, TokenTTL: r.ttl, RequireDPoP: r.dpop}
			var rl api.RuleJSON
			if done, err := callAPI(cmd, http.MethodPost, "/v1/federation/rules", body, &rl); done {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Added rule %s: tokens of %s for %s act as %s with scope %q.\nTry it on a real token first: mandate federation test --rule %s --token FILE\n",
				rl.ID, rl.Issuer, rl.Audience, rl.ServiceAccount, rl.Scope, rl.ID)
			return nil
		},
	}
	f := add.Flags()
	f.StringVar(&r.issuer, "issuer", "", "a trusted issuer's URL (required)")
	f.StringVar(&r.audience, "audience", "", "the audience the tokens must carry (required)")
	f.StringVar(&r.prefix, "subject-prefix", "", "the sub claim must start with this")
	f.StringArrayVar(&r.claims, "claim", nil, "a claim that must equal a value, k=v (repeatable; nested: a/b=v)")
	f.StringVar(&r.condition, "condition", "", "a CEL condition over claims, e.g. claims.environment == \"production\"")
	f.StringVar(&r.svc, "service-account", "", "the service account matched tokens act as (id or name; required)")
	f.StringArrayVar(&r.scopes, "scope", nil, "the scopes its tokens may have (repeatable, or space-separated; required)")
	f.StringArrayVar(&r.resources, "resource", nil, "a resource URI its tokens and grants may name (repeatable)")
	f.StringVar(&r.ttl, "token-ttl", "", "the tokens' lifetime, at most 1h (default 10m)")
	f.BoolVar(&r.dpop, "require-dpop", false, "issue only DPoP-bound tokens")
	for _, n := range []string{"issuer", "audience", "service-account", "scope"} {
		_ = add.MarkFlagRequired(n)
	}

	var listIssuer string
	list := &cobra.Command{
		Use: "list [--issuer URL]", Short: "List rules, oldest first (the order they are tried in)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var res struct {
				Rules []api.RuleJSON `json:"rules"`
			}
			if done, err := callAPI(cmd, http.MethodGet, "/v1/federation/rules?issuer="+url.QueryEscape(listIssuer), nil, &res); done {
				return err
			}
			t := newTable(cmd.OutOrStdout(), "ID", "ISSUER", "AUDIENCE", "MATCH", "SERVICE ACCOUNT", "SCOPE", "DISABLED")
			for _, rl := range res.Rules {
				t.row(rl.ID, rl.Issuer, rl.Audience, ruleMatch(rl), rl.ServiceAccount, rl.Scope, yesNo(rl.Disabled))
			}
			return t.flush()
		},
	}
	list.Flags().StringVar(&listIssuer, "issuer", "", "only this issuer's rules")
	show := &cobra.Command{
		Use: "show ID", Short: "Show a rule", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return showRule(cmd, http.MethodGet, "/v1/federation/rules/"+url.PathEscape(args[0]), "")
		},
	}
	disable := &cobra.Command{
		Use: "disable ID", Short: "Disable a rule: it matches nothing and its tokens stop working", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return showRule(cmd, http.MethodPost, "/v1/federation/rules/"+url.PathEscape(args[0])+"/disable", "Disabled")
		},
	}
	enable := &cobra.Command{
		Use: "enable ID", Short: "Enable a disabled rule", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return showRule(cmd, http.MethodPost, "/v1/federation/rules/"+url.PathEscape(args[0])+"/enable", "Enabled")
		},
	}
	cmd.AddCommand(add, list, show, disable, enable)
	return cmd
}

func ruleMatch(rl api.RuleJSON) string {
	var parts []string
	if rl.SubjectPrefix != "" {
		parts = append(parts, "sub="+rl.SubjectPrefix+"*")
	}
	for k, v := range rl.Claims {
		parts = append(parts, k+"="+v)
	}
	if rl.Condition != "" {
		parts = append(parts, "cel")
	}
	return strings.Join(parts, " ")
}

func showRule(cmd *cobra.Command, method, path, verb string) error {
	var rl api.RuleJSON
	if done, err := callAPI(cmd, method, path, nil, &rl); done {
		return err
	}
	out := cmd.OutOrStdout()
	if verb != "" {
		fmt.Fprintf(out, "%s rule %s.\n", verb, rl.ID)
		return nil
	}
	fmt.Fprintf(out, "ID:              %s\nIssuer:          %s\nAudience:        %s\n", rl.ID, rl.Issuer, rl.Audience)
	if rl.SubjectPrefix != "" {
		fmt.Fprintf(out, "Subject prefix:  %s\n", rl.SubjectPrefix)
	}
	for k, v := range rl.Claims {
		fmt.Fprintf(out, "Claim:           %s = %s\n", k, v)
	}
	if rl.Condition != "" {
		fmt.Fprintf(out, "Condition:       %s\n", rl.Condition)
	}
	fmt.Fprintf(out, "Service account: %s\nScope:           %s\nResources:       %s\nToken TTL:       %s\nRequire DPoP:    %s\nDisabled:        %s\n",
		rl.ServiceAccount, rl.Scope, strings.Join(rl.Resources, " "), rl.TokenTTL, yesNo(rl.RequireDPoP), yesNo(rl.Disabled))
	return nil
}

func newFederationTestCmd() *cobra.Command {
	var rule, tokenFile string
	cmd := &cobra.Command{
		Use:   "test --rule ID --token FILE",
		Short: "Dry run: check a workload's token against a rule, every check with pass or fail",
		Long: `Check a token against one rule and print every check (signature, issuer, audience, times,
lifetime, jti, subject prefix, each claim, the CEL condition, the rule and its service account)
with pass or fail. Nothing is issued and no jti is used up. Exits 1 when the token would be refused.`,
		Example: "  mandate federation test --rule fr_... --token github-oidc.jwt\n  echo \"$ACTIONS_ID_TOKEN\" | mandate federation test --rule fr_... --token -",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := managementClient(cmd)
			if err != nil {
				return err
			}
			tok, err := readInput(cmd, tokenFile)
			if err != nil {
				return err
			}
			var rep struct {
				OK     bool `json:"ok"`
				Checks []struct {
					Name   string `json:"name"`
					OK     bool   `json:"ok"`
					Detail string `json:"detail"`
				} `json:"checks"`
			}
			raw, err := c.do(cmd.Context(), http.MethodPost, "/v1/federation/rules/"+url.PathEscape(rule)+"/test",
				map[string]string{"assertion": strings.TrimSpace(string(tok))}, &rep)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if wantJSON(cmd) {
				if err := printJSON(out, raw); err != nil {
					return err
				}
			} else {
				for _, ch := range rep.Checks {
					mark := "pass"
					if !ch.OK {
						mark = "FAIL"
					}
					fmt.Fprintf(out, "%s  %-24s %s\n", mark, ch.Name, ch.Detail)
				}
				if rep.OK {
					fmt.Fprintf(out, "\nThe token matches rule %s.\n", rule)
				} else {
					fmt.Fprintf(out, "\nThe token would be refused by rule %s.\n", rule)
				}
			}
			if !rep.OK {
				return exitError(1) // the report has said why
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&rule, "rule", "", "the rule id (required)")
	cmd.Flags().StringVar(&tokenFile, "token", "", "a file holding the token (- = stdin; required)")
	_ = cmd.MarkFlagRequired("rule")
	_ = cmd.MarkFlagRequired("token")
	return cmd
}

// readInput reads a file, or stdin for "-", at most 1 MiB.
func readInput(cmd *cobra.Command, path string) ([]byte, error) {
	var r io.Reader = cmd.InOrStdin()
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return b, nil
}

func newAuditCmd() *cobra.Command {
	var f struct {
		requestID, action, agent, principal, outcome string
		limit                                        int
	}
	cmd := &cobra.Command{
		Use:   "audit [--request-id R] [--action A] [--agent @handle|ID] [--principal ID] [--outcome O] [--limit N]",
		Short: "Search the audit trail (an admin: all of it; others: events on their behalf)",
		Long: `Search the audit trail, newest first. A refused request names its request id: --request-id
shows every event of that request, with the exact reason (for a refused federation assertion:
which check and which claim). Refusals of anonymous callers show their address as the actor;
past --denial-audit-rate, identical ones from one address are one event per window that counts
them (OUTCOME "denied xN", with the last request id).`,
		Example: "  mandate audit --request-id req_...\n  mandate audit --action token.deny --limit 20\n  mandate audit --agent @release-bot --outcome denied",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := url.Values{}
			if f.agent != "" {
				id, err := agentID(cmd, f.agent)
				if err != nil {
					return fmt.Errorf("--agent: %w", err)
				}
				f.agent = id
			}
			for k, v := range map[string]string{"request_id": f.requestID, "action": f.action, "agent": f.agent, "principal": f.principal, "outcome": f.outcome} {
				if v != "" {
					q.Set(k, v)
				}
			}
			if f.limit > 0 {
				q.Set("limit", fmt.Sprint(f.limit))
			}
			var res struct {
				Events []api.EventJSON `json:"events"`
			}
			if done, err := callAPI(cmd, http.MethodGet, "/v1/audit?"+q.Encode(), nil, &res); done {
				return err
			}
			now := time.Now()
			t := newTable(cmd.OutOrStdout(), "TIME", "ACTION", "OUTCOME", "REASON", "ACTOR", "PRINCIPAL", "DETAIL")
			for _, e := range res.Events {
				outcome, actor := e.Outcome, e.ActorID
				if e.Count > 0 {
					outcome = fmt.Sprintf("%s x%d", e.Outcome, e.Count) // an aggregated event: that many refusals
				}
				if actor == "" {
					actor = e.Source // an anonymous caller's address
				}
				t.row(ago(e.Time, now), e.Action, outcome, e.Reason, actor, e.PrincipalID, e.Detail)
			}
			return t.flush()
		},
	}
	addJSONFlag(cmd)
	cmd.Flags().String(serverFlag, "", "the server's URL (default: the one you logged in to)")
	cmd.Flags().StringVar(&f.requestID, "request-id", "", "every event of one request")
	cmd.Flags().StringVar(&f.action, "action", "", "one action, e.g. token.deny")
	cmd.Flags().StringVar(&f.agent, "agent", "", "one agent's events: @handle or agt_… id")
	cmd.Flags().StringVar(&f.principal, "principal", "", "one principal's events (admin)")
	cmd.Flags().StringVar(&f.outcome, "outcome", "", "success, denied or failure")
	cmd.Flags().IntVar(&f.limit, "limit", 0, "at most this many events (default 100, max 1000)")
	cmd.AddCommand(newAuditVerifyCmd(), newAuditCheckpointsCmd())
	return cmd
}
