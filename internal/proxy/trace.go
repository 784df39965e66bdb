package proxy

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/mandate-dev/mandate/internal/audit"
)

// Headers the proxy sends to an upstream so its log line leads back to the trail: the request
// id (mandate audit explain REQUEST_ID), a W3C trace context, and, for an upstream that asks
// for it, a signed identity assertion. The agent's own headers of these names never pass.
const (
	HeaderRequestID   = "Mandate-Request-Id"
	HeaderTraceparent = "Traceparent"
	HeaderTracestate  = "Tracestate"
	HeaderTxnToken    = "Txn-Token"
)

// traceparent is the W3C Trace Context header (https://www.w3.org/TR/trace-context/) the proxy
// sends: version 00, the agent's trace id and sampled flag when it sent a valid traceparent
// (so the agent's trace continues through the upstream), else a trace id derived from the
// request id and flags 00; and a new parent id, the proxy's own span. It also reports the trace
// id and whether the agent's header was kept (its tracestate goes on only then).
func traceparent(in, requestID string) (header, traceID string, kept bool) {
	var tid [16]byte
	flags := "00"
	if id, fl, ok := parseTraceparent(in); ok {
		tid, kept = id, true
		if fl&1 == 1 {
			flags = "01"
		}
	} else {
		sum := sha256.Sum256([]byte("mandate trace " + requestID))
		copy(tid[:], sum[:16])
	}
	var span [8]byte
	for span == [8]byte{} {
		_, _ = rand.Read(span[:])
	}
	traceID = hex.EncodeToString(tid[:])
	return "00-" + traceID + "-" + hex.EncodeToString(span[:]) + "-" + flags, traceID, kept
}

// parseTraceparent reads a traceparent header. Version 00 is exactly
// 00-<32 hex>-<16 hex>-<2 hex>, lowercase; a later version may append fields after a "-"
// (read as 00, as the specification asks); version ff and all-zero ids are invalid.
func parseTraceparent(h string) (traceID [16]byte, flags byte, ok bool) {
	h = strings.TrimSpace(h)
	if len(h) < 55 || (len(h) > 55 && (h[:2] == "00" || h[55] != '-')) {
		return traceID, 0, false
	}
	if h[2] != '-' || h[35] != '-' || h[52] != '-' || h[:2] == "ff" {
		return traceID, 0, false
	}
	for _, part := range []string{h[:2], h[3:35], h[36:52], h[53:55]} {
		for i := 0; i < len(part); i++ {
			if c := part[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
				return traceID, 0, false
			}
		}
	}
	if _, err := hex.Decode(traceID[:], []byte(h[3:35])); err != nil || traceID == [16]byte{} {
		return [16]byte{}, 0, false
	}
	if h[36:52] == "0000000000000000" {
		return [16]byte{}, 0, false
	}
	var fl [1]byte
	_, _ = hex.Decode(fl[:], []byte(h[53:55]))
	return traceID, fl[0], true
}

// TypeTxnToken is the JOSE typ of the identity assertion (the OAuth Transaction Tokens draft,
// draft-ietf-oauth-transaction-tokens).
const TypeTxnToken = "txntoken+jwt"

// AssertionTTL is how long an identity assertion is valid.
const AssertionTTL = 60 * time.Second

// TxnToken is the identity assertion an upstream marked identity_assertion receives in the
// Txn-Token header: a JWT signed with the server's token signing keys (verify it against
// /oauth/jwks), with the claim names of the OAuth Transaction Tokens draft. It says who acts
// (the chain, current agent last) for whom (sub, the principal), in which task (txn) and for
// what purpose, for this one request (req_id).
type TxnToken struct {
	Issuer   string `json:"iss"`
	Audience string `json:"aud"` // the upstream's base URL
	IssuedAt int64  `json:"iat"`
	Expiry   int64  `json:"exp"`
	Txn      string `json:"txn"` // the task id
	Subject  string `json:"sub"` // the principal
	Scope    string `json:"scope,omitempty"`
	Purpose  string `json:"purp,omitempty"` // the task's purpose
	// RequestID is the request id of the call: the same as Mandate-Request-Id.
	RequestID string `json:"req_id"`
	// Tctx is the transaction context: the authority the call is made under.
	Tctx TxnContext `json:"tctx"`
	// Rctx is the requester context: who asked, from where, through which workload.
	Rctx TxnRequester `json:"rctx"`
}

// TxnContext is the tctx claim of a TxnToken.
type TxnContext struct {
	Grant      string     `json:"grant,omitempty"`
	Task       string     `json:"task"`
	ParentTask string     `json:"parent_task,omitempty"`
	Purpose    string     `json:"purpose,omitempty"`
	Chain      []TxnActor `json:"chain"` // first agent first, the current one last
}

// TxnActor is one agent of the chain.
type TxnActor struct {
	AgentID     string `json:"agent_id"`
	Handle      string `json:"handle,omitempty"`
	DID         string `json:"did,omitempty"`
	InstanceKey string `json:"instance_key,omitempty"`
	Task        string `json:"task,omitempty"`
}

// TxnRequester is the rctx claim of a TxnToken.
type TxnRequester struct {
	RequestID string `json:"req_id"`
	Workload  string `json:"req_wl"`           // the proxy: the issuer
	IP        string `json:"req_ip,omitempty"` // the agent's address, when known
	Agent     string `json:"agent_id"`
	Handle    string `json:"handle,omitempty"`
}

// assertion signs the identity assertion of c for its upstream.
func (p *Proxy) assertion(ctx context.Context, c *call) (string, error) {
	if p.cfg.SignAssertion == nil {
		return "", fmt.Errorf("upstream %s asks for an identity assertion and the proxy has no signer", c.name)
	}
	now := p.cfg.Now()
	cl := c.caller
	claims := TxnToken{
		Issuer: p.issuer, Audience: strings.TrimSuffix(c.upstream.BaseURL, "/"),
		IssuedAt: now.Unix(), Expiry: now.Add(AssertionTTL).Unix(),
		Txn: cl.Task, Subject: cl.Principal, Scope: strings.Join(cl.Scopes, " "), Purpose: c.task.Purpose,
		RequestID: c.reqID,
		Tctx:      TxnContext{Grant: cl.Grant, Task: cl.Task, Purpose: c.task.Purpose, Chain: make([]TxnActor, len(cl.Chain))},
		Rctx:      TxnRequester{RequestID: c.reqID, Workload: p.issuer, IP: audit.OriginFrom(ctx).Addr, Agent: cl.AgentID, Handle: cl.Handle},
	}
	if claims.Subject == "" {
		claims.Subject = c.task.PrincipalID
	}
	for i, a := range cl.Chain {
		claims.Tctx.Chain[i] = TxnActor{AgentID: a.AgentID, Handle: a.Handle, DID: a.DID, InstanceKey: a.InstanceJKT, Task: a.Task}
	}
	if n := len(cl.Chain); n > 1 {
		claims.Tctx.ParentTask = cl.Chain[n-2].Task
	}
	return p.cfg.SignAssertion(ctx, TypeTxnToken, claims)
}
