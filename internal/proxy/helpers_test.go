package proxy

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mandate-dev/mandate/dpop"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/delegation"
	"github.com/mandate-dev/mandate/internal/httpapi"
	"github.com/mandate-dev/mandate/internal/syncbuf"
	"github.com/mandate-dev/mandate/internal/vault"
	"github.com/mandate-dev/mandate/verify"
)

// The real credential the fake vault injects. It must never reach the agent or the audit trail.
const realSecret = "sk_live_REAL_UPSTREAM_SECRET"

// fakeUpstreams is an in-memory Upstreams.
type fakeUpstreams struct {
	mu sync.Mutex
	m  map[string]vault.Upstream
}

func (f *fakeUpstreams) Upstream(_ context.Context, name string) (vault.Upstream, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	u, ok := f.m[name]
	if !ok {
		return vault.Upstream{}, vault.ErrNotFound
	}
	return u, nil
}

func (f *fakeUpstreams) put(u vault.Upstream) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.m[u.Name] = u
}

// fakeCredentials injects realSecret (or secret, when set) as a bearer token, or as the
// upstream's header or query parameter.
type fakeCredentials struct {
	fail   atomic.Bool
	secret atomic.Pointer[string]
}

func (f *fakeCredentials) Inject(_ context.Context, u vault.Upstream, r *http.Request) error {
	if f.fail.Load() {
		return errors.New("no secret stored")
	}
	secret := realSecret
	if s := f.secret.Load(); s != nil {
		secret = *s
	}
	switch u.Auth {
	case vault.AuthHeader:
		r.Header.Set(u.Param, secret)
	case vault.AuthQuery:
		q := r.URL.Query()
		q.Set(u.Param, secret)
		r.URL.RawQuery = q.Encode()
	default:
		r.Header.Set("Authorization", "Bearer "+secret)
	}
	return nil
}

// fakeTasks is an in-memory Tasks whose UseBudgets is atomic and all or nothing (one mutex).
type fakeTasks struct {
	mu     sync.Mutex
	tasks  map[string]delegation.Task
	grants map[string]delegation.Grant
	counts map[string]int64
}

func (f *fakeTasks) GetTask(_ context.Context, id string) (delegation.Task, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.tasks[id]
	if !ok {
		return delegation.Task{}, delegation.ErrNotFound
	}
	return t, nil
}

// GetGrant returns a grant put there, or an active grant without limits.
func (f *fakeTasks) GetGrant(_ context.Context, id string) (delegation.Grant, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if g, ok := f.grants[id]; ok {
		return g, nil
	}
	return delegation.Grant{ID: id, Status: delegation.GrantActive}, nil
}

func (f *fakeTasks) UseBudgets(_ context.Context, counters []delegation.BudgetCounter) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range counters {
		if f.counts[c.Grant+c.Task+"\x00"+c.Key] >= c.Max {
			return &delegation.BudgetExhaustedError{Counter: c}
		}
	}
	for _, c := range counters {
		f.counts[c.Grant+c.Task+"\x00"+c.Key]++
	}
	return nil
}

func (f *fakeTasks) putGrant(g delegation.Grant) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.grants[g.ID] = g
}

func (f *fakeTasks) put(t delegation.Task) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tasks[t.ID] = t
}

// fakeAudit keeps events in memory.
type fakeAudit struct {
	mu     sync.Mutex
	events []audit.Event
	settle func() // waits until the proxy has written every event of the calls it answered
}

func (f *fakeAudit) AppendEvent(_ context.Context, ev audit.Event) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.events = append(f.events, ev)
	return nil
}

func (f *fakeAudit) ListEvents(_ context.Context, _ audit.Filter) ([]audit.Event, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]audit.Event(nil), f.events...), nil
}

// all returns the events once the proxy has written those of every call it answered.
func (f *fakeAudit) all() []audit.Event {
	if f.settle != nil {
		f.settle()
	}
	return f.snapshot()
}

// snapshot returns the events written so far (while a call is being served).
func (f *fakeAudit) snapshot() []audit.Event {
	evs, _ := f.ListEvents(context.Background(), audit.Filter{})
	return evs
}

// last returns the event of the latest call: the one made last (completions are written by
// several writers, so the trail's order may put an earlier call's completion after it).
func (f *fakeAudit) last(t testing.TB) audit.Event {
	t.Helper()
	// The event is written after the response: wait until the proxy has written it.
	if f.settle != nil {
		f.settle()
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		evs := f.all()
		if len(evs) > 0 {
			latest := evs[0]
			for _, ev := range evs[1:] {
				if !ev.Time.Before(latest.Time) {
					latest = ev
				}
			}
			return latest
		}
		if time.Now().After(deadline) {
			t.Fatal("no audit event")
		}
		time.Sleep(time.Millisecond)
	}
}

// fakeStatus is a verify.StatusSource with a set of revoked ids (tokens, tasks, agents).
type fakeStatus struct {
	mu      sync.Mutex
	revoked map[string]bool
}

func (f *fakeStatus) Check(_ context.Context, c *verify.Caller) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, id := range []string{c.JTI, c.Task, c.Grant, c.AgentID} {
		if f.revoked[id] {
			return fmt.Errorf("%s is revoked: %w", id, verify.ErrRevoked)
		}
	}
	return nil
}

func (f *fakeStatus) revoke(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.revoked[id] = true
}

// env is a proxy on a real listener, its issuer key, fakes and a recording upstream.
type env struct {
	t         testing.TB
	issuer    string
	key       ed25519.PrivateKey
	proxy     *Proxy
	srv       *httptest.Server
	upstreams *fakeUpstreams
	creds     *fakeCredentials
	tasks     *fakeTasks
	audit     *fakeAudit
	status    *fakeStatus
	agent     ed25519.PrivateKey
	jkt       string
	client    *http.Client

	up     *httptest.Server // the upstream "api", AllowPrivate, routes below
	upMu   sync.Mutex
	upReqs []*http.Request // what the upstream received (headers and URL; bodies drained)
	upBody [][]byte
	upFunc atomic.Pointer[http.HandlerFunc] // overrides the upstream's answer

	accessLog syncbuf.Buffer // the access log of httpapi.Middleware in front of the proxy, as in the server
}

type envOpts struct {
	cfg func(*Config)
}

func newEnv(t testing.TB, opts ...envOpts) *env {
	t.Helper()
	e := &env{t: t,
		upstreams: &fakeUpstreams{m: map[string]vault.Upstream{}},
		creds:     &fakeCredentials{},
		tasks:     &fakeTasks{tasks: map[string]delegation.Task{}, grants: map[string]delegation.Grant{}, counts: map[string]int64{}},
		audit:     &fakeAudit{},
		status:    &fakeStatus{revoked: map[string]bool{}},
	}
	_, e.key, _ = ed25519.GenerateKey(rand.Reader)
	_, e.agent, _ = ed25519.GenerateKey(rand.Reader)
	e.jkt, _ = dpop.Thumbprint(e.agent.Public())

	e.up = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f := e.upFunc.Load(); f != nil {
			// A custom answer reads the body itself (it may be huge): record the request only.
			e.upMu.Lock()
			e.upReqs = append(e.upReqs, r)
			e.upBody = append(e.upBody, nil)
			e.upMu.Unlock()
			(*f)(w, r)
			return
		}
		body, _ := io.ReadAll(r.Body)
		e.upMu.Lock()
		e.upReqs = append(e.upReqs, r)
		e.upBody = append(e.upBody, body)
		e.upMu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{"path": r.URL.Path, "raw": r.URL.EscapedPath()})
	}))
	t.Cleanup(e.up.Close)

	var h atomic.Pointer[http.Handler]
	e.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { (*h.Load()).ServeHTTP(w, r) }))
	t.Cleanup(e.srv.Close)
	e.issuer = e.srv.URL

	cfg := Config{
		Issuer: e.issuer, Upstreams: e.upstreams, Credentials: e.creds, Tasks: e.tasks, Audit: e.audit,
		Verifier: func(aud string) (*verify.Verifier, error) {
			return verify.New(verify.Config{Issuer: e.issuer, Audience: aud, BaseURL: e.issuer,
				Keys: verify.StaticKeys{"k1": e.key.Public()}, Status: e.status})
		},
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	for _, o := range opts {
		if o.cfg != nil {
			o.cfg(&cfg)
		}
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.proxy = p
	t.Cleanup(func() { _ = p.Close(context.Background()) })
	if fa, ok := cfg.Audit.(*fakeAudit); ok {
		fa.settle = e.settle
	}
	mux := http.NewServeMux()
	mux.Handle(Pattern, p)
	mux.HandleFunc(MetadataPattern, p.Metadata)
	// The server's middleware in front, as in internal/server: request ids, the request's origin
	// (user agent, the client's request id) and one access log line per request.
	var handler http.Handler = httpapi.Middleware(slog.New(slog.NewTextHandler(&e.accessLog, nil)),
		httpapi.NewMetrics(prometheus.NewRegistry()), p.Guard(mux))
	h.Store(&handler)

	e.upstreams.put(vault.Upstream{Name: "api", BaseURL: e.up.URL + "/base", Auth: vault.AuthBearer, AllowPrivate: true, Routes: []vault.Route{
		{Scope: "api:read", Methods: []string{"GET"}, Paths: []string{"/v3/site-explorer/*", "/items/**"}},
		{Scope: "api:write", Methods: []string{"POST", "PUT"}, Paths: []string{"/items/**", "/upload"}},
		{Scope: "api:send", Methods: []string{"POST"}, Paths: []string{"/emails"}, Body: []vault.BodyRule{
			{Detail: "recipient_domains", Pointer: "/to", Match: MatchEmailDomain},
			{Detail: "recipient_domains", Pointer: "/cc", Match: MatchEmailDomain},
			{Detail: "from", Pointer: "/from", Match: MatchEquals},
			{Detail: "subject_prefix", Pointer: "/subject", Match: MatchPrefix},
			{Detail: "max_amount", Pointer: "/items/*/amount", Match: MatchMax},
		}},
		{Scope: "api:redirect", Methods: []string{"GET"}, Paths: []string{"/redirect/**"}},
	}})
	e.tasks.put(delegation.Task{ID: "tsk_1", GrantID: "gr_1", Status: delegation.TaskActive, ExpiresAt: time.Now().Add(time.Hour)})
	e.client = &http.Client{
		Transport:     &http.Transport{MaxIdleConnsPerHost: 100, DisableCompression: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	t.Cleanup(e.client.CloseIdleConnections)
	return e
}

// tokenOpts shape a minted token.
type tokenOpts struct {
	scope    string
	aud      string // default {issuer}/proxy/api
	task     string // "-" = a self token (no txn, no act)
	details  []map[string]any
	upstream string // default api
}

// token mints a DPoP-bound access token for the test agent, signed with go-jose.
func (e *env) token(o tokenOpts) string {
	e.t.Helper()
	if o.upstream == "" {
		o.upstream = "api"
	}
	if o.aud == "" {
		o.aud = e.issuer + "/proxy/" + o.upstream
	}
	if o.task == "" {
		o.task = "tsk_1"
	}
	now := time.Now()
	jtiB := make([]byte, 9)
	_, _ = rand.Read(jtiB)
	claims := map[string]any{
		"iss": e.issuer, "aud": []string{o.aud}, "scope": o.scope,
		"exp": now.Add(5 * time.Minute).Unix(), "iat": now.Unix(), "jti": "tok_" + base64.RawURLEncoding.EncodeToString(jtiB),
		"client_id": "agt_1", "cnf": map[string]any{"jkt": e.jkt}, "handle": "researcher", "did": "did:key:z6Mk-test",
	}
	if o.task == "-" {
		claims["sub"] = "agt_1"
	} else {
		claims["sub"] = "usr_1"
		claims["txn"] = o.task
		claims["grant"] = "gr_1"
		claims["act"] = map[string]any{"sub": "agt_1", "handle": "researcher", "did": "did:key:z6Mk-test", "txn": o.task,
			"act": map[string]any{"sub": "agt_0", "handle": "lead", "did": "did:key:z6Mk-lead", "txn": "tsk_0"}}
	}
	if o.details != nil {
		claims["authorization_details"] = o.details
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA, Key: e.key},
		(&jose.SignerOptions{}).WithType("at+jwt").WithHeader("kid", "k1"))
	if err != nil {
		e.t.Fatal(err)
	}
	tok, err := jwt.Signed(signer).Claims(claims).Serialize()
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

// request builds a request to the proxy with the token and a fresh proof for it.
func (e *env) request(method, path, tok string, body io.Reader) *http.Request {
	e.t.Helper()
	req, err := http.NewRequest(method, e.issuer+path, body)
	if err != nil {
		e.t.Fatal(err)
	}
	e.sign(req, tok)
	return req
}

func (e *env) sign(req *http.Request, tok string) {
	e.t.Helper()
	if tok == "" {
		return
	}
	proof, err := dpop.NewProof(e.agent, req.Method, req.URL.String(), dpop.ProofOptions{AccessToken: tok})
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Authorization", "DPoP "+tok)
	req.Header.Set("DPoP", proof)
}

// do sends req and returns the status and body.
func (e *env) do(req *http.Request) (*http.Response, string) {
	e.t.Helper()
	resp, err := e.client.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// raw sends one request exactly as written (request line and headers) on a new connection
// and returns the status code.
func (e *env) raw(requestLine string, headers ...string) int {
	e.t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(e.issuer, "http://"))
	if err != nil {
		e.t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	host := strings.TrimPrefix(e.issuer, "http://")
	hasHost := false
	for _, h := range headers {
		if strings.HasPrefix(strings.ToLower(h), "host:") {
			hasHost = true
		}
	}
	var b strings.Builder
	b.WriteString(requestLine + "\r\n")
	if !hasHost {
		b.WriteString("Host: " + host + "\r\n")
	}
	for _, h := range headers {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("Connection: close\r\n\r\n")
	if _, err := io.WriteString(conn, b.String()); err != nil {
		e.t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		e.t.Fatalf("%s: %v", requestLine, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// settle waits until the proxy has written the last event of every call it has taken.
func (e *env) settle() {
	e.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for e.proxy.rec.busy.Load() != 0 {
		if time.Now().After(deadline) {
			e.t.Fatal("the proxy did not write its events")
		}
		time.Sleep(100 * time.Microsecond)
	}
}

func (e *env) upstreamRequests() []*http.Request {
	e.upMu.Lock()
	defer e.upMu.Unlock()
	return append([]*http.Request(nil), e.upReqs...)
}

func (e *env) setUpstreamHandler(f http.HandlerFunc) { e.upFunc.Store(&f) }
