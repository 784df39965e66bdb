package client

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/mandate-dev/mandate/dpop"
)

// Config configures a TokenSource.
type Config struct {
	Issuer     string        // required: the server's issuer URL, as in its metadata
	AgentID    string        // required: agt_…, from Register
	Key        crypto.Signer // required: the agent's registered key (Ed25519 or P-256)
	Scope      string        // space-separated scopes to ask for; empty = the server's default
	Resource   string        // RFC 8707 resource indicator; empty = none
	HTTPClient *http.Client  // nil = http.DefaultClient
	Now        func() time.Time
	// RefreshBefore is how long before expiry a token is replaced. 0 means: when less than a
	// third of its lifetime or 60s remains, whichever comes first, but never in the first half
	// of its lifetime.
	RefreshBefore time.Duration
}

// Token is an access token bound to the agent's key.
type Token struct {
	AccessToken string
	Scope       string
	ExpiresAt   time.Time

	refreshAt time.Time
}

// TokenSource gets and caches access tokens for an agent with the client_credentials grant,
// authenticating with a private_key_jwt assertion and binding tokens to the agent key with DPoP.
// It is safe for concurrent use.
type TokenSource struct {
	cfg    Config
	did    string
	hc     *http.Client
	now    func() time.Time
	nonces nonceCache

	mu  sync.Mutex
	tok *Token
	md  *metadata

	sf singleflight.Group
}

// NewTokenSource checks cfg and returns a TokenSource. It does no I/O.
func NewTokenSource(cfg Config) (*TokenSource, error) {
	var problems []error
	if cfg.Issuer == "" {
		problems = append(problems, errors.New("Issuer is required"))
	} else if u, err := url.Parse(cfg.Issuer); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		problems = append(problems, fmt.Errorf("Issuer %q is not an http(s) URL", cfg.Issuer))
	}
	if cfg.AgentID == "" {
		problems = append(problems, errors.New("AgentID is required"))
	}
	if cfg.RefreshBefore < 0 {
		problems = append(problems, errors.New("RefreshBefore must not be negative"))
	}
	var did string
	if cfg.Key == nil {
		problems = append(problems, errors.New("Key is required"))
	} else if d, err := DID(cfg.Key); err != nil {
		problems = append(problems, fmt.Errorf("Key: %w", err))
	} else {
		did = d
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("client: invalid config: %w", errors.Join(problems...))
	}
	s := &TokenSource{cfg: cfg, did: did, hc: cfg.HTTPClient, now: cfg.Now}
	if s.hc == nil {
		s.hc = http.DefaultClient
	}
	if s.now == nil {
		s.now = time.Now
	}
	return s, nil
}

// Token returns a valid access token, from the cache while it is fresh. Concurrent callers share
// one refresh. If an early refresh fails while the cached token is still valid, the cached token
// is returned.
func (s *TokenSource) Token(ctx context.Context) (*Token, error) {
	now := s.now()
	s.mu.Lock()
	tok := s.tok
	s.mu.Unlock()
	if tok != nil && now.Before(tok.refreshAt) {
		return tok, nil
	}
	ch := s.sf.DoChan("token", func() (any, error) {
		// The refresh outlives a caller that gives up, so the others still get its result.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		t, err := s.fetch(rctx)
		if err != nil {
			return nil, err
		}
		s.mu.Lock()
		s.tok = t
		s.mu.Unlock()
		return t, nil
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			if tok != nil && s.now().Before(tok.ExpiresAt) {
				return tok, nil
			}
			return nil, res.Err
		}
		return res.Val.(*Token), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

type metadata struct {
	Issuer        string `json:"issuer"`
	TokenEndpoint string `json:"token_endpoint"`
}

func (s *TokenSource) metadata(ctx context.Context) (*metadata, error) {
	s.mu.Lock()
	md := s.md
	s.mu.Unlock()
	if md != nil {
		return md, nil
	}
	md, err := discover(ctx, s.hc, s.cfg.Issuer)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.md = md
	s.mu.Unlock()
	return md, nil
}

// discover reads the server's RFC 8414 metadata and checks that it names issuer as its issuer.
func discover(ctx context.Context, hc *http.Client, issuer string) (*metadata, error) {
	u := endpoint(issuer, "/.well-known/oauth-authorization-server")
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("client: reading the server's metadata: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("client: reading the server's metadata at %s: %w", u, ReadError(resp))
	}
	md := new(metadata)
	if err := decodeJSON(resp, md); err != nil {
		return nil, err
	}
	if md.Issuer != issuer {
		return nil, fmt.Errorf("client: the metadata at %s names issuer %q; set Issuer to exactly that", u, md.Issuer)
	}
	if md.TokenEndpoint == "" {
		return nil, fmt.Errorf("client: the metadata at %s has no token_endpoint", u)
	}
	return md, nil
}

// fetch asks the token endpoint for a new token, retrying once with the server's nonce when it
// answers use_dpop_nonce.
func (s *TokenSource) fetch(ctx context.Context) (*Token, error) {
	md, err := s.metadata(ctx)
	if err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		tok, err := s.requestToken(ctx, md.TokenEndpoint)
		if nonceRetry(attempt, err) {
			continue
		}
		return tok, err
	}
}

func (s *TokenSource) requestToken(ctx context.Context, tokenEndpoint string) (*Token, error) {
	// Wall clock only (Round(0) drops the monotonic reading): the server judges expiry by it, and
	// after a machine slept the monotonic clock is behind.
	now := s.now().Round(0)
	assertion, err := sign(s.cfg.Key, s.did, "JWT", map[string]any{
		"iss": s.cfg.AgentID,
		"sub": s.cfg.AgentID,
		"aud": s.cfg.Issuer,
		"iat": now.Unix(),
		"exp": now.Add(60 * time.Second).Unix(),
		"jti": randomID(),
	})
	if err != nil {
		return nil, err
	}
	compact, err := assertion.CompactSerialize()
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	form := url.Values{
		"grant_type":            {"client_credentials"},
		"client_id":             {s.cfg.AgentID},
		"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"},
		"client_assertion":      {compact},
	}
	if s.cfg.Scope != "" {
		form.Set("scope", s.cfg.Scope)
	}
	if s.cfg.Resource != "" {
		form.Set("resource", s.cfg.Resource)
	}
	out, err := postToken(ctx, s.hc, tokenEndpoint, s.cfg.Key, &s.nonces, now, form)
	if err != nil {
		return nil, err
	}
	lifetime := time.Duration(out.ExpiresIn) * time.Second
	scope := out.Scope
	if scope == "" {
		scope = s.cfg.Scope
	}
	return &Token{
		AccessToken: out.AccessToken,
		Scope:       scope,
		ExpiresAt:   now.Add(lifetime),
		refreshAt:   now.Add(lifetime - s.refreshBefore(lifetime)),
	}, nil
}

// tokenAnswer is a token endpoint's successful answer.
type tokenAnswer struct {
	AccessToken     string          `json:"access_token"`
	TokenType       string          `json:"token_type"`
	ExpiresIn       jsonNumberOrStr `json:"expires_in"`
	Scope           string          `json:"scope"`
	IssuedTokenType string          `json:"issued_token_type"`
	TaskExpiresAt   int64           `json:"task_expires_at"` // mandate's: when the token's task ends
}

// postToken posts form to the token endpoint with a DPoP proof by key, carrying the latest nonce
// known for the endpoint's origin, and keeps the nonce the server answers with. Only a DPoP-bound
// token with a positive lifetime is accepted. A refusal is an *Error.
func postToken(ctx context.Context, hc *http.Client, tokenEndpoint string, key crypto.Signer, nonces *nonceCache, now time.Time, form url.Values) (*tokenAnswer, error) {
	origin := originOf(tokenEndpoint)
	proof, err := dpop.NewProof(key, http.MethodPost, tokenEndpoint, dpop.ProofOptions{Nonce: nonces.get(origin), Now: now})
	if err != nil {
		return nil, fmt.Errorf("client: making the DPoP proof: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, tokenEndpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	req.Header.Set(dpop.HeaderName, proof)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("client: POST %s: %w", tokenEndpoint, err)
	}
	defer resp.Body.Close()
	nonce := resp.Header.Get(dpop.NonceHeaderName)
	if nonce != "" {
		nonces.set(origin, nonce)
	}
	if resp.StatusCode != http.StatusOK {
		e := ReadError(resp)
		e.nonceSet = nonce != ""
		return nil, e
	}
	var out tokenAnswer
	if err := decodeJSON(resp, &out); err != nil {
		return nil, err
	}
	if out.AccessToken == "" {
		return nil, errors.New("client: the token response has no access_token")
	}
	if !strings.EqualFold(out.TokenType, "DPoP") {
		return nil, fmt.Errorf("client: the server issued a %q token, not a DPoP-bound one; refusing to use it", out.TokenType)
	}
	if out.ExpiresIn <= 0 {
		return nil, errors.New("client: the token response has no positive expires_in")
	}
	return &out, nil
}

// nonceRetry reports whether err asks for the request to be sent again with the nonce the
// server just supplied (once only: attempt 0).
func nonceRetry(attempt int, err error) bool {
	var e *Error
	return attempt == 0 && errors.As(err, &e) && e.Code == "use_dpop_nonce" && e.nonceSet
}

func (s *TokenSource) refreshBefore(lifetime time.Duration) time.Duration {
	if s.cfg.RefreshBefore > 0 {
		return min(s.cfg.RefreshBefore, lifetime)
	}
	return min(max(lifetime/3, 60*time.Second), lifetime/2)
}

// jsonNumberOrStr accepts expires_in as a number or a numeric string.
type jsonNumberOrStr int64

func (n *jsonNumberOrStr) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return fmt.Errorf("expires_in %s is not a number", b)
	}
	*n = jsonNumberOrStr(f)
	return nil
}

// nonceCache keeps the latest DPoP nonce per server origin (RFC 9449 §8).
type nonceCache struct {
	mu sync.Mutex
	m  map[string]string
}

func (c *nonceCache) get(origin string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[origin]
}

func (c *nonceCache) set(origin, nonce string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[string]string)
	}
	c.m[origin] = nonce
}

func originOf(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return raw
	}
	return originOfURL(u)
}

func originOfURL(u *url.URL) string {
	scheme := strings.ToLower(u.Scheme)
	host, port := strings.ToLower(u.Hostname()), u.Port()
	if port == "" || scheme == "https" && port == "443" || scheme == "http" && port == "80" {
		if strings.Contains(host, ":") {
			return scheme + "://[" + host + "]"
		}
		return scheme + "://" + host
	}
	return scheme + "://" + net.JoinHostPort(host, port)
}
