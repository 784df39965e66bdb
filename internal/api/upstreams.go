package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"time"

	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/httpapi"
	"github.com/mandate-dev/mandate/internal/principal"
	"github.com/mandate-dev/mandate/internal/vault"
)

// UpstreamJSON is an upstream as the API shows it: never a secret, only which kinds are set.
type UpstreamJSON struct {
	Name         string        `json:"name"`
	BaseURL      string        `json:"base_url"`
	Auth         string        `json:"auth"`
	Param        string        `json:"param,omitempty"`
	OAuth2       *vault.OAuth2 `json:"oauth2,omitempty"`
	AllowPrivate bool          `json:"allow_private"`
	// IdentityAssertion: the proxy sends the upstream a signed Txn-Token on every call.
	IdentityAssertion bool          `json:"identity_assertion"`
	Routes            []vault.Route `json:"routes"`
	Resource          string        `json:"resource"`    // the RFC 8707 resource URI grants name: {issuer}/proxy/{name}
	HasSecrets        []string      `json:"has_secrets"` // kinds of secret stored, never their values
	SecretKinds       []string      `json:"secret_kinds"`
	CreatedAt         time.Time     `json:"created_at"`
	UpdatedAt         time.Time     `json:"updated_at"`
}

func (a *API) upstreamJSON(u vault.Upstream) UpstreamJSON {
	routes, has := u.Routes, u.Secrets
	if routes == nil {
		routes = []vault.Route{}
	}
	if has == nil {
		has = []string{}
	}
	return UpstreamJSON{Name: u.Name, BaseURL: u.BaseURL, Auth: string(u.Auth), Param: u.Param, OAuth2: u.OAuth2,
		AllowPrivate: u.AllowPrivate, IdentityAssertion: u.IdentityAssertion, Routes: routes, Resource: a.cfg.Issuer + "/proxy/" + u.Name, HasSecrets: has,
		SecretKinds: vault.SecretKinds(u.Auth), CreatedAt: u.CreatedAt.UTC(), UpdatedAt: u.UpdatedAt.UTC()}
}

// UpstreamSpecJSON is the body of POST /v1/upstreams.
type UpstreamSpecJSON struct {
	Name         string        `json:"name"`
	BaseURL      string        `json:"base_url"`
	Auth         string        `json:"auth"`
	Param        string        `json:"param,omitempty"`
	OAuth2       *vault.OAuth2 `json:"oauth2,omitempty"`
	AllowPrivate bool          `json:"allow_private,omitempty"`
	// IdentityAssertion asks the proxy to send a signed Txn-Token on every call (docs/proxy.md).
	IdentityAssertion bool          `json:"identity_assertion,omitempty"`
	Routes            []vault.Route `json:"routes,omitempty"`
}

// RoutesJSON is the body of PUT /v1/upstreams/{name}/routes.
type RoutesJSON struct {
	Routes []vault.Route `json:"routes"`
}

func (a *API) createUpstream(w http.ResponseWriter, r *http.Request, u principal.User) error {
	var req UpstreamSpecJSON
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	up, err := a.cfg.Vault.AddUpstream(r.Context(), requestID(r.Context()), u, vault.Upstream{Name: req.Name, BaseURL: req.BaseURL,
		Auth: vault.AuthKind(req.Auth), Param: req.Param, OAuth2: req.OAuth2, AllowPrivate: req.AllowPrivate,
		IdentityAssertion: req.IdentityAssertion, Routes: req.Routes})
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusCreated, a.upstreamJSON(up))
	return nil
}

func (a *API) listUpstreams(w http.ResponseWriter, r *http.Request, _ principal.User) error {
	list, err := a.cfg.Vault.ListUpstreams(r.Context())
	if err != nil {
		return err
	}
	out := make([]UpstreamJSON, 0, len(list))
	for _, u := range list {
		out = append(out, a.upstreamJSON(u))
	}
	httpapi.WriteJSON(w, http.StatusOK, map[string]any{"upstreams": out})
	return nil
}

func (a *API) getUpstream(w http.ResponseWriter, r *http.Request, _ principal.User) error {
	up, err := a.cfg.Vault.GetUpstream(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, a.upstreamJSON(up))
	return nil
}

func (a *API) updateUpstreamRoutes(w http.ResponseWriter, r *http.Request, u principal.User) error {
	var req RoutesJSON
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	up, err := a.cfg.Vault.UpdateRoutes(r.Context(), requestID(r.Context()), u, r.PathValue("name"), req.Routes)
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, a.upstreamJSON(up))
	return nil
}

func (a *API) deleteUpstream(w http.ResponseWriter, r *http.Request, u principal.User) error {
	if err := a.cfg.Vault.RemoveUpstream(r.Context(), requestID(r.Context()), u, r.PathValue("name")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// setUpstreamSecret stores a secret: the raw body (application/octet-stream) or {"secret": "…"}.
// Nothing about the secret is echoed, not even in an error: decoding errors are replaced by a
// fixed message, without the decoder's cause (which could quote part of the body) in the log.
func (a *API) setUpstreamSecret(w http.ResponseWriter, r *http.Request, u principal.User) error {
	if !u.Admin { // refuse before reading a secret that would be thrown away
		return a.cfg.Vault.SetSecret(r.Context(), requestID(r.Context()), u, r.PathValue("name"), r.PathValue("kind"), nil)
	}
	r.Body = http.MaxBytesReader(w, r.Body, vault.MaxSecretSize+1024)
	raw, err := io.ReadAll(r.Body)
	defer clear(raw)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return apperr.New(apperr.Invalid, "too_large", "the secret is longer than %d bytes", vault.MaxSecretSize)
		}
		return apperr.New(apperr.Invalid, "malformed", "the body could not be read")
	}
	var secret []byte
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch mt {
	case "application/octet-stream":
		secret = raw
	case "application/json":
		var body struct {
			Secret *string `json:"secret"`
		}
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if dec.Decode(&body) != nil || body.Secret == nil || dec.More() {
			return apperr.New(apperr.Invalid, "malformed", `the body must be {"secret": "…"} (or the raw secret as application/octet-stream)`)
		}
		secret = []byte(*body.Secret)
		defer clear(secret)
	default:
		return &httpapi.Error{Status: http.StatusUnsupportedMediaType, Code: "invalid_request", Reason: "content_type",
			Description: "send the secret as application/octet-stream, or as application/json {\"secret\": \"…\"}"}
	}
	if err := a.cfg.Vault.SetSecret(r.Context(), requestID(r.Context()), u, r.PathValue("name"), r.PathValue("kind"), secret); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
