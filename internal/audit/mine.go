package audit

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"time"
)

// Account is a principal's own account: what agents did on their behalf in a window, grouped by
// agent and task.
type Account struct {
	PrincipalID string        `json:"principal_id"`
	Since       time.Time     `json:"since"`
	Until       time.Time     `json:"until"`
	Events      int           `json:"events"`              // events read
	Truncated   bool          `json:"truncated,omitempty"` // more than MaxReportEvents: the oldest were not read
	Agents      []AgentReport `json:"agents"`
}

// MaxReportEvents bounds what one report reads; past it the report says it is truncated.
const MaxReportEvents = 100_000

// AgentReport is what one agent did.
type AgentReport struct {
	AgentID     string       `json:"agent_id"`
	Handle      string       `json:"handle,omitempty"`
	Calls       int          `json:"calls"`    // proxied calls (completed or not)
	Refusals    int          `json:"refusals"` // denied events
	Tasks       []TaskReport `json:"tasks"`
	Revocations []Revocation `json:"revocations,omitempty"` // of the agent itself, its keys and its grants
}

// TaskReport is what one task of an agent did. TaskID "" gathers the agent's events outside any
// task.
type TaskReport struct {
	TaskID      string          `json:"task_id,omitempty"`
	Purpose     string          `json:"purpose,omitempty"`
	First       time.Time       `json:"first"`
	Last        time.Time       `json:"last"`
	Events      int             `json:"events"`            // every event of the task (or outside any) in the window
	Actions     []string        `json:"actions,omitempty"` // their actions, each once, in the order first met
	Calls       []UpstreamCalls `json:"calls,omitempty"`
	Refusals    []Refusal       `json:"refusals,omitempty"`
	Revocations []Revocation    `json:"revocations,omitempty"`
}

// UpstreamCalls counts one task's proxied calls to one upstream by how they ended.
type UpstreamCalls struct {
	Upstream string `json:"upstream"`
	Calls    int    `json:"calls"`
	Success  int    `json:"success"`
	Failure  int    `json:"failure"`
	Denied   int    `json:"denied"`
	Unknown  int    `json:"unknown,omitempty"` // recorded before forwarding, no completion recorded
}

// Refusal counts refusals of one action for one reason.
type Refusal struct {
	Action string    `json:"action"`
	Reason string    `json:"reason"`
	Count  int       `json:"count"`
	Last   time.Time `json:"last"`
	Detail string    `json:"detail,omitempty"` // the last one's sentence
}

// Revocation is one revocation or end of a task, grant, agent or key.
type Revocation struct {
	Time    time.Time `json:"time"`
	Action  string    `json:"action"`
	Target  string    `json:"target,omitempty"`
	ActorID string    `json:"actor_id,omitempty"`
	Cause   string    `json:"cause,omitempty"`
	Detail  string    `json:"detail,omitempty"`
	EventID string    `json:"event_id"`
}

var revocationActions = map[string]bool{"agent.revoke": true, "agent.revoke_key": true, "task.revoke": true, "task.end": true, "grant.revoke": true}

// Summarize reads the principal's events from since to until and groups them. Task purposes
// come from each task's task.start event, read even when it is older than since.
func Summarize(ctx context.Context, r Reader, principalID string, since, until time.Time) (*Account, error) {
	rep := &Account{PrincipalID: principalID, Since: since.UTC(), Until: until.UTC(), Agents: []AgentReport{}}
	var evs []Event
	f := Filter{PrincipalID: principalID, Since: since, Until: until, Limit: MaxPage}
	for {
		page, err := r.ListEvents(ctx, f)
		if err != nil {
			return nil, fmt.Errorf("report for %s: %w", principalID, err)
		}
		evs = append(evs, page...)
		if len(page) < MaxPage {
			break
		}
		if len(evs) >= MaxReportEvents {
			rep.Truncated = true
			break
		}
		f.Before = page[len(page)-1].Seq
	}
	rep.Events = len(evs)
	// Oldest first from here on.
	sort.Slice(evs, func(i, j int) bool { return evs[i].Seq < evs[j].Seq })

	completed := map[string]bool{} // pending proxy.call ids that have a completion
	for _, e := range evs {
		if e.Action == "proxy.call" && e.Outcome != OutcomePending && e.Cause != "" {
			completed[e.Cause] = true
		}
	}
	agents := map[string]*AgentReport{}
	tasks := map[[2]string]*TaskReport{}
	var order []string
	agentOf := func(e Event) *AgentReport {
		a := agents[e.AgentID]
		if a == nil {
			a = &AgentReport{AgentID: e.AgentID}
			agents[e.AgentID] = a
			order = append(order, e.AgentID)
		}
		if a.Handle == "" {
			a.Handle = handleOf(e)
		}
		return a
	}
	taskOf := func(e Event) *TaskReport {
		k := [2]string{e.AgentID, e.TaskID}
		t := tasks[k]
		if t == nil {
			t = &TaskReport{TaskID: e.TaskID, First: e.Time}
			tasks[k] = t
		}
		if e.Purpose != "" && e.Action == "task.start" {
			t.Purpose = e.Purpose
		}
		if e.Time.Before(t.First) {
			t.First = e.Time
		}
		if e.Time.After(t.Last) {
			t.Last = e.Time
		}
		t.Events++
		if !slices.Contains(t.Actions, e.Action) {
			t.Actions = append(t.Actions, e.Action)
		}
		return t
	}
	for _, e := range evs {
		if e.AgentID == "" {
			continue
		}
		a := agentOf(e)
		switch {
		case revocationActions[e.Action] && e.Outcome == OutcomeSuccess:
			rv := Revocation{Time: e.Time, Action: e.Action, Target: e.Target, ActorID: e.ActorID, Cause: e.Cause, Detail: e.Detail, EventID: e.ID}
			if e.TaskID != "" || e.Action == "task.end" || e.Action == "task.revoke" {
				if e.TaskID == "" {
					e.TaskID = e.Target
				}
				t := taskOf(e)
				t.Revocations = append(t.Revocations, rv)
			} else {
				a.Revocations = append(a.Revocations, rv)
			}
			continue
		}
		t := taskOf(e)
		if e.Action == "proxy.call" {
			if e.Outcome == OutcomePending && completed[e.ID] {
				continue // its completion counts it
			}
			a.Calls++
			uc := upstreamOf(t, e.Upstream())
			uc.Calls++
			switch e.Outcome {
			case OutcomeSuccess:
				uc.Success++
			case OutcomeFailure:
				uc.Failure++
			case OutcomeDenied:
				uc.Denied++
			case OutcomePending:
				uc.Unknown++
			}
		}
		if e.Outcome == OutcomeDenied {
			a.Refusals++
			addRefusal(t, e)
		}
	}
	// Purposes of tasks whose start is older than the window.
	for k, t := range tasks {
		if t.Purpose != "" || k[1] == "" {
			continue
		}
		start, err := r.ListEvents(ctx, Filter{Action: "task.start", TaskID: k[1], Limit: 1})
		if err != nil {
			return nil, fmt.Errorf("report for %s: %w", principalID, err)
		}
		if len(start) > 0 {
			t.Purpose = start[0].Purpose
		}
	}
	for _, id := range order {
		a := agents[id]
		for k, t := range tasks {
			if k[0] == id {
				a.Tasks = append(a.Tasks, *t)
			}
		}
		sort.Slice(a.Tasks, func(i, j int) bool { return a.Tasks[i].First.Before(a.Tasks[j].First) })
		rep.Agents = append(rep.Agents, *a)
	}
	sort.SliceStable(rep.Agents, func(i, j int) bool { return rep.Agents[i].Handle < rep.Agents[j].Handle })
	return rep, nil
}

func handleOf(e Event) string {
	if e.ActorType == ActorAgent && e.ActorID == e.AgentID && e.ActorHandle != "" {
		return e.ActorHandle
	}
	if n := len(e.Chain); n > 0 && e.Chain[n-1].AgentID == e.AgentID {
		return e.Chain[n-1].Handle
	}
	return ""
}

func upstreamOf(t *TaskReport, name string) *UpstreamCalls {
	for i := range t.Calls {
		if t.Calls[i].Upstream == name {
			return &t.Calls[i]
		}
	}
	t.Calls = append(t.Calls, UpstreamCalls{Upstream: name})
	return &t.Calls[len(t.Calls)-1]
}

func addRefusal(t *TaskReport, e Event) {
	for i := range t.Refusals {
		if r := &t.Refusals[i]; r.Action == e.Action && r.Reason == e.Reason {
			r.Count++
			r.Last, r.Detail = e.Time, e.Detail
			return
		}
	}
	t.Refusals = append(t.Refusals, Refusal{Action: e.Action, Reason: e.Reason, Count: 1, Last: e.Time, Detail: e.Detail})
}
