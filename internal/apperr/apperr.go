// Package apperr is the one error type domain packages return for refusals. The edge maps its
// Kind to an HTTP status and OAuth error code in one place (httpapi), so no handler invents its own.
package apperr

import (
	"errors"
	"fmt"
)

// Kind classifies a refusal. The edge maps each kind to one status and error code.
type Kind int

// Kinds of refusal.
const (
	Internal        Kind = iota // a bug or an unavailable dependency; the message stays in the log
	Invalid                     // the request is malformed or breaks a rule
	Unauthenticated             // no or bad credentials
	Forbidden                   // authenticated, but not allowed
	NotFound
	Conflict // the object exists or changed
)

// ErrUnavailable is wrapped by every error that means a dependency the server needs, its
// database above all, did not answer in time or at all: a lost connection, a refused one, a
// deadline passed. It says nothing about the caller's request, which may well be good, so it
// must never become a credential or "not found" refusal: the edge answers 503 with Retry-After
// for it (httpapi.AsError), whatever refusal a domain package wrapped around it.
var ErrUnavailable = errors.New("a service the server depends on is unavailable")

// Error is a refusal with a message safe to show the caller and a stable reason word for
// metrics and audit events. Err, when set, is the cause: logged, never shown.
type Error struct {
	Kind   Kind
	Reason string // e.g. "replay", "claim_code", "agent_revoked"
	Msg    string // one sentence for the caller; never a secret
	Err    error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Msg + ": " + e.Err.Error()
	}
	return e.Msg
}

func (e *Error) Unwrap() error { return e.Err }

// New returns a refusal of kind with a machine reason and a message built like fmt.Sprintf.
func New(kind Kind, reason, format string, args ...any) *Error {
	return &Error{Kind: kind, Reason: reason, Msg: fmt.Sprintf(format, args...)}
}

// Wrap is New with a cause kept for the log.
func Wrap(err error, kind Kind, reason, format string, args ...any) *Error {
	return &Error{Kind: kind, Reason: reason, Msg: fmt.Sprintf(format, args...), Err: err}
}

// As returns the *Error in err's chain, if any.
func As(err error) (*Error, bool) {
	var e *Error
	ok := errors.As(err, &e)
	return e, ok
}

// ReasonOf returns the reason word of err, or "internal" for an unclassified error.
func ReasonOf(err error) string {
	if e, ok := As(err); ok && e.Reason != "" {
		return e.Reason
	}
	return "internal"
}

// Clip shortens caller input quoted back in a message, so a refusal never echoes a large payload.
func Clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	// Cut on a rune boundary so the message stays valid UTF-8.
	for n > 0 && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n] + "…"
}
