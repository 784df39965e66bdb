package verify

import (
	"context"
	"crypto"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/mandate-dev/mandate/dpop"
)

// countingKeys is a KeySource over fixed keys that counts its lookups.
type countingKeys struct {
	keys    StaticKeys
	lookups atomic.Int32
}

func (k *countingKeys) PublicKey(ctx context.Context, kid string) (crypto.PublicKey, error) {
	k.lookups.Add(1)
	return k.keys.PublicKey(ctx, kid)
}

// presenter is a verifier on an injected clock with fixed keys, called through Middleware with
// a recorder, and the refusals OnDeny saw.
type presenter struct {
	t    *testing.T
	is   *testIssuer
	keys *countingKeys
	v    *Verifier
	clk  *testClock

	mu     sync.Mutex
	denied []*Error
}

func newPresenter(t *testing.T, cacheSize int) *presenter {
	t.Helper()
	is := newTestIssuer(t)
	p := &presenter{t: t, is: is, clk: newTestClock(),
		keys: &countingKeys{keys: StaticKeys{"k1": is.keys["k1"].Public()}}}
	v, err := New(Config{
		Issuer: is.url, Audience: testAudience, Keys: p.keys, Status: allowAll{}, Now: p.clk.Now,
		BaseURL: "https://rs.example", TokenCache: cacheSize,
		OnDeny: func(r *http.Request, e *Error) {
			p.mu.Lock()
			defer p.mu.Unlock()
			p.denied = append(p.denied, e)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	p.v = v
	return p
}

// send sends GET /data with the given Authorization and DPoP header values through Middleware
// and returns the response and the refusal OnDeny saw (nil when it was not called).
func (p *presenter) send(auth, proofs []string) (*httptest.ResponseRecorder, *Error) {
	p.t.Helper()
	r := httptest.NewRequest("GET", "https://rs.example/data", nil)
	for _, a := range auth {
		r.Header.Add("Authorization", a)
	}
	for _, pr := range proofs {
		r.Header.Add("DPoP", pr)
	}
	p.mu.Lock()
	p.denied = nil
	p.mu.Unlock()
	w := httptest.NewRecorder()
	p.v.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
	})).ServeHTTP(w, r)
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.denied) != 1 {
		p.t.Fatalf("OnDeny called %d times, want once (status %d)", len(p.denied), w.Code)
	}
	return w, p.denied[0]
}

func (p *presenter) proof(a *agent, tok string) string {
	p.t.Helper()
	pr, err := dpop.NewProof(a.key, "GET", "https://rs.example/data", dpop.ProofOptions{AccessToken: tok, Now: p.clk.Now()})
	if err != nil {
		p.t.Fatal(err)
	}
	return pr
}

// response is what a client sees of a refusal.
type response struct {
	Status int
	Header http.Header
	Body   string
}

func responseOf(w *httptest.ResponseRecorder) response {
	return response{Status: w.Code, Header: w.Header().Clone(), Body: w.Body.String()}
}

// anonymousResponse is the response e would have had without a Caller: what Middleware wrote
// before refusals of how a token is presented were attributed.
func anonymousResponse(e *Error) response {
	anon := *e
	anon.Caller = nil
	w := httptest.NewRecorder()
	anon.WriteHTTP(w)
	return responseOf(w)
}

// presentations are the refusals of how a token is presented, each with its reason, status and
// code, and the headers it sends a token (and a proof made for it) in.
var presentations = map[string]struct {
	want refusal
	send func(tok, proof string) (auth, proofs []string)
}{
	"bearer": {refusal{401, CodeInvalidToken, ReasonBearer}, func(tok, proof string) ([]string, []string) {
		return []string{"Bearer " + tok}, nil
	}},
	"bearer with a proof": {refusal{401, CodeInvalidToken, ReasonBearer}, func(tok, proof string) ([]string, []string) {
		return []string{"bearer  " + tok}, []string{proof}
	}},
	"scheme with a tab": {refusal{401, CodeInvalidToken, ReasonScheme}, func(tok, proof string) ([]string, []string) {
		return []string{"DPoP\t" + tok}, []string{proof}
	}},
	"other scheme": {refusal{401, CodeInvalidToken, ReasonScheme}, func(tok, proof string) ([]string, []string) {
		return []string{"Token " + tok}, []string{proof}
	}},
	"no proof": {refusal{401, CodeInvalidDPoPProof, ReasonMissingProof}, func(tok, proof string) ([]string, []string) {
		return []string{"DPoP " + tok}, nil
	}},
	"two proofs": {refusal{401, CodeInvalidDPoPProof, ReasonMultipleProofs}, func(tok, proof string) ([]string, []string) {
		return []string{"DPoP " + tok}, []string{proof, proof}
	}},
}

// TestPresentationRefusalAttributed: a refusal of how a token was presented (as Bearer, under a
// malformed or other scheme, without its proof or with two) names the token's Caller when the
// token verifies on its own, so a valid token replayed without its key is refused in its
// agent's, principal's and task's name; a forged, expired, foreign or garbage token names
// nobody. The response is the same either way, byte for byte, and the same as without the
// Caller.
func TestPresentationRefusalAttributed(t *testing.T) {
	holder := newAgent(t, "agt_res")
	chain := threeLevels(holder)
	tokens := map[string]struct {
		mint   func(p *presenter) string
		caller bool
	}{
		"valid task token": {caller: true, mint: func(p *presenter) string {
			return p.is.mint("k1", "EdDSA", "at+jwt", p.is.delegated("usr_alice", holder, chain...))
		}},
		"forged signature": {mint: func(p *presenter) string {
			tok := p.is.mint("k1", "EdDSA", "at+jwt", p.is.delegated("usr_alice", holder, chain...))
			c := p.is.delegated("usr_mallory", holder, chain...)
			other := strings.Split(p.is.mint("k1", "EdDSA", "at+jwt", c), ".")
			parts := strings.Split(tok, ".")
			return parts[0] + "." + other[1] + "." + parts[2]
		}},
		"unpublished key": {mint: func(p *presenter) string {
			return p.is.mint("k9", "EdDSA", "at+jwt", p.is.delegated("usr_alice", holder, chain...))
		}},
		"expired": {mint: func(p *presenter) string {
			c := p.is.delegated("usr_alice", holder, chain...)
			c["iat"] = p.clk.Now().Add(-10 * time.Minute).Unix()
			c["exp"] = p.clk.Now().Add(-time.Minute).Unix()
			return p.is.mint("k1", "EdDSA", "at+jwt", c)
		}},
		"other audience": {mint: func(p *presenter) string {
			c := p.is.delegated("usr_alice", holder, chain...)
			c["aud"] = "https://other.example"
			return p.is.mint("k1", "EdDSA", "at+jwt", c)
		}},
		"other issuer": {mint: func(p *presenter) string {
			c := p.is.delegated("usr_alice", holder, chain...)
			c["iss"] = "https://evil.example"
			return p.is.mint("k1", "EdDSA", "at+jwt", c)
		}},
		"not a JWS": {mint: func(p *presenter) string { return "YWxhZGRpbjpvcGVuc2VzYW1l" }},
	}
	for pname, pres := range presentations {
		for tname, tt := range tokens {
			t.Run(pname+"/"+tname, func(t *testing.T) {
				for _, cache := range []int{0, -1} {
					p := newPresenter(t, cache)
					tok := tt.mint(p)
					auth, proofs := pres.send(tok, p.proof(holder, tok))
					w, d := p.send(auth, proofs)

					if got := (refusal{w.Code, d.Code, d.Reason}); got != pres.want {
						t.Fatalf("cache %d: refusal %+v, want %+v", cache, got, pres.want)
					}
					if !tt.caller {
						if d.Caller != nil {
							t.Errorf("cache %d: a token that does not verify is attributed to %+v", cache, d.Caller)
						}
					} else if d.Caller == nil {
						t.Errorf("cache %d: the refusal of a valid token names no caller", cache)
					} else {
						want := delegation{
							Subject: "usr_alice", Principal: "usr_alice", ClientID: holder.id, AgentID: holder.id,
							Handle: "researcher", DID: "did:key:z6MkRes", Task: "tsk_c", Grant: "gr_test", Chain: chain,
						}
						got := delegationOf(d.Caller)
						got.AuthorizationDetails = nil
						if diff := cmp.Diff(want, got); diff != "" {
							t.Errorf("cache %d: caller mismatch (-want +got):\n%s", cache, diff)
						}
						if d.Caller.JKT != holder.jkt {
							t.Errorf("cache %d: caller JKT %q, want %q", cache, d.Caller.JKT, holder.jkt)
						}
					}

					// The response is what it was without the Caller, and says nothing of the
					// token or whose it is.
					got := responseOf(w)
					if diff := cmp.Diff(anonymousResponse(d), got); diff != "" {
						t.Errorf("cache %d: response differs from the anonymous refusal (-want +got):\n%s", cache, diff)
					}
					for _, secret := range []string{tok, holder.id, "usr_alice", "tsk_c", "gr_test", holder.jkt} {
						if strings.Contains(got.Body, secret) || strings.Contains(strings.Join(got.Header.Values("WWW-Authenticate"), ","), secret) {
							t.Errorf("cache %d: the response reveals %q", cache, secret)
						}
					}
				}
			})
		}
	}
}

// TestPresentationRefusalSameResponse: a presentation refusal answers a valid token exactly as it
// answers a forged one and no token at all: the client cannot tell whether a token verified.
func TestPresentationRefusalSameResponse(t *testing.T) {
	holder := newAgent(t, "agt_res")
	for name, pres := range presentations {
		t.Run(name, func(t *testing.T) {
			p := newPresenter(t, 0)
			valid := p.is.mint("k1", "EdDSA", "at+jwt", p.is.delegated("usr_alice", holder, threeLevels(holder)...))
			forged := p.is.mint("k9", "EdDSA", "at+jwt", p.is.delegated("usr_alice", holder, threeLevels(holder)...))
			w, d := p.send(pres.send(valid, p.proof(holder, valid)))
			if d.Caller == nil {
				t.Fatalf("the valid token is not attributed")
			}
			fw, fd := p.send(pres.send(forged, p.proof(holder, forged)))
			if fd.Caller != nil {
				t.Fatalf("the forged token is attributed")
			}
			if diff := cmp.Diff(responseOf(fw), responseOf(w)); diff != "" {
				t.Errorf("valid and forged tokens answered differently (-forged +valid):\n%s", diff)
			}
			if d.Description != fd.Description || d.Status != fd.Status || d.Code != fd.Code || d.Reason != fd.Reason {
				t.Errorf("refusals differ: valid %+v, forged %+v", d, fd)
			}
		})
	}
}

// TestPresentationAttributionCost: attributing a presentation refusal costs what the proper path
// would spend on the token: nothing for credentials that are not a JWS, one key lookup (and one
// signature check) for a signed token, and nothing more for a token already verified (the token
// cache). A refusal that carries no token (no Authorization, an empty one, two of them) looks
// nothing up.
func TestPresentationAttributionCost(t *testing.T) {
	holder := newAgent(t, "agt_res")
	p := newPresenter(t, 0)
	tok := p.is.mint("k1", "EdDSA", "at+jwt", p.is.claims(holder))
	lookups := func() int32 { return p.keys.lookups.Swap(0) }

	for _, auth := range [][]string{nil, {"Basic YTpi"}, {"DPoP\t" + strings.Repeat("A", 4000)}, {"Bearer"}, {"Bearer " + tok, "Bearer " + tok}, {"DPoP"}} {
		_, d := p.send(auth, nil)
		if d.Caller != nil {
			t.Errorf("%.20q: attributed", auth)
		}
		if n := lookups(); n != 0 {
			t.Errorf("%.20q: %d key lookups, want 0", auth, n)
		}
	}

	if _, d := p.send([]string{"Bearer " + tok}, nil); d.Caller == nil || d.Caller.AgentID != holder.id {
		t.Fatalf("bearer: caller %+v, want %s", d.Caller, holder.id)
	}
	if n := lookups(); n != 1 {
		t.Errorf("first bearer use: %d key lookups, want 1", n)
	}
	for range 3 {
		if _, d := p.send([]string{"DPoP " + tok}, nil); d.Caller == nil {
			t.Fatalf("no proof: not attributed")
		}
	}
	if n := lookups(); n != 0 {
		t.Errorf("a token already verified: %d key lookups, want 0 (the token cache)", n)
	}
	// The token cached by a refusal is the same one the proper path accepts.
	r := httptest.NewRequest("GET", "https://rs.example/data", nil)
	r.Header.Set("Authorization", "DPoP "+tok)
	r.Header.Set("DPoP", p.proof(holder, tok))
	if c, err := p.v.Verify(context.Background(), r); err != nil || c.AgentID != holder.id {
		t.Fatalf("proper use after the refusals: %v, %v", c, err)
	}

	// Once expired, a cached token is checked again and no longer attributed.
	p.clk.Advance(10 * time.Minute)
	if _, d := p.send([]string{"Bearer " + tok}, nil); d.Caller != nil {
		t.Errorf("an expired token is attributed to %+v", d.Caller)
	}
	if n := lookups(); n != 1 {
		t.Errorf("an expired cached token: %d key lookups, want 1", n)
	}
}
