// Package oautherr writes a refusal in the one shape every mandate endpoint uses, and that a
// resource server using the verify SDK uses too: the status, a JSON body with the field names of
// RFC 6749 §5.2 plus the request id,
//
//	{"error": "invalid_token", "error_description": "…", "request_id": "req_…"}
//
// sent with Cache-Control: no-store, a WWW-Authenticate challenge (RFC 6750 §3, RFC 9449 §7.1)
// and a DPoP-Nonce (RFC 9449 §8, §9) when the refusal calls for them, and the request id in the
// X-Request-Id header as well.
//
// Every value that goes into a header is made safe for it: the challenge's parameters keep only
// the characters RFC 6750 §3 allows in a quoted string, and no header value carries a control
// byte, so a description can never add a header or break the challenge's syntax.
//
// The package imports nothing internal to mandate, so the verify SDK and the server share it.
package oautherr

import (
	"encoding/json"
	"net/http"
	"strings"
)

// RequestIDHeader carries the request id in a response (and, from a resource server's own
// middleware or a proxy in front of it, in a request).
const RequestIDHeader = "X-Request-Id"

// Body is the JSON body of every refusal. RequestID is omitted only when the server has none
// (a resource server that issues no request ids).
type Body struct {
	Error       string `json:"error"`
	Description string `json:"error_description,omitempty"`
	RequestID   string `json:"request_id,omitempty"`
}

// Refusal is one refusal to write.
type Refusal struct {
	Status      int    // HTTP status; anything outside 400–599 is sent as 500
	Code        string // OAuth-style error code: invalid_request, invalid_token, …
	Description string // one sentence for the client that says what to do; never a secret
	RequestID   string // the server's id of this request; also sent as X-Request-Id unless set
	Challenge   *Challenge
	Nonce       string // a fresh DPoP nonce, sent as DPoP-Nonce
	// Header holds other response headers (Retry-After, a hand-made WWW-Authenticate); each
	// replaces any value set earlier, since a header that is not a list is sent once (RFC 9110
	// §5.3).
	Header http.Header
}

// Write writes f as the response. Headers set earlier on w stay, but for Content-Length (the
// body is this one) and those f sets.
func Write(w http.ResponseWriter, f Refusal) {
	h := w.Header()
	for k, vs := range f.Header {
		safe := make([]string, len(vs))
		for i, v := range vs {
			safe[i] = headerValue(v)
		}
		h[http.CanonicalHeaderKey(k)] = safe
	}
	if f.Challenge != nil {
		h.Set("WWW-Authenticate", f.Challenge.String())
	}
	if f.Nonce != "" {
		h.Set("DPoP-Nonce", headerValue(f.Nonce))
	}
	if h.Get(RequestIDHeader) == "" && visible(f.RequestID) {
		h.Set(RequestIDHeader, f.RequestID)
	}
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Del("Content-Length")
	status := f.Status
	if status < 400 || status > 599 {
		status = http.StatusInternalServerError
	}
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(Body{Error: f.Code, Description: f.Description, RequestID: f.RequestID}) // the client went away
}

// Challenge is a WWW-Authenticate challenge of the Bearer (RFC 6750 §3) or DPoP (RFC 9449 §7.1)
// scheme. Without Error it carries no error information at all, as RFC 6750 §3.1 asks of an
// answer to a request without credentials: Description and Scope are then left out too.
type Challenge struct {
	Scheme           string   // "DPoP" or "Bearer"; empty means DPoP
	Realm            string   // realm, when the server names one
	Error            string   // error code
	Description      string   // error_description
	Scope            string   // scope: for insufficient_scope, the scopes that would do
	ResourceMetadata string   // resource_metadata: the RFC 9728 metadata URL (RFC 9728 §5.1)
	Algs             []string // algs: the DPoP proof algorithms accepted (DPoP only)
}

// String is the header value: the scheme, then realm, error, error_description, scope,
// resource_metadata and algs, those that are set, each a quoted string.
func (c Challenge) String() string {
	var b strings.Builder
	scheme := "DPoP"
	if strings.EqualFold(c.Scheme, "Bearer") {
		scheme = "Bearer"
	}
	b.WriteString(scheme)
	sep := " "
	param := func(name, value string) {
		b.WriteString(sep)
		b.WriteString(name)
		b.WriteString(`="`)
		b.WriteString(Quotable(value))
		b.WriteByte('"')
		sep = ", "
	}
	if c.Realm != "" {
		param("realm", c.Realm)
	}
	if c.Error != "" {
		param("error", c.Error)
		if c.Description != "" {
			param("error_description", c.Description)
		}
		if c.Scope != "" {
			param("scope", c.Scope)
		}
	}
	if c.ResourceMetadata != "" {
		param("resource_metadata", c.ResourceMetadata)
	}
	if len(c.Algs) > 0 && scheme == "DPoP" {
		param("algs", strings.Join(c.Algs, " "))
	}
	return b.String()
}

// Quotable keeps only the characters RFC 6750 §3 allows inside a quoted parameter
// (%x20-21 / %x23-5B / %x5D-7E): a double quote becomes a single one, and a backslash, a control
// byte or a non-ASCII character becomes a space, so the value can never leave its quoted-string.
func Quotable(s string) string {
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
	return strings.Map(func(r rune) rune {
		switch {
		case r == '"':
			return '\''
		case r > 0x7e || !allowed(byte(r)):
			return ' '
		}
		return r
	}, s)
}

func allowed(c byte) bool {
	return c >= 0x20 && c <= 0x7e && c != '"' && c != '\\'
}

// visible reports whether s is one or more visible ASCII characters (%x21-7E): a request id the
// X-Request-Id header carries as the body does.
func visible(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return s != ""
}

// headerValue drops the bytes no header value may hold (RFC 9110 §5.5: no control bytes but
// tab), so a value can never end its header line.
func headerValue(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return strings.Map(func(r rune) rune {
				if (r < 0x20 && r != '\t') || r == 0x7f {
					return -1
				}
				return r
			}, s)
		}
	}
	return s
}
