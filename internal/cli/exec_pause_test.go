package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/syncbuf"

	"github.com/mandate-dev/mandate/internal/api"
	"github.com/mandate-dev/mandate/internal/server"
	"github.com/mandate-dev/mandate/internal/servertest"
	"github.com/mandate-dev/mandate/internal/sidecar"
)

// pauseToolEnv, set in a child's environment, makes TestExecPauseTool the tool exec runs.
const pauseToolEnv = "SIDECAR_PAUSE_TOOL"

// TestExecPauseTool is not a test: it is the tool of TestExecAfterIdlePause, in a child process
// (arguments after the test flags: PAUSE [ignore-failure]). It waits PAUSE, calls
// $PAUSE_BASE/v1/data with the placeholder key, and exits 0 on a 200 (or always, with
// ignore-failure, as a careless tool does), 3 otherwise.
func TestExecPauseTool(t *testing.T) {
	if os.Getenv(pauseToolEnv) == "" || flag.NArg() == 0 {
		t.Skip("the tool of TestExecAfterIdlePause, run by it")
	}
	d, err := time.ParseDuration(flag.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, "tool:", err)
		os.Exit(2)
	}
	time.Sleep(d)
	req, _ := http.NewRequest(http.MethodGet, os.Getenv("PAUSE_BASE")+"/v1/data", nil)
	req.Header.Set("Authorization", "Bearer "+os.Getenv("PAUSE_KEY"))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tool:", err)
		os.Exit(2)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Printf("tool: %d %s\n", resp.StatusCode, b)
	if resp.StatusCode != http.StatusOK && flag.Arg(1) != "ignore-failure" {
		os.Exit(3)
	}
	os.Exit(0)
}

// TestExecAfterIdlePause: a tool run by mandate exec waits longer than a token's life (an agent
// thinking), then calls its upstream: the call succeeds and exec exits 0. Before the sidecar
// renewed in the background, the call got 401 and exec exited with the tool's failure.
func TestExecAfterIdlePause(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("re-runs the test binary as the tool")
	}
	const tokenTTL = 10 * time.Second // the shortest a grant allows
	s := servertest.Start(t, servertest.Options{})
	confDir := filepath.Join(t.TempDir(), "conf")
	t.Setenv(envConfigDir, confDir)
	t.Setenv(envToken, "")
	t.Setenv(envAgentKey, "")
	ts := &testServer{URL: s.URL, DataDir: s.DataDir, ConfigDir: confDir}
	key := "pause-real-" + randomHex(16)
	up := newFakeUpstream(t, key, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, `{"ok":true}`) })
	s.AddUpstream(t, "pause", up.URL, "pause:read", "GET", "/v1/data", key)
	ok(t, "login", "--server", ts.URL, "--token-file", filepath.Join(ts.DataDir, server.BootstrapFile))
	kf := newAgent(t, ts, "thinker")
	var g api.GrantJSON
	decodeJSON(t, ok(t, "grant", "create", "--agent", "@thinker", "--scope", "pause:read", "--max-task-ttl", "1h",
		"--max-token-ttl", tokenTTL.String(), "--resource", sidecar.ProxyResource(ts.URL, "pause"), "--json"), &g)

	t.Setenv(pauseToolEnv, "1")
	run := func(out io.Writer, ttl string, toolArgs ...string) <-chan error {
		done := make(chan error, 1)
		go func() {
			done <- runMandate(out, append([]string{"exec", "--key-file", kf, "--grant", g.GrantID, "--purpose", "think, then call",
				"--ttl", ttl, "--upstream", "pause=PAUSE_BASE", "--placeholder", "PAUSE_KEY", "--",
				os.Args[0], "-test.run=^TestExecPauseTool$", "-test.count=1", "--"}, toolArgs...)...)
		}()
		return done
	}
	pause := (tokenTTL + 3*time.Second).String()
	// Both at once: one task lives an hour, the other ends (its TTL) during the tool's pause.
	var out, outEnded syncbuf.Buffer
	done := run(&out, "1h", pause)
	doneEnded := run(&outEnded, (tokenTTL + time.Second).String(), pause, "ignore-failure")

	if err := <-done; err != nil {
		var ee exitError
		errors.As(err, &ee)
		t.Errorf("exec = %v (exit %d), want 0: the tool's call after a pause of more than a token's life\n%s", err, ee, out.String())
	}
	hasAll(t, out.String(), "tool: 200")
	if seen, _ := up.requests(); len(seen) != 1 {
		t.Errorf("the upstream got %d calls, want 1", len(seen))
	}

	// The task ended while the tool waited: its call is refused with the reason, and though the
	// tool exits 0, exec does not.
	err := <-doneEnded
	var ee exitError
	if !errors.As(err, &ee) || ee != 1 {
		t.Errorf("exec of a task that ended = %v, want exit status 1\n%s", err, outEnded.String())
	}
	hasAll(t, outEnded.String(), "tool: 401", "TTL ran out", "mandate exec: 1 of the tool's calls were refused")
}
