package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/mandate-dev/mandate/dpop"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/delegation"
	"github.com/mandate-dev/mandate/internal/ids"
	"github.com/mandate-dev/mandate/internal/principal"
	"github.com/mandate-dev/mandate/internal/registry"
	"github.com/mandate-dev/mandate/internal/token"
)

// The stores Store implements.
var (
	_ audit.Store      = (*Store)(nil)
	_ registry.Store   = (*Store)(nil)
	_ principal.Store  = (*Store)(nil)
	_ token.Store      = (*Store)(nil)
	_ delegation.Store = (*Store)(nil)
	_ dpop.ReplayStore = (*Store)(nil)
)

// Use records a single-use identifier (a DPoP proof's, a registration JWS's or a client
// assertion's jti) until exp, and returns dpop.ErrReplay if it is already recorded and unexpired.
// One statement decides, so of concurrent uses exactly one succeeds (on every replica of one
// database); an expired record is replaced. It is committed with whatever else is being written
// (see groupcommit.go). Expired records are deleted by Purge.
func (s *Store) Use(ctx context.Context, id string, exp time.Time) error {
	return s.submitSimple(ctx, &simpleWrite{uses: []token.SingleUse{{ID: id, ExpiresAt: exp}}})
}

// RecordIssue uses up the ids and appends ev as a success, committed together (see
// groupcommit.go): dpop.ErrReplay, wrapped, if an id was used before, and then nothing is written.
func (s *Store) RecordIssue(ctx context.Context, uses []token.SingleUse, ev audit.Event) error {
	stamp(ctx, &ev)
	err := s.submitSimple(ctx, &simpleWrite{uses: uses, evs: []audit.Event{ev}, success: true})
	if err != nil {
		return fmt.Errorf("record token issue %s: %w", ev.TokenID, err)
	}
	return nil
}

// AppendEventUsing appends ev as it is (its Outcome kept, like AppendEvent) and uses up every id
// in uses, committed together: dpop.ErrReplay, wrapped, if an id was used before, and then
// nothing is written. A proxied call's pending record consumes its proof's jti this way, so a
// proof is single-use across replicas at the cost of a row in a commit made anyway.
func (s *Store) AppendEventUsing(ctx context.Context, ev audit.Event, uses []token.SingleUse) error {
	stamp(ctx, &ev)
	err := s.submitSimple(ctx, &simpleWrite{uses: uses, evs: []audit.Event{ev}})
	if err != nil {
		return fmt.Errorf("append audit event %s %s: %w", ev.Action, ev.ID, err)
	}
	return nil
}

// stamp gives ev an id and the request's fields from ctx, before it leaves for the writer.
func stamp(ctx context.Context, ev *audit.Event) {
	if ev.ID == "" {
		ev.ID = ids.New("evt")
	}
	ev.Stamp(ctx)
}

func (s *Store) useStmt(ctx context.Context, st *sql.Stmt, id string, exp time.Time) error {
	res, err := st.ExecContext(ctx, id, nanos(exp), nanos(s.now()))
	return usedUp(id, res, err)
}

// usedUp is the outcome of a use statement: dpop.ErrReplay (wrapped) when it changed no row.
func usedUp(id string, res sql.Result, err error) error {
	if err != nil {
		return fmt.Errorf("use %s: %w", id, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("use %s: %w", id, err)
	}
	if n == 0 {
		return fmt.Errorf("use %s: %w", id, dpop.ErrReplay)
	}
	return nil
}
