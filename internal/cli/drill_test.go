package cli

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/mandate-dev/mandate/client"
	"github.com/mandate-dev/mandate/internal/api"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/server"
)

// TestIncidentDrill is acceptance line 1 of the accountability issue: many agents, a
// three-level chain, parallel calls through the proxy. Starting from only what the upstream
// logged (its request headers), `mandate audit explain` answers both questions in one command —
// who ran the agent (agent, instance key, task and purpose) and on whose behalf (principal,
// grant, the chain) — and the `audit --task/--grant/--since` reports count exactly the calls
// that were made.
func TestIncidentDrill(t *testing.T) {
	ts := newTestServer(t)
	ok(t, "login", "--server", ts.URL, "--token-file", filepath.Join(ts.DataDir, server.BootstrapFile))
	ctx := context.Background()

	// The upstream keeps its own log: the request headers of every call it served.
	var mu sync.Mutex
	var logged []http.Header
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		logged = append(logged, r.Header.Clone())
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"sent":true}`)
	}))
	t.Cleanup(up.Close)
	keyFile := filepath.Join(t.TempDir(), "mail.key")
	if err := os.WriteFile(keyFile, []byte("sk_live_drill_secret_0123456789"), 0o600); err != nil {
		t.Fatal(err)
	}
	ok(t, "upstream", "add", "mail", "--base-url", up.URL, "--auth", "bearer", "--allow-private",
		"--route", "mail:send=POST /v1/send", "--secret-file", keyFile)
	resource := ts.URL + "/proxy/mail"

	// Three teams: a lead agent each, delegating to a worker, delegating to a sender.
	type team struct {
		lead, worker, sender string // key files
		grant                string
		leadTask, workerTask string
		senderTask           *client.DelegatedToken
		senderKey            ed25519.PrivateKey
		instanceJKT          string
	}
	teams := make([]*team, 3)
	for i := range teams {
		tm := &team{
			lead:   newAgent(t, ts, fmt.Sprintf("lead-%d", i)),
			worker: newAgent(t, ts, fmt.Sprintf("worker-%d", i)),
			sender: newAgent(t, ts, fmt.Sprintf("sender-%d", i)),
		}
		var g api.GrantJSON
		decodeJSON(t, ok(t, "grant", "create", "--agent", fmt.Sprintf("@lead-%d", i), "--scope", "mail:send", "--resource", resource,
			"--max-depth", "3", "--allow-subdelegation", "--max-task-ttl", "1h", "--json"), &g)
		tm.grant = g.GrantID

		// The lead starts an instance task (its own key for this run), and hands it down twice.
		taskPath := filepath.Join(t.TempDir(), "task.json")
		var started taskStarted
		decodeJSON(t, ok(t, "task", "start", "--key-file", tm.lead, "--grant", tm.grant, "--purpose", fmt.Sprintf("weekly digest %d", i),
			"--instance-key", "--out", taskPath, "--json"), &started)
		tm.leadTask, tm.instanceJKT = started.TaskID, started.JKT
		var file taskFile
		data, err := os.ReadFile(taskPath)
		if err != nil {
			t.Fatal(err)
		}
		decodeJSON(t, string(data), &file)
		var jwk jose.JSONWebKey
		if err := jwk.UnmarshalJSON(file.Key); err != nil {
			t.Fatal(err)
		}
		leadTask, err := client.ResumeTask(ts.URL, nil, file.AccessToken, jwk.Key.(ed25519.PrivateKey))
		if err != nil {
			t.Fatal(err)
		}
		workerKey := loadKey(t, tm.worker)
		act, err := client.NewActorToken(workerKey, ts.URL)
		if err != nil {
			t.Fatal(err)
		}
		workerTok, err := leadTask.Delegate(ctx, act, client.TaskRequest{Purpose: fmt.Sprintf("draft digest %d", i), Scopes: []string{"mail:send"}, Resources: []string{resource}})
		if err != nil {
			t.Fatal(err)
		}
		tm.workerTask = workerTok.TaskID
		workerTask, err := client.ResumeTask(ts.URL, nil, workerTok.AccessToken, workerKey)
		if err != nil {
			t.Fatal(err)
		}
		tm.senderKey = loadKey(t, tm.sender)
		act, err = client.NewActorToken(tm.senderKey, ts.URL)
		if err != nil {
			t.Fatal(err)
		}
		tm.senderTask, err = workerTask.Delegate(ctx, act, client.TaskRequest{Purpose: fmt.Sprintf("send digest %d", i), Scopes: []string{"mail:send"}, Resources: []string{resource}})
		if err != nil {
			t.Fatal(err)
		}
		teams[i] = tm
	}

	// Parallel calls: every sender sends N mails at once, and the workers some too.
	since := time.Now().Add(-time.Second)
	const perSender = 8
	var wg sync.WaitGroup
	for _, tm := range teams {
		task, err := client.ResumeTask(ts.URL, nil, tm.senderTask.AccessToken, tm.senderKey)
		if err != nil {
			t.Fatal(err)
		}
		hc := &http.Client{Transport: task.Transport(nil), Timeout: 30 * time.Second}
		for range perSender {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := hc.Post(resource+"/v1/send", "application/json", strings.NewReader(`{"to":"a@example.com"}`))
				if err != nil {
					t.Error(err)
					return
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					t.Errorf("proxied call: %d", resp.StatusCode)
				}
			}()
		}
	}
	wg.Wait()
	if len(logged) != len(teams)*perSender {
		t.Fatalf("the upstream logged %d calls, want %d", len(logged), len(teams)*perSender)
	}

	// The investigator holds one line of the upstream's log.
	rid := logged[len(logged)/2].Get("Mandate-Request-Id")
	if !strings.HasPrefix(rid, "req_") {
		t.Fatalf("the upstream got no Mandate-Request-Id: %v", logged[0])
	}
	if tp := logged[0].Get("Traceparent"); len(tp) != 55 {
		t.Errorf("traceparent %q", tp)
	}
	// A call's completion record is written after the agent has its answer: wait for every one.
	waitCompleted(t, []string{"--since", "1h"}, len(teams)*perSender)
	var ev audit.Event
	events := jsonLines[audit.Event](t, ok(t, "audit", "--request-id", rid, "--format", "jsonl"))
	for _, e := range events {
		if e.Outcome != audit.OutcomePending {
			ev = e
		}
	}
	var tm *team
	for _, x := range teams {
		if ev.TaskID == x.senderTask.TaskID {
			tm = x
		}
	}
	if tm == nil {
		t.Fatalf("request %s: events %+v name no sender task", rid, events)
	}
	idx := -1
	for j, x := range teams {
		if x == tm {
			idx = j
		}
	}
	out := ok(t, "audit", "explain", rid)
	if os.Getenv("DRILL_SHOW") != "" {
		t.Log(out)
	}
	hasAll(t, out,
		rid, "mail", "POST", "/v1/send", "200",
		"usr_", tm.grant,
		"@lead-"+fmt.Sprint(idx), "@worker-"+fmt.Sprint(idx), "@sender-"+fmt.Sprint(idx),
		tm.leadTask, tm.workerTask, tm.senderTask.TaskID,
		fmt.Sprintf("weekly digest %d", idx), fmt.Sprintf("draft digest %d", idx), fmt.Sprintf("send digest %d", idx),
		tm.instanceJKT,
		"valid: no link",
	)
	if strings.Contains(out, "sk_live_drill_secret") {
		t.Fatal("explain printed the upstream credential")
	}

	// Reports match the calls made, exactly.
	for _, x := range teams {
		calls := completed(jsonLines[audit.Event](t, ok(t, "audit", "--task", x.senderTask.TaskID, "--action", "proxy.call", "--all", "--format", "jsonl")))
		if calls != perSender {
			t.Errorf("audit --task %s: %d completed calls, want %d", x.senderTask.TaskID, calls, perSender)
		}
		calls = completed(jsonLines[audit.Event](t, ok(t, "audit", "--grant", x.grant, "--action", "proxy.call", "--all", "--format", "jsonl")))
		if calls != perSender {
			t.Errorf("audit --grant %s: %d completed calls, want %d", x.grant, calls, perSender)
		}
	}
	all := completed(jsonLines[audit.Event](t, ok(t, "audit", "--action", "proxy.call", "--since", since.UTC().Format(time.RFC3339), "--all", "--format", "jsonl")))
	if all != len(teams)*perSender {
		t.Errorf("audit --since: %d completed calls, want %d", all, len(teams)*perSender)
	}
	none := completed(jsonLines[audit.Event](t, ok(t, "audit", "--action", "proxy.call", "--until", since.UTC().Format(time.RFC3339), "--all", "--format", "jsonl")))
	if none != 0 {
		t.Errorf("audit --until before the calls: %d", none)
	}
}

// waitCompleted waits until `mandate audit --action proxy.call` with filters counts want
// completed calls.
func waitCompleted(t *testing.T, filters []string, want int) {
	t.Helper()
	args := append([]string{"audit", "--action", "proxy.call", "--all", "--format", "jsonl"}, filters...)
	got := 0
	for range 200 {
		if got = completed(jsonLines[audit.Event](t, ok(t, args...))); got >= want {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%d completed calls recorded, want %d", got, want)
}

// completed counts the completed proxied calls (not their pending records).
func completed(evs []audit.Event) int {
	n := 0
	for _, e := range evs {
		if e.Action == "proxy.call" && e.Outcome == audit.OutcomeSuccess {
			n++
		}
	}
	return n
}

// jsonLines decodes one JSON value per line.
func jsonLines[T any](t *testing.T, out string) []T {
	t.Helper()
	var vs []T
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var v T
		if err := json.Unmarshal([]byte(line), &v); err != nil {
			t.Fatalf("not JSON lines: %v\n%s", err, out)
		}
		vs = append(vs, v)
	}
	return vs
}

func loadKey(t *testing.T, path string) ed25519.PrivateKey {
	t.Helper()
	k, err := client.LoadKey(path)
	if err != nil {
		t.Fatal(err)
	}
	return k.(ed25519.PrivateKey)
}
