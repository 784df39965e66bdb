// Package archtest holds the test that keeps imports pointing one way:
// cmd → cli → server → edge (api, oauth, httpapi) → domain → store, and the SDK apart; the
// agent's sidecar (cli → sidecar → client SDK) beside the server.
package archtest

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

const mod = "github.com/mandate-dev/mandate/"

// forbidden maps a package (relative to the module) to the module packages it must not import.
// A prefix ending in "/" matches every package below it.
var forbidden = map[string][]string{
	"didkey": {"internal/"},
	"dpop":   {"internal/"},
	"verify": {"internal/"},
	"client": {"internal/"},
	// The one renderer of refusals, shared by the verify SDK and the server.
	"oautherr": {"internal/"},

	"internal/registry":  {"internal/sqlstore", "internal/server", "internal/api", "internal/oauth", "internal/httpapi", "internal/cli"},
	"internal/principal": {"internal/sqlstore", "internal/server", "internal/api", "internal/oauth", "internal/httpapi", "internal/cli", "internal/registry"},
	"internal/token":     {"internal/sqlstore", "internal/server", "internal/api", "internal/oauth", "internal/httpapi", "internal/cli", "internal/registry"},
	"internal/audit":     {"internal/sqlstore", "internal/server", "internal/api", "internal/oauth", "internal/httpapi", "internal/cli", "internal/registry", "internal/principal", "internal/token"},
	"internal/apperr":    {"internal/"},
	// Trails for tests: events only, like internal/audit.
	"internal/audit/audittest": {"internal/sqlstore", "internal/server", "internal/api", "internal/oauth", "internal/httpapi", "internal/cli", "internal/registry", "internal/principal", "internal/token", "internal/delegation", "internal/proxy", "internal/storetest"},
	"internal/ids":             {"internal/"},
	"internal/config":          {"internal/sqlstore", "internal/server", "internal/api", "internal/oauth", "internal/cli"},
	// The audit sinks read the chain through their own small store interface; only the server
	// wires them.
	"internal/auditsink": {"internal/sqlstore", "internal/server", "internal/api", "internal/oauth", "internal/httpapi", "internal/cli",
		"internal/registry", "internal/principal", "internal/token", "internal/delegation", "internal/proxy", "internal/vault"},

	"internal/sqlstore":   {"internal/server", "internal/api", "internal/oauth", "internal/httpapi", "internal/cli"},
	"internal/httpapi":    {"internal/sqlstore", "internal/server", "internal/api", "internal/oauth", "internal/cli"},
	"internal/oauth":      {"internal/sqlstore", "internal/server", "internal/api", "internal/cli"},
	"internal/api":        {"internal/sqlstore", "internal/server", "internal/oauth", "internal/cli"},
	"internal/server":     {"internal/cli"},
	"internal/proxy":      {"internal/sqlstore", "internal/server", "internal/api", "internal/oauth", "internal/cli"},
	"internal/vault":      {"internal/sqlstore", "internal/server", "internal/api", "internal/oauth", "internal/httpapi", "internal/cli", "internal/proxy"},
	"internal/federation": {"internal/sqlstore", "internal/server", "internal/api", "internal/oauth", "internal/httpapi", "internal/cli", "internal/proxy", "internal/vault"},
	"internal/loopback":   {"internal/"},
	"internal/glob":       {"internal/"},
	"internal/decimal":    {"internal/"},
	// The sidecar is a client of the server, over HTTP only: it uses the SDK, never the server's
	// packages, and nothing below the CLI uses it.
	"internal/sidecar": {"internal/cli", "internal/server", "internal/api", "internal/oauth", "internal/httpapi", "internal/sqlstore",
		"internal/proxy", "internal/vault", "internal/delegation", "internal/registry", "internal/token", "internal/audit",
		"internal/federation", "internal/config", "internal/principal"},
	"internal/ratelimit": {"internal/"},
	"internal/syncbuf":   {"internal/"},
	"internal/httpbench": {"internal/"},
	// The load generator is a client of the server over HTTP only, like an agent.
	"internal/loadgen": {"internal/"},

	// The shared DPoP replay store for resource servers' replicas: an SDK package too.
	"dpop/sqlreplay": {"internal/"},
}

func TestImportsPointOneWay(t *testing.T) {
	out, err := exec.Command("go", "list", "-json", mod+"...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	seen := 0
	for dec.More() {
		var p struct {
			ImportPath string
			Imports    []string
		}
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		rel := strings.TrimPrefix(p.ImportPath, mod)
		if rel == "cmd/mandate" {
			for _, imp := range p.Imports {
				if strings.HasPrefix(imp, mod) && imp != mod+"internal/cli" {
					t.Errorf("cmd/mandate imports %s: main only calls internal/cli", imp)
				}
			}
		}
		rules, ok := forbidden[rel]
		if !ok {
			continue
		}
		seen++
		for _, imp := range p.Imports {
			for _, bad := range rules {
				target := strings.TrimPrefix(imp, mod)
				if !strings.HasPrefix(imp, mod) || target == rel {
					continue
				}
				if target == bad || (strings.HasSuffix(bad, "/") && strings.HasPrefix(target, bad)) {
					t.Errorf("%s imports %s: the arrow points the wrong way", rel, target)
				}
			}
		}
	}
	if seen < len(forbidden)-2 {
		t.Errorf("checked %d packages, want about %d: did a package move?", seen, len(forbidden))
	}
}
