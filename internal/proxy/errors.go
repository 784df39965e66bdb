package proxy

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/httpapi"
	"github.com/mandate-dev/mandate/oautherr"
	"github.com/mandate-dev/mandate/verify"
)

// Reasons recorded in audit events and logs: one stable word per refusal or failure. Refusals
// of the token or proof are "token_" + the verify package's reason.
const (
	reasonAbsoluteURL     = "absolute_url"         // the request target is not a path
	reasonBadPath         = "bad_path"             // traversal, encoded separators, control bytes
	reasonHost            = "host"                 // the Host header names another host
	reasonUnknownUpstream = "unknown_upstream"     // no such upstream
	reasonSelfToken       = "self_token"           // the token names no task
	reasonNoRoute         = "no_route"             // no route of the upstream allows method and path
	reasonScope           = "scope"                // routes allow it, under scopes the token lacks
	reasonMethod          = "method"               // the token's routes allow the path, not the method
	reasonBodyRule        = "body_rule"            // the body is outside the authorization_details
	reasonBodyInvalid     = "body_invalid"         // the body of a checked route is not strict JSON; a form's part headers too long
	reasonBodyTooLarge    = "body_too_large"       // the body of a checked route is over MaxBodyRuleBytes
	reasonBodyEncoding    = "body_encoding"        // a checked or form body with Content-Encoding
	reasonBodyContentType = "body_content_type"    // a checked body's Content-Type is not one JSON media type in UTF-8; a form's is not one form type
	reasonMethodOverride  = "method_override"      // a form or JSON body has a method override field
	reasonTaskEnded       = "task_ended"           // the task is completed, revoked, expired or gone
	reasonBudget          = "budget"               // a call budget of the grant or the task is used up
	reasonRequestTooLarge = "request_too_large"    // over the task's max_request_bytes
	reasonBlocked         = "blocked_address"      // the SSRF guard refused the upstream's address
	reasonCredential      = "credential"           // the credential could not be injected
	reasonTimeout         = "timeout"              // dial, TLS or response header timeout
	reasonIdleTimeout     = "idle_timeout"         // nothing moved for Timeouts.Idle
	reasonUpstream        = "upstream_unreachable" // any other transport error
	reasonClientGone      = "client_gone"          // the agent went away
	reasonAborted         = "aborted"              // the stream broke after the response began
	reasonInternal        = "internal"             // our own dependencies failed
)

// refusal is an answer of the proxy itself (not of the upstream).
type refusal struct {
	status    int
	code      string // OAuth-style error code
	reason    string
	desc      string // for the client; never a secret, token or body value
	scope     string // insufficient_scope: the scopes that would allow the call
	challenge bool   // send WWW-Authenticate: DPoP (RFC 9449 §7.1, RFC 6750 §3)
	nonce     string // DPoP-Nonce to send
	outcome   audit.Outcome
}

func refuse(status int, code, reason, desc string) *refusal {
	return &refusal{status: status, code: code, reason: reason, desc: desc}
}

func routeRefusal(d *routeDenial, upstream, method string) *refusal {
	var e *refusal
	switch d.reason {
	case reasonScope:
		e = refuse(http.StatusForbidden, "insufficient_scope", reasonScope,
			fmt.Sprintf("%s on this path of %s needs one of the scopes %s, which the token does not carry", method, upstream, strings.Join(d.scopes, " ")))
		e.scope = strings.Join(d.scopes, " ")
	case reasonMethod:
		e = refuse(http.StatusForbidden, "insufficient_scope", reasonMethod,
			fmt.Sprintf("the token's scopes do not allow %s on this path of %s (they allow %s)", method, upstream, strings.Join(d.allow, " ")))
	default:
		e = refuse(http.StatusForbidden, "insufficient_scope", reasonNoRoute,
			fmt.Sprintf("no route of upstream %s allows %s on this path", upstream, method))
	}
	e.challenge = true
	return e
}

// writeRefusal writes e through oautherr: the status, a DPoP challenge naming the upstream's
// metadata where it applies, and the JSON body with the request id. Nothing is written when the
// response has begun.
func (p *Proxy) writeRefusal(w http.ResponseWriter, r *http.Request, c *call, e *refusal) {
	if c.w.status != 0 {
		return
	}
	f := oautherr.Refusal{Status: e.status, Code: e.code, Description: e.desc,
		RequestID: c.reqID, Nonce: e.nonce}
	if e.challenge {
		f.Challenge = p.challenge(c, e)
	}
	if e.status == http.StatusServiceUnavailable {
		// Our database or audit trail did not answer: the same call may pass later.
		f.Header = http.Header{"Retry-After": {httpapi.RetryAfter}}
		if fn := p.cfg.ProofNotUsed; fn != nil && c.caller != nil && c.caller.ProofID != "" {
			fn(c.caller.ProofID)
		}
	}
	oautherr.Write(w, f)
}

// challenge is the WWW-Authenticate challenge (RFC 9449 §7.1) with the upstream's RFC 9728
// metadata URL (resource_metadata, RFC 9728 §5.1). A request without a token gets no error code
// (RFC 6750 §3.1).
func (p *Proxy) challenge(c *call, e *refusal) *oautherr.Challenge {
	ch := &oautherr.Challenge{Scheme: "DPoP", Algs: []string{verify.AlgEdDSA, verify.AlgEd25519, verify.AlgES256}}
	if e.reason != "token_"+verify.ReasonMissing {
		ch.Error, ch.Description, ch.Scope = e.code, e.desc, e.scope
	}
	if c.name != "" {
		ch.ResourceMetadata = p.metadataURL(c.name)
	}
	return ch
}
