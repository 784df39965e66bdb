package dpop

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func with(m map[string]any, kv ...any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	for i := 0; i < len(kv); i += 2 {
		if kv[i+1] == nil {
			delete(out, kv[i].(string))
		} else {
			out[kv[i].(string)] = kv[i+1]
		}
	}
	return out
}

var ignoreDescription = cmpopts.IgnoreFields(Error{}, "Description")

func TestCheckRefusals(t *testing.T) {
	ed := testEdKey
	edPub := ed.Public().(ed25519.PublicKey)
	ec := newECKey(t)
	other := ed25519.NewKeyFromSeed([]byte("another key seed, 32 bytes long!"))
	nonces := NewNonces([]byte("0123456789abcdef0123456789abcdef"), time.Minute, func() time.Time { return testNow })
	hdr := baseHeader(t, "EdDSA", edPub)
	cl := baseClaims()
	valid := signRaw(t, ed, hdr, cl)
	jwk := jwkOf(t, edPub)

	smallOrder := b64.EncodeToString(append([]byte{1}, make([]byte, 31)...))
	ecJWK := jwkOf(t, &ec.PublicKey)
	offCurve := with(ecJWK, "y", ecJWK["x"])

	type tc struct {
		proof  string
		req    Request // zero Method/URL mean testMethod/testURL
		cfg    func(*Config)
		reason string
		code   string // empty means invalid_dpop_proof
	}
	tests := map[string]tc{
		"empty":                 {proof: "", reason: "missing"},
		"over 8 KiB":            {proof: strings.Repeat("A", MaxProofSize+1), reason: "malformed"},
		"one part":              {proof: "abc", reason: "malformed"},
		"two parts":             {proof: "abc.def", reason: "malformed"},
		"five parts (JWE)":      {proof: "a.b.c.d.e", reason: "malformed"},
		"JSON serialization":    {proof: `{"payload":"x","signatures":[]}`, reason: "malformed"},
		"newline inside":        {proof: valid[:10] + "\n" + valid[10:], reason: "malformed"},
		"padding":               {proof: valid + "=", reason: "malformed"},
		"two proofs":            {proof: valid + "," + valid, reason: "malformed"},
		"empty header":          {proof: "." + strings.SplitN(valid, ".", 2)[1], reason: "malformed"},
		"header not JSON":       {proof: b64.EncodeToString([]byte("nope")) + ".e30.AA", reason: "malformed"},
		"header JSON array":     {proof: b64.EncodeToString([]byte("[1]")) + ".e30.AA", reason: "malformed"},
		"non-canonical base64":  {proof: b64.EncodeToString([]byte(`{"typ":"dpop+jwt"}`))[:23] + "F.e30.", reason: "malformed"},
		"signature not base64":  {proof: strings.SplitN(valid, ".", 3)[0] + "." + strings.SplitN(valid, ".", 3)[1] + ".A", reason: "malformed"},
		"crit":                  {proof: signRaw(t, ed, with(hdr, "crit", []string{"b64"}, "b64", false), cl), reason: "malformed"},
		"typ missing":           {proof: signRaw(t, ed, with(hdr, "typ", nil), cl), reason: "typ"},
		"typ JWT":               {proof: signRaw(t, ed, with(hdr, "typ", "JWT"), cl), reason: "typ"},
		"typ upper case":        {proof: signRaw(t, ed, with(hdr, "typ", "DPOP+JWT"), cl), reason: "typ"},
		"typ media type":        {proof: signRaw(t, ed, with(hdr, "typ", "application/dpop+jwt"), cl), reason: "typ"},
		"alg none":              {proof: signRaw(t, nil, with(hdr, "alg", "none"), cl), reason: "alg"},
		"alg HS256":             {proof: signRaw(t, []byte(edPub), with(hdr, "alg", "HS256"), cl), reason: "alg"},
		"alg RS256":             {proof: signRaw(t, ed, with(hdr, "alg", "RS256"), cl), reason: "alg"},
		"alg ES384":             {proof: signRaw(t, ec, with(baseHeader(t, "ES384", &ec.PublicKey)), cl), reason: "alg"},
		"alg lower case":        {proof: signRaw(t, ed, with(hdr, "alg", "eddsa"), cl), reason: "alg"},
		"alg missing":           {proof: signRaw(t, ed, with(hdr, "alg", nil), cl), reason: "alg"},
		"jwk missing":           {proof: signRaw(t, ed, with(hdr, "jwk", nil), cl), reason: "jwk"},
		"jwk null":              {proof: signBytes(t, ed, []byte(`{"typ":"dpop+jwt","alg":"EdDSA","jwk":null}`), []byte(`{}`)), reason: "jwk"},
		"jwk private Ed25519":   {proof: signRaw(t, ed, with(hdr, "jwk", with(jwk, "d", b64.EncodeToString(ed.Seed()))), cl), reason: "jwk_private"},
		"jwk private EC":        {proof: signRaw(t, ec, with(baseHeader(t, "ES256", &ec.PublicKey), "jwk", with(ecJWK, "d", b64.EncodeToString(ec.D.Bytes()))), cl), reason: "jwk_private"},
		"jwk RSA p and q":       {proof: signRaw(t, ed, with(hdr, "jwk", with(jwk, "p", "AQAB", "q", "AQAB")), cl), reason: "jwk_private"},
		"jwk oct k":             {proof: signRaw(t, ed, with(hdr, "jwk", map[string]any{"kty": "oct", "k": "c2VjcmV0"}), cl), reason: "jwk_private"},
		"jwk d null":            {proof: signRaw(t, ed, with(hdr, "jwk", with(jwk, "d", "")), cl), reason: "jwk_private"},
		"jwk EC for EdDSA":      {proof: signRaw(t, ed, with(hdr, "jwk", ecJWK), cl), reason: "jwk"},
		"jwk OKP for ES256":     {proof: signRaw(t, ec, with(hdr, "alg", "ES256"), cl), reason: "jwk"},
		"jwk RSA":               {proof: signRaw(t, ed, with(hdr, "jwk", map[string]any{"kty": "RSA", "n": "AQAB", "e": "AQAB"}), cl), reason: "jwk"},
		"jwk X25519":            {proof: signRaw(t, ed, with(hdr, "jwk", with(jwk, "crv", "X25519")), cl), reason: "jwk"},
		"jwk P-384":             {proof: signRaw(t, ec, with(baseHeader(t, "ES256", &ec.PublicKey), "jwk", with(ecJWK, "crv", "P-384")), cl), reason: "jwk"},
		"jwk short x":           {proof: signRaw(t, ed, with(hdr, "jwk", with(jwk, "x", b64.EncodeToString(edPub[:31]))), cl), reason: "jwk"},
		"jwk x not base64url":   {proof: signRaw(t, ed, with(hdr, "jwk", with(jwk, "x", "+/+/")), cl), reason: "jwk"},
		"jwk small-order":       {proof: signRaw(t, ed, with(hdr, "jwk", with(jwk, "x", smallOrder)), cl), reason: "jwk"},
		"jwk EC off curve":      {proof: signRaw(t, ec, with(baseHeader(t, "ES256", &ec.PublicKey), "jwk", offCurve), cl), reason: "jwk"},
		"jwk EC missing y":      {proof: signRaw(t, ec, with(baseHeader(t, "ES256", &ec.PublicKey), "jwk", with(ecJWK, "y", nil)), cl), reason: "jwk"},
		"signed by other key":   {proof: signRaw(t, other, hdr, cl), reason: "signature"},
		"EC signed by other":    {proof: signRaw(t, newECKey(t), baseHeader(t, "ES256", &ec.PublicKey), cl), reason: "signature"},
		"signature empty":       {proof: valid[:strings.LastIndex(valid, ".")+1], reason: "signature"},
		"signature truncated":   {proof: valid[:len(valid)-6], reason: "signature"},
		"payload tampered":      {proof: tamperPayload(t, valid, with(cl, "htm", "GET")), reason: "signature"},
		"payload not JSON":      {proof: signBytes(t, ed, mustJSON(t, hdr), []byte("nope")), reason: "malformed"},
		"jti wrong type":        {proof: signRaw(t, ed, hdr, with(cl, "jti", 7)), reason: "malformed"},
		"jti missing":           {proof: signRaw(t, ed, hdr, with(cl, "jti", nil)), reason: "jti"},
		"jti empty":             {proof: signRaw(t, ed, hdr, with(cl, "jti", "")), reason: "jti"},
		"jti too long":          {proof: signRaw(t, ed, hdr, with(cl, "jti", strings.Repeat("j", 257))), reason: "jti"},
		"htm missing":           {proof: signRaw(t, ed, hdr, with(cl, "htm", nil)), reason: "htm"},
		"htm other":             {proof: signRaw(t, ed, hdr, with(cl, "htm", "GET")), reason: "htm"},
		"htm lower case":        {proof: signRaw(t, ed, hdr, with(cl, "htm", "post")), reason: "htm"},
		"htu missing":           {proof: signRaw(t, ed, hdr, with(cl, "htu", nil)), reason: "htu"},
		"htu other path":        {proof: signRaw(t, ed, hdr, with(cl, "htu", "https://as.example.com/other")), reason: "htu"},
		"htu other host":        {proof: signRaw(t, ed, hdr, with(cl, "htu", "https://evil.example.com/token")), reason: "htu"},
		"htu http":              {proof: signRaw(t, ed, hdr, with(cl, "htu", "http://as.example.com/token")), reason: "htu"},
		"htu other port":        {proof: signRaw(t, ed, hdr, with(cl, "htu", "https://as.example.com:8443/token")), reason: "htu"},
		"htu relative":          {proof: signRaw(t, ed, hdr, with(cl, "htu", "/token")), reason: "htu"},
		"htu userinfo":          {proof: signRaw(t, ed, hdr, with(cl, "htu", "https://u@as.example.com/token")), reason: "htu"},
		"htu trailing slash":    {proof: signRaw(t, ed, hdr, with(cl, "htu", testURL+"/")), reason: "htu"},
		"iat missing":           {proof: signRaw(t, ed, hdr, with(cl, "iat", nil)), reason: "iat"},
		"iat string":            {proof: signRaw(t, ed, hdr, with(cl, "iat", "1700000000")), reason: "iat"},
		"iat negative":          {proof: signRaw(t, ed, hdr, with(cl, "iat", -1)), reason: "iat"},
		"iat huge":              {proof: signRaw(t, ed, hdr, with(cl, "iat", 1e300)), reason: "iat"},
		"iat too old":           {proof: signRaw(t, ed, hdr, with(cl, "iat", testNow.Unix()-61)), reason: "iat"},
		"iat too new":           {proof: signRaw(t, ed, hdr, with(cl, "iat", testNow.Unix()+61)), reason: "iat"},
		"iat outside window":    {proof: signRaw(t, ed, hdr, with(cl, "iat", testNow.Unix()-11)), cfg: func(c *Config) { c.Window = 10 * time.Second }, reason: "iat"},
		"ath missing":           {proof: valid, req: Request{AccessToken: "tok"}, reason: "ath"},
		"ath for other token":   {proof: signRaw(t, ed, hdr, with(cl, "ath", AccessTokenHash("other"))), req: Request{AccessToken: "tok"}, reason: "ath"},
		"ath of raw token":      {proof: signRaw(t, ed, hdr, with(cl, "ath", "tok")), req: Request{AccessToken: "tok"}, reason: "ath"},
		"key mismatch":          {proof: valid, req: Request{JKT: mustThumb(t, other.Public())}, reason: "key_mismatch"},
		"nonce missing":         {proof: valid, cfg: func(c *Config) { c.Nonces = nonces }, reason: "nonce", code: CodeUseNonce},
		"nonce forged":          {proof: signRaw(t, ed, hdr, with(cl, "nonce", b64.EncodeToString(make([]byte, 24)))), cfg: func(c *Config) { c.Nonces = nonces }, reason: "nonce", code: CodeUseNonce},
		"nonce from RFC":        {proof: signRaw(t, ed, hdr, with(cl, "nonce", "eyJ7S_zG.eyJH0-Z.HX4w-7v")), cfg: func(c *Config) { c.Nonces = nonces }, reason: "nonce", code: CodeUseNonce},
		"nonce of other secret": {proof: signRaw(t, ed, hdr, with(cl, "nonce", NewNonces(make([]byte, 32), time.Minute, func() time.Time { return testNow }).Current())), cfg: func(c *Config) { c.Nonces = nonces }, reason: "nonce", code: CodeUseNonce},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			c := newTestChecker(tc.cfg)
			req := tc.req
			if req.Method == "" {
				req.Method = testMethod
			}
			if req.URL == "" {
				req.URL = testURL
			}
			p, err := c.Check(context.Background(), tc.proof, req)
			if err == nil {
				t.Fatalf("Check accepted the proof: %+v", p)
			}
			var got *Error
			if !errors.As(err, &got) {
				t.Fatalf("Check error %v is not a *Error", err)
			}
			code := tc.code
			if code == "" {
				code = CodeInvalidProof
			}
			want := &Error{Code: code, Reason: tc.reason}
			if diff := cmp.Diff(want, got, ignoreDescription); diff != "" {
				t.Errorf("Check error mismatch (-want +got):\n%s\ndescription: %s", diff, got.Description)
			}
			if !strings.HasPrefix(got.Error(), "dpop: ") || got.Description == "" {
				t.Errorf("Error() = %q, want a description prefixed with dpop:", got.Error())
			}
			if tc.proof != "" && len(tc.proof) > 20 && strings.Contains(got.Description, tc.proof[:20]) {
				t.Errorf("description echoes the proof: %q", got.Description)
			}
		})
	}
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustThumb(t testing.TB, pub crypto.PublicKey) string {
	t.Helper()
	s, err := Thumbprint(pub)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// tamperPayload swaps the payload of a signed proof, keeping its signature.
func tamperPayload(t testing.TB, proof string, claims map[string]any) string {
	parts := strings.Split(proof, ".")
	parts[1] = b64.EncodeToString(mustJSON(t, claims))
	return strings.Join(parts, ".")
}

// TestAlgorithmConfusion covers the two classic JWS attacks on its own, since
// they matter more than any other refusal: an unsigned proof, and an HMAC
// "signature" keyed with the public key a careless verifier would reuse.
func TestAlgorithmConfusion(t *testing.T) {
	ec := newECKey(t)
	edPub := testEdKey.Public().(ed25519.PublicKey)
	ecJWK := jwkOf(t, &ec.PublicKey)
	unc, _ := ec.PublicKey.Bytes()
	cases := map[string]string{
		"none":                        signRaw(t, nil, with(baseHeader(t, "none", edPub)), baseClaims()),
		"none with signature":         signRaw(t, testEdKey, with(baseHeader(t, "none", edPub)), baseClaims()),
		"HS256 keyed with Ed25519 x":  signRaw(t, []byte(edPub), baseHeader(t, "HS256", edPub), baseClaims()),
		"HS256 keyed with jwk x text": signRaw(t, []byte(b64.EncodeToString(edPub)), baseHeader(t, "HS256", edPub), baseClaims()),
		"HS256 keyed with EC point":   signRaw(t, unc, map[string]any{"typ": "dpop+jwt", "alg": "HS256", "jwk": ecJWK}, baseClaims()),
		"HS512 keyed with EC point":   signRaw(t, unc, map[string]any{"typ": "dpop+jwt", "alg": "HS512", "jwk": ecJWK}, baseClaims()),
	}
	for name, proof := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := newTestChecker(nil).Check(context.Background(), proof, Request{Method: testMethod, URL: testURL})
			var got *Error
			if !errors.As(err, &got) {
				t.Fatalf("Check error = %v, want *Error", err)
			}
			if diff := cmp.Diff(&Error{Code: CodeInvalidProof, Reason: "alg"}, got, ignoreDescription); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestCheckAccepts(t *testing.T) {
	ec := newECKey(t)
	edPub := testEdKey.Public().(ed25519.PublicKey)
	nonces := NewNonces([]byte("0123456789abcdef0123456789abcdef"), time.Minute, func() time.Time { return testNow })
	mk := func(key crypto.Signer, method, u string, opts ProofOptions) string {
		t.Helper()
		if opts.Now.IsZero() {
			opts.Now = testNow
		}
		p, err := NewProof(key, method, u, opts)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := map[string]struct {
		proof string
		req   Request
		cfg   func(*Config)
		key   crypto.PublicKey
	}{
		"EdDSA":                  {proof: mk(testEdKey, "POST", testURL, ProofOptions{}), key: edPub},
		"ES256":                  {proof: mk(ec, "POST", testURL, ProofOptions{}), key: &ec.PublicKey},
		"alg Ed25519 (RFC 9864)": {proof: signRaw(t, testEdKey, baseHeader(t, "Ed25519", edPub), baseClaims()), key: edPub},
		"with token and jkt": {
			proof: mk(testEdKey, "GET", "https://api.example.com/v1/x?y=1#f", ProofOptions{AccessToken: "tok"}),
			req:   Request{Method: "GET", URL: "https://api.example.com/v1/x?y=2", AccessToken: "tok", JKT: mustThumb(t, edPub)},
			key:   edPub,
		},
		"with nonce": {
			proof: mk(ec, "POST", testURL, ProofOptions{Nonce: nonces.Current()}),
			cfg:   func(c *Config) { c.Nonces = nonces },
			key:   &ec.PublicKey,
		},
		"htu spelled differently": {
			proof: signRaw(t, testEdKey, baseHeader(t, "EdDSA", edPub), with(baseClaims(), "htu", "HTTPS://AS.Example.COM:443/./%74oken")),
			key:   edPub,
		},
		"iat at window edge":  {proof: signRaw(t, testEdKey, baseHeader(t, "EdDSA", edPub), with(baseClaims(), "iat", testNow.Unix()-60)), key: edPub},
		"iat fractional":      {proof: signRaw(t, testEdKey, baseHeader(t, "EdDSA", edPub), with(baseClaims(), "iat", float64(testNow.Unix())+0.5)), key: edPub},
		"extra header params": {proof: signRaw(t, testEdKey, with(baseHeader(t, "EdDSA", edPub), "kid", "k1"), baseClaims()), key: edPub},
		"ath without token":   {proof: mk(testEdKey, "POST", testURL, ProofOptions{AccessToken: "tok"}), key: edPub},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			req := tc.req
			if req.Method == "" {
				req.Method, req.URL = testMethod, testURL
			}
			got, err := newTestChecker(tc.cfg).Check(context.Background(), tc.proof, req)
			if err != nil {
				t.Fatalf("Check: %v", err)
			}
			jkt := mustThumb(t, tc.key)
			want := &Proof{PublicKey: tc.key, JKT: jkt, JTI: got.JTI, ReplayID: jkt + ":" + got.JTI, ReplayUntil: got.IssuedAt.Add(2 * defaultWin)}
			if diff := diffProof(want, got, cmpopts.IgnoreFields(Proof{}, "IssuedAt")); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			if got.JTI == "" || got.IssuedAt.IsZero() {
				t.Errorf("Proof has no jti or iat: %+v", got)
			}
		})
	}
}

// diffProof compares proofs, keys by their Equal method (go-cmp cannot look
// inside crypto keys).
func diffProof(want, got *Proof, opts ...cmp.Option) string {
	opts = append(opts, cmpopts.IgnoreFields(Proof{}, "PublicKey"))
	d := cmp.Diff(want, got, opts...)
	if k, ok := want.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !k.Equal(got.PublicKey) {
		d += fmt.Sprintf("PublicKey: want %T, got a different %T\n", want.PublicKey, got.PublicKey)
	}
	return d
}

func TestCheckReplay(t *testing.T) {
	c := newTestChecker(nil)
	p, err := NewProof(testEdKey, "POST", testURL, ProofOptions{Now: testNow})
	if err != nil {
		t.Fatal(err)
	}
	req := Request{Method: "POST", URL: testURL}
	if _, err := c.Check(context.Background(), p, req); err != nil {
		t.Fatalf("first use: %v", err)
	}
	_, err = c.Check(context.Background(), p, req)
	var e *Error
	if !errors.As(err, &e) || e.Reason != "replay" || e.Code != CodeInvalidProof {
		t.Fatalf("second use error = %v, want reason replay", err)
	}
	// The same jti under another key is another proof.
	ec := newECKey(t)
	hdr := baseHeader(t, "ES256", &ec.PublicKey)
	cl := with(baseClaims(), "jti", e2jti(t, p))
	if _, err := c.Check(context.Background(), signRaw(t, ec, hdr, cl), req); err != nil {
		t.Errorf("same jti, other key: %v", err)
	}
}

func e2jti(t *testing.T, proof string) string {
	j, rerr := parseJWS(proof)
	if rerr != nil {
		t.Fatal(rerr)
	}
	cl, rerr := j.decodeClaims()
	if rerr != nil {
		t.Fatal(rerr)
	}
	return cl.JTI
}

// TestRefusedProofDoesNotBurnJTI checks that the replay store is consulted
// last, so an attacker cannot use refused proofs to fill the store or to
// burn identifiers ahead of the client.
func TestRefusedProofDoesNotBurnJTI(t *testing.T) {
	store := &recordingStore{}
	c := NewChecker(Config{Replay: store, Now: func() time.Time { return testNow }})
	p := signRaw(t, testEdKey, baseHeader(t, "EdDSA", testEdKey.Public()), with(baseClaims(), "htu", "https://other.example/"))
	if _, err := c.Check(context.Background(), p, Request{Method: testMethod, URL: testURL}); err == nil {
		t.Fatal("accepted")
	}
	if len(store.ids) != 0 {
		t.Errorf("refused proof was recorded: %v", store.ids)
	}
}

type recordingStore struct{ ids []string }

func (s *recordingStore) Use(_ context.Context, id string, _ time.Time) error {
	s.ids = append(s.ids, id)
	return nil
}

type failingStore struct{}

func (failingStore) Use(context.Context, string, time.Time) error { return errors.New("db down") }

func TestCheckStoreFailureIsNotARefusal(t *testing.T) {
	c := NewChecker(Config{Replay: failingStore{}, Now: func() time.Time { return testNow }})
	p, _ := NewProof(testEdKey, "POST", testURL, ProofOptions{Now: testNow})
	_, err := c.Check(context.Background(), p, Request{Method: "POST", URL: testURL})
	var e *Error
	if err == nil || errors.As(err, &e) || !strings.Contains(err.Error(), "db down") {
		t.Errorf("error = %v, want a wrapped store error that is not a *Error", err)
	}
}

func TestReplayExpiry(t *testing.T) {
	var gotExp time.Time
	store := storeFunc(func(_ context.Context, _ string, exp time.Time) error { gotExp = exp; return nil })
	c := NewChecker(Config{Replay: store, Window: 30 * time.Second, Now: func() time.Time { return testNow }})
	p, _ := NewProof(testEdKey, "POST", testURL, ProofOptions{Now: testNow.Add(-10 * time.Second)})
	if _, err := c.Check(context.Background(), p, Request{Method: "POST", URL: testURL}); err != nil {
		t.Fatal(err)
	}
	if want := testNow.Add(-10 * time.Second).Add(60 * time.Second); !gotExp.Equal(want) {
		t.Errorf("recorded until %v, want iat+2*window = %v", gotExp, want)
	}
}

type storeFunc func(context.Context, string, time.Time) error

func (f storeFunc) Use(ctx context.Context, id string, exp time.Time) error { return f(ctx, id, exp) }

func TestNewCheckerNeedsReplayStore(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("NewChecker without a replay store did not panic")
		}
	}()
	NewChecker(Config{})
}

func TestNewProofRejects(t *testing.T) {
	tests := map[string]struct {
		key    crypto.Signer
		method string
		url    string
	}{
		"nil key":      {nil, "GET", testURL},
		"no method":    {testEdKey, "", testURL},
		"relative URL": {testEdKey, "GET", "/token"},
		"ftp URL":      {testEdKey, "GET", "ftp://example.com/x"},
		"bad URL":      {testEdKey, "GET", "https://exa mple.com/%zz"},
		"P-384 key":    {mustP384(t), "GET", testURL},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if p, err := NewProof(tc.key, tc.method, tc.url, ProofOptions{}); err == nil {
				t.Errorf("NewProof = %q, want error", p)
			}
		})
	}
}

func mustP384(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestNewProofShape(t *testing.T) {
	p, err := NewProof(testEdKey, "GET", "https://api.example.com/a?b=c#d", ProofOptions{AccessToken: "tok", Nonce: "n1", Now: testNow})
	if err != nil {
		t.Fatal(err)
	}
	j, rerr := parseJWS(p)
	if rerr != nil {
		t.Fatal(rerr)
	}
	cl, rerr := j.decodeClaims()
	if rerr != nil {
		t.Fatal(rerr)
	}
	if len(cl.JTI) != 22 {
		t.Errorf("jti %q is not 128 bits of base64url", cl.JTI)
	}
	got := map[string]string{"typ": j.header.Typ, "alg": j.header.Alg, "htm": cl.HTM, "htu": cl.HTU, "iat": string(cl.IAT), "ath": cl.ATH, "nonce": cl.Nonce}
	want := map[string]string{"typ": "dpop+jwt", "alg": "EdDSA", "htm": "GET", "htu": "https://api.example.com/a", "iat": "1700000000", "ath": AccessTokenHash("tok"), "nonce": "n1"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	p2, _ := NewProof(testEdKey, "GET", "https://api.example.com/a", ProofOptions{Now: testNow})
	if e2jti(t, p2) == cl.JTI {
		t.Error("two proofs share a jti")
	}
}
