package proxy

import (
	"strings"
	"testing"

	"github.com/mandate-dev/mandate/internal/delegation"
)

// TestBudgetSpent: the 429 says what can be done, and never "start a new task with a larger
// budget" when the grant's task_calls keeps every new task at or below the one spent.
func TestBudgetSpent(t *testing.T) {
	task := func(key string, max int64) delegation.BudgetCounter {
		return delegation.BudgetCounter{Task: "tsk_a", Key: key, Max: max}
	}
	for name, tc := range map[string]struct {
		c     delegation.BudgetCounter
		grant map[string]int64
		want  string
	}{
		"grant total": {delegation.BudgetCounter{Grant: "gr_x", Key: "calls", Max: 9}, map[string]int64{"calls": 9},
			"grant gr_x's budget of 9 calls through the proxy, shared by all its tasks, is used up: ask the grant's owner for a new grant"},
		"no task_calls": {task("calls", 3), map[string]int64{"calls": 9},
			"the task's budget of 3 calls through the proxy is used up: start a new task with a larger budget"},
		"task_calls above": {task("calls", 3), map[string]int64{"task_calls": 5},
			"the task's budget of 3 calls through the proxy is used up: start a new task with a larger budget, within the grant's task_calls (5)"},
		"task_calls reached": {task("calls", 5), map[string]int64{"task_calls": 5},
			"the task's budget of 5 calls through the proxy is used up, the most the grant's task_calls (5) allows a task: ask the grant's owner for a new grant"},
		"per upstream": {task("calls:items", 2), map[string]int64{"task_calls:items": 2, "task_calls": 10},
			"the task's budget of 2 calls to items is used up, the most the grant's task_calls:items (2) allows a task"},
		"per upstream, only an all-upstream bound": {task("calls:items", 2), map[string]int64{"task_calls": 1},
			"the task's budget of 2 calls to items is used up: start a new task with a larger budget"},
		"ancestor": {delegation.BudgetCounter{Task: "tsk_top", Key: "calls", Max: 4}, map[string]int64{"task_calls": 4},
			"task tsk_top's budget of 4 calls through the proxy, which counts the calls of the tasks it handed on, is used up"},
	} {
		if got := budgetSpent(tc.c, tc.grant, "tsk_a", "items"); !strings.HasPrefix(got, tc.want) {
			t.Errorf("%s: budgetSpent = %q, want %q", name, got, tc.want)
		}
	}
}
