// Package registry registers agents by their did:key, hands out one-time claim codes, and
// keeps each agent's status and keys: claim, revoke, key rotation with a grace period.
package registry

import (
	"context"
	"crypto"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/mandate-dev/mandate/didkey"
	"github.com/mandate-dev/mandate/dpop"
	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/ids"
	"github.com/mandate-dev/mandate/internal/jwsverify"
	"github.com/mandate-dev/mandate/internal/principal"
)

// Limits on signed requests: a registration or rotation is valid for at most five minutes, and a
// little clock skew is tolerated on iat.
const (
	MaxRequestLifetime = 5 * time.Minute
	clockSkew          = 60 * time.Second
)

// Registration and rotation request media types.
const (
	TypeRegistration = "mandate-registration+jwt"
)

// SignatureAlgs are the algorithms accepted in the two-signature key rotation (JSON
// serialization, verified by go-jose).
var SignatureAlgs = []jose.SignatureAlgorithm{jose.EdDSA, jose.ES256}

var handleRE = regexp.MustCompile(`^[a-z0-9](?:[a-z0-9-]{1,38})[a-z0-9]$`)

// Config wires a Service.
type Config struct {
	Store        Store
	Audit        audit.Store
	JTIs         dpop.ReplayStore // single-use request ids, shared by every replica
	Issuer       string
	ClaimCodeTTL time.Duration
	KeyGrace     time.Duration
	// UnclaimedGrace is how long an UNCLAIMED agent is kept after its claim code lapsed, the
	// time it has to ask for a new code, before PurgeUnclaimed deletes it. 0 keeps it forever.
	UnclaimedGrace time.Duration
	// CacheTTL is the longest an agent is served from memory (see cache.go); 0 reads the store
	// every time.
	CacheTTL time.Duration
	Now      func() time.Time
}

// Service is the agent registry.
type Service struct {
	cfg   Config
	cache *agentCache
}

// New returns the registry service.
func New(cfg Config) *Service {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	c := newAgentCache(cfg.CacheTTL)
	cfg.Store = invalidating{Store: cfg.Store, cache: c}
	return &Service{cfg: cfg, cache: c}
}

// Registered is the outcome of a registration: the claim code is shown to the agent once.
type Registered struct {
	Agent            Agent
	ClaimCode        string
	ClaimCodeExpires time.Time
}

type registrationClaims struct {
	Issuer      string          `json:"iss"`
	Audience    json.RawMessage `json:"aud"`
	IssuedAt    *int64          `json:"iat"`
	Expiry      *int64          `json:"exp"`
	JTI         string          `json:"jti"`
	Handle      string          `json:"handle"`
	Name        string          `json:"name"`
	Description string          `json:"description"`
}

// Register adds an agent from a compact JWS signed by its own key.
func (s *Service) Register(ctx context.Context, requestID, body string) (_ Registered, err error) {
	ev := audit.New(s.cfg.Now(), requestID, audit.ActionAgentRegister)
	ev.ActorType = audit.ActorAnonymous
	defer s.recordDenial(ctx, &ev, &err)

	jws, err := parseSigned(body, TypeRegistration)
	if err != nil {
		return Registered{}, err
	}
	did := jws.Header().KeyID
	pub, err := CanonicalKey(did)
	if err != nil {
		return Registered{}, err
	}
	ev.Target = did
	payload, err := jws.Verify(pub)
	if err != nil {
		return Registered{}, apperr.Wrap(err, apperr.Invalid, "signature", "the registration signature does not verify with the key in kid")
	}
	var c registrationClaims
	if err := json.Unmarshal(payload, &c); err != nil {
		return Registered{}, apperr.Wrap(err, apperr.Invalid, "malformed", "the registration payload is not a JSON object of claims")
	}
	if c.Issuer != did {
		return Registered{}, apperr.New(apperr.Invalid, "iss", "iss must equal the did:key in the header kid")
	}
	if err := s.checkFreshness(ctx, "reg", c.Audience, c.IssuedAt, c.Expiry, c.JTI); err != nil {
		return Registered{}, err
	}
	if !handleRE.MatchString(c.Handle) {
		return Registered{}, apperr.New(apperr.Invalid, "handle", "handle %q: use 3 to 40 lower-case letters, digits and dashes, starting and ending with a letter or digit", apperr.Clip(c.Handle, 60))
	}
	if len(c.Name) > 200 || len(c.Description) > 2000 {
		return Registered{}, apperr.New(apperr.Invalid, "too_long", "name is limited to 200 bytes and description to 2000")
	}
	jkt, err := dpop.Thumbprint(pub)
	if err != nil {
		return Registered{}, apperr.Wrap(err, apperr.Internal, "internal", "thumbprint")
	}
	now := s.cfg.Now().UTC()
	code := newClaimCode()
	a := Agent{
		ID: ids.New("agt"), Handle: c.Handle, Name: c.Name, Description: c.Description,
		Status: StatusUnclaimed, CreatedAt: now,
		Keys: []Key{{DID: did, JKT: jkt, CreatedAt: now}},
	}
	expires := now.Add(s.cfg.ClaimCodeTTL)
	ev.AgentID, ev.Target, ev.ActorType, ev.ActorID = a.ID, a.ID, audit.ActorAgent, a.ID
	switch err := s.cfg.Store.CreateAgent(ctx, a, ClaimCode{Hash: ids.Hash(code), ExpiresAt: expires}, ev); {
	case errors.Is(err, ErrDIDTaken):
		ev.AgentID, ev.Target, ev.ActorID, ev.ActorType = "", did, "", audit.ActorAnonymous
		return Registered{}, apperr.Wrap(err, apperr.Conflict, "did_taken", "this did:key is already registered; an agent registers once and rotates keys with mandate agent rotate-key")
	case errors.Is(err, ErrHandleTaken):
		ev.AgentID, ev.Target, ev.ActorID, ev.ActorType = "", did, "", audit.ActorAnonymous
		return Registered{}, apperr.Wrap(err, apperr.Conflict, "handle_taken", "handle %q is taken; choose another with --handle", c.Handle)
	case err != nil:
		return Registered{}, fmt.Errorf("register agent %s: %w", a.ID, err)
	}
	ev.Outcome = audit.OutcomeSuccess
	return Registered{Agent: a, ClaimCode: code, ClaimCodeExpires: expires}, nil
}

// parseSigned parses the compact JWS of an agent-signed request and checks that its typ is typ,
// so no other signed object can pass for it.
func parseSigned(body, typ string) (*jwsverify.JWS, error) {
	jws, err := jwsverify.Parse(strings.TrimSpace(body))
	if err != nil {
		return nil, apperr.Wrap(err, apperr.Invalid, "malformed", "the body must be a compact JWS signed by the agent's key with EdDSA, Ed25519 or ES256")
	}
	if got, _ := jws.Header().ExtraHeaders["typ"].(string); got != typ {
		return nil, apperr.New(apperr.Invalid, "typ", "the JWS header typ must be %s, so no other signed object can pass for this request", typ)
	}
	return jws, nil
}

// checkFreshness enforces the rules shared by every agent-signed request: audience is this
// server, iat not in the future, exp after now and at most five minutes after iat, and a jti
// never seen before.
func (s *Service) checkFreshness(ctx context.Context, kind string, aud json.RawMessage, iat, exp *int64, jti string) error {
	if !jwsverify.AudienceIncludes(aud, s.cfg.Issuer) {
		return apperr.New(apperr.Invalid, "aud", "aud must be this server's issuer, %s", s.cfg.Issuer)
	}
	if iat == nil || exp == nil {
		return apperr.New(apperr.Invalid, "exp", "iat and exp are required")
	}
	now := s.cfg.Now()
	issued, expires := time.Unix(*iat, 0), time.Unix(*exp, 0)
	switch {
	case issued.After(now.Add(clockSkew)):
		return apperr.New(apperr.Invalid, "iat", "iat is in the future: check the agent's clock")
	case !expires.After(now):
		return apperr.New(apperr.Invalid, "exp", "the request has expired: sign a new one")
	case expires.Sub(issued) > MaxRequestLifetime:
		return apperr.New(apperr.Invalid, "exp", "exp may be at most %v after iat", MaxRequestLifetime)
	case jti == "" || len(jti) > 256:
		return apperr.New(apperr.Invalid, "jti", "jti is required (at most 256 characters)")
	}
	if err := s.cfg.JTIs.Use(ctx, kind+":"+jti, expires); err != nil {
		if errors.Is(err, dpop.ErrReplay) {
			return apperr.Wrap(err, apperr.Invalid, "replay", "this signed request was already used (jti seen before): sign a new one")
		}
		return fmt.Errorf("record jti: %w", err)
	}
	return nil
}

// Claim makes the principal the owner of the agent whose claim code it presents.
func (s *Service) Claim(ctx context.Context, requestID string, by principal.User, code string) (_ Agent, err error) {
	ev := audit.New(s.cfg.Now(), requestID, audit.ActionAgentClaim)
	ev.ActorType, ev.ActorID, ev.PrincipalID = audit.ActorUser, by.ID, by.ID
	defer s.recordDenial(ctx, &ev, &err)
	a, err := s.cfg.Store.ClaimAgent(ctx, ids.Hash(normalizeClaimCode(code)), by.ID, s.cfg.Now().UTC(), ev)
	if errors.Is(err, ErrClaimCode) {
		return Agent{}, apperr.Wrap(err, apperr.Invalid, "claim_code", "the claim code is invalid, expired or already used: codes last %v and work once; the agent gets a new one with mandate agent claim-code", s.cfg.ClaimCodeTTL)
	}
	if err != nil {
		return Agent{}, fmt.Errorf("claim agent: %w", err)
	}
	ev.Outcome = audit.OutcomeSuccess
	return a, nil
}

// Get returns an agent the principal may see: its owner or an admin.
func (s *Service) Get(ctx context.Context, by principal.User, ref string) (Agent, error) {
	a, err := s.cfg.Store.GetAgent(ctx, ref)
	if errors.Is(err, ErrNotFound) {
		return Agent{}, apperr.Wrap(err, apperr.NotFound, "not_found", "no agent %q: list agents with mandate agents list", apperr.Clip(ref, 80))
	}
	if err != nil {
		return Agent{}, fmt.Errorf("get agent %s: %w", ref, err)
	}
	if !by.Admin && a.OwnerID != by.ID {
		// Same answer as a missing agent, so ids cannot be probed.
		return Agent{}, apperr.New(apperr.NotFound, "not_found", "no agent %q: list agents with mandate agents list", apperr.Clip(ref, 80))
	}
	return a, nil
}

// List returns agents: a non-admin sees only its own.
func (s *Service) List(ctx context.Context, by principal.User, f Filter) ([]Agent, error) {
	if !by.Admin {
		if f.OwnerID != "" && f.OwnerID != by.ID {
			return nil, apperr.New(apperr.Forbidden, "forbidden", "only an admin can list another principal's agents")
		}
		f.OwnerID = by.ID
	}
	switch f.Status {
	case "", StatusUnclaimed, StatusClaimed, StatusRevoked:
	default:
		return nil, apperr.New(apperr.Invalid, "status", "status %q: want UNCLAIMED, CLAIMED or REVOKED", apperr.Clip(string(f.Status), 20))
	}
	return s.cfg.Store.ListAgents(ctx, f)
}

// Revoke permanently revokes an agent: its owner or an admin may. Revoking twice is not an error.
func (s *Service) Revoke(ctx context.Context, requestID string, by principal.User, ref string) (_ Agent, err error) {
	ev := audit.New(s.cfg.Now(), requestID, audit.ActionAgentRevoke)
	ev.ActorType, ev.ActorID, ev.PrincipalID, ev.Target = audit.ActorUser, by.ID, by.ID, ref
	defer s.recordDenial(ctx, &ev, &err)
	a, err := s.Get(ctx, by, ref)
	if err != nil {
		return Agent{}, err
	}
	ev.AgentID, ev.Target = a.ID, a.ID
	if a.Status == StatusRevoked {
		ev.Outcome = audit.OutcomeSuccess // nothing changes; no event is written
		return a, nil
	}
	a, err = s.cfg.Store.UpdateAgent(ctx, a.ID, func(a *Agent) error {
		a.Status = StatusRevoked
		a.RevokedAt = s.cfg.Now().UTC()
		return nil
	}, ev)
	if err != nil {
		return Agent{}, fmt.Errorf("revoke agent %s: %w", ev.AgentID, err)
	}
	ev.Outcome = audit.OutcomeSuccess
	return a, nil
}

// ActiveKeys returns an agent, whatever its status, and its keys usable at now (the current key,
// and rotated-out keys within their grace period) with their public keys. agentID must be an
// agent id: a handle names an agent for people, never for authentication.
func (s *Service) ActiveKeys(ctx context.Context, agentID string) (Agent, map[string]crypto.PublicKey, error) {
	if !strings.HasPrefix(agentID, "agt_") {
		return Agent{}, nil, apperr.New(apperr.Unauthenticated, "unknown_agent", "%q is not an agent id (agt_…)", apperr.Clip(agentID, 80))
	}
	e, gen := s.cache.get(agentID)
	if e == nil {
		a, err := s.cfg.Store.GetAgent(ctx, agentID)
		if errors.Is(err, ErrNotFound) {
			return Agent{}, nil, apperr.Wrap(err, apperr.Unauthenticated, "unknown_agent", "no agent %q is registered", apperr.Clip(agentID, 80))
		}
		if err != nil {
			return Agent{}, nil, fmt.Errorf("get agent %s: %w", apperr.Clip(agentID, 80), err)
		}
		if e, err = entryOf(a); err != nil {
			return Agent{}, nil, fmt.Errorf("agent %s: %w", a.ID, err)
		}
		s.cache.put(agentID, e, gen)
	}
	now := s.cfg.Now()
	keys := make(map[string]crypto.PublicKey, len(e.keys))
	for did, k := range e.keys {
		if !k.expiresAt.IsZero() && !now.Before(k.expiresAt) {
			continue
		}
		keys[did] = k.pub
	}
	a := e.agent
	a.Keys = slices.Clone(a.Keys)
	return a, keys, nil
}

// recordDenial appends ev as a denial when the operation failed before the store wrote it.
func (s *Service) recordDenial(ctx context.Context, ev *audit.Event, err *error) {
	if *err == nil || ev.Outcome == audit.OutcomeSuccess {
		return
	}
	if errors.Is(*err, apperr.ErrUnavailable) || errors.Is(*err, audit.ErrUnavailable) {
		return // the database did not answer: no decision to record, and no database to record it in
	}
	ev.Reason = apperr.ReasonOf(*err)
	if de, ok := apperr.As(*err); ok {
		ev.Detail = de.Msg
	}
	if aerr := s.cfg.Audit.AppendEvent(context.WithoutCancel(ctx), *ev); aerr != nil {
		*err = errors.Join(*err, fmt.Errorf("record audit event: %w", aerr))
	}
}

// Claim codes are typed by people: 16 characters from an alphabet without look-alikes
// (80 bits), shown in groups of four.
const claimAlphabet = "ABCDEFGHJKMNPQRSTVWXYZ0123456789"

func newClaimCode() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic("crypto/rand: " + err.Error())
	}
	var sb strings.Builder
	for i, x := range b {
		if i > 0 && i%4 == 0 {
			sb.WriteByte('-')
		}
		sb.WriteByte(claimAlphabet[int(x)%len(claimAlphabet)])
	}
	return sb.String()
}

func normalizeClaimCode(code string) string {
	code = strings.ToUpper(strings.Map(func(r rune) rune {
		if r == '-' || r == ' ' {
			return -1
		}
		return r
	}, code))
	var sb strings.Builder
	for i, r := range code {
		if i > 0 && i%4 == 0 {
			sb.WriteByte('-')
		}
		sb.WriteRune(r)
	}
	return sb.String()
}

// RevokeKey ends one of an agent's keys at once (its owner or an admin may): tokens bound to it
// stop working and it can no longer authenticate. The agent's last usable key cannot be revoked:
// rotate first, or revoke the agent.
func (s *Service) RevokeKey(ctx context.Context, requestID string, by principal.User, ref, did string) (_ Agent, err error) {
	ev := audit.New(s.cfg.Now(), requestID, audit.ActionAgentRevokeKey)
	ev.ActorType, ev.ActorID, ev.PrincipalID, ev.Target = audit.ActorUser, by.ID, by.ID, did
	defer s.recordDenial(ctx, &ev, &err)
	a, err := s.Get(ctx, by, ref)
	if err != nil {
		return Agent{}, err
	}
	ev.AgentID = a.ID
	now := s.cfg.Now()
	usable, found := 0, false
	for _, k := range a.Keys {
		live := k.ExpiresAt.IsZero() || now.Before(k.ExpiresAt)
		if live {
			usable++
		}
		found = found || (k.DID == did && live)
	}
	switch {
	case !found:
		return Agent{}, apperr.New(apperr.NotFound, "not_found", "agent @%s has no usable key %s", a.Handle, apperr.Clip(did, 80))
	case usable == 1:
		return Agent{}, apperr.New(apperr.Conflict, "last_key", "%s is the last usable key of @%s: rotate to a new key first (mandate agent rotate-key), or revoke the agent", apperr.Clip(did, 80), a.Handle)
	}
	a, err = s.cfg.Store.RevokeKey(ctx, a.ID, did, now.UTC(), ev)
	if err != nil {
		return Agent{}, fmt.Errorf("revoke key of %s: %w", ev.AgentID, err)
	}
	ev.Outcome = audit.OutcomeSuccess
	return a, nil
}

// CanonicalKey parses a did:key that must be written in its one canonical form (no fragment),
// so the same key can never be registered twice under two spellings.
func CanonicalKey(did string) (crypto.PublicKey, error) {
	pub, err := didkey.Parse(did)
	if err != nil {
		return nil, apperr.Wrap(err, apperr.Invalid, "kid", "kid must be a did:key (Ed25519 or P-256): %v", err)
	}
	if canon, err := didkey.Format(pub); err != nil || canon != did {
		return nil, apperr.New(apperr.Invalid, "kid", "kid must be the did:key in its canonical form, without a fragment")
	}
	return pub, nil
}
