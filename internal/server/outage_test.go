package server_test

import (
	"crypto"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/dpop"
	"github.com/mandate-dev/mandate/internal/config"
	"github.com/mandate-dev/mandate/internal/pgtest"
)

// relay is a TCP relay between mandate and PostgreSQL that a test can cut (connections closed,
// new ones closed at once) and pause (connections accepted and held, nothing forwarded: a
// black-holed network), and restore.
type relay struct {
	ln     net.Listener
	target string
	mode   atomic.Int32 // relayUp, relayCut, relayPaused
	mu     sync.Mutex
	conns  map[net.Conn]bool
	resume chan struct{} // closed when a pause ends
}

const (
	relayUp int32 = iota
	relayCut
	relayPaused
)

func newRelay(t *testing.T, target string) *relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{ln: ln, target: target, conns: map[net.Conn]bool{}, resume: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); r.serve(c) }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		r.set(relayUp)
		r.closeAll()
		wg.Wait()
	})
	return r
}

func (r *relay) addr() string { return r.ln.Addr().String() }

func (r *relay) track(c net.Conn) {
	r.mu.Lock()
	r.conns[c] = true
	r.mu.Unlock()
}

func (r *relay) closeAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for c := range r.conns {
		c.Close()
		delete(r.conns, c)
	}
}

// set switches the relay's mode: a cut closes every connection, a pause holds them.
func (r *relay) set(mode int32) {
	r.mu.Lock()
	old := r.mode.Swap(mode)
	if old == relayPaused && mode != relayPaused {
		close(r.resume)
		r.resume = make(chan struct{})
	}
	r.mu.Unlock()
	if mode == relayCut {
		r.closeAll()
	}
}

// wait blocks while the relay is paused; it reports false when the connection must end.
func (r *relay) wait() bool {
	for {
		r.mu.Lock()
		mode, resume := r.mode.Load(), r.resume
		r.mu.Unlock()
		switch mode {
		case relayUp:
			return true
		case relayCut:
			return false
		}
		<-resume
	}
}

func (r *relay) serve(c net.Conn) {
	r.track(c)
	if r.mode.Load() == relayCut {
		c.Close()
		return
	}
	if !r.wait() { // a paused relay accepts and holds the connection
		c.Close()
		return
	}
	up, err := net.Dial("tcp", r.target)
	if err != nil {
		c.Close()
		return
	}
	r.track(up)
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		defer func() { done <- struct{}{} }()
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				if !r.wait() { // paused: what was read is held, not forwarded
					return
				}
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}
	go pipe(up, c)
	go pipe(c, up)
	<-done
	c.Close()
	up.Close()
	<-done
}

// answer is what one request of the outage test got.
type answer struct {
	kind       string
	status     int
	code       string
	retryAfter string
	took       time.Duration
	err        error
}

func (a answer) String() string {
	if a.err != nil {
		return fmt.Sprintf("%s: %v after %v", a.kind, a.err, a.took)
	}
	return fmt.Sprintf("%s: %d %s (Retry-After %q) after %v", a.kind, a.status, a.code, a.retryAfter, a.took)
}

// send sends req and reads the whole answer, timing it; it returns the answer's headers too.
func send(hc *http.Client, kind string, req *http.Request) (answer, http.Header) {
	start := time.Now()
	resp, err := hc.Do(req)
	if err != nil {
		return answer{kind: kind, err: err, took: time.Since(start)}, nil
	}
	raw, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	a := answer{kind: kind, status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After"), took: time.Since(start), err: err}
	var body struct {
		Error string `json:"error"`
	}
	_ = json.Unmarshal(raw, &body)
	a.code = body.Error
	return a, resp.Header
}

// outageClient makes the outage test's requests: each needs nothing from the database to be
// built (keys, tokens and nonces obtained while it was up), so each is the same request whether
// the database answers or not.
type outageClient struct {
	t       *testing.T
	ts      *testServer
	hc      *http.Client
	agent   *testAgent
	selfTok string // the agent's own token, for /v1/agent/whoami
	taskTok string // a task token on the proxied upstream
	grant   string // the grant token, exchanged for a new task
	nonceMu sync.Mutex
	nonce   string
}

func (c *outageClient) proof(key crypto.Signer, method, u, tok string) string {
	c.nonceMu.Lock()
	nonce := c.nonce
	c.nonceMu.Unlock()
	p, err := dpop.NewProof(key, method, u, dpop.ProofOptions{AccessToken: tok, Nonce: nonce, Now: c.ts.Clock.Now()})
	if err != nil {
		panic(err) // a key that cannot sign: a broken test
	}
	return p
}

// token posts form to the token endpoint, keeping the nonce the server sends; a nonce
// challenge is the protocol's step, answered once.
func (c *outageClient) token(kind string, form url.Values) answer {
	var a answer
	for range 2 {
		req, _ := http.NewRequest("POST", c.ts.URL+"/oauth/token", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("DPoP", c.proof(c.agent.Key, "POST", c.ts.URL+"/oauth/token", ""))
		var h http.Header
		a, h = send(c.hc, kind, req)
		if n := h.Get("DPoP-Nonce"); n != "" {
			c.nonceMu.Lock()
			c.nonce = n
			c.nonceMu.Unlock()
		}
		if a.code != "use_dpop_nonce" {
			return a
		}
	}
	return a
}

func (c *outageClient) issue() answer {
	return c.token("issuance", c.ts.ccForm(c.t, c.agent, c.ts.assertion(c.t, c.agent, randomID())))
}

func (c *outageClient) exchange() answer {
	return c.token("exchange", url.Values{"grant_type": {grantExchange}, "subject_token": {c.grant}, "subject_token_type": {tokenTypeJWT}})
}

// get is a GET of path with tok and a fresh proof.
func (c *outageClient) get(kind, path, tok string) answer {
	u := c.ts.URL + path
	req, _ := http.NewRequest("GET", u, nil)
	if tok != "" {
		req.Header.Set("Authorization", "DPoP "+tok)
		req.Header.Set("DPoP", c.proof(c.agent.Key, "GET", u, tok))
	}
	a, _ := send(c.hc, kind, req)
	return a
}

func (c *outageClient) agentAPI() answer { return c.get("agent API", "/v1/agent/whoami", c.selfTok) }
func (c *outageClient) proxy() answer    { return c.get("proxy", "/proxy/items/v1/items", c.taskTok) }
func (c *outageClient) ready() answer    { return c.get("readyz", "/readyz", "") }

// round sends one request of each kind.
func (c *outageClient) round() []answer {
	return []answer{c.issue(), c.agentAPI(), c.proxy(), c.exchange(), c.ready()}
}

// TestDatabaseOutage (acceptance 5): a server reaches PostgreSQL through a relay, under a light
// load of mixed requests (issuance, the agent API, a proxied call, a token exchange, /readyz).
// The relay is cut, then paused (a black hole). Throughout each outage every answer is a
// success or a 503 with Retry-After — never a refusal of the caller's credentials — and no
// request is held much past --db-timeout; once the relay is restored, the same requests
// succeed again, without a restart.
func TestDatabaseOutage(t *testing.T) {
	pg, err := url.Parse(pgtest.URL(t))
	if err != nil {
		t.Fatal(err)
	}
	rl := newRelay(t, pg.Host)
	viaRelay := *pg
	viaRelay.Host = rl.addr()
	const deadline = time.Second
	ts := newTestServer(t, func(c *config.Config) { c.Database, c.DBTimeout = viaRelay.String(), deadline })

	// Set up while the database answers: an agent with a grant on an upstream, its tokens.
	up := addItemsUpstream(t, ts)
	a := ts.newAgent(t, "outage", true)
	grantID := ts.grant(t, map[string]any{"agent": a.ID, "scopes": []string{"items:read"}, "resources": []string{ts.URL + "/proxy/items"}})
	grant := ts.grantToken(t, a, grantID)
	c := &outageClient{t: t, ts: ts, agent: a, grant: grant, selfTok: ts.token(t, a, a.Key, nil),
		taskTok: ts.startTask(t, a, grant),
		// Longer than any request may take, so that a request held too long is measured, not cut.
		hc: &http.Client{Timeout: time.Minute}}
	ts.nonceM.Lock()
	c.nonce = ts.nonce
	ts.nonceM.Unlock()

	// bound is how long a request may take while the database does not answer: the deadline of
	// one database call, once more for a call that began just before, and a generous margin for
	// a loaded machine. A bound, not a measure of speed: without deadlines a request waits for
	// the operating system to give up the connection (minutes).
	bound := 2*deadline + 3*time.Second

	allSucceed := func(phase string) {
		t.Helper()
		// The pool may hold connections that died with the outage; database/sql replaces them,
		// and a request that met one may be answered 503 once.
		for _, send := range []func() answer{c.issue, c.agentAPI, c.proxy, c.exchange, c.ready} {
			var got answer
			for range 5 {
				if got = send(); got.err == nil && got.status/100 == 2 {
					break
				}
			}
			if got.err != nil || got.status/100 != 2 {
				t.Errorf("%s: %v, want a success", phase, got)
			}
		}
	}
	allSucceed("before the outage")
	calls := up.calls.Load()

	outage := func(name string, mode int32) {
		rl.set(mode)
		var mu sync.Mutex
		var answers []answer
		var wg sync.WaitGroup
		for range 2 { // two clients at once
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 2 {
					got := c.round()
					mu.Lock()
					answers = append(answers, got...)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		unavailable := 0
		for _, got := range answers {
			switch {
			case got.err != nil:
				t.Errorf("database %s: %v", name, got)
			case got.status == http.StatusServiceUnavailable && got.retryAfter != "":
				unavailable++
			case got.status/100 == 2:
			default:
				t.Errorf("database %s: %v, want a success or 503 with Retry-After", name, got)
			}
			if got.took > bound {
				t.Errorf("database %s: %v: held longer than %v (--db-timeout %v)", name, got, bound, deadline)
			}
			t.Logf("database %s: %v", name, got)
		}
		if unavailable == 0 {
			t.Errorf("database %s: no request was answered 503; was the database reached?", name)
		}
		// A request answered 503 is retried as it was, proof and all, once the database is
		// back: it must be judged afresh, not refused as the replay of itself.
		var retries []func() *http.Request
		for _, r := range []struct{ path, tok string }{{"/proxy/items/v1/items", c.taskTok}, {"/v1/agent/whoami", c.selfTok}} {
			u := c.ts.URL + r.path
			proof := c.proof(c.agent.Key, "GET", u, r.tok)
			mk := func() *http.Request {
				req, _ := http.NewRequest("GET", u, nil)
				req.Header.Set("Authorization", "DPoP "+r.tok)
				req.Header.Set("DPoP", proof)
				return req
			}
			if got, _ := send(c.hc, r.path, mk()); got.status != http.StatusServiceUnavailable {
				t.Logf("database %s: %s answered %v before the retry", name, r.path, got)
			}
			retries = append(retries, mk)
		}
		rl.set(relayUp)
		for _, mk := range retries {
			got, _ := send(c.hc, "retry", mk())
			for i := 0; i < 10 && got.status == http.StatusServiceUnavailable; i++ {
				got, _ = send(c.hc, "retry", mk()) // the pool's connections are still coming back
			}
			if got.status != http.StatusOK {
				t.Errorf("after the database was %s: the retry of a request answered 503: %v, want 200", name, got)
			}
		}
		allSucceed("after the database was " + name)
	}
	outage("cut", relayCut)
	outage("paused", relayPaused)

	if up.calls.Load() <= calls {
		t.Error("no proxied call reached the upstream after the outages")
	}
}
