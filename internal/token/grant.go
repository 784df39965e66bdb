package token

import (
	"context"
	"encoding/json"
	"strings"

	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/mandate-dev/mandate/internal/audit"
)

// TypeGrantToken is the JOSE typ of grant tokens: not an access token, so no resource accepts
// one (verifiers require at+jwt); it is only a subject_token for token exchange.
const TypeGrantToken = "grant+jwt"

// GrantLimits are a grant's limits as a grant token states them (durations in seconds).
type GrantLimits struct {
	MaxTaskTTL         int64            `json:"max_task_ttl"`
	MaxTokenTTL        int64            `json:"max_token_ttl"`
	MaxDepth           int              `json:"max_depth"`
	AllowSubdelegation bool             `json:"allow_subdelegation"`
	Budget             map[string]int64 `json:"budget,omitempty"`
}

// GrantClaims are the claims of a grant token: the principal (sub) lets the agent (act, and
// client_id) act within the scopes, resources and details, under the limits; bound to the
// agent's long-term key; jti is the grant id.
type GrantClaims struct {
	Issuer               string            `json:"iss"`
	Subject              string            `json:"sub"`
	Audience             jwt.Audience      `json:"aud"`
	IssuedAt             int64             `json:"iat"`
	Expiry               int64             `json:"exp"`
	JTI                  string            `json:"jti"`
	ClientID             string            `json:"client_id"`
	Cnf                  Confirmation      `json:"cnf"`
	Act                  *Act              `json:"act"`
	Scope                string            `json:"scope,omitempty"`
	Resources            []string          `json:"resources,omitempty"`
	AuthorizationDetails []json.RawMessage `json:"authorization_details,omitempty"`
	Limits               GrantLimits       `json:"limits"`
}

// ParseGrant verifies a grant token of ours and returns its claims (signature, typ, issuer,
// expiry); whether the grant is still active is the caller's check.
func (k *Keys) ParseGrant(ctx context.Context, raw, issuer string) (*GrantClaims, error) {
	var c GrantClaims
	if err := k.parse(ctx, raw, TypeGrantToken, issuer, &c, &c.Issuer, &c.Expiry); err != nil {
		return nil, err
	}
	return &c, nil
}

// Describe fills ev with what the grant token c says: the grant (its id is the token's jti),
// the principal, the agent and the key it is bound to, the grant's scopes and resources. The
// actor is set to the agent only when ev names no actor yet (or an anonymous one).
func (c *GrantClaims) Describe(ev *audit.Event) {
	ev.TokenID, ev.GrantID, ev.PrincipalID, ev.KeyJKT = c.JTI, c.JTI, c.Subject, c.Cnf.JKT
	ev.Scopes, ev.Resources = strings.Fields(c.Scope), append([]string(nil), c.Resources...)
	ev.TaskID, ev.ParentTaskID, ev.InstanceKey = "", "", ""
	ev.AgentID, ev.AgentDID, ev.Chain = c.ClientID, "", nil
	handle := ""
	if c.Act != nil {
		ev.AgentDID, handle = c.Act.DID, c.Act.Handle
		ev.Chain = []audit.Link{{AgentID: c.ClientID, Handle: handle, DID: c.Act.DID}}
	}
	if ev.ActorType == "" || ev.ActorType == audit.ActorAnonymous {
		ev.ActorType, ev.ActorID = audit.ActorAgent, c.ClientID
	}
	if ev.ActorID == c.ClientID {
		ev.ActorHandle = handle
	}
}
