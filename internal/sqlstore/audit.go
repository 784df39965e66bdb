package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/ids"
)

// ErrChainBroken is returned (wrapped, with the first bad sequence number) by VerifyChain when
// the audit hash chain does not verify: a row was changed, removed or inserted outside the store.
var ErrChainBroken = audit.ErrChainBroken

const eventCols = `seq, id, time, request_id, action, outcome, reason, detail, actor_type, actor_id,
	principal_id, agent_id, target, token_id, prev_hash, hash, source, repeat_count, first_time, last_time,
	client_request_id, task_id, grant_id, upstream, ext`

// AppendEvent appends a standalone event (a denial, or a proxied call's pending record and its
// completion) as it is: its Outcome is kept. It returns once the event is durable: appends from
// concurrent callers are committed together (see groupcommit.go). An error that wraps
// audit.ErrUnavailable means the event is not on record.
func (s *Store) AppendEvent(ctx context.Context, ev audit.Event) error {
	if ev.ID == "" {
		ev.ID = ids.New("evt")
	}
	ev.Stamp(ctx)
	if err := s.enqueue(ctx, ev); err != nil {
		return fmt.Errorf("append audit event %s %s: %w", ev.Action, ev.ID, err)
	}
	return nil
}

// appendSuccess appends ev, the record of the change made in tx, as a success: it is committed
// with that change or not at all.
func appendSuccess(ctx context.Context, tx *sql.Tx, ev *audit.Event) error {
	ev.Outcome = audit.OutcomeSuccess
	return appendEvent(ctx, tx, ev)
}

// appendEvent links ev to the end of the chain and inserts it. The caller holds the write lock
// (see writeTx), so the last row read here stays the last row until commit.
func appendEvent(ctx context.Context, tx *sql.Tx, ev *audit.Event) error {
	if ev.ID == "" {
		ev.ID = ids.New("evt")
	}
	ev.Stamp(ctx)
	tail, err := readTail(ctx, tx)
	if err != nil {
		return err
	}
	return insertEvent(ctx, tx, &tail, ev)
}

// chainTail is the last event of the chain: its sequence number and hash (0 and "" when empty).
type chainTail struct {
	seq  int64
	hash string
}

// readTail reads the end of the chain. The caller holds the write lock.
func readTail(ctx context.Context, tx *sql.Tx) (chainTail, error) {
	var t chainTail
	err := tx.QueryRowContext(ctx, stmtSQL[stmtReadTail]).Scan(&t.seq, &t.hash)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return t, fmt.Errorf("read end of audit chain: %w: %w", audit.ErrUnavailable, err)
	}
	return t, nil
}

// insertEvent links ev after tail, inserts it and moves tail to it. Its errors wrap
// audit.ErrUnavailable: the record could not be written, so neither may what it records.
func insertEvent(ctx context.Context, tx *sql.Tx, tail *chainTail, ev *audit.Event) error {
	_, err := tx.ExecContext(ctx, stmtSQL[stmtInsertEvent], linkEvent(tail, ev)...)
	return movedTail(tail, ev, err)
}

// linkEvent links ev after tail (its Seq, PrevHash and Hash) and returns the insert's arguments.
func linkEvent(tail *chainTail, ev *audit.Event) []any {
	ev.Normalize()
	t := nanos(ev.Time)
	ev.Time, ev.First, ev.Last = fromNanos(t), fromNanos(nanos(ev.First)), fromNanos(nanos(ev.Last))
	ev.Seq = tail.seq + 1
	ev.PrevHash = tail.hash
	ext := audit.Ext(ev)
	ev.Hash = audit.ChainHash(ev.PrevHash, audit.CanonicalWithExt(ev, ext))
	return []any{ev.Seq, ev.ID, t, ev.RequestID, ev.Action, string(ev.Outcome), ev.Reason, ev.Detail,
		ev.ActorType, ev.ActorID, ev.PrincipalID, ev.AgentID, ev.Target, ev.TokenID, ev.PrevHash, ev.Hash,
		ev.Source, ev.Count, nanos(ev.First), nanos(ev.Last),
		ev.ClientRequestID, ev.TaskID, ev.GrantID, ev.Upstream(), string(ext)}
}

// movedTail moves tail to ev once ev's insert succeeded (err == nil).
func movedTail(tail *chainTail, ev *audit.Event, err error) error {
	if err != nil {
		return fmt.Errorf("insert audit event: %w: %w", audit.ErrUnavailable, err)
	}
	tail.seq, tail.hash = ev.Seq, ev.Hash
	return nil
}

// partialIndexed are the columns whose audit index is partial (migrations 0008 and 0012).
var partialIndexed = map[string]bool{"task_id": true, "grant_id": true, "principal_id": true,
	"client_request_id": true, "upstream": true}

// ListEvents returns the events f selects, newest first (oldest first with f.Ascending).
func (s *Store) ListEvents(ctx context.Context, f audit.Filter) ([]audit.Event, error) {
	q, args := eventsQuery(f)
	rows, err := s.rdb.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list audit events: %w", err)
	}
	defer rows.Close()
	var evs []audit.Event
	for rows.Next() {
		ev, err := scanEvent(rows)
		if err != nil {
			return nil, fmt.Errorf("list audit events: %w", err)
		}
		evs = append(evs, ev)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list audit events: %w", err)
	}
	return evs, nil
}

// eventsQuery is the statement of ListEvents and its arguments (its plan is checked by
// TestAuditPlans).
func eventsQuery(f audit.Filter) (string, []any) {
	var conds []string
	var args []any
	add := func(cond string, v any) {
		args = append(args, v)
		conds = append(conds, strings.ReplaceAll(cond, "?", "$"+strconv.Itoa(len(args))))
	}
	for col, v := range map[string]string{"id": f.ID, "target": f.Target, "action": f.Action, "agent_id": f.AgentID, "principal_id": f.PrincipalID,
		"request_id": f.RequestID, "client_request_id": f.ClientRequestID, "task_id": f.TaskID, "grant_id": f.GrantID,
		"upstream": f.Upstream, "outcome": string(f.Outcome)} {
		if v != "" {
			add(col+" = ?", v)
			if partialIndexed[col] {
				// The index covers only non-empty values (WHERE col <> ''); SQLite uses a partial
				// index only when the query states its condition, so state it.
				conds = append(conds, col+" <> ''")
			}
		}
	}
	if !f.Since.IsZero() {
		add("time >= ?", nanos(f.Since))
	}
	if !f.Until.IsZero() {
		add("time < ?", nanos(f.Until))
	}
	if f.Before > 0 {
		add("seq < ?", f.Before)
	}
	if f.After > 0 {
		add("seq > ?", f.After)
	}
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	q := `SELECT ` + eventCols + ` FROM audit_events`
	if len(conds) > 0 {
		sort.Strings(conds) // one statement text per set of filters, whatever the map's order
		q += ` WHERE ` + strings.Join(conds, " AND ")
	}
	args = append(args, int64(limit))
	order := "DESC"
	if f.Ascending {
		order = "ASC"
	}
	q += ` ORDER BY seq ` + order + ` LIMIT $` + strconv.Itoa(len(args))

	return q, args
}

// scanEvent reads one row of eventCols. A row whose stored columns disagree with each other (an
// ext that is not JSON, an upstream column that is not its call's) comes back with a note in
// Detail, so its hash no longer matches and verification names it.
func scanEvent(rows *sql.Rows) (audit.Event, error) {
	var ev audit.Event
	var t, first, last int64
	var outcome, upstream, ext string
	err := rows.Scan(&ev.Seq, &ev.ID, &t, &ev.RequestID, &ev.Action, &outcome, &ev.Reason, &ev.Detail,
		&ev.ActorType, &ev.ActorID, &ev.PrincipalID, &ev.AgentID, &ev.Target, &ev.TokenID, &ev.PrevHash, &ev.Hash,
		&ev.Source, &ev.Count, &first, &last,
		&ev.ClientRequestID, &ev.TaskID, &ev.GrantID, &upstream, &ext)
	if err != nil {
		return ev, err
	}
	ev.Time, ev.First, ev.Last = fromNanos(t), fromNanos(first), fromNanos(last)
	ev.Outcome = audit.Outcome(outcome)
	if err := audit.DecodeExt(&ev, []byte(ext)); err != nil {
		ev.Detail += " [" + err.Error() + "]"
	} else if string(audit.Ext(&ev)) != ext {
		// JSON decoding forgives (a key's case, escapes): the stored ext must be exactly the
		// canonical form of what it decodes to, so that any change to it shows.
		ev.Detail += " [the stored ext is not in canonical form]"
	}
	if upstream != ev.Upstream() {
		ev.Detail += " [the upstream column is not the call's upstream]"
	}
	return ev, nil
}

// VerifyChain checks the audit hash chain in one consistent snapshot with audit.Verifier:
// sequence continuity, links, every event's hash, and the hash at each stored checkpoint's seq
// (taken as stored: the store holds no key to check their signatures; audit.Checkpointer.Verify
// does). A chain that retention cut starts right after a checkpoint. It returns an error
// wrapping ErrChainBroken that names the first bad sequence number.
func (s *Store) VerifyChain(ctx context.Context) error {
	cps, err := s.ListCheckpoints(ctx, 0, 0)
	if err != nil {
		return fmt.Errorf("verify audit chain: %w", err)
	}
	v := audit.NewVerifier(nil, cps)
	err = s.ScanEvents(ctx, 0, func(ev *audit.Event) error {
		if !v.Add(ev) {
			return errStopScan
		}
		return nil
	})
	if err != nil && !errors.Is(err, errStopScan) {
		return fmt.Errorf("verify audit chain: %w", err)
	}
	rep := v.Finish()
	return rep.Err()
}

var errStopScan = errors.New("stop scan")
