package proxy

import (
	"encoding/json"
	"net/http"
	"strings"
)

// MetadataPrefix is where the RFC 9728 metadata of each upstream lives, followed by its name.
const MetadataPrefix = "/.well-known/oauth-protected-resource/proxy/"

func (p *Proxy) metadataURL(name string) string { return p.issuer + MetadataPrefix + name }

// ProtectedResourceMetadata is the RFC 9728 document of one upstream.
type ProtectedResourceMetadata struct {
	Resource                      string   `json:"resource"`
	AuthorizationServers          []string `json:"authorization_servers"`
	ScopesSupported               []string `json:"scopes_supported"`
	BearerMethodsSupported        []string `json:"bearer_methods_supported"`
	DPoPSigningAlgValuesSupported []string `json:"dpop_signing_alg_values_supported"`
	DPoPBoundAccessTokensRequired bool     `json:"dpop_bound_access_tokens_required"`
	ResourceName                  string   `json:"resource_name,omitempty"`
}

// Metadata answers GET /.well-known/oauth-protected-resource/proxy/{upstream} (RFC 9728 §3).
func (p *Proxy) Metadata(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("upstream")
	if name == "" {
		name = strings.TrimPrefix(r.URL.Path, MetadataPrefix)
	}
	write := func(status int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(v)
	}
	notFound := func() {
		w.Header().Set("Cache-Control", "no-store")
		write(http.StatusNotFound, map[string]string{"error": "not_found", "error_description": "no such upstream"})
	}
	if !validName(name) {
		notFound()
		return
	}
	u, err := p.cfg.Upstreams.Upstream(r.Context(), name)
	if isNotFound(err) {
		notFound()
		return
	}
	if err != nil {
		p.log.WarnContext(r.Context(), "proxy metadata", "error", safeError(err, nil))
		w.Header().Set("Cache-Control", "no-store")
		write(http.StatusServiceUnavailable, map[string]string{"error": "temporarily_unavailable", "error_description": "try again later"})
		return
	}
	scopes := routeScopes(&u)
	if scopes == nil {
		scopes = []string{}
	}
	w.Header().Set("Cache-Control", "public, max-age=60")
	write(http.StatusOK, ProtectedResourceMetadata{
		Resource:                      p.Resource(u.Name),
		AuthorizationServers:          []string{p.cfg.Issuer},
		ScopesSupported:               scopes,
		BearerMethodsSupported:        []string{"header"},
		DPoPSigningAlgValuesSupported: []string{"EdDSA", "Ed25519", "ES256"},
		DPoPBoundAccessTokensRequired: true,
		ResourceName:                  u.Name,
	})
}
