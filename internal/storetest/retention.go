package storetest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/delegation"
	"github.com/mandate-dev/mandate/internal/ids"
	"github.com/mandate-dev/mandate/internal/registry"
	"github.com/mandate-dev/mandate/internal/token"
)

// exists reports whether the task, grant or grant request id is still stored.
func exists(t *testing.T, s Store, id string) bool {
	t.Helper()
	var err error
	switch {
	case len(id) > 4 && id[:4] == "tsk_":
		_, err = s.GetTask(t.Context(), id)
	case len(id) > 4 && id[:4] == "grq_":
		_, err = s.GetGrantRequest(t.Context(), id)
	default:
		_, err = s.GetGrant(t.Context(), id)
	}
	if errors.Is(err, delegation.ErrNotFound) {
		return false
	}
	if err != nil {
		t.Fatalf("get %s: %v", id, err)
	}
	return true
}

// testRetention: PurgeEnded removes tasks, grants and grant requests that ended before the
// cutoff, leaves everything live or ended since, and never a link a remaining row needs.
func testRetention(t *testing.T, s Store) {
	ctx := t.Context()
	alice := mustCreateUser(t, s, "alice")
	a := mustClaimedAgent(t, s, "a", alice)

	// A live grant with tasks in every state. Tasks expire an hour after they start.
	live := mustCreateGrant(t, s, newGrant(alice.ID, a.ID, base))
	liveTask := mustCreateTask(t, s, newTask(live, nil, at(50*time.Minute))) // until 1h50m
	completed := mustCreateTask(t, s, newTask(live, nil, base))
	completedChild := mustCreateTask(t, s, newTask(live, &completed, base))
	endAt := func(tk delegation.Task, st delegation.TaskStatus, when time.Time) {
		t.Helper()
		if _, err := s.EndTask(ctx, tk.ID, st, when, newEvent(actionTaskEnd)); err != nil {
			t.Fatalf("EndTask %s: %v", tk.ID, err)
		}
	}
	endAt(completed, delegation.TaskCompleted, at(10*time.Minute)) // ends its child too
	recentlyEnded := mustCreateTask(t, s, newTask(live, nil, base))
	endAt(recentlyEnded, delegation.TaskRevoked, at(45*time.Minute))
	expired := mustCreateTask(t, s, newTask(live, nil, base)) // active, expired at 1h
	// An expired parent whose child outlives it (the store does not narrow; the purge must not
	// rely on it): the parent stays while the child is live.
	longChild := newTask(live, &expired, at(5*time.Minute))
	longChild.ExpiresAt = at(3 * time.Hour)
	mustCreateTask(t, s, longChild)
	// Budget counters go with their task and grant (ON DELETE CASCADE).
	if err := s.UseBudgets(ctx, []delegation.BudgetCounter{{Task: completed.ID, Key: "calls", Max: 10},
		{Task: completedChild.ID, Key: "calls", Max: 10}, {Grant: live.ID, Key: "calls", Max: 10}}); err != nil {
		t.Fatalf("UseBudgets: %v", err)
	}

	// A revoked grant: its tasks end with it.
	revoked := mustCreateGrant(t, s, newGrant(alice.ID, a.ID, base))
	revokedTask := mustCreateTask(t, s, newTask(revoked, nil, base))
	if _, err := s.RevokeGrant(ctx, revoked.ID, at(20*time.Minute), newEvent(actionGrantRevoke)); err != nil {
		t.Fatalf("RevokeGrant: %v", err)
	}
	// An expired grant, whose only task ended; and one whose task is still live.
	short := newGrant(alice.ID, a.ID, base)
	short.ExpiresAt = at(30 * time.Minute)
	mustCreateGrant(t, s, short)
	shortTask := newTask(short, nil, base)
	shortTask.ExpiresAt = at(25 * time.Minute)
	mustCreateTask(t, s, shortTask)
	held := newGrant(alice.ID, a.ID, base)
	held.ExpiresAt = at(30 * time.Minute)
	mustCreateGrant(t, s, held)
	heldTask := newTask(held, nil, at(time.Hour)) // until 2h
	mustCreateTask(t, s, heldTask)
	if err := s.UseBudgets(ctx, []delegation.BudgetCounter{{Grant: revoked.ID, Key: "calls", Max: 10},
		{Task: revokedTask.ID, Key: "calls", Max: 10}}); err != nil {
		t.Fatalf("UseBudgets: %v", err)
	}

	// Grant requests: pending, lapsed, denied, approved (its grant live), and approved into a
	// grant that was then revoked.
	pending := newRequest(a, at(50*time.Minute)) // lapses at 1h50m
	mustCreateRequest(t, s, pending)
	lapsed := mustCreateRequest(t, s, newRequest(a, base)) // lapses at 1h
	denied := mustCreateRequest(t, s, newRequest(a, base))
	if _, err := s.DenyGrantRequest(ctx, denied.ID, at(5*time.Minute), newEvent(actionRequestDeny)); err != nil {
		t.Fatalf("DenyGrantRequest: %v", err)
	}
	approved := mustCreateRequest(t, s, newRequest(a, base))
	fromRequest := newGrant(alice.ID, a.ID, at(time.Minute))
	fromRequest.RequestID = approved.ID
	mustCreateGrant(t, s, fromRequest)
	approvedGone := mustCreateRequest(t, s, newRequest(a, base))
	gone := newGrant(alice.ID, a.ID, at(time.Minute))
	gone.RequestID = approvedGone.ID
	mustCreateGrant(t, s, gone)
	if _, err := s.RevokeGrant(ctx, gone.ID, at(2*time.Minute), newEvent(actionGrantRevoke)); err != nil {
		t.Fatalf("RevokeGrant: %v", err)
	}

	ids := map[string]string{
		"live grant": live.ID, "live task": liveTask.ID, "completed task": completed.ID,
		"completed child": completedChild.ID, "recently ended task": recentlyEnded.ID, "expired task": expired.ID,
		"long child": longChild.ID, "revoked grant": revoked.ID, "revoked grant's task": revokedTask.ID,
		"expired grant": short.ID, "expired grant's task": shortTask.ID, "expired grant with a live task": held.ID,
		"live task of an expired grant": heldTask.ID, "pending request": pending.ID, "lapsed request": lapsed.ID,
		"denied request": denied.ID, "approved request": approved.ID, "grant of the approved request": fromRequest.ID,
		"request of a revoked grant": approvedGone.ID, "revoked grant of a request": gone.ID,
	}
	for _, step := range []struct {
		name         string
		cutoff, now  time.Time
		wantN        int64
		gone, stayed []string
	}{
		{"nothing ended before the cutoff", base, at(90 * time.Minute), 0, nil, slices.Collect(mapKeys(ids))},
		{"a cutoff in the future is now", at(100 * 24 * time.Hour), at(40 * time.Minute), 9,
			[]string{"completed task", "completed child", "revoked grant's task", "expired grant's task", "revoked grant",
				"expired grant", "revoked grant of a request", "denied request", "request of a revoked grant"},
			[]string{"live grant", "live task", "recently ended task", "expired task", "long child",
				"expired grant with a live task", "live task of an expired grant", "pending request", "lapsed request",
				"approved request", "grant of the approved request"}},
		{"what ended by the cutoff", at(time.Hour), at(90 * time.Minute), 2,
			[]string{"recently ended task", "lapsed request"},
			[]string{"live grant", "live task", "expired task", "long child", "expired grant with a live task",
				"live task of an expired grant", "pending request", "approved request", "grant of the approved request"}},
		{"a chain goes leaves first, a grant after its tasks", at(4 * time.Hour), at(4 * time.Hour), 6,
			[]string{"live task", "expired task", "long child", "expired grant with a live task", "live task of an expired grant",
				"pending request"},
			[]string{"live grant", "approved request", "grant of the approved request"}},
	} {
		n, err := s.PurgeEnded(ctx, step.cutoff, step.now)
		if err != nil || n != step.wantN {
			t.Errorf("%s: PurgeEnded = %d, %v; want %d", step.name, n, err, step.wantN)
		}
		for _, name := range step.gone {
			if exists(t, s, ids[name]) {
				t.Errorf("%s: the %s is still there", step.name, name)
			}
		}
		for _, name := range step.stayed {
			if !exists(t, s, ids[name]) {
				t.Errorf("%s: the %s was purged", step.name, name)
			}
		}
	}
	if n, err := s.PurgeEnded(ctx, at(4*time.Hour), at(4*time.Hour)); err != nil || n != 0 {
		t.Errorf("a second PurgeEnded = %d, %v; want nothing", n, err)
	}
}

func mapKeys(m map[string]string) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// testRetentionManyBatches: more ended tasks than one batch, in chains, all go; the live go on.
func testRetentionManyBatches(t *testing.T, s Store) {
	alice := mustCreateUser(t, s, "alice")
	a := mustClaimedAgent(t, s, "a", alice)
	g := mustCreateGrant(t, s, newGrant(alice.ID, a.ID, base))
	const roots = 700 // × 2 levels: more than one batch of each step
	for range roots {
		r := mustCreateTask(t, s, newTask(g, nil, base))
		mustCreateTask(t, s, newTask(g, &r, base))
	}
	live := mustCreateTask(t, s, newTask(g, nil, at(2*time.Hour)))
	n, err := s.PurgeEnded(t.Context(), at(90*time.Minute), at(90*time.Minute))
	if err != nil || n != 2*roots {
		t.Errorf("PurgeEnded = %d, %v; want %d", n, err, 2*roots)
	}
	tasks, err := s.ListTasks(t.Context(), "", "", g.ID)
	if err != nil || len(tasks) != 1 || tasks[0].ID != live.ID {
		t.Errorf("tasks left: %d, %v; want the live one", len(tasks), err)
	}
}

// testRetentionKeepsAuthority is the property: in random histories of grants, tasks (chains of
// them), revocations and grant requests, purging (Purge and PurgeEnded with any grace, at any
// time) changes no answer of the checks tokens rest on — delegation.Service.CheckLive for a
// task's token (introspection, the proxy, the server's resources), a grant's standing for a
// grant token, IsTokenRevoked for a token that has not expired, and the revocation feed. Every
// check that succeeded before succeeds after, and every refusal stays a refusal.
func testRetentionKeepsAuthority(t *testing.T, s Store) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, seed>>1))
	ctx := t.Context()
	alice := mustCreateUser(t, s, "alice")
	agents := []registry.Agent{mustClaimedAgent(t, s, "a", alice), mustClaimedAgent(t, s, "b", alice)}
	now := base
	svc := delegation.New(delegation.Config{Store: s, Agents: s, Tokens: s, Now: func() time.Time { return now }})
	minutes := func(lo, hi int) time.Duration { return time.Duration(lo+rng.IntN(hi-lo+1)) * time.Minute }

	var grants []delegation.Grant
	var tasks []delegation.Task
	var requests []delegation.GrantRequest
	type tok struct {
		jti, task string
		exp       time.Time
	}
	var toks []tok

	// check is every answer the purge must not change, at now.
	check := func() map[string]string {
		out := map[string]string{}
		for _, tk := range tasks {
			err := svc.CheckLive(ctx, ids.New("jti"), tk.InstanceJKT, []string{tk.AgentID}, tk.ID)
			switch {
			case err == nil:
				out["task "+tk.ID] = "live"
			case errors.Is(err, delegation.ErrNotLive):
				out["task "+tk.ID] = "refused"
			default:
				t.Fatalf("CheckLive %s: %v", tk.ID, err)
			}
		}
		for _, g := range grants {
			// What the token endpoint asks of a grant token's grant (delegation's activeGrant).
			got, err := s.GetGrant(ctx, g.ID)
			switch {
			case errors.Is(err, delegation.ErrNotFound):
				out["grant "+g.ID] = "refused"
			case err != nil:
				t.Fatalf("GetGrant %s: %v", g.ID, err)
			case got.Status == delegation.GrantActive && now.Before(got.ExpiresAt):
				out["grant "+g.ID] = "live"
			default:
				out["grant "+g.ID] = "refused"
			}
		}
		for _, tk := range toks {
			if !now.Before(tk.exp) {
				continue // an expired token is refused by its exp, whatever the store says
			}
			revoked, err := s.IsTokenRevoked(ctx, tk.jti)
			if err != nil {
				t.Fatal(err)
			}
			out["token "+tk.jti] = fmt.Sprint(revoked)
		}
		for _, r := range requests {
			// A pending, unexpired request can still be answered: it must stay.
			if r.Status == delegation.RequestPending && now.Before(r.ExpiresAt) {
				out["request "+r.ID] = fmt.Sprint(exists(t, s, r.ID))
			}
		}
		revs, err := s.ListRevocations(ctx, 0, now, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range revs {
			out[fmt.Sprintf("revocation %d", r.Seq)] = r.Kind + " " + r.ID
		}
		return out
	}
	refresh := func() {
		for i := range tasks {
			if got, err := s.GetTask(ctx, tasks[i].ID); err == nil {
				tasks[i] = got
			}
		}
		for i := range grants {
			if got, err := s.GetGrant(ctx, grants[i].ID); err == nil {
				grants[i] = got
			}
		}
	}
	liveTask := func() (delegation.Task, bool) {
		var live []delegation.Task
		for _, tk := range tasks {
			if tk.Status == delegation.TaskActive && now.Before(tk.ExpiresAt) && exists(t, s, tk.ID) {
				live = append(live, tk)
			}
		}
		if len(live) == 0 {
			return delegation.Task{}, false
		}
		return live[rng.IntN(len(live))], true
	}

	var purged int64
	var lives, purges int
	defer func() {
		t.Logf("%d purges removed %d rows; %d live answers checked", purges, purged, lives)
		if !t.Failed() && (purged == 0 || lives == 0) {
			t.Errorf("the history purged %d rows with %d live answers: it tested nothing", purged, lives)
		}
	}()
	for step := range 150 {
		now = now.Add(minutes(0, 20))
		refresh()
		switch op := rng.IntN(10); {
		case op < 2 || len(grants) == 0:
			g := newGrant(alice.ID, agents[rng.IntN(2)].ID, now)
			g.ExpiresAt = now.Add(minutes(10, 300))
			if rng.IntN(3) == 0 && len(requests) > 0 {
				r := requests[rng.IntN(len(requests))]
				if r.Status == delegation.RequestPending && now.Before(r.ExpiresAt) && exists(t, s, r.ID) {
					g.RequestID = r.ID
					for i := range requests {
						if requests[i].ID == r.ID {
							requests[i].Status = delegation.RequestApproved
						}
					}
				}
			}
			grants = append(grants, mustCreateGrant(t, s, g))
		case op < 5:
			var tk delegation.Task
			if parent, ok := liveTask(); ok && rng.IntN(2) == 0 {
				g, _ := s.GetGrant(ctx, parent.GrantID)
				tk = newTask(g, &parent, now)
				tk.ExpiresAt = parent.ExpiresAt
				if rng.IntN(4) == 0 { // the store does not narrow; the purge must not rely on it
					tk.ExpiresAt = now.Add(minutes(1, 200))
				}
			} else {
				g := grants[rng.IntN(len(grants))]
				if g.Status != delegation.GrantActive || !now.Before(g.ExpiresAt) || !exists(t, s, g.ID) {
					continue
				}
				tk = newTask(g, nil, now)
				tk.ExpiresAt = now.Add(minutes(1, 120))
			}
			tk.AgentID = agents[rng.IntN(2)].ID
			if err := s.CreateTask(ctx, tk, nil, newEvent(actionTaskCreate)); err != nil {
				t.Fatalf("step %d: CreateTask: %v", step, err)
			}
			tasks = append(tasks, tk)
			toks = append(toks, tok{jti: ids.New("jti"), task: tk.ID, exp: now.Add(minutes(1, 30))})
		case op < 6:
			if tk, ok := liveTask(); ok {
				st := []delegation.TaskStatus{delegation.TaskCompleted, delegation.TaskRevoked}[rng.IntN(2)]
				if _, err := s.EndTask(ctx, tk.ID, st, now, newEvent(actionTaskEnd)); err != nil {
					t.Fatalf("step %d: EndTask: %v", step, err)
				}
			}
		case op < 7:
			g := grants[rng.IntN(len(grants))]
			if g.Status == delegation.GrantActive && exists(t, s, g.ID) {
				if _, err := s.RevokeGrant(ctx, g.ID, now, newEvent(actionGrantRevoke)); err != nil {
					t.Fatalf("step %d: RevokeGrant: %v", step, err)
				}
			}
		case op < 8:
			if len(toks) > 0 {
				tk := toks[rng.IntN(len(toks))]
				rt := token.RevokedToken{JTI: tk.jti, AgentID: agents[0].ID, ExpiresAt: tk.exp, RevokedAt: now}
				if err := s.RevokeToken(ctx, rt, newEvent(audit.ActionTokenRevoke)); err != nil {
					t.Fatalf("step %d: RevokeToken: %v", step, err)
				}
			}
		case op < 9:
			r := newRequest(agents[rng.IntN(2)], now)
			r.ExpiresAt = now.Add(minutes(5, 120))
			requests = append(requests, mustCreateRequest(t, s, r))
			if rng.IntN(2) == 0 {
				if _, err := s.DenyGrantRequest(ctx, r.ID, now.Add(time.Minute), newEvent(actionRequestDeny)); err != nil {
					t.Fatalf("step %d: DenyGrantRequest: %v", step, err)
				}
				requests[len(requests)-1].Status = delegation.RequestDenied
			}
		default:
			refresh()
			before := check()
			if _, err := s.Purge(ctx, now); err != nil {
				t.Fatalf("step %d: Purge: %v", step, err)
			}
			grace := []time.Duration{0, time.Minute, minutes(1, 120), 24 * time.Hour}[rng.IntN(4)]
			n, err := s.PurgeEnded(ctx, now.Add(-grace), now)
			if err != nil {
				t.Fatalf("step %d: PurgeEnded: %v", step, err)
			}
			purged += n
			purges++
			for _, v := range before {
				if v == "live" {
					lives++
				}
			}
			if diff := cmp.Diff(before, check()); diff != "" {
				t.Fatalf("step %d (seed %d): the purge at %v with grace %v changed answers (-before +after):\n%s",
					step, seed, now.Sub(base), grace, diff)
			}
		}
	}
}
