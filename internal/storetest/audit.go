package storetest

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/audit/audittest"
)

// appendIncident appends audittest's incident, its events as the store recorded them (with
// seq and hashes) in x.Events.
func appendIncident(t *testing.T, s Store) *audittest.Incident {
	t.Helper()
	x := audittest.NewIncident(audittest.Options{Now: base})
	for _, e := range x.Events {
		if err := s.AppendEvent(t.Context(), e); err != nil {
			t.Fatalf("AppendEvent %s: %v", e.Action, err)
		}
	}
	stored, err := s.ListEvents(t.Context(), audit.Filter{Ascending: true, Limit: audit.MaxPage})
	if err != nil || len(stored) != len(x.Events) {
		t.Fatalf("ListEvents: %d events, %v; want %d", len(stored), err, len(x.Events))
	}
	x.Events = stored
	return x
}

// testAuditQueries: each filter of the event contract selects exactly the events that carry it,
// newest first, and paging by cursor reads each event once.
func testAuditQueries(t *testing.T, s Store) {
	x := appendIncident(t, s)
	ids := func(evs []audit.Event) []string {
		out := []string{}
		for _, e := range evs {
			out = append(out, e.ID)
		}
		return out
	}
	mid := x.Events[len(x.Events)/2].Time
	for _, tc := range []struct {
		name string
		f    audit.Filter
		keep func(audit.Event) bool
	}{
		{"task", audit.Filter{TaskID: x.Tasks[2]}, func(e audit.Event) bool { return e.TaskID == x.Tasks[2] }},
		{"grant", audit.Filter{GrantID: x.Grant}, func(e audit.Event) bool { return e.GrantID == x.Grant }},
		{"upstream", audit.Filter{Upstream: "ahrefs"}, func(e audit.Event) bool { return e.Call != nil && e.Call.Upstream == "ahrefs" }},
		{"target", audit.Filter{Target: x.Tasks[1]}, func(e audit.Event) bool { return e.Target == x.Tasks[1] }},
		{"id", audit.Filter{ID: x.Events[3].ID}, func(e audit.Event) bool { return e.ID == x.Events[3].ID }},
		{"pending", audit.Filter{Outcome: audit.OutcomePending}, func(e audit.Event) bool { return e.Outcome == audit.OutcomePending }},
		{"request", audit.Filter{RequestID: x.Calls[2]}, func(e audit.Event) bool { return e.RequestID == x.Calls[2] }},
		{"since", audit.Filter{Since: mid}, func(e audit.Event) bool { return !e.Time.Before(mid) }},
		{"until", audit.Filter{Until: mid}, func(e audit.Event) bool { return e.Time.Before(mid) }},
		{"task and outcome", audit.Filter{TaskID: x.Tasks[2], Outcome: audit.OutcomeDenied, Action: "proxy.call"},
			func(e audit.Event) bool {
				return e.TaskID == x.Tasks[2] && e.Outcome == audit.OutcomeDenied && e.Action == "proxy.call"
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var want []audit.Event
			for _, e := range slices.Backward(x.Events) {
				if tc.keep(e) {
					want = append(want, e)
				}
			}
			if len(want) == 0 {
				t.Fatal("the case selects nothing: it tests nothing")
			}
			tc.f.Limit = audit.MaxPage
			got, err := s.ListEvents(t.Context(), tc.f)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(ids(want), ids(got)); diff != "" {
				t.Errorf("ListEvents(%+v) ids (-want +got):\n%s", tc.f, diff)
			}
			// Pages of 2 by cursor read the same events, each once.
			var paged []audit.Event
			f := tc.f
			f.Limit = 2
			for {
				page, err := s.ListEvents(t.Context(), f)
				if err != nil {
					t.Fatal(err)
				}
				paged = append(paged, page...)
				if len(page) < 2 {
					break
				}
				f.Before = page[len(page)-1].Seq
			}
			if diff := cmp.Diff(ids(want), ids(paged)); diff != "" {
				t.Errorf("paged (-want +got):\n%s", diff)
			}
		})
	}
	// Every field of the contract comes back as appended.
	got, err := s.ListEvents(t.Context(), audit.Filter{RequestID: x.Calls[0], Ascending: true})
	if err != nil || len(got) != 2 {
		t.Fatalf("the call's events: %d, %v", len(got), err)
	}
	if c := got[1]; c.Call == nil || c.Call.Status != 200 || c.Cause != got[0].ID || len(c.Chain) != 3 || c.InstanceKey == "" ||
		c.Addr == "" || c.UserAgent == "" || c.ParentTaskID != x.Tasks[1] {
		t.Errorf("the completion came back without its fields: %+v", c)
	}
}

// testAuditExplain: Explain answers from the trail alone, on every backend.
func testAuditExplain(t *testing.T, s Store) {
	x := appendIncident(t, s)
	ctx := t.Context()

	ok, err := audit.Explain(ctx, s, x.Calls[0])
	if err != nil {
		t.Fatal(err)
	}
	if !ok.Valid || ok.Outcome != "success" || ok.Completion == nil || ok.Call.Status != 200 || ok.Event.Outcome != audit.OutcomePending {
		t.Errorf("a completed call: valid %v outcome %q completion %v call %+v", ok.Valid, ok.Outcome, ok.Completion != nil, ok.Call)
	}
	if ok.Grant == nil || ok.Grant.GrantedBy != x.Principal || ok.Grant.EventID == "" || !hasField(ok.Grant.Terms, "budget.calls", "1000") {
		t.Errorf("grant evidence: %+v", ok.Grant)
	}
	if len(ok.Chain) != 3 {
		t.Fatalf("chain: %+v", ok.Chain)
	}
	for i, h := range ok.Chain {
		if h.AgentID != x.Agents[i].ID || h.Purpose != x.Purposes[i] || h.TaskID != x.Tasks[i] || h.Terms.Expires.IsZero() {
			t.Errorf("hop %d: %+v", i, h)
		}
	}
	if ok.Chain[2].InstanceKey != x.Instance || len(ok.Missing) != 0 || len(ok.Others) != 0 {
		t.Errorf("instance key %q, missing %v, others %d", ok.Chain[2].InstanceKey, ok.Missing, len(ok.Others))
	}

	// The completion's own id explains the same call.
	byEvent, err := audit.Explain(ctx, s, ok.Completion.ID)
	if err != nil || byEvent.Event.ID != ok.Event.ID || byEvent.Completion.ID != ok.Completion.ID {
		t.Errorf("explain by the completion's id: %+v, %v", byEvent, err)
	}

	lost, err := audit.Explain(ctx, s, x.Lost)
	if err != nil || lost.Outcome != "unknown" || lost.Completion != nil {
		t.Errorf("a call with no completion: %+v, %v", lost, err)
	}
	refused, err := audit.Explain(ctx, s, x.Refused)
	if err != nil || refused.Outcome != "denied" || refused.Reason != "route_not_allowed" || !refused.Valid {
		t.Errorf("a refused call: %+v, %v", refused, err)
	}

	after, err := audit.Explain(ctx, s, x.AfterRevoke)
	if err != nil {
		t.Fatal(err)
	}
	if after.Valid || !hasProblem(after, "task "+x.Tasks[1], "revoked") || !hasProblem(after, "task "+x.Tasks[2], "revoked") ||
		hasProblem(after, "task "+x.Tasks[0], "revoked") {
		t.Errorf("after the revocation: valid %v, problems %+v", after.Valid, after.Problems)
	}

	rev, err := audit.Explain(ctx, s, x.Revoke)
	if err != nil || rev.Event.Target != x.Tasks[1] || len(rev.Others) != 1 || rev.Others[0].Cause != x.Tasks[1] {
		t.Errorf("the revocation's request: decisive %+v, others %+v, %v", rev.Event, rev.Others, err)
	}

	// A success recorded after the revocation, and one after the tasks expired, are not valid.
	for _, tc := range []struct {
		req    string
		at     time.Time
		reason string
	}{
		{"req_late00000000000000000000a", base.Add(time.Minute), "revoked"},
		{"req_expired0000000000000000a", base.Add(2 * time.Hour), "expired"},
	} {
		for _, e := range x.Late(tc.req, tc.at) {
			if err := s.AppendEvent(ctx, e); err != nil {
				t.Fatal(err)
			}
		}
		late, err := audit.Explain(ctx, s, tc.req)
		if err != nil {
			t.Fatal(err)
		}
		if late.Valid || late.Outcome != "success" || !hasProblem(late, "task "+x.Tasks[2], tc.reason) {
			t.Errorf("%s: valid %v outcome %q problems %+v", tc.req, late.Valid, late.Outcome, late.Problems)
		}
	}

	if _, err := audit.Explain(ctx, s, "req_nothing"); err != audit.ErrNoEvent {
		t.Errorf("explain an unknown request: %v", err)
	}
	if _, err := audit.Explain(ctx, s, "evt_nothing"); err != audit.ErrNoEvent {
		t.Errorf("explain an unknown event: %v", err)
	}
}

func hasProblem(x *audit.Explanation, link, reason string) bool {
	return slices.ContainsFunc(x.Problems, func(p audit.InvalidLink) bool { return p.Link == link && p.Reason == reason })
}

func hasField(v audit.TermsView, key, value string) bool {
	return slices.Contains(v.Fields, audit.TermsField{Key: key, Value: value})
}

// testAuditSummarize: a principal's report groups by agent and task, counts calls by upstream
// and outcome, refusals by reason, and shows the revocations.
func testAuditSummarize(t *testing.T, s Store) {
	x := appendIncident(t, s)
	rep, err := audit.Summarize(t.Context(), s, x.Principal, base.Add(-24*time.Hour), time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Events != len(x.Events) || len(rep.Agents) != 3 {
		t.Fatalf("report: %d events, %d agents", rep.Events, len(rep.Agents))
	}
	var fetcher audit.AgentReport
	for _, a := range rep.Agents {
		if a.AgentID == x.Agents[2].ID {
			fetcher = a
		}
	}
	if fetcher.Handle != "fetcher" || fetcher.Calls != 8 || fetcher.Refusals != 2 || len(fetcher.Tasks) != 1 {
		t.Fatalf("fetcher: %+v", fetcher)
	}
	task := fetcher.Tasks[0]
	want := []audit.UpstreamCalls{{Upstream: "ahrefs", Calls: 8, Success: 5, Denied: 2, Unknown: 1}}
	if diff := cmp.Diff(want, task.Calls); diff != "" || task.Purpose != x.Purposes[2] {
		t.Errorf("task %q calls (-want +got):\n%s", task.Purpose, diff)
	}
	if len(task.Refusals) != 2 || len(task.Revocations) != 1 || task.Revocations[0].Cause != x.Tasks[1] {
		t.Errorf("refusals %+v revocations %+v", task.Refusals, task.Revocations)
	}
	// Another principal sees none of it; a window after the events is empty.
	other, err := audit.Summarize(t.Context(), s, "usr_someone", time.Time{}, time.Time{})
	if err != nil || len(other.Agents) != 0 {
		t.Errorf("another principal's report: %+v, %v", other, err)
	}
	later, err := audit.Summarize(t.Context(), s, x.Principal, base.Add(time.Hour), time.Time{})
	if err != nil || len(later.Agents) != 0 || !strings.HasPrefix(later.PrincipalID, "usr_") {
		t.Errorf("a later window: %+v, %v", later, err)
	}
}
