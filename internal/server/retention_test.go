package server_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/config"
	"github.com/mandate-dev/mandate/internal/servertest"
)

// TestRetentionExplainsAfterPurge: a task revoked longer than --retention ago is purged with its
// grant, and GET /v1/audit/explain (mandate audit explain) answers for each of its events exactly
// as before: the explanation is read from the trail alone. A live task of another grant, and its
// token, are untouched.
func TestRetentionExplainsAfterPurge(t *testing.T) {
	ts := newTestServer(t, func(c *config.Config) { c.Retention = time.Hour })
	bot := ts.newAgent(t, "retained-bot", true)
	rs := ts.URL + "/"
	g := ts.grant(t, map[string]any{"agent": bot.ID, "scopes": []string{"read"}, "resources": []string{rs}, "expires_in": 600})
	tok := ts.startTask(t, bot, ts.grantToken(t, bot, g))
	task := taskOf(t, tok)
	if resp := ts.whoami(t, bot, tok); resp.StatusCode != http.StatusOK {
		t.Fatalf("whoami with the task's token: %d", resp.StatusCode)
	}
	if resp, out := ts.adminJSON(t, "POST", "/v1/tasks/"+task+"/revoke", nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("revoke the task: %d %v", resp.StatusCode, out)
	}
	if resp := ts.whoami(t, bot, tok); resp.StatusCode == http.StatusOK {
		t.Fatal("whoami with the revoked task's token succeeded")
	}
	// A live task of another grant that stays live past the purge.
	long := ts.grant(t, map[string]any{"agent": bot.ID, "scopes": []string{"read"}, "resources": []string{rs},
		"expires_in": 86400, "max_task_ttl": 86400})
	liveTok := ts.startTask(t, bot, ts.grantToken(t, bot, long))

	evs, err := ts.Srv.Store().ListEvents(t.Context(), audit.Filter{TaskID: task, Ascending: true, Limit: 1000})
	if err != nil || len(evs) < 3 {
		t.Fatalf("the task's events: %d, %v; want its start, use and revocation", len(evs), err)
	}
	explain := func() map[string]map[string]any {
		out := map[string]map[string]any{}
		for _, e := range evs {
			resp, x := ts.adminJSON(t, "GET", "/v1/audit/explain/"+e.ID, nil)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("explain %s (%s): %d %v", e.ID, e.Action, resp.StatusCode, x)
			}
			out[e.ID] = x
		}
		return out
	}
	before := explain()

	if n, err := ts.Srv.PurgeEnded(t.Context()); err != nil || n != 0 {
		t.Fatalf("purge within --retention = %d, %v; want nothing", n, err)
	}
	ts.Clock.Advance(2 * time.Hour) // the task and the first grant ended more than an hour ago
	if n, err := ts.Srv.PurgeEnded(t.Context()); err != nil || n != 2 {
		t.Fatalf("purge past --retention = %d, %v; want the task and its grant", n, err)
	}
	for _, path := range []string{"/v1/tasks/" + task, "/v1/grants/" + g} {
		if resp, out := ts.adminJSON(t, "GET", path, nil); resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s after the purge: %d %v; want 404", path, resp.StatusCode, out)
		}
	}
	if diff := cmp.Diff(before, explain()); diff != "" {
		t.Errorf("explanations changed by the purge (-before +after):\n%s", diff)
	}
	// The live task (its token has expired meanwhile: tokens live minutes) is still there, and
	// its grant still starts tasks.
	if resp, out := ts.adminJSON(t, "GET", "/v1/tasks/"+taskOf(t, liveTok), nil); resp.StatusCode != http.StatusOK || out["status"] != "active" {
		t.Errorf("the live task after the purge: %d %v", resp.StatusCode, out)
	}
	if fresh := ts.startTask(t, bot, ts.grantToken(t, bot, long)); !ts.introspectActive(t, fresh) {
		t.Error("a task of the live grant started after the purge is not active")
	}
}

// TestRetentionPurgesAtStart: a replica starting on a database with tasks ended longer than
// --retention ago purges them at once, not a minute later (restarts must not let state pile up).
func TestRetentionPurgesAtStart(t *testing.T) {
	a := newTestServer(t)
	bot := a.newAgent(t, "restarted-bot", true)
	g := a.grant(t, map[string]any{"agent": bot.ID, "scopes": []string{"read"}, "resources": []string{a.URL + "/"}})
	task := taskOf(t, a.startTask(t, bot, a.grantToken(t, bot, g)))
	if resp, out := a.adminJSON(t, "POST", "/v1/tasks/"+task+"/revoke", nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("revoke the task: %d %v", resp.StatusCode, out)
	}
	// A second replica on the same database, started three hours later with an hour's retention.
	later := func() time.Time { return time.Now().Add(3 * time.Hour) }
	servertest.Start(t, servertest.Options{Now: later, Config: func(c *config.Config) {
		c.DataDir, c.Issuer, c.Retention = a.DataDir, a.URL, time.Hour
	}})
	// Its first purge runs as it starts serving, in milliseconds; the loop's next one would be a
	// minute later. The bound below only tells the two apart (it is not a speed requirement).
	deadline := time.Now().Add(30 * time.Second)
	for {
		tasks, err := a.Srv.Store().ListTasks(t.Context(), "", "", g)
		if err != nil {
			t.Fatal(err)
		}
		if len(tasks) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the ended task is still there 30 s after the replica started: no purge at start")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
