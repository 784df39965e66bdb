package verify

import (
	"net/http"

	"github.com/mandate-dev/mandate/oautherr"
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
	// RequestID is the resource server's id of the refused request (see Config.RequestID), sent
	// in the body so the caller can quote it; "" when there is none.
	RequestID string
	// Caller is the token's caller when its signature and claims verified and a later check
	// refused the request (the proof, the token's status, a scope), so that OnDeny can say whose
	// token was refused; nil otherwise. A refusal of how the token was presented (bearer, scheme,
	// missing_proof, multiple_proofs) names the Caller too when the token in the Authorization
	// header verifies on its own (signature and claims, not a proof): a valid token sent without
	// its key is still that agent's. It is never written to the response. Do not modify.
	Caller *Caller

	scope string // for insufficient_scope: the scopes this resource needs
}

func (e *Error) Error() string {
	return "verify: " + e.Code + " (" + e.Reason + "): " + e.Description
}

// WriteHTTP writes e as an HTTP response through oautherr: the status, a WWW-Authenticate
// challenge for the DPoP scheme (RFC 9449 §7.1, RFC 6750 §3), DPoP-Nonce for use_dpop_nonce,
// Cache-Control: no-store, and the JSON body {"error","error_description","request_id"}.
func (e *Error) WriteHTTP(w http.ResponseWriter) {
	f := oautherr.Refusal{Status: e.Status, Code: e.Code, Description: e.Description, RequestID: e.RequestID,
		Challenge: e.challenge()}
	if e.Code == CodeUseDPoPNonce {
		f.Nonce = e.Nonce
	}
	if e.Code == CodeTemporarilyUnavail {
		// The keys or the token's status could not be read: the same request may pass later.
		f.Header = http.Header{"Retry-After": {RetryAfter}}
	}
	oautherr.Write(w, f)
}

// RetryAfter is the Retry-After, in seconds, of a temporarily_unavailable refusal.
const RetryAfter = "5"

// proofAlgs are the DPoP proof algorithms a challenge names (algs, RFC 9449 §7.1).
var proofAlgs = []string{AlgEdDSA, AlgEd25519, AlgES256}

// challenge is the WWW-Authenticate challenge. A request without any credentials gets no error
// code (RFC 6750 §3.1).
func (e *Error) challenge() *oautherr.Challenge {
	c := &oautherr.Challenge{Scheme: "DPoP", Algs: proofAlgs}
	if e.Code != CodeInvalidToken || e.Reason != ReasonMissing {
		c.Error, c.Description, c.Scope = e.Code, e.Description, e.scope
	}
	return c
}

func refuse(status int, code, reason, desc string) *Error {
	return &Error{Status: status, Code: code, Reason: reason, Description: desc}
}

func invalidToken(reason, desc string) *Error {
	return refuse(http.StatusUnauthorized, CodeInvalidToken, reason, desc)
}
