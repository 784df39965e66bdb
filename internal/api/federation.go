package api

import (
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/federation"
	"github.com/mandate-dev/mandate/internal/httpapi"
	"github.com/mandate-dev/mandate/internal/principal"
)

// ServiceAccountJSON is a service account as the API shows it.
type ServiceAccountJSON struct {
	ID          string    `json:"id"`
	Name        string    `json:"name"`
	OwnerID     string    `json:"owner_id"`
	Description string    `json:"description,omitempty"`
	Disabled    bool      `json:"disabled"`
	CreatedAt   time.Time `json:"created_at"`
}

func serviceAccountJSON(a principal.ServiceAccount) ServiceAccountJSON {
	return ServiceAccountJSON{ID: a.ID, Name: a.Name, OwnerID: a.OwnerID, Description: a.Description, Disabled: a.Disabled, CreatedAt: a.CreatedAt.UTC()}
}

func (a *API) createServiceAccount(w http.ResponseWriter, r *http.Request, u principal.User) error {
	var req struct {
		Name        string `json:"name"`
		Description string `json:"description"`
	}
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	sa, err := a.cfg.Principals.CreateServiceAccount(r.Context(), requestID(r.Context()), u, req.Name, req.Description)
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusCreated, serviceAccountJSON(sa))
	return nil
}

func (a *API) listServiceAccounts(w http.ResponseWriter, r *http.Request, u principal.User) error {
	list, err := a.cfg.Principals.ListServiceAccounts(r.Context(), u)
	if err != nil {
		return err
	}
	out := make([]ServiceAccountJSON, 0, len(list))
	for _, sa := range list {
		out = append(out, serviceAccountJSON(sa))
	}
	httpapi.WriteJSON(w, http.StatusOK, map[string]any{"service_accounts": out})
	return nil
}

func (a *API) getServiceAccount(w http.ResponseWriter, r *http.Request, u principal.User) error {
	sa, err := a.cfg.Principals.ServiceAccount(r.Context(), u, r.PathValue("ref"))
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, serviceAccountJSON(sa))
	return nil
}

func (a *API) setServiceAccountDisabled(disabled bool) userHandler {
	return func(w http.ResponseWriter, r *http.Request, u principal.User) error {
		sa, err := a.cfg.Principals.SetServiceAccountDisabled(r.Context(), requestID(r.Context()), u, r.PathValue("ref"), disabled)
		if err != nil {
			return err
		}
		httpapi.WriteJSON(w, http.StatusOK, serviceAccountJSON(sa))
		return nil
	}
}

// IssuerJSON is a trusted issuer as the API shows it.
type IssuerJSON struct {
	Issuer               string          `json:"issuer"`
	JWKS                 json.RawMessage `json:"jwks,omitempty"` // pinned keys; absent = discovery
	MaxAssertionLifetime string          `json:"max_assertion_lifetime"`
	RequireJTI           bool            `json:"require_jti"`
	Shared               bool            `json:"shared"`
	CreatedAt            time.Time       `json:"created_at"`
}

func issuerJSON(is federation.Issuer) IssuerJSON {
	return IssuerJSON{Issuer: is.URL, JWKS: json.RawMessage(is.JWKS), MaxAssertionLifetime: is.MaxAssertionLifetime.String(),
		RequireJTI: is.RequireJTI, Shared: is.Shared, CreatedAt: is.CreatedAt.UTC()}
}

func (a *API) addIssuer(w http.ResponseWriter, r *http.Request, u principal.User) error {
	var req IssuerJSON
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	is := federation.Issuer{URL: req.Issuer, RequireJTI: req.RequireJTI, Shared: req.Shared}
	if len(req.JWKS) > 0 {
		is.JWKS = req.JWKS
	}
	var err error
	if is.MaxAssertionLifetime, err = optDuration("max_assertion_lifetime", req.MaxAssertionLifetime); err != nil {
		return err
	}
	is, err = a.cfg.Federation.AddIssuer(r.Context(), requestID(r.Context()), u, is)
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusCreated, issuerJSON(is))
	return nil
}

func (a *API) listIssuers(w http.ResponseWriter, r *http.Request, u principal.User) error {
	list, err := a.cfg.Federation.ListIssuers(r.Context(), u)
	if err != nil {
		return err
	}
	out := make([]IssuerJSON, 0, len(list))
	for _, is := range list {
		out = append(out, issuerJSON(is))
	}
	httpapi.WriteJSON(w, http.StatusOK, map[string]any{"issuers": out})
	return nil
}

func (a *API) removeIssuer(w http.ResponseWriter, r *http.Request, u principal.User) error {
	iss := r.URL.Query().Get("issuer")
	if iss == "" {
		return apperr.New(apperr.Invalid, "issuer", "name the issuer to remove: ?issuer=URL")
	}
	if err := a.cfg.Federation.RemoveIssuer(r.Context(), requestID(r.Context()), u, iss); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// RuleJSON is a federation rule as the API shows it.
type RuleJSON struct {
	ID             string            `json:"id,omitempty"`
	Issuer         string            `json:"issuer"`
	Audience       string            `json:"audience"`
	SubjectPrefix  string            `json:"subject_prefix,omitempty"`
	Claims         map[string]string `json:"claims,omitempty"`
	Condition      string            `json:"condition,omitempty"`
	ServiceAccount string            `json:"service_account"`
	Scope          string            `json:"scope"`
	Resources      []string          `json:"resources,omitempty"`
	TokenTTL       string            `json:"token_ttl,omitempty"`
	RequireDPoP    bool              `json:"require_dpop"`
	Disabled       bool              `json:"disabled"`
	CreatedAt      *time.Time        `json:"created_at,omitempty"`
}

func ruleJSON(rl federation.Rule) RuleJSON {
	return RuleJSON{ID: rl.ID, Issuer: rl.Issuer, Audience: rl.Audience, SubjectPrefix: rl.SubjectPrefix, Claims: rl.Claims,
		Condition: rl.Condition, ServiceAccount: rl.ServiceAccount, Scope: strings.Join(rl.Scopes, " "), Resources: rl.Resources,
		TokenTTL: rl.TokenTTL.String(), RequireDPoP: rl.RequireDPoP, Disabled: rl.Disabled, CreatedAt: timePtr(rl.CreatedAt)}
}

func (a *API) addRule(w http.ResponseWriter, r *http.Request, u principal.User) error {
	var req RuleJSON
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	rl := federation.Rule{Issuer: req.Issuer, Audience: req.Audience, SubjectPrefix: req.SubjectPrefix, Claims: req.Claims,
		Condition: req.Condition, ServiceAccount: req.ServiceAccount, Scopes: strings.Fields(req.Scope), Resources: req.Resources,
		RequireDPoP: req.RequireDPoP}
	var err error
	if rl.TokenTTL, err = optDuration("token_ttl", req.TokenTTL); err != nil {
		return err
	}
	rl, err = a.cfg.Federation.AddRule(r.Context(), requestID(r.Context()), u, rl)
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusCreated, ruleJSON(rl))
	return nil
}

func (a *API) listRules(w http.ResponseWriter, r *http.Request, u principal.User) error {
	list, err := a.cfg.Federation.ListRules(r.Context(), u, r.URL.Query().Get("issuer"))
	if err != nil {
		return err
	}
	out := make([]RuleJSON, 0, len(list))
	for _, rl := range list {
		out = append(out, ruleJSON(rl))
	}
	httpapi.WriteJSON(w, http.StatusOK, map[string]any{"rules": out})
	return nil
}

func (a *API) getRule(w http.ResponseWriter, r *http.Request, u principal.User) error {
	rl, err := a.cfg.Federation.GetRule(r.Context(), u, r.PathValue("id"))
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, ruleJSON(rl))
	return nil
}

func (a *API) setRuleDisabled(disabled bool) userHandler {
	return func(w http.ResponseWriter, r *http.Request, u principal.User) error {
		rl, err := a.cfg.Federation.SetRuleDisabled(r.Context(), requestID(r.Context()), u, r.PathValue("id"), disabled)
		if err != nil {
			return err
		}
		httpapi.WriteJSON(w, http.StatusOK, ruleJSON(rl))
		return nil
	}
}

// testRule is the dry run behind mandate federation test: every check of one rule against an
// assertion, pass or fail. Nothing is issued or used up.
func (a *API) testRule(w http.ResponseWriter, r *http.Request, u principal.User) error {
	var req struct {
		Assertion string `json:"assertion"`
	}
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	rep, err := a.cfg.Federation.Test(r.Context(), u, r.PathValue("id"), strings.TrimSpace(req.Assertion))
	if err != nil {
		return err
	}
	type check struct {
		Name   string `json:"name"`
		OK     bool   `json:"ok"`
		Detail string `json:"detail,omitempty"`
	}
	checks := make([]check, 0, len(rep.Checks))
	for _, c := range rep.Checks {
		checks = append(checks, check{c.Name, c.OK, c.Detail})
	}
	httpapi.WriteJSON(w, http.StatusOK, map[string]any{"rule": ruleJSON(rep.Rule), "ok": rep.OK, "checks": checks, "claims": rep.Claims})
	return nil
}
