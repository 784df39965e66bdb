package cli

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/mandate-dev/mandate/internal/server"
)

// Error messages that pointed the wrong way now say what to do, through the real commands
// against a real server.
func TestErrorsPointTheRightWay(t *testing.T) {
	ts := newTestServer(t)
	bootstrap := filepath.Join(ts.DataDir, server.BootstrapFile)
	https := "https://" + strings.TrimPrefix(ts.URL, "http://")
	tests := map[string]struct {
		stdin string
		args  []string
		want  []string
		not   string
	}{
		"login with a bad token": {"mt_not-a-token\n", []string{"login", "--server", ts.URL},
			[]string{"the server refused this token", "bootstrap-token", "mandate tokens create"}, "log in again"},
		"https to a plain http server": {"", []string{"login", "--server", https, "--token-file", bootstrap},
			[]string{https + " answers plain http, not https: use --server " + ts.URL}, "is mandate serve running"},
		"agents show, handle without @": {"", []string{"agents", "show", "release-bot", "--server", ts.URL},
			[]string{`"release-bot" is neither a handle nor an agent id: write a handle with its @ (@release-bot)`}, "no agent"},
		"agents revoke, handle without @": {"", []string{"agents", "revoke", "release-bot", "--yes"}, []string{"(@release-bot)"}, "no agent"},
		"grant create, handle without @": {"", []string{"grant", "create", "--agent", "release-bot", "--scope", "x"},
			[]string{"--agent: ", "(@release-bot)"}, "no agent"},
		"grant list, handle without @": {"", []string{"grant", "list", "--agent", "release-bot"}, []string{"--agent: ", "(@release-bot)"}, "no agent"},
		"audit, handle without @":      {"", []string{"audit", "--agent", "release-bot"}, []string{"--agent: ", "(@release-bot)"}, "no agent"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			msg := fails(t, tt.stdin, tt.args, tt.want...)
			if strings.Contains(msg, tt.not) {
				t.Errorf("the error still says %q: %s", tt.not, msg)
			}
		})
	}
}

// audit --agent takes a @handle (the server filters by id); grant create warns about a
// resource that names nothing this server knows.
func TestAuditAgentHandleAndUnknownResource(t *testing.T) {
	ts := newTestServer(t)
	ok(t, "login", "--server", ts.URL, "--token-file", filepath.Join(ts.DataDir, server.BootstrapFile))
	kf := newAgent(t, ts, "audit-bot")
	ok(t, "agent", "token", "--key-file", kf)
	var a struct {
		AgentID string `json:"agent_id"`
	}
	decodeJSON(t, ok(t, "agents", "show", "@audit-bot", "--json"), &a)
	var byID, byHandle struct {
		Events []struct {
			ID string `json:"event_id"`
		} `json:"events"`
	}
	decodeJSON(t, ok(t, "audit", "--agent", a.AgentID, "--json"), &byID)
	decodeJSON(t, ok(t, "audit", "--agent", "@audit-bot", "--json"), &byHandle)
	if len(byID.Events) == 0 || len(byHandle.Events) != len(byID.Events) {
		t.Errorf("audit --agent @audit-bot found %d events, --agent %s found %d", len(byHandle.Events), a.AgentID, len(byID.Events))
	}
	fails(t, "", []string{"audit", "--agent", "@nobody"}, "nobody")

	if out, err := mandate(t, "sk-x\n", "upstream", "add", "ahrefs", "--base-url", "http://127.0.0.1:9", "--allow-private", "--auth", "bearer",
		"--route", "ahrefs:read=GET /**"); err != nil {
		t.Fatalf("upstream add: %v\n%s", err, out)
	}
	proxied := ts.URL + "/proxy/ahrefs"
	out := ok(t, "grant", "create", "--agent", "@audit-bot", "--scope", "ahrefs:read", "--resource", proxied)
	if strings.Contains(out, "warning") {
		t.Errorf("a warning for the upstream's own resource:\n%s", out)
	}
	out = ok(t, "grant", "create", "--agent", "@audit-bot", "--scope", "ahrefs:read", "--resource", ts.URL+"/proxy/ahrefz", "--resource", proxied+"/")
	hasAll(t, out, "warning: --resource "+ts.URL+"/proxy/ahrefz names no upstream of this server (theirs: "+proxied+")")
	if strings.Count(out, "warning") != 1 {
		t.Errorf("want one warning:\n%s", out)
	}
	// A resource of an earlier grant (a resource server of its own) is known.
	ok(t, "grant", "create", "--agent", "@audit-bot", "--scope", "repo:read", "--resource", "https://api.github.com/")
	if out := ok(t, "grant", "create", "--agent", "@audit-bot", "--scope", "repo:read", "--resource", "https://api.github.com/"); strings.Contains(out, "warning") {
		t.Errorf("a warning for a resource another grant has:\n%s", out)
	}
}
