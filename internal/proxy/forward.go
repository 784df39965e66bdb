package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mandate-dev/mandate/dpop"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/token"
	"github.com/mandate-dev/mandate/internal/vault"
)

// upstreamTransport is the connection pool of one upstream, dialing only its host:port.
type upstreamTransport struct {
	base         string
	allowPrivate bool
	url          *url.URL
	t            *http.Transport
	mask         atomic.Pointer[masker] // of the credential last injected
}

// maskerFor returns the masker of the injected values, built once per credential (a rotated
// one gets a new masker). Neither side of the comparison is chosen by the agent.
func (t *upstreamTransport) maskerFor(values []string) *masker {
	if len(values) == 0 {
		return nil
	}
	if m := t.mask.Load(); m != nil && slices.Equal(m.values, values) {
		return m
	}
	m := newMasker(values)
	t.mask.Store(m)
	return m
}

// transport returns the pool for u, building a new one when its base URL or AllowPrivate
// changed (the old one's idle connections are closed).
func (p *Proxy) transport(u vault.Upstream) (*url.URL, *upstreamTransport, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if t, ok := p.transports[u.Name]; ok && t.base == u.BaseURL && t.allowPrivate == u.AllowPrivate {
		return t.url, t, nil
	}
	base, err := url.Parse(u.BaseURL)
	if err != nil || (base.Scheme != "https" && base.Scheme != "http") || base.Host == "" || base.User != nil {
		return nil, nil, fmt.Errorf("upstream %s: base URL %q is not an http(s) URL", u.Name, u.BaseURL)
	}
	base.Path = strings.TrimSuffix(base.Path, "/")
	base.RawPath = strings.TrimSuffix(base.RawPath, "/")
	base.RawQuery, base.Fragment = "", ""
	port := base.Port()
	if port == "" {
		port = "80"
		if base.Scheme == "https" {
			port = "443"
		}
	}
	to := p.cfg.Timeouts
	sd := &safeDialer{
		host:         strings.ToLower(base.Hostname()),
		port:         port,
		allowPrivate: u.AllowPrivate,
		resolver:     p.cfg.Resolver,
		dialer:       p.cfg.Dialer,
		timeout:      to.Dial,
	}
	ht := &http.Transport{
		Proxy:                  nil, // never an environment proxy: the dialer is the egress policy
		DialContext:            sd.DialContext,
		TLSClientConfig:        p.cfg.TLSClientConfig.Clone(),
		TLSHandshakeTimeout:    to.TLSHandshake,
		ResponseHeaderTimeout:  to.ResponseHeader,
		IdleConnTimeout:        to.IdleConn,
		ExpectContinueTimeout:  time.Second,
		MaxIdleConns:           256,
		MaxIdleConnsPerHost:    64,
		MaxResponseHeaderBytes: 1 << 20,
		DisableCompression:     true, // the proxy decides Accept-Encoding (see ownRepresentation)
		ForceAttemptHTTP2:      true,
		WriteBufferSize:        32 << 10,
		ReadBufferSize:         32 << 10,
	}
	if old, ok := p.transports[u.Name]; ok {
		old.t.CloseIdleConnections()
	}
	t := &upstreamTransport{base: u.BaseURL, allowPrivate: u.AllowPrivate, url: base, t: ht}
	p.transports[u.Name] = t
	return base, t, nil
}

// forward streams the call to the upstream through the reverse proxy.
func (p *Proxy) forward(w http.ResponseWriter, r *http.Request, c *call, maxBytes int64) {
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	c.stream = newStreamGuard(w, p.cfg.Timeouts.Idle, cancel)
	defer c.stream.stop()
	r = r.WithContext(context.WithValue(ctx, callKey{}, c))
	// Protocol upgrades (WebSocket, h2c) would leave the proxy's view after the first message:
	// not supported. Without Upgrade, ReverseProxy forwards no upgrade.
	r.Header.Del("Upgrade")
	if r.Body != nil && r.Body != http.NoBody {
		c.in = &countingReader{rc: r.Body, c: c, limit: maxBytes}
		r.Body = c.in
		if c.formKind != 0 {
			c.form = newFormReader(c.in, c.formKind, c.boundary, c.method)
			r.Body = c.form
		}
	}
	c.forwarded = true
	p.rp.ServeHTTP(w, r)
}

// rewrite builds the outbound request: the upstream's scheme and host (never the client's), its
// base path plus the checked path, the query without method overrides, none of the agent's
// credentials or forwarding headers, and the proxy's own: the request id, a trace context and,
// where the upstream asks for one, the identity assertion.
func (p *Proxy) rewrite(pr *httputil.ProxyRequest) {
	c := callFrom(pr.In.Context())
	out := pr.Out
	out.URL = &url.URL{
		Scheme:   c.base.Scheme,
		Host:     c.base.Host,
		Path:     c.base.Path + c.target.path,
		RawPath:  c.base.EscapedPath() + c.target.rawPath,
		RawQuery: stripOverrideParams(out.URL.RawQuery),
	}
	if out.URL.RawPath == out.URL.Path {
		out.URL.RawPath = ""
	}
	out.Host = ""
	// A trailer announced by the agent would be sent after the body, where no header check
	// looks (Trailer: X-HTTP-Method-Override): the outbound request announces and sends none.
	out.Trailer = nil
	stripRequestHeaders(out.Header)
	h := out.Header
	tp, traceID, kept := traceparent(strings.Join(pr.In.Header.Values(HeaderTraceparent), ","), c.reqID)
	c.traceID = traceID
	if !kept {
		delete(h, HeaderTracestate)
	}
	h[HeaderTraceparent] = []string{tp}
	h[HeaderRequestID] = []string{c.reqID}
	if c.assertion != "" {
		h[HeaderTxnToken] = []string{c.assertion}
	}
}

// stripRequestHeaders removes what must not reach an upstream: the agent's credentials
// (Authorization, DPoP, cookies), proxy and forwarding headers, method, URL and host overrides,
// and every hop-by-hop header of RFC 9110 §7.6.1, including those named in Connection. Names
// are compared as CGI gateways see them (PHP, Rack, WSGI): "X_HTTP_Method_Override" reaches the
// application as X-HTTP-Method-Override.
func stripRequestHeaders(h http.Header) {
	for _, v := range h["Connection"] {
		for _, name := range strings.Split(v, ",") {
			if name = strings.TrimSpace(name); name != "" {
				h.Del(name)
			}
		}
	}
	for k := range h {
		if strippedHeader(k) {
			delete(h, k)
		}
	}
	// "TE: trailers" is the one TE value a proxy may pass on (ReverseProxy sets it when the
	// client asked); any other TE is the client's hop only.
	if te := h["Te"]; len(te) > 0 && !(len(te) == 1 && strings.EqualFold(strings.TrimSpace(te[0]), "trailers")) {
		delete(h, "Te")
	}
}

// strippedHeader reports whether a request header never goes to an upstream.
func strippedHeader(k string) bool {
	var buf [48]byte
	n := cgiName(buf[:], k[:min(len(k), len(buf))])
	for _, p := range [...]string{"proxy-", "x-forwarded", "x-envoy-", "mandate-"} {
		if len(n) >= len(p) && string(n[:len(p)]) == p {
			return true
		}
	}
	return len(k) <= len(buf) && strippedHeaders[string(n)]
}

// cgiName is name in lowercase with "_" as "-", written into buf (len(buf) >= len(name)).
func cgiName(buf []byte, name string) []byte {
	b := buf[:len(name)]
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case 'A' <= c && c <= 'Z':
			c += 'a' - 'A'
		case c == '_':
			c = '-'
		}
		b[i] = c
	}
	return b
}

// strippedHeaders are names in cgiName form; the prefixes proxy-, x-forwarded (X-Forwarded,
// X-Forwarded-For, …), x-envoy- (Envoy's original path, original destination host, retry
// and timeout controls) and mandate- (the proxy's own: Mandate-Request-Id) go too.
var strippedHeaders = map[string]bool{
	"authorization": true, "dpop": true, "cookie": true, "cookie2": true,
	// What the proxy itself asserts to the upstream: an agent's own would be a forgery.
	"txn-token": true, "traceparent": true,
	"forwarded": true, "via": true, "max-forwards": true,
	"connection": true, "keep-alive": true, "transfer-encoding": true, "upgrade": true, "trailer": true,
	// The client's address, which upstreams use for allow-lists and rate limits.
	"x-real-ip": true, "x-client-ip": true, "client-ip": true, "true-client-ip": true, "x-cluster-client-ip": true,
	"x-originating-ip": true, "cf-connecting-ip": true, "fastly-client-ip": true, "x-original-forwarded-for": true,
	"x-remote-ip": true, "x-remote-addr": true, "x-proxyuser-ip": true, "x-vercel-forwarded-for": true,
	// Method, URL, path and host overrides some frameworks and gateways honour: the route check
	// saw the real method and path, so an override is a way around it.
	"x-http-method-override": true, "x-http-method": true, "x-method-override": true, "x-original-method": true,
	"x-original-url": true, "x-original-uri": true, "x-rewrite-url": true, "x-override-url": true,
	"x-original-path": true, "x-original-host": true, "x-host": true, "x-http-host-override": true,
	"x-method": true, "x-real-method": true, "x-request-method": true, "x-rewrite-path": true, "x-original-request-uri": true,
	// Internal redirects a front server honours from its backend; from a client they choose the
	// file served. A request's Content-Location is meaningless (RFC 9110 §8.7) and read as the
	// target by some servers.
	"x-accel-redirect": true, "x-sendfile": true, "x-lighttpd-send-file": true, "content-location": true,
	// Next.js internals: a middleware subrequest skips the middleware (CVE-2025-29927); the
	// invoke headers choose the route rendered.
	"x-middleware-subrequest": true, "x-invoke-path": true, "x-invoke-query": true, "x-invoke-output": true,
	"x-invoke-status": true, "x-now-route-matches": true,
	// Next.js request headers that choose what is rendered or run: RSC payloads and router state,
	// the data route, a server action (by id, whatever the path).
	"rsc": true, "next-router-state-tree": true, "next-router-prefetch": true, "next-router-segment-prefetch": true,
	"next-url": true, "x-nextjs-data": true, "next-action": true, "x-middleware-prefetch": true,
}

// overrideParams are query parameters that frameworks read as the request's method: Rails,
// Laravel and Symfony (_method), Express's method-override (any name; these are the usual),
// Salesforce (_HttpMethod). Names compare as PHP reads them (case aside): "." and " " become "_".
var overrideParams = map[string]bool{
	"_method": true, "__method": true, "_httpmethod": true,
	"x-http-method-override": true, "x-http-method": true, "x-method-override": true,
	"x_http_method_override": true, "x_http_method": true, "x_method_override": true,
}

// overrideFields are overrideParams as body rules fold field names (see paramField).
var overrideFields = func() map[string]bool {
	m := map[string]bool{}
	for p := range overrideParams {
		m[foldKey(p)] = true
	}
	return m
}()

// isOverrideParam reports whether a raw query parameter name reads as a method override in
// some framework: as a form field is read (isOverrideName), or as the body rules read a query
// name (paramField: decoded again while it decodes, trimmed, before "[" or ".": _method[],
// _method[0], %255fmethod, _method%09, _method.).
func isOverrideParam(k string) bool {
	return isOverrideName(k) || paramField(k, overrideFields) != ""
}

// stripOverrideParams removes method-override parameters from a raw query and leaves every
// other parameter as it was sent, byte for byte. A part between "&" goes if any name in it
// split at ";" (which some parsers also split at) is an override.
func stripOverrideParams(raw string) string {
	if !mayOverride(raw) {
		return raw
	}
	var b strings.Builder
	kept := 0
	for part := range strings.SplitSeq(raw, "&") {
		override := false
		for sub := range strings.SplitSeq(part, ";") {
			k, _, _ := strings.Cut(sub, "=")
			override = override || isOverrideParam(k)
		}
		if override {
			continue
		}
		if kept > 0 {
			b.WriteByte('&')
		}
		b.WriteString(part)
		kept++
	}
	return b.String()
}

// mayOverride reports whether a raw query may name an override: every such name, as
// nameMatcher reads it, holds "method" in some case, or an escape.
func mayOverride(raw string) bool {
	for i := 0; i < len(raw); i++ {
		if raw[i] == '%' || i+6 <= len(raw) && strings.EqualFold(raw[i:i+6], "method") {
			return true
		}
	}
	return false
}

// isOverrideName reports whether a raw parameter name (of a query, a form, a multipart part)
// reads as a method override in some framework (see nameMatcher).
func isOverrideName(k string) bool {
	var m nameMatcher
	for i := 0; i < len(k); i++ {
		switch m.add(k[i]) {
		case nameMatch:
			return true
		case nameNoMatch:
			return false
		}
	}
	return m.end()
}

// maxOverrideName is the length of the longest name in overrideParams.
const maxOverrideName = len("x-http-method-override")

// What nameMatcher knows of a name so far.
const (
	nameUndecided = iota
	nameNoMatch
	nameMatch
)

// nameMatcher reads a raw parameter name one byte at a time as the most lenient decoder does
// (%XX decoded where valid, "+" as a space, lowercase, leading spaces dropped, "." and " " as
// "_" and cut at a NUL as PHP does) and says as early as it can whether it is in
// overrideParams: a form scanner holds back a key only while it is undecided.
type nameMatcher struct {
	name [maxOverrideName]byte
	n    int
	esc  [2]byte // after a "%": the bytes that may be its hex digits
	nesc int     // -1 once the name is decided
	pct  bool    // a "%" is pending
}

// add reads the next byte of the name.
func (m *nameMatcher) add(c byte) int {
	if m.nesc < 0 {
		return nameNoMatch
	}
	if !m.pct {
		if c == '%' {
			m.pct = true
			return nameUndecided
		}
		if c == '+' {
			c = ' '
		}
		return m.put(c)
	}
	m.esc[m.nesc] = c
	m.nesc++
	hi, ok1 := unhex(m.esc[0])
	if !ok1 {
		return m.literal()
	}
	if m.nesc < 2 {
		return nameUndecided
	}
	lo, ok2 := unhex(m.esc[1])
	if !ok2 {
		return m.literal()
	}
	m.pct, m.nesc = false, 0
	return m.put(hi<<4 | lo)
}

// literal puts a "%" that starts no escape, then reads the bytes after it afresh.
func (m *nameMatcher) literal() int {
	esc, n := m.esc, m.nesc
	m.pct, m.nesc = false, 0
	if r := m.put('%'); r != nameUndecided {
		return r
	}
	for _, c := range esc[:n] {
		if r := m.add(c); r != nameUndecided {
			return r
		}
	}
	return nameUndecided
}

// put appends one decoded byte.
func (m *nameMatcher) put(c byte) int {
	switch {
	case c == ' ' && m.n == 0:
		return nameUndecided
	case c == 0:
		return m.decide(overrideParams[string(m.name[:m.n])])
	case (c == '[' || c == ' ' || c == '\t') && overrideParams[string(m.name[:m.n])]:
		// An override name followed by an array part (_method[], _method[x], as qs-style parsers
		// read them) or by padding a trimming parser drops. A "." after it is not one: it is
		// PHP's "_", and a multipart filename's extension (_method.txt).
		return m.decide(true)
	case c == '.' || c == ' ':
		c = '_'
	case 'A' <= c && c <= 'Z':
		c += 'a' - 'A'
	}
	if m.n == len(m.name) {
		return m.decide(false)
	}
	m.name[m.n] = c
	m.n++
	if !overridePrefix(string(m.name[:m.n])) {
		return m.decide(false)
	}
	return nameUndecided
}

func (m *nameMatcher) decide(match bool) int {
	m.nesc = -1
	if match {
		return nameMatch
	}
	return nameNoMatch
}

// end reports whether the whole name, now complete, is an override.
func (m *nameMatcher) end() bool {
	if m.nesc < 0 {
		return false // decided: a match returned nameMatch already
	}
	if m.pct {
		if m.literal() == nameMatch {
			return true
		}
		if m.nesc < 0 {
			return false
		}
	}
	return overrideParams[string(m.name[:m.n])]
}

// overridePrefix reports whether s (not empty) begins some name of overrideParams. Most
// names of a form fail at their first byte.
func overridePrefix(s string) bool {
	if !overrideFirst[s[0]] {
		return false
	}
	for _, p := range overrideNames {
		if strings.HasPrefix(p, s) {
			return true
		}
	}
	return false
}

// overrideNames and overrideFirst are overrideParams as a list, and their first bytes.
var overrideNames, overrideFirst = func() ([]string, [256]bool) {
	var names []string
	var first [256]bool
	for p := range overrideParams {
		names = append(names, p)
		first[p[0]] = true
	}
	return names, first
}()

// roundTripper injects the upstream's credential and sends the request through the upstream's
// own pool. It refuses any request not aimed at the upstream's base URL.
type roundTripper struct{ p *Proxy }

type credentialError struct{ err error }

func (e *credentialError) Error() string { return "inject credential: " + e.err.Error() }
func (e *credentialError) Unwrap() error { return e.err }

var errWrongTarget = errors.New("proxy: outbound request is not aimed at the upstream")

func (rt roundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	c := callFrom(req.Context())
	if c == nil || c.tr == nil {
		return nil, errWrongTarget
	}
	if req.URL.Scheme != c.base.Scheme || req.URL.Host != c.base.Host {
		return nil, errWrongTarget
	}
	if err := rt.p.cfg.Credentials.Inject(req.Context(), c.upstream, req); err != nil {
		return nil, &credentialError{err}
	}
	c.mask = c.tr.maskerFor(injectedValues(c.upstream, req))
	if c.mask != nil {
		ownRepresentation(req.Header)
	}
	// Fail closed: the call leaves only once its pending record is durable. With ProofUses the
	// proof is used up in the same commit, so no replica forwards a proof another accepted.
	ev := rt.p.pendingEvent(c)
	if err := rt.p.writePending(req.Context(), c, ev); err != nil {
		if errors.Is(err, dpop.ErrReplay) {
			return nil, &replayError{err} // nothing was written
		}
		// A write that timed out may still commit: the refusal names it, so the trail never
		// shows a call that was not sent as "outcome unknown".
		c.pendingTried = ev.ID
		return nil, &auditError{err}
	}
	c.pending = &ev
	return c.tr.t.RoundTrip(req)
}

// replayError is RoundTrip's refusal of a proof another replica accepted: nothing was written
// or sent.
type replayError struct{ err error }

func (e *replayError) Error() string { return "use DPoP proof: " + e.err.Error() }
func (e *replayError) Unwrap() error { return e.err }

// writePending writes c's pending record ev, using up its proof with it when ProofUses is set.
func (p *Proxy) writePending(ctx context.Context, c *call, ev audit.Event) error {
	if p.cfg.ProofUses == nil || c.caller == nil || c.caller.ProofID == "" {
		return p.cfg.Audit.AppendEvent(ctx, ev)
	}
	use := []token.SingleUse{{ID: "dpop:" + c.caller.ProofID, ExpiresAt: c.caller.ProofExpiresAt}}
	return p.cfg.ProofUses.AppendEventUsing(ctx, ev, use)
}

// modifyResponse keeps upstream session state and credentials away from the agent: cookies are
// dropped, a redirect back into the upstream is rewritten to go through the proxy, a query
// credential echoed in a Location is removed, and the credential echoed in any header, trailer
// or the body, in any form of echoForms, is masked. Redirects are never followed.
func (p *Proxy) modifyResponse(res *http.Response) error {
	c := callFrom(res.Request.Context())
	c.gotResponse = true
	res.Header.Del("Set-Cookie")
	res.Header.Del("Set-Cookie2")
	if loc := res.Header.Get("Location"); loc != "" {
		res.Header.Set("Location", p.rewriteLocation(c, res.Request.URL, loc))
	}
	// CORS grants from the upstream would let a web page read answers made with the credential.
	for k := range res.Header {
		if strings.HasPrefix(k, "Access-Control-") {
			delete(res.Header, k)
		}
	}
	// An upstream may echo the credential (a reflected header, a self link built from the
	// request URL with its api_key): it never reaches the agent.
	if m := c.mask; m != nil {
		if err := decodeAnswer(res, c); err != nil {
			return err
		}
		m.maskHeader(res.Header)
		m.maskHeader(res.Trailer) // the names announced now; values come with the body's end
		// Same length: where the body is not decoded its Content-Length holds. Trailers
		// arrive with the body's end, before ReverseProxy copies them.
		res.Body = newMaskingReader(res.Body, m, func() { m.maskHeader(res.Trailer) })
	}
	return nil
}

func (p *Proxy) rewriteLocation(c *call, reqURL *url.URL, loc string) string {
	u, err := reqURL.Parse(loc)
	if err != nil {
		return "" // an unparsable Location is not passed on
	}
	if c.upstream.Auth == vault.AuthQuery && c.upstream.Param != "" {
		q := u.Query()
		if q.Has(c.upstream.Param) {
			q.Del(c.upstream.Param)
			u.RawQuery = q.Encode()
		}
	}
	if strings.EqualFold(u.Scheme, c.base.Scheme) && strings.EqualFold(u.Host, c.base.Host) {
		bp := c.base.EscapedPath()
		ep := u.EscapedPath()
		if rest, ok := strings.CutPrefix(ep, bp); ok && (rest == "" || rest[0] == '/') {
			if rest == "" {
				rest = "/"
			}
			out := p.Resource(c.name) + rest
			if u.RawQuery != "" {
				out += "?" + u.RawQuery
			}
			return out
		}
	}
	return u.String()
}

// errorHandler answers a call that failed after the checks: the body over the task's limit,
// a dial the SSRF guard refused, the credential, timeouts, or the upstream unreachable.
func (p *Proxy) errorHandler(w http.ResponseWriter, r *http.Request, err error) {
	c := callFrom(r.Context())
	var (
		blocked  *BlockedError
		cred     *credentialError
		answer   *answerError
		audErr   *auditError
		replayed *replayError
		e        *refusal
	)
	switch {
	case c.in != nil && c.in.tooLarge.Load():
		e = refuse(http.StatusRequestEntityTooLarge, "request_too_large", reasonRequestTooLarge,
			fmt.Sprintf("the request body is larger than the task's max_request_bytes (%d)", c.in.limit))
	case c.form != nil && c.form.refused.Load() != nil:
		e = c.form.refused.Load()
	case errors.As(err, &replayed):
		e = refuse(http.StatusUnauthorized, "invalid_dpop_proof", "token_replay", "this DPoP proof was already used: make a fresh proof for every request")
		e.challenge = true
	case errors.As(err, &blocked):
		e = refuse(http.StatusBadGateway, "bad_gateway", reasonBlocked, "the upstream's address is not allowed (private, loopback or link-local): mark the upstream allow_private if that is intended")
		e.outcome = audit.OutcomeFailure
	case errors.As(err, &audErr) || errors.Is(err, audit.ErrUnavailable): // the pending record, or an OAuth upstream's token refresh's
		e = refuse(http.StatusServiceUnavailable, "audit_unavailable", reasonAuditUnavailable,
			"the call could not be recorded in the audit trail, so nothing was forwarded to the upstream; retry later")
		e.outcome = audit.OutcomeFailure
	case errors.As(err, &cred):
		e = refuse(http.StatusBadGateway, "bad_gateway", reasonCredential, "the upstream's credential is not available; an administrator must set it")
		e.outcome = audit.OutcomeFailure
	case errors.As(err, &answer):
		e = refuse(http.StatusBadGateway, "bad_gateway", answer.reason, answer.desc)
		e.outcome = audit.OutcomeFailure
	case c.stream.fired.Load():
		e = refuse(http.StatusGatewayTimeout, "gateway_timeout", reasonIdleTimeout, "the call was idle too long")
		e.outcome = audit.OutcomeFailure
	case isTimeout(err):
		e = refuse(http.StatusGatewayTimeout, "gateway_timeout", reasonTimeout, "the upstream did not answer in time")
		e.outcome = audit.OutcomeFailure
	case r.Context().Err() != nil:
		e = refuse(http.StatusBadGateway, "bad_gateway", reasonClientGone, "the client went away")
		e.outcome = audit.OutcomeFailure
	default:
		e = refuse(http.StatusBadGateway, "bad_gateway", reasonUpstream, "the upstream could not be reached")
		e.outcome = audit.OutcomeFailure
	}
	if e.outcome == audit.OutcomeFailure {
		p.log.WarnContext(r.Context(), "proxy call failed", slog.String("upstream", c.name), slog.String("reason", e.reason), slog.String("error", safeError(err, c.mask)))
	}
	c.outcome, c.reason, c.detail = e.outcome, e.reason, e.desc
	if c.outcome == "" {
		c.outcome = audit.OutcomeDenied
	}
	p.writeRefusal(w, r, c, e)
}

func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// countingReader counts the request body as it streams and stops it past the task's
// max_request_bytes.
type countingReader struct {
	rc       io.ReadCloser
	c        *call
	n        atomic.Int64
	limit    int64 // -1 = none
	tooLarge atomic.Bool
}

var errTooLarge = errors.New("proxy: request body larger than the task's max_request_bytes")

func (r *countingReader) Read(b []byte) (int, error) {
	if r.tooLarge.Load() {
		return 0, errTooLarge
	}
	n, err := r.rc.Read(b)
	total := r.n.Add(int64(n))
	if n > 0 {
		r.c.stream.touch()
	}
	if r.limit >= 0 && total > r.limit {
		r.tooLarge.Store(true)
		return 0, errTooLarge
	}
	return n, err
}

func (r *countingReader) Close() error { return r.rc.Close() }

// countingWriter records the status and counts the response bytes.
type countingWriter struct {
	http.ResponseWriter
	c      *call
	status int
	n      int64
}

func (w *countingWriter) WriteHeader(code int) {
	if w.status == 0 && code >= 200 {
		w.status = code
	}
	// ReverseProxy passes informational answers (103 Early Hints) on as they arrive, before
	// modifyResponse: their headers are masked here.
	if code < 200 && w.c.mask != nil {
		w.Header().Del("Set-Cookie")
		w.c.mask.maskHeader(w.Header())
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *countingWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.n += int64(n)
	if n > 0 && w.c.stream != nil {
		w.c.stream.touch()
	}
	return n, err
}

// Unwrap lets http.ResponseController reach the connection (flush, deadlines).
func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// streamGuard ends a call that moves no byte for the idle timeout, and keeps the server's read
// and write deadlines (if the server set any) moving ahead of a stream that does.
type streamGuard struct {
	idle     time.Duration
	timer    *time.Timer
	rc       *http.ResponseController
	fired    atomic.Bool
	extended atomic.Int64 // unix nanos of the last deadline extension
	noDL     atomic.Bool  // the ResponseWriter cannot set deadlines
}

func newStreamGuard(w http.ResponseWriter, idle time.Duration, cancel context.CancelFunc) *streamGuard {
	g := &streamGuard{idle: idle, rc: http.NewResponseController(w)}
	g.extend(time.Now())
	g.timer = time.AfterFunc(idle, func() {
		g.fired.Store(true)
		cancel()
	})
	return g
}

func (g *streamGuard) touch() {
	if g == nil {
		return
	}
	g.timer.Reset(g.idle)
	if g.noDL.Load() {
		return
	}
	now := time.Now()
	if now.UnixNano()-g.extended.Load() > int64(g.idle/4) {
		g.extend(now)
	}
}

func (g *streamGuard) extend(now time.Time) {
	g.extended.Store(now.UnixNano())
	// Past the idle timer, so the timer (which records why) ends an idle call first.
	dl := now.Add(2 * g.idle)
	if err := g.rc.SetWriteDeadline(dl); err != nil {
		g.noDL.Store(true)
		return
	}
	_ = g.rc.SetReadDeadline(dl)
}

func (g *streamGuard) stop() {
	if g != nil {
		g.timer.Stop()
	}
}

// bufferPool recycles the 32 KiB copy buffers of ReverseProxy.
type bufferPool struct{}

var buffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (bufferPool) Get() []byte  { return *buffers.Get().(*[]byte) }
func (bufferPool) Put(b []byte) { buffers.Put(&b) }
