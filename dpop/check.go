package dpop

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
	"time"
)

const (
	// MaxProofSize is the largest proof Check will parse. A proof is a key
	// and a handful of short claims; anything near this size is an attempt
	// to make the server decode and hash garbage.
	MaxProofSize = 8 << 10
	maxJTILen    = 256
	defaultWin   = 60 * time.Second
)

// Config configures a Checker. Replay is required.
type Config struct {
	// Window is the allowed |now - iat|; 0 means 60s. It also fixes how long
	// a jti is remembered, so a longer window costs replay-store space.
	Window time.Duration
	// Replay records proof identifiers; required. A *MemoryReplayStore whose
	// Now is unset is given this Config's Now, so one fake clock in tests
	// drives both and the store does not forget proofs on real time.
	Replay ReplayStore
	// Nonces, if set, makes a valid server nonce mandatory in every proof.
	Nonces *Nonces
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Checker verifies DPoP proofs. It is safe for concurrent use and keeps no
// key state between proofs: each proof carries its own key, and what binds
// that key to a token is Request.JKT.
type Checker struct {
	window time.Duration
	replay ReplayStore
	nonces *Nonces
	now    func() time.Time
}

// NewChecker returns a Checker. It panics if cfg.Replay is nil: without a
// replay store every proof could be replayed within its window, and that must
// fail at start-up, not quietly in production.
func NewChecker(cfg Config) *Checker {
	if cfg.Replay == nil {
		panic("dpop: NewChecker: Config.Replay is required")
	}
	c := &Checker{window: cfg.Window, replay: cfg.Replay, nonces: cfg.Nonces, now: cfg.Now}
	if c.window <= 0 {
		c.window = defaultWin
	}
	if c.now == nil {
		c.now = time.Now
	}
	if m, ok := cfg.Replay.(*MemoryReplayStore); ok && m.Now == nil && cfg.Now != nil {
		m.Now = cfg.Now
	}
	return c
}

// Request is what the server knows about the HTTP request a proof came with.
type Request struct {
	// Method is the HTTP method of the request.
	Method string
	// URL is the full request URL as the server sees it
	// (scheme://host/path?query); it is normalised before comparison.
	URL string
	// AccessToken, if set, makes ath required and checked.
	AccessToken string
	// JKT, if set, must equal the proof key's thumbprint (the token's cnf.jkt).
	JKT string
}

// Proof is what a valid proof establishes.
type Proof struct {
	// PublicKey is the key that signed the proof: ed25519.PublicKey or a
	// P-256 *ecdsa.PublicKey.
	PublicKey crypto.PublicKey
	// JKT is the RFC 7638 thumbprint of PublicKey, to bind a new token to.
	JKT string
	// JTI is the proof's unique identifier.
	JTI string
	// IssuedAt is the proof's iat.
	IssuedAt time.Time
	// ReplayID is the identifier Check recorded in the replay store (the key's thumbprint
	// and the jti), and ReplayUntil how long it must be remembered (iat plus twice the
	// window). A server that also records the proof elsewhere — in the same database
	// transaction as its own record of the request, so replicas sharing that database refuse
	// a proof any one of them accepted — uses these.
	ReplayID    string
	ReplayUntil time.Time
}

// Check verifies one DPoP header value against the request. The caller must
// already have refused requests with more than one DPoP header (RFC 9449
// §4.3 check 1). The steps run from cheapest to dearest and the jti is
// recorded last, so a proof refused for any reason does not burn its jti:
// size, parse, header (typ, alg, jwk), signature, claims (jti, htm, htu,
// iat), ath, key binding, nonce, replay.
//
// Every refusal is an *Error. Any other error (the replay store failing, or
// a request URL the server itself cannot normalise) is a server fault.
func (c *Checker) Check(ctx context.Context, proof string, req Request) (*Proof, error) {
	if proof == "" {
		return nil, refuse("missing", "The request has no DPoP proof.")
	}
	if len(proof) > MaxProofSize {
		return nil, refuse("malformed", "The DPoP proof is larger than 8 KiB.")
	}
	j, rerr := parseJWS(proof)
	if rerr != nil {
		return nil, rerr
	}
	pub, rerr := j.checkHeader()
	if rerr != nil {
		return nil, rerr
	}
	if rerr := j.verify(pub); rerr != nil {
		return nil, rerr
	}
	cl, rerr := j.decodeClaims()
	if rerr != nil {
		return nil, rerr
	}
	iat, err := c.checkClaims(cl, req)
	if err != nil {
		return nil, err
	}
	if req.AccessToken != "" {
		if cl.ATH == "" {
			return nil, refuse("ath", "The DPoP proof has no ath claim but the request carries an access token.")
		}
		if subtle.ConstantTimeCompare([]byte(cl.ATH), []byte(AccessTokenHash(req.AccessToken))) != 1 {
			return nil, refuse("ath", "The DPoP proof ath claim does not match the access token.")
		}
	}
	jkt, err := Thumbprint(pub)
	if err != nil {
		return nil, fmt.Errorf("dpop: thumbprint of a verified key: %w", err)
	}
	if req.JKT != "" && subtle.ConstantTimeCompare([]byte(jkt), []byte(req.JKT)) != 1 {
		return nil, refuse("key_mismatch", "The DPoP proof is not signed by the key the access token is bound to.")
	}
	if c.nonces != nil {
		if cl.Nonce == "" {
			return nil, &Error{Code: CodeUseNonce, Reason: "nonce", Description: "The server requires a nonce in the DPoP proof."}
		}
		if !c.nonces.Valid(cl.Nonce) {
			return nil, &Error{Code: CodeUseNonce, Reason: "nonce", Description: "The DPoP proof nonce is invalid or expired."}
		}
	}
	// A proof passes the iat check until iat+window; the second window is a
	// margin for clocks that differ between replicas and the shared store.
	exp := iat.Add(2 * c.window)
	id := jkt + ":" + cl.JTI
	if err := c.replay.Use(ctx, id, exp); err != nil {
		if errors.Is(err, ErrReplay) {
			return nil, refuse("replay", "The DPoP proof has already been used.")
		}
		return nil, fmt.Errorf("dpop: recording proof id: %w", err)
	}
	return &Proof{PublicKey: pub, JKT: jkt, JTI: cl.JTI, IssuedAt: iat, ReplayID: id, ReplayUntil: exp}, nil
}

// checkClaims checks the claims that describe the request, returning iat.
func (c *Checker) checkClaims(cl *claims, req Request) (time.Time, error) {
	if cl.JTI == "" {
		return time.Time{}, refuse("jti", "The DPoP proof has no jti claim.")
	}
	if len(cl.JTI) > maxJTILen {
		return time.Time{}, refuse("jti", "The DPoP proof jti claim is longer than 256 characters.")
	}
	if cl.HTM == "" {
		return time.Time{}, refuse("htm", "The DPoP proof has no htm claim.")
	}
	if cl.HTM != req.Method {
		return time.Time{}, refuse("htm", "The DPoP proof htm claim does not match the request method.")
	}
	if cl.HTU == "" {
		return time.Time{}, refuse("htu", "The DPoP proof has no htu claim.")
	}
	want, err := NormalizeURL(req.URL)
	if err != nil {
		return time.Time{}, fmt.Errorf("dpop: request URL: %w", err)
	}
	got, err := NormalizeURL(cl.HTU)
	if err != nil || got != want {
		return time.Time{}, refuse("htu", "The DPoP proof htu claim does not match the request URL.")
	}
	if len(cl.IAT) == 0 {
		return time.Time{}, refuse("iat", "The DPoP proof has no iat claim.")
	}
	iat, ok := parseNumericDate(cl.IAT)
	if !ok {
		return time.Time{}, refuse("iat", "The DPoP proof iat claim is not a valid time.")
	}
	now := c.now()
	if d := now.Sub(iat); d > c.window || d < -c.window {
		return time.Time{}, refuse("iat", "The DPoP proof iat claim is outside the accepted time window.")
	}
	return iat, nil
}

// parseNumericDate accepts a JSON number (RFC 7519 NumericDate), refusing
// strings, negatives and values no proof made this millennium could carry.
func parseNumericDate(raw json.RawMessage) (time.Time, bool) {
	s := string(raw)
	if s == "" || s[0] < '0' || s[0] > '9' {
		return time.Time{}, false
	}
	if i, err := strconv.ParseInt(s, 10, 64); err == nil {
		if i > 1<<40 {
			return time.Time{}, false
		}
		return time.Unix(i, 0), true
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(f) || f < 0 || f > 1<<40 {
		return time.Time{}, false
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)), true
}

// jws is a compact JWS split into its parts; the payload stays undecoded
// until the signature over it has been checked.
type jws struct {
	signingInput string
	header       header
	payload      []byte
	sig          []byte
}

type header struct {
	Typ  string          `json:"typ"`
	Alg  string          `json:"alg"`
	JWK  *rawJWK         `json:"jwk"`
	Crit json.RawMessage `json:"crit"`
}

// rawJWK holds the public members we use and every private member any key
// type defines, so a private key sent by mistake is noticed rather than
// silently reduced to its public part.
type rawJWK struct {
	Kty string `json:"kty"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`

	D   json.RawMessage `json:"d"`
	P   json.RawMessage `json:"p"`
	Q   json.RawMessage `json:"q"`
	DP  json.RawMessage `json:"dp"`
	DQ  json.RawMessage `json:"dq"`
	QI  json.RawMessage `json:"qi"`
	Oth json.RawMessage `json:"oth"`
	K   json.RawMessage `json:"k"`
}

func (k *rawJWK) hasPrivate() bool {
	return k.D != nil || k.P != nil || k.Q != nil || k.DP != nil || k.DQ != nil ||
		k.QI != nil || k.Oth != nil || k.K != nil
}

type claims struct {
	JTI   string          `json:"jti"`
	HTM   string          `json:"htm"`
	HTU   string          `json:"htu"`
	IAT   json.RawMessage `json:"iat"`
	ATH   string          `json:"ath"`
	Nonce string          `json:"nonce"`
}

func isB64URL(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_'
}

var strictB64 = b64.Strict()

// parseJWS splits a compact JWS and decodes its header. Only the base64url
// alphabet and two dots are allowed: Go's decoder skips CR and LF, and a
// lenient parse would let one proof be written several ways.
func parseJWS(s string) (*jws, *Error) {
	dots := 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '.':
			dots++
		case !isB64URL(c):
			return nil, refuse("malformed", "The DPoP proof is not a compact JWS.")
		}
	}
	if dots != 2 {
		return nil, refuse("malformed", "The DPoP proof is not a compact JWS with three parts.")
	}
	h, rest, _ := strings.Cut(s, ".")
	p, sg, _ := strings.Cut(rest, ".")
	if h == "" || p == "" {
		return nil, refuse("malformed", "The DPoP proof has an empty header or payload.")
	}
	hb, err := strictB64.DecodeString(h)
	if err != nil {
		return nil, refuse("malformed", "The DPoP proof header is not valid base64url.")
	}
	j := &jws{signingInput: s[:len(h)+1+len(p)]}
	if err := json.Unmarshal(hb, &j.header); err != nil {
		return nil, refuse("malformed", "The DPoP proof header is not a valid JSON object.")
	}
	if j.payload, err = strictB64.DecodeString(p); err != nil {
		return nil, refuse("malformed", "The DPoP proof payload is not valid base64url.")
	}
	if j.sig, err = strictB64.DecodeString(sg); err != nil {
		return nil, refuse("malformed", "The DPoP proof signature is not valid base64url.")
	}
	return j, nil
}

// checkHeader checks typ, alg and jwk and returns the proof's public key.
func (j *jws) checkHeader() (crypto.PublicKey, *Error) {
	h := &j.header
	if h.Crit != nil {
		return nil, refuse("malformed", "The DPoP proof header has crit, and no extensions are supported.")
	}
	if h.Typ != "dpop+jwt" {
		return nil, refuse("typ", "The DPoP proof typ header is not dpop+jwt.")
	}
	var wantKty string
	switch h.Alg {
	case "EdDSA", "Ed25519":
		wantKty = "OKP"
	case "ES256":
		wantKty = "EC"
	default:
		return nil, refuse("alg", "The DPoP proof alg is not one of EdDSA, Ed25519 or ES256.")
	}
	k := h.JWK
	if k == nil {
		return nil, refuse("jwk", "The DPoP proof header has no jwk.")
	}
	if k.hasPrivate() {
		return nil, refuse("jwk_private", "The DPoP proof jwk contains private key material.")
	}
	if k.Kty != wantKty {
		return nil, refuse("jwk", "The DPoP proof jwk key type does not match its alg.")
	}
	switch wantKty {
	case "OKP":
		if k.Crv != "Ed25519" {
			return nil, refuse("jwk", "The DPoP proof jwk curve is not Ed25519.")
		}
		x, err := strictB64.DecodeString(k.X)
		if err != nil || len(x) != ed25519.PublicKeySize || !ed25519KeyOK(x) {
			return nil, refuse("jwk", "The DPoP proof jwk is not a valid Ed25519 public key.")
		}
		return ed25519.PublicKey(x), nil
	default:
		if k.Crv != "P-256" {
			return nil, refuse("jwk", "The DPoP proof jwk curve is not P-256.")
		}
		x, errX := strictB64.DecodeString(k.X)
		y, errY := strictB64.DecodeString(k.Y)
		if errX != nil || errY != nil || len(x) != 32 || len(y) != 32 {
			return nil, refuse("jwk", "The DPoP proof jwk is not a valid P-256 public key.")
		}
		var unc [65]byte
		unc[0] = 4
		copy(unc[1:], x)
		copy(unc[33:], y)
		pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), unc[:])
		if err != nil {
			return nil, refuse("jwk", "The DPoP proof jwk is not a valid P-256 public key.")
		}
		return pub, nil
	}
}

// verify checks the signature with the proof's own key.
func (j *jws) verify(pub crypto.PublicKey) *Error {
	bad := refuse("signature", "The DPoP proof signature is invalid.")
	switch k := pub.(type) {
	case ed25519.PublicKey:
		if len(j.sig) != ed25519.SignatureSize || !ed25519.Verify(k, []byte(j.signingInput), j.sig) {
			return bad
		}
	case *ecdsa.PublicKey:
		if len(j.sig) != 64 {
			return bad
		}
		r := new(big.Int).SetBytes(j.sig[:32])
		s := new(big.Int).SetBytes(j.sig[32:])
		digest := sha256.Sum256([]byte(j.signingInput))
		if !ecdsa.Verify(k, digest[:], r, s) {
			return bad
		}
	default:
		return bad
	}
	return nil
}

func (j *jws) decodeClaims() (*claims, *Error) {
	var cl claims
	if err := json.Unmarshal(j.payload, &cl); err != nil {
		return nil, refuse("malformed", "The DPoP proof payload is not a valid JSON claims set.")
	}
	return &cl, nil
}

// ed25519KeyOK refuses non-canonical encodings (y >= p) and the small-order
// points: crypto/ed25519 accepts both, and a small-order key can produce
// signatures that verify for many messages, so it proves possession of
// nothing.
func ed25519KeyOK(enc []byte) bool {
	var y [32]byte
	copy(y[:], enc)
	y[31] &= 0x7f
	// y >= p = 2^255-19: bytes 1..30 all 0xff, byte 31 0x7f, byte 0 >= 0xed.
	nonCanonical := y[31] == 0x7f && y[0] >= 0xed
	for i := 1; i < 31 && nonCanonical; i++ {
		nonCanonical = y[i] == 0xff
	}
	if nonCanonical {
		return false
	}
	for _, s := range smallOrderY {
		if y == s {
			return false
		}
	}
	return true
}

// smallOrderY are the y coordinates (little-endian, sign bit clear) of the
// eight points of order dividing 8.
var smallOrderY = [...][32]byte{
	{1},
	{0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},
	{},
	{0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98, 0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53, 0xfc, 0x05},
	{0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67, 0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac, 0x03, 0x7a},
}
