package proxy

import (
	"net/http"
	"strings"

	"github.com/mandate-dev/mandate/internal/httpapi"
	"github.com/mandate-dev/mandate/oautherr"
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
	notFound := func() {
		oautherr.Write(w, oautherr.Refusal{Status: http.StatusNotFound, Code: "not_found", Description: "no such upstream",
			RequestID: httpapi.RequestID(r.Context())})
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
		oautherr.Write(w, oautherr.Refusal{Status: http.StatusServiceUnavailable, Code: "temporarily_unavailable",
			Description: "try again later", RequestID: httpapi.RequestID(r.Context()),
			Header: http.Header{"Retry-After": {httpapi.RetryAfter}}})
		return
	}
	scopes := routeScopes(&u)
	if scopes == nil {
		scopes = []string{}
	}
	w.Header().Set("Cache-Control", "public, max-age=60")
	httpapi.WriteJSON(w, http.StatusOK, ProtectedResourceMetadata{
		Resource:                      p.Resource(u.Name),
		AuthorizationServers:          []string{p.cfg.Issuer},
		ScopesSupported:               scopes,
		BearerMethodsSupported:        []string{"header"},
		DPoPSigningAlgValuesSupported: []string{"EdDSA", "Ed25519", "ES256"},
		DPoPBoundAccessTokensRequired: true,
		ResourceName:                  u.Name,
	})
}
