package audit_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/mandate-dev/mandate/internal/audit"
)

// actionConst is the name of a constant that names an audit action: ActionX or actionX.
var actionConst = regexp.MustCompile(`^[Aa]ction[A-Z]`)

// TestActionsListsEveryActionConstant reads every non-test Go file of the module for constants
// named Action… (or action…) with a string value, and checks that audit.Actions is exactly their values,
// sorted: an action added anywhere without its place in the list (or a name left in the list
// after its constant went) fails here.
func TestActionsListsEveryActionConstant(t *testing.T) {
	found := map[string]string{} // value → where
	fset := token.NewFileSet()
	err := filepath.WalkDir("../..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); path != "../.." && (strings.HasPrefix(name, ".") || name == "testdata" || name == "node_modules") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		for _, decl := range f.Decls {
			gd, ok := decl.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			for _, spec := range gd.Specs {
				vs := spec.(*ast.ValueSpec)
				for i, name := range vs.Names {
					if !actionConst.MatchString(name.Name) || i >= len(vs.Values) {
						continue
					}
					lit, ok := vs.Values[i].(*ast.BasicLit)
					if !ok || lit.Kind != token.STRING {
						continue
					}
					v, _ := strconv.Unquote(lit.Value)
					found[v] = fset.Position(name.Pos()).String()
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(found) < 30 {
		t.Fatalf("found only %d action constants: is the walk reading the module?", len(found))
	}
	if !slices.IsSorted(audit.Actions) {
		t.Error("audit.Actions is not sorted")
	}
	for v, where := range found {
		if !slices.Contains(audit.Actions, v) {
			t.Errorf("action %q (%s) is not in audit.Actions", v, where)
		}
	}
	for _, a := range audit.Actions {
		if _, ok := found[a]; !ok {
			t.Errorf("audit.Actions lists %q, which no Action… constant defines", a)
		}
	}
}

func TestCheckActionAndOutcome(t *testing.T) {
	for _, a := range audit.Actions {
		if err := audit.CheckAction(a); err != nil {
			t.Errorf("CheckAction(%q) = %v", a, err)
		}
	}
	for _, bad := range []string{"", "token", "Token.Issue", "token.issue ", "proxy.calls"} {
		err := audit.CheckAction(bad)
		if err == nil || !strings.Contains(err.Error(), "proxy.call, resource.deny") {
			t.Errorf("CheckAction(%q) = %v, want an error listing the actions", bad, err)
		}
	}
	for _, o := range audit.Outcomes {
		if err := audit.CheckOutcome(string(o)); err != nil {
			t.Errorf("CheckOutcome(%q) = %v", o, err)
		}
	}
	if err := audit.CheckOutcome("ok"); err == nil || !strings.Contains(err.Error(), "success, denied, failure, pending") {
		t.Errorf("CheckOutcome(ok) = %v", err)
	}
}
