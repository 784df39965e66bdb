package oidctest_test

import (
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/mandate-dev/mandate/internal/federation/oidctest"
)

func get(t *testing.T, url string) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

// Tokens of every algorithm verify with go-jose against the JWKS the issuer serves.
func TestMintVerifiesAgainstServedJWKS(t *testing.T) {
	iss := oidctest.New(t, oidctest.WithMaxAge(10*time.Minute))
	var doc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	_, body := get(t, iss.URL+oidctest.DiscoveryPath)
	if err := json.Unmarshal(body, &doc); err != nil || doc.Issuer != iss.URL || doc.JWKSURI != iss.URL+oidctest.JWKSPath {
		t.Fatalf("discovery %s: %v", body, err)
	}
	algs := []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"}
	for _, alg := range algs {
		iss.Key(alg)
	}
	resp, body := get(t, doc.JWKSURI)
	if cc := resp.Header.Get("Cache-Control"); cc != "public, max-age=600" {
		t.Errorf("Cache-Control %q", cc)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(body, &set); err != nil {
		t.Fatal(err)
	}
	for _, alg := range algs {
		token := iss.Mint(iss.Claims("sub", "aud"), oidctest.WithAlg(alg))
		jws, err := jose.ParseSignedCompact(token, []jose.SignatureAlgorithm{jose.SignatureAlgorithm(alg)})
		if err != nil {
			t.Fatalf("%s: %v", alg, err)
		}
		if _, err := jws.Verify(&set); err != nil {
			t.Errorf("%s: %v", alg, err)
		}
	}
	if iss.JWKSFetches() != 1 || iss.DiscoveryFetches() != 1 {
		t.Errorf("fetches: %d JWKS, %d discovery", iss.JWKSFetches(), iss.DiscoveryFetches())
	}

	old := iss.Keys()
	iss.Rotate()
	for i, k := range iss.Keys() {
		if k.KID == old[i].KID || k.Alg != old[i].Alg {
			t.Errorf("rotated key %d: %s %s, was %s %s", i, k.KID, k.Alg, old[i].KID, old[i].Alg)
		}
	}
	iss.SetFailing(true)
	if resp, _ := get(t, doc.JWKSURI); resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("failing issuer answered %s", resp.Status)
	}
}
