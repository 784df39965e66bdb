package vault

import (
	"fmt"
	"log/slog"
)

// Redacted is what a secret prints as, in logs, errors and JSON.
const Redacted = "REDACTED"

// Secret is a credential in the clear, held only as long as it is needed. Every way of
// printing it (slog, fmt's verbs, JSON) gives REDACTED; only Reveal gives the bytes.
type Secret struct{ b []byte }

// NewSecret wraps b (not copied).
func NewSecret(b []byte) Secret { return Secret{b: b} }

// Reveal returns the bytes. Use them for the outgoing request only.
func (s Secret) Reveal() []byte { return s.b }

// Empty reports whether the secret has no bytes.
func (s Secret) Empty() bool { return len(s.b) == 0 }

// Clear overwrites the bytes.
func (s Secret) Clear() { clear(s.b) }

// LogValue implements slog.LogValuer.
func (Secret) LogValue() slog.Value { return slog.StringValue(Redacted) }

// String implements fmt.Stringer.
func (Secret) String() string { return Redacted }

// GoString implements fmt.GoStringer.
func (Secret) GoString() string { return Redacted }

// Format implements fmt.Formatter, so that no verb (%x, %q, %v, %d) prints the bytes.
func (Secret) Format(f fmt.State, _ rune) { f.Write([]byte(Redacted)) }

// MarshalJSON implements json.Marshaler.
func (Secret) MarshalJSON() ([]byte, error) { return []byte(`"` + Redacted + `"`), nil }

// MarshalText implements encoding.TextMarshaler.
func (Secret) MarshalText() ([]byte, error) { return []byte(Redacted), nil }
