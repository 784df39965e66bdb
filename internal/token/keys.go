// Package token mints and signs the server's JWTs and manages its signing keys: generation,
// sealing at rest, "publish, then sign" rotation, and the JWKS.
package token

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/mandate-dev/mandate/internal/audit"
)

// Signing algorithms the server can use for its own keys.
const (
	AlgEdDSA = "EdDSA"
	AlgES256 = "ES256"
)

// ErrUnknownKey is returned for a kid that is not (or no longer) published.
var ErrUnknownKey = errors.New("unknown signing key id")

// KeysConfig configures Keys.
type KeysConfig struct {
	Store        Store
	Sealer       Sealer        // seals the private keys (the master keyring)
	Alg          string        // algorithm of new keys: AlgEdDSA (default) or AlgES256
	PublishDelay time.Duration // how long a new key is published before it signs
	MaxTokenTTL  time.Duration // longest lifetime of a token the keys sign; an old key stays published this long after it stops signing
	Reload       time.Duration // how often other replicas' rotations are picked up; 0 = 5s
	Now          func() time.Time
}

// Keys holds the server's signing keys, loaded from the store and cached.
type Keys struct {
	cfg  KeysConfig
	snap atomic.Pointer[snapshot]
	mu   sync.Mutex // serialises reloads
}

type snapshot struct {
	loaded time.Time
	keys   []*loadedKey // newest first
	byKID  map[string]*loadedKey
}

type loadedKey struct {
	SigningKey
	public  crypto.PublicKey
	private crypto.Signer
}

// NewKeys returns a key manager; call Ensure before use.
func NewKeys(cfg KeysConfig) (*Keys, error) {
	if cfg.Alg == "" {
		cfg.Alg = AlgEdDSA
	}
	if cfg.Alg != AlgEdDSA && cfg.Alg != AlgES256 {
		return nil, fmt.Errorf("signing algorithm %q: want %s or %s", cfg.Alg, AlgEdDSA, AlgES256)
	}
	if cfg.Reload == 0 {
		cfg.Reload = 5 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Sealer == nil {
		return nil, errors.New("signing keys: no master keyring to seal them")
	}
	return &Keys{cfg: cfg}, nil
}

// Ensure creates the first signing key when the store has none. The first key signs at once:
// nobody can hold a cached JWKS of a server that never ran.
func (k *Keys) Ensure(ctx context.Context) error {
	snap, err := k.reload(ctx)
	if err != nil {
		return err
	}
	if len(snap.keys) > 0 {
		return nil
	}
	now := k.cfg.Now()
	ev := audit.New(now, "", audit.ActionKeyRotate)
	ev.ActorType = audit.ActorSystem
	ev.Detail = "first signing key"
	_, err = k.add(ctx, now, time.Time{}, ev)
	return err
}

// Rotate publishes a new key that starts signing after PublishDelay; the current key stops
// signing then and stays published until its last token has expired.
func (k *Keys) Rotate(ctx context.Context, ev audit.Event) (SigningKey, error) {
	active := k.cfg.Now().Add(k.cfg.PublishDelay)
	return k.add(ctx, active, active.Add(k.cfg.MaxTokenTTL), ev)
}

func (k *Keys) add(ctx context.Context, activeAt, retireUntil time.Time, ev audit.Event) (SigningKey, error) {
	sk, err := k.generate(activeAt)
	if err != nil {
		return SigningKey{}, err
	}
	ev.Target = sk.KID
	if err := k.cfg.Store.AddSigningKey(ctx, sk, retireUntil, ev); err != nil {
		return SigningKey{}, fmt.Errorf("store signing key %s: %w", sk.KID, err)
	}
	if _, err := k.reload(ctx); err != nil {
		return SigningKey{}, err
	}
	sk.Private = nil
	return sk, nil
}

func (k *Keys) generate(activeAt time.Time) (SigningKey, error) {
	var priv crypto.Signer
	var err error
	switch k.cfg.Alg {
	case AlgES256:
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	default:
		_, priv, err = ed25519.GenerateKey(rand.Reader)
	}
	if err != nil {
		return SigningKey{}, fmt.Errorf("generate signing key: %w", err)
	}
	jwk := jose.JSONWebKey{Key: priv.Public(), Algorithm: k.cfg.Alg, Use: "sig"}
	tp, err := jwk.Thumbprint(crypto.SHA256)
	if err != nil {
		return SigningKey{}, fmt.Errorf("thumbprint signing key: %w", err)
	}
	jwk.KeyID = base64.RawURLEncoding.EncodeToString(tp)
	pub, err := json.Marshal(jwk)
	if err != nil {
		return SigningKey{}, fmt.Errorf("encode signing key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return SigningKey{}, fmt.Errorf("encode signing key: %w", err)
	}
	sealed, err := k.cfg.Sealer.Seal(der, []byte(jwk.KeyID))
	if err != nil {
		return SigningKey{}, fmt.Errorf("seal signing key: %w", err)
	}
	created := k.cfg.Now().UTC()
	if activeAt.Before(created) {
		created = activeAt.UTC()
	}
	return SigningKey{KID: jwk.KeyID, Alg: k.cfg.Alg, PublicJWK: pub, Private: sealed,
		CreatedAt: created, ActiveAt: activeAt.UTC()}, nil
}

// current returns a snapshot no older than the reload interval.
func (k *Keys) current(ctx context.Context) (*snapshot, error) {
	s := k.snap.Load()
	if s != nil && k.cfg.Now().Sub(s.loaded) < k.cfg.Reload {
		return s, nil
	}
	if s != nil {
		// One request reloads; the others keep to the keys held meanwhile rather than queue
		// behind it, each for as long as a slow database takes.
		if !k.mu.TryLock() {
			return s, nil
		}
		defer k.mu.Unlock()
		return k.reloadLocked(ctx)
	}
	return k.reload(ctx)
}

func (k *Keys) reload(ctx context.Context) (*snapshot, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.reloadLocked(ctx)
}

func (k *Keys) reloadLocked(ctx context.Context) (*snapshot, error) {
	now := k.cfg.Now()
	rows, err := k.cfg.Store.ListSigningKeys(ctx, now)
	if err != nil {
		return nil, fmt.Errorf("load signing keys: %w", err)
	}
	old := k.snap.Load()
	s := &snapshot{loaded: now, byKID: make(map[string]*loadedKey, len(rows))}
	for _, row := range rows {
		lk, ok := (*loadedKey)(nil), false
		if old != nil {
			lk, ok = old.byKID[row.KID]
		}
		if !ok {
			if lk, err = k.open(row); err != nil {
				return nil, err
			}
		}
		lk.SigningKey.PublishUntil = row.PublishUntil
		s.keys = append(s.keys, lk)
		s.byKID[row.KID] = lk
	}
	sort.Slice(s.keys, func(i, j int) bool { return s.keys[i].ActiveAt.After(s.keys[j].ActiveAt) })
	k.snap.Store(s)
	return s, nil
}

func (k *Keys) open(row SigningKey) (*loadedKey, error) {
	der, err := k.cfg.Sealer.Open(row.Private, []byte(row.KID))
	if err != nil {
		return nil, fmt.Errorf("open signing key %s: %w", row.KID, err)
	}
	priv, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("parse signing key %s: %w", row.KID, err)
	}
	signer, ok := priv.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("signing key %s: unsupported type %T", row.KID, priv)
	}
	row.Private = nil
	return &loadedKey{SigningKey: row, public: signer.Public(), private: signer}, nil
}

// signingKey is the newest key whose publish delay has passed.
func (s *snapshot) signingKey(now time.Time) *loadedKey {
	for _, lk := range s.keys {
		if !lk.ActiveAt.After(now) {
			return lk
		}
	}
	return nil
}

// PublicKey returns the published key with kid. An unknown kid triggers one reload, so a key
// added by another replica is found at once.
func (k *Keys) PublicKey(ctx context.Context, kid string) (crypto.PublicKey, error) {
	s, err := k.current(ctx)
	if err != nil {
		return nil, err
	}
	if lk, ok := s.byKID[kid]; ok {
		return lk.public, nil
	}
	if k.cfg.Now().Sub(s.loaded) > time.Second { // bound reloads caused by garbage kids
		if s, err = k.reload(ctx); err != nil {
			return nil, err
		}
		if lk, ok := s.byKID[kid]; ok {
			return lk.public, nil
		}
	}
	return nil, ErrUnknownKey
}

// JWKS returns the published public keys: the signing key, keys waiting to sign, and retired
// keys whose tokens may still be live.
func (k *Keys) JWKS(ctx context.Context) (jose.JSONWebKeySet, error) {
	s, err := k.current(ctx)
	if err != nil {
		return jose.JSONWebKeySet{}, err
	}
	set := jose.JSONWebKeySet{Keys: make([]jose.JSONWebKey, 0, len(s.keys))}
	for _, lk := range s.keys {
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: lk.public, KeyID: lk.KID, Algorithm: lk.Alg, Use: "sig"})
	}
	return set, nil
}

// List returns the published keys without their private parts, newest first.
func (k *Keys) List(ctx context.Context) ([]SigningKey, error) {
	s, err := k.reload(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]SigningKey, 0, len(s.keys))
	for _, lk := range s.keys {
		out = append(out, lk.SigningKey)
	}
	return out, nil
}

// Sign signs claims as a compact JWS with header typ and the current key's kid.
func (k *Keys) Sign(ctx context.Context, typ string, claims any) (string, error) {
	s, err := k.current(ctx)
	if err != nil {
		return "", err
	}
	lk := s.signingKey(k.cfg.Now())
	if lk == nil {
		return "", errors.New("no signing key is active: run mandate serve once to create one")
	}
	opts := (&jose.SignerOptions{}).WithType(jose.ContentType(typ)).WithHeader("kid", lk.KID)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.SignatureAlgorithm(lk.Alg), Key: lk.private}, opts)
	if err != nil {
		return "", fmt.Errorf("signer for key %s: %w", lk.KID, err)
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("encode claims: %w", err)
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		return "", fmt.Errorf("sign with key %s: %w", lk.KID, err)
	}
	return jws.CompactSerialize()
}
