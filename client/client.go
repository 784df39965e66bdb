// Package client is the SDK for agents of a mandate server: agent key files, registration, key
// rotation, a cached token source using private_key_jwt client authentication, and an
// http.RoundTripper that sends every request with its access token and a fresh DPoP proof.
//
// Delegation: TokenSource.Grants lists the agent's grants with their grant tokens; RequestGrant
// and PollGrant ask the owner for one. StartTask exchanges a grant token (RFC 8693) for a task,
// optionally bound to an ephemeral instance key; a Task refreshes its token, sends requests with
// it (Task.Transport), hands narrower child tasks to other agents named by their actor tokens
// (NewActorToken, Task.Delegate), and ends (Task.End). ResumeTask takes up a task token given
// by another process or agent.
//
// The package imports nothing internal to mandate, so any Go program can use it.
package client

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/cryptosigner"
)

// Error is an error answered by the server: {"error", "error_description", "request_id"}.
type Error struct {
	Status      int    // HTTP status
	Code        string // OAuth-style error code, e.g. invalid_client
	Description string // the server's sentence
	RequestID   string // quote it when asking an operator about this request

	nonceSet bool // the answer carried a DPoP-Nonce header
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("mandate: ")
	if e.Code != "" {
		b.WriteString(e.Code)
	} else {
		fmt.Fprintf(&b, "HTTP %d", e.Status)
	}
	if e.Description != "" {
		b.WriteString(": ")
		b.WriteString(e.Description)
	}
	if hint := hints[e.Code]; hint != "" {
		b.WriteString(" (")
		b.WriteString(hint)
		b.WriteString(")")
	}
	if e.RequestID != "" {
		b.WriteString(" [request id ")
		b.WriteString(e.RequestID)
		b.WriteString("]")
	}
	return b.String()
}

var hints = map[string]string{
	"invalid_client":          "check that the agent id and the key file belong to the same registered agent, and that the agent has not been revoked",
	"unauthorized_client":     "the agent may not use this grant yet: has it been claimed by its owner with the claim code?",
	"invalid_scope":           "ask only for scopes the agent has been granted",
	"invalid_target":          "ask only for a resource the agent has been granted",
	"invalid_dpop_proof":      "check that this machine's clock is correct",
	"use_dpop_nonce":          "the server wants a DPoP nonce: retry the request",
	"access_denied":           "a person must grant the agent this access first",
	"temporarily_unavailable": "the server is busy or restarting: try again shortly",
	"rate_limited":            "wait as long as the server says, then try again",
	"server_error":            "the server failed: try again, and report the request id if it persists",
}

// ReadError reads a server error response ({"error", "error_description", "request_id"}, or any
// other body) into an *Error.
func ReadError(resp *http.Response) *Error {
	e := &Error{Status: resp.StatusCode, RequestID: resp.Header.Get("X-Request-Id")}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var doc struct {
		Error       string `json:"error"`
		Description string `json:"error_description"`
		RequestID   string `json:"request_id"`
	}
	if json.Unmarshal(body, &doc) == nil {
		e.Code, e.Description = doc.Error, doc.Description
		if doc.RequestID != "" {
			e.RequestID = doc.RequestID
		}
	}
	if e.Code == "" && e.Description == "" {
		e.Description = strings.TrimSpace(string(body))
		if len(e.Description) > 200 {
			e.Description = e.Description[:200]
		}
		if e.Description == "" {
			e.Description = http.StatusText(resp.StatusCode)
		}
	}
	return e
}

// RegisterRequest describes a new agent.
type RegisterRequest struct {
	Handle      string // stable, human-readable name, unique on the server
	Name        string
	Description string
}

// Registration is the server's answer to Register. Give the claim code to the agent's owner, who
// claims the agent in the console or the CLI before it can get tokens for anyone.
type Registration struct {
	AgentID            string
	Handle             string
	DID                string
	Status             string // UNCLAIMED
	ClaimCode          string
	ClaimCodeExpiresAt time.Time
}

// Register registers the agent whose key is key at the server issuer (POST {issuer}/v1/agents,
// a registration JWS signed by the key). hc nil means http.DefaultClient.
func Register(ctx context.Context, hc *http.Client, issuer string, key crypto.Signer, req RegisterRequest) (*Registration, error) {
	did, err := DID(key)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	claims := map[string]any{
		"iss":         did,
		"aud":         issuer,
		"iat":         now.Unix(),
		"exp":         now.Add(2 * time.Minute).Unix(),
		"jti":         randomID(),
		"handle":      req.Handle,
		"name":        req.Name,
		"description": req.Description,
	}
	jws, err := sign(key, did, "mandate-registration+jwt", claims)
	if err != nil {
		return nil, err
	}
	compact, err := jws.CompactSerialize()
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	return postRegistration(ctx, hc, endpoint(issuer, "/v1/agents"), compact, http.StatusCreated)
}

// NewClaimCode asks for a new one-time claim code for the UNCLAIMED agent agentID, whose current
// key is key (POST {issuer}/v1/agents/{id}/claim-code, a request signed by the key). The old code
// stops working. An agent whose code lapsed can ask until the server removes it (a day after the
// code lapsed, by default). hc nil means http.DefaultClient.
func NewClaimCode(ctx context.Context, hc *http.Client, issuer, agentID string, key crypto.Signer) (*Registration, error) {
	did, err := DID(key)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	jws, err := sign(key, did, "mandate-claim-code+jwt", map[string]any{
		"sub": agentID,
		"aud": issuer,
		"iat": now.Unix(),
		"exp": now.Add(2 * time.Minute).Unix(),
		"jti": randomID(),
	})
	if err != nil {
		return nil, err
	}
	compact, err := jws.CompactSerialize()
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	return postRegistration(ctx, hc, endpoint(issuer, "/v1/agents/"+pathEscape(agentID)+"/claim-code"), compact, http.StatusOK)
}

// postRegistration posts a signed request whose answer is a registration (agent and claim code).
func postRegistration(ctx context.Context, hc *http.Client, url, compact string, want int) (*Registration, error) {
	var out struct {
		AgentID            string `json:"agent_id"`
		Handle             string `json:"handle"`
		DID                string `json:"did"`
		Status             string `json:"status"`
		ClaimCode          string `json:"claim_code"`
		ClaimCodeExpiresAt string `json:"claim_code_expires_at"`
	}
	if err := post(ctx, hc, url, "application/jose", compact, want, &out); err != nil {
		return nil, err
	}
	reg := &Registration{AgentID: out.AgentID, Handle: out.Handle, DID: out.DID, Status: out.Status, ClaimCode: out.ClaimCode}
	if out.ClaimCodeExpiresAt != "" {
		var err error
		if reg.ClaimCodeExpiresAt, err = time.Parse(time.RFC3339, out.ClaimCodeExpiresAt); err != nil {
			return nil, fmt.Errorf("client: the server's claim_code_expires_at %q is not RFC 3339", out.ClaimCodeExpiresAt)
		}
	}
	if reg.AgentID == "" {
		return nil, errors.New("client: the server's registration answer has no agent_id")
	}
	return reg, nil
}

// RotateKey replaces agent agentID's key current with next (POST {issuer}/v1/agents/{id}/keys).
// Both keys sign one request, proving the agent holds both. After it returns, only next works:
// save next before calling, and keep current until this succeeds. hc nil means
// http.DefaultClient.
func RotateKey(ctx context.Context, hc *http.Client, issuer, agentID string, current, next crypto.Signer) error {
	curDID, err := DID(current)
	if err != nil {
		return err
	}
	nextDID, err := DID(next)
	if err != nil {
		return err
	}
	if curDID == nextDID {
		return errors.New("client: the new key is the current key")
	}
	now := time.Now()
	payload, err := json.Marshal(map[string]any{
		"sub":     agentID,
		"aud":     issuer,
		"iat":     now.Unix(),
		"exp":     now.Add(2 * time.Minute).Unix(),
		"jti":     randomID(),
		"new_did": nextDID,
	})
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	curKey, err := signingKey(current, curDID)
	if err != nil {
		return err
	}
	nextKey, err := signingKey(next, nextDID)
	if err != nil {
		return err
	}
	signer, err := jose.NewMultiSigner([]jose.SigningKey{curKey, nextKey}, nil)
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		return fmt.Errorf("client: signing the rotation request: %w", err)
	}
	url := endpoint(issuer, "/v1/agents/"+pathEscape(agentID)+"/keys")
	return post(ctx, hc, url, "application/jose+json", jws.FullSerialize(), http.StatusOK, nil)
}

// sign makes a compact-serializable JWS of claims with header alg (from the key), kid and typ.
func sign(key crypto.Signer, kid, typ string, claims any) (*jose.JSONWebSignature, error) {
	sk, err := signingKey(key, kid)
	if err != nil {
		return nil, err
	}
	signer, err := jose.NewSigner(sk, (&jose.SignerOptions{}).WithType(jose.ContentType(typ)))
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		return nil, fmt.Errorf("client: signing: %w", err)
	}
	return jws, nil
}

// signingKey wraps key for go-jose with its algorithm and kid. Keys that are not plain
// Ed25519/ECDSA values (hardware or KMS signers) go through cryptosigner.
func signingKey(key crypto.Signer, kid string) (jose.SigningKey, error) {
	if key == nil {
		return jose.SigningKey{}, errors.New("client: no key")
	}
	var alg jose.SignatureAlgorithm
	switch pub := key.Public().(type) {
	case ed25519.PublicKey:
		alg = jose.EdDSA
	case *ecdsa.PublicKey:
		if pub.Curve != elliptic.P256() {
			return jose.SigningKey{}, errors.New("client: only P-256 ECDSA keys are supported")
		}
		alg = jose.ES256
	default:
		return jose.SigningKey{}, fmt.Errorf("client: unsupported key type %T (want Ed25519 or P-256)", pub)
	}
	var k any
	switch key.(type) {
	case ed25519.PrivateKey, *ecdsa.PrivateKey:
		k = key
	default:
		k = cryptosigner.Opaque(key)
	}
	return jose.SigningKey{Algorithm: alg, Key: jose.JSONWebKey{Key: k, KeyID: kid}}, nil
}

func randomID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

func endpoint(issuer, path string) string {
	return strings.TrimSuffix(issuer, "/") + path
}

func pathEscape(s string) string {
	// Agent ids are [a-z0-9_]; refuse to let anything else change the path.
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.' || c == '~' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

const maxResponse = 1 << 20

// post sends body and decodes a JSON answer with status want into out (if not nil); any other
// status is an *Error.
func post(ctx context.Context, hc *http.Client, url, contentType, body string, want int, out any) error {
	if hc == nil {
		hc = http.DefaultClient
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	req.Header.Set("Content-Type", contentType)
	req.Header.Set("Accept", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("client: POST %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != want {
		return ReadError(resp)
	}
	return decodeJSON(resp, out)
}

func decodeJSON(resp *http.Response, out any) error {
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
	if err != nil {
		return fmt.Errorf("client: reading the answer of %s: %w", resp.Request.URL, err)
	}
	if len(data) > maxResponse {
		return fmt.Errorf("client: the answer of %s is too large", resp.Request.URL)
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(bytes.NewReader(data)).Decode(out); err != nil {
		return fmt.Errorf("client: the answer of %s is not the expected JSON: %w", resp.Request.URL, err)
	}
	return nil
}
