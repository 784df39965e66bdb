package sqlstore

import (
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/audit"
)

// TestCanonicalEvent pins the canonical form and hash of an event: changing either breaks every
// existing chain, so it must be a deliberate change (see hashedEvent).
func TestCanonicalEvent(t *testing.T) {
	ev := audit.Event{
		ID:          "evt_1",
		Time:        time.Date(2031, 5, 6, 7, 8, 9, 123456789, time.FixedZone("X", 3600)),
		RequestID:   "req_1",
		Action:      audit.ActionTokenIssue,
		Outcome:     audit.OutcomeSuccess,
		Reason:      "",
		Detail:      `<b> & "q"`,
		ActorType:   audit.ActorAgent,
		ActorID:     "agt_1",
		PrincipalID: "usr_1",
		AgentID:     "agt_1",
		Target:      "gr_1",
		TokenID:     "jti_1",
		Seq:         7,         // not covered
		PrevHash:    "ignored", // not covered (it is hashed in front of the JSON)
		Hash:        "ignored",
	}
	for _, tc := range []struct {
		name string
		ev   audit.Event
		want string
	}{
		{"full", ev, `{"action":"token.issue","actor_id":"agt_1","actor_type":"agent","agent_id":"agt_1",` +
			`"detail":"<b> & \"q\"","id":"evt_1","outcome":"success","principal_id":"usr_1","reason":"",` +
			`"request_id":"req_1","target":"gr_1","time":"2031-05-06T06:08:09.123456789Z","token_id":"jti_1"}`},
		{"aggregated", func() audit.Event {
			e := ev
			e.Source, e.Count = "2001:db8::/64", 999
			e.First, e.Last = ev.Time.Add(-time.Minute), ev.Time.Add(-time.Second)
			return e
		}(), `{"action":"token.issue","actor_id":"agt_1","actor_type":"agent","agent_id":"agt_1","count":999,` +
			`"detail":"<b> & \"q\"","first":"2031-05-06T06:07:09.123456789Z","id":"evt_1",` +
			`"last":"2031-05-06T06:08:08.123456789Z","outcome":"success","principal_id":"usr_1","reason":"",` +
			`"request_id":"req_1","source":"2001:db8::/64","target":"gr_1","time":"2031-05-06T06:08:09.123456789Z","token_id":"jti_1"}`},
		{"empty", audit.Event{}, `{"action":"","actor_id":"","actor_type":"","agent_id":"","detail":"","id":"",` +
			`"outcome":"","principal_id":"","reason":"","request_id":"","target":"","time":"0001-01-01T00:00:00Z","token_id":""}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := string(canonicalEvent(&tc.ev, nanos(tc.ev.Time))); got != tc.want {
				t.Errorf("canonicalEvent =\n%s\nwant\n%s", got, tc.want)
			}
		})
	}

	// Computed independently: printf '%s\n%s' "$prev" "$json" | sha256sum
	for _, tc := range []struct{ prev, want string }{
		{"", "8961e6a3df8cc90f6f3d6af4a66a427fd7d28a1bd0cae8ef3b8fa43cc9a08e28"},
		{"prev", "1ab20e88ba164f2da0db23f63a1180074c9236367255383901f6b42d69d5b26a"},
	} {
		if got := chainHash(tc.prev, canonicalEvent(&ev, nanos(ev.Time))); got != tc.want {
			t.Errorf("chainHash(%q, full) = %s, want %s", tc.prev, got, tc.want)
		}
	}
}
