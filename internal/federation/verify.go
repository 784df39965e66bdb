package federation

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"strings"

	"github.com/go-jose/go-jose/v4"

	"github.com/mandate-dev/mandate/internal/apperr"
)

// checkAlg refuses every algorithm but the asymmetric ones in algs.
func checkAlg(a *assertion) *Refusal {
	if !algAllowed(a.alg) {
		return refuse(ReasonAlg, "alg %q is not accepted; issuers must sign with one of %s", apperr.Clip(a.alg, 40), strings.Join(algs, ", "))
	}
	return nil
}

// verify finds the issuer's keys that may have signed a and checks the signature with them. A
// kid the cache does not know causes one rate-limited refetch; so does a token without kid that
// no cached key verifies (the issuer may have rotated). keyRef is the refusal of finding a key,
// sigRef that of the signature (nil when it was not checked because keyRef is set).
func (s *Service) verify(ctx context.Context, is Issuer, a *assertion) (keyRef, sigRef *Refusal) {
	src := s.keys.source(is)
	now := s.cfg.Now()
	keys, ref := s.keys.current(ctx, src, now)
	if ref != nil {
		return ref, nil
	}
	candidates, ref := candidateKeys(is, a, keys)
	if ref != nil && ref.Reason == ReasonUnknownKID && a.kid != "" && s.keys.refresh(ctx, src, now) {
		if keys, ref = s.keys.current(ctx, src, now); ref != nil {
			return ref, nil
		}
		candidates, ref = candidateKeys(is, a, keys)
	}
	if ref != nil {
		return ref, nil
	}
	sigRef = checkSignature(a, candidates)
	if sigRef != nil && a.kid == "" && s.keys.refresh(ctx, src, now) {
		if keys, ref = s.keys.current(ctx, src, now); ref != nil {
			return ref, nil
		}
		if candidates, ref = candidateKeys(is, a, keys); ref != nil {
			return ref, nil
		}
		sigRef = checkSignature(a, candidates)
	}
	return nil, sigRef
}

// candidateKeys returns the keys that may verify a: those with its kid, or without a kid every
// key whose type fits its alg.
func candidateKeys(is Issuer, a *assertion, keys []key) ([]key, *Refusal) {
	if a.kid == "" {
		fit := keysFitting(keys, a.alg)
		if len(fit) == 0 {
			return nil, refuse(ReasonUnknownKID, "the assertion has no kid and issuer %s has no key for alg %s", is.URL, a.alg)
		}
		return fit, nil
	}
	withKID := keysWithKID(keys, a.kid)
	if len(withKID) == 0 {
		return nil, refuse(ReasonUnknownKID, "issuer %s has no key with kid %q", is.URL, clip(a.kid))
	}
	fit := keysFitting(withKID, a.alg)
	if len(fit) == 0 {
		k := withKID[0]
		return nil, refuse(ReasonAlg, "key %q of issuer %s is %s (alg %q), which alg %s cannot use", clip(a.kid), is.URL, k.kind(), k.alg, a.alg)
	}
	return fit, nil
}

// checkSignature reports whether any of keys verifies the signature of a.
func checkSignature(a *assertion, keys []key) *Refusal {
	fail := refuse(ReasonSignature, "the signature does not verify with the %d key(s) of the issuer that fit alg %s and kid %q", len(keys), a.alg, clip(a.kid))
	if a.alg == algEd25519 {
		i := strings.LastIndexByte(a.raw, '.')
		sig, err := base64.RawURLEncoding.DecodeString(a.raw[i+1:])
		if err != nil {
			return fail
		}
		for _, k := range keys {
			if pub, ok := k.pub.(ed25519.PublicKey); ok && ed25519.Verify(pub, []byte(a.raw[:i]), sig) {
				return nil
			}
		}
		return fail
	}
	jws, err := jose.ParseSignedCompact(a.raw, []jose.SignatureAlgorithm{jose.SignatureAlgorithm(a.alg)})
	if err != nil {
		return refuse(ReasonSignature, "the JWS cannot be verified: %v", err)
	}
	for _, k := range keys {
		if _, err := jws.Verify(k.pub); err == nil {
			return nil
		}
	}
	return fail
}
