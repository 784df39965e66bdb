package api

import (
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/httpapi"
	"github.com/mandate-dev/mandate/internal/principal"
)

// auditParams are the query parameters GET /v1/audit reads; any other is refused, so a typo
// (tsk=…) is an error rather than the whole trail.
var auditParams = []string{"action", "agent", "client_request_id", "cursor", "grant", "limit", "outcome", "principal",
	"request_id", "since", "task", "until", "upstream"}

// AuditPage is the answer of GET /v1/audit: events newest first, and the cursor of the next
// (older) page when there is one.
type AuditPage struct {
	Events     []audit.Event `json:"events"`
	NextCursor string        `json:"next_cursor,omitempty"`
}

// listAudit searches the audit trail: an admin all of it, anyone else the events on their own
// behalf.
func (a *API) listAudit(w http.ResponseWriter, r *http.Request, u principal.User) error {
	q := r.URL.Query()
	if err := onlyParams(q, auditParams); err != nil {
		return err
	}
	f := audit.Filter{RequestID: q.Get("request_id"), ClientRequestID: q.Get("client_request_id"), TaskID: q.Get("task"),
		GrantID: q.Get("grant"), PrincipalID: q.Get("principal"), Upstream: q.Get("upstream"), Limit: 100}
	if v := q.Get("action"); v != "" {
		if err := audit.CheckAction(v); err != nil {
			return apperr.New(apperr.Invalid, "action", "%v", err)
		}
		f.Action = v
	}
	if v := q.Get("outcome"); v != "" {
		if err := audit.CheckOutcome(v); err != nil {
			return apperr.New(apperr.Invalid, "outcome", "%v", err)
		}
		f.Outcome = audit.Outcome(v)
	}
	if v := q.Get("agent"); v != "" {
		id, err := a.auditAgent(r, u, v)
		if err != nil {
			return err
		}
		f.AgentID = id
	}
	var err error
	if f.Since, f.Until, err = a.auditWindow(q, time.Time{}); err != nil {
		return err
	}
	if v := q.Get("cursor"); v != "" {
		if f.Before, err = audit.ParseCursor(v); err != nil {
			return apperr.New(apperr.Invalid, "cursor", "%v", err)
		}
	}
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > audit.MaxPage {
			return apperr.New(apperr.Invalid, "limit", "limit must be a number from 1 to %d; page on with cursor", audit.MaxPage)
		}
		f.Limit = n
	}
	if err := ownEvents(u, &f.PrincipalID); err != nil {
		return err
	}
	limit := f.Limit
	f.Limit++ // one more tells whether a next page exists
	evs, err := a.cfg.Audit.ListEvents(r.Context(), f)
	if err != nil {
		return err
	}
	page := AuditPage{Events: evs}
	if len(evs) > limit {
		page.Events = evs[:limit]
		page.NextCursor = audit.FormatCursor(evs[limit-1].Seq)
	}
	if page.Events == nil {
		page.Events = []audit.Event{}
	}
	httpapi.WriteJSON(w, http.StatusOK, page)
	return nil
}

// ownEvents keeps a non-admin to the events on their own behalf.
func ownEvents(u principal.User, principalID *string) error {
	if u.Admin {
		return nil
	}
	if *principalID != "" && *principalID != u.ID {
		return apperr.New(apperr.Forbidden, "forbidden", "only an admin can read the audit trail of another principal: leave out principal to read your own")
	}
	*principalID = u.ID
	return nil
}

// onlyParams refuses a query parameter not in known (sorted).
func onlyParams(q url.Values, known []string) error {
	for k := range q {
		if !slices.Contains(known, k) {
			return apperr.New(apperr.Invalid, "parameter", "unknown query parameter %q: this endpoint takes %s", apperr.Clip(k, 40), strings.Join(known, ", "))
		}
	}
	return nil
}

// auditAgent resolves an agent filter: an agent id as is, "@handle" or a bare handle to its
// agent's id. An unknown handle (or one of an agent the caller may not see) is refused, never an
// empty answer.
func (a *API) auditAgent(r *http.Request, u principal.User, ref string) (string, error) {
	if strings.HasPrefix(ref, "agt_") {
		return ref, nil
	}
	handle := strings.TrimPrefix(ref, "@")
	if handle == "" {
		return "", apperr.New(apperr.Invalid, "agent", "agent must be an agent id (agt_…) or a handle (@release-bot)")
	}
	ag, err := a.cfg.Registry.Get(r.Context(), u, "@"+handle)
	if err != nil {
		if de, ok := apperr.As(err); ok && de.Kind == apperr.NotFound {
			return "", apperr.New(apperr.NotFound, "agent", "no agent with handle @%s: list agents with mandate agents list, or give its agt_… id", apperr.Clip(handle, 60))
		}
		return "", err
	}
	return ag.ID, nil
}

// auditWindow reads since and until (RFC 3339, a date, or a duration ago); def is since's
// default.
func (a *API) auditWindow(q url.Values, def time.Time) (since, until time.Time, err error) {
	now := a.cfg.Now()
	since = def
	if v := q.Get("since"); v != "" {
		if since, err = audit.ParseTime(v, now); err != nil {
			return since, until, apperr.New(apperr.Invalid, "since", "since: %v", err)
		}
	}
	if v := q.Get("until"); v != "" {
		if until, err = audit.ParseTime(v, now); err != nil {
			return since, until, apperr.New(apperr.Invalid, "until", "until: %v", err)
		}
		if !since.IsZero() && !until.After(since) {
			return since, until, apperr.New(apperr.Invalid, "until", "until (%s) must be after since (%s)", until.Format(time.RFC3339), since.Format(time.RFC3339))
		}
	}
	return since, until, nil
}

// explainAudit answers who ran the agent and on whose behalf for one event (evt_…) or one
// request (the server's req_…), from the trail alone. An admin may explain any event; anyone
// else only an event on their behalf. Any other id is looked up as a client's X-Request-Id,
// which clients choose freely (two principals may send the same): among the requests the caller
// may see that sent it, exactly one is explained (found_by_client_request_id says so); several
// are answered 409 conflict with their server request ids; events of different
// requests are never merged.
func (a *API) explainAudit(w http.ResponseWriter, r *http.Request, u principal.User) error {
	id := r.PathValue("id")
	notFound := apperr.New(apperr.NotFound, "not_found", "no audit event or request %q: a request id is the req_… a refusal or the upstream's Mandate-Request-Id header names; find events with mandate audit", apperr.Clip(id, 80))
	x, err := audit.Explain(r.Context(), a.cfg.Audit, id)
	if err == nil && !u.Admin && x.PrincipalID != u.ID {
		err = audit.ErrNoEvent // the same answer as a missing event, so ids cannot be probed
	}
	if errors.Is(err, audit.ErrNoEvent) {
		owner := "" // an admin sees every request; anyone else only those on their behalf
		if !u.Admin {
			owner = u.ID
		}
		reqs, lerr := audit.RequestsByClientID(r.Context(), a.cfg.Audit, id, owner)
		if lerr != nil {
			return lerr
		}
		switch {
		case len(reqs) == 0:
			return notFound
		case len(reqs) > 1:
			shown := reqs
			more := ""
			if len(shown) > 20 {
				shown, more = shown[:20], ", …"
			}
			n := strconv.Itoa(len(reqs))
			if len(reqs) > audit.MaxClientRequests {
				n = "more than " + strconv.Itoa(audit.MaxClientRequests)
			}
			return apperr.New(apperr.Conflict, "ambiguous_request_id",
				"%q is not a server request id but a client's X-Request-Id, sent with %s requests: %s%s; explain one of them: mandate audit explain req_…",
				apperr.Clip(id, 80), n, strings.Join(shown, ", "), more)
		}
		x, err = audit.Explain(r.Context(), a.cfg.Audit, reqs[0])
		if err == nil && !u.Admin && x.PrincipalID != u.ID {
			err = audit.ErrNoEvent
		}
		if errors.Is(err, audit.ErrNoEvent) {
			return notFound
		}
		if err != nil {
			return err
		}
		x.FoundByClientRequestID = id
	}
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, x)
	return nil
}

// mineAudit is a principal's own account: what agents did on their behalf, grouped by agent
// and task. since defaults to 7 days ago; an admin may name another principal.
func (a *API) mineAudit(w http.ResponseWriter, r *http.Request, u principal.User) error {
	q := r.URL.Query()
	if err := onlyParams(q, []string{"principal", "since", "until"}); err != nil {
		return err
	}
	since, until, err := a.auditWindow(q, a.cfg.Now().Add(-7*24*time.Hour))
	if err != nil {
		return err
	}
	p := q.Get("principal")
	if err := ownEvents(u, &p); err != nil {
		return err
	}
	if p == "" {
		p = u.ID
	}
	rep, err := audit.Summarize(r.Context(), a.cfg.Audit, p, since, until)
	if err != nil {
		return err
	}
	if rep.Until.IsZero() {
		rep.Until = a.cfg.Now().UTC()
	}
	httpapi.WriteJSON(w, http.StatusOK, rep)
	return nil
}
