package federation

import (
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"sync"

	"cel.dev/cel-go/cel"
	celast "cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/interpreter"

	"github.com/mandate-dev/mandate/internal/apperr"
)

// Limits on rule conditions: they run on every assertion, so they must stay small and cheap.
const (
	maxConditionBytes = 4 << 10
	maxConditionNodes = 500
	// conditionCostLimit bounds one evaluation (CEL cost units, about one per operation or
	// list element visited).
	conditionCostLimit = 10000
	maxProgramCache    = 10000
)

// The condition's variables: the claims, under two names.
const (
	varClaims    = "claims"
	varAssertion = "assertion"
)

// conditions compiles CEL conditions and caches their programs. The environment has CEL's
// standard library only: extension functions such as strings.replace could make constant
// folding at save time blow up before any cost limit applies.
type conditions struct {
	env *cel.Env

	mu       sync.Mutex
	programs map[string]cel.Program // by rule id and condition text
}

func newConditions() *conditions {
	claimsType := cel.MapType(cel.StringType, cel.DynType)
	env, err := cel.NewEnv(
		cel.Variable(varClaims, claimsType),
		cel.Variable(varAssertion, claimsType),
		cel.ParserExpressionSizeLimit(maxConditionBytes),
	)
	if err != nil {
		panic("federation: CEL environment: " + err.Error()) // fixed options: cannot fail
	}
	return &conditions{env: env, programs: map[string]cel.Program{}}
}

// compile parses, type-checks and vets a condition. Refusals say what to change.
func (c *conditions) compile(text string) (*cel.Ast, cel.Program, error) {
	invalid := func(format string, args ...any) error {
		return apperr.New(apperr.Invalid, "condition", format, args...)
	}
	if len(text) > maxConditionBytes {
		return nil, nil, invalid("the condition is %d bytes; keep it under %d (4 KiB)", len(text), maxConditionBytes)
	}
	checked, iss := c.env.Compile(text)
	if iss.Err() != nil {
		return nil, nil, invalid("the condition does not compile: %s", apperr.Clip(iss.Err().Error(), 600))
	}
	if !checked.OutputType().IsExactType(cel.BoolType) {
		return nil, nil, invalid(`the condition is of type %s; it must be a bool, e.g. claims.environment == "production"`, checked.OutputType())
	}
	if n := countNodes(checked.NativeRep().Expr()); n > maxConditionNodes {
		return nil, nil, invalid("the condition has %d expression nodes, more than %d: split it or use the exact claims of the rule", n, maxConditionNodes)
	}
	prg, err := c.env.Program(checked, cel.CostLimit(conditionCostLimit))
	if err != nil {
		return nil, nil, invalid("the condition cannot be planned: %v", err)
	}
	if err := c.checkCost(checked); err != nil {
		return nil, nil, err
	}
	constant, err := c.isConstant(checked)
	if err != nil {
		return nil, nil, invalid("the condition could not be analysed: %s", apperr.Clip(err.Error(), 300))
	}
	if constant {
		return nil, nil, invalid(`the condition does not depend on the assertion (it is the same for every token): write it over claims, e.g. claims.environment == "production"`)
	}
	return checked, prg, nil
}

// checkCost evaluates the condition exhaustively (no short circuits) over empty claims with the
// runtime cost limit. Its constant parts cost the same for every assertion, so a condition whose
// constant parts exceed the limit could never pass; refusing it here also keeps constant folding
// below cheap.
func (c *conditions) checkCost(checked *cel.Ast) error {
	prg, err := c.env.Program(checked, cel.CostLimit(conditionCostLimit), cel.EvalOptions(cel.OptExhaustiveEval))
	if err != nil {
		return apperr.New(apperr.Invalid, "condition", "the condition cannot be planned: %v", err)
	}
	empty := map[string]any{}
	_, _, err = prg.Eval(map[string]any{varClaims: empty, varAssertion: empty})
	var cancelled interpreter.EvalCancelledError
	if errors.As(err, &cancelled) {
		return apperr.New(apperr.Invalid, "condition", "the condition costs more than the limit of %d to evaluate: make it simpler", conditionCostLimit)
	}
	return nil
}

// isConstant folds the constant parts of the condition and reports whether what is left no
// longer reads the claims: `true`, `1 == 1`, `claims.x == "a" || true` all fold to a literal.
func (c *conditions) isConstant(checked *cel.Ast) (bool, error) {
	folder, err := cel.NewConstantFoldingOptimizer()
	if err != nil {
		return false, err
	}
	opt, err := cel.NewStaticOptimizer(folder)
	if err != nil {
		return false, err
	}
	folded, iss := opt.Optimize(c.env, checked)
	if iss.Err() != nil {
		return false, iss.Err()
	}
	return !readsClaims(folded.NativeRep().Expr()), nil
}

// program returns the compiled condition of r, from the cache when it was compiled before.
func (c *conditions) program(r Rule) (cel.Program, error) {
	cacheKey := r.ID + "\x00" + r.Condition
	c.mu.Lock()
	prg, ok := c.programs[cacheKey]
	c.mu.Unlock()
	if ok {
		return prg, nil
	}
	_, prg, err := c.compile(r.Condition)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if len(c.programs) >= maxProgramCache { // rules are few; this only bounds a leak
		clear(c.programs)
	}
	c.programs[cacheKey] = prg
	c.mu.Unlock()
	return prg, nil
}

// eval runs the condition of r over claims. An evaluation error (a missing claim, a wrong
// type, the cost limit) makes the condition false.
func (c *conditions) eval(r Rule, claims map[string]any) *Refusal {
	prg, err := c.program(r)
	if err != nil {
		return refuse(ReasonCondition, "the condition of rule %s no longer compiles: %v", r.ID, err)
	}
	out, _, err := prg.Eval(map[string]any{varClaims: claims, varAssertion: claims})
	if err != nil {
		return refuse(ReasonCondition, "the condition of rule %s failed to evaluate (counts as false): %s", r.ID, apperr.Clip(err.Error(), 300))
	}
	if pass, ok := out.Value().(bool); !ok || !pass {
		return refuse(ReasonCondition, "rule %s condition false: %s%s", r.ID, apperr.Clip(r.Condition, 300), referencedClaims(r.Condition, claims))
	}
	return nil
}

var claimMention = regexp.MustCompile(`\b(?:claims|assertion)(?:\.([A-Za-z_][A-Za-z0-9_]*)|\[\s*"([^"]+)"\s*\])`)

// referencedClaims lists the top-level claims a condition names, with the assertion's values,
// so the audit trail and the dry run say why a condition was false: ` (ref = "refs/heads/dev")`.
func referencedClaims(cond string, claims map[string]any) string {
	var parts []string
	seen := map[string]bool{}
	for _, m := range claimMention.FindAllStringSubmatch(cond, 10) {
		name := m[1] + m[2]
		if seen[name] {
			continue
		}
		seen[name] = true
		v, ok := claims[name]
		if !ok {
			parts = append(parts, name+" absent")
			continue
		}
		b, _ := json.Marshal(v)
		parts = append(parts, name+" = "+apperr.Clip(string(b), 120))
	}
	if len(parts) == 0 {
		return ""
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

// children lists the direct subexpressions of e.
func children(e celast.Expr) []celast.Expr {
	var out []celast.Expr
	switch e.Kind() {
	case celast.CallKind:
		call := e.AsCall()
		if call.IsMemberFunction() {
			out = append(out, call.Target())
		}
		out = append(out, call.Args()...)
	case celast.ComprehensionKind:
		comp := e.AsComprehension()
		out = append(out, comp.IterRange(), comp.AccuInit(), comp.LoopCondition(), comp.LoopStep(), comp.Result())
	case celast.ListKind:
		out = append(out, e.AsList().Elements()...)
	case celast.MapKind:
		for _, entry := range e.AsMap().Entries() {
			out = append(out, entry.AsMapEntry().Key(), entry.AsMapEntry().Value())
		}
	case celast.SelectKind:
		out = append(out, e.AsSelect().Operand())
	case celast.StructKind:
		for _, f := range e.AsStruct().Fields() {
			out = append(out, f.AsStructField().Value())
		}
	}
	return out
}

func countNodes(e celast.Expr) int {
	n := 1
	for _, child := range children(e) {
		n += countNodes(child)
	}
	return n
}

// readsClaims reports whether e refers to the claims variable under either name.
func readsClaims(e celast.Expr) bool {
	if e.Kind() == celast.IdentKind && (e.AsIdent() == varClaims || e.AsIdent() == varAssertion) {
		return true
	}
	for _, child := range children(e) {
		if readsClaims(child) {
			return true
		}
	}
	return false
}
