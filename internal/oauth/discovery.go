package oauth

import (
	"net/http"

	"github.com/mandate-dev/mandate/internal/httpapi"
)

// Algorithms accepted on input: the polymorphic EdDSA and the fully-specified Ed25519 (RFC 9864).
var inputAlgs = []string{"EdDSA", "Ed25519", "ES256"}

// Metadata serves RFC 8414 authorization server metadata.
func (s *Server) Metadata(w http.ResponseWriter, r *http.Request) error {
	iss := s.cfg.Issuer
	w.Header().Set("Cache-Control", "public, max-age=300")
	httpapi.WriteJSON(w, http.StatusOK, map[string]any{
		"issuer":                                iss,
		"token_endpoint":                        iss + PathToken,
		"jwks_uri":                              iss + PathJWKS,
		"introspection_endpoint":                iss + PathIntrospect,
		"revocation_endpoint":                   iss + PathRevoke,
		"grant_types_supported":                 s.grantTypes(),
		"response_types_supported":              []string{},
		"scopes_supported":                      []string{ScopeAgent},
		"token_endpoint_auth_methods_supported": []string{"private_key_jwt"},
		"token_endpoint_auth_signing_alg_values_supported": inputAlgs,
		"introspection_endpoint_auth_methods_supported":    []string{"private_key_jwt", "bearer"},
		"revocation_endpoint_auth_methods_supported":       []string{"private_key_jwt", "bearer"},
		"dpop_signing_alg_values_supported":                inputAlgs,
		"authorization_response_iss_parameter_supported":   false,
		"service_documentation":                            iss + "/v1/openapi.json",
	})
	return nil
}

// JWKS serves the published signing keys.
func (s *Server) JWKS(w http.ResponseWriter, r *http.Request) error {
	set, err := s.cfg.Keys.JWKS(r.Context())
	if err != nil {
		return err
	}
	// Short caching: a rotated-in key is published well before it signs (publish, then sign).
	w.Header().Set("Cache-Control", "public, max-age=60")
	httpapi.WriteJSON(w, http.StatusOK, set)
	return nil
}
