package api

import (
	"net/http"
	"time"

	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/httpapi"
	"github.com/mandate-dev/mandate/internal/principal"
	"github.com/mandate-dev/mandate/internal/registry"
	"github.com/mandate-dev/mandate/verify"
)

// AgentJSON is an agent as the API shows it.
type AgentJSON struct {
	AgentID     string     `json:"agent_id"`
	Handle      string     `json:"handle"`
	Name        string     `json:"name,omitempty"`
	Description string     `json:"description,omitempty"`
	DID         string     `json:"did"`
	Status      string     `json:"status"`
	OwnerID     string     `json:"owner_id,omitempty"`
	CreatedAt   time.Time  `json:"created_at"`
	ClaimedAt   *time.Time `json:"claimed_at,omitempty"`
	RevokedAt   *time.Time `json:"revoked_at,omitempty"`
	Keys        []KeyJSON  `json:"keys"`
}

// KeyJSON is one of an agent's keys.
type KeyJSON struct {
	DID       string     `json:"did"`
	JKT       string     `json:"jkt"`
	CreatedAt time.Time  `json:"created_at"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
}

func agentJSON(a registry.Agent) AgentJSON {
	out := AgentJSON{AgentID: a.ID, Handle: a.Handle, Name: a.Name, Description: a.Description,
		Status: string(a.Status), OwnerID: a.OwnerID, CreatedAt: a.CreatedAt.UTC(),
		ClaimedAt: timePtr(a.ClaimedAt), RevokedAt: timePtr(a.RevokedAt), Keys: []KeyJSON{}}
	for _, k := range a.Keys {
		out.Keys = append(out.Keys, KeyJSON{DID: k.DID, JKT: k.JKT, CreatedAt: k.CreatedAt.UTC(), ExpiresAt: timePtr(k.ExpiresAt)})
	}
	if len(a.Keys) > 0 {
		out.DID = a.Keys[0].DID
	}
	return out
}

// RegisteredJSON is the response to a registration: the claim code is shown this once.
type RegisteredJSON struct {
	AgentID            string    `json:"agent_id"`
	Handle             string    `json:"handle"`
	DID                string    `json:"did"`
	Status             string    `json:"status"`
	ClaimCode          string    `json:"claim_code"`
	ClaimCodeExpiresAt time.Time `json:"claim_code_expires_at"`
}

func (a *API) registerAgent(w http.ResponseWriter, r *http.Request) error {
	body, err := readBody(w, r, 16<<10)
	if err != nil {
		return err
	}
	reg, err := a.cfg.Registry.Register(r.Context(), requestID(r.Context()), body)
	if err != nil {
		return err
	}
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Location", a.cfg.Issuer+"/v1/agents/"+reg.Agent.ID)
	httpapi.WriteJSON(w, http.StatusCreated, registeredJSON(reg))
	return nil
}

// newClaimCode gives an UNCLAIMED agent a new claim code, asked for with a request signed by
// its current key; the answer is shaped like a registration's.
func (a *API) newClaimCode(w http.ResponseWriter, r *http.Request) error {
	body, err := readBody(w, r, 16<<10)
	if err != nil {
		return err
	}
	reg, err := a.cfg.Registry.NewClaimCode(r.Context(), requestID(r.Context()), r.PathValue("id"), body)
	if err != nil {
		return err
	}
	w.Header().Set("Cache-Control", "no-store")
	httpapi.WriteJSON(w, http.StatusOK, registeredJSON(reg))
	return nil
}

func registeredJSON(reg registry.Registered) RegisteredJSON {
	return RegisteredJSON{
		AgentID: reg.Agent.ID, Handle: reg.Agent.Handle, DID: reg.Agent.Keys[0].DID,
		Status: string(reg.Agent.Status), ClaimCode: reg.ClaimCode, ClaimCodeExpiresAt: reg.ClaimCodeExpires.UTC(),
	}
}

func (a *API) claimAgent(w http.ResponseWriter, r *http.Request, u principal.User) error {
	var req struct {
		ClaimCode string `json:"claim_code"`
	}
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	if req.ClaimCode == "" {
		return apperr.New(apperr.Invalid, "claim_code", "claim_code is required")
	}
	ag, err := a.cfg.Registry.Claim(r.Context(), requestID(r.Context()), u, req.ClaimCode)
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, agentJSON(ag))
	return nil
}

func (a *API) listAgents(w http.ResponseWriter, r *http.Request, u principal.User) error {
	q := r.URL.Query()
	list, err := a.cfg.Registry.List(r.Context(), u, registry.Filter{OwnerID: q.Get("owner"), Status: registry.Status(q.Get("status"))})
	if err != nil {
		return err
	}
	out := make([]AgentJSON, 0, len(list))
	for _, ag := range list {
		out = append(out, agentJSON(ag))
	}
	httpapi.WriteJSON(w, http.StatusOK, map[string]any{"agents": out})
	return nil
}

func (a *API) getAgent(w http.ResponseWriter, r *http.Request, u principal.User) error {
	ag, err := a.cfg.Registry.Get(r.Context(), u, r.PathValue("ref"))
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, agentJSON(ag))
	return nil
}

func (a *API) revokeAgent(w http.ResponseWriter, r *http.Request, u principal.User) error {
	ag, err := a.cfg.Registry.Revoke(r.Context(), requestID(r.Context()), u, r.PathValue("ref"))
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, agentJSON(ag))
	return nil
}

func (a *API) revokeAgentKey(w http.ResponseWriter, r *http.Request, u principal.User) error {
	var req struct {
		DID string `json:"did"`
	}
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	ag, err := a.cfg.Registry.RevokeKey(r.Context(), requestID(r.Context()), u, r.PathValue("ref"), req.DID)
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, agentJSON(ag))
	return nil
}

func (a *API) rotateAgentKey(w http.ResponseWriter, r *http.Request) error {
	body, err := readBody(w, r, 32<<10)
	if err != nil {
		return err
	}
	ag, err := a.cfg.Registry.RotateKey(r.Context(), requestID(r.Context()), r.PathValue("id"), body)
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, agentJSON(ag))
	return nil
}

// agentWhoami is the smallest resource protected by the verify SDK: it answers with the caller
// the middleware typed, so an agent (or a test) can check its token end to end.
func (a *API) agentWhoami(w http.ResponseWriter, r *http.Request) error {
	c, ok := verify.CallerFrom(r.Context())
	if !ok {
		return apperr.New(apperr.Internal, "internal", "no caller in context")
	}
	w.Header().Set("Cache-Control", "no-store")
	httpapi.WriteJSON(w, http.StatusOK, map[string]any{
		"sub": c.Subject, "client_id": c.ClientID, "agent_id": c.AgentID, "handle": c.Handle, "did": c.DID,
		"scope": c.Scopes, "aud": c.Audience, "jti": c.JTI, "jkt": c.JKT, "exp": c.ExpiresAt.Unix(),
	})
	return nil
}

// revocationPage is how many log entries one feed answer carries at most.
const revocationPage = 1000

// RevocationJSON is one entry of the revocation feed.
type RevocationJSON struct {
	Kind string `json:"kind"` // agent, grant, task or token
	ID   string `json:"id"`
	Exp  int64  `json:"exp"` // unix seconds after which the entry no longer matters; 0 = never
}

// revocations is the cursor-based revocation feed verifiers follow: the log entries after the
// cursor, oldest first, one page at a time ("more" says another page follows); or, asked with
// Accept: text/event-stream, a stream of them (see streamRevocations).
func (a *API) revocations(w http.ResponseWriter, r *http.Request) error {
	var after int64
	if vs := r.URL.Query()["after"]; len(vs) > 0 {
		n, ok := parseCursor(vs)
		if !ok {
			return apperr.New(apperr.Invalid, "cursor", "after must be one cursor returned by this feed (a whole number)")
		}
		after = n
	}
	if wantsStream(r) {
		return a.streamRevocations(w, r, after)
	}
	list, err := a.cfg.Tokens.ListRevocations(r.Context(), after, a.cfg.Now(), revocationPage)
	if err != nil {
		return err
	}
	out := struct {
		Revocations []RevocationJSON `json:"revocations"`
		Cursor      int64            `json:"cursor"`
		More        bool             `json:"more"`
	}{Revocations: make([]RevocationJSON, 0, len(list)), Cursor: after, More: len(list) == revocationPage}
	for _, e := range list {
		var exp int64
		if !e.ExpiresAt.IsZero() {
			exp = e.ExpiresAt.Unix()
		}
		out.Revocations = append(out.Revocations, RevocationJSON{Kind: e.Kind, ID: e.ID, Exp: exp})
		out.Cursor = e.Seq
	}
	w.Header().Set("Cache-Control", "no-store")
	httpapi.WriteJSON(w, http.StatusOK, out)
	return nil
}
