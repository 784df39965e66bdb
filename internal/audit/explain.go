package audit

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Reader is what Explain and Summarize read: the trail, by filter.
type Reader interface {
	ListEvents(ctx context.Context, f Filter) ([]Event, error)
}

// ErrNoEvent is returned by Explain when no event has the id or request id asked for.
var ErrNoEvent = errors.New("no audit event with that id or request id")

// Explanation answers who ran the agent and on whose behalf for one event, from the trail alone
// (the events of its request, its task starts, its grant's creation and any revocation before
// it), never from the mutable tables.
type Explanation struct {
	Event Event `json:"event"` // the decisive event: a proxied call's pending record, else the request's decision
	// Completion completes a proxied call (same request id, Cause = Event.ID); nil when none
	// was recorded.
	Completion *Event `json:"completion,omitempty"`
	// Outcome is the decision's outcome (the completion's for a proxied call), or "unknown" for
	// a proxied call with no completion recorded.
	Outcome     string         `json:"outcome"`
	Reason      string         `json:"reason,omitempty"`
	Call        *Call          `json:"call,omitempty"` // the proxied call, its status and sizes from the completion
	PrincipalID string         `json:"principal_id,omitempty"`
	Grant       *GrantEvidence `json:"grant,omitempty"`
	Chain       []Hop          `json:"chain,omitempty"` // first agent first, the acting agent last
	// Valid is true when every link of the authority (principal, grant, each task, agent and
	// key of the chain) had neither been revoked or ended before the event (in sequence order)
	// nor expired at its time. Problems names each link that was not.
	Valid    bool          `json:"valid"`
	Problems []InvalidLink `json:"problems,omitempty"`
	// Missing says what the trail does not hold (no grant.create for the grant, no task.start
	// for a task), so a reader knows what the answer could not check.
	Missing []string `json:"missing,omitempty"`
	// Notes are facts about the authority that did not make it invalid (a service account
	// disabled: it gets no new tokens, but the grants it made stay until they are revoked).
	Notes  []string `json:"notes,omitempty"`
	Others []Event  `json:"others,omitempty"` // the request's other events, oldest first
	// FoundByClientRequestID is the client's X-Request-Id explain was given, when it found this
	// request by it (the one request with that id the caller may see), not by the server's id.
	FoundByClientRequestID string `json:"found_by_client_request_id,omitempty"`
}

// GrantEvidence is a grant as its grant.create event recorded it.
type GrantEvidence struct {
	ID          string    `json:"id"`
	EventID     string    `json:"event_id,omitempty"`
	GrantedBy   string    `json:"granted_by,omitempty"` // the actor of grant.create
	GrantedName string    `json:"granted_by_name,omitempty"`
	PrincipalID string    `json:"principal_id,omitempty"`
	AgentID     string    `json:"agent_id,omitempty"`
	Time        time.Time `json:"time,omitzero"`
	Terms       TermsView `json:"terms"`
}

// Hop is one agent of the chain, with its task as the task's start recorded it.
type Hop struct {
	Link
	StartEventID string    `json:"start_event_id,omitempty"`
	Started      time.Time `json:"started,omitzero"`
	Purpose      string    `json:"purpose,omitempty"`
	Terms        TermsView `json:"terms"`
}

// InvalidLink is one link of the authority that was not valid at the event.
type InvalidLink struct {
	Link    string    `json:"link"`               // "grant gr_…", "task tsk_…", "agent agt_…", "key did:key:…", "principal usr_…"
	Reason  string    `json:"reason"`             // "revoked", "ended", "expired", "disabled"
	EventID string    `json:"event_id,omitempty"` // the revocation's event
	Seq     int64     `json:"seq,omitempty"`
	Time    time.Time `json:"time,omitzero"`
	Detail  string    `json:"detail"`
}

// IsRequestID reports whether id names a request (req_…) rather than one event.
func IsRequestID(id string) bool { return !strings.HasPrefix(id, "evt_") }

// Explain explains the event id (evt_…) or the decisive event of the server's request id
// (req_…). A client's X-Request-Id is never resolved here: clients choose it freely, so two
// requests (of two principals) may share it; RequestsByClientID lists the requests that sent it.
func Explain(ctx context.Context, r Reader, id string) (*Explanation, error) {
	evs, err := requestEvents(ctx, r, id)
	if err != nil {
		return nil, err
	}
	if len(evs) == 0 {
		return nil, ErrNoEvent
	}
	var x Explanation
	decisive := pickDecisive(evs, id)
	if decisive.Action == "proxy.call" && decisive.Cause != "" && decisive.Outcome != OutcomePending {
		// A completion: explain its pending record, which is where authority was decided.
		if p := findByID(evs, decisive.Cause); p != nil {
			decisive = *p
		}
	}
	x.Event = decisive
	x.Outcome, x.Reason = string(decisive.Outcome), decisive.Reason
	if decisive.Call != nil {
		c := *decisive.Call
		x.Call = &c
	}
	if decisive.Action == "proxy.call" && decisive.Outcome == OutcomePending {
		x.Outcome = "unknown"
		for i := range evs {
			if evs[i].Cause == decisive.ID && evs[i].ID != decisive.ID {
				c := evs[i]
				x.Completion = &c
				x.Outcome, x.Reason = string(c.Outcome), c.Reason
				if c.Call != nil && x.Call != nil {
					x.Call.Status, x.Call.BytesIn, x.Call.BytesOut, x.Call.DurationUS = c.Call.Status, c.Call.BytesIn, c.Call.BytesOut, c.Call.DurationUS
				} else if c.Call != nil {
					cc := *c.Call
					x.Call = &cc
				}
				break
			}
		}
	}
	for _, e := range evs {
		if e.ID != x.Event.ID && (x.Completion == nil || e.ID != x.Completion.ID) {
			x.Others = append(x.Others, e)
		}
	}
	x.PrincipalID = decisive.PrincipalID
	if err := x.gather(ctx, r); err != nil {
		return nil, err
	}
	x.Valid = len(x.Problems) == 0
	return &x, nil
}

// requestEvents reads the event id's request, or the request id's events, oldest first.
func requestEvents(ctx context.Context, r Reader, id string) ([]Event, error) {
	if !IsRequestID(id) {
		one, err := r.ListEvents(ctx, Filter{ID: id, Limit: 1})
		if err != nil || len(one) == 0 {
			return nil, err
		}
		if one[0].RequestID == "" {
			return one, nil
		}
		id = one[0].RequestID
		evs, err := r.ListEvents(ctx, Filter{RequestID: id, Ascending: true, Limit: MaxPage})
		if err != nil {
			return nil, err
		}
		// The event asked for comes first, so pickDecisive takes it.
		i := slices.IndexFunc(evs, func(e Event) bool { return e.ID == one[0].ID })
		if i > 0 {
			evs[0], evs[i] = evs[i], evs[0]
		}
		return evs, nil
	}
	return r.ListEvents(ctx, Filter{RequestID: id, Ascending: true, Limit: MaxPage})
}

// RequestsByClientID lists the server request ids (req_…) of the requests that sent the
// client's X-Request-Id clientID, oldest first, each once. principalID, when set, keeps to
// events on that principal's behalf: the caller's authorization filters before anything is
// chosen. An event of such a request that has no server request id is listed by its event id.
//
// MaxClientRequests bounds what RequestsByClientID reads: past this many requests it stops
// (the answer is ambiguous anyway).
const MaxClientRequests = 100

func RequestsByClientID(ctx context.Context, r Reader, clientID, principalID string) ([]string, error) {
	var ids []string
	f := Filter{ClientRequestID: clientID, PrincipalID: principalID, Ascending: true, Limit: MaxPage}
	for {
		evs, err := r.ListEvents(ctx, f)
		if err != nil {
			return nil, err
		}
		for _, e := range evs {
			id := e.RequestID
			if id == "" {
				id = e.ID
			}
			if !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
		}
		if len(evs) < f.Limit || len(ids) > MaxClientRequests {
			return ids, nil
		}
		f.After = evs[len(evs)-1].Seq
	}
}

// decisiveRank orders the actions that decide a request: a proxied call, then a token hop, then
// a refusal; every other action after them, the first recorded first.
var decisiveRank = []string{"proxy.call", "token.exchange", "token.issue", "resource.deny", "token.deny"}

func pickDecisive(evs []Event, id string) Event {
	if !IsRequestID(id) {
		return evs[0]
	}
	best, bestRank := 0, len(decisiveRank)+1
	for i, e := range evs {
		rank := slices.Index(decisiveRank, e.Action)
		if rank < 0 {
			rank = len(decisiveRank)
			if e.Cause != "" {
				rank++ // a cascade follows from the request's own decision
			}
		}
		if e.Action == "proxy.call" && e.Outcome != OutcomePending && e.Cause != "" {
			rank = 1 // a completion: its pending record, when there, ranks first
		}
		if rank < bestRank {
			best, bestRank = i, rank
		}
	}
	return evs[best]
}

func findByID(evs []Event, id string) *Event {
	for i := range evs {
		if evs[i].ID == id {
			return &evs[i]
		}
	}
	return nil
}

// gather reads the grant, the chain's task starts and every revocation of a link before the
// event.
func (x *Explanation) gather(ctx context.Context, r Reader) error {
	ev := x.Event
	chain := ev.Chain
	if len(chain) == 0 && (ev.AgentID != "" || ev.TaskID != "") {
		l := Link{AgentID: ev.AgentID, DID: ev.AgentDID, InstanceKey: ev.InstanceKey, TaskID: ev.TaskID}
		if ev.ActorType == ActorAgent && ev.ActorID == ev.AgentID {
			l.Handle = ev.ActorHandle
		}
		chain = []Link{l}
	}
	before := ev.Seq // authority is judged at the decision: only what precedes it counts
	first := func(f Filter) (*Event, error) {
		f.Before, f.Ascending, f.Limit = before, true, 1
		evs, err := r.ListEvents(ctx, f)
		if err != nil {
			return nil, fmt.Errorf("explain %s: %w", ev.ID, err)
		}
		if len(evs) == 0 {
			return nil, nil
		}
		return &evs[0], nil
	}
	// firstOf finds the first successful event of action about id, named as Target or in the
	// column col sets.
	firstOf := func(action, id string, col func(*Filter, string)) (*Event, error) {
		var found *Event
		for _, f := range []Filter{{Action: action, Target: id, Outcome: OutcomeSuccess}, {Action: action, Outcome: OutcomeSuccess}} {
			if f.Target == "" {
				if col == nil {
					continue
				}
				col(&f, id)
			}
			e, err := first(f)
			if err != nil {
				return nil, err
			}
			if e != nil && (found == nil || e.Seq < found.Seq) {
				found = e
			}
		}
		return found, nil
	}
	byTask := func(f *Filter, id string) { f.TaskID = id }
	byGrant := func(f *Filter, id string) { f.GrantID = id }
	byAgent := func(f *Filter, id string) { f.AgentID = id }

	if ev.GrantID != "" {
		g := &GrantEvidence{ID: ev.GrantID}
		e, err := firstOf("grant.create", ev.GrantID, byGrant)
		if err != nil {
			return err
		}
		if e != nil {
			g.EventID, g.GrantedBy, g.GrantedName, g.PrincipalID, g.AgentID, g.Time = e.ID, e.ActorID, e.ActorHandle, e.PrincipalID, e.AgentID, e.Time
			g.Terms = DecodeTerms(e.Terms, e.Time)
			x.checkExpiry("grant "+g.ID, g.Terms.Expires)
		} else {
			x.Missing = append(x.Missing, "no grant.create event for grant "+ev.GrantID+" before this one")
		}
		x.Grant = g
		if err := x.revoked(firstOf, "grant.revoke", "grant "+ev.GrantID, ev.GrantID, byGrant, "revoked"); err != nil {
			return err
		}
	}
	for _, l := range chain {
		h := Hop{Link: l}
		if l.TaskID != "" {
			e, err := firstOf("task.start", l.TaskID, byTask)
			if err != nil {
				return err
			}
			if e != nil {
				h.StartEventID, h.Started, h.Purpose = e.ID, e.Time, e.Purpose
				h.Terms = DecodeTerms(e.Terms, e.Time)
				x.checkExpiry("task "+l.TaskID, h.Terms.Expires)
			} else {
				x.Missing = append(x.Missing, "no task.start event for task "+l.TaskID+" before this one (its purpose and limits are unknown)")
			}
			if err := x.revoked(firstOf, "task.revoke", "task "+l.TaskID, l.TaskID, byTask, "revoked"); err != nil {
				return err
			}
			if err := x.revoked(firstOf, "task.end", "task "+l.TaskID, l.TaskID, byTask, "ended"); err != nil {
				return err
			}
		}
		if l.AgentID != "" {
			if err := x.revoked(firstOf, "agent.revoke", "agent "+l.AgentID, l.AgentID, byAgent, "revoked"); err != nil {
				return err
			}
		}
		if l.DID != "" {
			if err := x.revoked(firstOf, "agent.revoke_key", "key "+l.DID, l.DID, nil, "revoked"); err != nil {
				return err
			}
		}
		x.Chain = append(x.Chain, h)
	}
	if p := x.PrincipalID; strings.HasPrefix(p, "svc_") {
		dis, err := firstOf("service_account.disable", p, nil)
		if err != nil {
			return err
		}
		if dis != nil {
			// Disabled, unless enabled again after it and before the event.
			f := Filter{Action: "service_account.enable", Target: p, Outcome: OutcomeSuccess, After: dis.Seq, Before: before, Limit: 1}
			en, err := r.ListEvents(ctx, f)
			if err != nil {
				return fmt.Errorf("explain %s: %w", ev.ID, err)
			}
			if len(en) == 0 {
				// What the server enforces: a disabled service account's grants stay until
				// revoked (docs/federation.md), so the call's authority was still valid.
				x.Notes = append(x.Notes, fmt.Sprintf("principal %s had been disabled (event %s, seq %d); a disabled service account gets no new tokens, but the grants it made stay until they are revoked", p, dis.ID, dis.Seq))
			}
		}
	}
	return nil
}

type firstOfFunc func(action, id string, col func(*Filter, string)) (*Event, error)

func (x *Explanation) revoked(firstOf firstOfFunc, action, link, id string, col func(*Filter, string), reason string) error {
	e, err := firstOf(action, id, col)
	if err != nil || e == nil {
		return err
	}
	x.Problems = append(x.Problems, problem(link, reason, e))
	return nil
}

func problem(link, reason string, e *Event) InvalidLink {
	d := fmt.Sprintf("%s %s by %s (%s, seq %d, %s) before this event", link, reason, actorName(e), e.Action, e.Seq, e.Time.UTC().Format(time.RFC3339))
	if e.Cause != "" {
		d += ", because of " + e.Cause
	}
	return InvalidLink{Link: link, Reason: reason, EventID: e.ID, Seq: e.Seq, Time: e.Time, Detail: d}
}

// checkExpiry records link as expired when exp is set and the event came at or after it.
func (x *Explanation) checkExpiry(link string, exp time.Time) {
	if exp.IsZero() || x.Event.Time.Before(exp) {
		return
	}
	x.Problems = append(x.Problems, InvalidLink{Link: link, Reason: "expired", Time: exp,
		Detail: fmt.Sprintf("%s expired at %s, before this event (%s)", link, exp.UTC().Format(time.RFC3339), x.Event.Time.UTC().Format(time.RFC3339))})
}

func actorName(e *Event) string {
	switch {
	case e.ActorHandle != "" && e.ActorID != "":
		return e.ActorHandle + " (" + e.ActorID + ")"
	case e.ActorID != "":
		return e.ActorID
	case e.ActorType != "":
		return e.ActorType
	}
	return "unknown"
}
