package verify

import (
	"encoding/json"
	"net/http"
	"strings"
)

// Error codes carried by Error.Code. The DPoP codes come from the dpop package.
const (
	CodeInvalidToken       = "invalid_token"           // RFC 6750 §3.1
	CodeInvalidRequest     = "invalid_request"         // RFC 6750 §3.1
	CodeInsufficientScope  = "insufficient_scope"      // RFC 6750 §3.1
	CodeInvalidDPoPProof   = "invalid_dpop_proof"      // RFC 9449 §7.1
	CodeUseDPoPNonce       = "use_dpop_nonce"          // RFC 9449 §9
	CodeTemporarilyUnavail = "temporarily_unavailable" // keys or revocation status cannot be read
)

// Reasons carried by Error.Reason: one short word per refusal, stable, for logs, metrics and audit
// events. Refusals of the DPoP proof carry the dpop package's reason instead.
const (
	ReasonMissing           = "missing"            // no Authorization header
	ReasonBearer            = "bearer"             // Authorization: Bearer for a DPoP-bound token
	ReasonScheme            = "scheme"             // another authorization scheme
	ReasonMalformed         = "malformed"          // the token is not a well-formed JWS or JWT
	ReasonMissingProof      = "missing_proof"      // no DPoP header
	ReasonMultipleProofs    = "multiple_proofs"    // more than one DPoP header
	ReasonAlg               = "alg"                // signature algorithm not allowed
	ReasonTyp               = "typ"                // not an at+jwt
	ReasonUnknownKID        = "unknown_kid"        // the issuer does not publish this key
	ReasonSignature         = "signature"          // signature does not verify
	ReasonIssuer            = "issuer"             // iss is not the configured issuer
	ReasonAudience          = "audience"           // aud does not name this resource server
	ReasonExpired           = "expired"            // exp has passed
	ReasonNotYetValid       = "not_yet_valid"      // nbf or iat is in the future
	ReasonClaims            = "claims"             // a required claim is missing or has the wrong type
	ReasonUnbound           = "unbound"            // no cnf.jkt: the token is not DPoP-bound
	ReasonRevoked           = "revoked"            // the agent or the token is revoked
	ReasonScope             = "scope"              // a required scope is missing
	ReasonKeysUnavailable   = "keys_unavailable"   // the issuer's keys cannot be fetched
	ReasonStatusUnavailable = "status_unavailable" // the revocation feed cannot be read
	ReasonProof             = "proof"              // the DPoP proof was refused for another reason
)

// Error is a refusal. Verify returns only *Error values; Middleware writes them.
type Error struct {
	Status      int    // HTTP status: 401, 403, or 503
	Code        string // OAuth error code (invalid_token, invalid_dpop_proof, use_dpop_nonce, ...)
	Reason      string // short word, see the Reason constants
	Description string // one sentence for the client; never contains the token or the proof
	Nonce       string // a fresh DPoP nonce; set for use_dpop_nonce
	// Caller is who the token names when the refusal came after its signature and claims were
	// checked (a revoked token, agent, task or grant; a replayed, wrong or unchecked proof; a
	// missing scope), so the refusal can be attributed to that agent, principal and task; nil
	// when the token itself was refused. Never written to the client.
	Caller *Caller

	scope string // for insufficient_scope: the scopes this resource needs
}

func (e *Error) Error() string {
	return "verify: " + e.Code + " (" + e.Reason + "): " + e.Description
}

// WriteHTTP writes e as an HTTP response: the status, a WWW-Authenticate challenge for the DPoP
// scheme (RFC 9449 §7.1, RFC 6750 §3), DPoP-Nonce for use_dpop_nonce, and a JSON body.
func (e *Error) WriteHTTP(w http.ResponseWriter) {
	h := w.Header()
	h.Set("WWW-Authenticate", e.challenge())
	if e.Code == CodeUseDPoPNonce && e.Nonce != "" {
		h.Set("DPoP-Nonce", e.Nonce)
	}
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(e.Status)
	body, _ := json.Marshal(struct {
		Error       string `json:"error"`
		Description string `json:"error_description,omitempty"`
	}{e.Code, e.Description})
	_, _ = w.Write(append(body, '\n'))
}

// challenge is the WWW-Authenticate value. A request without any credentials gets no error code
// (RFC 6750 §3.1).
func (e *Error) challenge() string {
	var b strings.Builder
	b.WriteString("DPoP ")
	if e.Code != CodeInvalidToken || e.Reason != ReasonMissing {
		b.WriteString(`error="`)
		b.WriteString(quotable(e.Code))
		b.WriteString(`", error_description="`)
		b.WriteString(quotable(e.Description))
		b.WriteString(`", `)
		if e.scope != "" {
			b.WriteString(`scope="`)
			b.WriteString(quotable(e.scope))
			b.WriteString(`", `)
		}
	}
	b.WriteString(`algs="EdDSA Ed25519 ES256"`)
	return b.String()
}

// quotable keeps only the characters RFC 6750 §3 allows inside error_description
// (%x20-21 / %x23-5B / %x5D-7E): no quotes, no backslashes, no control or non-ASCII bytes, so the
// value can never break out of its quoted-string.
func quotable(s string) string {
	clean := true
	for i := 0; i < len(s); i++ {
		if !allowed(s[i]) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	b := []byte(s)
	for i, c := range b {
		switch {
		case allowed(c):
		case c == '"':
			b[i] = '\''
		default:
			b[i] = ' '
		}
	}
	return string(b)
}

func allowed(c byte) bool {
	return c >= 0x20 && c <= 0x7e && c != '"' && c != '\\'
}

func refuse(status int, code, reason, desc string) *Error {
	return &Error{Status: status, Code: code, Reason: reason, Description: desc}
}

func invalidToken(reason, desc string) *Error {
	return refuse(http.StatusUnauthorized, CodeInvalidToken, reason, desc)
}
