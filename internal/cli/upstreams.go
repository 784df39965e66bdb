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
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mandate-dev/mandate/internal/api"
	"github.com/mandate-dev/mandate/internal/vault"
)

func upstreamPath(name string) string { return "/v1/upstreams/" + url.PathEscape(name) }

func newUpstreamCmd() *cobra.Command {
	cmd := managementGroup("upstream", "Third-party APIs agents reach through the proxy, and their write-only credentials (admin)")
	cmd.Long = `Upstreams are third-party APIs that agents reach only through mandate's proxy, which injects
the real credential. Secrets are write-only: they are read from stdin or a file (never a flag),
sealed in the vault, and never shown again, not even to an admin.`
	cmd.AddCommand(newUpstreamAddCmd(), newUpstreamListCmd(), newUpstreamShowCmd(), newUpstreamRoutesCmd(),
		newUpstreamRemoveCmd(), newUpstreamSetSecretCmd())
	cmd.AddCommand(newUpstreamConnectCmd())
	return cmd
}

// upstreamFlags are the route flags add and routes share.
type routeFlags struct {
	routes     []string
	routesFile string
}

func (f *routeFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringArrayVar(&f.routes, "route", nil, `a route: 'SCOPE=METHOD[,METHOD…] PATH [PATH…]', e.g. 'ahrefs:read=GET /v3/site-explorer/*' (repeatable; * is one segment, ** the rest)`)
	cmd.Flags().StringVar(&f.routesFile, "routes-file", "", `a JSON file of routes: [{"scope", "methods", "paths", "body"}] or {"routes": […]} (for body rules)`)
}

func (f *routeFlags) parse() ([]vault.Route, error) {
	var out []vault.Route
	if f.routesFile != "" {
		data, err := os.ReadFile(f.routesFile)
		if err != nil {
			return nil, fmt.Errorf("--routes-file: %w", err)
		}
		data = bytes.TrimSpace(data)
		var wrapped api.RoutesJSON
		if bytes.HasPrefix(data, []byte("{")) {
			err = json.Unmarshal(data, &wrapped)
		} else {
			err = json.Unmarshal(data, &wrapped.Routes)
		}
		if err != nil {
			return nil, fmt.Errorf("--routes-file %s: want a JSON array of routes or {\"routes\": […]}: %w", f.routesFile, err)
		}
		out = append(out, wrapped.Routes...)
	}
	for _, r := range f.routes {
		route, err := parseRoute(r)
		if err != nil {
			return nil, err
		}
		out = append(out, route)
	}
	return out, nil
}

// parseRoute reads 'SCOPE=METHOD[,METHOD…] PATH [PATH…]'.
func parseRoute(s string) (vault.Route, error) {
	scope, rest, ok := strings.Cut(s, "=")
	fields := strings.Fields(rest)
	if !ok || strings.TrimSpace(scope) == "" || len(fields) < 2 {
		return vault.Route{}, fmt.Errorf("--route %q: want 'SCOPE=METHOD PATH', e.g. 'ahrefs:read=GET /v3/site-explorer/*'", s)
	}
	r := vault.Route{Scope: strings.TrimSpace(scope), Paths: fields[1:]}
	for m := range strings.SplitSeq(fields[0], ",") {
		m = strings.ToUpper(m)
		if !slices.Contains(routeMethods, m) {
			return vault.Route{}, fmt.Errorf("--route %q: %q is not a method: want 'SCOPE=METHOD[,METHOD…] PATH…' with METHOD one of %s or * (another method: use --routes-file)",
				s, m, strings.Join(routeMethods[:len(routeMethods)-1], ", "))
		}
		r.Methods = append(r.Methods, m)
	}
	for _, p := range r.Paths {
		if !strings.HasPrefix(p, "/") {
			return vault.Route{}, fmt.Errorf("--route %q: path %q: want a path starting with /, after the methods", s, p)
		}
	}
	return r, nil
}

// routeMethods are the methods --route takes: HTTP's (RFC 9110, and PATCH), or * for any.
var routeMethods = []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "*"}

// parseAuth reads --auth KIND, where header and query may carry their name: header:X-Api-Key.
func parseAuth(auth, param string) (string, string, error) {
	kind, name, ok := strings.Cut(auth, ":")
	if ok {
		if param != "" && param != name {
			return "", "", fmt.Errorf("--auth %s and --param %s name different parameters", auth, param)
		}
		param = name
	}
	switch vault.AuthKind(kind) {
	case vault.AuthHeader, vault.AuthQuery:
		if param == "" {
			return "", "", fmt.Errorf("--auth %s needs the name: --auth %s:NAME (e.g. header:X-Api-Key, query:api_key)", kind, kind)
		}
	case vault.AuthBearer, vault.AuthBasic, vault.AuthOAuth2Refresh, vault.AuthOAuth2ClientCredentials:
		if ok {
			return "", "", fmt.Errorf("--auth %s takes no name", kind)
		}
	default:
		return "", "", fmt.Errorf("--auth %q: want bearer, header:NAME, query:NAME, basic, oauth2-refresh or oauth2-client-credentials", auth)
	}
	return kind, param, nil
}

// readSecret reads a secret from file, or else stdin (one line from a terminal, not echoed;
// everything from a pipe), dropping one trailing line break. It is never taken from a flag, which would
// leave it in the shell history and the process list.
func readSecret(cmd *cobra.Command, file, what string) ([]byte, error) {
	var data []byte
	var err error
	if file != "" {
		data, err = os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("reading the secret: %w", err)
		}
	} else {
		in := cmd.InOrStdin()
		if isTerminal(in) {
			if data, err = readHidden(cmd, what+" (not shown): ", vault.MaxSecretSize+2); err != nil {
				return nil, fmt.Errorf("reading the secret: %w", err)
			}
		} else {
			data, err = io.ReadAll(io.LimitReader(in, vault.MaxSecretSize+2))
			if err != nil {
				return nil, fmt.Errorf("reading the secret from stdin: %w", err)
			}
		}
	}
	data = bytes.TrimSuffix(data, []byte("\n"))
	data = bytes.TrimSuffix(data, []byte("\r"))
	if len(data) == 0 {
		return nil, fmt.Errorf("no secret: pipe the %s on stdin or pass --secret-file FILE", what)
	}
	return data, nil
}

// secretWhat names the secret an upstream's kind of secret is, for prompts and messages.
func secretWhat(kind string) string {
	switch kind {
	case vault.SecretRefreshToken:
		return "refresh token"
	case vault.SecretClientSecret:
		return "client secret"
	default:
		return "credential"
	}
}

// putSecret sends a secret as application/octet-stream; the answer never holds it.
func putSecret(cmd *cobra.Command, c *apiClient, name, kind string, secret []byte) error {
	ctx := cmd.Context()
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, c.server+upstreamPath(name)+"/secrets/"+url.PathEscape(kind), bytes.NewReader(secret))
	if err != nil {
		return fmt.Errorf("bad server URL %q: %w", c.server, err)
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return &unreachableError{Server: c.server, Err: err}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return readServerError(resp)
	}
	return nil
}

func newUpstreamAddCmd() *cobra.Command {
	var spec api.UpstreamSpecJSON
	var tokenURL, clientID, authURL, secretFile, clientSecretFile string
	var scopes []string
	var noSecret bool
	var rf routeFlags
	cmd := &cobra.Command{
		Use:   "add NAME --base-url URL --auth KIND [--route 'SCOPE=METHOD PATH' …] < secret",
		Short: "Add an upstream and store its secret (read from stdin or --secret-file)",
		Long: `Add an upstream and store its secret. KIND is bearer, header:NAME, query:NAME, basic,
oauth2-refresh or oauth2-client-credentials. The secret is read from stdin or --secret-file,
never from a flag: the API key (bearer, header, query), user:password (basic), the refresh token
(oauth2-refresh; its client secret, if it has one, with --client-secret-file), or the client
secret (oauth2-client-credentials).`,
		Example: `  mandate upstream add ahrefs --base-url https://api.ahrefs.com --auth bearer \
      --route 'ahrefs:read=GET /v3/site-explorer/*' < ahrefs.key
  mandate upstream add resend --base-url https://api.resend.com --auth bearer \
      --routes-file resend-routes.json --secret-file resend.key
  mandate upstream add x --base-url https://api.x.com --auth oauth2-refresh \
      --token-url https://api.x.com/2/oauth2/token --client-id abc --oauth-scope tweet.read \
      --route 'x:read=GET /2/**' --secret-file refresh-token --client-secret-file client-secret`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := managementClient(cmd)
			if err != nil {
				return err
			}
			spec.Name = args[0]
			if spec.Auth, spec.Param, err = parseAuth(spec.Auth, spec.Param); err != nil {
				return err
			}
			oauth := vault.AuthKind(spec.Auth) == vault.AuthOAuth2Refresh || vault.AuthKind(spec.Auth) == vault.AuthOAuth2ClientCredentials
			switch {
			case oauth:
				spec.OAuth2 = &vault.OAuth2{AuthURL: authURL, TokenURL: tokenURL, ClientID: clientID, Scopes: splitScopes(scopes)}
			case tokenURL != "" || clientID != "" || authURL != "" || len(scopes) > 0 || clientSecretFile != "":
				return fmt.Errorf("--token-url, --client-id, --auth-url, --oauth-scope and --client-secret-file are for --auth oauth2-refresh and oauth2-client-credentials")
			}
			if spec.Routes, err = rf.parse(); err != nil {
				return err
			}
			// Read every secret first, so that a missing one leaves nothing half-made.
			kind := vault.SecretKinds(vault.AuthKind(spec.Auth))[0]
			var secret, clientSecret []byte
			if !noSecret {
				if secret, err = readSecret(cmd, secretFile, secretWhat(kind)); err != nil {
					return err
				}
				defer clear(secret)
			}
			if clientSecretFile != "" {
				if vault.AuthKind(spec.Auth) != vault.AuthOAuth2Refresh {
					return errors.New("--client-secret-file is for oauth2-refresh; the client secret of oauth2-client-credentials is its secret")
				}
				if clientSecret, err = readSecret(cmd, clientSecretFile, "client secret"); err != nil {
					return err
				}
				defer clear(clientSecret)
			}
			var up api.UpstreamJSON
			if _, err := c.do(cmd.Context(), http.MethodPost, "/v1/upstreams", spec, &up); err != nil {
				return err
			}
			set := []string{}
			for _, s := range []struct {
				kind   string
				secret []byte
			}{{kind, secret}, {vault.SecretClientSecret, clientSecret}} {
				if s.secret == nil {
					continue
				}
				if err := putSecret(cmd, c, up.Name, s.kind, s.secret); err != nil {
					return fmt.Errorf("upstream %s was added, but its %s was not stored: %w\nset it with: mandate upstream set-secret %s --kind %s",
						up.Name, secretWhat(s.kind), err, up.Name, s.kind)
				}
				set = append(set, s.kind)
			}
			out := cmd.OutOrStdout()
			if wantJSON(cmd) {
				up.HasSecrets = set
				b, _ := json.Marshal(up)
				return printJSON(out, b)
			}
			fmt.Fprintf(out, "Added upstream %s (%s, %s) with %d routes; resource %s\n", up.Name, up.BaseURL, up.Auth, len(up.Routes), up.Resource)
			if len(set) > 0 {
				fmt.Fprintf(out, "Stored its %s, sealed; it is never shown again.\n", strings.Join(set, " and "))
			} else {
				fmt.Fprintf(out, "No secret stored yet: mandate upstream set-secret %s < secret\n", up.Name)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&spec.BaseURL, "base-url", "", "the API's base URL, e.g. https://api.ahrefs.com (the proxy dials only this host)")
	f.StringVar(&spec.Auth, "auth", "", "how the API takes its credential: bearer, header:NAME, query:NAME, basic, oauth2-refresh, oauth2-client-credentials")
	f.StringVar(&spec.Param, "param", "", "the header or query parameter name (or write --auth header:NAME)")
	f.BoolVar(&spec.AllowPrivate, "allow-private", false, "the upstream is on a loopback or private address on purpose (tests, on-prem); also allows plain http")
	f.BoolVar(&spec.IdentityAssertion, "identity-assertion", false, "send the upstream a signed Txn-Token on every call: who acts for whom, in which task, verifiable with /oauth/jwks")
	f.StringVar(&tokenURL, "token-url", "", "OAuth token endpoint")
	f.StringVar(&clientID, "client-id", "", "OAuth client id")
	f.StringVar(&authURL, "auth-url", "", "OAuth authorization endpoint (for connecting with a browser)")
	f.StringArrayVar(&scopes, "oauth-scope", nil, "OAuth scopes to ask the upstream for (repeatable, or space-separated)")
	f.StringVar(&secretFile, "secret-file", "", "read the secret from this file instead of stdin")
	f.StringVar(&clientSecretFile, "client-secret-file", "", "oauth2-refresh: read the client secret from this file")
	f.BoolVar(&noSecret, "no-secret", false, "add the upstream without a secret (set it later with set-secret)")
	rf.add(cmd)
	cmd.MarkFlagRequired("base-url")
	cmd.MarkFlagRequired("auth")
	return cmd
}

func newUpstreamListCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Short:   "List upstreams",
		Example: "  mandate upstream list",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var res struct {
				Upstreams []api.UpstreamJSON `json:"upstreams"`
			}
			if done, err := callAPI(cmd, http.MethodGet, "/v1/upstreams", nil, &res); done {
				return err
			}
			now := time.Now()
			t := newTable(cmd.OutOrStdout(), "NAME", "BASE URL", "AUTH", "ROUTES", "SECRETS", "UPDATED")
			for _, u := range res.Upstreams {
				t.row(u.Name, u.BaseURL, authLabel(u), fmt.Sprint(len(u.Routes)), secretsLabel(u), ago(u.UpdatedAt, now))
			}
			return t.flush()
		},
	}
}

func authLabel(u api.UpstreamJSON) string {
	if u.Param != "" {
		return u.Auth + ":" + u.Param
	}
	return u.Auth
}

// secretsLabel says which secrets are set and which the upstream still needs.
func secretsLabel(u api.UpstreamJSON) string {
	if len(u.SecretKinds) > 0 && !slices.Contains(u.HasSecrets, u.SecretKinds[0]) {
		return "MISSING " + u.SecretKinds[0]
	}
	if len(u.HasSecrets) == 0 {
		return "-"
	}
	return strings.Join(u.HasSecrets, ",")
}

func newUpstreamShowCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "show NAME",
		Short:   "Show an upstream, its routes and which secrets are set (never their values)",
		Example: "  mandate upstream show ahrefs",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var u api.UpstreamJSON
			if done, err := callAPI(cmd, http.MethodGet, upstreamPath(args[0]), nil, &u); done {
				return err
			}
			printUpstream(cmd.OutOrStdout(), u)
			return nil
		},
	}
}

func printUpstream(w io.Writer, u api.UpstreamJSON) {
	now := time.Now()
	fmt.Fprintf(w, "Upstream:  %s\nBase URL:  %s\nAuth:      %s\nResource:  %s\n", u.Name, u.BaseURL, authLabel(u), u.Resource)
	if u.OAuth2 != nil {
		fmt.Fprintf(w, "Token URL: %s\nClient id: %s\n", u.OAuth2.TokenURL, cleanCell(u.OAuth2.ClientID))
		if len(u.OAuth2.Scopes) > 0 {
			fmt.Fprintf(w, "Scopes:    %s\n", strings.Join(u.OAuth2.Scopes, " "))
		}
	}
	if u.AllowPrivate {
		fmt.Fprintln(w, "Private:   allowed (loopback or private address)")
	}
	if u.IdentityAssertion {
		fmt.Fprintln(w, "Identity:  a signed Txn-Token on every call")
	}
	fmt.Fprintf(w, "Secrets:   %s\nCreated:   %s\nUpdated:   %s\n", secretsLabel(u), when(u.CreatedAt, now), when(u.UpdatedAt, now))
	if len(u.Routes) == 0 {
		fmt.Fprintln(w, "Routes:    none (no scope reaches this upstream yet)")
		return
	}
	fmt.Fprintln(w, "Routes:")
	t := newTable(w, "  SCOPE", "METHODS", "PATHS", "BODY RULES")
	for _, r := range u.Routes {
		var rules []string
		for _, b := range r.Body {
			rules = append(rules, b.Pointer+" "+b.Match+" "+b.Detail)
		}
		t.row("  "+r.Scope, strings.Join(r.Methods, ","), strings.Join(r.Paths, " "), strings.Join(rules, "; "))
	}
	t.flush()
}

func newUpstreamRoutesCmd() *cobra.Command {
	var rf routeFlags
	cmd := &cobra.Command{
		Use:     "routes NAME --route 'SCOPE=METHOD PATH' … | --routes-file F",
		Short:   "Replace an upstream's routes",
		Example: "  mandate upstream routes ahrefs --route 'ahrefs:read=GET /v3/site-explorer/* /v3/keywords-explorer/**'",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			routes, err := rf.parse()
			if err != nil {
				return err
			}
			if routes == nil {
				routes = []vault.Route{}
			}
			var u api.UpstreamJSON
			if done, err := callAPI(cmd, http.MethodPut, upstreamPath(args[0])+"/routes", api.RoutesJSON{Routes: routes}, &u); done {
				return err
			}
			printUpstream(cmd.OutOrStdout(), u)
			return nil
		},
	}
	rf.add(cmd)
	return cmd
}

func newUpstreamRemoveCmd() *cobra.Command {
	var yes bool
	cmd := &cobra.Command{
		Use:   "remove NAME [--yes]",
		Short: "Remove an upstream and destroy its secrets",
		Long: `Remove an upstream and destroy its secrets for good: agents can no longer reach it, and its
credentials cannot be recovered. Asks for confirmation on a terminal; elsewhere pass --yes.`,
		Example: "  mandate upstream remove ahrefs --yes",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !yes {
				var u api.UpstreamJSON
				ok, err := confirmTo(cmd, "remove", "upstream "+args[0], upstreamPath(args[0]), &u, func() string {
					return fmt.Sprintf("Remove upstream %s (%s) and destroy its secrets (%s)? Agents can no longer reach it. [y/N] ", u.Name, u.BaseURL, secretsLabel(u))
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
			if _, err := c.do(cmd.Context(), http.MethodDelete, upstreamPath(args[0]), nil, nil); err != nil {
				return err
			}
			if wantJSON(cmd) {
				return printJSON(cmd.OutOrStdout(), []byte(`{"removed":`+jsonString(args[0])+`}`))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Removed upstream %s and its secrets.\n", args[0])
			return nil
		},
	}
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")
	return cmd
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func newUpstreamSetSecretCmd() *cobra.Command {
	var kind, secretFile string
	cmd := &cobra.Command{
		Use:   "set-secret NAME [--kind K] [--secret-file F] < secret",
		Short: "Store (replace) an upstream's secret, read from stdin or a file",
		Long: `Store or replace an upstream's secret. The kind defaults to what the upstream needs:
credential (bearer, header, query: the API key; basic: user:password), refresh_token
(oauth2-refresh) or client_secret (oauth2-client-credentials; --kind client_secret for an
oauth2-refresh client's secret). Replacing an OAuth secret drops the cached access token.`,
		Example: "  mandate upstream set-secret ahrefs < ahrefs.key\n  mandate upstream set-secret x --kind client_secret --secret-file client-secret",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := managementClient(cmd)
			if err != nil {
				return err
			}
			if kind == "" {
				var u api.UpstreamJSON
				if _, err := c.do(cmd.Context(), http.MethodGet, upstreamPath(args[0]), nil, &u); err != nil {
					return err
				}
				if len(u.SecretKinds) == 0 {
					return fmt.Errorf("upstream %s takes no secret", u.Name)
				}
				kind = u.SecretKinds[0]
			}
			secret, err := readSecret(cmd, secretFile, secretWhat(kind))
			if err != nil {
				return err
			}
			defer clear(secret)
			if err := putSecret(cmd, c, args[0], kind, secret); err != nil {
				return err
			}
			if wantJSON(cmd) {
				return printJSON(cmd.OutOrStdout(), []byte(`{"upstream":`+jsonString(args[0])+`,"kind":`+jsonString(kind)+`}`))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Stored the %s of %s, sealed; it is never shown again.\n", secretWhat(kind), args[0])
			return nil
		},
	}
	cmd.Flags().StringVar(&kind, "kind", "", "credential, refresh_token or client_secret (default: what the upstream needs)")
	cmd.Flags().StringVar(&secretFile, "secret-file", "", "read the secret from this file instead of stdin")
	return cmd
}
