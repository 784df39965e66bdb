package sqlstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/ids"
)

// ErrChainBroken is returned (wrapped, with the first bad sequence number) by VerifyChain when
// the audit hash chain does not verify: a row was changed, removed or inserted outside the store.
var ErrChainBroken = errors.New("audit hash chain broken")

const eventCols = `seq, id, time, request_id, action, outcome, reason, detail, actor_type, actor_id,
	principal_id, agent_id, target, token_id, prev_hash, hash, source, repeat_count, first_time, last_time`

// AppendEvent appends a standalone event (a denial, which changes nothing else) as it is: its
// Outcome is kept.
func (s *Store) AppendEvent(ctx context.Context, ev audit.Event) error {
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		return appendEvent(ctx, tx, &ev)
	})
	if err != nil {
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
	var lastSeq int64
	var lastHash string
	err := tx.QueryRowContext(ctx, `SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1`).Scan(&lastSeq, &lastHash)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("read end of audit chain: %w", err)
	}
	t := nanos(ev.Time)
	ev.Time, ev.First, ev.Last = fromNanos(t), fromNanos(nanos(ev.First)), fromNanos(nanos(ev.Last))
	ev.Seq = lastSeq + 1
	ev.PrevHash = lastHash
	ev.Hash = chainHash(ev.PrevHash, canonicalEvent(ev, t))
	_, err = tx.ExecContext(ctx, `INSERT INTO audit_events (`+eventCols+`)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)`,
		ev.Seq, ev.ID, t, ev.RequestID, ev.Action, string(ev.Outcome), ev.Reason, ev.Detail,
		ev.ActorType, ev.ActorID, ev.PrincipalID, ev.AgentID, ev.Target, ev.TokenID, ev.PrevHash, ev.Hash,
		ev.Source, ev.Count, nanos(ev.First), nanos(ev.Last))
	if err != nil {
		return fmt.Errorf("insert audit event: %w", err)
	}
	return nil
}

// chainHash is hex(SHA-256(prevHash || "\n" || canonical)).
func chainHash(prevHash string, canonical []byte) string {
	h := sha256.New()
	h.Write([]byte(prevHash))
	h.Write([]byte{'\n'})
	h.Write(canonical)
	return hex.EncodeToString(h.Sum(nil))
}

// hashedEvent is the canonical form of an event that its hash covers: every field except Seq,
// PrevHash and Hash, keys in lexical order, encoded by encoding/json without HTML escaping and
// without a trailing newline. Time is RFC 3339 UTC with nanoseconds, made from the stored unix
// nanoseconds ("0001-01-01T00:00:00Z" for the zero time). Changing this changes every hash:
// don't, without a migration that marks where the new form starts. The fields added later
// (source, count, first, last: migration 0006) are left out when empty, so every event written
// before them keeps its form and hash, and every event that has them is covered.
type hashedEvent struct {
	Action      string `json:"action"`
	ActorID     string `json:"actor_id"`
	ActorType   string `json:"actor_type"`
	AgentID     string `json:"agent_id"`
	Count       int64  `json:"count,omitempty"`
	Detail      string `json:"detail"`
	First       string `json:"first,omitempty"`
	ID          string `json:"id"`
	Last        string `json:"last,omitempty"`
	Outcome     string `json:"outcome"`
	PrincipalID string `json:"principal_id"`
	Reason      string `json:"reason"`
	RequestID   string `json:"request_id"`
	Source      string `json:"source,omitempty"`
	Target      string `json:"target"`
	Time        string `json:"time"`
	TokenID     string `json:"token_id"`
}

// optionalTime is the canonical form of a time that may be absent: "" for the zero time.
func optionalTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

// canonicalEvent encodes ev as hashedEvent; t is the stored form of ev.Time.
func canonicalEvent(ev *audit.Event, t int64) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	err := enc.Encode(hashedEvent{
		Action:      ev.Action,
		ActorID:     ev.ActorID,
		ActorType:   ev.ActorType,
		AgentID:     ev.AgentID,
		Count:       ev.Count,
		Detail:      ev.Detail,
		First:       optionalTime(ev.First),
		ID:          ev.ID,
		Last:        optionalTime(ev.Last),
		Outcome:     string(ev.Outcome),
		PrincipalID: ev.PrincipalID,
		Reason:      ev.Reason,
		RequestID:   ev.RequestID,
		Source:      ev.Source,
		Target:      ev.Target,
		Time:        fromNanos(t).Format(time.RFC3339Nano),
		TokenID:     ev.TokenID,
	})
	if err != nil {
		panic("sqlstore: encoding a struct of strings failed: " + err.Error()) // cannot happen
	}
	return bytes.TrimSuffix(b.Bytes(), []byte{'\n'})
}

// ListEvents returns the events f selects, newest first.
func (s *Store) ListEvents(ctx context.Context, f audit.Filter) ([]audit.Event, error) {
	var conds []string
	var args []any
	add := func(col string, v any) {
		args = append(args, v)
		conds = append(conds, col+" = $"+strconv.Itoa(len(args)))
	}
	if f.Action != "" {
		add("action", f.Action)
	}
	if f.AgentID != "" {
		add("agent_id", f.AgentID)
	}
	if f.PrincipalID != "" {
		add("principal_id", f.PrincipalID)
	}
	if f.RequestID != "" {
		add("request_id", f.RequestID)
	}
	if f.Outcome != "" {
		add("outcome", string(f.Outcome))
	}
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	q := `SELECT ` + eventCols + ` FROM audit_events`
	if len(conds) > 0 {
		q += ` WHERE ` + strings.Join(conds, " AND ")
	}
	args = append(args, int64(limit))
	q += ` ORDER BY seq DESC LIMIT $` + strconv.Itoa(len(args))

	rows, err := s.rdb.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list audit events: %w", err)
	}
	defer rows.Close()
	var evs []audit.Event
	for rows.Next() {
		ev, _, err := scanEvent(rows)
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

// scanEvent reads one row of eventCols; it also returns the stored time.
func scanEvent(rows *sql.Rows) (audit.Event, int64, error) {
	var ev audit.Event
	var t, first, last int64
	var outcome string
	err := rows.Scan(&ev.Seq, &ev.ID, &t, &ev.RequestID, &ev.Action, &outcome, &ev.Reason, &ev.Detail,
		&ev.ActorType, &ev.ActorID, &ev.PrincipalID, &ev.AgentID, &ev.Target, &ev.TokenID, &ev.PrevHash, &ev.Hash,
		&ev.Source, &ev.Count, &first, &last)
	ev.Time, ev.First, ev.Last = fromNanos(t), fromNanos(first), fromNanos(last)
	ev.Outcome = audit.Outcome(outcome)
	return ev, t, err
}

// VerifyChain recomputes the audit hash chain from the first event to the last, in one
// consistent snapshot, and returns an error wrapping ErrChainBroken at the first event whose
// sequence number, link or hash does not match. It cannot notice events cut off the end of the
// chain; anchoring the last hash elsewhere (signed checkpoints) will.
func (s *Store) VerifyChain(ctx context.Context) error {
	var opts *sql.TxOptions
	if s.dialect == DialectPostgres {
		opts = &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true}
	}
	tx, err := s.rdb.BeginTx(ctx, opts)
	if err != nil {
		return fmt.Errorf("verify audit chain: %w", err)
	}
	defer tx.Rollback()
	rows, err := tx.QueryContext(ctx, `SELECT `+eventCols+` FROM audit_events ORDER BY seq`)
	if err != nil {
		return fmt.Errorf("verify audit chain: %w", err)
	}
	defer rows.Close()
	var seq int64
	prev := ""
	for rows.Next() {
		ev, t, err := scanEvent(rows)
		if err != nil {
			return fmt.Errorf("verify audit chain: %w", err)
		}
		switch {
		case ev.Seq != seq+1:
			return fmt.Errorf("%w: event %s has seq %d after seq %d", ErrChainBroken, ev.ID, ev.Seq, seq)
		case ev.PrevHash != prev:
			return fmt.Errorf("%w at seq %d: event %s does not link to the event before it", ErrChainBroken, ev.Seq, ev.ID)
		case ev.Hash != chainHash(prev, canonicalEvent(&ev, t)):
			return fmt.Errorf("%w at seq %d: event %s does not match its hash", ErrChainBroken, ev.Seq, ev.ID)
		}
		seq, prev = ev.Seq, ev.Hash
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("verify audit chain: %w", err)
	}
	return nil
}
