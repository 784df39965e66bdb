package httpapi

import (
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/audit"
)

// TestAsErrorUnavailable: an error that wraps apperr.ErrUnavailable (the database did not
// answer) is 503 temporarily_unavailable with Retry-After, whatever refusal a handler or a domain
// package built around it — a credential refusal above all; one that left the audit record
// unwritten is 503 audit_unavailable; a refusal with no such cause keeps its status.
func TestAsErrorUnavailable(t *testing.T) {
	down := fmt.Errorf("get agent: %w", apperr.ErrUnavailable)
	for _, tc := range []struct {
		name       string
		err        error
		status     int
		code       string
		retryAfter bool
	}{
		{"the store's error as it is", down, 503, CodeTemporarilyUnavailable, true},
		{"an invalid_client built around it", &Error{Status: 401, Code: "invalid_client", Description: "no such agent", Cause: down}, 503, CodeTemporarilyUnavailable, true},
		{"an invalid_request built around it", &Error{Status: 400, Code: "invalid_request", Description: "subject_token is not a valid token", Cause: down}, 503, CodeTemporarilyUnavailable, true},
		{"a domain refusal around it", apperr.Wrap(down, apperr.Unauthenticated, "unknown_agent", "no such agent"), 503, CodeTemporarilyUnavailable, true},
		{"a not-found around it", apperr.Wrap(down, apperr.NotFound, "", "no such task"), 503, CodeTemporarilyUnavailable, true},
		{"a commit lost with the connection", fmt.Errorf("commit: %w: %w", audit.ErrUnavailable, down), 503, "audit_unavailable", true},
		{"an audit failure alone", fmt.Errorf("insert: %w", audit.ErrUnavailable), 503, "audit_unavailable", true},
		{"a refusal of the caller", apperr.New(apperr.Unauthenticated, "unknown_agent", "no such agent"), 401, "unauthenticated", false},
		{"a not-found", apperr.New(apperr.NotFound, "", "no such task"), 404, "not_found", false},
		{"a bug", errors.New("nil map"), 500, "server_error", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := AsError(tc.err)
			if e.Status != tc.status || e.Code != tc.code || (e.Header.Get("Retry-After") != "") != tc.retryAfter {
				t.Errorf("AsError = %d %s (Retry-After %q), want %d %s (Retry-After: %v)", e.Status, e.Code, e.Header.Get("Retry-After"), tc.status, tc.code, tc.retryAfter)
			}
			if e.Status == http.StatusServiceUnavailable && !Unavailable(tc.err) {
				t.Errorf("Unavailable(%v) = false", tc.err)
			}
		})
	}
}
