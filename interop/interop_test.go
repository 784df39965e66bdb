// Package interop checks mandate against independent clients: Node's oauth4webapi and jose run
// agent.mjs (registration, private_key_jwt + DPoP, JWKS, the protected resource, introspection,
// revocation), delegation.mjs (the three-level delegation chain by RFC 8693 token exchange),
// federation.mjs (a workload's assertion exchanged by RFC 7523 jwt-bearer) and txntoken.mjs (the
// proxy's Txn-Token identity assertion, verified as an upstream would) against an in-process
// server, so the standards are honoured as others read them, not only as
// our own Go client does. See the comment at the top of each script for what is proven.
//
// Needs node (20 or later) and the pinned npm packages: npm ci --prefix interop.
package interop

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/syncbuf"

	"github.com/mandate-dev/mandate/internal/server"
	"github.com/mandate-dev/mandate/internal/servertest"
	"github.com/mandate-dev/mandate/verify"
)

// result is the JSON line agent.mjs prints.
type result struct {
	OK       bool   `json:"ok"`
	Issuer   string `json:"issuer"`
	AgentID  string `json:"agent_id"`
	Handle   string `json:"handle"`
	DID      string `json:"did"`
	DPoPJKT  string `json:"dpop_jkt"`
	TokenTyp string `json:"token_type"`
	Token    struct {
		Alg      string          `json:"alg"`
		Typ      string          `json:"typ"`
		Iss      string          `json:"iss"`
		Sub      string          `json:"sub"`
		Aud      json.RawMessage `json:"aud"`
		ClientID string          `json:"client_id"`
		Scope    string          `json:"scope"`
		JTI      string          `json:"jti"`
		CnfJKT   string          `json:"cnf_jkt"`
		Handle   string          `json:"handle"`
		DID      string          `json:"did"`
	} `json:"token"`
	NonceRetries struct {
		Token    int `json:"token"`
		Resource int `json:"resource"`
	} `json:"nonce_retries"`
	Checks []check `json:"checks"`
}

// check is one named check a script reports.
type check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

// wantChecks are the checks agent.mjs must report, so a run that stops early cannot pass.
var wantChecks = []string{
	"discovery", "discovery_dpop_algs", "discovery_auth_method", "register", "claim",
	"agent_key_thumbprint", "register_alg_Ed25519", "token_private_key_jwt_alg_Ed25519",
	"dpop_nonce_challenge", "dpop_nonce_header", "token_response", "access_token_jwt", "access_token_cnf_jkt",
	"resource_dpop", "resource_bearer_refused", "resource_proof_replay_refused",
	"introspection_active", "revocation", "introspection_inactive_after_revocation",
	"resource_refuses_revoked",
}

func TestNodeInterop(t *testing.T) {
	node := needNode(t)
	srv, issuer, adminToken, logs := startServer(t)

	var res result
	runErr := runScript(t, node, "agent.mjs", logs, &res, "ISSUER="+issuer, "ADMIN_TOKEN="+adminToken)

	requireChecks(t, "agent.mjs", res.Checks, wantChecks, runErr, res.OK)
	if res.AgentID == "" {
		t.Fatal("agent.mjs reported no agent id")
	}

	// What the client saw, cross-checked against what we issued.
	if res.Issuer != issuer || res.Token.Iss != issuer {
		t.Errorf("issuer: client used %q, token iss %q; want %q", res.Issuer, res.Token.Iss, issuer)
	}
	if res.Token.ClientID != res.AgentID || res.Token.Sub != res.AgentID {
		t.Errorf("token client_id %q, sub %q; want both %q", res.Token.ClientID, res.Token.Sub, res.AgentID)
	}
	if res.Token.CnfJKT == "" || res.Token.CnfJKT != res.DPoPJKT {
		t.Errorf("token cnf.jkt %q; want the DPoP key thumbprint %q", res.Token.CnfJKT, res.DPoPJKT)
	}
	if res.Token.Typ != "at+jwt" || res.Token.Scope != "agent" || res.TokenTyp != "dpop" {
		t.Errorf("token typ %q scope %q token_type %q; want at+jwt, agent, dpop", res.Token.Typ, res.Token.Scope, res.TokenTyp)
	}
	if res.Token.Handle != res.Handle || res.Token.DID != res.DID {
		t.Errorf("token handle %q did %q; want %q %q", res.Token.Handle, res.Token.DID, res.Handle, res.DID)
	}

	// The server's own view: the agent the client registered is CLAIMED, with the client's
	// did:key (computed in JavaScript) as its key.
	req, _ := http.NewRequest(http.MethodGet, issuer+"/v1/agents/"+res.AgentID, nil)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET /v1/agents/%s: %v", res.AgentID, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var agent struct {
		AgentID, Handle, DID, Status string
		Keys                         []struct{ DID string }
	}
	if err := json.Unmarshal(body, &agent); resp.StatusCode != http.StatusOK || err != nil {
		t.Fatalf("GET /v1/agents/%s: %d %s", res.AgentID, resp.StatusCode, body)
	}
	if agent.Status != "CLAIMED" || agent.Handle != res.Handle || agent.DID != res.DID {
		t.Errorf("server has agent %s as status %s handle %q did %q; want CLAIMED %q %q",
			agent.AgentID, agent.Status, agent.Handle, agent.DID, res.Handle, res.DID)
	}

	// The revocation the client sent through oauth4webapi is recorded.
	if res.Token.JTI != "" {
		revoked, err := srv.Store().IsTokenRevoked(context.Background(), res.Token.JTI)
		if err != nil || !revoked {
			t.Errorf("token %s revoked by the client: store says revoked=%v err=%v", res.Token.JTI, revoked, err)
		}
	}
}

// startServer runs an in-process mandate on a loopback port until the test ends.
func startServer(t *testing.T) (*server.Server, string, string, *syncbuf.Buffer) {
	t.Helper()
	logs := &syncbuf.Buffer{}
	s := servertest.Start(t, servertest.Options{Log: logs})
	return s.Srv, s.URL, s.AdminToken, logs
}

// needNode returns the node binary, skipping the test (failing it in CI) when node or the pinned
// npm packages are missing.
func needNode(t *testing.T) string {
	t.Helper()
	inCI := os.Getenv("CI") != ""
	node, err := exec.LookPath("node")
	if err != nil {
		if inCI {
			t.Fatal("node is not on PATH; the interop test needs Node.js 20 or later")
		}
		t.Skip("node is not on PATH: install Node.js 20 or later to run the oauth4webapi interop test")
	}
	if _, err := os.Stat(filepath.Join("node_modules", "oauth4webapi")); err != nil {
		if inCI {
			t.Fatal("run npm ci in interop/ (done by .ci/run)")
		}
		t.Skip("interop/node_modules is missing: run npm ci --prefix interop (from the repository root) to run the oauth4webapi interop test")
	}
	return node
}

// runScript runs node script with env, decodes its JSON result line into out, and returns the
// run's error (an *exec.ExitError when the script reported failures). On a failed test the
// script's stderr and the server log are logged.
func runScript(t *testing.T, node, script string, logs *syncbuf.Buffer, out any, env ...string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, script)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s stderr:\n%s", script, stderr.String())
			t.Logf("server log:\n%s", logs.String())
		}
	})
	if ctx.Err() != nil {
		t.Fatalf("%s did not finish within the timeout: %v", script, ctx.Err())
	}
	var exitErr *exec.ExitError
	if runErr != nil && !errors.As(runErr, &exitErr) {
		t.Fatalf("run node %s: %v", script, runErr)
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), out); err != nil {
		t.Fatalf("%s printed no JSON result line (exit %v): %v\nstdout: %s\nstderr: %s", script, runErr, err, stdout.String(), stderr.String())
	}
	t.Logf("%s result: %s", script, lines[len(lines)-1])
	return runErr
}

// requireChecks fails the test for every failed check and every wanted check not reported (a
// script that stops early cannot pass), and when the script did not exit 0 with ok=true.
func requireChecks(t *testing.T, script string, checks []check, want []string, runErr error, ok bool) {
	t.Helper()
	seen := map[string]bool{}
	for _, c := range checks {
		seen[c.Name] = true
		if !c.OK {
			t.Errorf("interop check %s failed: %s", c.Name, c.Detail)
		}
	}
	for _, name := range want {
		if !seen[name] {
			t.Errorf("%s did not report check %s (it stopped early)", script, name)
		}
	}
	if runErr != nil || !ok {
		t.Errorf("%s exited with %v, ok=%v; want exit 0, ok=true", script, runErr, ok)
	}
}

// delegationResult is the JSON line delegation.mjs prints.
type delegationResult struct {
	OK          bool   `json:"ok"`
	Issuer      string `json:"issuer"`
	Principal   string `json:"principal"`
	InstanceJKT string `json:"instance_jkt"`
	Grant       struct {
		ID        string   `json:"id"`
		Resources []string `json:"resources"`
	} `json:"grant"`
	Orchestrator, Researcher struct {
		ID, Handle, DID, JKT string
	}
	TaskToken  tokenClaims `json:"task_token"`
	ChildToken tokenClaims `json:"child_token"`
	Checks     []check     `json:"checks"`
}

// tokenClaims are the claims of a delegated token, as jose verified them.
type tokenClaims struct {
	Sub, Txn, Scope, Grant string
	ClientID               string `json:"client_id"`
	Cnf                    struct{ JKT string }
}

// wantDelegationChecks are the checks delegation.mjs must report.
var wantDelegationChecks = []string{
	"discovery", "discovery_token_exchange", "principal", "register_orchestrator", "claim_orchestrator",
	"register_researcher", "claim_researcher", "grant_created", "self_token", "agent_grants",
	"grant_token_jwt", "grant_token_cnf_jkt", "exchange_start_task", "task_token_jwt", "task_token_cnf_jkt",
	"exchange_subdelegate", "child_token_jwt", "child_sub_principal", "child_act_outer", "child_act_inner",
	"child_txn", "child_narrowed", "child_cnf_jkt", "resource_child_token", "resource_child_token_other_key_refused",
	"exchange_actor_token_replay_refused", "exchange_scope_widening_refused", "exchange_wrong_proof_key_refused",
	"whoami_task_token",
}

// TestNodeDelegationInterop: delegation.mjs builds the three-level chain (principal →
// @orchestrator on an instance key → @researcher) with oauth4webapi's token exchange and checks
// the resulting token with jose against the JWKS; it calls a separate verify-SDK resource with it.
func TestNodeDelegationInterop(t *testing.T) {
	node := needNode(t)
	_, issuer, adminToken, logs := startServer(t)
	rs := startResource(t, issuer)

	var res delegationResult
	runErr := runScript(t, node, "delegation.mjs", logs, &res,
		"ISSUER="+issuer, "ADMIN_TOKEN="+adminToken, "RESOURCE_URL="+rs)
	requireChecks(t, "delegation.mjs", res.Checks, wantDelegationChecks, runErr, res.OK)
	if res.Grant.ID == "" || res.Researcher.ID == "" || res.Orchestrator.ID == "" {
		t.Fatal("delegation.mjs reported no grant or agents")
	}

	// The server's own view of the chain: the grant, and two tasks, the child under the parent.
	var tasks struct {
		Tasks []struct {
			TaskID      string `json:"task_id"`
			GrantID     string `json:"grant_id"`
			ParentID    string `json:"parent_id"`
			Depth       int    `json:"depth"`
			AgentID     string `json:"agent_id"`
			PrincipalID string `json:"principal_id"`
			InstanceJKT string `json:"instance_jkt"`
			Scopes      []string
		} `json:"tasks"`
	}
	adminGet(t, issuer, adminToken, "/v1/tasks?grant="+res.Grant.ID, &tasks)
	byDepth := map[int]int{}
	for i, tk := range tasks.Tasks {
		if tk.GrantID == res.Grant.ID {
			byDepth[tk.Depth] = i + 1
		}
	}
	if byDepth[1] == 0 || byDepth[2] == 0 {
		t.Fatalf("server tasks of grant %s: %+v; want one at depth 1 and one at depth 2", res.Grant.ID, tasks.Tasks)
	}
	parent, child := tasks.Tasks[byDepth[1]-1], tasks.Tasks[byDepth[2]-1]
	if parent.AgentID != res.Orchestrator.ID || parent.InstanceJKT != res.InstanceJKT || parent.PrincipalID != res.Principal {
		t.Errorf("parent task %+v; want agent %s on instance key %s for %s", parent, res.Orchestrator.ID, res.InstanceJKT, res.Principal)
	}
	if child.AgentID != res.Researcher.ID || child.ParentID != parent.TaskID || child.PrincipalID != res.Principal {
		t.Errorf("child task %+v; want agent %s under %s for %s", child, res.Researcher.ID, parent.TaskID, res.Principal)
	}
	// The tokens the client verified name those tasks.
	if res.TaskToken.Txn != parent.TaskID || res.ChildToken.Txn != child.TaskID {
		t.Errorf("token txn %q / %q; want the server's tasks %s / %s", res.TaskToken.Txn, res.ChildToken.Txn, parent.TaskID, child.TaskID)
	}
	if res.ChildToken.Sub != res.Principal || res.ChildToken.ClientID != res.Researcher.ID || res.ChildToken.Scope != "repo:read" ||
		res.ChildToken.Grant != res.Grant.ID || res.ChildToken.Cnf.JKT != res.Researcher.JKT {
		t.Errorf("child token %+v; want sub %s client_id %s scope repo:read grant %s cnf.jkt %s",
			res.ChildToken, res.Principal, res.Researcher.ID, res.Grant.ID, res.Researcher.JKT)
	}
}

// startResource runs a protected resource on its own listener, as a third party would: the
// verify SDK with the issuer's JWKS and revocation feed; GET /data answers with the caller.
// It returns the resource's identifier (its URL with the trailing "/" of a normalised resource).
func startResource(t *testing.T, issuer string) string {
	t.Helper()
	mux := http.NewServeMux()
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	v, err := verify.New(verify.Config{Issuer: issuer, Audience: srv.URL + "/", BaseURL: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	mux.Handle("GET /data", v.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _ := verify.CallerFrom(r.Context())
		type actor struct {
			AgentID     string `json:"agent_id"`
			Handle      string `json:"handle"`
			DID         string `json:"did"`
			InstanceJKT string `json:"instance_jkt"`
			Task        string `json:"task"`
		}
		chain := make([]actor, 0, len(c.Chain))
		for _, a := range c.Chain {
			chain = append(chain, actor{a.AgentID, a.Handle, a.DID, a.InstanceJKT, a.Task})
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{
			"principal": c.Principal, "agent_id": c.AgentID, "client_id": c.ClientID, "jkt": c.JKT,
			"scopes": c.Scopes, "aud": c.Audience, "task": c.Task, "grant": c.Grant, "chain": chain,
		})
	})))
	return srv.URL + "/"
}

// adminGet decodes a management API answer into out.
func adminGet(t *testing.T, issuer, adminToken, path string, out any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, issuer+path, nil)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, body)
	}
	if err := json.Unmarshal(body, out); err != nil {
		t.Fatalf("GET %s: %v: %s", path, err, body)
	}
}

// wantFederationChecks are the checks federation.mjs must report.
var wantFederationChecks = []string{
	"discovery_jwt_bearer", "service_account", "issuer_pinned", "rule", "jwt_bearer", "access_token_sub",
	"access_token_cnf_jkt", "access_token_lifetime", "whoami", "refused_audience", "refused_signature", "refused_condition",
}

// TestNodeFederationInterop: an assertion signed by jose, exchanged by oauth4webapi (RFC 7523
// jwt-bearer with DPoP), the token verified by jose and used at the management API.
func TestNodeFederationInterop(t *testing.T) {
	node := needNode(t)
	_, issuer, adminToken, logs := startServer(t)
	var res struct {
		OK             bool    `json:"ok"`
		ServiceAccount string  `json:"service_account"`
		Rule           string  `json:"rule"`
		Checks         []check `json:"checks"`
	}
	runErr := runScript(t, node, "federation.mjs", logs, &res, "ISSUER="+issuer, "ADMIN_TOKEN="+adminToken)
	requireChecks(t, "federation.mjs", res.Checks, wantFederationChecks, runErr, res.OK)

	// The server's own record of the three refusals: each reason precise in the audit trail.
	var evs struct {
		Events []struct{ Action, Reason string } `json:"events"`
	}
	adminGet(t, issuer, adminToken, "/v1/audit?action=token.deny", &evs)
	got := map[string]bool{}
	for _, e := range evs.Events {
		got[e.Reason] = true
	}
	for _, want := range []string{"assertion_audience", "assertion_signature", "assertion_condition"} {
		if !got[want] {
			t.Errorf("no token.deny with reason %s in the audit trail: %+v", want, evs.Events)
		}
	}
}

// txnTokenResult is the JSON line txntoken.mjs prints.
type txnTokenResult struct {
	OK        bool            `json:"ok"`
	RequestID string          `json:"request_id"`
	TxnToken  json.RawMessage `json:"txn_token"`
	Checks    []check         `json:"checks"`
}

// wantTxnTokenChecks are the checks txntoken.mjs must report.
var wantTxnTokenChecks = []string{
	"discovery", "principal", "register", "claim", "grant_created", "self_token", "grant_token", "task_token",
	"proxied_call", "txn_token_jwt", "txn_token_subject", "txn_token_purpose", "txn_token_chain", "txn_token_request_id",
}

// TestNodeTxnTokenInterop: an upstream marked identity_assertion receives a Txn-Token on a call
// an oauth4webapi agent makes through the proxy, and jose verifies it against the JWKS as an
// independent upstream would (txntoken.mjs).
func TestNodeTxnTokenInterop(t *testing.T) {
	node := needNode(t)
	logs := &syncbuf.Buffer{}
	s := servertest.Start(t, servertest.Options{Log: logs})
	key := "sk_live_interop_" + strings.Repeat("x", 16)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+key {
			http.Error(w, "bad key", http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]string{"txn_token": r.Header.Get("Txn-Token"), "request_id": r.Header.Get("Mandate-Request-Id")})
	}))
	t.Cleanup(up.Close)
	status, body := s.Admin(t, http.MethodPost, "/v1/upstreams", map[string]any{
		"name": "crm", "base_url": up.URL, "auth": "bearer", "allow_private": true, "identity_assertion": true,
		"routes": []map[string]any{{"scope": "crm:read", "methods": []string{"GET"}, "paths": []string{"/v1/**"}}},
	})
	if status != http.StatusCreated {
		t.Fatalf("POST /v1/upstreams: %d %s", status, body)
	}
	if status, body := s.Admin(t, http.MethodPut, "/v1/upstreams/crm/secrets/credential", map[string]string{"secret": key}); status/100 != 2 {
		t.Fatalf("set secret: %d %s", status, body)
	}

	var res txnTokenResult
	runErr := runScript(t, node, "txntoken.mjs", logs, &res,
		"ISSUER="+s.URL, "ADMIN_TOKEN="+s.AdminToken, "UPSTREAM=crm", "UPSTREAM_URL="+up.URL)
	requireChecks(t, "txntoken.mjs", res.Checks, wantTxnTokenChecks, runErr, res.OK)
}
