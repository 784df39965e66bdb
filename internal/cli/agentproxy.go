package cli

import (
	"bytes"
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spf13/cobra"

	"github.com/mandate-dev/mandate/client"
	"github.com/mandate-dev/mandate/internal/delegation"
	"github.com/mandate-dev/mandate/internal/loopback"
)

// The sidecar: a loopback HTTP server that forwards http://127.0.0.1:PORT/{upstream}/{path…}
// to {issuer}/proxy/{upstream}/{path…} with the task's token and a fresh DPoP proof, so a tool
// that can only be given a base URL and an API key reaches the upstream through mandate's proxy
// and never holds a credential worth anything.

// upstreamName is the form of an upstream's name (as the vault accepts it).
var upstreamName = regexp.MustCompile(`^[a-z0-9-]{1,40}$`)

// proxyResource is the resource URI (RFC 8707) of upstream name at the server: the audience of
// the tokens its proxy accepts.
func proxyResource(issuer, name string) string {
	return strings.TrimSuffix(issuer, "/") + "/proxy/" + name
}

// droppedRequestHeaders are the tool's headers the sidecar never forwards: its credentials
// (a placeholder at best, a real key at worst) and proofs, which the sidecar replaces with the
// task's. Hop-by-hop headers (RFC 9110 §7.6.1) and X-Forwarded-* are dropped by
// httputil.ReverseProxy itself.
var droppedRequestHeaders = []string{"Authorization", "Proxy-Authorization", "Cookie", "DPoP", "Forwarded"}

// droppedResponseHeaders are not handed back to the tool: cookies of the upstream (the tool
// never sends cookies through the sidecar, so they would only leak a session).
var droppedResponseHeaders = []string{"Set-Cookie", "Set-Cookie2"}

// replayableBody is the largest request body the sidecar holds in memory so that the request
// can be sent again when the server asks for a DPoP nonce; larger bodies stream through once.
const replayableBody = 64 << 10

// sidecar is the forwarding handler.
type sidecar struct {
	base      *url.URL        // the issuer
	upstreams map[string]bool // the upstreams it forwards to; nil = any
	proxy     *httputil.ReverseProxy
	log       io.Writer // one line per request (never the query), nil = none
	logMu     sync.Mutex
}

type targetKey struct{}

// newSidecar returns the sidecar's handler for issuer: rt sends each forwarded request with the
// task's credentials (client.Task.Transport). upstreams limits the names it forwards to (empty =
// any); logw, if not nil, gets one line per request.
func newSidecar(issuer string, rt http.RoundTripper, upstreams []string, logw io.Writer) (*sidecar, error) {
	base, err := url.Parse(strings.TrimSuffix(issuer, "/"))
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		return nil, fmt.Errorf("the server %q is not an http(s) URL", issuer)
	}
	s := &sidecar{base: base, log: logw}
	if len(upstreams) > 0 {
		s.upstreams = make(map[string]bool, len(upstreams))
		for _, u := range upstreams {
			s.upstreams[u] = true
		}
	}
	s.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL = pr.In.Context().Value(targetKey{}).(*url.URL)
			pr.Out.Host = "" // the server's, from the URL
			for _, h := range droppedRequestHeaders {
				pr.Out.Header.Del(h)
			}
		},
		Transport:     rt,
		FlushInterval: -1, // stream: hand every chunk on as it comes (server-sent events, downloads)
		ModifyResponse: func(resp *http.Response) error {
			for _, h := range droppedResponseHeaders {
				resp.Header.Del(h)
			}
			for k := range resp.Header { // no CORS grant lets a web page read an answer
				if strings.HasPrefix(k, "Access-Control-") {
					delete(resp.Header, k)
				}
			}
			return nil
		},
		ErrorHandler: s.fail,
		ErrorLog:     log.New(io.Discard, "", 0),
	}
	return s, nil
}

func (s *sidecar) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := &statusRecorder{ResponseWriter: w}
	s.serve(rec, r)
	if s.log != nil {
		s.logMu.Lock()
		fmt.Fprintf(s.log, "mandate sidecar: %s %s → %d (%s)\n", r.Method, r.URL.EscapedPath(), rec.status(), time.Since(start).Round(time.Millisecond))
		s.logMu.Unlock()
	}
}

func (s *sidecar) serve(w http.ResponseWriter, r *http.Request) {
	// Only loopback callers, by a loopback name: a web page that rebinds its DNS name to
	// 127.0.0.1 sends its own Host and gets nothing.
	if !loopback.Host(r.Host) {
		sidecarError(w, http.StatusMisdirectedRequest, "invalid_request", "the sidecar answers only requests for a loopback host (127.0.0.1, ::1 or localhost)")
		return
	}
	// Browsers mark what a web page sends: a cross-site request must not spend the task's
	// authority (a page could POST to 127.0.0.1 without any DNS trick). Tools send neither header.
	if r.Header.Get("Origin") != "" || !sameSiteFetch(r.Header.Get("Sec-Fetch-Site")) {
		sidecarError(w, http.StatusForbidden, "forbidden", "the sidecar refuses requests made by a web page (Origin or Sec-Fetch-Site): it is for local tools")
		return
	}
	if r.Method == http.MethodConnect || r.URL.IsAbs() || r.URL.Opaque != "" || r.RequestURI == "*" {
		sidecarError(w, http.StatusBadRequest, "invalid_request", "the sidecar is not a forward proxy: call http://HOST:PORT/{upstream}/{path}")
		return
	}
	target, name, err := s.target(r.URL)
	if err != nil {
		sidecarError(w, http.StatusNotFound, "not_found", err.Error())
		return
	}
	if s.upstreams != nil && !s.upstreams[name] {
		sidecarError(w, http.StatusNotFound, "not_found", fmt.Sprintf("upstream %q is not one this sidecar forwards to", name))
		return
	}
	// A small body is held so that a use_dpop_nonce challenge can be answered by sending again.
	if r.ContentLength > 0 && r.ContentLength <= replayableBody {
		data, err := io.ReadAll(io.LimitReader(r.Body, replayableBody+1))
		if err != nil {
			sidecarError(w, http.StatusBadRequest, "invalid_request", "reading the request body: "+err.Error())
			return
		}
		r.Body.Close()
		r.Body = io.NopCloser(bytes.NewReader(data))
		r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil }
	}
	s.proxy.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), targetKey{}, target)))
}

// target maps /{upstream}/{path…}?{query} to {issuer}/proxy/{upstream}/{path…}?{query}. The
// path is passed on as the tool sent it (escapes kept); the server's proxy judges it.
func (s *sidecar) target(u *url.URL) (*url.URL, string, error) {
	raw := u.EscapedPath()
	if !strings.HasPrefix(raw, "/") {
		return nil, "", errors.New("call http://HOST:PORT/{upstream}/{path}")
	}
	name, rest, _ := strings.Cut(raw[1:], "/")
	if !upstreamName.MatchString(name) {
		return nil, "", fmt.Errorf("no upstream in the path %q: call http://HOST:PORT/{upstream}/{path}", clip(raw, 60))
	}
	escaped := s.base.EscapedPath() + "/proxy/" + name
	if strings.HasPrefix(raw[1+len(name):], "/") {
		escaped += "/" + rest
	}
	path, err := url.PathUnescape(escaped)
	if err != nil {
		return nil, "", fmt.Errorf("the path %q is not a valid URL path", clip(raw, 60))
	}
	out := &url.URL{Scheme: s.base.Scheme, Host: s.base.Host, Path: path, RawQuery: u.RawQuery}
	if path != escaped {
		out.RawPath = escaped
	}
	return out, name, nil
}

// fail answers a request the sidecar could not forward.
func (s *sidecar) fail(w http.ResponseWriter, r *http.Request, err error) {
	var ce *client.Error
	switch {
	case errors.As(err, &ce):
		// The task's token could not be renewed: the task ended, its grant was revoked, …
		desc := ce.Description
		if desc == "" {
			desc = ce.Code
		}
		sidecarError(w, http.StatusUnauthorized, "invalid_token", "the task's token could not be renewed: "+desc)
	case errors.Is(err, context.Canceled):
		w.WriteHeader(499) // the tool went away; nobody reads this
	default:
		sidecarError(w, http.StatusBadGateway, "bad_gateway", "the sidecar cannot reach mandate's proxy: "+rootCause(err).Error())
	}
}

func sidecarError(w http.ResponseWriter, status int, code, desc string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": desc})
}

// statusRecorder remembers the status written, for the request log. It passes Flush on (via
// Unwrap, which http.ResponseController uses).
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

func (r *statusRecorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (r *statusRecorder) status() int {
	if r.code == 0 {
		return http.StatusOK
	}
	return r.code
}

// checkListen refuses a listen address that is not on the loopback interface: the sidecar adds
// the task's credentials to whatever reaches it.
func checkListen(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--listen %q: want HOST:PORT, e.g. 127.0.0.1:8421", addr)
	}
	if host == "" || !loopback.Host(host) {
		return fmt.Errorf("--listen %q: the sidecar listens on loopback only (127.0.0.1, [::1] or localhost): anyone who reaches it acts with the task's authority", addr)
	}
	return nil
}

// sidecarTransport is the base transport under the task's: no client timeout (bodies stream for
// as long as they take), and no transparent decompression (the tool gets the bytes as sent).
func sidecarTransport() http.RoundTripper {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DisableCompression = true
	t.ResponseHeaderTimeout = 5 * time.Minute
	return t
}

// runningSidecar is a sidecar serving on a listener.
type runningSidecar struct {
	URL  string // http://127.0.0.1:PORT
	srv  *http.Server
	done chan error
}

// startSidecar serves h on addr (checked to be loopback).
func startSidecar(addr string, h http.Handler) (*runningSidecar, error) {
	if err := checkListen(addr); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", addr, err)
	}
	rs := &runningSidecar{URL: "http://" + ln.Addr().String(), done: make(chan error, 1),
		srv: &http.Server{Handler: h, ReadHeaderTimeout: 30 * time.Second}}
	go func() { rs.done <- rs.srv.Serve(ln) }()
	return rs, nil
}

// stop closes the listener and waits up to grace for requests in flight.
func (rs *runningSidecar) stop(grace time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if err := rs.srv.Shutdown(ctx); err != nil {
		rs.srv.Close()
	}
	<-rs.done
}

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
{server}/proxy/{upstream}/{path…}?{query}, with the task's token and a fresh DPoP proof; the token
is renewed before it expires. Bodies stream both ways; status and headers come back as the
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
			if err := checkListen(listen); err != nil {
				return err
			}
			for _, u := range upstreams {
				if !upstreamName.MatchString(u) {
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
						out = append(out, proxyResource(issuer, u))
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
			sc, err := newSidecar(issuer, task.Transport(sidecarTransport()), upstreams, logw)
			if err == nil {
				var rs *runningSidecar
				if rs, err = startSidecar(listen, sc); err == nil {
					out := cmd.OutOrStdout()
					if wantJSON(cmd) {
						_ = printJSON(out, map[string]any{"url": rs.URL, "task_id": task.ID, "grant_id": task.GrantID, "server": issuer})
					} else {
						fmt.Fprintf(out, "Forwarding %s/{upstream}/{path} to %s/proxy/{upstream}/{path} for task %s.\n", rs.URL, issuer, task.ID)
						if started != nil {
							fmt.Fprintln(out, "The task ends when the sidecar stops (Ctrl-C).")
						}
					}
					select {
					case <-ctx.Done():
					case err = <-rs.done:
						rs.done <- err
						err = fmt.Errorf("the sidecar stopped: %w", err)
					}
					rs.stop(5 * time.Second)
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

// sameSiteFetch accepts a request without Sec-Fetch-Site (not a browser) or one a browser made
// on its own (a typed URL, a same-origin request).
func sameSiteFetch(v string) bool {
	return v == "" || v == "none" || v == "same-origin"
}
