package delegation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/ids"
	"github.com/mandate-dev/mandate/internal/registry"
	"github.com/mandate-dev/mandate/internal/token"
)

// Subject is a verified subject token (signature, issuer and expiry already checked): a grant
// token or a task access token.
type Subject struct {
	Grant  *token.GrantClaims
	Access *token.AccessClaims
}

// Describe fills ev with what the subject token says (its agent, principal, grant, task, chain,
// key and id), so that a refusal of a token whose signature verified names whose it was.
func (s Subject) Describe(ev *audit.Event) {
	switch {
	case s.Grant != nil:
		s.Grant.Describe(ev)
	case s.Access != nil:
		s.Access.Describe(ev)
	}
}

// ActorKey is the key a verified actor token names as the next holder.
type ActorKey struct {
	DID string
	JKT string
	Use token.SingleUse // the actor token's jti, used up when the exchange commits
}

// ExchangeRequest is one token exchange hop, as the token endpoint has verified it.
type ExchangeRequest struct {
	Subject   Subject
	ProofJKT  string    // the key that signed the request's DPoP proof: the current holder's
	Actor     *ActorKey // the next holder, or nil: the token is bound to ProofJKT
	Scopes    []string  // requested; empty = all of the parent's
	Resources []string  // requested; empty = all of the parent's
	Details   []json.RawMessage
	Budget    map[string]int64
	Purpose   string
	TaskTTL   time.Duration // requested task lifetime; 0 = as long as allowed
}

// Plan is what an allowed exchange issues: the claims of the new token (the caller adds iss,
// times and jti), the latest it may expire, the task it starts (nil when it refreshes a token
// of an existing task), and the single-use ids to commit with the audit event.
type Plan struct {
	NewTask    *Task
	Claims     token.AccessClaims
	Expiry     time.Time
	TaskExpiry time.Time // when the token's task ends
	Uses       []token.SingleUse
}

// Hop kinds, for the audit trail.
const (
	hopStart    = "start"
	hopDelegate = "delegate"
	hopRefresh  = "refresh"
)

// grantRefusal is a refusal because the authority itself is gone or does not allow the hop
// (the token endpoint answers invalid_grant).
func grantRefusal(reason, format string, args ...any) error {
	return apperr.New(apperr.Forbidden, reason, format, args...)
}

// requestRefusal is a refusal of a malformed or out-of-bounds request (invalid_request).
func requestRefusal(reason, format string, args ...any) error {
	return apperr.New(apperr.Invalid, reason, format, args...)
}

// narrowed turns a NarrowError into a refusal carrying its limit as the reason.
func narrowed(err error) error {
	var ne *NarrowError
	if errors.As(err, &ne) {
		return apperr.Wrap(err, apperr.Invalid, ne.Limit, "%s", ne.Msg)
	}
	return err
}

// PlanExchange decides one hop of delegation. It is the one place the narrowing rules are
// enforced: whatever the client asks, the new token carries no more scopes, resources,
// authorization details or lifetime than its parent, the chain never grows past the grant's
// depth, and it grows at all only where the grant allows sub-delegation. ev is filled in with who
// and what as far as known, so a refusal is audited with it.
func (s *Service) PlanExchange(ctx context.Context, req ExchangeRequest, ev *audit.Event) (*Plan, error) {
	req.Subject.Describe(ev)
	if req.Subject.Grant != nil {
		return s.planStart(ctx, req, ev)
	}
	if req.Subject.Access != nil {
		return s.planFromTask(ctx, req, ev)
	}
	return nil, requestRefusal("subject_token", "subject_token is neither a grant token nor a task access token")
}

// activeGrant loads a grant that still gives authority.
func (s *Service) activeGrant(ctx context.Context, id string, now time.Time) (Grant, error) {
	g, err := s.cfg.Store.GetGrant(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return Grant{}, grantRefusal("grant_unknown", "grant %s does not exist", apperr.Clip(id, 60))
	}
	if err != nil {
		return Grant{}, fmt.Errorf("get grant %s: %w", id, err)
	}
	switch {
	case g.Status != GrantActive:
		return Grant{}, grantRefusal("grant_revoked", "grant %s was revoked", g.ID)
	case !now.Before(g.ExpiresAt):
		return Grant{}, grantRefusal("grant_expired", "grant %s expired at %s", g.ID, g.ExpiresAt.UTC().Format(time.RFC3339))
	}
	return g, nil
}

// claimedAgent loads an agent that may hold authority, with its usable keys.
func (s *Service) claimedAgent(ctx context.Context, id, role string) (registry.Agent, error) {
	a, err := s.cfg.Agents.GetAgent(ctx, id)
	if errors.Is(err, registry.ErrNotFound) {
		return registry.Agent{}, grantRefusal("agent_status", "the %s %s does not exist", role, apperr.Clip(id, 60))
	}
	if err != nil {
		return registry.Agent{}, fmt.Errorf("get agent %s: %w", id, err)
	}
	if a.Status != registry.StatusClaimed {
		return registry.Agent{}, grantRefusal("agent_status", "the %s @%s is %s", role, a.Handle, a.Status)
	}
	return a, nil
}

// activeKey returns the agent's key with thumbprint jkt when it is usable at now.
func activeKey(a registry.Agent, jkt string, now time.Time) (registry.Key, bool) {
	for _, k := range a.Keys {
		if k.JKT == jkt && (k.ExpiresAt.IsZero() || now.Before(k.ExpiresAt)) {
			return k, true
		}
	}
	return registry.Key{}, false
}

// nextHolder resolves the actor token: a key of a registered agent makes that agent the next
// holder; an unregistered key is an instance key of the current holder.
func (s *Service) nextHolder(ctx context.Context, actor *ActorKey, now time.Time) (registry.Agent, bool, error) {
	a, err := s.cfg.Agents.GetAgentByDID(ctx, actor.DID)
	if errors.Is(err, registry.ErrNotFound) {
		return registry.Agent{}, false, nil
	}
	if err != nil {
		return registry.Agent{}, false, fmt.Errorf("get agent of %s: %w", actor.DID, err)
	}
	if a.Status != registry.StatusClaimed {
		return registry.Agent{}, false, grantRefusal("actor_status", "the actor @%s is %s: only a claimed agent can receive authority", a.Handle, a.Status)
	}
	if _, ok := activeKey(a, actor.JKT, now); !ok {
		return registry.Agent{}, false, requestRefusal("actor_token", "the actor token is signed by a rotated-out key of @%s", a.Handle)
	}
	return a, true, nil
}

func didOf(a registry.Agent, jkt string) string {
	for _, k := range a.Keys {
		if k.JKT == jkt {
			return k.DID
		}
	}
	return a.Keys[0].DID
}

// planStart starts a task from a grant token: the grant's own agent, possibly on an instance key.
func (s *Service) planStart(ctx context.Context, req ExchangeRequest, ev *audit.Event) (*Plan, error) {
	now := s.cfg.Now()
	gc := req.Subject.Grant
	ev.PrincipalID, ev.Target = gc.Subject, gc.JTI
	g, err := s.activeGrant(ctx, gc.JTI, now)
	if err != nil {
		return nil, err
	}
	ev.AgentID, ev.ActorType, ev.ActorID = g.AgentID, audit.ActorAgent, g.AgentID
	if req.ProofJKT != gc.Cnf.JKT {
		return nil, grantRefusal("key_mismatch", "the DPoP proof is not signed by the key the grant token is bound to (cnf.jkt)")
	}
	a, err := s.claimedAgent(ctx, g.AgentID, "grant's agent")
	if err != nil {
		return nil, err
	}
	if _, ok := activeKey(a, gc.Cnf.JKT, now); !ok {
		return nil, grantRefusal("key_rotated", "the grant token is bound to a key @%s no longer holds: fetch the grant token again", a.Handle)
	}
	bind, instance, did := req.ProofJKT, "", didOf(a, req.ProofJKT)
	if req.Actor != nil {
		holder, registered, err := s.nextHolder(ctx, req.Actor, now)
		if err != nil {
			return nil, err
		}
		switch {
		case registered && holder.ID != a.ID:
			return nil, requestRefusal("actor_token", "a task starts with the grant's own agent @%s; hand authority to @%s from a task token (sub-delegation)", a.Handle, holder.Handle)
		case registered:
			bind, did = req.Actor.JKT, req.Actor.DID
		default:
			bind, instance = req.Actor.JKT, req.Actor.JKT
		}
	}
	t, err := s.narrowTask(ctx, req, g, now, taskParent{Scopes: g.Scopes, Resources: g.Resources,
		Details: g.AuthorizationDetails, Budget: TaskBudget(g.Limits.Budget), ExpiresAt: g.ExpiresAt,
		what: "the grant", budgetOf: "what the grant allows a task (its calls and task_calls)"})
	if err != nil {
		return nil, err
	}
	t.GrantID, t.Depth, t.PrincipalID, t.AgentID, t.InstanceJKT, t.KeyJKT = g.ID, 1, g.PrincipalID, a.ID, instance, gc.Cnf.JKT
	t.RootID = t.ID
	act := &token.Act{Sub: a.ID, Handle: a.Handle, DID: did, JKT: instance, Txn: t.ID}
	return s.plan(req, ev, g, &t, t, a, did, bind, act, hopStart, earliest(t.ExpiresAt, now.Add(g.Limits.MaxTokenTTL)))
}

// planFromTask sub-delegates a task to another agent, or refreshes a token of the same task.
func (s *Service) planFromTask(ctx context.Context, req ExchangeRequest, ev *audit.Event) (*Plan, error) {
	now := s.cfg.Now()
	ac := req.Subject.Access
	ev.PrincipalID, ev.AgentID, ev.ActorType, ev.ActorID = ac.Subject, ac.ClientID, audit.ActorAgent, ac.ClientID
	if ac.Txn == "" || ac.Act == nil {
		return nil, requestRefusal("subject_token", "the subject token belongs to no task: start a task by exchanging a grant token")
	}
	ev.Target = ac.Txn
	if req.ProofJKT != ac.Cnf.JKT {
		return nil, grantRefusal("key_mismatch", "the DPoP proof is not signed by the key the subject token is bound to (cnf.jkt)")
	}
	if revoked, err := s.cfg.Tokens.IsTokenRevoked(ctx, ac.JTI); err != nil {
		return nil, fmt.Errorf("token status: %w", err)
	} else if revoked {
		return nil, grantRefusal("token_revoked", "the subject token was revoked")
	}
	parent, err := s.cfg.Store.GetTask(ctx, ac.Txn)
	if errors.Is(err, ErrNotFound) {
		return nil, grantRefusal("task_unknown", "task %s does not exist", apperr.Clip(ac.Txn, 60))
	}
	if err != nil {
		return nil, fmt.Errorf("get task %s: %w", ac.Txn, err)
	}
	switch {
	case parent.Status != TaskActive:
		return nil, grantRefusal("task_ended", "task %s is %s", parent.ID, parent.Status)
	case !now.Before(parent.ExpiresAt):
		return nil, grantRefusal("task_expired", "task %s expired at %s", parent.ID, parent.ExpiresAt.UTC().Format(time.RFC3339))
	}
	g, err := s.activeGrant(ctx, parent.GrantID, now)
	if err != nil {
		return nil, err
	}
	for act := ac.Act; act != nil; act = act.Act {
		if _, err := s.claimedAgent(ctx, act.Sub, "agent in the chain"); err != nil {
			return nil, err
		}
	}
	holder, err := s.claimedAgent(ctx, parent.AgentID, "task's agent")
	if err != nil {
		return nil, err
	}
	if keyEnded(holder, ac.Cnf.JKT, now) {
		return nil, grantRefusal("key_revoked", "the subject token is bound to a key @%s no longer holds (revoked or rotated out)", holder.Handle)
	}
	var next registry.Agent
	var registered bool
	if req.Actor != nil {
		if next, registered, err = s.nextHolder(ctx, req.Actor, now); err != nil {
			return nil, err
		}
	}
	if registered && next.ID != holder.ID {
		return s.planDelegate(ctx, req, ev, g, parent, next, now)
	}

	// A fresh token for the same task: within the task's sets, bound to the caller's key or to
	// the actor's (another key of the same agent, or an instance key).
	if req.TaskTTL != 0 || len(req.Budget) > 0 {
		reason := "ttl"
		if req.TaskTTL == 0 {
			reason = "budget"
		}
		return nil, requestRefusal(reason, "task_ttl and budget apply when a task starts; this request refreshes a token of task %s", parent.ID)
	}
	bind, did, instance := req.ProofJKT, ac.Act.DID, ac.Act.JKT
	if req.Actor != nil {
		bind = req.Actor.JKT
		if registered {
			did, instance = req.Actor.DID, ""
		} else {
			instance = req.Actor.JKT
		}
	}
	view := parent
	if err := narrowSets(req, &view, taskParent{Scopes: parent.Scopes, Resources: parent.Resources,
		Details: parent.AuthorizationDetails, what: "task " + parent.ID}); err != nil {
		return nil, err
	}
	act := *ac.Act
	act.DID, act.JKT = did, instance
	return s.plan(req, ev, g, nil, view, holder, did, bind, &act, hopRefresh, earliest(parent.ExpiresAt, now.Add(g.Limits.MaxTokenTTL)))
}

// planDelegate hands a narrower child task to another agent.
func (s *Service) planDelegate(ctx context.Context, req ExchangeRequest, ev *audit.Event, g Grant, parent Task, next registry.Agent, now time.Time) (*Plan, error) {
	ev.AgentID, ev.AgentDID = next.ID, req.Actor.DID
	if !g.Limits.AllowSubdelegation {
		return nil, grantRefusal("subdelegation", "grant %s does not allow sub-delegation", g.ID)
	}
	if parent.Depth+1 > g.Limits.MaxDepth {
		return nil, grantRefusal("depth", "the chain would be %d agents deep; grant %s allows %d", parent.Depth+1, g.ID, g.Limits.MaxDepth)
	}
	t, err := s.narrowTask(ctx, req, g, now, taskParent{Scopes: parent.Scopes, Resources: parent.Resources,
		Details: parent.AuthorizationDetails, Budget: parent.Budget, ExpiresAt: parent.ExpiresAt,
		what: "task " + parent.ID, budgetOf: "task " + parent.ID + "'s budget"})
	if err != nil {
		return nil, err
	}
	t.GrantID, t.ParentID, t.RootID, t.Depth = g.ID, parent.ID, parent.RootID, parent.Depth+1
	t.PrincipalID, t.AgentID, t.KeyJKT = parent.PrincipalID, next.ID, req.Actor.JKT
	act := &token.Act{Sub: next.ID, Handle: next.Handle, DID: req.Actor.DID, Txn: t.ID, Act: req.Subject.Access.Act}
	// The child's token never outlives the token it came from.
	exp := earliest(t.ExpiresAt, now.Add(g.Limits.MaxTokenTTL), time.Unix(req.Subject.Access.Expiry, 0))
	return s.plan(req, ev, g, &t, t, next, req.Actor.DID, req.Actor.JKT, act, hopDelegate, exp)
}

// taskParent is what a new task narrows: the grant's sets, or the parent task's.
type taskParent struct {
	Scopes, Resources []string
	Details           []json.RawMessage
	Budget            map[string]int64
	ExpiresAt         time.Time
	what              string
	budgetOf          string // names Budget in an error
}

// narrowTask builds a new task within p: sets narrowed, lifetime within the grant's max task
// TTL and p's remaining life.
func (s *Service) narrowTask(ctx context.Context, req ExchangeRequest, g Grant, now time.Time, p taskParent) (Task, error) {
	t := Task{ID: ids.New("tsk"), Purpose: req.Purpose, Status: TaskActive, CreatedAt: now.UTC()}
	if len(req.Purpose) > 500 {
		return Task{}, requestRefusal("purpose", "purpose is limited to 500 bytes")
	}
	if err := narrowSets(req, &t, p); err != nil {
		return Task{}, err
	}
	if err := CheckBudget(req.Budget, BudgetOfTask); err != nil {
		return Task{}, narrowed(err)
	}
	if err := s.checkBudgetUpstreams(ctx, req.Budget, p.Budget); err != nil {
		return Task{}, narrowed(err)
	}
	budget, err := NarrowBudget(req.Budget, p.Budget, p.budgetOf)
	if err != nil {
		return Task{}, narrowed(err)
	}
	t.Budget = budget
	remaining := p.ExpiresAt.Sub(now)
	switch {
	case req.TaskTTL < 0:
		return Task{}, requestRefusal("ttl", "task_ttl must be positive")
	case req.TaskTTL > g.Limits.MaxTaskTTL:
		return Task{}, requestRefusal("ttl", "task_ttl %v exceeds grant %s's max task TTL %v", req.TaskTTL, g.ID, g.Limits.MaxTaskTTL)
	case req.TaskTTL > remaining:
		return Task{}, requestRefusal("ttl", "task_ttl %v exceeds what is left of %s (%v)", req.TaskTTL, p.what, remaining.Truncate(time.Second))
	}
	ttl := req.TaskTTL
	if ttl == 0 {
		ttl = g.Limits.MaxTaskTTL
	}
	t.ExpiresAt = earliest(now.Add(ttl), p.ExpiresAt, g.ExpiresAt).UTC()
	return t, nil
}

// narrowSets fills t's scopes, resources and details: the requested ones within p's.
func narrowSets(req ExchangeRequest, t *Task, p taskParent) error {
	var err error
	if t.Scopes, err = NarrowScopes(req.Scopes, p.Scopes); err != nil {
		return narrowed(err)
	}
	if t.Resources, err = NarrowResources(req.Resources, p.Resources); err != nil {
		return narrowed(err)
	}
	if t.AuthorizationDetails, err = NarrowDetails(req.Details, p.Details); err != nil {
		return narrowed(err)
	}
	return nil
}

// plan assembles the claims of the new token from the task view (the new task, or the narrowed
// view of the existing one).
func (s *Service) plan(req ExchangeRequest, ev *audit.Event, g Grant, newTask *Task, view Task, holder registry.Agent,
	did, bind string, act *token.Act, hop string, exp time.Time) (*Plan, error) {
	p := &Plan{NewTask: newTask, Expiry: exp, TaskExpiry: view.ExpiresAt, Claims: token.AccessClaims{
		Subject: g.PrincipalID, Audience: view.Resources, Scope: strings.Join(view.Scopes, " "),
		ClientID: holder.ID, Handle: holder.Handle, DID: did, Txn: act.Txn, Grant: g.ID,
		AuthorizationDetails: view.AuthorizationDetails, Act: act, Cnf: token.Confirmation{JKT: bind},
	}}
	if req.Actor != nil {
		p.Uses = append(p.Uses, req.Actor.Use)
	}
	ev.PrincipalID, ev.AgentID, ev.Target = g.PrincipalID, holder.ID, act.Txn
	p.Claims.Describe(ev)
	switch hop {
	case hopStart:
		ev.Detail = fmt.Sprintf("@%s started task %s under grant %s", holder.Handle, act.Txn, g.ID)
	case hopDelegate:
		ev.Detail = fmt.Sprintf("@%s handed task %s to @%s, %d agents deep", ev.ActorHandle, act.Txn, holder.Handle, act.Depth())
	default:
		ev.Detail = fmt.Sprintf("@%s got a fresh token for task %s", holder.Handle, act.Txn)
	}
	return p, nil
}

// earliest is the first of ts.
func earliest(ts ...time.Time) time.Time {
	e := ts[0]
	for _, t := range ts[1:] {
		if t.Before(e) {
			e = t
		}
	}
	return e
}

// ErrNotLive is wrapped by CheckLive's refusals.
var ErrNotLive = errors.New("authority revoked or ended")

// CheckLive reports whether the authority a token rests on still stands: the token is not
// revoked, every agent of its chain is CLAIMED, the key it is bound to (jkt) is not a revoked or
// rotated-out key of its agent (agentIDs[0]), and its task (when it has one) and that task's
// grant are active and unexpired. Introspection and the server's own resources ask it; remote
// verifiers learn the same from the revocation feed.
func (s *Service) CheckLive(ctx context.Context, jti, jkt string, agentIDs []string, taskID string) error {
	now := s.cfg.Now()
	revoked, err := s.cfg.Tokens.IsTokenRevoked(ctx, jti)
	if err != nil {
		return fmt.Errorf("token status: %w", err)
	}
	if revoked {
		return fmt.Errorf("token %s is revoked: %w", jti, ErrNotLive)
	}
	// Each agent is read once: the chain names the current agent again, and the task's check
	// below needs it too. This runs on every request to our own resources and the proxy.
	agents := make(map[string]registry.Agent, len(agentIDs))
	for i, id := range agentIDs {
		if _, seen := agents[id]; seen {
			continue
		}
		a, err := s.cfg.Agents.GetAgent(ctx, id)
		if errors.Is(err, registry.ErrNotFound) || (err == nil && a.Status != registry.StatusClaimed) {
			return fmt.Errorf("agent %s is %s: %w", id, a.Status, ErrNotLive)
		}
		if err != nil {
			return fmt.Errorf("agent status: %w", err)
		}
		if i == 0 && keyEnded(a, jkt, now) {
			return fmt.Errorf("the key %s the token is bound to is revoked: %w", jkt, ErrNotLive)
		}
		agents[id] = a
	}
	if taskID == "" {
		return nil
	}
	t, err := s.cfg.Store.GetTask(ctx, taskID)
	if errors.Is(err, ErrNotFound) {
		return fmt.Errorf("task %s does not exist: %w", taskID, ErrNotLive)
	}
	if err != nil {
		return fmt.Errorf("task status: %w", err)
	}
	if t.Status != TaskActive || !now.Before(t.ExpiresAt) {
		return fmt.Errorf("task %s has ended: %w", t.ID, ErrNotLive)
	}
	if t.KeyJKT != "" {
		a, ok := agents[t.AgentID]
		if !ok {
			if a, err = s.cfg.Agents.GetAgent(ctx, t.AgentID); err != nil {
				return fmt.Errorf("agent status: %w", err)
			}
		}
		if keyEnded(a, t.KeyJKT, now) {
			return fmt.Errorf("task %s was given to a key that is revoked: %w", t.ID, ErrNotLive)
		}
	}
	if _, err := s.activeGrant(ctx, t.GrantID, now); err != nil {
		if _, ok := apperr.As(err); ok {
			return fmt.Errorf("grant %s is revoked or expired: %w", t.GrantID, ErrNotLive)
		}
		return err
	}
	return nil
}

// ChainAgents lists the agents of a token: its client and every actor of its act chain.
func ChainAgents(c *token.AccessClaims) []string {
	ids := []string{c.ClientID}
	for a := c.Act; a != nil; a = a.Act {
		ids = append(ids, a.Sub)
	}
	return ids
}

// keyEnded reports whether jkt is a key of a that is revoked or rotated out; an instance key (not
// registered) is not an agent key and stands or falls with its task.
func keyEnded(a registry.Agent, jkt string, now time.Time) bool {
	for _, k := range a.Keys {
		if k.JKT == jkt {
			return !k.ExpiresAt.IsZero() && !now.Before(k.ExpiresAt)
		}
	}
	return false
}

// CommitExchange commits an exchange planned by PlanExchange once its token is minted: the new
// task (when the hop starts one) with its task.start event and ev (the token.exchange record),
// or, for a token of an existing task, ev alone; with the single-use ids, in one transaction.
// A grant or parent task revoked or ended since the plan is refused here (revoked_meanwhile):
// a revocation racing an exchange always wins. A used-up id gives dpop.ErrReplay, wrapped.
func (s *Service) CommitExchange(ctx context.Context, plan *Plan, uses []token.SingleUse, ev audit.Event) error {
	if plan.NewTask == nil {
		return s.cfg.Tokens.RecordIssue(ctx, uses, ev)
	}
	t := *plan.NewTask
	err := s.cfg.Store.CreateTask(ctx, t, uses, StartEvent(ev, t), ev)
	if errors.Is(err, ErrNotActive) {
		return apperr.Wrap(err, apperr.Forbidden, "revoked_meanwhile", "the grant or parent task was revoked or ended while this exchange ran")
	}
	return err
}
