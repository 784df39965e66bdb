package api

import (
	"net/http"
	"strings"
	"time"

	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/httpapi"
	"github.com/mandate-dev/mandate/internal/principal"
)

// UserJSON is a user as the API shows it.
type UserJSON struct {
	ID        string               `json:"id"`
	Name      string               `json:"name"`
	Admin     bool                 `json:"admin"`
	CreatedAt time.Time            `json:"created_at"`
	Grantable *principal.Grantable `json:"grantable,omitempty"`
	// ServiceAccount is set when the caller is a service account (a federated token).
	ServiceAccount bool `json:"service_account,omitempty"`
}

func userJSON(u principal.User) UserJSON {
	return UserJSON{ID: u.ID, Name: u.Name, Admin: u.Admin, CreatedAt: u.CreatedAt.UTC(), Grantable: u.Grantable, ServiceAccount: u.IsServiceAccount()}
}

// TokenJSON is an API token's metadata; Token (the secret) is set only in the create response.
type TokenJSON struct {
	ID        string     `json:"id"`
	UserID    string     `json:"user_id"`
	Name      string     `json:"name"`
	CreatedAt time.Time  `json:"created_at"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
	Bootstrap bool       `json:"bootstrap,omitempty"` // works only at POST /v1/login
	Token     string     `json:"token,omitempty"`
}

func tokenJSON(t principal.APIToken) TokenJSON {
	return TokenJSON{ID: t.ID, UserID: t.UserID, Name: t.Name, CreatedAt: t.CreatedAt.UTC(),
		ExpiresAt: timePtr(t.ExpiresAt), RevokedAt: timePtr(t.RevokedAt), Bootstrap: t.Bootstrap}
}

func (a *API) whoami(w http.ResponseWriter, r *http.Request, u principal.User) error {
	httpapi.WriteJSON(w, http.StatusOK, userJSON(u))
	return nil
}

// LoginJSON answers POST /v1/login: the user, and the new API token when the bootstrap token was
// exchanged for it (its secret shown this once).
type LoginJSON struct {
	User  UserJSON   `json:"user"`
	Token *TokenJSON `json:"token,omitempty"`
}

// login is mandate login's check of a token. An API token (or a service account's token) is
// answered with its user, as whoami would. The bootstrap token, which works nowhere else, is
// exchanged for a new API token named by the body's name, and is spent.
func (a *API) login(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		Name string `json:"name"`
	}
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	scheme, secret, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	if scheme != "Bearer" || !strings.HasPrefix(secret, principal.TokenPrefix+"_") {
		return a.withUser(func(w http.ResponseWriter, r *http.Request, u principal.User) error {
			httpapi.WriteJSON(w, http.StatusOK, LoginJSON{User: userJSON(u)})
			return nil
		})(w, r)
	}
	u, next, nextSecret, err := a.cfg.Principals.Login(r.Context(), requestID(r.Context()), secret, req.Name)
	if err != nil {
		return invalidToken(err)
	}
	if next == nil {
		httpapi.WriteJSON(w, http.StatusOK, LoginJSON{User: userJSON(u)})
		return nil
	}
	tok := tokenJSON(*next)
	tok.Token = nextSecret
	w.Header().Set("Cache-Control", "no-store")
	httpapi.WriteJSON(w, http.StatusCreated, LoginJSON{User: userJSON(u), Token: &tok})
	return nil
}

func (a *API) listUsers(w http.ResponseWriter, r *http.Request, u principal.User) error {
	list, err := a.cfg.Principals.ListUsers(r.Context(), u)
	if err != nil {
		return err
	}
	out := make([]UserJSON, 0, len(list))
	for _, x := range list {
		out = append(out, userJSON(x))
	}
	httpapi.WriteJSON(w, http.StatusOK, map[string]any{"users": out})
	return nil
}

func (a *API) createUser(w http.ResponseWriter, r *http.Request, u principal.User) error {
	var req struct {
		Name      string               `json:"name"`
		Admin     bool                 `json:"admin"`
		Grantable *principal.Grantable `json:"grantable"`
	}
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	nu, err := a.cfg.Principals.CreateUser(r.Context(), requestID(r.Context()), u, req.Name, req.Admin, req.Grantable)
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusCreated, userJSON(nu))
	return nil
}

func (a *API) createToken(w http.ResponseWriter, r *http.Request, u principal.User) error {
	var req struct {
		User string `json:"user"`
		Name string `json:"name"`
		TTL  string `json:"ttl"`
	}
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	ttl, err := optDuration("ttl", req.TTL)
	if err != nil {
		return err
	}
	t, secret, err := a.cfg.Principals.CreateToken(r.Context(), requestID(r.Context()), u, req.User, req.Name, ttl)
	if err != nil {
		return err
	}
	out := tokenJSON(t)
	out.Token = secret
	w.Header().Set("Cache-Control", "no-store")
	httpapi.WriteJSON(w, http.StatusCreated, out)
	return nil
}

func (a *API) listTokens(w http.ResponseWriter, r *http.Request, u principal.User) error {
	list, err := a.cfg.Principals.ListTokens(r.Context(), u, r.URL.Query().Get("user"))
	if err != nil {
		return err
	}
	out := make([]TokenJSON, 0, len(list))
	for _, t := range list {
		out = append(out, tokenJSON(t))
	}
	httpapi.WriteJSON(w, http.StatusOK, map[string]any{"tokens": out})
	return nil
}

func (a *API) revokeToken(w http.ResponseWriter, r *http.Request, u principal.User) error {
	if err := a.cfg.Principals.RevokeToken(r.Context(), requestID(r.Context()), u, r.PathValue("id")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// SigningKeyJSON is a server signing key's public metadata.
type SigningKeyJSON struct {
	KID          string     `json:"kid"`
	Alg          string     `json:"alg"`
	CreatedAt    time.Time  `json:"created_at"`
	ActiveAt     time.Time  `json:"active_at"`
	PublishUntil *time.Time `json:"publish_until,omitempty"`
}

func (a *API) listKeys(w http.ResponseWriter, r *http.Request, u principal.User) error {
	if !u.Admin {
		return apperr.New(apperr.Forbidden, "forbidden", "only an admin can list signing keys")
	}
	keys, err := a.cfg.Keys.List(r.Context())
	if err != nil {
		return err
	}
	out := make([]SigningKeyJSON, 0, len(keys))
	for _, k := range keys {
		out = append(out, SigningKeyJSON{KID: k.KID, Alg: k.Alg, CreatedAt: k.CreatedAt.UTC(), ActiveAt: k.ActiveAt.UTC(), PublishUntil: timePtr(k.PublishUntil)})
	}
	httpapi.WriteJSON(w, http.StatusOK, map[string]any{"keys": out})
	return nil
}

func (a *API) rotateKeys(w http.ResponseWriter, r *http.Request, u principal.User) error {
	if !u.Admin {
		return apperr.New(apperr.Forbidden, "forbidden", "only an admin can rotate signing keys")
	}
	ev := audit.New(a.cfg.Now(), requestID(r.Context()), audit.ActionKeyRotate)
	ev.ActorType, ev.ActorID, ev.PrincipalID = audit.ActorUser, u.ID, u.ID
	k, err := a.cfg.Keys.Rotate(r.Context(), ev)
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusCreated, SigningKeyJSON{KID: k.KID, Alg: k.Alg, CreatedAt: k.CreatedAt.UTC(), ActiveAt: k.ActiveAt.UTC()})
	return nil
}
