// Package oauth is the token endpoint (one type per grant), client authentication, discovery
// metadata, JWKS, introspection (RFC 7662) and revocation (RFC 7009).
package oauth

import (
	"net/http"

	"github.com/mandate-dev/mandate/internal/httpapi"
)

// OAuth error codes (RFC 6749 §5.2, RFC 9449 §12.2).
const (
	CodeInvalidRequest       = "invalid_request"
	CodeInvalidClient        = "invalid_client"
	CodeInvalidGrant         = "invalid_grant"
	CodeUnauthorizedClient   = "unauthorized_client"
	CodeUnsupportedGrantType = "unsupported_grant_type"
	CodeInvalidScope         = "invalid_scope"
	CodeInvalidTarget        = "invalid_target" // RFC 8707
	CodeInvalidDPoPProof     = "invalid_dpop_proof"
	CodeUseDPoPNonce         = "use_dpop_nonce"
)

func oauthError(status int, code, reason, description string) *httpapi.Error {
	return &httpapi.Error{Status: status, Code: code, Reason: reason, Description: description}
}

func badRequest(code, reason, description string) *httpapi.Error {
	return oauthError(http.StatusBadRequest, code, reason, description)
}

// invalidClient is 401 per RFC 6749 §5.2. The reason stays in the log and audit event; the
// description says what to check without telling a prober which part was wrong.
func invalidClient(reason, description string, cause error) *httpapi.Error {
	e := oauthError(http.StatusUnauthorized, CodeInvalidClient, reason, description)
	e.Cause = cause
	return e
}
