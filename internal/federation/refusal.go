package federation

import (
	"fmt"
	"time"

	"github.com/mandate-dev/mandate/internal/principal"
)

// Refusal reasons: short words for audit events and metrics.
const (
	ReasonMalformed              = "malformed"
	ReasonUnknownIssuer          = "unknown_issuer"
	ReasonAlg                    = "alg"
	ReasonUnknownKID             = "unknown_kid"
	ReasonKeysUnavailable        = "keys_unavailable"
	ReasonSignature              = "signature"
	ReasonAudience               = "audience"
	ReasonExpired                = "expired"
	ReasonNotYetValid            = "not_yet_valid"
	ReasonIssuedInFuture         = "issued_in_future"
	ReasonLifetime               = "lifetime"
	ReasonJTIMissing             = "jti_missing"
	ReasonNoRule                 = "no_rule"
	ReasonSubject                = "subject"
	ReasonClaim                  = "claim"
	ReasonCondition              = "condition"
	ReasonRuleDisabled           = "rule_disabled"
	ReasonServiceAccountDisabled = "service_account_disabled"
)

// Match is an assertion that passed every check, and the rule it matched.
type Match struct {
	Rule           Rule
	ServiceAccount principal.ServiceAccount
	Issuer         Issuer
	Subject        string
	JTI            string    // "" when absent
	IssuedAt       time.Time // zero when the assertion has no iat
	ExpiresAt      time.Time
	// Claims are the verified claims; JSON numbers are int64 when integral, else float64.
	Claims map[string]any
}

// Refusal is why an assertion was refused. Detail is for the audit trail only: it may quote
// claim values, never the assertion.
type Refusal struct {
	Reason string
	Detail string
}

func (r *Refusal) Error() string { return "assertion refused (" + r.Reason + "): " + r.Detail }

func refuse(reason, format string, args ...any) *Refusal {
	return &Refusal{Reason: reason, Detail: fmt.Sprintf(format, args...)}
}

// Check is one step of a Report.
type Check struct {
	Name   string
	OK     bool
	Detail string
}

// Report is the outcome of Test: every check of one rule against one assertion.
type Report struct {
	Rule   Rule
	Checks []Check
	Claims map[string]any // nil when the assertion could not be parsed
	OK     bool
}
