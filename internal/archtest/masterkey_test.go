package archtest

import (
	"encoding/json"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// The master keys are one concept in one package: internal/masterkey owns the key file, the
// keyring, rotation, re-wrap and pruning; token and vault use the keyring through their own
// small interfaces; the CLI's offline operations get their store from the composition root
// (server.OpenMaintenance) and never open internal/sqlstore themselves — in its tests neither.
func TestMasterKeyArrows(t *testing.T) {
	type rule struct {
		bad   []string
		tests bool // the package's tests too
	}
	rules := map[string]rule{
		"internal/cli": {bad: []string{"internal/sqlstore"}, tests: true},
		"internal/masterkey": {bad: []string{"internal/sqlstore", "internal/server", "internal/api", "internal/oauth",
			"internal/httpapi", "internal/cli", "internal/proxy", "internal/registry", "internal/delegation"}},
		"internal/token": {bad: []string{"internal/masterkey"}},
		"internal/vault": {bad: []string{"internal/masterkey"}},
	}
	args := []string{"list", "-json"}
	for p := range rules {
		args = append(args, mod+p)
	}
	out, err := exec.Command("go", args...).Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	seen := 0
	for dec.More() {
		var p struct {
			ImportPath                         string
			Imports, TestImports, XTestImports []string
		}
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		rel := strings.TrimPrefix(p.ImportPath, mod)
		r, ok := rules[rel]
		if !ok {
			continue
		}
		seen++
		imports := p.Imports
		if r.tests {
			imports = slices.Concat(p.Imports, p.TestImports, p.XTestImports)
		}
		for _, imp := range imports {
			if slices.Contains(r.bad, strings.TrimPrefix(imp, mod)) {
				t.Errorf("%s imports %s: the arrow points the wrong way", rel, strings.TrimPrefix(imp, mod))
			}
		}
	}
	if seen != len(rules) {
		t.Errorf("checked %d packages, want %d: did a package move?", seen, len(rules))
	}
}
