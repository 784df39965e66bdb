// Package audittest builds audit trails that carry every field of the event contract
// (docs/audit.md), for tests that append them to a real store and query them through the real
// API: an incident with a three-level delegation chain, proxied calls, refusals and a revocation.
package audittest

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/ids"
)

// Agent is one agent of the incident's chain.
type Agent struct {
	ID, Handle, DID, JKT string
}

// Incident is a trail: a person grants @planner, which starts a task and delegates to
// @researcher, which delegates to @fetcher (bound to an instance key); @fetcher calls the ahrefs
// upstream through the proxy; one call is refused, one is recorded before forwarding with no
// completion (a crash); then the person revokes @researcher's task, which cascades to
// @fetcher's, and @fetcher's next call is refused.
type Incident struct {
	Principal string
	Grant     string
	Agents    [3]Agent
	Tasks     [3]string
	Purposes  [3]string
	Instance  string // @fetcher's instance key thumbprint
	Upstream  string
	Events    []audit.Event // in the order to append them

	Calls       []string // request ids of the completed calls, oldest first
	Refused     string   // request id of the refused call (route not allowed)
	Lost        string   // request id of the call with no completion
	Revoke      string   // request id of the revocation
	AfterRevoke string   // request id of the call refused after the revocation
	Exchanges   [3]string
}

// Options name the incident's principal and agents (real ones, when the test registers them);
// empty fields get fixed ids. Now is the time of the last event.
type Options struct {
	Now       time.Time
	Principal string
	Agents    [3]Agent
	// RequestIDs, when set, are the request ids of the completed calls (at most 5 are used).
	RequestIDs []string
}

// NewIncident builds the trail.
func NewIncident(o Options) *Incident {
	x := &Incident{Principal: o.Principal, Grant: "gr_7ydh2kq4mzc6xwbt3pn5rjfe0a", Upstream: "ahrefs",
		Tasks:    [3]string{"tsk_q4mzc6xwbt3pn5rjfe0a7ydh2k", "tsk_b3kd9wq2lm7xc4tz6yn5rpve1h", "tsk_m8xf2kr6pw3dq9vz5tc7yjb4ln"},
		Purposes: [3]string{"Quarterly SEO report for example.com", "Find the top referring domains", "Fetch domain ratings"},
		Instance: "Xq2yG7oJ3mZc1bR8kT5vWn4pL6sD9fH0aE2uY7iK3gM"}
	if x.Principal == "" {
		x.Principal = "usr_alice0000000000000000000a"
	}
	defaults := [3]Agent{
		{ID: "agt_planner00000000000000000a", Handle: "planner"},
		{ID: "agt_researcher000000000000000", Handle: "researcher"},
		{ID: "agt_fetcher00000000000000000a", Handle: "fetcher"},
	}
	for i := range x.Agents {
		a := o.Agents[i]
		if a.ID == "" {
			a = defaults[i]
		}
		if a.DID == "" {
			a.DID = "did:key:z6Mk" + a.Handle + "Key"
		}
		if a.JKT == "" {
			a.JKT = "jkt-" + a.Handle
		}
		x.Agents[i] = a
	}
	now := o.Now
	if now.IsZero() {
		now = time.Now()
	}
	t := now.Add(-40 * time.Minute).UTC()
	tick := func() time.Time { t = t.Add(time.Minute); return t }
	ev := func(req, action string, outcome audit.Outcome) audit.Event {
		e := audit.New(tick(), req, action)
		e.Outcome = outcome
		e.Addr, e.UserAgent = "10.0.0.7", "mandate-cli/1.0" // a person at the CLI; acting() sets the agent's
		return e
	}
	add := func(e audit.Event) audit.Event { x.Events = append(x.Events, e); return e }
	chain := func(n int) []audit.Link {
		var c []audit.Link
		for i := 0; i < n; i++ {
			l := audit.Link{AgentID: x.Agents[i].ID, Handle: x.Agents[i].Handle, DID: x.Agents[i].DID, TaskID: x.Tasks[i]}
			if i == 2 {
				l.InstanceKey = x.Instance
			}
			c = append(c, l)
		}
		return c
	}
	// acting fills the token fields of agent i's events.
	acting := func(e *audit.Event, i int) {
		a := x.Agents[i]
		e.ActorType, e.ActorID, e.ActorHandle = audit.ActorAgent, a.ID, a.Handle
		e.PrincipalID, e.AgentID, e.AgentDID, e.KeyJKT = x.Principal, a.ID, a.DID, a.JKT
		e.TaskID, e.GrantID, e.Chain = x.Tasks[i], x.Grant, chain(i+1)
		if i > 0 {
			e.ParentTaskID = x.Tasks[i-1]
		}
		if i == 2 {
			e.InstanceKey = x.Instance
		}
		e.Scopes, e.Resources = []string{"seo:read"}, []string{"https://api.ahrefs.com/"}
		e.Addr, e.UserAgent = "10.0.0.7", "seo-agent/1.2"
	}

	g := ev("req_9fzq2mw5kc7xbt3dn6yh4rplea", "grant.create", audit.OutcomeSuccess)
	g.ActorType, g.ActorID, g.ActorHandle = audit.ActorUser, x.Principal, "alice"
	g.PrincipalID, g.AgentID, g.Target, g.GrantID = x.Principal, x.Agents[0].ID, x.Grant, x.Grant
	g.Terms = mustJSON(map[string]any{"principal": x.Principal, "agent": x.Agents[0].ID, "scopes": []string{"seo:read"},
		"resources": []string{"https://api.ahrefs.com/"}, "lifetime": "720h", "max_depth": 3, "sub_delegation": true,
		"budget": map[string]any{"calls": 1000}})
	g.Detail = "alice granted @planner seo:read on https://api.ahrefs.com/"
	add(g)

	for i := range 3 {
		req := []string{"req_3mxk7qz2wb5dc9tn4vy6hrplfa", "req_7wqd2kz5mx3bc8tn6vy4hrplfe", "req_b2nk6qz3wx7dm5tc9vy4hrplfa"}[i]
		x.Exchanges[i] = req
		s := ev(req, "task.start", audit.OutcomeSuccess)
		acting(&s, i)
		s.Target, s.Purpose = x.Tasks[i], x.Purposes[i]
		s.Terms = mustJSON(map[string]any{"scopes": []string{"seo:read"}, "resources": []string{"https://api.ahrefs.com/"},
			"exp": now.Add(time.Hour).UTC().Format(time.RFC3339), "depth": i + 1, "budget": map[string]any{"calls": 100}})
		s.Detail = fmt.Sprintf("@%s started task %s", x.Agents[i].Handle, x.Tasks[i])
		add(s)
		e := ev(req, "token.exchange", audit.OutcomeSuccess)
		acting(&e, i)
		e.Target, e.TokenID = x.Tasks[i], ids.New("at")
		e.Detail = fmt.Sprintf("@%s got a token for task %s", x.Agents[i].Handle, x.Tasks[i])
		add(e)
	}

	call := func(req, method, path string, status int) {
		p := ev(req, "proxy.call", audit.OutcomePending)
		acting(&p, 2)
		p.Call = &audit.Call{Upstream: x.Upstream, Method: method, Path: path, Route: "/v3/site-explorer/*",
			Query: []audit.QueryParam{{Name: "target", ValueHash: "h1:5f2c0a9e"}}}
		p.Detail = "recorded before forwarding"
		add(p)
		c := ev(req, "proxy.call", audit.OutcomeSuccess)
		acting(&c, 2)
		c.Cause = p.ID
		cc := *p.Call
		cc.Status, cc.BytesIn, cc.BytesOut, cc.DurationUS = status, 0, 1843, 41250
		c.Call = &cc
		c.Detail = fmt.Sprintf("%s %s -> %d", method, path, status)
		if status >= 500 {
			c.Outcome, c.Reason = audit.OutcomeFailure, "upstream_error"
		}
		add(c)
	}
	reqs := o.RequestIDs
	for i := range 5 {
		req := fmt.Sprintf("req_c%dll7qz2wb5dc9tn4vy6hrplfa", i)
		if i < len(reqs) {
			req = reqs[i]
		}
		x.Calls = append(x.Calls, req)
		call(req, "GET", "/v3/site-explorer/domain-rating", 200)
	}

	x.Refused = "req_2ncw7xq4kd9mzb5vt3hy6lpfoa"
	r := ev(x.Refused, "proxy.call", audit.OutcomeDenied)
	acting(&r, 2)
	r.Call = &audit.Call{Upstream: x.Upstream, Method: "POST", Path: "/v3/management/projects"}
	r.Reason, r.Detail = "route_not_allowed", "POST /v3/management/projects matches no route the token's scopes allow"
	add(r)

	x.Lost = "req_8tzv3kq5mx2wdc7bn4yh6rplfe"
	l := ev(x.Lost, "proxy.call", audit.OutcomePending)
	acting(&l, 2)
	l.Call = &audit.Call{Upstream: x.Upstream, Method: "GET", Path: "/v3/site-explorer/backlinks", Route: "/v3/site-explorer/*"}
	l.Detail = "recorded before forwarding"
	add(l)

	x.Revoke = "req_5hbq2wz7mk3xdt9cn6vy4rlpfa"
	rv := ev(x.Revoke, "task.revoke", audit.OutcomeSuccess)
	rv.ActorType, rv.ActorID, rv.ActorHandle = audit.ActorUser, x.Principal, "alice"
	rv.PrincipalID, rv.AgentID, rv.Target, rv.TaskID, rv.GrantID = x.Principal, x.Agents[1].ID, x.Tasks[1], x.Tasks[1], x.Grant
	rv.Reason, rv.Detail = "revoked", "alice revoked task "+x.Tasks[1]
	add(rv)
	cs := ev(x.Revoke, "task.revoke", audit.OutcomeSuccess)
	cs.ActorType, cs.ActorID, cs.ActorHandle = audit.ActorUser, x.Principal, "alice"
	cs.PrincipalID, cs.AgentID, cs.Target, cs.TaskID, cs.ParentTaskID, cs.GrantID = x.Principal, x.Agents[2].ID, x.Tasks[2], x.Tasks[2], x.Tasks[1], x.Grant
	cs.Cause, cs.Reason, cs.Detail = x.Tasks[1], "parent_revoked", "task "+x.Tasks[2]+" revoked with its parent "+x.Tasks[1]
	add(cs)

	x.AfterRevoke = "req_6yvd3mq8kx2wzb7tc5nh4rplfe"
	d := ev(x.AfterRevoke, "proxy.call", audit.OutcomeDenied)
	acting(&d, 2)
	d.Call = &audit.Call{Upstream: x.Upstream, Method: "GET", Path: "/v3/site-explorer/domain-rating"}
	d.Reason, d.Detail = "task_revoked", "task "+x.Tasks[2]+" was revoked"
	add(d)
	return x
}

// Late is a call recorded as forwarded after the revocation: the kind of event explain must
// call invalid (a forged or buggy record).
func (x *Incident) Late(req string, at time.Time) []audit.Event {
	p := audit.New(at, req, "proxy.call")
	p.Outcome = audit.OutcomePending
	p.ActorType, p.ActorID, p.ActorHandle = audit.ActorAgent, x.Agents[2].ID, x.Agents[2].Handle
	p.PrincipalID, p.AgentID, p.AgentDID, p.TaskID, p.GrantID = x.Principal, x.Agents[2].ID, x.Agents[2].DID, x.Tasks[2], x.Grant
	for i := range 3 {
		p.Chain = append(p.Chain, audit.Link{AgentID: x.Agents[i].ID, Handle: x.Agents[i].Handle, DID: x.Agents[i].DID, TaskID: x.Tasks[i]})
	}
	p.Call = &audit.Call{Upstream: x.Upstream, Method: "GET", Path: "/v3/site-explorer/domain-rating"}
	c := audit.New(at.Add(time.Millisecond), req, "proxy.call")
	c.Outcome, c.Cause = audit.OutcomeSuccess, p.ID
	c.PrincipalID, c.AgentID, c.TaskID, c.GrantID = p.PrincipalID, p.AgentID, p.TaskID, p.GrantID
	cc := *p.Call
	cc.Status = 200
	c.Call = &cc
	return []audit.Event{p, c}
}

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
