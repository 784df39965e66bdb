package delegation

// Budgets: the keys a grant or a task may carry, what each one counts, and the counters a call
// through the proxy is counted against. docs/delegation.md has the same table for users.
//
// A budget limits what is done under what carries it. A grant's calls count every call of every
// task of the grant (and of the tasks those handed on); a task's calls count the calls of the
// task and of the tasks it handed on. Every key is an upper limit; a key left out is no limit.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/mandate-dev/mandate/internal/vault"
)

// Budget keys.
const (
	// BudgetCalls limits calls through the proxy, to every upstream: on a grant, the total of
	// all its tasks; on a task, its own and its children's.
	BudgetCalls = "calls"
	// BudgetTaskCalls, on a grant only, is the calls each of its tasks may make: a task started
	// from the grant gets calls (or calls:<upstream>) of at most this.
	BudgetTaskCalls = "task_calls"
	// BudgetMaxRequestBytes limits the body of one request, in bytes; tasks inherit it.
	BudgetMaxRequestBytes = "max_request_bytes"
)

// BudgetOf says where a budget is set: keys differ between a grant and a task.
type BudgetOf int

// Where a budget is set.
const (
	BudgetOfGrant BudgetOf = iota // grant create, grant request, approval
	BudgetOfTask                  // task start, sub-delegation
)

// CallsKey is the budget key of calls to one upstream: calls:<upstream>.
func CallsKey(upstream string) string { return BudgetCalls + ":" + upstream }

// KnownBudgetKeys lists the keys a budget set on of may carry, for error messages and help.
func KnownBudgetKeys(of BudgetOf) string {
	if of == BudgetOfGrant {
		return "calls, calls:UPSTREAM, task_calls, task_calls:UPSTREAM, max_request_bytes"
	}
	return "calls, calls:UPSTREAM, max_request_bytes"
}

// CheckBudget refuses a budget key that nothing enforces, a calls key whose upstream name is not
// valid, and a negative value, naming the keys it knows. Keys are checked in sorted order, so
// the error does not depend on map order.
func CheckBudget(budget map[string]int64, of BudgetOf) error {
	for _, k := range sortedKeys(budget) {
		if v := budget[k]; v < 0 {
			return narrowErr(LimitBudget, "budget %q is negative (%d): want a whole number >= 0", clip(k), v)
		}
		if err := checkBudgetKey(k, of); err != nil {
			return err
		}
	}
	return nil
}

func checkBudgetKey(k string, of BudgetOf) error {
	name, upstream, perUpstream := strings.Cut(k, ":")
	switch {
	case name == BudgetMaxRequestBytes && !perUpstream:
		return nil
	case name == BudgetCalls, name == BudgetTaskCalls && of == BudgetOfGrant:
		if !perUpstream {
			return nil
		}
		if vault.ValidName(upstream) != nil {
			return narrowErr(LimitBudget, "budget %q: %q is not an upstream name (1 to 40 of a-z, 0-9 and -)", clip(k), clip(upstream))
		}
		return nil
	case name == BudgetTaskCalls:
		return narrowErr(LimitBudget, "budget %q is set on a grant, not a task: a task's own limit is %s (known keys: %s)",
			clip(k), strings.Replace(k, BudgetTaskCalls, BudgetCalls, 1), KnownBudgetKeys(of))
	}
	return narrowErr(LimitBudget, "budget %q is not a budget mandate knows: use %s", clip(k), KnownBudgetKeys(of))
}

// ParseBudgetValue reads the value of budget key as written: a whole number in plain decimal
// digits, without sign, leading zero (0 itself is fine), fraction, exponent or spaces. Every
// entry point (the CLI's key=N, the API's and the token endpoint's JSON) reads values by this
// one rule, so a budget written anywhere means the same, and 2.0, 1e2, +3 or 03 are refused
// everywhere instead of read differently somewhere.
func ParseBudgetValue(key, s string) (int64, error) {
	plain := s != "" && (s == "0" || s[0] != '0')
	for i := 0; plain && i < len(s); i++ {
		plain = '0' <= s[i] && s[i] <= '9'
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if !plain || err != nil {
		return 0, narrowErr(LimitBudget, "budget %q is %s: want a whole number >= 0 in plain digits (no sign, leading zero, fraction or exponent), e.g. 100",
			clip(key), clip(s))
	}
	return n, nil
}

// ParseBudgetJSON reads a budget written as a JSON object of keys to values. It refuses what
// json.Unmarshal would quietly read another way: a key given twice (the last would win), a null
// (it would be 0, which blocks every call) and a value written other than by ParseBudgetValue's
// rule. Which keys are known is CheckBudget's concern.
func ParseBudgetJSON(raw []byte) (map[string]int64, error) {
	notObject := narrowErr(LimitBudget, `budget must be a JSON object of budget keys to whole numbers, e.g. {"calls": 100}`)
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, notObject
	}
	out := map[string]int64{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, notObject
		}
		key, _ := tok.(string) // Token gives only strings as object keys
		if _, dup := out[key]; dup {
			return nil, narrowErr(LimitBudget, "budget %q is given twice: give each key once", clip(key))
		}
		if tok, err = dec.Token(); err != nil {
			return nil, notObject
		}
		num, ok := tok.(json.Number)
		if !ok {
			return nil, narrowErr(LimitBudget, "budget %q is %s: want a whole number >= 0, e.g. {%q: 100}", clip(key), jsonKind(tok), clip(key))
		}
		if out[key], err = ParseBudgetValue(key, string(num)); err != nil {
			return nil, err
		}
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('}') {
		return nil, notObject
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, notObject
	}
	return out, nil
}

// jsonKind names what a JSON token is, for an error message.
func jsonKind(tok json.Token) string {
	switch tok := tok.(type) {
	case nil:
		return "null"
	case bool:
		return strconv.FormatBool(tok)
	case string:
		return "a string"
	case json.Delim:
		if tok == '[' {
			return "an array"
		}
		return "an object"
	}
	return "not a number"
}

// Upstreams lists the vault's upstreams, for budget keys that name one.
type Upstreams interface {
	ListUpstreams(ctx context.Context) ([]vault.Upstream, error)
}

// checkBudgetUpstreams refuses a calls:<upstream> or task_calls:<upstream> key of budget whose
// upstream does not exist, naming those that do: a typo would otherwise leave the upstream meant
// unlimited while the grant shows a limit. A key parent has is inherited, not named anew, so it
// passes even if its upstream was removed since.
func (s *Service) checkBudgetUpstreams(ctx context.Context, budget, parent map[string]int64) error {
	var known []string
	for _, k := range sortedKeys(budget) {
		_, upstream, perUpstream := strings.Cut(k, ":")
		if _, inherited := parent[k]; !perUpstream || inherited || s.cfg.Upstreams == nil {
			continue
		}
		if known == nil {
			list, err := s.cfg.Upstreams.ListUpstreams(ctx)
			if err != nil {
				return fmt.Errorf("list upstreams for budget %q: %w", clip(k), err)
			}
			known = []string{}
			for _, u := range list {
				known = append(known, u.Name)
			}
			slices.Sort(known)
		}
		if !slices.Contains(known, upstream) {
			names := "none yet (see mandate upstream list)"
			if len(known) > 0 {
				names = clip(strings.Join(known, ", "))
			}
			return narrowErr(LimitBudget, "budget %q names upstream %q, which does not exist: known upstreams are %s", clip(k), clip(upstream), names)
		}
	}
	return nil
}

// TaskBudget is the most a task started from a grant with budget may carry: the grant's calls
// keys, lowered to its task_calls keys where those are set, and max_request_bytes. Keys nothing
// enforces (kept by grants made before keys were checked) are left out.
func TaskBudget(grant map[string]int64) map[string]int64 {
	out := make(map[string]int64, len(grant))
	for k, v := range grant {
		name, rest, perUpstream := strings.Cut(k, ":")
		switch name {
		case BudgetCalls, BudgetMaxRequestBytes:
		case BudgetTaskCalls:
			k = BudgetCalls
			if perUpstream {
				k = CallsKey(rest)
			}
		default:
			continue
		}
		if cur, ok := out[k]; !ok || v < cur {
			out[k] = v
		}
	}
	return out
}

// BudgetCounter is one counter a call is counted against: budget key Key of a grant (Grant set)
// or of a task (Task set), which may reach Max.
type BudgetCounter struct {
	Grant string // gr_… for a count across the whole grant
	Task  string // tsk_… for a count of one task and its children
	Key   string
	Max   int64
}

// BudgetExhaustedError says which counter refused a call; it wraps ErrBudgetExhausted.
type BudgetExhaustedError struct{ Counter BudgetCounter }

func (e *BudgetExhaustedError) Error() string {
	of := e.Counter.Task
	if e.Counter.Grant != "" {
		of = e.Counter.Grant
	}
	return fmt.Sprintf("budget %s of %s (%d): %v", e.Counter.Key, of, e.Counter.Max, ErrBudgetExhausted)
}

func (e *BudgetExhaustedError) Unwrap() error { return ErrBudgetExhausted }

// CallCounters are the counters one call to upstream is counted against: the grant's calls
// keys, then those of each task of chain (the top task first, the caller's last). A task's limit
// no lower than one counted above it is left out: the counter above counts every call it would,
// from the start, with no more room, so it can never be the one that runs out.
func CallCounters(g Grant, chain []Task, upstream string) []BudgetCounter {
	var out []BudgetCounter
	for _, key := range [...]string{CallsKey(upstream), BudgetCalls} {
		lowest := int64(math.MaxInt64)
		if v, ok := g.Limits.Budget[key]; ok {
			out = append(out, BudgetCounter{Grant: g.ID, Key: key, Max: v})
			lowest = v
		}
		for _, t := range chain {
			if v, ok := t.Budget[key]; ok && v < lowest {
				out = append(out, BudgetCounter{Task: t.ID, Key: key, Max: v})
				lowest = v
			}
		}
	}
	return out
}

// HasCallBudget reports whether a task's budget limits calls to upstream. Every task carries
// the calls keys of the grant and the tasks above it (narrowed, never dropped), so a task
// without one has no counter above it either.
func HasCallBudget(budget map[string]int64, upstream string) bool {
	_, all := budget[BudgetCalls]
	_, one := budget[CallsKey(upstream)]
	return all || one
}

// sortedKeys returns m's keys in order.
func sortedKeys(m map[string]int64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
