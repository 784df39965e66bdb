package token

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/mandate-dev/mandate/internal/audit"
)

// TypeAccessToken is the JOSE typ of access tokens (RFC 9068).
const TypeAccessToken = "at+jwt"

// Confirmation is the cnf claim: the RFC 7638 thumbprint of the key a token is bound to.
type Confirmation struct {
	JKT string `json:"jkt"`
}

// AccessClaims are the claims of an access token (RFC 9068 plus DPoP binding and the agent's
// identity). Every token is bound to a key (JKT set), except a service account's token issued
// by the jwt-bearer grant without a proof: a Bearer token for the management API only.
type AccessClaims struct {
	Issuer    string       `json:"iss"`
	Subject   string       `json:"sub"`
	Audience  jwt.Audience `json:"aud"`
	Scope     string       `json:"scope,omitempty"`
	Expiry    int64        `json:"exp"`
	IssuedAt  int64        `json:"iat"`
	NotBefore int64        `json:"nbf"`
	JTI       string       `json:"jti"`
	ClientID  string       `json:"client_id"`
	Cnf       Confirmation `json:"cnf,omitzero"`
	Handle    string       `json:"handle,omitempty"`
	DID       string       `json:"did,omitempty"`

	// Delegated tokens (token exchange) only.
	Txn                  string            `json:"txn,omitempty"`   // the task id
	Grant                string            `json:"grant,omitempty"` // the grant id
	AuthorizationDetails []json.RawMessage `json:"authorization_details,omitempty"`
	Act                  *Act              `json:"act,omitempty"`
}

// Act is one actor of a delegation chain (RFC 8693 §4.1): the outermost is the current actor,
// each nested Act the one before it. Sub is the agent id.
type Act struct {
	Sub    string `json:"sub"`
	Handle string `json:"handle,omitempty"`
	DID    string `json:"did,omitempty"`
	JKT    string `json:"jkt,omitempty"` // the instance key the actor's tokens are bound to, if any
	Txn    string `json:"txn,omitempty"`
	Act    *Act   `json:"act,omitempty"`
}

// Depth is the number of actors in the chain.
func (a *Act) Depth() int {
	n := 0
	for ; a != nil; a = a.Act {
		n++
	}
	return n
}

// ExpiresAt is the exp claim as a time.
func (c *AccessClaims) ExpiresAt() time.Time { return time.Unix(c.Expiry, 0) }

// acceptedAlgs are the algorithms our own tokens may carry.
var acceptedAlgs = []jose.SignatureAlgorithm{jose.EdDSA, jose.ES256}

// ErrInvalidToken is returned (wrapped with the reason) for a token this server did not sign,
// or that is malformed or expired.
var ErrInvalidToken = errors.New("invalid token")

// ParseAccess verifies an access token signed by one of our published keys and returns its
// claims. It checks the signature, typ, issuer and expiry; revocation is the caller's check.
func (k *Keys) ParseAccess(ctx context.Context, raw, issuer string) (*AccessClaims, error) {
	var c AccessClaims
	if err := k.parse(ctx, raw, TypeAccessToken, issuer, &c, &c.Issuer, &c.Expiry); err != nil {
		return nil, err
	}
	return &c, nil
}

// parse verifies a JWT of ours of type typ and decodes its claims into v; iss and exp point
// into v so the common checks need no reflection.
func (k *Keys) parse(ctx context.Context, raw, typ, issuer string, v any, iss *string, exp *int64) error {
	jws, err := jose.ParseSignedCompact(raw, acceptedAlgs)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidToken, err)
	}
	if len(jws.Signatures) != 1 {
		return fmt.Errorf("%w: want one signature", ErrInvalidToken)
	}
	h := jws.Signatures[0].Protected
	if got, _ := h.ExtraHeaders[jose.HeaderType].(string); got != typ {
		return fmt.Errorf("%w: typ %q is not %s", ErrInvalidToken, got, typ)
	}
	pub, err := k.PublicKey(ctx, h.KeyID)
	if errors.Is(err, ErrUnknownKey) {
		return fmt.Errorf("%w: %v", ErrInvalidToken, err)
	}
	if err != nil { // the keys could not be read: nothing is known against the token
		return fmt.Errorf("verify token: %w", err)
	}
	payload, err := jws.Verify(pub)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidToken, err)
	}
	if err := json.Unmarshal(payload, v); err != nil {
		return fmt.Errorf("%w: claims: %v", ErrInvalidToken, err)
	}
	if *iss != issuer {
		return fmt.Errorf("%w: issuer %q", ErrInvalidToken, *iss)
	}
	if !k.cfg.Now().Before(time.Unix(*exp, 0)) {
		return fmt.Errorf("%w: expired", ErrInvalidToken)
	}
	return nil
}

// TypeOf returns the typ header of a JWT without verifying anything: only to choose the parser.
func TypeOf(raw string) string {
	jws, err := jose.ParseSignedCompact(raw, acceptedAlgs)
	if err != nil || len(jws.Signatures) != 1 {
		return ""
	}
	typ, _ := jws.Signatures[0].Protected.ExtraHeaders[jose.HeaderType].(string)
	return typ
}

// Describe fills ev with what c says about who acts for whom: the token's id, the key it is
// bound to, its scopes and resources, its task, grant and delegation chain (oldest agent first),
// the acting agent and, for a delegated token or a service account's, the principal. A self
// token's chain is its agent alone. The actor
// fields are set to the acting agent only when ev names no actor yet (or an anonymous one): an
// event whose actor is someone else (a person revoking the token) keeps it.
func (c *AccessClaims) Describe(ev *audit.Event) {
	if c.JTI != "" {
		ev.TokenID = c.JTI
	}
	ev.KeyJKT = c.Cnf.JKT
	ev.Scopes = strings.Fields(c.Scope)
	ev.Resources = append([]string(nil), c.Audience...)
	ev.TaskID, ev.GrantID = c.Txn, c.Grant
	ev.Chain, ev.InstanceKey, ev.ParentTaskID = nil, "", ""
	if c.Act != nil {
		for a := c.Act; a != nil; a = a.Act {
			ev.Chain = append(ev.Chain, audit.Link{AgentID: a.Sub, Handle: a.Handle, DID: a.DID, InstanceKey: a.JKT, TaskID: a.Txn})
		}
		slices.Reverse(ev.Chain)
		ev.InstanceKey = c.Act.JKT
		if c.Act.Act != nil {
			ev.ParentTaskID = c.Act.Act.Txn
		}
	}
	agent := c.Act != nil || strings.HasPrefix(c.ClientID, "agt_")
	if c.Act != nil || !strings.HasPrefix(c.Subject, "agt_") {
		ev.PrincipalID = c.Subject
	}
	if !agent {
		return
	}
	ev.AgentID, ev.AgentDID = c.ClientID, c.DID
	if c.Act == nil {
		// A self token: the agent is the whole chain, as verify.Caller reads it.
		ev.Chain = []audit.Link{{AgentID: c.ClientID, Handle: c.Handle, DID: c.DID, TaskID: c.Txn}}
	}
	if ev.ActorType == "" || ev.ActorType == audit.ActorAnonymous {
		ev.ActorType, ev.ActorID = audit.ActorAgent, c.ClientID
	}
	if ev.ActorID == c.ClientID {
		ev.ActorHandle = c.Handle
	}
}
