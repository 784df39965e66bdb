package client

import (
	"context"
	"crypto"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/mandate-dev/mandate/dpop"
)

// Transport returns an http.RoundTripper that sends each request with Authorization: DPoP
// <token> and a fresh DPoP proof for that request (htm, htu, ath, and the latest nonce known for
// the request's origin). When the server answers 401 with WWW-Authenticate error="use_dpop_nonce"
// and a DPoP-Nonce header, the request is sent once more with that nonce, provided its body can
// be replayed (no body, or GetBody set, as http.NewRequest does for in-memory bodies). base nil
// means http.DefaultTransport.
//
// Use it only for resource servers that accept this agent's tokens: every request carries the
// access token.
func (s *TokenSource) Transport(base http.RoundTripper) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	return &transport{base: base, key: s.cfg.Key, nonces: &s.nonces, now: s.now,
		token: func(ctx context.Context) (string, error) {
			tok, err := s.Token(ctx)
			if err != nil {
				return "", err
			}
			return tok.AccessToken, nil
		}}
}

// transport sends requests with a DPoP-bound token and a proof by its key.
type transport struct {
	base   http.RoundTripper
	key    crypto.Signer
	nonces *nonceCache
	now    func() time.Time
	token  func(context.Context) (string, error) // a valid token, refreshed when due
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	tok, err := t.token(req.Context())
	if err != nil {
		closeBody(req)
		return nil, err
	}
	origin := originOfURL(req.URL)
	resp, err := t.send(req, req.Body, tok, origin)
	if err != nil || resp.StatusCode != http.StatusUnauthorized || !nonceChallenge(resp) {
		return resp, err
	}
	replayable := req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
	if !replayable {
		return resp, nil
	}
	body := req.Body
	if req.GetBody != nil && req.Body != nil && req.Body != http.NoBody {
		if body, err = req.GetBody(); err != nil {
			return resp, nil // answer with the challenge rather than fail
		}
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	return t.send(req, body, tok, origin)
}

// send sends a copy of req with body, the token and a new proof.
func (t *transport) send(req *http.Request, body io.ReadCloser, tok, origin string) (*http.Response, error) {
	proof, err := dpop.NewProof(t.key, req.Method, htu(req.URL), dpop.ProofOptions{
		AccessToken: tok,
		Nonce:       t.nonces.get(origin),
		Now:         t.now(),
	})
	if err != nil {
		if body != nil {
			body.Close()
		}
		return nil, fmt.Errorf("client: making the DPoP proof: %w", err)
	}
	r := req.Clone(req.Context())
	r.Body = body
	r.Header.Set("Authorization", "DPoP "+tok)
	r.Header.Set(dpop.HeaderName, proof)
	resp, err := t.base.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	if n := resp.Header.Get(dpop.NonceHeaderName); n != "" {
		t.nonces.set(origin, n)
	}
	return resp, nil
}

// nonceChallenge reports whether resp asks for a DPoP nonce and supplies one (RFC 9449 §9).
func nonceChallenge(resp *http.Response) bool {
	if resp.Header.Get(dpop.NonceHeaderName) == "" {
		return false
	}
	for _, v := range resp.Header.Values("WWW-Authenticate") {
		if strings.Contains(strings.ToLower(v), `error="use_dpop_nonce"`) {
			return true
		}
	}
	return false
}

// htu is the request URL without query and fragment (RFC 9449 §4.2).
func htu(u *url.URL) string {
	c := *u
	c.RawQuery, c.Fragment, c.RawFragment, c.User = "", "", "", nil
	return c.String()
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}
