package cli

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/mandate-dev/mandate/internal/api"
	"github.com/mandate-dev/mandate/internal/vault"
)

// connectWait bounds the wait for the browser's redirect (a variable for tests).
var connectWait = 5 * time.Minute

// openBrowser opens u in the user's browser (a variable for tests). Its failure is never fatal:
// the URL is printed first.
var openBrowser = defaultOpenBrowser

// closePage is all the loopback page ever says: it echoes nothing of the redirect.
const closePage = "You can close this window.\n"

func newUpstreamConnectCmd() *cobra.Command {
	var noBrowser bool
	var listen, clientSecretFile string
	cmd := &cobra.Command{
		Use:   "connect NAME [--no-browser] [--listen 127.0.0.1:0] [--client-secret-file F]",
		Short: "Sign in to an oauth2-refresh upstream once in a browser; its refresh token goes to the vault",
		Long: `Run the OAuth authorization-code flow with PKCE (S256) for an oauth2-refresh upstream: open
its authorization URL in the browser, take the redirect on a loopback port
(http://127.0.0.1:PORT/callback), exchange the code at the upstream's token endpoint and store the
refresh token in the vault. The tokens are never written to disk or printed; the proxy gets access
tokens with the refresh token from then on.

The upstream needs --auth-url, --token-url, --client-id and the scopes (include the one the
provider wants for a refresh token, e.g. offline.access). A confidential client's secret is
read from --client-secret-file (the vault never gives a stored one back); it is stored too when
the upstream has none yet. The redirect URI to register with the provider is
http://127.0.0.1:PORT/callback: fix the port with --listen if the provider wants an exact URI.`,
		Example: `  mandate upstream connect x
  mandate upstream connect x --no-browser --listen 127.0.0.1:8765 --client-secret-file client-secret`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runConnect(cmd, args[0], connectOptions{noBrowser: noBrowser, listen: listen, clientSecretFile: clientSecretFile})
		},
	}
	f := cmd.Flags()
	f.BoolVar(&noBrowser, "no-browser", false, "print the authorization URL only; open it yourself (on this machine: the redirect goes to loopback)")
	f.StringVar(&listen, "listen", "127.0.0.1:0", "the loopback address for the redirect (port 0: any free port)")
	f.StringVar(&clientSecretFile, "client-secret-file", "", "a confidential client's secret, for the code exchange")
	return cmd
}

type connectOptions struct {
	noBrowser        bool
	listen           string
	clientSecretFile string
}

func runConnect(cmd *cobra.Command, name string, o connectOptions) error {
	ctx := cmd.Context()
	c, err := managementClient(cmd)
	if err != nil {
		return err
	}
	var up api.UpstreamJSON
	if _, err := c.do(ctx, http.MethodGet, upstreamPath(name), nil, &up); err != nil {
		return err
	}
	oa := up.OAuth2
	switch {
	case vault.AuthKind(up.Auth) != vault.AuthOAuth2Refresh:
		return fmt.Errorf("upstream %s uses auth %s: connect is for oauth2-refresh upstreams (set other secrets with mandate upstream set-secret)", up.Name, up.Auth)
	case oa == nil || oa.TokenURL == "" || oa.ClientID == "":
		return fmt.Errorf("upstream %s has no OAuth token_url or client_id: remove it and add it again with --token-url and --client-id", up.Name)
	case oa.AuthURL == "":
		return fmt.Errorf("upstream %s has no auth_url (the authorization endpoint): remove it and add it again with --auth-url", up.Name)
	}
	hasClientSecret := slices.Contains(up.HasSecrets, vault.SecretClientSecret)
	var clientSecret []byte
	if o.clientSecretFile != "" {
		if clientSecret, err = readSecret(cmd, o.clientSecretFile, "client secret"); err != nil {
			return err
		}
		defer clear(clientSecret)
	} else if hasClientSecret {
		return fmt.Errorf("upstream %s has a client secret, which the vault never gives back: pass it with --client-secret-file F for the code exchange", up.Name)
	}
	if err := checkLoopbackListen(o.listen); err != nil {
		return err
	}

	p, err := newPKCE()
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", o.listen, err)
	}
	redirectURI := "http://" + ln.Addr().String() + "/callback"
	authURL, err := authorizationURL(oa, redirectURI, p)
	if err != nil {
		ln.Close()
		return err
	}
	cb := &callback{state: p.state, result: make(chan callbackResult, 1)}
	srv := &http.Server{Handler: cb, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	defer func() {
		// Let the browser have its page, then stop listening.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		if srv.Shutdown(sctx) != nil {
			srv.Close()
		}
	}()

	errOut := cmd.ErrOrStderr()
	fmt.Fprintf(errOut, "Open this URL in a browser on this machine to connect %s:\n\n  %s\n\nWaiting for the redirect to %s (for %s; Ctrl-C to give up)…\n",
		up.Name, authURL, redirectURI, connectWait.Round(time.Second))
	if !o.noBrowser {
		if err := openBrowser(authURL); err != nil {
			fmt.Fprintf(errOut, "Could not open a browser (%v): open the URL yourself.\n", err)
		}
	}

	timer := time.NewTimer(connectWait)
	defer timer.Stop()
	var res callbackResult
	select {
	case res = <-cb.result:
	case <-ctx.Done():
		return fmt.Errorf("interrupted before the browser came back: nothing was stored (%w)", ctx.Err())
	case <-timer.C:
		return fmt.Errorf("no redirect came back within %s: nothing was stored; run mandate upstream connect %s again", connectWait.Round(time.Second), up.Name)
	}
	if res.err != nil {
		return res.err
	}

	form := url.Values{
		"grant_type":    {"authorization_code"},
		"code":          {res.code},
		"redirect_uri":  {redirectURI},
		"client_id":     {oa.ClientID},
		"code_verifier": {p.verifier},
	}
	if clientSecret != nil {
		form.Set("client_secret", string(clientSecret))
	}
	redact := []string{res.code, p.verifier, string(clientSecret)}
	refreshToken, err := exchangeCode(ctx, oa.TokenURL, form, redact)
	if err != nil {
		return err
	}
	defer clear(refreshToken)

	// The client secret first: a refresh with the new token must not find the upstream without
	// the secret it needs.
	var stored []string
	if clientSecret != nil && !hasClientSecret {
		if err := putSecret(cmd, c, up.Name, vault.SecretClientSecret, clientSecret); err != nil {
			return fmt.Errorf("signed in to %s, but its client secret was not stored, nor the refresh token (run connect again): %w", up.Name, err)
		}
		stored = append(stored, vault.SecretClientSecret)
	}
	if err := putSecret(cmd, c, up.Name, vault.SecretRefreshToken, refreshToken); err != nil {
		return fmt.Errorf("signed in to %s, but the refresh token was not stored (run connect again): %w", up.Name, err)
	}
	stored = append(stored, vault.SecretRefreshToken)
	out := cmd.OutOrStdout()
	if wantJSON(cmd) {
		return printJSON(out, map[string]any{"upstream": up.Name, "stored": stored})
	}
	fmt.Fprintf(out, "Connected %s; the refresh token is in the vault.\n", up.Name)
	if len(stored) > 1 {
		fmt.Fprintln(out, "Stored its client secret too.")
	}
	return nil
}

// checkLoopbackListen wants a loopback IP literal: the redirect URI names the address itself
// (RFC 8252 §7.3), and nothing but this machine may deliver the code.
func checkLoopbackListen(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--listen %q: want IP:PORT, e.g. 127.0.0.1:0", addr)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("--listen %q: the redirect is taken on a loopback IP only (127.0.0.1 or [::1])", addr)
	}
	return nil
}

// pkce is one sign-in's secrets: the RFC 7636 code verifier, its S256 challenge, and the state.
type pkce struct {
	verifier, challenge, state string
}

func newPKCE() (pkce, error) {
	b := make([]byte, 64)
	if _, err := rand.Read(b); err != nil {
		return pkce{}, err
	}
	defer clear(b)
	// 32 random bytes in base64url: 43 characters of the unreserved set.
	v := base64.RawURLEncoding.EncodeToString(b[:32])
	sum := sha256.Sum256([]byte(v))
	return pkce{verifier: v, challenge: base64.RawURLEncoding.EncodeToString(sum[:]),
		state: base64.RawURLEncoding.EncodeToString(b[32:])}, nil
}

// authorizationURL is the upstream's authorization endpoint with the request's parameters
// (keeping any the endpoint's URL has of its own).
func authorizationURL(oa *vault.OAuth2, redirectURI string, p pkce) (string, error) {
	u, err := url.Parse(oa.AuthURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return "", fmt.Errorf("the upstream's auth_url %q is not an http(s) URL", oa.AuthURL)
	}
	q := u.Query()
	q.Set("response_type", "code")
	q.Set("client_id", oa.ClientID)
	q.Set("redirect_uri", redirectURI)
	if len(oa.Scopes) > 0 {
		q.Set("scope", strings.Join(oa.Scopes, " "))
	}
	q.Set("state", p.state)
	q.Set("code_challenge", p.challenge)
	q.Set("code_challenge_method", "S256")
	u.RawQuery = q.Encode()
	u.Fragment = ""
	return u.String(), nil
}

// callback takes the authorization server's redirect. The first request to /callback decides;
// the page never echoes anything of it.
type callback struct {
	state  string
	once   sync.Once
	result chan callbackResult // buffered 1
}

type callbackResult struct {
	code string
	err  error
}

func (cb *callback) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/callback" {
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	q := r.URL.Query()
	var res callbackResult
	switch {
	case q.Has("error"):
		res.err = authorizationError(q)
	case subtle.ConstantTimeCompare([]byte(q.Get("state")), []byte(cb.state)) != 1:
		res.err = errors.New("the redirect's state is not the one this sign-in sent (a stale tab, or a request from elsewhere): nothing was stored; run connect again")
	case q.Get("code") == "":
		res.err = errors.New("the redirect has no authorization code: nothing was stored")
	default:
		res.code = q.Get("code")
	}
	first := false
	cb.once.Do(func() {
		first = true
		cb.result <- res
	})
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Content-Type-Options", "nosniff")
	if !first || res.err != nil {
		w.WriteHeader(http.StatusBadRequest)
	}
	io.WriteString(w, closePage)
}

// authorizationError reports an RFC 6749 §4.1.2.1 error redirect, quoting only printable text.
func authorizationError(q url.Values) error {
	msg := "the authorization server refused: " + printable(q.Get("error"), 60)
	if d := printable(q.Get("error_description"), 300); d != "" {
		msg += ": " + d
	}
	return errors.New(msg + " (nothing was stored)")
}

// printable keeps printable ASCII of s, clipped to n bytes: what a server says is quoted on a
// terminal.
func printable(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return -1
		}
		return r
	}, s)
	if len(s) > n {
		s = s[:n] + "…"
	}
	return strings.TrimSpace(s)
}

// exchangeCode posts the authorization code to the token endpoint and returns the refresh
// token. The access token it also gets is dropped: the API takes no access token, and the proxy
// gets its own with the refresh token. Errors quote the status and the OAuth error, with any of
// redact (the code, the verifier, the client secret) cut out, never the tokens.
func exchangeCode(ctx context.Context, tokenURL string, form url.Values, redact []string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, tokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, fmt.Errorf("the upstream's token_url %q: %w", tokenURL, err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	// A redirect would carry the code, the verifier and the client secret elsewhere.
	hc := &http.Client{Timeout: requestTimeout, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := hc.Do(req)
	if err != nil {
		if errors.Is(ctx.Err(), context.Canceled) { // Ctrl-C, not the request's own timeout
			return nil, fmt.Errorf("interrupted during the code exchange: nothing was stored (%w)", ctx.Err())
		}
		return nil, fmt.Errorf("the token endpoint %s: %v", tokenURL, rootCause(err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	defer clear(body)
	if err != nil {
		return nil, fmt.Errorf("reading the token endpoint's answer: %v", rootCause(err))
	}
	var tr struct {
		AccessToken  string `json:"access_token"`
		TokenType    string `json:"token_type"`
		RefreshToken string `json:"refresh_token"`
		Error        string `json:"error"`
		Description  string `json:"error_description"`
	}
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if mt == "application/x-www-form-urlencoded" || mt == "text/plain" { // GitHub's default
		if v, err := url.ParseQuery(string(body)); err == nil {
			tr.AccessToken, tr.TokenType, tr.RefreshToken = v.Get("access_token"), v.Get("token_type"), v.Get("refresh_token")
			tr.Error, tr.Description = v.Get("error"), v.Get("error_description")
		}
	} else {
		_ = json.Unmarshal(body, &tr)
	}
	if resp.StatusCode != http.StatusOK || tr.Error != "" {
		msg := fmt.Sprintf("the token endpoint refused the code exchange: HTTP %d", resp.StatusCode)
		if e := printable(tr.Error, 60); e != "" {
			msg += " " + e
		}
		if d := printable(tr.Description, 300); d != "" {
			for _, r := range redact {
				if r != "" {
					d = strings.ReplaceAll(d, r, "[redacted]")
				}
			}
			msg += ": " + d
		}
		return nil, errors.New(msg + " (nothing was stored)")
	}
	switch {
	case tr.AccessToken == "":
		return nil, errors.New("the token endpoint's answer has no access_token (nothing was stored)")
	case tr.TokenType != "" && !strings.EqualFold(tr.TokenType, "bearer"):
		return nil, fmt.Errorf("the token endpoint gave a token of type %q; the proxy sends Bearer tokens (nothing was stored)", printable(tr.TokenType, 20))
	case tr.RefreshToken == "":
		return nil, errors.New("the token endpoint gave no refresh token: ask for offline access (many providers want a scope such as offline_access or offline.access in the upstream's --oauth-scope); nothing was stored")
	}
	return []byte(tr.RefreshToken), nil
}

// defaultOpenBrowser starts the desktop's URL opener and does not wait for it.
func defaultOpenBrowser(u string) error {
	var name string
	var args []string
	switch runtime.GOOS {
	case "darwin":
		name = "open"
	case "windows":
		name, args = "rundll32", []string{"url.dll,FileProtocolHandler"}
	default:
		// Without a display xdg-open may start a text browser on this very terminal.
		if os.Getenv("DISPLAY") == "" && os.Getenv("WAYLAND_DISPLAY") == "" {
			return errors.New("no display")
		}
		name = "xdg-open"
	}
	path, err := exec.LookPath(name)
	if err != nil {
		return fmt.Errorf("%s not found", name)
	}
	c := exec.Command(path, append(args, u)...)
	if err := c.Start(); err != nil {
		return err
	}
	go c.Wait()
	return nil
}
