package verify

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/mandate-dev/mandate/dpop"
)

// testIssuer is a tiny mandate issuer: metadata, JWKS and the paged revocation feed on a real
// listener, and a signing key to mint self and delegated access tokens with.
type revocation struct {
	Kind string `json:"kind"`
	ID   string `json:"id"`
	Exp  int64  `json:"exp"`
}

type testIssuer struct {
	t   testing.TB
	srv *httptest.Server
	url string

	mu        sync.Mutex
	keys      map[string]crypto.Signer // kid -> signing key, all published
	log       []revocation             // the revocation log; an entry's cursor is its index + 1
	pageSize  int                      // entries per feed page (default 100)
	afters    []int64                  // the after= cursor of every feed request, in order
	jwksFails bool
	feedFails bool
	// feedFailAt, when positive, makes feed requests with after >= feedFailAt fail.
	feedFailAt int64

	jwksHits atomic.Int32
	feedHits atomic.Int32
	mdHits   atomic.Int32
}

func newTestIssuer(t testing.TB) *testIssuer {
	t.Helper()
	is := &testIssuer{t: t, keys: map[string]crypto.Signer{}}
	is.addKey("k1", newEd25519(t))
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/oauth-authorization-server", func(w http.ResponseWriter, r *http.Request) {
		is.mdHits.Add(1)
		writeJSON(w, map[string]any{
			"issuer":                            is.url,
			"token_endpoint":                    is.url + "/oauth/token",
			"jwks_uri":                          is.url + "/oauth/jwks",
			"dpop_signing_alg_values_supported": []string{"EdDSA", "Ed25519", "ES256"},
		})
	})
	mux.HandleFunc("GET /oauth/jwks", func(w http.ResponseWriter, r *http.Request) {
		is.jwksHits.Add(1)
		is.mu.Lock()
		defer is.mu.Unlock()
		if is.jwksFails {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		var set jose.JSONWebKeySet
		for kid, k := range is.keys {
			set.Keys = append(set.Keys, jose.JSONWebKey{Key: k.Public(), KeyID: kid, Use: "sig"})
		}
		writeJSON(w, set)
	})
	mux.HandleFunc("GET /v1/revocations", func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.Header.Get("Accept"), "text/event-stream") {
			// A feed without a stream: the feed polls (stream_test.go tests the stream).
			http.Error(w, "no stream here", http.StatusNotAcceptable)
			return
		}
		is.feedHits.Add(1)
		is.mu.Lock()
		defer is.mu.Unlock()
		after, err := strconv.ParseInt(r.URL.Query().Get("after"), 10, 64)
		if err != nil || after < 0 {
			http.Error(w, "bad cursor", http.StatusBadRequest)
			return
		}
		is.afters = append(is.afters, after)
		if is.feedFails || (is.feedFailAt > 0 && after >= is.feedFailAt) {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		size := is.pageSize
		if size <= 0 {
			size = 100
		}
		page := []revocation{}
		cursor := after
		for i := int(after); i < len(is.log) && len(page) < size; i++ {
			page = append(page, is.log[i])
			cursor = int64(i + 1)
		}
		writeJSON(w, map[string]any{"revocations": page, "cursor": cursor, "more": int(cursor) < len(is.log)})
	})
	is.srv = httptest.NewServer(mux)
	is.url = is.srv.URL
	t.Cleanup(is.srv.Close)
	return is
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func newEd25519(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func (is *testIssuer) addKey(kid string, k crypto.Signer) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.keys[kid] = k
}

// revoke appends an entry to the revocation log.
func (is *testIssuer) revoke(kind, id string, exp int64) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.log = append(is.log, revocation{kind, id, exp})
}

func (is *testIssuer) revokeAgent(id string) { is.revoke("agent", id, 0) }

func (is *testIssuer) revokeJTI(jti string) {
	is.revoke("token", jti, time.Now().Add(time.Hour).Unix())
}

// feedAfters returns the cursors the feed was asked for since the last call.
func (is *testIssuer) feedAfters() []int64 {
	is.mu.Lock()
	defer is.mu.Unlock()
	a := is.afters
	is.afters = nil
	return a
}

func (is *testIssuer) setFailing(jwks, feed bool) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.jwksFails, is.feedFails = jwks, feed
}

// agent is a token holder: its key and the claims of its tokens.
type agent struct {
	id  string
	key ed25519.PrivateKey
	jkt string
}

func newAgent(t testing.TB, id string) *agent {
	t.Helper()
	k := newEd25519(t)
	jkt, err := dpop.Thumbprint(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	return &agent{id: id, key: k, jkt: jkt}
}

const testAudience = "https://rs.example"

// claims returns the standard claims of a token for a.
func (is *testIssuer) claims(a *agent) map[string]any {
	now := time.Now()
	return map[string]any{
		"iss":       is.url,
		"sub":       a.id,
		"aud":       []string{testAudience, "https://other.example"},
		"scope":     "read write",
		"exp":       now.Add(5 * time.Minute).Unix(),
		"iat":       now.Unix(),
		"jti":       "tok_" + base64.RawURLEncoding.EncodeToString(randomBytes(9)),
		"client_id": a.id,
		"cnf":       map[string]any{"jkt": a.jkt},
		"handle":    "researcher",
		"did":       "did:key:z6Mk-test",
	}
}

// delegated returns the claims of a token issued by token exchange to holder, the last actor of
// chain (in delegation order: chain[0] is the first agent the principal granted), for principal.
// txn is the current actor's task; act nests with the current actor outermost.
func (is *testIssuer) delegated(principal string, holder *agent, chain ...Actor) map[string]any {
	is.t.Helper()
	if len(chain) == 0 || chain[len(chain)-1].AgentID != holder.id {
		is.t.Fatalf("the chain must end with the holder %s", holder.id)
	}
	c := is.claims(holder)
	var act map[string]any
	for _, a := range chain {
		next := map[string]any{"sub": a.AgentID, "handle": a.Handle, "did": a.DID, "txn": a.Task}
		if a.InstanceJKT != "" {
			next["jkt"] = a.InstanceJKT
		}
		if act != nil {
			next["act"] = act
		}
		act = next
	}
	current := chain[len(chain)-1]
	c["sub"] = principal
	c["handle"], c["did"] = current.Handle, current.DID
	c["txn"] = current.Task
	c["grant"] = "gr_test"
	c["authorization_details"] = []any{map[string]any{"type": "repo", "actions": []any{"read"}, "locations": []any{"https://api.example/"}}}
	c["act"] = act
	return c
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// mint signs claims with the issuer key kid, alg and typ.
func (is *testIssuer) mint(kid, alg, typ string, claims map[string]any) string {
	is.t.Helper()
	is.mu.Lock()
	key := is.keys[kid]
	is.mu.Unlock()
	if key == nil {
		key = newEd25519(is.t) // an unpublished key
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		is.t.Fatal(err)
	}
	return signCompact(is.t, key, map[string]any{"alg": alg, "typ": typ, "kid": kid}, payload)
}

// signCompact signs a compact JWS by hand, so tests can use any header (alg aliases, none).
func signCompact(t testing.TB, key crypto.Signer, header map[string]any, payload []byte) string {
	t.Helper()
	h, err := json.Marshal(header)
	if err != nil {
		t.Fatal(err)
	}
	input := b64(h) + "." + b64(payload)
	var sig []byte
	switch k := key.(type) {
	case ed25519.PrivateKey:
		sig = ed25519.Sign(k, []byte(input))
	default:
		// ES256 via go-jose, re-using its header for the signing input is not possible, so use
		// go-jose end to end.
		opts := (&jose.SignerOptions{}).WithType(jose.ContentType(header["typ"].(string))).WithHeader("kid", header["kid"])
		s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.SignatureAlgorithm(header["alg"].(string)), Key: k}, opts)
		if err != nil {
			t.Fatal(err)
		}
		obj, err := s.Sign(payload)
		if err != nil {
			t.Fatal(err)
		}
		out, err := obj.CompactSerialize()
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	return input + "." + b64(sig)
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }
