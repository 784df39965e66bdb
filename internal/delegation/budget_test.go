package delegation

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestCheckBudget(t *testing.T) {
	tests := map[string]struct {
		budget map[string]int64
		of     BudgetOf
		msg    string // "" = accepted
	}{
		"grant: every key":           {budget: map[string]int64{"calls": 500, "calls:ahrefs": 100, "task_calls": 50, "task_calls:ahrefs": 10, "max_request_bytes": 1 << 20}, of: BudgetOfGrant},
		"task: every key":            {budget: map[string]int64{"calls": 5, "calls:resend-eu": 1, "max_request_bytes": 0}, of: BudgetOfTask},
		"empty":                      {of: BudgetOfGrant},
		"zero":                       {budget: map[string]int64{"calls": 0}, of: BudgetOfTask},
		"requests (the old example)": {budget: map[string]int64{"requests": 500}, of: BudgetOfGrant, msg: `budget "requests" is not a budget mandate knows: use calls, calls:UPSTREAM, task_calls, task_calls:UPSTREAM, max_request_bytes`},
		"unknown on a task":          {budget: map[string]int64{"tokens": 5}, of: BudgetOfTask, msg: `budget "tokens" is not a budget mandate knows: use calls, calls:UPSTREAM, max_request_bytes`},
		"task_calls on a task":       {budget: map[string]int64{"task_calls:api": 5}, of: BudgetOfTask, msg: `budget "task_calls:api" is set on a grant, not a task: a task's own limit is calls:api`},
		"calls: without upstream":    {budget: map[string]int64{"calls:": 5}, of: BudgetOfGrant, msg: `budget "calls:": "" is not an upstream name`},
		"calls: bad upstream":        {budget: map[string]int64{"calls:Ahrefs": 5}, of: BudgetOfTask, msg: `"Ahrefs" is not an upstream name`},
		"calls: nested colon":        {budget: map[string]int64{"calls:a:b": 5}, of: BudgetOfGrant, msg: `"a:b" is not an upstream name`},
		"max_request_bytes: suffix":  {budget: map[string]int64{"max_request_bytes:api": 5}, of: BudgetOfGrant, msg: "is not a budget mandate knows"},
		"case matters":               {budget: map[string]int64{"Calls": 5}, of: BudgetOfGrant, msg: "is not a budget mandate knows"},
		"empty key":                  {budget: map[string]int64{"": 5}, of: BudgetOfGrant, msg: `budget "" is not a budget mandate knows`},
		"negative":                   {budget: map[string]int64{"calls": -1}, of: BudgetOfGrant, msg: `budget "calls" is negative (-1)`},
		"first error, by name":       {budget: map[string]int64{"zz": 1, "aa": 1}, of: BudgetOfGrant, msg: `budget "aa"`},
		"long key clipped":           {budget: map[string]int64{strings.Repeat("k", 500): 1}, of: BudgetOfGrant, msg: "…"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			err := CheckBudget(tt.budget, tt.of)
			if tt.msg == "" {
				if err != nil {
					t.Fatalf("CheckBudget() = %v, want nil", err)
				}
				return
			}
			checkNarrowErr(t, err, LimitBudget, tt.msg)
			if len(err.Error()) > 300 {
				t.Errorf("error of %d bytes: %s", len(err.Error()), err)
			}
		})
	}
}

func TestTaskBudget(t *testing.T) {
	tests := map[string]struct {
		grant, want map[string]int64
	}{
		"none":                          {grant: nil, want: map[string]int64{}},
		"grant total is also a ceiling": {grant: map[string]int64{"calls": 500}, want: map[string]int64{"calls": 500}},
		"task_calls sets each task's":   {grant: map[string]int64{"calls": 500, "task_calls": 50}, want: map[string]int64{"calls": 50}},
		"task_calls over the total":     {grant: map[string]int64{"calls": 5, "task_calls": 50}, want: map[string]int64{"calls": 5}},
		"task_calls without a total":    {grant: map[string]int64{"task_calls:api": 7}, want: map[string]int64{"calls:api": 7}},
		"per upstream and bytes": {grant: map[string]int64{"calls:api": 9, "task_calls:api": 3, "max_request_bytes": 100},
			want: map[string]int64{"calls:api": 3, "max_request_bytes": 100}},
		"old unknown keys dropped": {grant: map[string]int64{"requests": 500, "calls": 2}, want: map[string]int64{"calls": 2}},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, TaskBudget(tt.grant)); diff != "" {
				t.Errorf("TaskBudget() (-want +got):\n%s", diff)
			}
		})
	}
}

func TestCallCounters(t *testing.T) {
	g := Grant{ID: "gr_1", Limits: Limits{Budget: map[string]int64{"calls": 10, "task_calls": 5, "max_request_bytes": 9}}}
	root := Task{ID: "tsk_root", Budget: map[string]int64{"calls": 5, "calls:api": 4}}
	child := Task{ID: "tsk_child", Budget: map[string]int64{"calls": 5, "calls:api": 2}}
	tests := map[string]struct {
		g     Grant
		chain []Task
		up    string
		want  []BudgetCounter
	}{
		"grant and tasks": {g: g, chain: []Task{root, child}, up: "api", want: []BudgetCounter{
			{Task: "tsk_root", Key: "calls:api", Max: 4}, {Task: "tsk_child", Key: "calls:api", Max: 2},
			{Grant: "gr_1", Key: "calls", Max: 10}, {Task: "tsk_root", Key: "calls", Max: 5},
			// the child's calls=5 is left out: its parent's 5 counts every call it would.
		}},
		"another upstream": {g: g, chain: []Task{root, child}, up: "other", want: []BudgetCounter{
			{Grant: "gr_1", Key: "calls", Max: 10}, {Task: "tsk_root", Key: "calls", Max: 5},
		}},
		"inherited total only": {g: Grant{ID: "gr_2", Limits: Limits{Budget: map[string]int64{"calls": 2}}},
			chain: []Task{{ID: "tsk_a", Budget: map[string]int64{"calls": 2}}}, up: "api",
			want: []BudgetCounter{{Grant: "gr_2", Key: "calls", Max: 2}}},
		"no budget": {g: Grant{ID: "gr_3"}, chain: []Task{{ID: "tsk_b"}}, up: "api"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, CallCounters(tt.g, tt.chain, tt.up)); diff != "" {
				t.Errorf("CallCounters() (-want +got):\n%s", diff)
			}
		})
	}
}

// TestBudgetsHoldProperty states the promise of budgets for any grant, tree of tasks and
// sequence of calls: the calls admitted never exceed any limit that applies to them (the
// grant's total, each task's own, each ancestor's), and leaving out the counters that can never
// run out (CallCounters) admits exactly the calls that counting every limit would. Tasks are
// built as the token endpoint builds them (CheckBudget, TaskBudget, NarrowBudget); counting is
// all or nothing, as the store's UseBudgets.
func TestBudgetsHoldProperty(t *testing.T) {
	upstreams := []string{"api", "mail"}
	randomBudget := func(r *rand.Rand, keys []string) map[string]int64 {
		b := map[string]int64{}
		for _, k := range keys {
			if r.IntN(3) == 0 {
				b[k] = int64(r.IntN(6))
			}
		}
		return b
	}
	for seed := uint64(1); seed <= 2000; seed++ {
		r := rand.New(rand.NewPCG(seed, 0))
		g := Grant{ID: "gr_p", Limits: Limits{Budget: randomBudget(r, []string{"calls", "calls:api", "calls:mail", "task_calls", "task_calls:api"})}}
		if err := CheckBudget(g.Limits.Budget, BudgetOfGrant); err != nil {
			t.Fatal(err)
		}
		// A forest of tasks: each either starts from the grant or is handed on from an earlier one.
		var tasks []Task
		parentOf := map[string]int{}
		for i := 0; i < 1+r.IntN(6); i++ {
			want := randomBudget(r, []string{"calls", "calls:api", "calls:mail"})
			t0 := Task{ID: fmt.Sprintf("tsk_%d", i)}
			parent := TaskBudget(g.Limits.Budget)
			p := -1
			if len(tasks) > 0 && r.IntN(2) == 0 {
				p = r.IntN(len(tasks))
				parent = tasks[p].Budget
				t0.ParentID = tasks[p].ID
			}
			b, err := NarrowBudget(want, parent, "the parent")
			if err != nil {
				continue // refused at the token endpoint: no task
			}
			t0.Budget = b
			parentOf[t0.ID] = p
			tasks = append(tasks, t0)
		}
		if len(tasks) == 0 {
			continue
		}
		chainOf := func(i int) []Task {
			var c []Task
			for ; i >= 0; i = parentOf[tasks[i].ID] {
				c = append([]Task{tasks[i]}, c...)
			}
			return c
		}
		lean, full := map[string]int64{}, map[string]int64{}
		admit := func(counts map[string]int64, cs []BudgetCounter) bool {
			for _, c := range cs {
				if counts[c.Grant+c.Task+" "+c.Key] >= c.Max {
					return false
				}
			}
			for _, c := range cs {
				counts[c.Grant+c.Task+" "+c.Key]++
			}
			return true
		}
		// what each limit has seen admitted: limits[owner+key] = calls under it.
		under := map[string]int64{}
		for n := 0; n < 40; n++ {
			i, up := r.IntN(len(tasks)), upstreams[r.IntN(len(upstreams))]
			chain := chainOf(i)
			okLean := admit(lean, CallCounters(g, chain, up))
			okFull := admit(full, allCounters(g, chain, up))
			if okLean != okFull {
				t.Fatalf("seed %d: call %d by %s to %s: CallCounters admits %v, every limit counted admits %v (grant %v, chain %+v)",
					seed, n, tasks[i].ID, up, okLean, okFull, g.Limits.Budget, chain)
			}
			if !okLean {
				continue
			}
			for _, c := range allCounters(g, chain, up) {
				k := c.Grant + c.Task + " " + c.Key
				if under[k]++; under[k] > c.Max {
					t.Fatalf("seed %d: %d calls under %s, limit %d", seed, under[k], k, c.Max)
				}
			}
		}
	}
}

// allCounters is every limit that applies to a call, none left out.
func allCounters(g Grant, chain []Task, upstream string) []BudgetCounter {
	var out []BudgetCounter
	for _, key := range []string{CallsKey(upstream), BudgetCalls} {
		if v, ok := g.Limits.Budget[key]; ok {
			out = append(out, BudgetCounter{Grant: g.ID, Key: key, Max: v})
		}
		for _, t := range chain {
			if v, ok := t.Budget[key]; ok {
				out = append(out, BudgetCounter{Task: t.ID, Key: key, Max: v})
			}
		}
	}
	return out
}

func TestBudgetExhaustedError(t *testing.T) {
	err := fmt.Errorf("wrapped: %w", &BudgetExhaustedError{Counter: BudgetCounter{Grant: "gr_1", Key: "calls", Max: 2}})
	if !errors.Is(err, ErrBudgetExhausted) {
		t.Fatal("not ErrBudgetExhausted")
	}
	var e *BudgetExhaustedError
	if !errors.As(err, &e) || e.Counter.Grant != "gr_1" || !strings.Contains(err.Error(), "calls of gr_1 (2)") {
		t.Fatalf("%v", err)
	}
}

// FuzzCheckBudget: any key and value is accepted or refused with a NarrowError, never a panic,
// and a key accepted is one of the documented forms.
func FuzzCheckBudget(f *testing.F) {
	for _, k := range []string{"calls", "calls:api", "task_calls:x-1", "max_request_bytes", "requests", "calls:", "task_calls", ":", "calls:A"} {
		f.Add(k, int64(3), true)
		f.Add(k, int64(-1), false)
	}
	f.Fuzz(func(t *testing.T, key string, v int64, grant bool) {
		of := BudgetOfTask
		if grant {
			of = BudgetOfGrant
		}
		err := CheckBudget(map[string]int64{key: v}, of)
		if err != nil {
			var ne *NarrowError
			if !errors.As(err, &ne) || ne.Limit != LimitBudget {
				t.Fatalf("error %T %v, want a budget NarrowError", err, err)
			}
			return
		}
		name, up, per := strings.Cut(key, ":")
		switch {
		case v < 0:
			t.Fatalf("negative %d accepted", v)
		case name == BudgetMaxRequestBytes && !per, name == BudgetCalls && !per, name == BudgetTaskCalls && !per && grant:
		case (name == BudgetCalls || (name == BudgetTaskCalls && grant)) && per && nameOK(up):
		default:
			t.Fatalf("key %q accepted on %v", key, of)
		}
	})
}

func nameOK(s string) bool {
	if len(s) < 1 || len(s) > 40 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// budgetRefusal fails t unless err is a budget NarrowError.
func budgetRefusal(t *testing.T, err error) {
	t.Helper()
	var ne *NarrowError
	if !errors.As(err, &ne) || ne.Limit != LimitBudget {
		t.Fatalf("error %T %v, want a budget NarrowError", err, err)
	}
}

// FuzzParseBudgetValue: a value means the same written for the CLI (key=N) or in JSON (the API,
// the token endpoint): accepted by one, accepted by the other with the same number; and it is
// accepted only written exactly as grant show displays it, so nothing accepted means other
// than what is shown.
func FuzzParseBudgetValue(f *testing.F) {
	for _, s := range []string{"0", "3", "100", "9223372036854775807", "9223372036854775808", "+3", "03", "-0", "-1", "2.0", "1e2",
		" 3", "3 ", "null", `"3"`, "true", "{}", "0x10", "３", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseBudgetValue("calls", s)
		m, jerr := ParseBudgetJSON([]byte(`{"calls":` + s + `}`))
		if err != nil {
			budgetRefusal(t, err)
		} else if strconv.FormatInt(n, 10) != s {
			t.Fatalf("%q accepted as %d, which is shown otherwise", s, n)
		} else if jerr != nil || len(m) != 1 || m["calls"] != n {
			t.Fatalf("%q: the CLI reads %d, JSON reads %v, %v", s, n, m, jerr)
		}
		if jerr != nil {
			budgetRefusal(t, jerr)
			return
		}
		// JSON accepted one key: s was one number between JSON spaces, which the CLI reads alike.
		if v, err := ParseBudgetValue("calls", strings.Trim(s, " \t\r\n")); len(m) == 1 && (err != nil || v != m["calls"]) {
			t.Fatalf("%q: JSON reads %v, the CLI %d, %v", s, m, v, err)
		}
	})
}

// FuzzParseBudgetJSON: any text is refused with a budget NarrowError or read as encoding/json
// reads it (so no duplicate or null was read some other way), every value written as the CLI
// and grant show write it, and the budget read writes back as itself.
func FuzzParseBudgetJSON(f *testing.F) {
	for _, s := range []string{`{"calls":3}`, `{"calls":null}`, `{"calls":3,"calls":1000}`, `{"calls":3,"\u0063alls":1}`, `{"calls":2.0}`,
		`{"calls":1e2}`, `{"calls:items":0, "task_calls":5}`, `{}`, `null`, `[]`, `{"calls":3} {}`, `{"calls":{"a":1}}`, `{"calls":-0}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		m, err := ParseBudgetJSON([]byte(raw))
		if err != nil {
			budgetRefusal(t, err)
			return
		}
		var std map[string]int64
		if err := json.Unmarshal([]byte(raw), &std); err != nil || !cmp.Equal(m, std, cmpopts.EquateEmpty()) {
			t.Fatalf("%q read as %v; encoding/json reads %v, %v", raw, m, std, err)
		}
		for k, v := range m {
			if n, err := ParseBudgetValue(k, strconv.FormatInt(v, 10)); err != nil || n != v {
				t.Fatalf("%q: %s=%d does not read back as written: %d, %v", raw, k, v, n, err)
			}
		}
		b, _ := json.Marshal(m)
		if again, err := ParseBudgetJSON(b); err != nil || !cmp.Equal(m, again, cmpopts.EquateEmpty()) {
			t.Fatalf("%q read as %v, written as %s, read back as %v, %v", raw, m, b, again, err)
		}
	})
}
