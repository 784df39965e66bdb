// Package proxy is mandate's egress proxy. An agent calls {issuer}/proxy/{upstream}/{path…} with a
// DPoP-bound task token; the proxy checks the token and its proof, the path, the route the
// token's scopes allow, the body against the token's authorization_details, and the task's
// budget, then replaces the agent's credentials with the upstream's real one and streams the call
// to the upstream's base URL only, through a dialer that refuses private addresses. A call is
// forwarded only once its pending audit record is durable, and completed by a second event
// (record.go); a refused call is one event. Agents never hold upstream secrets.
//
// The rules are described in docs/proxy.md.
package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/delegation"
	"github.com/mandate-dev/mandate/internal/httpapi"
	"github.com/mandate-dev/mandate/internal/ids"
	"github.com/mandate-dev/mandate/internal/token"
	"github.com/mandate-dev/mandate/internal/vault"
	"github.com/mandate-dev/mandate/verify"
)

// ActionCall is the audit action of a proxied call.
const ActionCall = "proxy.call"

// DefaultMaxBodyRuleBytes is how much of a body the proxy reads to check body rules.
const DefaultMaxBodyRuleBytes = 1 << 20

// Upstreams finds an upstream by name (vault.Service). An unknown name is vault.ErrNotFound or
// an apperr NotFound.
type Upstreams interface {
	Upstream(ctx context.Context, name string) (vault.Upstream, error)
}

// Credentials puts an upstream's real credential into an outbound request (vault.Service).
type Credentials interface {
	Inject(ctx context.Context, u vault.Upstream, r *http.Request) error
}

// Tasks reads tasks and their grants and counts their budgets (the delegation store).
// UseBudgets counts a call against every counter or none, and returns a
// *delegation.BudgetExhaustedError naming the one that is used up.
type Tasks interface {
	GetTask(ctx context.Context, id string) (delegation.Task, error)
	GetGrant(ctx context.Context, id string) (delegation.Grant, error)
	UseBudgets(ctx context.Context, counters []delegation.BudgetCounter) error
}

// PendingUsing writes a call's pending record and uses up single-use ids in one transaction,
// writing nothing and returning dpop.ErrReplay (wrapped) when one was used before.
type PendingUsing interface {
	AppendEventUsing(ctx context.Context, ev audit.Event, uses []token.SingleUse) error
}

// Timeouts bound the stages of a call. Zero fields take the defaults in brackets.
type Timeouts struct {
	Dial           time.Duration // resolve and connect [10s]
	TLSHandshake   time.Duration // [10s]
	ResponseHeader time.Duration // from the request sent to the upstream's response headers [60s]
	Idle           time.Duration // no byte moved in either direction while streaming [2m]
	IdleConn       time.Duration // an unused upstream connection is closed after [90s]
}

// Config configures a Proxy. Issuer, Upstreams, Credentials, Tasks, Verifier and Audit are
// required.
type Config struct {
	Issuer      string // the proxy lives at Issuer + "/proxy/"; the resource of upstream u is Issuer + "/proxy/" + u
	Upstreams   Upstreams
	Credentials Credentials
	Tasks       Tasks
	// Verifier builds the token and DPoP verifier for one audience ({issuer}/proxy/{name}), with
	// BaseURL = Issuer. The proxy builds one per upstream and keeps it. It should not set OnDeny:
	// the proxy records every call, refused or not, itself.
	Verifier func(audience string) (*verify.Verifier, error)
	// Audit records every call. A call is forwarded only once its pending record is written
	// (AppendEvent returned nil).
	Audit audit.Store
	// ProofUses, when set, writes each pending record instead of Audit, using up the call's
	// DPoP proof (verify.Caller.ProofID, as "dpop:"+id) in the same commit: replicas sharing
	// the database then refuse a proof any one of them accepted — 401 invalid_dpop_proof,
	// reason token_replay, recorded, nothing forwarded — at the cost of one row in a commit
	// made anyway. nil = the verifiers' replay stores alone decide (one process).
	ProofUses PendingUsing
	// ProofNotUsed, when set, is called with the proof id (verify.Caller.ProofID) of a call
	// refused as unavailable (503): nothing was done with it, so a replay store in front of a
	// shared one may forget it, and the client's retry is judged afresh.
	ProofNotUsed func(proofID string)
	// AuditKey keys the hashes of query values in audit events (HMAC-SHA256). The server derives
	// it from the master key, so every replica hashes a value alike; nil = a random key for
	// this process (hashes then compare only within it).
	AuditKey []byte
	// SignAssertion signs an identity assertion (a TxnToken, typ TypeTxnToken) with the server's
	// token signing keys, for upstreams marked IdentityAssertion; nil = such upstreams' calls
	// are refused.
	SignAssertion func(ctx context.Context, typ string, claims any) (string, error)
	// CompletionQueue is how many completion events may wait to be written (0 = 4096); past
	// it a call writes its own before it returns.
	CompletionQueue int

	Resolver        Resolver    // nil = net.DefaultResolver
	Dialer          Dialer      // dials the checked IP; nil = a net.Dialer
	TLSClientConfig *tls.Config // for upstream connections; nil = system roots
	Timeouts        Timeouts
	// MaxBodyRuleBytes is the largest body read to check body rules (default 1 MiB); a larger
	// one is refused with 413.
	MaxBodyRuleBytes int64
	Metrics          prometheus.Registerer // nil = metrics are kept but not registered
	Log              *slog.Logger          // nil = slog.Default()
	Now              func() time.Time      // for audit events; nil = time.Now
}

// Validate reports every problem with cfg at once.
func (cfg *Config) Validate() error {
	var problems []error
	if cfg.Issuer == "" {
		problems = append(problems, errors.New("Issuer is required"))
	} else if u, err := url.Parse(cfg.Issuer); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		problems = append(problems, fmt.Errorf("Issuer %q must be an http(s) URL", cfg.Issuer))
	}
	if cfg.Upstreams == nil {
		problems = append(problems, errors.New("Upstreams is required"))
	}
	if cfg.Credentials == nil {
		problems = append(problems, errors.New("Credentials is required"))
	}
	if cfg.Tasks == nil {
		problems = append(problems, errors.New("Tasks is required"))
	}
	if cfg.Verifier == nil {
		problems = append(problems, errors.New("Verifier is required"))
	}
	if cfg.Audit == nil {
		problems = append(problems, errors.New("Audit is required"))
	}
	if cfg.MaxBodyRuleBytes < 0 {
		problems = append(problems, errors.New("MaxBodyRuleBytes must not be negative"))
	}
	if cfg.CompletionQueue < 0 {
		problems = append(problems, errors.New("CompletionQueue must not be negative"))
	}
	if len(problems) > 0 {
		return fmt.Errorf("proxy: invalid config: %w", errors.Join(problems...))
	}
	return nil
}

// Proxy is the egress proxy. It is safe for concurrent use.
type Proxy struct {
	cfg     Config
	issuer  string // without a trailing slash
	host    string // the issuer's host[:port]: the only Host header accepted
	scheme  string
	log     *slog.Logger
	rp      *httputil.ReverseProxy
	metrics *metrics
	rec     *recorder

	verifiers sync.Map // upstream name -> *verify.Verifier

	mu         sync.Mutex
	transports map[string]*upstreamTransport
}

// New checks cfg and returns a Proxy.
func New(cfg Config) (*Proxy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	t := &cfg.Timeouts
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&t.Dial, 10*time.Second)
	def(&t.TLSHandshake, 10*time.Second)
	def(&t.ResponseHeader, 60*time.Second)
	def(&t.Idle, 2*time.Minute)
	def(&t.IdleConn, 90*time.Second)
	if cfg.MaxBodyRuleBytes == 0 {
		cfg.MaxBodyRuleBytes = DefaultMaxBodyRuleBytes
	}
	if cfg.Resolver == nil {
		cfg.Resolver = net.DefaultResolver
	}
	if cfg.Dialer == nil {
		cfg.Dialer = &net.Dialer{KeepAlive: 30 * time.Second}
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.AuditKey == nil {
		cfg.AuditKey = make([]byte, 32)
		_, _ = rand.Read(cfg.AuditKey)
	}
	if cfg.CompletionQueue == 0 {
		cfg.CompletionQueue = 4096
	}
	m, err := newMetrics(cfg.Metrics)
	if err != nil {
		return nil, err
	}
	iss, _ := url.Parse(cfg.Issuer)
	p := &Proxy{
		cfg:        cfg,
		issuer:     strings.TrimSuffix(cfg.Issuer, "/"),
		host:       iss.Host,
		scheme:     iss.Scheme,
		log:        cfg.Log,
		metrics:    m,
		transports: map[string]*upstreamTransport{},
		rec:        newRecorder(cfg.Audit, cfg.Log, cfg.CompletionQueue),
	}
	p.rp = &httputil.ReverseProxy{
		Rewrite:        p.rewrite,
		Transport:      roundTripper{p},
		ModifyResponse: p.modifyResponse,
		ErrorHandler:   p.errorHandler,
		BufferPool:     bufferPool{},
		ErrorLog:       slog.NewLogLogger(cfg.Log.Handler(), slog.LevelDebug),
	}
	return p, nil
}

// Close writes the completion events still queued and stops their writers; call it once the
// server has stopped serving (calls after it write their own). It returns when every one is
// written or ctx ends.
func (p *Proxy) Close(ctx context.Context) error { return p.rec.close(ctx) }

// Wait returns once every call taken so far has written its last event, or ctx ends: for
// shutdown, and for tests that read the trail after a call.
func (p *Proxy) Wait(ctx context.Context) error {
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	for p.rec.busy.Load() != 0 {
		select {
		case <-ctx.Done():
			return fmt.Errorf("proxy: calls still being recorded: %w", ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// Resource is the resource URI (audience) of an upstream.
func (p *Proxy) Resource(name string) string { return p.issuer + PathPrefix + name }

// call is the state of one request, for the audit event and the forwarding steps. It travels in
// the outbound request's context (request-scoped).
type call struct {
	start  time.Time
	reqID  string       // the server's request id: events, the refusal body, Mandate-Request-Id
	origin audit.Origin // what the agent sent about itself (user agent, its own request id): masked in events
	// pendingTried is the id of a pending record whose write failed: the refusal names it.
	pendingTried string
	method       string
	name         string // the upstream's name, once known to exist
	upstream     vault.Upstream
	target       target
	base         *url.URL
	tr           *upstreamTransport
	caller       *verify.Caller
	pattern      string
	task         delegation.Task
	mask         *masker // finds the credential injected, to keep it out of the response

	rawQuery  string       // as the agent sent it: the trail keeps names and keyed hashes
	pending   *audit.Event // written before the call left; nil when it never did
	traceID   string       // of the traceparent sent
	assertion string       // the Txn-Token sent, for an upstream that asks for one

	outcome audit.Outcome
	reason  string
	detail  string // the refusal or failure, for the audit event

	forwarded   bool
	gotResponse bool
	w           *countingWriter
	in          *countingReader
	formKind    int    // the body is a form (formOf): scanned for method overrides
	boundary    string // of a multipart form
	form        *formReader
	stream      *streamGuard
}

type callKey struct{}

func callFrom(ctx context.Context) *call {
	c, _ := ctx.Value(callKey{}).(*call)
	return c
}

// ServeHTTP handles {issuer}/proxy/{upstream}/{path…}.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.rec.busy.Add(1) // until the call's last event is written
	c := &call{start: time.Now(), method: r.Method, outcome: audit.OutcomeDenied, reqID: httpapi.RequestID(r.Context()),
		origin: audit.OriginFrom(r.Context())}
	if c.reqID == "" {
		c.reqID = ids.New("req") // served without the server's middleware (tests, embedding)
	}
	c.w = &countingWriter{ResponseWriter: w, c: c}
	defer func() {
		rec := recover()
		httpapi.SetLogPath(r.Context(), logPath(c))
		p.finish(r, c, rec)
		if rec != nil {
			panic(rec)
		}
	}()
	if e := p.serve(c.w, r, c); e != nil {
		c.outcome, c.reason, c.detail = e.outcome, e.reason, e.desc
		if c.outcome == "" {
			c.outcome = audit.OutcomeDenied
		}
		p.writeRefusal(c.w, r, c, e)
	}
}

// logPath is what the access log shows of c's path: the agent may have written the upstream's
// credential into it, so it is shown masked as in the audit event, or, before the credential is
// known (a refusal), not at all: the log line's request id leads to the event, masked there.
func logPath(c *call) string {
	switch {
	case c.name == "":
		return PathPrefix + "(unknown upstream)"
	case c.mask == nil:
		return PathPrefix + c.name + "/(path in the audit event)"
	}
	return PathPrefix + c.name + auditText(c.target.rawPath, maxAuditPath, c.mask, url.PathUnescape)
}

// serve runs the checks in order and forwards the call. A refusal before forwarding is
// returned; errors while forwarding are answered by errorHandler.
func (p *Proxy) serve(w http.ResponseWriter, r *http.Request, c *call) *refusal {
	ctx := r.Context()

	// 1. The request target and Host: the client never chooses the upstream's host or scheme.
	t, reason := parseTarget(r.RequestURI)
	switch reason {
	case "":
	case reasonAbsoluteURL:
		return refuse(http.StatusBadRequest, "invalid_request", reasonAbsoluteURL, "send the request to the proxy in origin form (a path), not as an absolute URL")
	case reasonUnknownUpstream:
		return refuse(http.StatusNotFound, "not_found", reasonUnknownUpstream, "no such upstream")
	default:
		return refuse(http.StatusBadRequest, "invalid_request", reasonBadPath,
			"the path is refused: no . or .. segments, empty segments, encoded dots, slashes, backslashes or percent signs, backslashes or control characters")
	}
	if !sameHost(r.Host, p.host, p.scheme) {
		return refuse(http.StatusBadRequest, "invalid_request", reasonHost, "the Host header must name this server")
	}
	c.target = t
	c.rawQuery = r.URL.RawQuery

	// 2. The upstream.
	u, err := p.cfg.Upstreams.Upstream(ctx, t.name)
	if err != nil {
		if isNotFound(err) {
			return refuse(http.StatusNotFound, "not_found", reasonUnknownUpstream, "no such upstream")
		}
		return p.failure(ctx, http.StatusServiceUnavailable, "temporarily_unavailable", reasonInternal, "the upstream cannot be read right now; try again later", err)
	}
	c.name, c.upstream = u.Name, u

	// 3. The token and its proof, for audience {issuer}/proxy/{name}.
	v, err := p.verifier(t.name)
	if err != nil {
		return p.failure(ctx, http.StatusInternalServerError, "server_error", reasonInternal, "the request could not be verified", err)
	}
	caller, err := v.Verify(ctx, r)
	if err != nil {
		var ve *verify.Error
		if !errors.As(err, &ve) {
			return p.failure(ctx, http.StatusInternalServerError, "server_error", reasonInternal, "the request could not be verified", err)
		}
		e := refuse(ve.Status, ve.Code, "token_"+ve.Reason, ve.Description)
		e.challenge, e.nonce = true, ve.Nonce
		// A token whose signature verified (revoked, replayed proof, …): the refusal is
		// recorded as that agent's, for its principal and task.
		c.caller = ve.Caller
		if ve.Status >= 500 {
			e.outcome = audit.OutcomeFailure
		}
		return e
	}
	c.caller = caller

	// 4. A task token: the proxy counts calls against a task.
	if caller.Task == "" {
		e := refuse(http.StatusForbidden, "insufficient_scope", reasonSelfToken,
			"the proxy needs a task token, not the agent's own token: use mandate exec or mandate task start")
		e.challenge = true
		return e
	}

	// 5. The route the token's scopes allow.
	var e *refusal
	m, d := matchRoute(&c.upstream, caller.HasScope, r.Method, t.path)
	if d != nil {
		return routeRefusal(d, u.Name, r.Method)
	}
	c.pattern = m.pattern

	// 6. The task: still active, and its limits.
	task, err := p.cfg.Tasks.GetTask(ctx, caller.Task)
	if errors.Is(err, delegation.ErrNotFound) {
		e := refuse(http.StatusUnauthorized, "invalid_token", reasonTaskEnded, "the token's task does not exist")
		e.challenge = true
		return e
	}
	if err != nil {
		return p.failure(ctx, http.StatusServiceUnavailable, "temporarily_unavailable", reasonInternal, "the task cannot be read right now; try again later", err)
	}
	if task.Status != delegation.TaskActive || !p.cfg.Now().Before(task.ExpiresAt) {
		e := refuse(http.StatusUnauthorized, "invalid_token", reasonTaskEnded, "the token's task has ended: start a new task")
		e.challenge = true
		return e
	}
	c.task = task
	maxBytes, limited := task.Budget[delegation.BudgetMaxRequestBytes]
	if limited && maxBytes >= 0 && r.ContentLength > maxBytes {
		return refuse(http.StatusRequestEntityTooLarge, "request_too_large", reasonRequestTooLarge,
			fmt.Sprintf("the request body is larger than the task's max_request_bytes (%d)", maxBytes))
	}
	if !limited || maxBytes < 0 {
		maxBytes = -1
	}

	// 7. Body rules, when the route has some and the token narrows them.
	if len(m.route.Body) > 0 {
		if details := detailsOfType(caller.AuthorizationDetails, u.Name); len(details) > 0 {
			if e = p.checkBody(r, m.route.Body, details, t.path, maxBytes); e != nil {
				return e
			}
		}
	}

	// A form or JSON body may set the method; the header says whether it is one and how the
	// upstream reads it. Its fields are read as it streams (step 9).
	if c.formKind, c.boundary, e = formOf(r); e != nil {
		return e
	}

	// 8. The budget, last, so refused calls cost nothing. One call counts against the grant's
	// total and each task of its chain at once, all or nothing, so a refused call never counts.
	if delegation.HasCallBudget(task.Budget, u.Name) {
		if e := p.useBudget(ctx, task, u.Name); e != nil {
			return e
		}
	}

	// 9. Forward.
	base, tr, err := p.transport(u)
	if err != nil {
		return p.failure(ctx, http.StatusBadGateway, "bad_gateway", reasonInternal, "the upstream's base URL is not usable", err)
	}
	c.base, c.tr = base, tr
	if u.IdentityAssertion {
		if c.assertion, err = p.assertion(ctx, c); err != nil {
			return p.failure(ctx, http.StatusInternalServerError, "server_error", reasonInternal, "the identity assertion for this upstream could not be signed", err)
		}
	}
	p.forward(w, r, c, maxBytes)
	return nil
}

// taskChain is the task and its ancestors, the top one first.
func (p *Proxy) taskChain(ctx context.Context, task delegation.Task) ([]delegation.Task, error) {
	chain := []delegation.Task{task}
	for t := task; t.ParentID != "" && len(chain) <= delegation.MaxDepthLimit; {
		parent, err := p.cfg.Tasks.GetTask(ctx, t.ParentID)
		if err != nil {
			return nil, fmt.Errorf("parent task %s: %w", t.ParentID, err)
		}
		chain = append([]delegation.Task{parent}, chain...)
		t = parent
	}
	return chain, nil
}

// useBudget counts one call to upstream against the counters of task's grant and chain
// (delegation.CallCounters).
func (p *Proxy) useBudget(ctx context.Context, task delegation.Task, upstream string) *refusal {
	chain, err := p.taskChain(ctx, task)
	var g delegation.Grant
	if err == nil {
		g, err = p.cfg.Tasks.GetGrant(ctx, task.GrantID)
	}
	if err == nil {
		err = p.cfg.Tasks.UseBudgets(ctx, delegation.CallCounters(g, chain, upstream))
	}
	var spent *delegation.BudgetExhaustedError
	switch {
	case errors.As(err, &spent):
		return refuse(http.StatusTooManyRequests, "budget_exhausted", reasonBudget, budgetSpent(spent.Counter, g.Limits.Budget, task.ID, upstream))
	case err != nil:
		return p.failure(ctx, http.StatusServiceUnavailable, "temporarily_unavailable", reasonInternal, "the task's budget cannot be counted right now; try again later", err)
	}
	return nil
}

// budgetSpent tells the caller which budget is used up, and what to do. A task's own budget may
// be bounded by the grant's task_calls: then a new task gets no more than that.
func budgetSpent(c delegation.BudgetCounter, grant map[string]int64, taskID, upstream string) string {
	what := "calls through the proxy"
	if c.Key != delegation.BudgetCalls {
		what = "calls to " + upstream
	}
	switch {
	case c.Grant != "":
		return fmt.Sprintf("grant %s's budget of %d %s, shared by all its tasks, is used up: ask the grant's owner for a new grant", c.Grant, c.Max, what)
	case c.Task == taskID:
		perTask := delegation.BudgetTaskCalls + strings.TrimPrefix(c.Key, delegation.BudgetCalls)
		bound, bounded := grant[perTask]
		switch {
		case bounded && bound <= c.Max:
			return fmt.Sprintf("the task's budget of %d %s is used up, the most the grant's %s (%d) allows a task: ask the grant's owner for a new grant", c.Max, what, perTask, bound)
		case bounded:
			return fmt.Sprintf("the task's budget of %d %s is used up: start a new task with a larger budget, within the grant's %s (%d)", c.Max, what, perTask, bound)
		}
		return fmt.Sprintf("the task's budget of %d %s is used up: start a new task with a larger budget", c.Max, what)
	}
	return fmt.Sprintf("task %s's budget of %d %s, which counts the calls of the tasks it handed on, is used up", c.Task, c.Max, what)
}

// checkBody reads the body (up to MaxBodyRuleBytes), checks it and the headers that say how to
// read it against the rules, and puts it back for forwarding with one normalised Content-Type:
// the upstream parses exactly what was checked.
func (p *Proxy) checkBody(r *http.Request, rules []vault.BodyRule, details []map[string]any, path string, maxBytes int64) *refusal {
	if !identityOnly(r.Header) {
		return refuse(http.StatusUnsupportedMediaType, "invalid_request", reasonBodyEncoding,
			"this route's body is checked against your authorization_details: send it without Content-Encoding")
	}
	mediaType, e := jsonMediaType(r.Header)
	if e != nil {
		return e
	}
	if mediaType == "" && r.ContentLength != 0 {
		return refuse(http.StatusUnsupportedMediaType, "invalid_request", reasonBodyContentType,
			"this route's body is checked against your authorization_details: send it with Content-Type: application/json")
	}
	// A field the upstream could also read from the query or path parameters would slip past.
	if field := fieldOutsideBody(r.URL.RawQuery, path, ruleFields(rules)); field != "" {
		return refuse(http.StatusForbidden, "insufficient_scope", reasonBodyRule,
			fmt.Sprintf("%s is checked in the body against your authorization_details: it may not be sent in the query or as a path parameter, in any spelling", apperr.Clip(field, 40)))
	}
	limit := p.cfg.MaxBodyRuleBytes
	if r.ContentLength > limit {
		return refuse(http.StatusRequestEntityTooLarge, "request_too_large", reasonBodyTooLarge,
			fmt.Sprintf("this route's body is checked against your authorization_details and may be at most %d bytes", limit))
	}
	var body []byte
	if r.Body != nil && r.Body != http.NoBody {
		b, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
		if err != nil {
			return refuse(http.StatusBadRequest, "invalid_request", reasonBodyInvalid, "the request body could not be read")
		}
		if int64(len(b)) > limit {
			return refuse(http.StatusRequestEntityTooLarge, "request_too_large", reasonBodyTooLarge,
				fmt.Sprintf("this route's body is checked against your authorization_details and may be at most %d bytes", limit))
		}
		body = b
	}
	if maxBytes >= 0 && int64(len(body)) > maxBytes {
		return refuse(http.StatusRequestEntityTooLarge, "request_too_large", reasonRequestTooLarge,
			fmt.Sprintf("the request body is larger than the task's max_request_bytes (%d)", maxBytes))
	}
	if d := checkBody(rules, details, body); d != nil {
		code := "insufficient_scope"
		if d.status == http.StatusBadRequest {
			code = "invalid_request"
		}
		e := refuse(d.status, code, d.reason, d.desc)
		e.challenge = d.status == http.StatusForbidden
		return e
	}
	// Forward what was checked: these bytes, with this length, no trailers, no coding, and the
	// one media type (a JSON body is UTF-8, so no charset).
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.ContentLength = int64(len(body))
	r.TransferEncoding, r.Trailer = nil, nil
	if len(body) == 0 {
		r.Body = http.NoBody
	}
	r.Header.Del("Content-Encoding")
	if mediaType != "" {
		r.Header["Content-Type"] = []string{mediaType}
	}
	return nil
}

func (p *Proxy) verifier(name string) (*verify.Verifier, error) {
	if v, ok := p.verifiers.Load(name); ok {
		return v.(*verify.Verifier), nil
	}
	v, err := p.cfg.Verifier(p.Resource(name))
	if err != nil {
		return nil, err
	}
	actual, _ := p.verifiers.LoadOrStore(name, v)
	return actual.(*verify.Verifier), nil
}

func isNotFound(err error) bool {
	if errors.Is(err, vault.ErrNotFound) {
		return true
	}
	e, ok := apperr.As(err)
	return ok && e.Kind == apperr.NotFound
}

// failure is a refusal caused by the server, not the caller: logged with its cause.
func (p *Proxy) failure(ctx context.Context, status int, code, reason, desc string, cause error) *refusal {
	p.log.WarnContext(ctx, "proxy call failed", slog.String("reason", reason), slog.String("error", safeError(cause, nil)))
	e := refuse(status, code, reason, desc)
	e.outcome = audit.OutcomeFailure
	return e
}

// safeError is err's text for a log line or an audit detail: without any URL (which may carry
// an injected query credential), and with every form of the injected credential masked when m
// is the call's masker (the transport quotes an upstream's malformed answer in its errors:
// `malformed HTTP response "sk_live_…"`). Every error of a call that injected a credential is
// logged through it.
func safeError(err error, m *masker) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Op + ": " + safeError(ue.Err, m)
	}
	if err == nil {
		return ""
	}
	if m != nil {
		return m.maskString(err.Error())
	}
	return err.Error()
}

// maskedError is an error read from an upstream's body (a malformed chunk or trailer line is
// quoted in it), whose text has the credential masked: ReverseProxy logs it.
type maskedError struct {
	err error
	m   *masker
}

func (e *maskedError) Error() string { return safeError(e.err, e.m) }
func (e *maskedError) Unwrap() error { return e.err }
