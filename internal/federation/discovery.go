package federation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/loopback"
)

// maxDocumentBytes bounds a discovery document or JWKS read from an issuer.
const maxDocumentBytes = 1 << 20

const discoveryPath = "/.well-known/openid-configuration"

type fetchedKeys struct {
	jwksURI string
	keys    []key
	ttl     time.Duration
}

// fetchKeys fetches an issuer's JWKS, discovering where it is first when jwksURI is "".
func fetchKeys(ctx context.Context, client *http.Client, issuer, jwksURI string) (fetchedKeys, error) {
	if jwksURI == "" {
		var err error
		if jwksURI, err = discover(ctx, client, issuer); err != nil {
			return fetchedKeys{}, err
		}
	}
	body, header, err := get(ctx, client, jwksURI)
	if err != nil {
		return fetchedKeys{}, fmt.Errorf("fetch JWKS: %w", err)
	}
	keys, err := parseJWKS(body)
	if err != nil {
		return fetchedKeys{}, fmt.Errorf("JWKS at %s: %w", jwksURI, err)
	}
	if len(keys) == 0 {
		return fetchedKeys{}, fmt.Errorf("JWKS at %s holds no usable public signing key (RSA ≥ 2048 bits, P-256, P-384 or Ed25519)", jwksURI)
	}
	return fetchedKeys{jwksURI: jwksURI, keys: keys, ttl: keyTTL(header)}, nil
}

// discover reads the issuer's OpenID configuration and returns its jwks_uri. The document must
// name the issuer exactly (OpenID Connect Discovery §4.3), so one issuer cannot pass for another.
func discover(ctx context.Context, client *http.Client, issuer string) (string, error) {
	where := strings.TrimSuffix(issuer, "/") + discoveryPath
	body, _, err := get(ctx, client, where)
	if err != nil {
		return "", fmt.Errorf("fetch discovery document: %w", err)
	}
	var doc struct {
		Issuer  *string `json:"issuer"`
		JWKSURI *string `json:"jwks_uri"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return "", fmt.Errorf("discovery document at %s is not a JSON object: %w", where, err)
	}
	switch {
	case doc.Issuer == nil || *doc.Issuer != issuer:
		got := "none"
		if doc.Issuer != nil {
			got = fmt.Sprintf("%q", clip(*doc.Issuer))
		}
		return "", fmt.Errorf("discovery document at %s names issuer %s, not %q", where, got, issuer)
	case doc.JWKSURI == nil || *doc.JWKSURI == "":
		return "", fmt.Errorf("discovery document at %s has no jwks_uri", where)
	}
	if err := checkFetchURL(*doc.JWKSURI); err != nil {
		return "", fmt.Errorf("jwks_uri %q: %w", clip(*doc.JWKSURI), err)
	}
	return *doc.JWKSURI, nil
}

func get(ctx context.Context, client *http.Client, where string) ([]byte, http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, where, nil)
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("GET %s: status %s", where, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxDocumentBytes+1))
	if err != nil {
		return nil, nil, fmt.Errorf("GET %s: %w", where, err)
	}
	if len(body) > maxDocumentBytes {
		return nil, nil, fmt.Errorf("GET %s: more than %d bytes", where, maxDocumentBytes)
	}
	return body, resp.Header, nil
}

// checkFetchURL accepts https URLs, and http ones on a loopback host (tests and local issuers).
func checkFetchURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return errors.New("not a URL")
	}
	switch {
	case u.Host == "" || u.Hostname() == "":
		return errors.New("not an absolute URL with a host")
	case u.User != nil:
		return errors.New("must not hold user information")
	case u.Scheme == "https":
		return nil
	case u.Scheme == "http" && loopback.Host(u.Hostname()):
		return nil
	}
	return errors.New("must be https (http only on a loopback host)")
}

// clip shortens a value quoted in a message or refusal detail.
func clip(s string) string { return apperr.Clip(s, 120) }
