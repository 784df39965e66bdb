package client

import (
	"context"
	"crypto"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mandate-dev/mandate/didkey"
	"github.com/mandate-dev/mandate/dpop"
)

// Token exchange identifiers (RFC 8693 §3).
const (
	grantTypeTokenExchange = "urn:ietf:params:oauth:grant-type:token-exchange"
	tokenTypeAccessToken   = "urn:ietf:params:oauth:token-type:access_token"
	tokenTypeJWT           = "urn:ietf:params:oauth:token-type:jwt"
)

// actorTokenLifetime is how long an actor token made by NewActorToken is valid (the server
// accepts at most 5 minutes).
const actorTokenLifetime = 60 * time.Second

// NewActorToken returns an actor token for issuer: a short JWT that key's holder signs to name
// itself as the next holder of a token exchange (header kid = its did:key; claims iss = the same
// did:key, aud = issuer, iat, exp one minute ahead, a random jti). The server uses it once.
//
// An agent passes its actor token to whoever hands it authority (Task.Delegate); an instance key
// is named the same way (TaskRequest.InstanceKey).
func NewActorToken(key crypto.Signer, issuer string) (string, error) {
	did, err := DID(key)
	if err != nil {
		return "", err
	}
	now := time.Now()
	jws, err := sign(key, did, "JWT", map[string]any{
		"iss": did,
		"aud": issuer,
		"iat": now.Unix(),
		"exp": now.Add(actorTokenLifetime).Unix(),
		"jti": randomID(),
	})
	if err != nil {
		return "", err
	}
	compact, err := jws.CompactSerialize()
	if err != nil {
		return "", fmt.Errorf("client: %w", err)
	}
	return compact, nil
}

// TaskRequest describes a task to start (StartTask) or to hand on (Task.Delegate). Empty sets ask
// for everything the grant (or the parent task) has; the server narrows, never widens.
type TaskRequest struct {
	Purpose              string   // why, for the audit trail and the task list
	Scopes               []string // a subset of the grant's
	Resources            []string // a subset of the grant's (RFC 8707 resource indicators)
	AuthorizationDetails []json.RawMessage
	TTL                  time.Duration    // the task's lifetime; 0 = as long as the grant allows
	Budget               map[string]int64 // within the grant's (or the parent task's)

	// InstanceKey, for StartTask only, is an ephemeral key of this one run of the agent (see
	// GenerateKey): the task's tokens are bound to it rather than to the agent's long-term key,
	// so a leaked instance key is worth one task. Keep it in memory; it is not registered.
	InstanceKey crypto.Signer
}

// form adds the request's parameters to a token exchange form.
func (r TaskRequest) form(f url.Values) error {
	if r.Purpose != "" {
		f.Set("purpose", r.Purpose)
	}
	if len(r.Scopes) > 0 {
		f.Set("scope", strings.Join(r.Scopes, " "))
	}
	for _, res := range r.Resources {
		f.Add("resource", res)
	}
	if len(r.AuthorizationDetails) > 0 {
		b, err := json.Marshal(r.AuthorizationDetails)
		if err != nil {
			return fmt.Errorf("client: authorization details: %w", err)
		}
		f.Set("authorization_details", string(b))
	}
	switch {
	case r.TTL < 0 || r.TTL > 0 && r.TTL < time.Second:
		return fmt.Errorf("client: task TTL %v: want at least a second", r.TTL)
	case r.TTL > 0:
		f.Set("task_ttl", strconv.FormatInt(seconds(r.TTL), 10))
	}
	if len(r.Budget) > 0 {
		b, err := json.Marshal(r.Budget)
		if err != nil {
			return fmt.Errorf("client: budget: %w", err)
		}
		f.Set("budget", string(b))
	}
	return nil
}

// TaskToken is one access token of a task. Its times are wall-clock times (no monotonic
// reading): the server judges expiry by the wall clock, which keeps running while a machine
// sleeps and the monotonic clock does not.
type TaskToken struct {
	AccessToken   string
	Scope         string
	IssuedAt      time.Time
	ExpiresAt     time.Time
	TaskExpiresAt time.Time // when the task ends, as the server said; zero if unknown (ResumeTask)
}

// ErrTokenExpired is returned (wrapped) when a task's token has expired before it was renewed. It
// is not sent to the server: a token is renewed only by exchanging a valid one, so the task can
// no longer be continued with it.
var ErrTokenExpired = errors.New("the task's token has expired")

// refreshAt is when less than a third of the token's lifetime remains.
func (t TaskToken) refreshAt() time.Time {
	return t.ExpiresAt.Add(-t.ExpiresAt.Sub(t.IssuedAt) / 3)
}

// Task is one execution under a grant, as the agent running it holds it: an access token of the
// task bound to Key, which it replaces before it expires. It is safe for concurrent use.
type Task struct {
	ID      string        // tsk_…, the token's txn
	GrantID string        // gr_…
	Key     crypto.Signer // the key the task's tokens are bound to: the agent's or an instance key

	issuer string
	hc     *http.Client
	nonces nonceCache
	now    func() time.Time

	mu       sync.Mutex // serializes refreshes
	endpoint string     // the token endpoint, once known
	tok      TaskToken
}

// StartTask starts a task by exchanging grantToken (RFC 8693): the DPoP proof is signed by
// holderKey, the agent's long-term key the grant token is bound to. With req.InstanceKey set the
// task's tokens are bound to that key instead (an actor token signed by it names it). hc nil means
// http.DefaultClient.
func StartTask(ctx context.Context, hc *http.Client, issuer string, holderKey crypto.Signer, grantToken string, req TaskRequest) (*Task, error) {
	if holderKey == nil {
		return nil, errors.New("client: StartTask needs the agent's key")
	}
	if grantToken == "" {
		return nil, errors.New("client: StartTask needs a grant token (TokenSource.Grants)")
	}
	if hc == nil {
		hc = http.DefaultClient
	}
	t := &Task{Key: holderKey, issuer: issuer, hc: hc, now: time.Now}
	form := url.Values{
		"grant_type":         {grantTypeTokenExchange},
		"subject_token":      {grantToken},
		"subject_token_type": {tokenTypeJWT},
	}
	if req.InstanceKey != nil {
		act, err := NewActorToken(req.InstanceKey, issuer)
		if err != nil {
			return nil, err
		}
		form.Set("actor_token", act)
		form.Set("actor_token_type", tokenTypeJWT)
		t.Key = req.InstanceKey
	}
	if err := req.form(form); err != nil {
		return nil, err
	}
	tok, err := t.exchange(ctx, holderKey, form)
	if err != nil {
		return nil, err
	}
	c, err := t.check(tok.AccessToken, t.Key)
	if err != nil {
		return nil, err
	}
	t.ID, t.GrantID, t.tok = c.Txn, c.Grant, tok
	return t, nil
}

// ResumeTask takes up a task token issued earlier (by StartTask in another process, or handed to
// this agent by Task.Delegate of another): key is the key it is bound to. hc nil means
// http.DefaultClient.
func ResumeTask(issuer string, hc *http.Client, accessToken string, key crypto.Signer) (*Task, error) {
	if key == nil {
		return nil, errors.New("client: ResumeTask needs the key the token is bound to")
	}
	if hc == nil {
		hc = http.DefaultClient
	}
	t := &Task{Key: key, issuer: issuer, hc: hc, now: time.Now}
	c, err := t.check(accessToken, key)
	if err != nil {
		return nil, err
	}
	t.ID, t.GrantID = c.Txn, c.Grant
	t.tok = TaskToken{AccessToken: accessToken, Scope: c.Scope, IssuedAt: time.Unix(c.IssuedAt, 0), ExpiresAt: time.Unix(c.Expiry, 0)}
	return t, nil
}

// Current returns the task's current token without refreshing it.
func (t *Task) Current() TaskToken {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.tok
}

// Token returns a valid token of the task, exchanging the current one for a fresh one first when
// less than a third of its lifetime remains. If that early refresh fails while the current token
// is still valid, the current token is returned. Once the current token has expired, Token
// returns an error wrapping ErrTokenExpired (see Refresh).
func (t *Task) Token(ctx context.Context) (TaskToken, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now().Round(0)
	if now.Before(t.tok.refreshAt()) {
		return t.tok, nil
	}
	if err := t.refreshLocked(ctx); err != nil {
		if now.Before(t.tok.ExpiresAt) {
			return t.tok, nil
		}
		return TaskToken{}, err
	}
	return t.tok, nil
}

// Refresh exchanges the task's current token for a fresh one of the same task (no actor token:
// bound to the same key). The server refuses once the task, its grant or an agent of its chain
// has ended. A token that has already expired is not sent: the error wraps ErrTokenExpired.
func (t *Task) Refresh(ctx context.Context) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.refreshLocked(ctx)
}

func (t *Task) refreshLocked(ctx context.Context) error {
	if exp := t.tok.ExpiresAt; !t.now().Round(0).Before(exp) {
		return fmt.Errorf("client: task %s: %w at %s, before it was renewed", t.ID, ErrTokenExpired, exp.UTC().Format(time.RFC3339))
	}
	tok, err := t.exchange(ctx, t.Key, url.Values{
		"grant_type":         {grantTypeTokenExchange},
		"subject_token":      {t.tok.AccessToken},
		"subject_token_type": {tokenTypeAccessToken},
	})
	if err != nil {
		return err
	}
	c, err := t.check(tok.AccessToken, t.Key)
	if err != nil {
		return err
	}
	if c.Txn != t.ID {
		return fmt.Errorf("client: the refreshed token is for task %q, not %s", c.Txn, t.ID)
	}
	t.tok = tok
	return nil
}

// DelegatedToken is an access token of a child task, for another agent.
type DelegatedToken struct {
	TaskID      string // the child task
	AccessToken string // bound to the other agent's key: useless without it
	Scope       string
	ExpiresAt   time.Time
}

// Delegate hands a narrower child task to another agent: it exchanges the task's token (proof by
// Key) naming the next holder by actorToken, which that agent made with NewActorToken. The token
// returned is bound to the other agent's key; give it to that agent, which uses it with its own
// key (ResumeTask). req.InstanceKey is not used here.
func (t *Task) Delegate(ctx context.Context, actorToken string, req TaskRequest) (*DelegatedToken, error) {
	if actorToken == "" {
		return nil, errors.New("client: Delegate needs the next holder's actor token")
	}
	if req.InstanceKey != nil {
		return nil, errors.New("client: Delegate binds the child task to the actor token's key; TaskRequest.InstanceKey is for StartTask")
	}
	actorKey, err := actorTokenKey(actorToken)
	if err != nil {
		return nil, err
	}
	cur, err := t.Token(ctx)
	if err != nil {
		return nil, err
	}
	form := url.Values{
		"grant_type":         {grantTypeTokenExchange},
		"subject_token":      {cur.AccessToken},
		"subject_token_type": {tokenTypeAccessToken},
		"actor_token":        {actorToken},
		"actor_token_type":   {tokenTypeJWT},
	}
	if err := req.form(form); err != nil {
		return nil, err
	}
	t.mu.Lock()
	tok, err := t.exchange(ctx, t.Key, form)
	t.mu.Unlock()
	if err != nil {
		return nil, err
	}
	c, err := t.check(tok.AccessToken, actorKey)
	if err != nil {
		return nil, err
	}
	return &DelegatedToken{TaskID: c.Txn, AccessToken: tok.AccessToken, Scope: tok.Scope, ExpiresAt: tok.ExpiresAt}, nil
}

// End completes the task, and every task under it, as the agent (POST
// {issuer}/v1/agent/tasks/{id}/end with agent's own token). Its tokens stop working.
func (t *Task) End(ctx context.Context, agent *TokenSource) error {
	return EndTask(ctx, agent, t.ID)
}

// Transport returns an http.RoundTripper that sends each request with the task's token
// (Authorization: DPoP) and a fresh DPoP proof by Key, re-exchanging the token when less than a
// third of its lifetime remains, and answering a use_dpop_nonce challenge once as
// TokenSource.Transport does. base nil means http.DefaultTransport.
func (t *Task) Transport(base http.RoundTripper) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	return &transport{base: base, key: t.Key, nonces: &t.nonces, now: t.now,
		token: func(ctx context.Context) (string, error) {
			tok, err := t.Token(ctx)
			return tok.AccessToken, err
		}}
}

// exchange posts a token exchange with a proof by key, retrying once with the server's nonce.
// The caller holds t.mu or owns t alone.
func (t *Task) exchange(ctx context.Context, key crypto.Signer, form url.Values) (TaskToken, error) {
	if t.endpoint == "" {
		md, err := discover(ctx, t.hc, t.issuer)
		if err != nil {
			return TaskToken{}, err
		}
		t.endpoint = md.TokenEndpoint
	}
	for attempt := 0; ; attempt++ {
		now := t.now().Round(0) // wall clock: see TaskToken
		out, err := postToken(ctx, t.hc, t.endpoint, key, &t.nonces, now, form)
		if nonceRetry(attempt, err) {
			continue
		}
		if err != nil {
			return TaskToken{}, err
		}
		if out.IssuedTokenType != "" && out.IssuedTokenType != tokenTypeAccessToken {
			return TaskToken{}, fmt.Errorf("client: the exchange issued a %q, not an access token", out.IssuedTokenType)
		}
		tok := TaskToken{AccessToken: out.AccessToken, Scope: out.Scope, IssuedAt: now,
			ExpiresAt: now.Add(time.Duration(out.ExpiresIn) * time.Second)}
		if out.TaskExpiresAt > 0 {
			tok.TaskExpiresAt = time.Unix(out.TaskExpiresAt, 0)
		}
		return tok, nil
	}
}

// taskClaims are the claims of a task token the client reads (the server signed them; the client
// does not need to verify what it was just given over TLS, only to learn the task and binding).
type taskClaims struct {
	Txn      string `json:"txn"`
	Grant    string `json:"grant"`
	Scope    string `json:"scope"`
	IssuedAt int64  `json:"iat"`
	Expiry   int64  `json:"exp"`
	Cnf      struct {
		JKT string `json:"jkt"`
	} `json:"cnf"`
}

// check reads a task token's claims and checks it belongs to a task and is bound to key.
func (t *Task) check(raw string, key crypto.PublicKey) (*taskClaims, error) {
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return nil, errors.New("client: the task token is not a JWT")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil, errors.New("client: the task token's claims are not base64url")
	}
	var c taskClaims
	if err := json.Unmarshal(payload, &c); err != nil {
		return nil, errors.New("client: the task token's claims are not a JSON object")
	}
	if c.Txn == "" {
		return nil, errors.New("client: the token belongs to no task (no txn claim)")
	}
	if signer, ok := key.(crypto.Signer); ok {
		key = signer.Public()
	}
	jkt, err := dpop.Thumbprint(key)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	if c.Cnf.JKT != jkt {
		return nil, errors.New("client: the task token is bound to another key than expected (cnf.jkt)")
	}
	return &c, nil
}

// actorTokenKey reads the public key an actor token names in its kid (a did:key).
func actorTokenKey(actorToken string) (crypto.PublicKey, error) {
	head, _, ok := strings.Cut(actorToken, ".")
	if !ok {
		return nil, errors.New("client: the actor token is not a JWT")
	}
	b, err := base64.RawURLEncoding.DecodeString(head)
	if err != nil {
		return nil, errors.New("client: the actor token's header is not base64url")
	}
	var h struct {
		KID string `json:"kid"`
	}
	if err := json.Unmarshal(b, &h); err != nil {
		return nil, errors.New("client: the actor token's header is not a JSON object")
	}
	pub, err := didkey.Parse(h.KID)
	if err != nil {
		return nil, fmt.Errorf("client: the actor token's kid is not a did:key: %w", err)
	}
	return pub, nil
}
