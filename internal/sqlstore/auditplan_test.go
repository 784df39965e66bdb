package sqlstore

import (
	"strings"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/pgtest"
)

// The trail is filled by one statement of 50,000 rows, which under -race on a busy machine takes
// longer than the default deadline of a database call: the store gets a minute.
func TestSQLiteAuditPlans(t *testing.T) {
	testAuditPlans(t, mustOpen(t, newSQLiteDSN(t), WithTimeout(time.Minute)))
}

func TestPostgresAuditPlans(t *testing.T) {
	pgtest.BaseURL(t)
	testAuditPlans(t, mustOpen(t, pgtest.URL(t), WithTimeout(time.Minute)))
}

// planEvents is how many events the plan test's trail holds: enough that a full scan costs more
// than any index to the planner.
const planEvents = 50000

// testAuditPlans checks the plan of every audit query the code makes (ListEvents with the
// filters of audit.Explain, RequestsByClientID, audit.Summarize, the sinks' cursors and GET
// /v1/audit) on a big trail shaped like a busy server's (nine token issues in ten): a selective
// filter must search an index, never read the table or walk the whole primary key. Filters
// that select most events (none, an outcome, a time window) may walk the trail newest first:
// they stop at the page's limit.
func testAuditPlans(t *testing.T, s *Store) {
	ctx := t.Context()
	// A trail written straight into the table (the chain does not matter here): 1 event in 100 a
	// task start, 1 in 10 a proxied call, the rest token issues; 50 agents of 20 principals.
	_, err := s.db.ExecContext(ctx, `WITH RECURSIVE n (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1)
		INSERT INTO audit_events (seq, id, time, request_id, action, outcome, reason, detail, actor_type, actor_id,
			principal_id, agent_id, target, token_id, prev_hash, hash, client_request_id, task_id, grant_id, upstream, ext)
		SELECT i, 'evt_' || i, CAST(i AS BIGINT) * 1000000, 'req_' || i,
			CASE WHEN i % 100 = 0 THEN 'task.start' WHEN i % 10 = 0 THEN 'proxy.call' ELSE 'token.issue' END,
			CASE WHEN i % 7 = 0 THEN 'denied' ELSE 'success' END, '', '', 'agent', 'agt_' || (i % 50),
			'usr_' || (i % 20), 'agt_' || (i % 50), CASE WHEN i % 100 = 0 THEN 'tsk_' || i ELSE '' END, 'at_' || i, '', '',
			CASE WHEN i % 1000 = 0 THEN 'client-' || i ELSE '' END,
			CASE WHEN i % 10 = 0 THEN 'tsk_' || (i / 100 * 100) ELSE '' END,
			CASE WHEN i % 10 = 0 THEN 'gr_' || (i % 30) ELSE '' END,
			CASE WHEN i % 10 = 0 AND i % 20 <> 0 THEN 'ahrefs' WHEN i % 20 = 0 THEN 'resend' ELSE '' END, ''
		FROM n`, int64(planEvents))
	if err != nil {
		t.Fatalf("fill the trail: %v", err)
	}
	analyze := `ANALYZE`
	if s.dialect == DialectPostgres {
		analyze = `ANALYZE audit_events`
	}
	if _, err := s.db.ExecContext(ctx, analyze); err != nil {
		t.Fatal(err)
	}
	mid := time.Unix(0, planEvents/2*1000000)
	for _, tc := range []struct {
		name string
		f    audit.Filter
		scan bool // may walk the trail newest first
	}{
		{"page", audit.Filter{}, true},
		{"older page", audit.Filter{Before: planEvents / 2}, true},
		{"sink cursor", audit.Filter{After: planEvents - 100, Ascending: true}, false},
		{"outcome", audit.Filter{Outcome: audit.OutcomeDenied}, true},
		{"since", audit.Filter{Since: mid}, true},
		{"event id", audit.Filter{ID: "evt_4242", Limit: 1}, false},
		{"request id", audit.Filter{RequestID: "req_4242", Ascending: true}, false},
		{"client request id", audit.Filter{ClientRequestID: "client-4000", Ascending: true}, false},
		{"client request id of a principal", audit.Filter{ClientRequestID: "client-4000", PrincipalID: "usr_0", Ascending: true}, false},
		{"agent", audit.Filter{AgentID: "agt_7"}, false},
		{"principal", audit.Filter{PrincipalID: "usr_3"}, false},
		{"principal's window (mandate audit mine)", audit.Filter{PrincipalID: "usr_3", Since: mid, Until: mid.Add(time.Hour)}, false},
		{"task", audit.Filter{TaskID: "tsk_4200"}, false},
		{"grant", audit.Filter{GrantID: "gr_10"}, false},
		{"upstream", audit.Filter{Upstream: "resend"}, false},
		{"action", audit.Filter{Action: "task.start"}, false},
		{"explain: first of an action about a target", audit.Filter{Action: "task.start", Target: "tsk_4200", Outcome: audit.OutcomeSuccess,
			Before: planEvents, Ascending: true, Limit: 1}, false},
		{"explain: first of an action in a task", audit.Filter{Action: "task.start", TaskID: "tsk_4200", Outcome: audit.OutcomeSuccess,
			Before: planEvents, Ascending: true, Limit: 1}, false},
		{"explain: first of an action of an agent", audit.Filter{Action: "agent.revoke", AgentID: "agt_7", Outcome: audit.OutcomeSuccess,
			Before: planEvents, Ascending: true, Limit: 1}, false},
		{"summarize: a task's start", audit.Filter{Action: "task.start", TaskID: "tsk_4200", Limit: 1}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q, args := eventsQuery(tc.f)
			plan := explainPlan(t, s, q, args)
			if bad := fullScan(s.dialect, plan); bad != "" && !tc.scan {
				t.Errorf("%+v reads the whole trail (%s); plan:\n%s", tc.f, bad, plan)
			}
			if testing.Verbose() {
				t.Logf("plan:\n%s", plan)
			}
		})
	}
}

// explainPlan returns the plan of q as the dialect prints it, one step a line.
func explainPlan(t *testing.T, s *Store, q string, args []any) string {
	t.Helper()
	prefix := `EXPLAIN QUERY PLAN `
	if s.dialect == DialectPostgres {
		prefix = `EXPLAIN `
	}
	rows, err := s.rdb.QueryContext(t.Context(), prefix+q, args...)
	if err != nil {
		t.Fatalf("explain %s: %v", q, err)
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	var lines []string
	for rows.Next() {
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		var b []byte
		switch v := vals[len(vals)-1].(type) { // SQLite: id, parent, notused, detail; PostgreSQL: one line
		case string:
			b = []byte(v)
		case []byte:
			b = v
		}
		lines = append(lines, string(b))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return strings.Join(lines, "\n")
}

// fullScan names the step of plan that reads all of audit_events, "" when none does: SQLite's
// SCAN of the table (or of a whole index), PostgreSQL's sequential scan. (PostgreSQL may also
// walk the primary key newest first with a filter when it expects the page's matches to be
// spread evenly through the trail, as they are here; that walk stops at the limit, and with an
// index for the filter it is the planner's costed choice, so it is not refused.)
func fullScan(dialect, plan string) string {
	for _, line := range strings.Split(plan, "\n") {
		l := strings.TrimSpace(line)
		switch {
		case dialect == DialectSQLite && strings.HasPrefix(l, "SCAN audit_events"):
			return l
		case dialect == DialectPostgres && strings.Contains(l, "Seq Scan on audit_events"):
			return l
		}
	}
	return ""
}
