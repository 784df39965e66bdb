package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/delegation"
	"github.com/mandate-dev/mandate/internal/principal"
	"github.com/mandate-dev/mandate/internal/registry"
	"github.com/mandate-dev/mandate/internal/token"
)

const agentCols = `id, handle, name, description, status, owner_id, created_at, claimed_at, revoked_at`

// CreateAgent stores a new UNCLAIMED agent (Status, OwnerID, ClaimedAt and RevokedAt of a are
// ignored) with its keys and claim code, and ev. ev's AgentID and Target default to a.ID.
func (s *Store) CreateAgent(ctx context.Context, a registry.Agent, code registry.ClaimCode, ev audit.Event) error {
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO agents (`+agentCols+`, claim_code_hash, claim_expires_at)
			VALUES ($1, $2, $3, $4, $5, NULL, $6, 0, 0, $7, $8)`,
			a.ID, a.Handle, a.Name, a.Description, string(registry.StatusUnclaimed), nanos(a.CreatedAt),
			nullString(code.Hash), nanos(code.ExpiresAt))
		if uniqueViolation(err, "agents", "handle") {
			return fmt.Errorf("handle %q: %w", a.Handle, registry.ErrHandleTaken)
		}
		if err != nil {
			return err
		}
		for _, k := range a.Keys {
			if err := insertKey(ctx, tx, a.ID, k); err != nil {
				return err
			}
		}
		agentChanged(tx, a.ID) // a cache may remember that it did not exist
		defaultAgentEvent(&ev, a.ID)
		return appendSuccess(ctx, tx, &ev)
	})
	if err != nil {
		return fmt.Errorf("create agent %s: %w", a.ID, err)
	}
	return nil
}

func insertKey(ctx context.Context, tx *sql.Tx, agentID string, k registry.Key) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO agent_keys (did, agent_id, jkt, created_at, expires_at)
		VALUES ($1, $2, $3, $4, $5)`, k.DID, agentID, k.JKT, nanos(k.CreatedAt), nanos(k.ExpiresAt))
	if uniqueViolation(err, "agent_keys", "did") {
		return fmt.Errorf("key %s: %w", k.DID, registry.ErrDIDTaken)
	}
	if err != nil {
		return fmt.Errorf("add key %s: %w", k.DID, err)
	}
	return nil
}

// agentChanged notes, for OnChange, that the agent's row or keys change in tx.
func agentChanged(tx *sql.Tx, agentID string) {
	noteChange(tx, Change{Kind: KindAgentChanged, ID: agentID})
}

// defaultAgentEvent names the agent an event is about when the caller could not (a claim knows
// only its code).
func defaultAgentEvent(ev *audit.Event, agentID string) {
	if ev.AgentID == "" {
		ev.AgentID = agentID
	}
	if ev.Target == "" {
		ev.Target = agentID
	}
}

// GetAgent finds an agent by id, or by handle when ref starts with "@".
func (s *Store) GetAgent(ctx context.Context, ref string) (registry.Agent, error) {
	a, err := getAgent(ctx, s.rdb, ref)
	if err != nil {
		return registry.Agent{}, fmt.Errorf("get agent %s: %w", ref, err)
	}
	return a, nil
}

func getAgent(ctx context.Context, q querier, ref string) (registry.Agent, error) {
	where, arg := `id = $1`, ref
	if h, ok := strings.CutPrefix(ref, "@"); ok {
		where, arg = `handle = $1`, h
	}
	a, err := scanAgent(q.QueryRowContext(ctx, `SELECT `+agentCols+` FROM agents WHERE `+where, arg))
	if errors.Is(err, sql.ErrNoRows) {
		return registry.Agent{}, registry.ErrNotFound
	}
	if err != nil {
		return registry.Agent{}, err
	}
	rows, err := q.QueryContext(ctx, `SELECT agent_id, did, jkt, created_at, expires_at FROM agent_keys
		WHERE agent_id = $1 ORDER BY created_at DESC, did`, a.ID)
	if err != nil {
		return registry.Agent{}, fmt.Errorf("keys: %w", err)
	}
	keys, err := scanKeys(rows)
	if err != nil {
		return registry.Agent{}, fmt.Errorf("keys: %w", err)
	}
	a.Keys = keys[a.ID]
	return a, nil
}

// GetAgentByDID finds the agent that has (or had) the key.
func (s *Store) GetAgentByDID(ctx context.Context, did string) (registry.Agent, error) {
	var id string
	err := s.rdb.QueryRowContext(ctx, `SELECT agent_id FROM agent_keys WHERE did = $1`, did).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		err = registry.ErrNotFound
	}
	if err == nil {
		var a registry.Agent
		if a, err = getAgent(ctx, s.rdb, id); err == nil {
			return a, nil
		}
	}
	return registry.Agent{}, fmt.Errorf("get agent by did %s: %w", did, err)
}

// ListAgents returns the agents f selects, by handle.
func (s *Store) ListAgents(ctx context.Context, f registry.Filter) ([]registry.Agent, error) {
	var conds []string
	var args []any
	if f.OwnerID != "" {
		args = append(args, f.OwnerID)
		conds = append(conds, `a.owner_id = $`+strconv.Itoa(len(args)))
	}
	if f.Status != "" {
		args = append(args, string(f.Status))
		conds = append(conds, `a.status = $`+strconv.Itoa(len(args)))
	}
	where := ""
	if len(conds) > 0 {
		where = ` WHERE ` + strings.Join(conds, ` AND `)
	}
	// One snapshot for both queries, so that every listed agent has its keys.
	tx, err := s.rdb.BeginTx(ctx, s.readSnapshot())
	if err != nil {
		return nil, fmt.Errorf("list agents: %w", err)
	}
	defer tx.Rollback()
	rows, err := tx.QueryContext(ctx, `SELECT a.id, a.handle, a.name, a.description, a.status, a.owner_id,
		a.created_at, a.claimed_at, a.revoked_at FROM agents a`+where+` ORDER BY a.handle`, args...)
	if err != nil {
		return nil, fmt.Errorf("list agents: %w", err)
	}
	var agents []registry.Agent
	for rows.Next() {
		a, err := scanAgent(rows)
		if err != nil {
			rows.Close()
			return nil, fmt.Errorf("list agents: %w", err)
		}
		agents = append(agents, a)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list agents: %w", err)
	}
	if len(agents) == 0 {
		return agents, nil
	}
	rows, err = tx.QueryContext(ctx, `SELECT k.agent_id, k.did, k.jkt, k.created_at, k.expires_at
		FROM agent_keys k JOIN agents a ON a.id = k.agent_id`+where+`
		ORDER BY k.agent_id, k.created_at DESC, k.did`, args...)
	if err != nil {
		return nil, fmt.Errorf("list agents: keys: %w", err)
	}
	keys, err := scanKeys(rows)
	if err != nil {
		return nil, fmt.Errorf("list agents: keys: %w", err)
	}
	for i := range agents {
		agents[i].Keys = keys[agents[i].ID]
	}
	return agents, nil
}

// readSnapshot is the option for a read transaction that sees one consistent state.
func (s *Store) readSnapshot() *sql.TxOptions {
	if s.dialect == DialectPostgres {
		return &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true}
	}
	return nil // a SQLite read transaction is a snapshot from its first read on
}

type rowScanner interface{ Scan(dest ...any) error }

func scanAgent(r rowScanner) (registry.Agent, error) {
	var a registry.Agent
	var status string
	var owner sql.NullString
	var created, claimed, revoked int64
	if err := r.Scan(&a.ID, &a.Handle, &a.Name, &a.Description, &status, &owner, &created, &claimed, &revoked); err != nil {
		return registry.Agent{}, err
	}
	a.Status = registry.Status(status)
	a.OwnerID = owner.String
	a.CreatedAt, a.ClaimedAt, a.RevokedAt = fromNanos(created), fromNanos(claimed), fromNanos(revoked)
	return a, nil
}

// scanKeys reads rows of (agent_id, did, jkt, created_at, expires_at), keeping their order, and
// closes rows.
func scanKeys(rows *sql.Rows) (map[string][]registry.Key, error) {
	defer rows.Close()
	keys := make(map[string][]registry.Key)
	for rows.Next() {
		var agentID string
		var k registry.Key
		var created, expires int64
		if err := rows.Scan(&agentID, &k.DID, &k.JKT, &created, &expires); err != nil {
			return nil, err
		}
		k.CreatedAt, k.ExpiresAt = fromNanos(created), fromNanos(expires)
		keys[agentID] = append(keys[agentID], k)
	}
	return keys, rows.Err()
}

// ClaimAgent consumes an unexpired claim code of an UNCLAIMED agent, makes ownerID its owner and
// appends ev (AgentID and Target default to the agent's id, PrincipalID to ownerID). The
// conditional UPDATE decides atomically: of concurrent claims with one code exactly one wins,
// and a wrong, expired or used code gives registry.ErrClaimCode. An unknown owner gives
// principal.ErrNotFound.
func (s *Store) ClaimAgent(ctx context.Context, codeHash, ownerID string, now time.Time, ev audit.Event) (registry.Agent, error) {
	var a registry.Agent
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		var id string
		err := tx.QueryRowContext(ctx, `UPDATE agents
			SET status = $4, owner_id = $2, claimed_at = $3, claim_code_hash = NULL, claim_expires_at = 0
			WHERE claim_code_hash = $1 AND claim_expires_at > $3 AND status = $5
			RETURNING id`,
			codeHash, ownerID, nanos(now), string(registry.StatusClaimed), string(registry.StatusUnclaimed)).Scan(&id)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			return registry.ErrClaimCode
		case foreignKeyViolation(err):
			return fmt.Errorf("owner %s: %w", ownerID, principal.ErrNotFound)
		case err != nil:
			return err
		}
		if a, err = getAgent(ctx, tx, id); err != nil {
			return fmt.Errorf("read agent %s: %w", id, err)
		}
		agentChanged(tx, id)
		defaultAgentEvent(&ev, id)
		if ev.PrincipalID == "" {
			ev.PrincipalID = ownerID
		}
		return appendSuccess(ctx, tx, &ev)
	})
	if err != nil {
		return registry.Agent{}, fmt.Errorf("claim agent: %w", err)
	}
	return a, nil
}

// UpdateAgent reads the agent, applies fn and writes Status, OwnerID, ClaimedAt, RevokedAt,
// Name and Description with ev (AgentID and Target default to id), in one transaction. An error
// from fn is returned as it is and writes nothing. Leaving UNCLAIMED clears the claim code.
// Becoming REVOKED appends a revocation log entry (kind agent, never expiring, at RevokedAt, or
// now if fn left it zero) and revokes the agent's active tasks and every task under them, each
// with a revocation log entry and a task.revoke event (Cause: the agent). fn must not call the store: the write transaction is open while it
// runs.
func (s *Store) UpdateAgent(ctx context.Context, id string, fn func(*registry.Agent) error, ev audit.Event) (registry.Agent, error) {
	var a registry.Agent
	var fnErr error
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		var err error
		if a, err = getAgent(ctx, tx, id); err != nil {
			return err
		}
		wasRevoked := a.Status == registry.StatusRevoked
		if fnErr = fn(&a); fnErr != nil {
			return fnErr
		}
		_, err = tx.ExecContext(ctx, `UPDATE agents SET status = $2, owner_id = $3, claimed_at = $4,
				revoked_at = $5, name = $6, description = $7,
				claim_code_hash = CASE WHEN status = $8 AND $2 = $8 THEN claim_code_hash ELSE NULL END,
				claim_expires_at = CASE WHEN status = $8 AND $2 = $8 THEN claim_expires_at ELSE 0 END
			WHERE id = $1`,
			id, string(a.Status), nullString(a.OwnerID), nanos(a.ClaimedAt), nanos(a.RevokedAt), a.Name,
			a.Description, string(registry.StatusUnclaimed))
		if foreignKeyViolation(err) {
			return fmt.Errorf("owner %s: %w", a.OwnerID, principal.ErrNotFound)
		}
		if err != nil {
			return err
		}
		if a, err = getAgent(ctx, tx, id); err != nil {
			return err
		}
		agentChanged(tx, id)
		defaultAgentEvent(&ev, id)
		if a.Status != registry.StatusRevoked || wasRevoked {
			return appendSuccess(ctx, tx, &ev)
		}
		revoked := a.RevokedAt
		if revoked.IsZero() {
			revoked = s.now()
		}
		if err := appendRevocation(ctx, tx, token.KindAgent, id, time.Time{}, revoked); err != nil {
			return err
		}
		if err := appendSuccess(ctx, tx, &ev); err != nil {
			return err
		}
		// Its tasks, and every task under them (other agents' too: the chain holds this one).
		return endTasks(ctx, tx, delegation.TaskRevoked, revoked, ev, id, delegation.ReasonCascadeAgent, `agent_id = $4`, id)
	})
	if fnErr != nil {
		return registry.Agent{}, fnErr
	}
	if err != nil {
		return registry.Agent{}, fmt.Errorf("update agent %s: %w", id, err)
	}
	return a, nil
}

// RotateKey adds newKey as the agent's current key, sets ExpiresAt to oldExpires on every other
// key of the agent that has no expiry or a later one, and appends ev (AgentID and Target default
// to agentID), in one transaction.
func (s *Store) RotateKey(ctx context.Context, agentID string, newKey registry.Key, oldExpires time.Time, ev audit.Event) (registry.Agent, error) {
	var a registry.Agent
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		var one int
		err := tx.QueryRowContext(ctx, `SELECT 1 FROM agents WHERE id = $1`, agentID).Scan(&one)
		if errors.Is(err, sql.ErrNoRows) {
			return registry.ErrNotFound
		}
		if err != nil {
			return err
		}
		exp := nanos(oldExpires)
		if _, err := tx.ExecContext(ctx, `UPDATE agent_keys SET expires_at = $2
			WHERE agent_id = $1 AND (expires_at = 0 OR expires_at > $2)`, agentID, exp); err != nil {
			return fmt.Errorf("expire old keys: %w", err)
		}
		if err := insertKey(ctx, tx, agentID, newKey); err != nil {
			return err
		}
		if a, err = getAgent(ctx, tx, agentID); err != nil {
			return err
		}
		agentChanged(tx, agentID)
		defaultAgentEvent(&ev, agentID)
		return appendSuccess(ctx, tx, &ev)
	})
	if err != nil {
		return registry.Agent{}, fmt.Errorf("rotate key of agent %s: %w", agentID, err)
	}
	return a, nil
}

// RevokeKey ends one key of an agent now and logs its thumbprint for verifiers, and revokes the
// agent's active tasks given to that key and every task under them, each with a revocation log
// entry and a task.revoke event (Cause: the key's did:key), in one transaction.
func (s *Store) RevokeKey(ctx context.Context, agentID, did string, at time.Time, ev audit.Event) (registry.Agent, error) {
	var a registry.Agent
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		var jkt string
		err := tx.QueryRowContext(ctx, `SELECT jkt FROM agent_keys WHERE agent_id = $1 AND did = $2`, agentID, did).Scan(&jkt)
		if errors.Is(err, sql.ErrNoRows) {
			return registry.ErrNotFound
		}
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE agent_keys SET expires_at = $3
			WHERE agent_id = $1 AND did = $2 AND (expires_at = 0 OR expires_at > $3)`, agentID, did, nanos(at)); err != nil {
			return fmt.Errorf("expire key: %w", err)
		}
		if err := appendRevocation(ctx, tx, token.KindKey, jkt, time.Time{}, at); err != nil {
			return err
		}
		if a, err = getAgent(ctx, tx, agentID); err != nil {
			return err
		}
		agentChanged(tx, agentID)
		defaultAgentEvent(&ev, agentID)
		if err := appendSuccess(ctx, tx, &ev); err != nil {
			return err
		}
		// The tasks given to the key end with it (and the tasks under them): tokens moved onto
		// instance keys before the key was revoked stop too.
		return endTasks(ctx, tx, delegation.TaskRevoked, at, ev, did, delegation.ReasonCascadeKey,
			`agent_id = $4 AND key_jkt = $5`, agentID, jkt)
	})
	if err != nil {
		return registry.Agent{}, fmt.Errorf("revoke key %s of agent %s: %w", did, agentID, err)
	}
	return a, nil
}

// RenewClaimCode replaces the claim code of an UNCLAIMED agent and appends ev (AgentID and
// Target default to agentID).
func (s *Store) RenewClaimCode(ctx context.Context, agentID string, code registry.ClaimCode, ev audit.Event) error {
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		var status string
		err := tx.QueryRowContext(ctx, `SELECT status FROM agents WHERE id = $1`, agentID).Scan(&status)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			return registry.ErrNotFound
		case err != nil:
			return err
		case status != string(registry.StatusUnclaimed):
			return fmt.Errorf("agent is %s: %w", status, registry.ErrConflict)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE agents SET claim_code_hash = $2, claim_expires_at = $3
			WHERE id = $1`, agentID, nullString(code.Hash), nanos(code.ExpiresAt)); err != nil {
			return err
		}
		defaultAgentEvent(&ev, agentID)
		return appendSuccess(ctx, tx, &ev)
	})
	if err != nil {
		return fmt.Errorf("renew claim code of agent %s: %w", agentID, err)
	}
	return nil
}

// PurgeUnclaimed deletes up to limit UNCLAIMED agents whose claim code expired at or before
// lapsedBefore (oldest first) and that nothing refers to, with their keys, appending ev(agent)
// for each, in one write transaction: the conditions are read and acted on under the write
// lock, so a claim or a new claim code committed first keeps its agent.
func (s *Store) PurgeUnclaimed(ctx context.Context, lapsedBefore time.Time, limit int, ev func(registry.Agent) audit.Event) ([]registry.Agent, error) {
	var gone []registry.Agent
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		gone = nil
		rows, err := tx.QueryContext(ctx, `SELECT `+agentCols+` FROM agents a
			WHERE status = $1 AND claim_expires_at <= $2
			AND NOT EXISTS (SELECT 1 FROM grant_requests r WHERE r.agent_id = a.id)
			AND NOT EXISTS (SELECT 1 FROM grants g WHERE g.agent_id = a.id)
			AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.agent_id = a.id)
			ORDER BY claim_expires_at, id LIMIT $3`,
			string(registry.StatusUnclaimed), nanos(lapsedBefore), int64(limit))
		if err != nil {
			return err
		}
		for rows.Next() {
			a, err := scanAgent(rows)
			if err != nil {
				rows.Close()
				return err
			}
			gone = append(gone, a)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, a := range gone {
			if _, err := tx.ExecContext(ctx, `DELETE FROM agent_keys WHERE agent_id = $1`, a.ID); err != nil {
				return fmt.Errorf("delete keys of %s: %w", a.ID, err)
			}
			if err := execOne(ctx, tx, registry.ErrNotFound, `DELETE FROM agents WHERE id = $1`, a.ID); err != nil {
				return fmt.Errorf("delete agent %s: %w", a.ID, err)
			}
			agentChanged(tx, a.ID)
			e := ev(a)
			defaultAgentEvent(&e, a.ID)
			if err := appendSuccess(ctx, tx, &e); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("purge unclaimed agents: %w", err)
	}
	return gone, nil
}
