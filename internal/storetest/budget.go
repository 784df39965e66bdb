package storetest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/mandate-dev/mandate/internal/delegation"
)

// mustTask creates a user, a claimed agent, a grant and an active task, and returns the task.
func mustTask(t *testing.T, s Store, handle string) delegation.Task {
	t.Helper()
	u := mustCreateUser(t, s, "user-"+handle)
	a := mustClaimedAgent(t, s, handle, u)
	g := mustCreateGrant(t, s, newGrant(u.ID, a.ID, base))
	return mustCreateTask(t, s, newTask(g, nil, at(time.Minute)))
}

func taskCounter(tk delegation.Task, key string, max int64) delegation.BudgetCounter {
	return delegation.BudgetCounter{Task: tk.ID, Key: key, Max: max}
}

func grantCounter(id, key string, max int64) delegation.BudgetCounter {
	return delegation.BudgetCounter{Grant: id, Key: key, Max: max}
}

// wantExhausted checks that err is a *BudgetExhaustedError naming want.
func wantExhausted(t *testing.T, what string, err error, want delegation.BudgetCounter) {
	t.Helper()
	var e *delegation.BudgetExhaustedError
	if !errors.As(err, &e) || !errors.Is(err, delegation.ErrBudgetExhausted) {
		t.Fatalf("%s: err = %v (%T), want a BudgetExhaustedError", what, err, err)
	}
	if diff := cmp.Diff(want, e.Counter); diff != "" {
		t.Errorf("%s: counter that ran out (-want +got):\n%s", what, diff)
	}
}

func wantGrantUsed(t *testing.T, s Store, grantID string, want map[string]int64) {
	t.Helper()
	got, err := s.GrantBudgetUsed(t.Context(), grantID)
	if err != nil {
		t.Fatalf("GrantBudgetUsed: %v", err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("GrantBudgetUsed(%s) (-want +got):\n%s", grantID, diff)
	}
}

func testUseBudgets(t *testing.T, s Store) {
	ctx := t.Context()
	tk := mustTask(t, s, "a1")
	other := mustTask(t, s, "a2")
	before := eventCount(t, s)
	wantGrantUsed(t, s, tk.GrantID, map[string]int64{})
	for range 3 {
		if err := s.UseBudgets(ctx, []delegation.BudgetCounter{taskCounter(tk, "calls:ahrefs", 3)}); err != nil {
			t.Fatalf("UseBudgets: %v", err)
		}
	}
	for range 2 {
		err := s.UseBudgets(ctx, []delegation.BudgetCounter{taskCounter(tk, "calls:ahrefs", 3)})
		wantExhausted(t, "task counter past max", err, taskCounter(tk, "calls:ahrefs", 3))
	}
	// A larger max (the budget was raised) counts on from where it was: 4 of 4.
	if err := s.UseBudgets(ctx, []delegation.BudgetCounter{taskCounter(tk, "calls:ahrefs", 4)}); err != nil {
		t.Errorf("UseBudgets with a larger max: %v", err)
	}
	wantExhausted(t, "at the larger max", s.UseBudgets(ctx, []delegation.BudgetCounter{taskCounter(tk, "calls:ahrefs", 4)}), taskCounter(tk, "calls:ahrefs", 4))

	// A grant's counters are its own: the same key counts apart per grant and per task.
	for range 2 {
		if err := s.UseBudgets(ctx, []delegation.BudgetCounter{grantCounter(tk.GrantID, "calls", 2)}); err != nil {
			t.Fatalf("UseBudgets(grant): %v", err)
		}
	}
	wantExhausted(t, "grant counter past max", s.UseBudgets(ctx, []delegation.BudgetCounter{grantCounter(tk.GrantID, "calls", 2)}),
		grantCounter(tk.GrantID, "calls", 2))
	for _, c := range []delegation.BudgetCounter{taskCounter(tk, "calls", 1), grantCounter(other.GrantID, "calls", 1), taskCounter(other, "calls:ahrefs", 1)} {
		if err := s.UseBudgets(ctx, []delegation.BudgetCounter{c}); err != nil {
			t.Errorf("UseBudgets(%+v): %v", c, err)
		}
	}
	wantGrantUsed(t, s, tk.GrantID, map[string]int64{"calls": 2})
	wantGrantUsed(t, s, other.GrantID, map[string]int64{"calls": 1})

	for _, max := range []int64{0, -1} {
		c := grantCounter(tk.GrantID, "calls:zero", max)
		wantExhausted(t, fmt.Sprintf("max %d", max), s.UseBudgets(ctx, []delegation.BudgetCounter{c}), c)
	}
	wantErr(t, "UseBudgets(unknown task)", s.UseBudgets(ctx, []delegation.BudgetCounter{{Task: "tsk_unknown", Key: "calls", Max: 3}}), delegation.ErrNotFound)
	wantErr(t, "UseBudgets(unknown grant)", s.UseBudgets(ctx, []delegation.BudgetCounter{grantCounter("gr_unknown", "calls", 3)}), delegation.ErrNotFound)
	wantErr(t, "UseBudgets(a counter of neither)", s.UseBudgets(ctx, []delegation.BudgetCounter{{Key: "calls", Max: 3}}), errAny)
	if err := s.UseBudgets(ctx, nil); err != nil {
		t.Errorf("UseBudgets(none): %v", err)
	}
	wantGrantUsed(t, s, "gr_unknown", map[string]int64{})
	wantNoNewEvents(t, s, before) // counting is not an audited change; the proxy records calls
}

// testUseBudgetsAllOrNothing: a call refused by one counter counts against none of the others,
// whichever the order they are given in.
func testUseBudgetsAllOrNothing(t *testing.T, s Store) {
	ctx := t.Context()
	tk := mustTask(t, s, "a1")
	grant := grantCounter(tk.GrantID, "calls", 10)
	task := taskCounter(tk, "calls", 1)
	if err := s.UseBudgets(ctx, []delegation.BudgetCounter{grant, task}); err != nil {
		t.Fatalf("first call: %v", err)
	}
	wantExhausted(t, "task spent, grant first", s.UseBudgets(ctx, []delegation.BudgetCounter{grant, task}), task)
	wantExhausted(t, "task spent, task first", s.UseBudgets(ctx, []delegation.BudgetCounter{task, grant}), task)
	wantGrantUsed(t, s, tk.GrantID, map[string]int64{"calls": 1})

	// An unknown task in the list: nothing counted either.
	err := s.UseBudgets(ctx, []delegation.BudgetCounter{grant, {Task: "tsk_unknown", Key: "calls", Max: 5}})
	wantErr(t, "with an unknown task", err, delegation.ErrNotFound)
	wantGrantUsed(t, s, tk.GrantID, map[string]int64{"calls": 1})

	// A max of 0 refuses before anything is counted.
	wantExhausted(t, "a zero max", s.UseBudgets(ctx, []delegation.BudgetCounter{grant, grantCounter(tk.GrantID, "calls:ahrefs", 0)}),
		grantCounter(tk.GrantID, "calls:ahrefs", 0))
	wantGrantUsed(t, s, tk.GrantID, map[string]int64{"calls": 1})
}

// testUseBudgetsConcurrent: many tasks of one grant call at once, each counting against the
// grant's total, its parent's and its own, given in random orders. Exactly the grant's max
// succeed; a call a task's own counter refuses never spends the grant's.
func testUseBudgetsConcurrent(t *testing.T, s Store) {
	ctx := t.Context()
	root := mustTask(t, s, "a1")
	g := mustGetGrant(t, s, root.GrantID)
	var children []delegation.Task
	for i := range 5 {
		c := newTask(g, &root, at(time.Duration(i+2)*time.Minute))
		children = append(children, mustCreateTask(t, s, c))
	}
	run := func(calls int, counters func(i int) []delegation.BudgetCounter) (ok, refused int64) {
		var nOK, nRefused atomic.Int64
		var wg sync.WaitGroup
		for i := range calls {
			wg.Go(func() {
				cs := counters(i)
				rand.Shuffle(len(cs), func(a, b int) { cs[a], cs[b] = cs[b], cs[a] })
				switch err := s.UseBudgets(ctx, cs); {
				case err == nil:
					nOK.Add(1)
				case errors.Is(err, delegation.ErrBudgetExhausted):
					nRefused.Add(1)
				default:
					t.Errorf("UseBudgets: %v", err)
				}
			})
		}
		wg.Wait()
		return nOK.Load(), nRefused.Load()
	}

	// 50 calls spread over 5 children; the grant allows 10 in all.
	ok, refused := run(50, func(i int) []delegation.BudgetCounter {
		return []delegation.BudgetCounter{grantCounter(g.ID, "calls", 10), taskCounter(root, "calls", 100), taskCounter(children[i%5], "calls", 100)}
	})
	if ok != 10 || refused != 40 {
		t.Errorf("grant total 10: %d succeeded, %d refused; want 10 and 40", ok, refused)
	}
	wantGrantUsed(t, s, g.ID, map[string]int64{"calls": 10})

	// Each child may make 1 more call of calls:ahrefs: 5 succeed, and the grant's calls:ahrefs
	// counts those 5 only.
	ok, refused = run(50, func(i int) []delegation.BudgetCounter {
		return []delegation.BudgetCounter{grantCounter(g.ID, "calls:ahrefs", 100), taskCounter(children[i%5], "calls:ahrefs", 1)}
	})
	if ok != 5 || refused != 45 {
		t.Errorf("one call per child: %d succeeded, %d refused; want 5 and 45", ok, refused)
	}
	wantGrantUsed(t, s, g.ID, map[string]int64{"calls": 10, "calls:ahrefs": 5})
}
