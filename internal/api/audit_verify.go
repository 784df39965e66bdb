package api

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"

	"github.com/go-jose/go-jose/v4"

	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/httpapi"
	"github.com/mandate-dev/mandate/internal/principal"
)

// The audit chain's signed checkpoints and its verification (docs/audit-verify.md).

// maxVerifyBody bounds POST /v1/audit/verify: about 200,000 checkpoints, a chain of 200
// million events at the default interval.
const maxVerifyBody = 64 << 20

// checkpointKeys publishes the keys checkpoints verify with, unauthenticated: an auditor checks
// a copy of the checkpoints against them, with any JOSE library.
func (a *API) checkpointKeys(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Cache-Control", "public, max-age=300")
	httpapi.WriteJSON(w, http.StatusOK, a.cfg.Trail.JWKS())
	return nil
}

// CheckpointsJSON is a page of GET /v1/audit/checkpoints: Next is the after= of the next page,
// 0 on the last.
type CheckpointsJSON struct {
	Checkpoints []audit.Checkpoint `json:"checkpoints"`
	Next        int64              `json:"next,omitempty"`
}

// listCheckpoints returns the stored checkpoints, oldest first, for an admin to keep a copy
// outside the database.
func (a *API) listCheckpoints(w http.ResponseWriter, r *http.Request, u principal.User) error {
	if !u.Admin {
		return apperr.New(apperr.Forbidden, "forbidden", "only an admin can read the audit checkpoints")
	}
	q := r.URL.Query()
	var after int64
	limit := 1000
	if s := q.Get("after"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 {
			return apperr.New(apperr.Invalid, "after", "after must be a sequence number (0 or more)")
		}
		after = n
	}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 10000 {
			return apperr.New(apperr.Invalid, "limit", "limit must be a number from 1 to 10000")
		}
		limit = n
	}
	cps, err := a.cfg.Trail.ListCheckpoints(r.Context(), after, limit)
	if err != nil {
		return err
	}
	out := CheckpointsJSON{Checkpoints: cps}
	if out.Checkpoints == nil {
		out.Checkpoints = []audit.Checkpoint{}
	}
	if len(cps) == limit {
		out.Next = cps[len(cps)-1].Seq
	}
	httpapi.WriteJSON(w, http.StatusOK, out)
	return nil
}

// signCheckpoint signs a checkpoint of the chain's head now, if it moved since the last one, so
// a copy taken right after covers every event so far. 201 with the new checkpoint, or 200 with
// the last one when the head had not moved (null on an empty chain).
func (a *API) signCheckpoint(w http.ResponseWriter, r *http.Request, u principal.User) error {
	if !u.Admin {
		return apperr.New(apperr.Forbidden, "forbidden", "only an admin can sign audit checkpoints")
	}
	c, signed, err := a.cfg.Trail.Checkpoint(r.Context())
	if err != nil {
		return err
	}
	if signed {
		httpapi.WriteJSON(w, http.StatusCreated, map[string]any{"checkpoint": c})
		return nil
	}
	last, ok, err := a.cfg.Trail.LastCheckpoint(r.Context())
	if err != nil {
		return err
	}
	var out any
	if ok {
		out = last
	}
	httpapi.WriteJSON(w, http.StatusOK, map[string]any{"checkpoint": out})
	return nil
}

// VerifyRequest is the body of POST /v1/audit/verify: checkpoints kept outside the database
// (compact JWS), and keys to accept beside the published ones (a JWKS saved before a master key
// was dropped).
type VerifyRequest struct {
	Checkpoints []string           `json:"checkpoints,omitempty"`
	Keys        jose.JSONWebKeySet `json:"keys,omitzero"`
}

// VerifyJSON is the answer of POST /v1/audit/verify: what the verification found, and the keys
// the checkpoints were checked with. A broken chain is a 200 with ok false and the problem.
type VerifyJSON struct {
	Report audit.Report       `json:"report"`
	Keys   jose.JSONWebKeySet `json:"keys"`
}

// verifyAudit runs the server's events through the verifier against the stored checkpoints and
// those in the body.
func (a *API) verifyAudit(w http.ResponseWriter, r *http.Request, u principal.User) error {
	if !u.Admin {
		return apperr.New(apperr.Forbidden, "forbidden", "only an admin can verify the audit trail")
	}
	var req VerifyRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxVerifyBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil && !errors.Is(err, io.EOF) {
		return apperr.Wrap(err, apperr.Invalid, "malformed",
			`the body must be {"checkpoints": ["<compact JWS>", …], "keys": {JWKS}} (both optional, at most 64 MiB): %v`, err)
	}
	outside := make([]audit.Checkpoint, 0, len(req.Checkpoints))
	for _, raw := range req.Checkpoints {
		c, err := audit.DecodeCheckpoint(raw)
		if err != nil {
			return apperr.Wrap(err, apperr.Invalid, "checkpoint", "a checkpoint is not a compact JWS of the documented claims: %v", err)
		}
		outside = append(outside, c)
	}
	rep, err := a.cfg.Trail.Verify(r.Context(), outside, req.Keys)
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, VerifyJSON{Report: rep, Keys: a.cfg.Trail.JWKS()})
	return nil
}
