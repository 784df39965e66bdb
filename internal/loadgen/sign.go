package loadgen

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"github.com/mandate-dev/mandate/didkey"
	"github.com/mandate-dev/mandate/dpop"
)

var b64 = base64.RawURLEncoding

// agent is one registered bench agent: its key lives in memory only, for this run.
type agent struct {
	id     string
	handle string
	did    string
	key    ed25519.PrivateKey

	grantToken string // exchange, proxy: the grant token of its grant
	taskToken  string // proxy: a task token bound to key
	selfToken  string // introspect: an access token to introspect
}

func newAgent(handle string) (*agent, error) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	did, err := didkey.Format(key.Public())
	if err != nil {
		return nil, err
	}
	return &agent{handle: handle, did: did, key: key}, nil
}

// jws signs claims as a compact EdDSA JWS with the agent's DID as kid.
func (a *agent) jws(typ string, claims any) (string, error) {
	hdr, err := json.Marshal(struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
		Typ string `json:"typ"`
	}{"EdDSA", a.did, typ})
	if err != nil {
		return "", err
	}
	body, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	input := b64.EncodeToString(hdr) + "." + b64.EncodeToString(body)
	return input + "." + b64.EncodeToString(ed25519.Sign(a.key, []byte(input))), nil
}

// assertion is a private_key_jwt client assertion (RFC 7523) for one request: a fresh jti,
// valid two minutes from now.
func (a *agent) assertion(aud string, now time.Time) (string, error) {
	return a.jws("JWT", map[string]any{
		"iss": a.id, "sub": a.id, "aud": aud, "jti": randomID(),
		"iat": now.Unix(), "exp": now.Add(2 * time.Minute).Unix(),
	})
}

// registration is the self-signed registration request of a new agent.
func (a *agent) registration(aud string, now time.Time) (string, error) {
	return a.jws("mandate-registration+jwt", map[string]any{
		"iss": a.did, "aud": aud, "iat": now.Unix(), "exp": now.Add(2 * time.Minute).Unix(), "jti": randomID(),
		"handle": a.handle, "name": "mandate bench " + a.handle, "description": "made by mandate bench for one load run",
	})
}

// proof is a DPoP proof by the agent's key for one request.
func (a *agent) proof(method, htu, accessToken, nonce string, now time.Time) (string, error) {
	p, err := dpop.NewProof(a.key, method, htu, dpop.ProofOptions{AccessToken: accessToken, Nonce: nonce, Now: now})
	if err != nil {
		return "", fmt.Errorf("DPoP proof: %w", err)
	}
	return p, nil
}

// shortID names the things one run makes (bench-<id>-N agents, the bench-<id> upstream).
func shortID() string {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b[:])
}

func randomID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return b64.EncodeToString(b[:])
}
