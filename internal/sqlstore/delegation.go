package sqlstore

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/delegation"
	"github.com/mandate-dev/mandate/internal/token"
)

const (
	grantCols = `id, principal_id, agent_id, scopes, resources, authorization_details, max_task_ttl,
	max_token_ttl, max_depth, allow_subdelegation, budget, status, created_at, expires_at, revoked_at, request_id`
	requestCols = `id, agent_id, owner_id, scopes, resources, authorization_details, max_task_ttl,
	max_token_ttl, max_depth, allow_subdelegation, budget, reason, status, grant_id, created_at, decided_at,
	expires_at, last_polled_at`
	taskCols = `id, grant_id, parent_id, root_id, depth, principal_id, agent_id, instance_jkt, purpose, scopes,
	resources, authorization_details, budget, status, created_at, expires_at, ended_at, key_jkt`
)

// CreateGrant stores g with ev (Target defaults to g.ID, PrincipalID and AgentID to g's), in one
// transaction. When g.RequestID is set the request is marked approved (GrantID g.ID, DecidedAt
// g.CreatedAt) in the same transaction: delegation.ErrNotFound if there is no such request,
// delegation.ErrNotActive if it is not pending or has lapsed at g.CreatedAt. An unknown
// principal or agent gives delegation.ErrNotFound.
func (s *Store) CreateGrant(ctx context.Context, g delegation.Grant, ev audit.Event) error {
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		if g.RequestID != "" {
			err := tx.QueryRowContext(ctx, `UPDATE grant_requests SET status = $2, grant_id = $3, decided_at = $4
				WHERE id = $1 AND status = $5 AND (expires_at = 0 OR expires_at > $4)
				RETURNING id`,
				g.RequestID, string(delegation.RequestApproved), g.ID, nanos(g.CreatedAt),
				string(delegation.RequestPending)).Scan(new(string))
			if errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("request %s: %w", g.RequestID, whyNot(ctx, tx, "grant_requests", g.RequestID))
			}
			if err != nil {
				return fmt.Errorf("approve request %s: %w", g.RequestID, err)
			}
		}
		a, err := encodeAuthority(g.Scopes, g.Resources, g.AuthorizationDetails, g.Limits.Budget)
		if err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO grants (`+grantCols+`)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)`,
			g.ID, g.PrincipalID, g.AgentID, a.scopes, a.resources, a.details, int64(g.Limits.MaxTaskTTL),
			int64(g.Limits.MaxTokenTTL), g.Limits.MaxDepth, g.Limits.AllowSubdelegation, a.budget, string(g.Status),
			nanos(g.CreatedAt), nanos(g.ExpiresAt), nanos(g.RevokedAt), nullString(g.RequestID))
		if foreignKeyViolation(err) {
			return fmt.Errorf("principal %s or agent %s: %w", g.PrincipalID, g.AgentID, delegation.ErrNotFound)
		}
		if err != nil {
			return err
		}
		defaultDelegationEvent(&ev, g.ID, g.PrincipalID, g.AgentID)
		return appendSuccess(ctx, tx, &ev)
	})
	if err != nil {
		return fmt.Errorf("create grant %s: %w", g.ID, err)
	}
	return nil
}

// defaultDelegationEvent names what an event is about where the caller left it out.
func defaultDelegationEvent(ev *audit.Event, target, principalID, agentID string) {
	if ev.Target == "" {
		ev.Target = target
	}
	if ev.PrincipalID == "" {
		ev.PrincipalID = principalID
	}
	if ev.AgentID == "" {
		ev.AgentID = agentID
	}
}

// whyNot explains, in a write transaction, why a conditional update of the row id of table
// changed nothing: delegation.ErrNotFound if there is no such row, else delegation.ErrNotActive.
// table is one of the store's constants, never input.
func whyNot(ctx context.Context, tx *sql.Tx, table, id string) error {
	err := tx.QueryRowContext(ctx, `SELECT id FROM `+table+` WHERE id = $1`, id).Scan(new(string))
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return delegation.ErrNotFound
	case err != nil:
		return err
	}
	return delegation.ErrNotActive
}

// GetGrant finds a grant by id.
func (s *Store) GetGrant(ctx context.Context, id string) (delegation.Grant, error) {
	g, err := scanGrant(s.rdb.QueryRowContext(ctx, `SELECT `+grantCols+` FROM grants WHERE id = $1`, id))
	if errors.Is(err, sql.ErrNoRows) {
		err = delegation.ErrNotFound
	}
	if err != nil {
		return delegation.Grant{}, fmt.Errorf("get grant %s: %w", id, err)
	}
	return g, nil
}

// ListGrants returns the grants of the principal to the agent ("" = any), newest first.
func (s *Store) ListGrants(ctx context.Context, principalID, agentID string) ([]delegation.Grant, error) {
	where, args := filters([]filter{{"principal_id", principalID}, {"agent_id", agentID}})
	rows, err := s.rdb.QueryContext(ctx, `SELECT `+grantCols+` FROM grants`+where+`
		ORDER BY created_at DESC, id`, args...)
	if err != nil {
		return nil, fmt.Errorf("list grants: %w", err)
	}
	grants, err := scanAll(rows, scanGrant)
	if err != nil {
		return nil, fmt.Errorf("list grants: %w", err)
	}
	return grants, nil
}

// RevokeGrant marks an active grant revoked at at and revokes every active task under it (its
// tasks and, through ParentID, their descendants), appends a revocation log entry for the grant
// and for each task it revoked (with their ExpiresAt), ev (Target defaults to id, PrincipalID
// and AgentID to the grant's), and a task.revoke event per task (Cause: the grant), in one
// transaction. delegation.ErrNotActive if the
// grant is already revoked, delegation.ErrNotFound if there is none.
func (s *Store) RevokeGrant(ctx context.Context, id string, at time.Time, ev audit.Event) (delegation.Grant, error) {
	var g delegation.Grant
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		var err error
		g, err = scanGrant(tx.QueryRowContext(ctx, `UPDATE grants SET status = $2, revoked_at = $3
			WHERE id = $1 AND status = $4 RETURNING `+grantCols,
			id, string(delegation.GrantRevoked), nanos(at), string(delegation.GrantActive)))
		if errors.Is(err, sql.ErrNoRows) {
			return whyNot(ctx, tx, "grants", id)
		}
		if err != nil {
			return err
		}
		if err := appendRevocation(ctx, tx, token.KindGrant, g.ID, g.ExpiresAt, at); err != nil {
			return err
		}
		defaultDelegationEvent(&ev, g.ID, g.PrincipalID, g.AgentID)
		if err := appendSuccess(ctx, tx, &ev); err != nil {
			return err
		}
		return endTasks(ctx, tx, delegation.TaskRevoked, at, ev, g.ID, delegation.ReasonCascadeGrant, `grant_id = $4`, id)
	})
	if err != nil {
		return delegation.Grant{}, fmt.Errorf("revoke grant %s: %w", id, err)
	}
	return g, nil
}

// endTasks ends, with status at at, every active task in the trees rooted at the tasks that seed
// selects (a condition on $4, $5, … = args), and appends for each, in the order of their depth
// and creation, a revocation log entry and the event of its end by cascade from cause
// (delegation.CascadeEvent of by, the change's own event, already appended). The walk goes
// through tasks that have already ended, so no active descendant is missed.
func endTasks(ctx context.Context, tx *sql.Tx, status delegation.TaskStatus, at time.Time, by audit.Event,
	cause, reason, seed string, args ...any) error {
	rows, err := tx.QueryContext(ctx, `WITH RECURSIVE tree (id) AS (
			SELECT id FROM tasks WHERE `+seed+`
			UNION
			SELECT t.id FROM tasks t JOIN tree ON t.parent_id = tree.id
		)
		UPDATE tasks SET status = $1, ended_at = $2
		WHERE id IN (SELECT id FROM tree) AND status = $3
		RETURNING `+taskCols,
		append([]any{string(status), nanos(at), string(delegation.TaskActive)}, args...)...)
	if err != nil {
		return fmt.Errorf("end tasks: %w", err)
	}
	all, err := scanAll(rows, scanTask)
	if err != nil {
		return fmt.Errorf("end tasks: %w", err)
	}
	slices.SortFunc(all, func(a, b delegation.Task) int {
		return cmp.Or(cmp.Compare(a.Depth, b.Depth), a.CreatedAt.Compare(b.CreatedAt), strings.Compare(a.ID, b.ID))
	})
	for _, t := range all {
		if err := appendRevocation(ctx, tx, token.KindTask, t.ID, t.ExpiresAt, at); err != nil {
			return err
		}
		ev := delegation.CascadeEvent(by, t, status, cause, reason)
		if err := appendSuccess(ctx, tx, &ev); err != nil {
			return err
		}
	}
	return nil
}

// CreateGrantRequest stores r with ev (Target defaults to r.ID, PrincipalID to r.OwnerID,
// AgentID to r.AgentID). An unknown agent or owner gives delegation.ErrNotFound.
func (s *Store) CreateGrantRequest(ctx context.Context, r delegation.GrantRequest, ev audit.Event) error {
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		a, err := encodeAuthority(r.Scopes, r.Resources, r.AuthorizationDetails, r.Limits.Budget)
		if err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO grant_requests (`+requestCols+`)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)`,
			r.ID, r.AgentID, r.OwnerID, a.scopes, a.resources, a.details, int64(r.Limits.MaxTaskTTL),
			int64(r.Limits.MaxTokenTTL), r.Limits.MaxDepth, r.Limits.AllowSubdelegation, a.budget, r.Reason,
			string(r.Status), nullString(r.GrantID), nanos(r.CreatedAt), nanos(r.DecidedAt), nanos(r.ExpiresAt),
			nanos(r.LastPolledAt))
		if foreignKeyViolation(err) {
			return fmt.Errorf("agent %s or owner %s: %w", r.AgentID, r.OwnerID, delegation.ErrNotFound)
		}
		if err != nil {
			return err
		}
		defaultDelegationEvent(&ev, r.ID, r.OwnerID, r.AgentID)
		return appendSuccess(ctx, tx, &ev)
	})
	if err != nil {
		return fmt.Errorf("create grant request %s: %w", r.ID, err)
	}
	return nil
}

// GetGrantRequest finds a grant request by id.
func (s *Store) GetGrantRequest(ctx context.Context, id string) (delegation.GrantRequest, error) {
	r, err := getGrantRequest(ctx, s.rdb, id)
	if err != nil {
		return delegation.GrantRequest{}, fmt.Errorf("get grant request %s: %w", id, err)
	}
	return r, nil
}

func getGrantRequest(ctx context.Context, q querier, id string) (delegation.GrantRequest, error) {
	r, err := scanGrantRequest(q.QueryRowContext(ctx, `SELECT `+requestCols+` FROM grant_requests WHERE id = $1`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return delegation.GrantRequest{}, delegation.ErrNotFound
	}
	return r, err
}

// ListGrantRequests returns the requests to the owner with the status ("" = any), newest first.
// Status is the stored one: a pending request past its ExpiresAt is listed as pending.
func (s *Store) ListGrantRequests(ctx context.Context, ownerID string, status delegation.RequestStatus) ([]delegation.GrantRequest, error) {
	where, args := filters([]filter{{"owner_id", ownerID}, {"status", string(status)}})
	rows, err := s.rdb.QueryContext(ctx, `SELECT `+requestCols+` FROM grant_requests`+where+`
		ORDER BY created_at DESC, id`, args...)
	if err != nil {
		return nil, fmt.Errorf("list grant requests: %w", err)
	}
	reqs, err := scanAll(rows, scanGrantRequest)
	if err != nil {
		return nil, fmt.Errorf("list grant requests: %w", err)
	}
	return reqs, nil
}

// DenyGrantRequest marks a pending request denied at at, with ev (Target defaults to id,
// PrincipalID to the owner, AgentID to the agent). delegation.ErrNotActive if the request is not
// pending or has lapsed at at, delegation.ErrNotFound if there is none.
func (s *Store) DenyGrantRequest(ctx context.Context, id string, at time.Time, ev audit.Event) (delegation.GrantRequest, error) {
	var r delegation.GrantRequest
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		var err error
		r, err = scanGrantRequest(tx.QueryRowContext(ctx, `UPDATE grant_requests SET status = $2, decided_at = $3
			WHERE id = $1 AND status = $4 AND (expires_at = 0 OR expires_at > $3)
			RETURNING `+requestCols,
			id, string(delegation.RequestDenied), nanos(at), string(delegation.RequestPending)))
		if errors.Is(err, sql.ErrNoRows) {
			return whyNot(ctx, tx, "grant_requests", id)
		}
		if err != nil {
			return err
		}
		defaultDelegationEvent(&ev, r.ID, r.OwnerID, r.AgentID)
		return appendSuccess(ctx, tx, &ev)
	})
	if err != nil {
		return delegation.GrantRequest{}, fmt.Errorf("deny grant request %s: %w", id, err)
	}
	return r, nil
}

// TouchGrantRequest sets LastPolledAt to at and returns the request as it was before. It runs
// in a write transaction (without an audit event) so that of concurrent polls each sees the one
// before it.
func (s *Store) TouchGrantRequest(ctx context.Context, id string, at time.Time) (delegation.GrantRequest, error) {
	var r delegation.GrantRequest
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		var err error
		if r, err = getGrantRequest(ctx, tx, id); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `UPDATE grant_requests SET last_polled_at = $2 WHERE id = $1`, id, nanos(at))
		return err
	})
	if err != nil {
		return delegation.GrantRequest{}, fmt.Errorf("touch grant request %s: %w", id, err)
	}
	return r, nil
}

// CreateTask stores t, uses up the single-use ids (dpop.ErrReplay, wrapped, if one was used
// before) and appends evs in order (Target defaults to t.ID, PrincipalID and AgentID to t's),
// in one transaction; on any error nothing is written. delegation.ErrNotFound if the grant, the parent
// task (when ParentID is set), the principal or the agent does not exist; delegation.ErrNotActive
// if the grant is revoked or the parent has ended: checked here, under the write lock, so that a
// task cannot start under a grant or parent whose revocation cascade has already run.
//
// It is committed with whatever else is being written (see groupcommit.go and taskrows.go): an
// exchange costs no commit of its own, and on PostgreSQL no round trip of its own.
func (s *Store) CreateTask(ctx context.Context, t delegation.Task, uses []token.SingleUse, evs ...audit.Event) error {
	a, err := encodeAuthority(t.Scopes, t.Resources, t.AuthorizationDetails, t.Budget)
	if err != nil {
		return fmt.Errorf("create task %s: %w", t.ID, err)
	}
	for i := range evs {
		defaultDelegationEvent(&evs[i], t.ID, t.PrincipalID, t.AgentID)
		stamp(ctx, &evs[i])
	}
	err = s.submitSimple(ctx, &simpleWrite{uses: uses, evs: evs, success: true, task: &taskWrite{t: t, a: a}})
	if err != nil {
		return fmt.Errorf("create task %s: %w", t.ID, err)
	}
	return nil
}

// requireActive checks, in a write transaction, that the row id of table exists
// (delegation.ErrNotFound) and has the status active (delegation.ErrNotActive). table is one of
// the store's constants, never input; what names it in errors.
func requireActive(ctx context.Context, tx *sql.Tx, table, what, id, active string) error {
	var status string
	err := tx.QueryRowContext(ctx, `SELECT status FROM `+table+` WHERE id = $1`, id).Scan(&status)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("%s %s: %w", what, id, delegation.ErrNotFound)
	case err != nil:
		return fmt.Errorf("%s %s: %w", what, id, err)
	}
	return activeStatus(what, id, status, active)
}

// GetTask finds a task by id.
func (s *Store) GetTask(ctx context.Context, id string) (delegation.Task, error) {
	t, err := scanTask(s.rdb.QueryRowContext(ctx, `SELECT `+taskCols+` FROM tasks WHERE id = $1`, id))
	if errors.Is(err, sql.ErrNoRows) {
		err = delegation.ErrNotFound
	}
	if err != nil {
		return delegation.Task{}, fmt.Errorf("get task %s: %w", id, err)
	}
	return t, nil
}

// ListTasks returns the tasks of the principal, agent and grant ("" = any), newest first.
func (s *Store) ListTasks(ctx context.Context, principalID, agentID, grantID string) ([]delegation.Task, error) {
	where, args := filters([]filter{{"principal_id", principalID}, {"agent_id", agentID}, {"grant_id", grantID}})
	rows, err := s.rdb.QueryContext(ctx, `SELECT `+taskCols+` FROM tasks`+where+`
		ORDER BY created_at DESC, id`, args...)
	if err != nil {
		return nil, fmt.Errorf("list tasks: %w", err)
	}
	tasks, err := scanAll(rows, scanTask)
	if err != nil {
		return nil, fmt.Errorf("list tasks: %w", err)
	}
	return tasks, nil
}

// EndTask sets an active task and every active descendant (through ParentID) to status
// (completed or revoked) at at, appends a revocation log entry for each (the task first, then by
// depth), ev (Target defaults to id, PrincipalID and AgentID to the task's), and an event per
// descendant (Cause: the task, or ev.Cause when ev has one, with ev.Reason), in one
// transaction. It returns the task as ended. delegation.ErrNotActive if the task is not active,
// delegation.ErrNotFound if there is none.
func (s *Store) EndTask(ctx context.Context, id string, status delegation.TaskStatus, at time.Time, ev audit.Event) (delegation.Task, error) {
	if status != delegation.TaskCompleted && status != delegation.TaskRevoked {
		return delegation.Task{}, fmt.Errorf("end task %s: status %q is neither %s nor %s",
			id, status, delegation.TaskCompleted, delegation.TaskRevoked)
	}
	var t delegation.Task
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		var err error
		t, err = scanTask(tx.QueryRowContext(ctx, `UPDATE tasks SET status = $2, ended_at = $3
			WHERE id = $1 AND status = $4 RETURNING `+taskCols,
			id, string(status), nanos(at), string(delegation.TaskActive)))
		if errors.Is(err, sql.ErrNoRows) {
			return whyNot(ctx, tx, "tasks", id)
		}
		if err != nil {
			return err
		}
		if err := appendRevocation(ctx, tx, token.KindTask, t.ID, t.ExpiresAt, at); err != nil {
			return err
		}
		defaultDelegationEvent(&ev, t.ID, t.PrincipalID, t.AgentID)
		if err := appendSuccess(ctx, tx, &ev); err != nil {
			return err
		}
		// The tasks under it end with it; the cause of a task that itself ended by a cascade
		// (its key's revocation) is that cascade's.
		cause, reason := t.ID, delegation.ReasonCascadeTask
		if ev.Cause != "" {
			cause, reason = ev.Cause, ev.Reason
		}
		return endTasks(ctx, tx, status, at, ev, cause, reason, `parent_id = $4`, id)
	})
	if err != nil {
		return delegation.Task{}, fmt.Errorf("end task %s: %w", id, err)
	}
	return t, nil
}

// filter is one optional equality condition of a list: skipped when value is "".
type filter struct{ col, value string }

// filters returns the WHERE clause ("" when every value is empty) and its arguments.
func filters(fs []filter) (string, []any) {
	var conds []string
	var args []any
	for _, f := range fs {
		if f.value != "" {
			args = append(args, f.value)
			conds = append(conds, f.col+` = $`+strconv.Itoa(len(args)))
		}
	}
	if len(conds) == 0 {
		return "", nil
	}
	return ` WHERE ` + strings.Join(conds, ` AND `), args
}

// scanAll reads every row with scan and closes rows.
func scanAll[T any](rows *sql.Rows, scan func(rowScanner) (T, error)) ([]T, error) {
	defer rows.Close()
	var all []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		all = append(all, v)
	}
	return all, rows.Err()
}

func scanGrant(r rowScanner) (delegation.Grant, error) {
	var g delegation.Grant
	var a authority
	var status string
	var requestID sql.NullString
	var taskTTL, tokenTTL, created, expires, revoked int64
	err := r.Scan(&g.ID, &g.PrincipalID, &g.AgentID, &a.scopes, &a.resources, &a.details, &taskTTL, &tokenTTL,
		&g.Limits.MaxDepth, &g.Limits.AllowSubdelegation, &a.budget, &status, &created, &expires, &revoked, &requestID)
	if err != nil {
		return delegation.Grant{}, err
	}
	if err := a.decode(&g.Scopes, &g.Resources, &g.AuthorizationDetails, &g.Limits.Budget); err != nil {
		return delegation.Grant{}, fmt.Errorf("grant %s: %w", g.ID, err)
	}
	g.Limits.MaxTaskTTL, g.Limits.MaxTokenTTL = time.Duration(taskTTL), time.Duration(tokenTTL)
	g.Status = delegation.GrantStatus(status)
	g.CreatedAt, g.ExpiresAt, g.RevokedAt = fromNanos(created), fromNanos(expires), fromNanos(revoked)
	g.RequestID = requestID.String
	return g, nil
}

func scanGrantRequest(r rowScanner) (delegation.GrantRequest, error) {
	var q delegation.GrantRequest
	var a authority
	var status string
	var grantID sql.NullString
	var taskTTL, tokenTTL, created, decided, expires, polled int64
	err := r.Scan(&q.ID, &q.AgentID, &q.OwnerID, &a.scopes, &a.resources, &a.details, &taskTTL, &tokenTTL,
		&q.Limits.MaxDepth, &q.Limits.AllowSubdelegation, &a.budget, &q.Reason, &status, &grantID, &created,
		&decided, &expires, &polled)
	if err != nil {
		return delegation.GrantRequest{}, err
	}
	if err := a.decode(&q.Scopes, &q.Resources, &q.AuthorizationDetails, &q.Limits.Budget); err != nil {
		return delegation.GrantRequest{}, fmt.Errorf("grant request %s: %w", q.ID, err)
	}
	q.Limits.MaxTaskTTL, q.Limits.MaxTokenTTL = time.Duration(taskTTL), time.Duration(tokenTTL)
	q.Status = delegation.RequestStatus(status)
	q.GrantID = grantID.String
	q.CreatedAt, q.DecidedAt = fromNanos(created), fromNanos(decided)
	q.ExpiresAt, q.LastPolledAt = fromNanos(expires), fromNanos(polled)
	return q, nil
}

func scanTask(r rowScanner) (delegation.Task, error) {
	var t delegation.Task
	var a authority
	var status string
	var parentID sql.NullString
	var created, expires, ended int64
	err := r.Scan(&t.ID, &t.GrantID, &parentID, &t.RootID, &t.Depth, &t.PrincipalID, &t.AgentID, &t.InstanceJKT,
		&t.Purpose, &a.scopes, &a.resources, &a.details, &a.budget, &status, &created, &expires, &ended, &t.KeyJKT)
	if err != nil {
		return delegation.Task{}, err
	}
	if err := a.decode(&t.Scopes, &t.Resources, &t.AuthorizationDetails, &t.Budget); err != nil {
		return delegation.Task{}, fmt.Errorf("task %s: %w", t.ID, err)
	}
	t.ParentID = parentID.String
	t.Status = delegation.TaskStatus(status)
	t.CreatedAt, t.ExpiresAt, t.EndedAt = fromNanos(created), fromNanos(expires), fromNanos(ended)
	return t, nil
}

// authority is the stored form of what a grant, grant request or task allows: lists as JSON
// arrays and the budget as a JSON object, in TEXT columns. Empty lists and budgets are stored as
// [] and {} and read back as nil. Authorization details are stored compacted (encoding/json
// compacts a json.RawMessage), which keeps their meaning and key order but not their spacing.
type authority struct {
	scopes, resources, details, budget string
}

func encodeAuthority(scopes, resources []string, details []json.RawMessage, budget map[string]int64) (authority, error) {
	var a authority
	var err error
	if a.scopes, err = jsonText(scopes, "[]"); err != nil {
		return authority{}, fmt.Errorf("scopes: %w", err)
	}
	if a.resources, err = jsonText(resources, "[]"); err != nil {
		return authority{}, fmt.Errorf("resources: %w", err)
	}
	if a.details, err = jsonText(details, "[]"); err != nil {
		return authority{}, fmt.Errorf("authorization details: %w", err)
	}
	if a.budget, err = jsonText(budget, "{}"); err != nil {
		return authority{}, fmt.Errorf("budget: %w", err)
	}
	return a, nil
}

// jsonText encodes v, a slice or map, as JSON text without HTML escaping (so that authorization
// details keep their characters); empty when it has no elements.
func jsonText[T interface {
	~[]string | ~[]json.RawMessage | ~map[string]int64
}](v T, empty string) (string, error) {
	if len(v) == 0 {
		return empty, nil
	}
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return "", err
	}
	return strings.TrimSuffix(b.String(), "\n"), nil
}

func (a authority) decode(scopes, resources *[]string, details *[]json.RawMessage, budget *map[string]int64) error {
	if err := fromJSONText(a.scopes, scopes); err != nil {
		return fmt.Errorf("scopes: %w", err)
	}
	if err := fromJSONText(a.resources, resources); err != nil {
		return fmt.Errorf("resources: %w", err)
	}
	if err := fromJSONText(a.details, details); err != nil {
		return fmt.Errorf("authorization details: %w", err)
	}
	if err := fromJSONText(a.budget, budget); err != nil {
		return fmt.Errorf("budget: %w", err)
	}
	return nil
}

// fromJSONText decodes s into *v, leaving *v nil when it has no elements.
func fromJSONText[T interface {
	~[]string | ~[]json.RawMessage | ~map[string]int64
}](s string, v *T) error {
	var x T
	if err := json.Unmarshal([]byte(s), &x); err != nil {
		return err
	}
	if len(x) > 0 {
		*v = x
	}
	return nil
}
