package sqlstore

import (
	"context"
	"time"
)

// PurgeEnded deletes, in batches, the delegation state whose end is before cutoff (the caller's
// now minus the --retention grace): tasks that ended (completed or revoked) or expired, with
// their budget counters; grants revoked or expired, with theirs; and grant requests answered
// (approved or denied) or lapsed while pending. It returns how many rows went (counters not
// counted). The audit trail keeps their story: every change of this state was recorded there,
// and audit.Explain reads only events.
//
// Nothing that could still matter goes, whatever cutoff is: a task goes only once it has no
// child task left, so a chain is removed from its leaves up and a live task never loses a link
// of its chain; a grant only once no task of it is left; a request only once no grant names it.
// A task, a grant or a request that is still live (active and unexpired, or pending and
// unexpired) is never selected, so a cutoff in the future removes only what has already ended.
// Tokens of a removed task or grant were refused before (it had ended) and are refused after
// (it no longer exists). The revocation log is purged by Purge, each entry at its target's
// expiry; entries of agents and keys (no expiry) stay with their agents.
func (s *Store) PurgeEnded(ctx context.Context, cutoff, now time.Time) (int64, error) {
	if cutoff.After(now) {
		cutoff = now // what ends in the future is live now
	}
	// Each step deletes rows that match one indexed condition (migration 0012) and have no
	// referencing row left. A step runs until it deletes nothing, so that tasks are removed level
	// by level, leaves first (a chain is at most delegation.MaxDepthLimit deep).
	steps := []purgeStep{
		{"expired tasks", `DELETE FROM tasks WHERE id IN (SELECT t.id FROM tasks t
			WHERE t.expires_at <= $1 AND NOT EXISTS (SELECT 1 FROM tasks c WHERE c.parent_id = t.id) LIMIT $2)`},
		{"ended tasks", `DELETE FROM tasks WHERE id IN (SELECT t.id FROM tasks t
			WHERE t.ended_at <> 0 AND t.ended_at <= $1 AND t.status <> 'active'
			AND NOT EXISTS (SELECT 1 FROM tasks c WHERE c.parent_id = t.id) LIMIT $2)`},
		{"expired grants", `DELETE FROM grants WHERE id IN (SELECT g.id FROM grants g
			WHERE g.expires_at <= $1 AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.grant_id = g.id) LIMIT $2)`},
		{"revoked grants", `DELETE FROM grants WHERE id IN (SELECT g.id FROM grants g
			WHERE g.revoked_at <> 0 AND g.revoked_at <= $1 AND g.status <> 'active'
			AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.grant_id = g.id) LIMIT $2)`},
		{"answered grant requests", `DELETE FROM grant_requests WHERE id IN (SELECT r.id FROM grant_requests r
			WHERE r.decided_at <> 0 AND r.decided_at <= $1 AND r.status <> 'pending'
			AND NOT EXISTS (SELECT 1 FROM grants g WHERE g.request_id = r.id) LIMIT $2)`},
		{"lapsed grant requests", `DELETE FROM grant_requests WHERE id IN (SELECT r.id FROM grant_requests r
			WHERE r.expires_at <> 0 AND r.expires_at <= $1
			AND NOT EXISTS (SELECT 1 FROM grants g WHERE g.request_id = r.id) LIMIT $2)`},
	}
	// No audit event and no chain lock: what goes had ended, and its story is on record.
	return s.purgeSteps(ctx, steps, cutoff)
}
