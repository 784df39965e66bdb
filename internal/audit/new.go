package audit

import (
	"time"

	"github.com/mandate-dev/mandate/internal/ids"
)

// New starts an event as denied (see Outcome), stamped with a fresh id and the time now.
func New(now time.Time, requestID, action string) Event {
	return Event{ID: ids.New("evt"), Time: now.UTC(), RequestID: requestID, Action: action, Outcome: OutcomeDenied}
}
