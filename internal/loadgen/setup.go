package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

const (
	pathToken      = "/oauth/token"
	pathIntrospect = "/oauth/introspect"

	assertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
	grantExchange = "urn:ietf:params:oauth:grant-type:token-exchange"
	tokenTypeJWT  = "urn:ietf:params:oauth:token-type:jwt"

	benchScope    = "bench:read"                // the exchange scenario's grant
	benchResource = "https://bench.invalid/api" // its resource: a name, never called
	proxyScope    = "bench:call"                // the proxy scenario's route
	proxyPath     = "/v1/items"                 // what the proxy scenario calls upstream
)

// do sends one set-up request to the first server and decodes a 2xx JSON answer into out. A
// 429 (the registration and claim limits) is waited out, as its Retry-After says.
func (b *Bench) do(ctx context.Context, method, u string, hdr http.Header, body []byte, out any) (*http.Response, error) {
	for {
		req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(body))
		if err != nil {
			return nil, err
		}
		for k, v := range hdr {
			req.Header[k] = v
		}
		if b.host != "" {
			req.Host = b.host
		}
		resp, err := b.setup.Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("set-up: cannot reach %s: %w (is mandate serve running there?)", trimURL(u), err)
		}
		raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("set-up: %s %s: %w", method, trimURL(u), err)
		}
		if resp.StatusCode == http.StatusTooManyRequests {
			wait, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
			wait = min(max(wait, 1), 60)
			b.progress("set-up: %s %s is rate limited; waiting %ds as the server asks", method, trimURL(u), wait)
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(time.Duration(wait) * time.Second):
			}
			continue
		}
		if resp.StatusCode/100 != 2 {
			return resp, &serverError{Method: method, URL: trimURL(u), Status: resp.StatusCode, Body: string(raw)}
		}
		if out != nil && len(bytes.TrimSpace(raw)) > 0 {
			if err := json.Unmarshal(raw, out); err != nil {
				return resp, fmt.Errorf("set-up: the answer of %s %s is not the expected JSON: %w", method, trimURL(u), err)
			}
		}
		return resp, nil
	}
}

func (b *Bench) getJSON(ctx context.Context, u, bearer string, out any) error {
	hdr := http.Header{"Accept": {"application/json"}}
	if bearer != "" {
		hdr.Set("Authorization", "Bearer "+bearer)
	}
	_, err := b.do(ctx, http.MethodGet, u, hdr, nil, out)
	return err
}

// admin calls the management API of the first server with the admin's token.
func (b *Bench) admin(ctx context.Context, method, path string, in, out any) error {
	hdr := http.Header{"Accept": {"application/json"}, "Authorization": {"Bearer " + b.cfg.AdminToken}}
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return err
		}
		hdr.Set("Content-Type", "application/json")
	}
	_, err := b.do(ctx, method, b.cfg.Servers[0]+path, hdr, body, out)
	return err
}

// registerAgents registers cfg.Agents agents with fresh keys and claims them as the admin.
func (b *Bench) registerAgents(ctx context.Context) error {
	run := shortID()
	b.progress("set-up: registering %d agents (bench-%s-N) at %s", b.cfg.Agents, run, b.cfg.Servers[0])
	for i := range b.cfg.Agents {
		a, err := newAgent(fmt.Sprintf("bench-%s-%d", run, i))
		if err != nil {
			return err
		}
		jws, err := a.registration(b.issuer, time.Now())
		if err != nil {
			return err
		}
		var reg struct {
			AgentID   string `json:"agent_id"`
			ClaimCode string `json:"claim_code"`
		}
		if _, err := b.do(ctx, http.MethodPost, b.cfg.Servers[0]+"/v1/agents", http.Header{"Content-Type": {"application/jose"}}, []byte(jws), &reg); err != nil {
			return err
		}
		a.id = reg.AgentID
		if err := b.admin(ctx, http.MethodPost, "/v1/agents/claim", map[string]string{"claim_code": reg.ClaimCode}, nil); err != nil {
			var se *serverError
			if errors.As(err, &se) && se.Status == http.StatusForbidden {
				return fmt.Errorf("%w\nthe API token must be an admin's (mandate login with the bootstrap token gives one)", err)
			}
			return err
		}
		b.agents = append(b.agents, a)
	}
	// One issuance per agent: it fetches the DPoP nonce, and gives a token to introspect.
	for _, a := range b.agents {
		tok, err := b.issue(ctx, a, nil)
		if err != nil {
			return err
		}
		a.selfToken = tok
	}
	return nil
}

// tokenAnswer is the token endpoint's answer, success or error.
type tokenAnswer struct {
	AccessToken string `json:"access_token"`
	Error       string `json:"error"`
	Description string `json:"error_description"`
}

// tokenRequest posts form to the first server's token endpoint with a proof by a, fetching the
// server's DPoP nonce when it asks for one, and returns the access token.
func (b *Bench) tokenRequest(ctx context.Context, a *agent, form func() (url.Values, error)) (string, error) {
	for try := 0; ; try++ {
		f, err := form()
		if err != nil {
			return "", err
		}
		proof, err := a.proof(http.MethodPost, b.issuer+pathToken, "", b.nonce, time.Now())
		if err != nil {
			return "", err
		}
		hdr := http.Header{"Content-Type": {"application/x-www-form-urlencoded"}, "Dpop": {proof}}
		var out tokenAnswer
		resp, err := b.do(ctx, http.MethodPost, b.cfg.Servers[0]+pathToken, hdr, []byte(f.Encode()), &out)
		if resp != nil && resp.Header.Get("DPoP-Nonce") != "" {
			b.nonce = resp.Header.Get("DPoP-Nonce")
		}
		var se *serverError
		if errors.As(err, &se) && try == 0 && strings.Contains(se.Body, `"use_dpop_nonce"`) {
			continue
		}
		if err != nil {
			return "", err
		}
		if out.AccessToken == "" {
			return "", fmt.Errorf("set-up: the token endpoint answered no access_token")
		}
		return out.AccessToken, nil
	}
}

// issue gets a DPoP-bound access token for a with client_credentials.
func (b *Bench) issue(ctx context.Context, a *agent, extra url.Values) (string, error) {
	return b.tokenRequest(ctx, a, func() (url.Values, error) {
		asr, err := a.assertion(b.issuer, time.Now())
		if err != nil {
			return nil, err
		}
		f := url.Values{"grant_type": {"client_credentials"}, "client_id": {a.id},
			"client_assertion_type": {assertionType}, "client_assertion": {asr}}
		for k, v := range extra {
			f[k] = v
		}
		return f, nil
	})
}

// grant creates a grant for each agent (scope on resource) and fetches its grant token as the
// agent (GET /v1/agent/grants with a DPoP-bound token).
func (b *Bench) grant(ctx context.Context, scope, resource string) error {
	b.progress("set-up: a grant of %s on %s for each agent", scope, resource)
	for _, a := range b.agents {
		var g struct {
			GrantID string `json:"grant_id"`
		}
		if err := b.admin(ctx, http.MethodPost, "/v1/grants", map[string]any{
			"agent": a.id, "scopes": []string{scope}, "resources": []string{resource},
			"max_task_ttl": 3600, "expires_in": 86400,
		}, &g); err != nil {
			return err
		}
		tok, err := b.issue(ctx, a, nil)
		if err != nil {
			return err
		}
		proof, err := a.proof(http.MethodGet, b.issuer+"/v1/agent/grants", tok, "", time.Now())
		if err != nil {
			return err
		}
		var out struct {
			Grants []struct {
				GrantID    string `json:"grant_id"`
				GrantToken string `json:"grant_token"`
			} `json:"grants"`
		}
		hdr := http.Header{"Authorization": {"DPoP " + tok}, "Dpop": {proof}, "Accept": {"application/json"}}
		if _, err := b.do(ctx, http.MethodGet, b.cfg.Servers[0]+"/v1/agent/grants", hdr, nil, &out); err != nil {
			return err
		}
		a.grantToken = ""
		for _, x := range out.Grants {
			if x.GrantID == g.GrantID {
				a.grantToken = x.GrantToken
			}
		}
		if a.grantToken == "" {
			return fmt.Errorf("set-up: grant %s is not among agent %s's grants", g.GrantID, a.id)
		}
	}
	return nil
}

// exchangeForm is the form of a token exchange that starts a task under a's grant.
func exchangeForm(a *agent, scope string) url.Values {
	return url.Values{"grant_type": {grantExchange}, "subject_token": {a.grantToken},
		"subject_token_type": {tokenTypeJWT}, "scope": {scope}}
}

// setUpExchange gives every agent a grant to exchange.
func (b *Bench) setUpExchange(ctx context.Context) error {
	if b.grantsFor[ScenarioExchange] {
		return nil
	}
	if err := b.grant(ctx, benchScope, benchResource); err != nil {
		return err
	}
	b.grantsFor[ScenarioExchange] = true
	return nil
}

// setUpProxy serves the sink, adds an upstream pointing at it, grants every agent a route of
// it, and starts a task per agent whose token the proxy calls carry.
func (b *Bench) setUpProxy(ctx context.Context) error {
	if b.proxyGrantOK {
		return nil
	}
	var err error
	if b.sink, err = startSink(b.cfg.SinkListen); err != nil {
		return err
	}
	name := "bench-" + shortID()
	b.progress("set-up: upstream %s -> %s (the sink this command serves)", name, b.sink.url)
	if err := b.admin(ctx, http.MethodPost, "/v1/upstreams", map[string]any{
		"name": name, "base_url": b.sink.url, "auth": "bearer", "allow_private": true,
		"routes": []map[string]any{{"scope": proxyScope, "methods": []string{"GET"}, "paths": []string{"/v1/**"}}},
	}, nil); err != nil {
		return err
	}
	b.upstream = name
	if err := b.admin(ctx, http.MethodPut, "/v1/upstreams/"+name+"/secrets/credential", map[string]string{"secret": "sk_bench_" + randomID()}, nil); err != nil {
		return err
	}
	if err := b.grant(ctx, proxyScope, b.issuer+"/proxy/"+name); err != nil {
		return err
	}
	for _, a := range b.agents {
		tok, err := b.tokenRequest(ctx, a, func() (url.Values, error) { return exchangeForm(a, proxyScope), nil })
		if err != nil {
			return err
		}
		a.taskToken = tok
	}
	b.proxyGrantOK = true
	return nil
}

// sink is the upstream of the proxy scenario: it answers every call with a small JSON body.
type sink struct {
	url   string
	srv   *http.Server
	calls atomic.Int64
}

var sinkBody = []byte(`{"items":[{"id":1,"name":"one"},{"id":2,"name":"two"}]}`)

func startSink(addr string) (*sink, error) {
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--sink-listen %s: %w", addr, err)
	}
	s := &sink{url: "http://" + ln.Addr().String()}
	s.srv = &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.calls.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.Write(sinkBody)
	})}
	go s.srv.Serve(ln)
	return s, nil
}

func (s *sink) close() { s.srv.Close() }
