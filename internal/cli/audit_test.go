package cli

import (
	"net/http"
	"net/url"
	"path/filepath"
	"testing"

	"github.com/mandate-dev/mandate/internal/server"
)

// TestAuditShowsAggregatedDenials: mandate audit shows an anonymous refusal's address as its
// actor, and an aggregated event as "denied xN".
func TestAuditShowsAggregatedDenials(t *testing.T) {
	ts := newTestServer(t)
	ok(t, "login", "--server", ts.URL, "--token-file", filepath.Join(ts.DataDir, server.BootstrapFile))
	for range 100 {
		resp, err := http.PostForm(ts.URL+"/oauth/token", url.Values{"grant_type": {"client_credentials"}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	ts.Srv.FlushDenials(t.Context())
	// 30 one by one (the default --denial-audit-rate burst), then one event counting the other 70.
	hasAll(t, ok(t, "audit", "--action", "token.deny"), "dpop_missing", "127.0.0.1", "denied x70")
}
