package delegation

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"

	"github.com/mandate-dev/mandate/internal/audit"
)

// The trail alone reconstructs authority (the grants and tasks tables are a cache of it): a
// grant.create event carries the grant's terms, a task.start event the task's purpose (in
// audit.Event.Purpose) and its terms, each as the canonical JSON of one of the structs below in
// audit.Event.Terms. Canonical: encoding/json of the struct (fields, and so keys, in lexical
// order; maps are encoded with sorted keys), without HTML escaping, times in RFC 3339 UTC.
// Decode with json.Unmarshal into the struct the event's action names.

// GrantTerms are the Terms of a grant.create event (a grant created directly, or by approving a
// grant request: RequestID is then set): what the principal let the agent do. GrantedBy is the
// person who granted (also the event's ActorID).
type GrantTerms struct {
	AgentID              string            `json:"agent_id"`
	AllowSubdelegation   bool              `json:"allow_subdelegation"`
	AuthorizationDetails []json.RawMessage `json:"authorization_details,omitempty"` // RFC 9396 objects
	Budget               map[string]int64  `json:"budget,omitempty"`                // see budget.go: calls, task_calls, calls:<upstream>, …
	CreatedAt            time.Time         `json:"created_at"`
	ExpiresAt            time.Time         `json:"expires_at"`
	GrantID              string            `json:"grant_id"`
	GrantedBy            string            `json:"granted_by"`
	LifetimeSeconds      int64             `json:"lifetime_seconds"` // ExpiresAt - CreatedAt
	MaxDepth             int               `json:"max_depth"`        // agents in a chain, the grant's own agent counted as 1
	MaxTaskTTLSeconds    int64             `json:"max_task_ttl_seconds"`
	MaxTokenTTLSeconds   int64             `json:"max_token_ttl_seconds"`
	PrincipalID          string            `json:"principal_id"`
	RequestID            string            `json:"request_id,omitempty"` // the grq_… the grant answers
	Resources            []string          `json:"resources"`
	Scopes               []string          `json:"scopes"`
}

// TaskTerms are the Terms of a task.start event: the limits and budget the new task holds, and
// where it sits in its chain. ParentTaskID is empty for a task started from a grant token
// (Depth 1, RootTaskID = TaskID). KeyJKT is the agent key the task was given to; InstanceKey the
// ephemeral instance key its tokens are bound to, when there is one.
type TaskTerms struct {
	AgentID              string            `json:"agent_id"`
	AuthorizationDetails []json.RawMessage `json:"authorization_details,omitempty"`
	Budget               map[string]int64  `json:"budget,omitempty"`
	CreatedAt            time.Time         `json:"created_at"`
	Depth                int               `json:"depth"`
	ExpiresAt            time.Time         `json:"expires_at"`
	GrantID              string            `json:"grant_id"`
	InstanceKey          string            `json:"instance_key,omitempty"`
	KeyJKT               string            `json:"key_jkt,omitempty"`
	LifetimeSeconds      int64             `json:"lifetime_seconds"` // ExpiresAt - CreatedAt
	ParentTaskID         string            `json:"parent_task_id,omitempty"`
	PrincipalID          string            `json:"principal_id"`
	Resources            []string          `json:"resources"`
	RootTaskID           string            `json:"root_task_id"`
	Scopes               []string          `json:"scopes"`
	TaskID               string            `json:"task_id"`
}

// Terms are g's terms, as granted by grantedBy.
func (g Grant) Terms(grantedBy string) GrantTerms {
	l := g.Limits
	return GrantTerms{AgentID: g.AgentID, AllowSubdelegation: l.AllowSubdelegation,
		AuthorizationDetails: g.AuthorizationDetails, Budget: l.Budget, CreatedAt: g.CreatedAt.UTC(),
		ExpiresAt: g.ExpiresAt.UTC(), GrantID: g.ID, GrantedBy: grantedBy,
		LifetimeSeconds: int64(g.ExpiresAt.Sub(g.CreatedAt) / time.Second), MaxDepth: l.MaxDepth,
		MaxTaskTTLSeconds: int64(l.MaxTaskTTL / time.Second), MaxTokenTTLSeconds: int64(l.MaxTokenTTL / time.Second),
		PrincipalID: g.PrincipalID, RequestID: g.RequestID, Resources: nonNil(g.Resources), Scopes: nonNil(g.Scopes)}
}

// Terms are t's terms.
func (t Task) Terms() TaskTerms {
	return TaskTerms{AgentID: t.AgentID, AuthorizationDetails: t.AuthorizationDetails, Budget: t.Budget,
		CreatedAt: t.CreatedAt.UTC(), Depth: t.Depth, ExpiresAt: t.ExpiresAt.UTC(), GrantID: t.GrantID,
		InstanceKey: t.InstanceJKT, KeyJKT: t.KeyJKT, LifetimeSeconds: int64(t.ExpiresAt.Sub(t.CreatedAt) / time.Second),
		ParentTaskID: t.ParentID, PrincipalID: t.PrincipalID, Resources: nonNil(t.Resources), RootTaskID: t.RootID,
		Scopes: nonNil(t.Scopes), TaskID: t.ID}
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// canonicalTerms is the canonical JSON of v (GrantTerms or TaskTerms), as audit.Event.Terms.
func canonicalTerms(v any) json.RawMessage {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		// The terms are strings, numbers, times and already-validated JSON objects.
		panic(fmt.Sprintf("delegation: encode terms: %v", err))
	}
	return json.RawMessage(bytes.TrimSuffix(b.Bytes(), []byte{'\n'}))
}

// StartEvent is the task.start record of t, begun by the request that ev records (its time,
// request and actor): the task's purpose and terms, so the trail alone says what authority the
// task held.
func StartEvent(ev audit.Event, t Task) audit.Event {
	start := audit.New(ev.Time, ev.RequestID, ActionTaskStart)
	start.ActorType, start.ActorID, start.ActorHandle = ev.ActorType, ev.ActorID, ev.ActorHandle
	start.PrincipalID, start.AgentID, start.AgentDID, start.KeyJKT = t.PrincipalID, t.AgentID, ev.AgentDID, t.KeyJKT
	start.InstanceKey, start.TaskID, start.ParentTaskID, start.GrantID = t.InstanceJKT, t.ID, t.ParentID, t.GrantID
	start.Chain, start.Scopes, start.Resources, start.Target = ev.Chain, t.Scopes, t.Resources, t.ID
	start.Purpose, start.Terms = t.Purpose, canonicalTerms(t.Terms())
	start.Detail = fmt.Sprintf("task %s started at depth %d under grant %s, until %s", t.ID, t.Depth, t.GrantID,
		t.ExpiresAt.UTC().Format(time.RFC3339))
	return start
}

// Cascade reasons: the Reason of the event of a task that ended because something it rested on
// ended or was revoked. The event's Cause is that thing's id.
const (
	ReasonCascadeTask  = "cascade_task"  // a task above it in the chain (Cause: its id)
	ReasonCascadeGrant = "cascade_grant" // its grant was revoked (Cause: gr_…)
	ReasonCascadeAgent = "cascade_agent" // an agent of its chain was revoked (Cause: agt_…)
	ReasonCascadeKey   = "cascade_key"   // the agent key it was given to was revoked (Cause: the key's did:key)
)

// CascadeEvent is the record of task t, ended with status by a cascade from cause (the id of the
// task, grant, agent or key whose end reached it; reason one of the ReasonCascade words). by is
// the record of the change that cascaded: the new event has its time, request and actor. Stores
// append one per task a cascade ends, in the transaction of the change.
func CascadeEvent(by audit.Event, t Task, status TaskStatus, cause, reason string) audit.Event {
	action, verb := ActionTaskEnd, "ended"
	if status == TaskRevoked {
		action, verb = ActionTaskRevoke, "revoked"
	}
	ev := audit.New(by.Time, by.RequestID, action)
	ev.ClientRequestID, ev.Addr, ev.UserAgent = by.ClientRequestID, by.Addr, by.UserAgent
	ev.ActorType, ev.ActorID, ev.ActorHandle = by.ActorType, by.ActorID, by.ActorHandle
	ev.PrincipalID, ev.AgentID, ev.KeyJKT, ev.InstanceKey = t.PrincipalID, t.AgentID, t.KeyJKT, t.InstanceJKT
	ev.TaskID, ev.ParentTaskID, ev.GrantID, ev.Target = t.ID, t.ParentID, t.GrantID, t.ID
	ev.Cause, ev.Reason = cause, reason
	ev.Detail = fmt.Sprintf("task %s %s: %s, which it rested on, was %s", t.ID, verb, cause, verb)
	return ev
}
