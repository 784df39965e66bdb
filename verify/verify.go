// Package verify checks mandate access tokens at a resource server: the DPoP-bound JWT
// (RFC 9068, RFC 9449) in the Authorization header, the DPoP proof that must come with it, and the
// revocation status of the token, its grant, its task and every agent and task of its delegation
// chain. Use Verifier.Middleware in front of net/http handlers, or Verifier.Verify where you need
// the decision yourself. Caller carries the principal, the delegation chain, the task and the
// grant.
//
// Revocations reach a Verifier through the issuer's revocation feed (RevocationFeed, the default
// StatusSource): it follows the feed's stream of server-sent events, so a revocation is refused
// within tens of milliseconds of its commit on any replica, and polls the feed (every second by
// default) whenever the stream is unavailable. Close a Verifier you drop before the program
// exits to end its stream.
//
// The package imports nothing internal to mandate, so any Go program can use it.
package verify

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/big"
	"net/http"
	"strings"
	"time"

	"github.com/mandate-dev/mandate/dpop"
	"github.com/mandate-dev/mandate/oautherr"
)

// Signature algorithms accepted for access tokens. "Ed25519" is the fully-specified name of
// EdDSA over Ed25519 (RFC 9864); both are accepted.
const (
	AlgEdDSA   = "EdDSA"
	AlgEd25519 = "Ed25519"
	AlgES256   = "ES256"
)

// Config configures a Verifier. Issuer and Audience are required.
type Config struct {
	Issuer   string       // required: the expected iss, exactly as the issuer's metadata names it
	Audience string       // required: this resource server's identifier; must be in aud
	Keys     KeySource    // nil = RemoteKeys(jwks_uri from the issuer's metadata, read once lazily)
	Status   StatusSource // nil = RevocationFeed(Issuer+"/v1/revocations", HTTPClient, 1s)
	// DPoP is the proof window, replay store and nonces. Replay nil = a new in-memory store,
	// which is complete for one process only: the replicas of a resource server share one
	// store (dpop/sqlreplay on their database), or a proof one of them accepted is accepted
	// once more by each other one within its window.
	DPoP   dpop.Config
	Leeway time.Duration
	// Algs lists the token signature algorithms to accept: a subset of EdDSA, Ed25519 and ES256
	// (the default is all three). none, HMAC and RSA are never accepted.
	Algs []string
	// BaseURL is this resource server's public scheme://host[:port], the prefix of the URL clients
	// sign in their proofs (htu). Set it behind a proxy or load balancer. Empty means it is taken
	// from the request: https when it arrived over TLS, else http, and the Host header.
	// X-Forwarded-* headers are never trusted.
	BaseURL string
	// RequiredScopes are checked after verification: a token missing one is refused with 403
	// insufficient_scope.
	RequiredScopes []string
	HTTPClient     *http.Client     // for the default key and status sources; nil = http.DefaultClient
	Now            func() time.Time // nil = time.Now
	// OnDeny is called by Verify (and so by Middleware) once for every refusal, before it returns.
	OnDeny func(r *http.Request, err *Error)
	// RequestID returns the resource server's id of a request, which a refusal carries in its
	// body (Error.RequestID) so the caller can quote it and the server find it in its logs. nil =
	// the X-Request-Id response header the server's own middleware set before Middleware ran, or
	// else the request's X-Request-Id header (as a proxy in front sets it) when it is 1 to 128
	// characters of A-Z a-z 0-9 . _ : -; with neither, refusals carry no request id.
	RequestID func(r *http.Request) string
	// TokenCache is how many verified access tokens to remember, so a token used for many
	// requests has its signature and claims checked once; the DPoP proof and the revocation
	// status are still checked on every request. 0 = 4096; negative = no cache.
	TokenCache int
}

// Verifier checks requests. It is safe for concurrent use.
type Verifier struct {
	issuer   string
	audience string
	keys     KeySource
	status   StatusSource
	checker  *dpop.Checker
	nonces   *dpop.Nonces
	leeway   time.Duration
	algs     []string
	baseURL  string
	required []string
	now      func() time.Time
	onDeny   func(*http.Request, *Error)
	reqID    func(*http.Request) string
	cache    *tokenCache
}

// New checks cfg, reporting every problem at once, and returns a Verifier.
func New(cfg Config) (*Verifier, error) {
	var problems []error
	if cfg.Issuer == "" {
		problems = append(problems, errors.New("Issuer is required"))
	}
	if cfg.Audience == "" {
		problems = append(problems, errors.New("Audience is required"))
	}
	if cfg.Leeway < 0 {
		problems = append(problems, errors.New("Leeway must not be negative"))
	}
	algs := cfg.Algs
	if len(algs) == 0 {
		algs = []string{AlgEdDSA, AlgEd25519, AlgES256}
	}
	for _, a := range algs {
		switch a {
		case AlgEdDSA, AlgEd25519, AlgES256:
		default:
			problems = append(problems, fmt.Errorf("Algs: %q is not accepted (use EdDSA, Ed25519 or ES256)", a))
		}
	}
	base := strings.TrimSuffix(cfg.BaseURL, "/")
	if base != "" && !strings.HasPrefix(base, "https://") && !strings.HasPrefix(base, "http://") {
		problems = append(problems, fmt.Errorf("BaseURL %q must start with https:// or http://", cfg.BaseURL))
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("verify: invalid config: %w", errors.Join(problems...))
	}

	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	hc := cfg.HTTPClient
	if hc == nil {
		hc = http.DefaultClient
	}
	leeway := cfg.Leeway
	if leeway == 0 {
		leeway = 30 * time.Second
	}
	keys := cfg.Keys
	if keys == nil {
		opts := []Option{WithNow(now)}
		keys = &discoveredKeys{issuer: cfg.Issuer, hc: hc, opts: opts, o: buildOptions(opts)}
	}
	status := cfg.Status
	if status == nil {
		status = RevocationFeed(strings.TrimSuffix(cfg.Issuer, "/")+"/v1/revocations", hc, 0, WithNow(now), withRetain(leeway+time.Minute))
	}
	dc := cfg.DPoP
	if dc.Replay == nil {
		dc.Replay = dpop.NewMemoryReplayStore()
	}
	if dc.Now == nil {
		dc.Now = now
	}
	return &Verifier{
		issuer:   cfg.Issuer,
		audience: cfg.Audience,
		keys:     keys,
		status:   status,
		checker:  dpop.NewChecker(dc),
		nonces:   dc.Nonces,
		leeway:   leeway,
		algs:     append([]string(nil), algs...),
		baseURL:  base,
		required: append([]string(nil), cfg.RequiredScopes...),
		now:      now,
		onDeny:   cfg.OnDeny,
		reqID:    cfg.RequestID,
		cache:    newTokenCache(cfg.TokenCache),
	}, nil
}

// Close releases what the Verifier holds open: the revocation feed's stream, when its status
// source is one (a StatusSource that implements io.Closer is closed).
func (v *Verifier) Close() error {
	if c, ok := v.status.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

// Caller is who made a verified request.
//
// A self token (client_credentials) names the agent itself: Subject and ClientID are the agent
// id, Principal is empty and Chain holds that one agent. A delegated token (RFC 8693 token
// exchange) names the principal the agents act for in Subject and Principal, and every agent the
// authority passed through in Chain, oldest first.
type Caller struct {
	Subject   string // sub: the principal, or the agent id when the agent acts as itself
	ClientID  string // client_id: the agent that holds the token
	AgentID   string // the acting (current) agent: client_id, which is also the outermost act.sub
	Handle    string // the agent's handle
	DID       string // the agent's did:key
	JTI       string
	JKT       string // cnf.jkt: thumbprint of the key that proved possession
	Scopes    []string
	Audience  []string
	IssuedAt  time.Time
	ExpiresAt time.Time

	// Principal is sub when it names a principal (usr_… or svc_…), and "" for a self token.
	Principal string
	// Chain lists the actors in delegation order: Chain[0] is the first agent the principal
	// granted, the last is the current one (the outermost act, RFC 8693 §4.1). A token without
	// act (a self token) has one Actor, built from client_id, handle, did and txn. Never empty
	// for a verified Caller.
	Chain []Actor
	Task  string // txn: the task the token was issued for; "" when the token names none
	Grant string // grant: the standing delegation the token derives from; "" when none
	// AuthorizationDetails are the token's RFC 9396 authorization_details, one JSON object each
	// (re-encoded from the verified claims: the same values, not necessarily the same bytes).
	AuthorizationDetails []json.RawMessage

	// Claims holds every claim of the token as decoded JSON (act, txn, grant, ...). Do not modify.
	Claims map[string]any

	// ProofID identifies the request's DPoP proof as Config.DPoP.Replay recorded it (the key's
	// thumbprint and the proof's jti, dpop.Proof.ReplayID), and ProofExpiresAt says until when
	// it must be remembered. The replay store already refused a proof it had seen; a resource
	// that writes its own durable record of each request can also use the id up in that same
	// transaction, so that replicas sharing its database refuse a proof any one of them
	// accepted at no extra commit (mandate's proxy does this with its pending audit record).
	// Replicas without such a record share a store instead: see package dpop/sqlreplay.
	ProofID        string
	ProofExpiresAt time.Time
}

// Actor is one agent of a delegation chain.
type Actor struct {
	AgentID     string // act.sub: the agent id (agt_…)
	Handle      string // act.handle
	DID         string // act.did: the agent's did:key
	InstanceJKT string // act.jkt: thumbprint of the instance key the actor's token was bound to; "" if none
	Task        string // act.txn: the task the actor worked on; "" if none
}

// MaxChainDepth is the deepest delegation chain (nested act claims) a token may carry.
const MaxChainDepth = 16

// HasScope reports whether the token carries scope s.
func (c *Caller) HasScope(s string) bool {
	for _, x := range c.Scopes {
		if x == s {
			return true
		}
	}
	return false
}

type callerKey struct{}

// CallerFrom returns the Caller that Middleware put in the request context.
func CallerFrom(ctx context.Context) (*Caller, bool) {
	c, ok := ctx.Value(callerKey{}).(*Caller)
	return c, ok && c != nil
}

// WithCaller returns a copy of ctx carrying c, as Middleware does; for tests of handlers.
func WithCaller(ctx context.Context, c *Caller) context.Context {
	return context.WithValue(ctx, callerKey{}, c)
}

// Middleware verifies every request before next runs. A refusal is written with its status, a
// WWW-Authenticate: DPoP challenge, DPoP-Nonce when a nonce is required, Cache-Control: no-store
// and a JSON body {"error","error_description","request_id"} (see Config.RequestID); next does
// not run. On success next runs with the Caller in the request context (CallerFrom), and the
// response carries a fresh DPoP-Nonce when nonces are on.
func (v *Verifier) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, e := v.check(r.Context(), r, w.Header())
		if e != nil {
			e.WriteHTTP(w)
			return
		}
		if v.nonces != nil {
			w.Header().Set(dpop.NonceHeaderName, v.nonces.Current())
		}
		next.ServeHTTP(w, r.WithContext(WithCaller(r.Context(), c)))
	})
}

var (
	headerAuthorization = http.CanonicalHeaderKey("Authorization")
	headerDPoP          = http.CanonicalHeaderKey(dpop.HeaderName)
)

// Verify checks the request's access token, DPoP proof and status. Errors are *Error, with the
// request id of Config.RequestID; OnDeny has been called with them.
func (v *Verifier) Verify(ctx context.Context, r *http.Request) (*Caller, error) {
	c, e := v.check(ctx, r, nil)
	if e != nil {
		return nil, e
	}
	return c, nil
}

// check is Verify; resp is the response's headers, where Middleware has them.
func (v *Verifier) check(ctx context.Context, r *http.Request, resp http.Header) (*Caller, *Error) {
	c, e := v.verify(ctx, r)
	if e != nil {
		e.RequestID = v.requestID(r, resp)
		if v.onDeny != nil {
			v.onDeny(r, e)
		}
		return nil, e
	}
	return c, nil
}

// requestID is the id a refusal of r carries: Config.RequestID's, else the X-Request-Id the
// server's middleware set on the response, else a plain X-Request-Id on the request.
func (v *Verifier) requestID(r *http.Request, resp http.Header) string {
	if v.reqID != nil {
		return v.reqID(r)
	}
	if id := resp.Get(oautherr.RequestIDHeader); id != "" {
		return id
	}
	if id := r.Header.Get(oautherr.RequestIDHeader); plainID(id) {
		return id
	}
	return ""
}

// plainID reports whether id is 1 to 128 characters of A-Z a-z 0-9 . _ : -, the request ids a
// refusal repeats from a request: nothing that could forge a log line or carry a payload.
func plainID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == ':' || c == '-') {
			return false
		}
	}
	return true
}

func (v *Verifier) verify(ctx context.Context, r *http.Request) (*Caller, *Error) {
	// 1. The credentials: exactly one Authorization: DPoP <token>.
	auths := r.Header[headerAuthorization]
	if len(auths) == 0 {
		return nil, invalidToken(ReasonMissing, "this resource needs a DPoP-bound access token: send Authorization: DPoP <token> with a DPoP proof")
	}
	if len(auths) > 1 {
		return nil, invalidToken(ReasonMalformed, "send exactly one Authorization header")
	}
	scheme, tok, _ := strings.Cut(auths[0], " ")
	tok = strings.TrimLeft(tok, " ")
	switch {
	case strings.EqualFold(scheme, "DPoP"):
	case strings.EqualFold(scheme, "Bearer"):
		e := invalidToken(ReasonBearer, "this token is DPoP-bound: send it as Authorization: DPoP with a DPoP proof")
		return nil, v.attribute(ctx, e, strings.Trim(tok, " \t"))
	default:
		e := invalidToken(ReasonScheme, "unsupported authorization scheme: send Authorization: DPoP <token> with a DPoP proof")
		return nil, v.attribute(ctx, e, schemeToken(auths[0]))
	}
	if tok == "" {
		return nil, invalidToken(ReasonMalformed, "the Authorization header has no token")
	}

	// 2. Exactly one proof (RFC 9449 §4.3 check 1).
	proofs := r.Header[headerDPoP]
	switch {
	case len(proofs) == 0:
		e := refuse(http.StatusUnauthorized, CodeInvalidDPoPProof, ReasonMissingProof, "a DPoP proof is required: send a DPoP header signed by the token's key")
		return nil, v.attribute(ctx, e, tok)
	case len(proofs) > 1:
		e := refuse(http.StatusUnauthorized, CodeInvalidDPoPProof, ReasonMultipleProofs, "send exactly one DPoP header")
		return nil, v.attribute(ctx, e, tok)
	}

	// 3–5. The token: signature and claims, checked once per token (see tokenCache).
	c, e := v.token(ctx, tok)
	if e != nil {
		return nil, e
	}

	// 6. The proof: fresh, for this request, by the key the token is bound to, with ath.
	proof, err := v.checker.Check(ctx, proofs[0], dpop.Request{
		Method:      r.Method,
		URL:         v.requestURL(r),
		AccessToken: tok,
		JKT:         c.JKT,
	})
	if err != nil {
		e := v.proofError(err, tok, proofs[0])
		e.Caller = c
		return nil, e
	}
	c.ProofID, c.ProofExpiresAt = proof.ReplayID, proof.ReplayUntil
	c2, e := v.afterProof(ctx, c)
	if e != nil {
		e.Caller = c
	}
	return c2, e
}

// attribute returns e, a refusal of how a token was presented (as Bearer, under another scheme,
// without its proof or with two), with Caller set to the token's Caller when tok verifies as an
// access token: the same checks and cache as a token presented properly (step 3–5: signature,
// claims, issuer, audience, expiry), not its proof or status. So a valid token sent without its
// key — a thief's replay — is refused in its agent's and principal's name rather than
// anonymously. Nothing else of e changes: the response is the same whether or not tok verifies,
// and it says nothing about the token. A token that does not verify leaves e anonymous; the
// cost is what the proper path would spend on it (one parse, one key lookup, at most one
// signature check).
func (v *Verifier) attribute(ctx context.Context, e *Error, tok string) *Error {
	if tok == "" {
		return e
	}
	if c, te := v.token(ctx, tok); te == nil {
		e.Caller = c
	}
	return e
}

// schemeToken is the credentials of an Authorization value under a scheme this verifier does not
// accept (Basic, Token, "DPoP\t<token>", …): what follows the first space or tab, without
// surrounding spaces and tabs; "" when there is none. Whether it is an access token at all is for
// attribute's checks to say.
func schemeToken(auth string) string {
	i := strings.IndexAny(auth, " \t")
	if i < 0 {
		return ""
	}
	return strings.Trim(auth[i:], " \t")
}

// token returns the Caller of an access token, from the cache when this verifier has already
// checked the token and it has not expired since.
func (v *Verifier) token(ctx context.Context, tok string) (*Caller, *Error) {
	if c, ok := v.cache.get(tok, v.now(), v.leeway); ok {
		return c, nil
	}
	c, e := v.checkToken(ctx, tok)
	if e == nil {
		v.cache.put(tok, c)
	}
	return c, e
}

// checkToken verifies an access token: a compact JWS with a pinned algorithm, typ at+jwt, a
// known kid, a valid signature over the exact bytes received, and valid claims.
func (v *Verifier) checkToken(ctx context.Context, tok string) (*Caller, *Error) {
	// 3. The token: a compact JWS with a pinned algorithm, typ at+jwt, a known kid.
	jws, ok := parseCompact(tok)
	if !ok {
		return nil, invalidToken(ReasonMalformed, "the access token is not a well-formed signed JWT")
	}
	hdr := &jws.header
	if !v.algAllowed(hdr.Alg) {
		return nil, invalidToken(ReasonAlg, "the token's signature algorithm is not accepted")
	}
	if hdr.Crit != nil {
		return nil, invalidToken(ReasonMalformed, "the access token has critical header parameters this verifier does not understand")
	}
	if !strings.EqualFold(hdr.Typ, "at+jwt") && !strings.EqualFold(hdr.Typ, "application/at+jwt") {
		return nil, invalidToken(ReasonTyp, "the token is not an access token (typ at+jwt)")
	}
	if hdr.Kid == "" {
		return nil, invalidToken(ReasonUnknownKID, "the access token names no signing key (kid)")
	}
	key, err := v.keys.PublicKey(ctx, hdr.Kid)
	if err != nil {
		if errors.Is(err, ErrUnknownKey) {
			return nil, invalidToken(ReasonUnknownKID, "the access token is signed with a key the issuer does not publish")
		}
		return nil, refuse(http.StatusServiceUnavailable, CodeTemporarilyUnavail, ReasonKeysUnavailable, "the issuer's signing keys cannot be read right now; try again later")
	}

	// 4. The signature, over the exact bytes received.
	if !verifySignature(hdr.Alg, key, jws.signingInput, jws.sig) {
		return nil, invalidToken(ReasonSignature, "the access token's signature does not verify")
	}

	// 5. The claims.
	payload, err := jws.decodePayload()
	if err != nil {
		return nil, invalidToken(ReasonMalformed, "the access token's payload is not base64url")
	}
	return v.claims(payload)
}

// afterProof runs the checks that follow the proof: status and scopes.
func (v *Verifier) afterProof(ctx context.Context, c *Caller) (*Caller, *Error) {
	// 7. Status: the token, its grant, its tasks and the agents of its chain are not revoked.
	if err := v.status.Check(ctx, c); err != nil {
		var e *Error
		if errors.Is(err, ErrRevoked) {
			desc := strings.TrimPrefix(err.Error(), ErrRevoked.Error()+": ")
			e = invalidToken(ReasonRevoked, desc)
		} else {
			e = refuse(http.StatusServiceUnavailable, CodeTemporarilyUnavail, ReasonStatusUnavailable, "the token's revocation status cannot be checked right now; try again later")
		}
		e.Caller = c
		return nil, e
	}

	// 8. Scopes this resource needs.
	for _, s := range v.required {
		if !c.HasScope(s) {
			e := refuse(http.StatusForbidden, CodeInsufficientScope, ReasonScope, "the token does not carry the scopes this resource needs: "+strings.Join(v.required, " "))
			e.scope = strings.Join(v.required, " ")
			e.Caller = c
			return nil, e
		}
	}
	return c, nil
}

func (v *Verifier) algAllowed(alg string) bool {
	for _, a := range v.algs {
		if a == alg {
			return true
		}
	}
	return false
}

func verifySignature(alg string, key any, signed string, sig []byte) bool {
	switch alg {
	case AlgEdDSA, AlgEd25519:
		k, ok := key.(ed25519.PublicKey)
		return ok && len(k) == ed25519.PublicKeySize && ed25519.Verify(k, []byte(signed), sig)
	case AlgES256:
		k, ok := key.(*ecdsa.PublicKey)
		if !ok || signingKey(k) == nil || len(sig) != 64 {
			return false
		}
		h := sha256.Sum256([]byte(signed))
		r := new(big.Int).SetBytes(sig[:32])
		s := new(big.Int).SetBytes(sig[32:])
		return ecdsa.Verify(k, h[:], r, s)
	}
	return false
}

func (v *Verifier) claims(payload []byte) (*Caller, *Error) {
	m, err := decodeClaims(payload)
	if err != nil {
		return nil, invalidToken(ReasonMalformed, "the access token's claims are not a JSON object")
	}
	if iss, _ := m["iss"].(string); iss != v.issuer {
		return nil, invalidToken(ReasonIssuer, "the access token was issued by another issuer")
	}
	// One allocation holds the Caller and the one-actor chain of a self token.
	cs := &callerWithActor{}
	c := &cs.c
	c.Claims = m
	switch aud := m["aud"].(type) {
	case string:
		c.Audience = []string{aud}
	case []any:
		c.Audience = make([]string, 0, len(aud))
		for _, a := range aud {
			if s, ok := a.(string); ok {
				c.Audience = append(c.Audience, s)
			}
		}
	}
	found := false
	for _, a := range c.Audience {
		if sameAudience(a, v.audience) {
			found = true
			break
		}
	}
	if !found {
		return nil, invalidToken(ReasonAudience, "the access token is not meant for this resource (aud)")
	}

	now := v.now()
	exp, ok := numericDate(m["exp"])
	if !ok {
		return nil, invalidToken(ReasonClaims, "the access token has no valid exp claim")
	}
	if !now.Before(exp.Add(v.leeway)) {
		return nil, invalidToken(ReasonExpired, "the access token has expired: get a new one")
	}
	iat, ok := numericDate(m["iat"])
	if !ok {
		return nil, invalidToken(ReasonClaims, "the access token has no valid iat claim")
	}
	if iat.After(now.Add(v.leeway)) {
		return nil, invalidToken(ReasonNotYetValid, "the access token is issued in the future: check the clocks")
	}
	if raw, present := m["nbf"]; present {
		nbf, ok := numericDate(raw)
		if !ok {
			return nil, invalidToken(ReasonClaims, "the access token's nbf claim is not a number")
		}
		if nbf.After(now.Add(v.leeway)) {
			return nil, invalidToken(ReasonNotYetValid, "the access token is not valid yet")
		}
	}
	c.ExpiresAt, c.IssuedAt = exp, iat

	c.Subject, _ = m["sub"].(string)
	c.JTI, _ = m["jti"].(string)
	c.ClientID, _ = m["client_id"].(string)
	if c.Subject == "" || c.JTI == "" || c.ClientID == "" {
		return nil, invalidToken(ReasonClaims, "the access token lacks sub, jti or client_id")
	}
	c.Handle, _ = m["handle"].(string)
	c.DID, _ = m["did"].(string)
	c.AgentID = c.ClientID
	if scope, _ := m["scope"].(string); scope != "" {
		c.Scopes = strings.Fields(scope)
	}
	if cnf, ok := m["cnf"].(map[string]any); ok {
		c.JKT, _ = cnf["jkt"].(string)
	}
	if c.JKT == "" {
		return nil, invalidToken(ReasonUnbound, "the access token is not DPoP-bound (no cnf.jkt)")
	}
	if e := c.delegation(m, &cs.self); e != nil {
		return nil, e
	}
	return c, nil
}

type callerWithActor struct {
	c    Caller
	self [1]Actor
}

// delegation reads txn, grant, authorization_details and the act chain. A token without act
// costs four map lookups and no allocation.
func (c *Caller) delegation(m map[string]any, self *[1]Actor) *Error {
	var ok bool
	if c.Task, ok = optString(m, "txn"); !ok {
		return invalidToken(ReasonClaims, "the access token's txn claim is not a string")
	}
	if c.Grant, ok = optString(m, "grant"); !ok {
		return invalidToken(ReasonClaims, "the access token's grant claim is not a string")
	}
	if raw, present := m["authorization_details"]; present {
		details, e := authorizationDetails(raw)
		if e != nil {
			return e
		}
		c.AuthorizationDetails = details
	}
	if isPrincipal(c.Subject) {
		c.Principal = c.Subject
	}
	act, present := m["act"]
	if !present {
		self[0] = Actor{AgentID: c.ClientID, Handle: c.Handle, DID: c.DID, Task: c.Task}
		c.Chain = self[:]
		return nil
	}
	chain, e := actorChain(act)
	if e != nil {
		return e
	}
	current := &chain[len(chain)-1]
	if current.AgentID != c.ClientID {
		return invalidToken(ReasonClaims, "the access token's current actor (act.sub) is not its client_id")
	}
	if _, hasTxn := m["txn"]; hasTxn && c.Task != current.Task {
		return invalidToken(ReasonClaims, "the access token's txn is not the task of its current actor (act.txn)")
	}
	c.Chain = chain
	return nil
}

// actorChain reads nested act claims (RFC 8693 §4.1), the outermost the current actor, into a
// chain in delegation order: the first agent first, the current one last.
func actorChain(v any) ([]Actor, *Error) {
	depth := 0
	for next := v; ; depth++ {
		act, ok := next.(map[string]any)
		if !ok {
			return nil, invalidToken(ReasonClaims, "the access token's act claim is not an object")
		}
		if depth == MaxChainDepth {
			return nil, invalidToken(ReasonClaims, fmt.Sprintf("the access token's delegation chain is deeper than %d", MaxChainDepth))
		}
		if next, ok = act["act"]; !ok {
			depth++
			break
		}
	}
	chain := make([]Actor, depth)
	act, _ := v.(map[string]any)
	for i := depth - 1; i >= 0; i-- {
		a := &chain[i]
		var okSub, okHandle, okDID, okJKT, okTxn bool
		a.AgentID, okSub = optString(act, "sub")
		a.Handle, okHandle = optString(act, "handle")
		a.DID, okDID = optString(act, "did")
		a.InstanceJKT, okJKT = optString(act, "jkt")
		a.Task, okTxn = optString(act, "txn")
		if !okSub || a.AgentID == "" {
			return nil, invalidToken(ReasonClaims, "an actor in the access token's act chain has no sub")
		}
		if !okHandle || !okDID || !okJKT || !okTxn {
			return nil, invalidToken(ReasonClaims, "an actor in the access token's act chain has a handle, did, jkt or txn that is not a string")
		}
		act, _ = act["act"].(map[string]any)
	}
	return chain, nil
}

// authorizationDetails checks that v is an RFC 9396 authorization_details array (objects, each
// with a string type) and re-encodes its elements.
func authorizationDetails(v any) ([]json.RawMessage, *Error) {
	list, ok := v.([]any)
	if !ok {
		return nil, invalidToken(ReasonClaims, "the access token's authorization_details claim is not an array")
	}
	out := make([]json.RawMessage, len(list))
	for i, d := range list {
		obj, ok := d.(map[string]any)
		if !ok {
			return nil, invalidToken(ReasonClaims, "the access token's authorization_details are not all objects")
		}
		if t, ok := obj["type"].(string); !ok || t == "" {
			return nil, invalidToken(ReasonClaims, "an entry of the access token's authorization_details has no type")
		}
		b, err := json.Marshal(obj)
		if err != nil {
			return nil, invalidToken(ReasonClaims, "the access token's authorization_details cannot be encoded")
		}
		out[i] = b
	}
	return out, nil
}

// optString returns claim k of m: "" and true when absent, false when present but not a string.
func optString(m map[string]any, k string) (string, bool) {
	v, present := m[k]
	if !present {
		return "", true
	}
	s, ok := v.(string)
	return s, ok
}

// isPrincipal reports whether id names a principal: a user (usr_…) or a service account (svc_…).
func isPrincipal(id string) bool {
	return strings.HasPrefix(id, "usr_") || strings.HasPrefix(id, "svc_")
}

func decodeClaims(payload []byte) (map[string]any, error) {
	if len(payload) == 0 || payload[0] != '{' {
		return nil, errors.New("claims are not a JSON object")
	}
	var m map[string]any
	if err := json.Unmarshal(payload, &m); err != nil {
		return nil, err
	}
	return m, nil
}

// numericDate reads a JWT NumericDate (RFC 7519 §2) decoded as float64.
func numericDate(v any) (time.Time, bool) {
	f, ok := v.(float64)
	if !ok || f < 0 || f > 1<<53 || math.IsNaN(f) {
		return time.Time{}, false
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)), true
}

func (v *Verifier) requestURL(r *http.Request) string {
	path := r.URL.EscapedPath()
	if path == "" {
		path = "/"
	}
	if v.baseURL != "" {
		return v.baseURL + path
	}
	scheme := "http://"
	if r.TLS != nil {
		scheme = "https://"
	}
	host := r.Host
	if host == "" {
		host = r.URL.Host
	}
	return scheme + host + path
}

func (v *Verifier) proofError(err error, tok, proof string) *Error {
	var de *dpop.Error
	if !errors.As(err, &de) {
		if errors.Is(err, dpop.ErrReplay) {
			return refuse(http.StatusUnauthorized, CodeInvalidDPoPProof, "replay", "this DPoP proof was already used: make a fresh proof for every request")
		}
		return refuse(http.StatusServiceUnavailable, CodeTemporarilyUnavail, ReasonProof, "the DPoP proof cannot be checked right now; try again later")
	}
	code := de.Code
	if code == "" {
		code = CodeInvalidDPoPProof
	}
	reason := de.Reason
	if reason == "" {
		reason = ReasonProof
	}
	desc := de.Description
	// Never echo credentials back, whatever the proof checker wrote.
	if desc == "" || strings.Contains(desc, tok) || (len(proof) >= 16 && strings.Contains(desc, proof)) {
		desc = "the DPoP proof was refused"
	}
	e := refuse(http.StatusUnauthorized, code, reason, desc)
	if code == CodeUseDPoPNonce && v.nonces != nil {
		e.Nonce = v.nonces.Current()
	}
	return e
}

// sameAudience compares an aud value with this resource's identifier. A URL with an empty path
// and the same URL with "/" are one resource (RFC 3986 §6.2.3): the issuer names resources in
// normalised form (https://api.example/), while a configured audience is often written without
// the slash.
func sameAudience(aud, want string) bool {
	if aud == want {
		return true
	}
	short, long := aud, want
	if len(short) > len(long) {
		short, long = long, short
	}
	return len(long) == len(short)+1 && long[len(short)] == '/' && long[:len(short)] == short &&
		strings.Count(short, "/") == 2 && strings.Contains(short, "://")
}
