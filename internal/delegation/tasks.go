package delegation

import (
	"context"
	"errors"
	"fmt"

	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/principal"
)

// visibleTask returns a task by may see: its principal, the owner of its agent, or an admin.
func (s *Service) visibleTask(ctx context.Context, by principal.User, id string) (Task, error) {
	t, err := s.cfg.Store.GetTask(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return Task{}, apperr.Wrap(err, apperr.NotFound, "not_found", "no task %q: see mandate task list", apperr.Clip(id, 80))
	}
	if err != nil {
		return Task{}, fmt.Errorf("get task %s: %w", id, err)
	}
	if by.Admin || t.PrincipalID == by.ID {
		return t, nil
	}
	if a, err := s.cfg.Agents.GetAgent(ctx, t.AgentID); err == nil && a.OwnerID == by.ID {
		return t, nil
	}
	return Task{}, apperr.New(apperr.NotFound, "not_found", "no task %q: see mandate task list", apperr.Clip(id, 80))
}

// GetTask shows a task.
func (s *Service) GetTask(ctx context.Context, by principal.User, id string) (Task, error) {
	return s.visibleTask(ctx, by, id)
}

// ListTasks lists the tasks on by's behalf (all, for an admin), optionally of one grant.
func (s *Service) ListTasks(ctx context.Context, by principal.User, grantID string) ([]Task, error) {
	p := by.ID
	if by.Admin {
		p = ""
	}
	return s.cfg.Store.ListTasks(ctx, p, "", grantID)
}

// EndTask completes (revoke=false) or revokes a task and every task under it, as a person.
func (s *Service) EndTask(ctx context.Context, requestID string, by principal.User, id string, revoke bool) (Task, error) {
	t, err := s.visibleTask(ctx, by, id)
	if err != nil {
		return Task{}, err
	}
	ev := audit.New(s.cfg.Now(), requestID, ActionTaskEnd)
	ev.ActorType, ev.ActorID, ev.ActorHandle = audit.ActorUser, by.ID, by.Name
	return s.endTask(ctx, t, revoke, ev)
}

// EndTaskAsAgent completes a task of the calling agent (and every task under it).
func (s *Service) EndTaskAsAgent(ctx context.Context, requestID, agentID, id string) (Task, error) {
	t, err := s.cfg.Store.GetTask(ctx, id)
	if errors.Is(err, ErrNotFound) || (err == nil && t.AgentID != agentID) {
		return Task{}, apperr.New(apperr.NotFound, "not_found", "no task %q of this agent", apperr.Clip(id, 80))
	}
	if err != nil {
		return Task{}, fmt.Errorf("get task %s: %w", id, err)
	}
	ev := audit.New(s.cfg.Now(), requestID, ActionTaskEnd)
	ev.ActorType, ev.ActorID = audit.ActorAgent, agentID
	return s.endTask(ctx, t, false, ev)
}

func (s *Service) endTask(ctx context.Context, t Task, revoke bool, ev audit.Event) (Task, error) {
	status := TaskCompleted
	if revoke {
		status, ev.Action = TaskRevoked, ActionTaskRevoke
	}
	ev.PrincipalID, ev.AgentID, ev.Target = t.PrincipalID, t.AgentID, t.ID
	ev.TaskID, ev.ParentTaskID, ev.GrantID, ev.KeyJKT, ev.InstanceKey = t.ID, t.ParentID, t.GrantID, t.KeyJKT, t.InstanceJKT
	ended, err := s.cfg.Store.EndTask(ctx, t.ID, status, s.cfg.Now().UTC(), ev)
	if errors.Is(err, ErrNotActive) {
		return t, nil // ending twice is not an error
	}
	if err != nil {
		return Task{}, fmt.Errorf("end task %s: %w", t.ID, err)
	}
	return ended, nil
}
