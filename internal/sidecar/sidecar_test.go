package sidecar

import (
	"context"
	"crypto"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/syncbuf"

	"github.com/mandate-dev/mandate/client"
	"github.com/mandate-dev/mandate/internal/config"
	"github.com/mandate-dev/mandate/internal/servertest"
)

// tokenTTL is the life of the tasks' tokens in these tests: the shortest a grant allows, so
// that a pause of a few token lives stays short.
const tokenTTL = 10 * time.Second

const upstreamKey = "sk-live-upstream-secret"

// world is a real mandate server, an upstream "svc" on a loopback address that accepts only its
// real key, and a claimed agent with a grant on svc's proxy whose tokens live tokenTTL.
type world struct {
	srv      *servertest.Server
	upstream atomic.Int64 // calls that reached the upstream
	agent    *client.TokenSource
	key      crypto.Signer
	grant    *client.Grant
	hc       *http.Client // the task's client to the server (token exchanges)
}

// offsetClock is a wall clock that a test moves forward, as a machine that slept sees it.
type offsetClock struct{ off atomic.Int64 }

func (c *offsetClock) Now() time.Time          { return time.Now().Add(time.Duration(c.off.Load())) }
func (c *offsetClock) Advance(d time.Duration) { c.off.Add(int64(d)) }

func newWorld(t *testing.T, now func() time.Time) *world {
	t.Helper()
	w := &world{hc: &http.Client{}}
	w.srv = servertest.Start(t, servertest.Options{Now: now, Config: func(c *config.Config) { c.TokenTTL = tokenTTL }})
	up := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+upstreamKey {
			http.Error(rw, "bad key", http.StatusUnauthorized)
			return
		}
		w.upstream.Add(1)
		io.WriteString(rw, `{"ok":true}`)
	}))
	t.Cleanup(up.Close)
	w.srv.AddUpstream(t, "svc", up.URL, "svc:read", "GET", "/v1/**", upstreamKey)

	ctx := context.Background()
	key, err := client.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	reg, err := client.Register(ctx, nil, w.srv.URL, key, client.RegisterRequest{Handle: "sidecar-test"})
	if err != nil {
		t.Fatal(err)
	}
	if status, body := w.srv.Admin(t, "POST", "/v1/agents/claim", map[string]string{"claim_code": reg.ClaimCode}); status != http.StatusOK {
		t.Fatalf("claim: %d %s", status, body)
	}
	status, body := w.srv.Admin(t, "POST", "/v1/grants", map[string]any{"agent": reg.AgentID, "scopes": []string{"svc:read"},
		"resources": []string{ProxyResource(w.srv.URL, "svc")}, "max_task_ttl": 3600, "max_token_ttl": int(tokenTTL.Seconds())})
	if status != http.StatusCreated {
		t.Fatalf("grant: %d %s", status, body)
	}
	var g struct {
		GrantID string `json:"grant_id"`
	}
	json.Unmarshal([]byte(body), &g)
	w.key = key
	if w.agent, err = client.NewTokenSource(client.Config{Issuer: w.srv.URL, AgentID: reg.AgentID, Key: key}); err != nil {
		t.Fatal(err)
	}
	if w.grant, err = w.agent.Grant(ctx, g.GrantID); err != nil {
		t.Fatal(err)
	}
	return w
}

// startTask starts a task on the grant with a fresh instance key, as exec does.
func (w *world) startTask(t *testing.T, ttl time.Duration) *client.Task {
	t.Helper()
	inst, err := client.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	task, err := client.StartTask(context.Background(), w.hc, w.srv.URL, w.key, w.grant.Token,
		client.TaskRequest{Purpose: "sidecar test", TTL: ttl, InstanceKey: inst})
	if err != nil {
		t.Fatal(err)
	}
	if life := task.Current().ExpiresAt.Sub(task.Current().IssuedAt); life > tokenTTL {
		t.Fatalf("the task's token lives %v, want at most %v", life, tokenTTL)
	}
	return task
}

// call GETs path through the sidecar and returns the status and body (status 0 if it could not:
// callable from any goroutine).
func call(t *testing.T, sc *Sidecar, path string) (int, string) {
	t.Helper()
	resp, err := http.Get(sc.URL() + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestRequestAfterIdlePause is the class "a request after any idle pause within the task's life
// succeeds": the tool calls, does nothing for a while (an agent thinking), and calls again. On
// the old sidecar, which renewed only when a request came, every pause of a token's life or
// more ended in 401: the expired token could not be exchanged.
func TestRequestAfterIdlePause(t *testing.T) {
	t.Parallel()
	w := newWorld(t, nil)
	// The cases pause at once, each with its own task and sidecar: the test takes the longest
	// pause, not their sum.
	var wg sync.WaitGroup
	for _, tc := range []struct {
		name  string
		pause time.Duration
	}{
		{"no pause", 0},
		{"half a token's life", tokenTTL / 2},
		{"one token's life", tokenTTL},
		{"three tokens' lives", 3 * tokenTTL},
	} {
		var notices syncbuf.Buffer
		task := w.startTask(t, time.Hour)
		first := task.Current()
		sc := startSidecarFor(t, w.srv.URL, task, &notices, "svc")
		wg.Add(1)
		go func() {
			defer wg.Done()
			if status, body := call(t, sc, "/svc/v1/data"); status != http.StatusOK {
				t.Errorf("%s: first call: %d %s", tc.name, status, body)
				return
			}
			time.Sleep(tc.pause)
			if status, body := call(t, sc, "/svc/v1/data"); status != http.StatusOK {
				t.Errorf("%s: after a pause of %v: %d %s\nnotices: %s", tc.name, tc.pause, status, body, notices.String())
			}
			if err := sc.Err(); err != nil {
				t.Errorf("%s: Err = %v, want nil while the task lives", tc.name, err)
			}
			if tc.pause >= tokenTTL && task.Current().AccessToken == first.AccessToken {
				t.Errorf("%s: the task still has its first token", tc.name)
			}
			if notices.String() != "" {
				t.Errorf("%s: notices %q, want none", tc.name, notices.String())
			}
		}()
	}
	wg.Wait()
}

// TestRenewalStopsWhenTaskEnds: once the task is ended, the keeper's next renewal is refused;
// it stops, and the sidecar answers every request 401 saying why, without forwarding it.
// TestTaskEndedWhileTokenValid: the task ends while its token is still valid, so the proxy (not
// a renewal) is the first to refuse. The sidecar asks the server at once, learns the task is
// over, and counts the refused call, so that exec does not exit 0 as if all went well.
func TestTaskEndedWhileTokenValid(t *testing.T) {
	t.Parallel()
	w := newWorld(t, nil)
	task := w.startTask(t, time.Hour)
	sc := startSidecarFor(t, w.srv.URL, task, nil, "svc")
	if status, body := call(t, sc, "/svc/v1/data"); status != http.StatusOK {
		t.Fatalf("first call: %d %s", status, body)
	}
	if err := client.EndTask(context.Background(), w.agent, task.ID); err != nil {
		t.Fatal(err)
	}
	if status, body := call(t, sc, "/svc/v1/data"); status != http.StatusUnauthorized {
		t.Fatalf("the first call after the task ended: %d %s, want the proxy's 401", status, body)
	}
	if le, ok := sc.Err().(*LostError); !ok || le.TaskID != task.ID {
		t.Fatalf("Err = %#v right after the proxy refused the token, want the task's loss", sc.Err())
	}
	if sc.Refused() != 1 {
		t.Errorf("Refused = %d, want 1", sc.Refused())
	}
	// An upstream's own 401 is the upstream's business: it loses nothing.
}

func TestRenewalStopsWhenTaskEnds(t *testing.T) {
	t.Parallel()
	w := newWorld(t, nil)
	task := w.startTask(t, time.Hour)
	var notices syncbuf.Buffer
	sc := startSidecarFor(t, w.srv.URL, task, &notices, "svc")
	if status, body := call(t, sc, "/svc/v1/data"); status != http.StatusOK {
		t.Fatalf("first call: %d %s", status, body)
	}
	if err := client.EndTask(context.Background(), w.agent, task.ID); err != nil {
		t.Fatal(err)
	}
	// The keeper learns it at its next renewal, within a token's life.
	waitUntil(t, 3*tokenTTL, func() bool { return sc.Err() != nil })
	le, ok := sc.Err().(*LostError)
	if !ok || le.TaskID != task.ID || !strings.Contains(le.Reason, "refused to renew") {
		t.Fatalf("Err = %#v, want a LostError saying the server refused to renew the token of %s", sc.Err(), task.ID)
	}
	before := w.upstream.Load()
	status, body := call(t, sc, "/svc/v1/data")
	if status != http.StatusUnauthorized || !strings.Contains(body, task.ID) || !strings.Contains(body, "refused to renew") {
		t.Errorf("after the task ended: %d %s; want 401 saying the task's token could not be renewed", status, body)
	}
	if w.upstream.Load() != before {
		t.Error("a request went to the upstream after the task ended")
	}
	if sc.Refused() != 1 {
		t.Errorf("Refused = %d, want 1", sc.Refused())
	}
	if n := strings.Count(notices.String(), "is lost"); n != 1 {
		t.Errorf("notices %q: want the loss said once", notices.String())
	}
}

// TestRenewalStopsAtTaskTTL: the task's TTL is a little more than a token's life. The keeper
// renews once, to a token that lasts as long as the task, then has nothing to renew; after the
// task's end the sidecar answers 401 saying the TTL ran out.
func TestRenewalStopsAtTaskTTL(t *testing.T) {
	t.Parallel()
	w := newWorld(t, nil)
	task := w.startTask(t, tokenTTL+2*time.Second)
	var notices syncbuf.Buffer
	sc := startSidecarFor(t, w.srv.URL, task, &notices, "svc")
	waitUntil(t, 3*tokenTTL, func() bool { return sc.Err() != nil })
	status, body := call(t, sc, "/svc/v1/data")
	if status != http.StatusUnauthorized || !strings.Contains(body, "TTL ran out") {
		t.Errorf("after the task's TTL: %d %s; want 401 saying the task's TTL ran out", status, body)
	}
	if got := sc.keeper.renewed.Load(); got != 1 {
		t.Errorf("renewals %d, want 1 (to the task's end, then none)", got)
	}
	if strings.Contains(notices.String(), "trying again") {
		t.Errorf("notices %q: want no failed renewal", notices.String())
	}
}

// TestTokenLostAfterSleep: the machine sleeps (the wall clock jumps past the token's expiry and
// no timer fired). The first request after waking is refused with the reason, and the expired
// token is not offered to the server.
func TestTokenLostAfterSleep(t *testing.T) {
	t.Parallel()
	var clock offsetClock
	w := newWorld(t, clock.Now)
	task := w.startTask(t, time.Hour)
	var notices syncbuf.Buffer
	sc, err := New(Config{Issuer: w.srv.URL, Task: task, Listen: "127.0.0.1:0", Notices: &notices, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if err := sc.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sc.Stop(time.Second) })
	if status, body := call(t, sc, "/svc/v1/data"); status != http.StatusOK {
		t.Fatalf("first call: %d %s", status, body)
	}
	clock.Advance(time.Hour)
	status, body := call(t, sc, "/svc/v1/data")
	if status != http.StatusUnauthorized || !strings.Contains(body, "expired at") || !strings.Contains(body, "slept") {
		t.Errorf("after a sleep: %d %s; want 401 saying the token expired before it could be renewed", status, body)
	}
	if !strings.Contains(notices.String(), "expired at") {
		t.Errorf("notices %q: want the loss said", notices.String())
	}
	if w.upstream.Load() != 1 {
		t.Errorf("the upstream got %d calls, want 1 (before the sleep)", w.upstream.Load())
	}
}

// TestRenewalRetriesTransientFailures: the token endpoint answers 503 for a while; the keeper
// tries again with backoff while the token is valid, and a request after a pause longer than a
// token's life still succeeds.
func TestRenewalRetriesTransientFailures(t *testing.T) {
	t.Parallel()
	w := newWorld(t, nil)
	failing := w.failTokenRequests()
	task := w.startTask(t, time.Hour)
	failing.Store(2)
	var notices syncbuf.Buffer
	sc := startSidecarFor(t, w.srv.URL, task, &notices, "svc")
	time.Sleep(tokenTTL + tokenTTL/2)
	if status, body := call(t, sc, "/svc/v1/data"); status != http.StatusOK {
		t.Fatalf("after a pause with failed renewals: %d %s\nnotices: %s", status, body, notices.String())
	}
	if n := strings.Count(notices.String(), "trying again"); n != 2 {
		t.Errorf("notices %q: want the two failed attempts said", notices.String())
	}
}

// TestRenewalGivesUpAtExpiry: the token endpoint stays unreachable for longer than a token's
// life. The keeper tries until the token expires, never with the expired token, then the
// sidecar answers 401 saying what happened and what the last attempt got.
func TestRenewalGivesUpAtExpiry(t *testing.T) {
	t.Parallel()
	w := newWorld(t, nil)
	failing := w.failTokenRequests()
	task := w.startTask(t, time.Hour)
	failing.Store(1 << 30)
	var notices syncbuf.Buffer
	sc := startSidecarFor(t, w.srv.URL, task, &notices, "svc")
	waitUntil(t, 3*tokenTTL, func() bool { return sc.Err() != nil })
	status, body := call(t, sc, "/svc/v1/data")
	for _, want := range []string{task.ID, "expired at", "could not be reached", "last attempt", "temporarily_unavailable"} {
		if status != http.StatusUnauthorized || !strings.Contains(body, want) {
			t.Errorf("after the token expired unrenewed: %d %s; want 401 saying %q", status, body, want)
		}
	}
	if !strings.Contains(notices.String(), "trying again") || strings.Count(notices.String(), "is lost") != 1 {
		t.Errorf("notices %q: want the failed attempts and the loss said once", notices.String())
	}
	if w.upstream.Load() != 0 {
		t.Errorf("the upstream got %d calls, want none", w.upstream.Load())
	}
}

// failTokenRequests makes the task's token requests (those of tasks started after it) fail with
// 503 while the counter it returns is above 0; everything else goes through.
func (w *world) failTokenRequests() *atomic.Int32 {
	var failing atomic.Int32
	w.hc = &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if strings.HasSuffix(r.URL.Path, "/token") && failing.Add(-1) >= 0 {
			rec := httptest.NewRecorder()
			rec.Header().Set("Content-Type", "application/json")
			rec.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(rec, `{"error":"temporarily_unavailable","error_description":"try again"}`)
			return rec.Result(), nil
		}
		return http.DefaultTransport.RoundTrip(r)
	})}
	return &failing
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// waitUntil polls cond until it holds, failing the test after limit.
func waitUntil(t *testing.T, limit time.Duration, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(limit); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the condition did not hold within %v", limit)
		}
	}
}
