package sqlstore

// TEMPORARY (branch replay): the lead's AppendEventUsing lands on main with the group-commit
// rewrite, where the uses and the event commit in one batch. Until then this stand-in uses the
// ids first, then appends: not atomic, but the same contract for callers. Deleted at the merge.

import (
	"context"
	"fmt"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/token"
)

// AppendEventUsing appends ev as it is (its Outcome kept, like AppendEvent) and uses up every id
// in uses: dpop.ErrReplay, wrapped, if an id was used before, and then nothing is written.
func (s *Store) AppendEventUsing(ctx context.Context, ev audit.Event, uses []token.SingleUse) error {
	for _, u := range uses {
		if err := s.Use(ctx, u.ID, u.ExpiresAt); err != nil {
			return fmt.Errorf("append audit event %s %s: %w", ev.Action, ev.ID, err)
		}
	}
	return s.AppendEvent(ctx, ev)
}
