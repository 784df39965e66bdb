// Package httpapi holds what every HTTP handler shares: the error type and the one place it is
// written, the error-returning handler adapter, and the middleware (request id, recovery,
// structured logs, metrics).
package httpapi

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"

	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/oautherr"
)

// Error is an OAuth-style error response: RFC 6749 §5.2 for the token endpoint, the same shape
// for the management API. Description is for the client; Cause is for the log only.
type Error struct {
	Status      int
	Code        string
	Description string
	Reason      string      // machine word for metrics and audit; defaults to Code
	Header      http.Header // extra response headers (WWW-Authenticate, DPoP-Nonce)
	Cause       error
	// Audit, when set, is the precise refusal for the audit trail in place of Description: a
	// refusal that must not tell the caller which check failed (RFC 7523 assertions) still
	// tells the admin.
	Audit string
}

func (e *Error) Error() string {
	if e.Cause != nil {
		return e.Code + ": " + e.Description + ": " + e.Cause.Error()
	}
	return e.Code + ": " + e.Description
}

func (e *Error) Unwrap() error { return e.Cause }

// Errorf is a shorthand for an Error without a cause.
func Errorf(status int, code, description string) *Error {
	return &Error{Status: status, Code: code, Description: description}
}

// kindStatus maps each domain refusal to one status and code; this is the only such table.
var kindStatus = map[apperr.Kind]struct {
	status int
	code   string
}{
	apperr.Invalid:         {http.StatusBadRequest, "invalid_request"},
	apperr.Unauthenticated: {http.StatusUnauthorized, "unauthenticated"},
	apperr.Forbidden:       {http.StatusForbidden, "forbidden"},
	apperr.NotFound:        {http.StatusNotFound, "not_found"},
	apperr.Conflict:        {http.StatusConflict, "conflict"},
}

// errAuditUnavailable is the answer to a request whose audit record could not be written: the
// store wrote nothing else either, so the caller may retry.
func errAuditUnavailable(err error) *Error {
	return &Error{Status: http.StatusServiceUnavailable, Code: "audit_unavailable",
		Description: "the audit trail could not record this request, so nothing was done; retry later, and quote the request id if it persists",
		Reason:      "audit_unavailable", Header: http.Header{"Retry-After": {RetryAfter}}, Cause: err}
}

// RetryAfter is the Retry-After, in seconds, of the answers that ask the caller to come back:
// the audit trail or the database did not answer.
const RetryAfter = "5"

// CodeTemporarilyUnavailable is the code of a refusal caused by an unavailable dependency (RFC
// 6749 §4.1.2.1 names it for the authorization endpoint; every endpoint of ours uses it alike).
const CodeTemporarilyUnavailable = "temporarily_unavailable"

// errTemporarilyUnavailable is the answer to a request the server could not decide because its
// database (or another dependency) did not answer in time: nothing was done, the caller's
// credentials were not found wanting, and the same request may succeed later.
func errTemporarilyUnavailable(err error) *Error {
	return &Error{Status: http.StatusServiceUnavailable, Code: CodeTemporarilyUnavailable,
		Description: "the server cannot reach its database right now, so nothing was done; retry the same request later, and quote the request id if it persists",
		Reason:      "unavailable", Header: http.Header{"Retry-After": {RetryAfter}}, Cause: err}
}

// Unavailable reports whether err means a dependency did not answer (apperr.ErrUnavailable) or
// an audit record could not be made (audit.ErrUnavailable): an answer the caller may retry.
func Unavailable(err error) bool {
	return errors.Is(err, apperr.ErrUnavailable) || errors.Is(err, audit.ErrUnavailable)
}

// AsError turns any error into the response to send: an *Error as is, a domain refusal through
// the kind table, anything else as a 500 whose description reveals nothing — but for failures of
// a dependency, mapped here and nowhere else. A server failure that left the audit record
// unwritten (audit.ErrUnavailable) is 503 audit_unavailable; an error that wraps
// apperr.ErrUnavailable (the database did not answer) is 503 temporarily_unavailable, whatever
// refusal was built around it: a credential could not be checked, which says nothing against it.
// Both carry Retry-After.
func AsError(err error) *Error {
	e := asError(err)
	if e.Status == http.StatusServiceUnavailable {
		return e // already an answer of unavailability (audit_unavailable, /readyz's)
	}
	down := errors.Is(err, apperr.ErrUnavailable)
	if errors.Is(err, audit.ErrUnavailable) && (e.Status >= 500 || down) {
		return errAuditUnavailable(err)
	}
	if down {
		return errTemporarilyUnavailable(err)
	}
	return e
}

func asError(err error) *Error {
	var he *Error
	if errors.As(err, &he) {
		return he
	}
	if de, ok := apperr.As(err); ok {
		if m, ok := kindStatus[de.Kind]; ok {
			return &Error{Status: m.status, Code: m.code, Description: de.Msg, Reason: de.Reason, Cause: err}
		}
	}
	return &Error{Status: http.StatusInternalServerError, Code: "server_error",
		Description: "the server failed to handle the request; quote the request id when reporting it", Reason: "internal", Cause: err}
}

// ReasonOf is the reason word recorded for err in metrics and audit events.
func ReasonOf(err error) string {
	e := AsError(err)
	if e.Reason != "" {
		return e.Reason
	}
	return e.Code
}

// WriteError writes err through oautherr, the one renderer of refusals: the body
// {error, error_description, request_id} with Cache-Control: no-store, and the error's headers.
// The cause goes to the log, never to the client.
func WriteError(w http.ResponseWriter, r *http.Request, log *slog.Logger, err error) {
	e := AsError(err)
	level := slog.LevelInfo
	if e.Status >= 500 {
		level = slog.LevelError
	}
	attrs := []any{slog.String("code", e.Code), slog.Int("status", e.Status)}
	if e.Cause != nil {
		attrs = append(attrs, slog.String("cause", e.Cause.Error()))
	}
	log.Log(r.Context(), level, "request refused", attrs...)
	// The error's headers replace any set earlier (a handler may have set DPoP-Nonce already).
	oautherr.Write(w, oautherr.Refusal{Status: e.Status, Code: e.Code, Description: e.Description,
		RequestID: RequestID(r.Context()), Header: e.Header})
}

// WriteJSON writes v as the JSON response body with status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	// Compact: answers are read by programs (the CLI pretty-prints what it shows), and a token
	// response is on the hot path.
	_ = json.NewEncoder(w).Encode(v) // the client went away; nothing useful to do
}

// HandlerFunc is an http handler that returns its error instead of writing it.
type HandlerFunc func(w http.ResponseWriter, r *http.Request) error

// Handle adapts h: a returned error is written by WriteError.
func Handle(log *slog.Logger, h HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := h(w, r); err != nil {
			WriteError(w, r, log, err)
		}
	})
}
