package cli

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/syncbuf"

	"github.com/mandate-dev/mandate/client"
	"github.com/mandate-dev/mandate/internal/api"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/server"
	"github.com/mandate-dev/mandate/internal/servertest"
	"github.com/mandate-dev/mandate/internal/sidecar"
)

func TestChildEnv(t *testing.T) {
	parent := []string{
		"PATH=/usr/bin:/bin",
		"HOME=/home/dev",
		"MANDATE_TOKEN=mnd_admin",
		"MANDATE_AGENT_KEY=/home/dev/.config/mandate/agent/key.jwk",
		"MANDATE_CONFIG_DIR=/home/dev/.config/mandate",
		"mandate_lower=x",
		"OLD_TOKEN=mnd_0123456789",
		"MY_KEY=/home/dev/.config/mandate/agent/key.jwk",
		"MY_STATE=/home/dev/.config/mandate/agent/agent.json",
		"AHREFS_API_KEY=the-real-key",
		"AHREFS_API_BASE=https://api.ahrefs.com",
		"EMPTY=",
		"WEIRD=a=b",
	}
	got := childEnv(parent, []string{"/home/dev/.config/mandate/agent/key.jwk", "/home/dev/.config/mandate/agent/agent.json"},
		[][2]string{{"AHREFS_API_BASE", "http://127.0.0.1:1234/ahrefs"}, {"AHREFS_API_KEY", "mandate-placeholder-00"}})
	want := []string{
		"PATH=/usr/bin:/bin",
		"HOME=/home/dev",
		"EMPTY=",
		"WEIRD=a=b",
		"AHREFS_API_BASE=http://127.0.0.1:1234/ahrefs",
		"AHREFS_API_KEY=mandate-placeholder-00",
	}
	if !slices.Equal(got, want) {
		t.Errorf("childEnv =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestParseExecFlags(t *testing.T) {
	ups, err := parseExecUpstreams([]string{"ahrefs=AHREFS_API_BASE", " resend = RESEND_BASE_URL", "resend=RESEND_API_URL"})
	if err != nil || len(ups) != 3 || ups[1] != (execUpstream{"resend", "RESEND_BASE_URL"}) {
		t.Fatalf("parseExecUpstreams = %v, %v", ups, err)
	}
	for in, want := range map[string]string{
		"ahrefs":                "want NAME=VAR",
		"ahrefs=":               "want NAME=VAR",
		"Ahrefs=X":              "not an upstream's name",
		"ahrefs=1X":             "not an environment variable's name",
		"ahrefs=A B":            "not an environment variable's name",
		"ahrefs=MANDATE_SERVER": "mandate's own",
	} {
		if _, err := parseExecUpstreams([]string{in}); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("parseExecUpstreams(%q) = %v, want an error with %q", in, err, want)
		}
	}
	if _, err := parseExecUpstreams([]string{"a=X", "b=X"}); err == nil {
		t.Error("one variable for two upstreams accepted")
	}
	ph, err := parsePlaceholders([]string{"AHREFS_API_KEY", "RESEND_API_KEY,OTHER_KEY"}, ups)
	if err != nil || !slices.Equal(ph, []string{"AHREFS_API_KEY", "RESEND_API_KEY", "OTHER_KEY"}) {
		t.Errorf("parsePlaceholders = %v, %v", ph, err)
	}
	for _, bad := range []string{"AHREFS_API_BASE", "MANDATE_TOKEN", "9X", "A-B"} {
		if _, err := parsePlaceholders([]string{bad}, ups); err == nil {
			t.Errorf("parsePlaceholders(%q) accepted", bad)
		}
	}
	a, _ := newPlaceholder()
	b, _ := newPlaceholder()
	if !strings.HasPrefix(a, placeholderPrefix) || len(a) != len(placeholderPrefix)+32 || a == b {
		t.Errorf("placeholders %q %q: want distinct random values", a, b)
	}
}

// waitFor waits for want to appear in s.
func waitFor(t *testing.T, s *syncbuf.Buffer, want string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if strings.Contains(s.String(), want) {
			return
		}
	}
	t.Fatalf("%q never appeared in:\n%s", want, s.String())
}

// runMandate runs the command tree writing to out.
func runMandate(out io.Writer, args ...string) error {
	root := NewRoot(out, out)
	root.SetArgs(args)
	root.SetIn(strings.NewReader(""))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return root.ExecuteContext(ctx)
}

// captureExec sets execHook for the test: it records every task exec starts and its sidecar.
type execRun struct {
	Task    *client.Task
	Token   string // the task's token when the child started
	Sidecar string
}

func captureExec(t *testing.T, also func(execRun)) *[]execRun {
	t.Helper()
	var runs []execRun
	execHook = func(task *client.Task, u string) {
		r := execRun{Task: task, Token: task.Current().AccessToken, Sidecar: u}
		runs = append(runs, r)
		if also != nil {
			also(r)
		}
	}
	t.Cleanup(func() { execHook = nil })
	return &runs
}

// agentWithGrant logs in as the admin, registers and claims an agent and grants it scopes on
// the proxy of each upstream.
func agentWithGrant(t *testing.T, ts *testServer, handle, scopes string, upstreams ...string) (keyFile, grantID string) {
	t.Helper()
	ok(t, "login", "--server", ts.URL, "--token-file", filepath.Join(ts.DataDir, server.BootstrapFile))
	kf := newAgent(t, ts, handle)
	args := []string{"grant", "create", "--agent", "@" + handle, "--scope", scopes, "--max-task-ttl", "1h", "--json"}
	for _, u := range upstreams {
		args = append(args, "--resource", sidecar.ProxyResource(ts.URL, u))
	}
	var g api.GrantJSON
	decodeJSON(t, ok(t, args...), &g)
	return kf, g.GrantID
}

func taskStatus(t *testing.T, id string) string {
	t.Helper()
	var x api.TaskJSON
	decodeJSON(t, ok(t, "task", "show", id, "--json"), &x)
	return x.Status
}

func TestExecChildLifecycle(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("runs sh")
	}
	ts := newTestServer(t)
	kf, grant := agentWithGrant(t, ts, "runner", "svc:read", "svc")
	runs := captureExec(t, nil)
	base := []string{"exec", "--key-file", kf, "--grant", grant, "--purpose", "lifecycle", "--ttl", "10m",
		"--upstream", "svc=SVC_BASE", "--placeholder", "SVC_KEY"}

	t.Run("exit code, environment, task ended", func(t *testing.T) {
		out, err := mandate(t, "", append(base, "--", "sh", "-c", `echo "base=$SVC_BASE key=$SVC_KEY"; exit 7`)...)
		var ee exitError
		if !errors.As(err, &ee) || ee != 7 {
			t.Fatalf("exec = %v, want the child's exit status 7\n%s", err, out)
		}
		r := (*runs)[len(*runs)-1]
		hasAll(t, out, "base="+r.Sidecar+"/svc key="+placeholderPrefix)
		if got := taskStatus(t, r.Task.ID); got != "completed" {
			t.Errorf("after exec the task is %s, want completed", got)
		}
		if err := r.Task.Refresh(context.Background()); err == nil {
			t.Error("the ended task's token was exchanged for a fresh one")
		}
		if resp, err := http.Get(r.Sidecar + "/svc/x"); err == nil {
			resp.Body.Close()
			t.Error("the sidecar still answers after exec returned")
		}
		// The token was bound to an instance key, not to the agent's key.
		agentKey, err := client.LoadKey(kf)
		if err != nil {
			t.Fatal(err)
		}
		if r.Task.Key.(ed25519.PrivateKey).Equal(agentKey) {
			t.Error("the task's token is bound to the agent's long-term key, want an instance key")
		}
	})

	t.Run("success", func(t *testing.T) {
		if out, err := mandate(t, "", append(base, "--", "true")...); err != nil {
			t.Fatalf("exec true: %v\n%s", err, out)
		}
		if got := taskStatus(t, (*runs)[len(*runs)-1].Task.ID); got != "completed" {
			t.Errorf("task %s, want completed", got)
		}
	})

	t.Run("signals are passed on", func(t *testing.T) {
		var out syncbuf.Buffer
		done := make(chan error, 1)
		go func() {
			done <- runMandate(&out, append(base, "--", "sh", "-c", `trap 'echo got-hup; exit 42' HUP; echo ready; while :; do sleep 0.05; done`)...)
		}()
		waitFor(t, &out, "ready")
		if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		var err error
		select {
		case err = <-done:
		case <-time.After(30 * time.Second):
			t.Fatal("the child did not exit after SIGHUP")
		}
		var ee exitError
		if !errors.As(err, &ee) || ee != 42 {
			t.Fatalf("exec = %v, want 42\n%s", err, out.String())
		}
		hasAll(t, out.String(), "got-hup")
		if got := taskStatus(t, (*runs)[len(*runs)-1].Task.ID); got != "completed" {
			t.Errorf("task %s, want completed", got)
		}
	})

	t.Run("killed by a signal", func(t *testing.T) {
		_, err := mandate(t, "", append(base, "--", "sh", "-c", `kill -TERM $$`)...)
		var ee exitError
		if !errors.As(err, &ee) || ee != 128+15 {
			t.Fatalf("exec = %v, want 143", err)
		}
	})

	t.Run("a child that cannot start", func(t *testing.T) {
		fails(t, "", append(base, "--", "/nonexistent/tool"), "starting /nonexistent/tool")
		if got := taskStatus(t, (*runs)[len(*runs)-1].Task.ID); got != "completed" {
			t.Errorf("task %s, want completed", got)
		}
	})

	t.Run("refused flags", func(t *testing.T) {
		fails(t, "", []string{"exec", "--key-file", kf, "--grant", grant, "--", "true"}, "--upstream NAME=VAR")
		fails(t, "", []string{"exec", "--key-file", kf, "--upstream", "svc=X", "--", "true"}, "--grant is required")
		fails(t, "", []string{"exec", "--key-file", kf, "--grant", grant, "--upstream", "svc=MANDATE_X", "--", "true"}, "mandate's own")
		fails(t, "", []string{"exec", "--key-file", kf, "--grant", grant, "--upstream", "svc=X", "--placeholder", "X", "--", "true"}, "given twice")
		fails(t, "", []string{"exec", "--key-file", kf, "--grant", "gr_nope", "--upstream", "svc=X", "--", "true"}, "not among the active grants")
		// A resource the grant does not have is refused by the server.
		fails(t, "", []string{"exec", "--key-file", kf, "--grant", grant, "--upstream", "other=X", "--", "true"}, "invalid_target")
	})
}

func TestAgentProxyCommand(t *testing.T) {
	ts := newTestServer(t)
	kf, grant := agentWithGrant(t, ts, "sidecar-bot", "svc:read", "svc")
	fails(t, "", []string{"agent", "proxy", "--key-file", kf, "--listen", "0.0.0.0:0", "--grant", grant}, "loopback only")
	fails(t, "", []string{"agent", "proxy", "--key-file", kf, "--listen", "127.0.0.1:0"}, "--task-file FILE", "--grant G")
	fails(t, "", []string{"agent", "proxy", "--key-file", kf, "--listen", "127.0.0.1:0", "--grant", grant, "--task-file", "x"}, "not both")

	// --grant: the sidecar starts the task, and ends it when it stops.
	var out syncbuf.Buffer
	root := NewRoot(&out, &out)
	root.SetArgs([]string{"agent", "proxy", "--key-file", kf, "--listen", "127.0.0.1:0", "--grant", grant, "--purpose", "sidecar", "--upstream", "svc", "--json"})
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	waitFor(t, &out, `"task_id"`)
	var res struct {
		URL    string `json:"url"`
		TaskID string `json:"task_id"`
	}
	decodeJSON(t, out.String()[:strings.Index(out.String(), "}")+1], &res)
	if !strings.HasPrefix(res.URL, "http://127.0.0.1:") || !strings.HasPrefix(res.TaskID, "tsk_") {
		t.Fatalf("agent proxy --json = %s", out.String())
	}
	var x api.TaskJSON
	decodeJSON(t, ok(t, "task", "show", res.TaskID, "--json"), &x)
	if x.Status != "active" || x.InstanceJKT == "" || !slices.Equal(x.Resources, []string{sidecar.ProxyResource(ts.URL, "svc")}) || x.Purpose != "sidecar" {
		t.Errorf("the sidecar's task = %+v; want active, bound to an instance key, for the svc proxy", x)
	}
	resp, err := http.Get(res.URL + "/other/x")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("an upstream not named by --upstream: %d, want 404", resp.StatusCode)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatalf("agent proxy: %v\n%s", err, out.String())
	}
	hasAll(t, out.String(), "Task "+res.TaskID+" is completed")
	if got := taskStatus(t, res.TaskID); got != "completed" {
		t.Errorf("after the sidecar stopped the task is %s", got)
	}

	// --task-file: a task started earlier, with its instance key in the file.
	taskFilePath := filepath.Join(t.TempDir(), "task.json")
	ok(t, "task", "start", "--key-file", kf, "--grant", grant, "--purpose", "from a file", "--instance-key", "--out", taskFilePath)
	var out2 syncbuf.Buffer
	root = NewRoot(&out2, &out2)
	root.SetArgs([]string{"agent", "proxy", "--listen", "127.0.0.1:0", "--task-file", taskFilePath, "--quiet"})
	ctx2, stop2 := context.WithCancel(context.Background())
	done = make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx2) }()
	waitFor(t, &out2, "for task tsk_")
	stop2()
	if err := <-done; err != nil {
		t.Fatalf("agent proxy --task-file: %v\n%s", err, out2.String())
	}
}

// fakeUpstream is a third-party API for the test: it answers only requests with the real key,
// and records what it saw.
type fakeUpstream struct {
	*httptest.Server
	mu   sync.Mutex
	seen []*http.Request
	body [][]byte
}

func newFakeUpstream(t *testing.T, key string, h http.HandlerFunc) *fakeUpstream {
	t.Helper()
	f := &fakeUpstream{}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.seen = append(f.seen, r.Clone(context.Background()))
		f.body = append(f.body, b)
		f.mu.Unlock()
		if r.Header.Get("Authorization") != "Bearer "+key {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"error":"invalid API key"}`)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(b))
		h(w, r)
	}))
	t.Cleanup(f.Close)
	return f
}

func (f *fakeUpstream) requests() ([]*http.Request, [][]byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.seen), slices.Clone(f.body)
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// adminCall calls the management API with the admin token.
func adminCall(t *testing.T, s *servertest.Server, method, path string, in any) (int, string) {
	t.Helper()
	return s.Admin(t, method, path, in)
}

// addUpstream configures a bearer upstream on a loopback address with one route, and its key.
func addUpstream(t *testing.T, s *servertest.Server, name, baseURL, scope, method, path, key string) {
	t.Helper()
	s.AddUpstream(t, name, baseURL, scope, method, path, key)
}

// repoRoot is the module's root (the test runs in internal/cli).
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// TestExecExamples is the acceptance 1: both examples, unmodified, succeed through
// mandate exec against upstreams that accept only the real key; the key reaches the upstreams
// and nothing else — not the child's environment, the proxy's answers, the server's log or the
// audit trail — and once exec returns, nothing the child held works.
func TestExecExamples(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("runs env")
	}
	var logs syncbuf.Buffer
	s := servertest.Start(t, servertest.Options{Log: &logs})
	confDir := filepath.Join(t.TempDir(), "conf")
	t.Setenv(envConfigDir, confDir)
	t.Setenv(envToken, "")
	t.Setenv(envAgentKey, "")
	ts := &testServer{URL: s.URL, DataDir: s.DataDir, ConfigDir: confDir}
	ctx := context.Background()

	ahrefsKey := "ahrefs-real-" + randomHex(16)
	resendKey := "re_real_" + randomHex(16)
	ahrefs := newFakeUpstream(t, ahrefsKey, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != "/v3/site-explorer/domain-rating" || r.URL.Query().Get("target") == "" {
			http.Error(w, `{"error":"not found"}`, http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"domain_rating": map[string]any{"domain_rating": 91, "ahrefs_rank": 3, "target": r.URL.Query().Get("target")}})
	})
	resend := newFakeUpstream(t, resendKey, func(w http.ResponseWriter, r *http.Request) {
		var e struct {
			From    string   `json:"from"`
			To      []string `json:"to"`
			Subject string   `json:"subject"`
			Text    string   `json:"text"`
		}
		if r.Method != http.MethodPost || r.URL.Path != "/emails" || json.NewDecoder(r.Body).Decode(&e) != nil || len(e.To) == 0 || e.Subject == "" {
			http.Error(w, `{"error":"bad request"}`, http.StatusUnprocessableEntity)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, `{"id":"em_4ef9a417-02e9-4d39-ad75-9611e0fcc33c"}`)
	})
	addUpstream(t, s, "ahrefs", ahrefs.URL, "ahrefs:read", "GET", "/v3/site-explorer/*", ahrefsKey)
	addUpstream(t, s, "resend", resend.URL, "resend:send", "POST", "/emails", resendKey)
	kf, grant := agentWithGrant(t, ts, "seo-bot", "ahrefs:read resend:send", "ahrefs", "resend")

	// The parent's environment, as a developer's shell might have it: the real key of one
	// upstream, mandate's own variables, a copy of the key file's path. None may reach the child.
	t.Setenv("AHREFS_API_KEY", ahrefsKey)
	t.Setenv(envAgentKey, kf)
	t.Setenv(envToken, s.AdminToken)
	t.Setenv("AGENT_KEY_COPY", kf)
	t.Setenv("KEEP_ME", "kept")

	var answers []string // every answer the proxy gave, whole
	checkDirect := false
	runs := captureExec(t, func(r execRun) {
		if !checkDirect {
			return
		}
		// Through the sidecar directly, each with a credential of the tool's own, which must
		// not go through: an allowed call, a path and a method no route allows, an upstream
		// this exec does not forward to.
		for path, want := range map[string][]int{
			"/ahrefs/v3/site-explorer/domain-rating?target=direct.example": {http.StatusOK},
			"/ahrefs/v3/keywords-explorer/overview":                        {http.StatusForbidden},
			"/resend/emails":                                               {http.StatusForbidden, http.StatusMethodNotAllowed},
			"/other/x":                                                     {http.StatusNotFound},
		} {
			req, _ := http.NewRequest(http.MethodGet, r.Sidecar+path, nil)
			req.Header.Set("Authorization", "Bearer tool-own-credential")
			req.Header.Set("Cookie", "session=tool-own-cookie")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Errorf("GET %s: %v", path, err)
				continue
			}
			dump, _ := httputil.DumpResponse(resp, true)
			resp.Body.Close()
			answers = append(answers, string(dump))
			if !slices.Contains(want, resp.StatusCode) {
				t.Errorf("GET %s through the sidecar: %d, want %v\n%s", path, resp.StatusCode, want, dump)
			}
		}
	})
	exitOK := func(out string, err error, what string) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v\n%s", what, err, out)
		}
		answers = append(answers, out)
	}

	// The ahrefs.js-style script, under node.
	script := filepath.Join(repoRoot(t), "examples", "ahrefs", "ahrefs.mjs")
	node, nodeErr := exec.LookPath("node")
	switch {
	case nodeErr == nil:
		out, err := mandate(t, "", "exec", "--grant", grant, "--purpose", "domain rating", "--scope", "ahrefs:read", "--ttl", "5m",
			"--upstream", "ahrefs=AHREFS_API_BASE", "--placeholder", "AHREFS_API_KEY", "--", node, script, "example.com")
		exitOK(out, err, "exec node ahrefs.mjs")
		hasAll(t, out, `"domain_rating": 91`, `"target": "example.com"`)
	case os.Getenv("CI") != "":
		t.Fatalf("node is needed for the ahrefs example: %v", nodeErr)
	default:
		t.Log("node not found: the ahrefs example is not run (set CI to make this a failure)")
	}

	// The resend-style CLI, built from examples/resend.
	bin := filepath.Join(t.TempDir(), "resend")
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	build := exec.Command(goTool, "build", "-o", bin, "./examples/resend")
	build.Dir = repoRoot(t)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./examples/resend: %v\n%s", err, out)
	}
	out, err := mandate(t, "", "exec", "--grant", grant, "--purpose", "send the report", "--scope", "resend:send",
		"--upstream", "resend=RESEND_BASE_URL", "--placeholder", "RESEND_API_KEY", "--",
		bin, "--from", "bot@example.com", "--to", "ops@example.com", "--subject", "Weekly report", "--text", "DR 91")
	exitOK(out, err, "exec resend")
	hasAll(t, out, `"id":"em_4ef9a417-02e9-4d39-ad75-9611e0fcc33c"`)

	// The child's whole environment.
	checkDirect = true
	envOut, err := mandate(t, "", "exec", "--grant", grant, "--purpose", "dump the environment",
		"--upstream", "ahrefs=AHREFS_API_BASE", "--upstream", "resend=RESEND_BASE_URL",
		"--placeholder", "AHREFS_API_KEY", "--placeholder", "RESEND_API_KEY", "--", "env")
	exitOK(envOut, err, "exec env")
	last := (*runs)[len(*runs)-1]
	hasAll(t, envOut, "KEEP_ME=kept\n", "AHREFS_API_BASE="+last.Sidecar+"/ahrefs\n", "RESEND_BASE_URL="+last.Sidecar+"/resend\n",
		"AHREFS_API_KEY="+placeholderPrefix, "RESEND_API_KEY="+placeholderPrefix)
	agentJWK, err := os.ReadFile(kf)
	if err != nil {
		t.Fatal(err)
	}
	var jwk struct {
		D string `json:"d"`
	}
	if err := json.Unmarshal(agentJWK, &jwk); err != nil || jwk.D == "" {
		t.Fatalf("agent key file: %v", err)
	}
	forbidden := map[string]string{
		"the real ahrefs key": ahrefsKey, "the real resend key": resendKey, "the admin's API token": s.AdminToken,
		"the agent's private key": jwk.D, "the agent's key file": kf, "MANDATE_ variables": "MANDATE_",
	}
	for i, r := range *runs {
		seed := r.Task.Key.(ed25519.PrivateKey).Seed()
		forbidden["task token "+r.Task.ID] = r.Token
		forbidden["instance key "+string(rune('0'+i))] = base64.RawURLEncoding.EncodeToString(seed)
		forbidden["instance key hex "+string(rune('0'+i))] = hex.EncodeToString(seed)
	}
	for what, v := range forbidden {
		if strings.Contains(envOut, v) {
			t.Errorf("the child's environment contains %s", what)
		}
	}

	// The upstreams saw the real key, and only it: no placeholder, no task token, no proof.
	for name, up := range map[string]*fakeUpstream{"ahrefs": ahrefs, "resend": resend} {
		reqs, bodies := up.requests()
		if len(reqs) == 0 {
			t.Errorf("%s saw no request", name)
		}
		key := map[string]string{"ahrefs": ahrefsKey, "resend": resendKey}[name]
		for i, r := range reqs {
			if r.Header.Get("Authorization") != "Bearer "+key {
				t.Errorf("%s saw %s %s with Authorization %q, want the real key", name, r.Method, r.URL, r.Header.Get("Authorization"))
			}
			dump, _ := httputil.DumpRequest(r, false)
			all := string(dump) + string(bodies[i])
			for _, bad := range []string{placeholderPrefix, "tool-own", "DPoP", "eyJ"} {
				if strings.Contains(all, bad) {
					t.Errorf("%s saw %q:\n%s", name, bad, all)
				}
			}
		}
	}
	if reqs, bodies := resend.requests(); len(reqs) > 0 && !strings.Contains(string(bodies[len(bodies)-1]), `"to":["ops@example.com"]`) {
		t.Errorf("resend got body %s", bodies[len(bodies)-1])
	}

	// Nothing the proxy answered, nothing the server logged, no audit event holds a real key.
	events, err := s.Srv.Store().ListEvents(ctx, audit.Filter{Limit: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	evJSON, _ := json.Marshal(events)
	for where, text := range map[string]string{"the proxy's answers": strings.Join(answers, "\n"), "the server's log": logs.String(), "the audit trail": string(evJSON)} {
		for _, key := range []string{ahrefsKey, resendKey} {
			if strings.Contains(text, key) {
				t.Errorf("%s contain a real upstream key", where)
			}
		}
	}
	// Each proxied call has its event, naming the task that made it.
	calls := map[string]int{}
	for _, ev := range events {
		if ev.Action != "proxy.call" {
			continue
		}
		calls[ev.Target+" "+string(ev.Outcome)]++
		for _, r := range *runs {
			if strings.Contains(ev.Detail, r.Task.ID) && ev.AgentID == "" {
				t.Errorf("proxy event %s names task %s but no agent", ev.ID, r.Task.ID)
			}
		}
	}
	if calls["ahrefs success"] < 2 || calls["resend success"] < 1 || calls["ahrefs denied"] < 1 {
		t.Errorf("proxy.call events by upstream and outcome: %v; want the successful ahrefs and resend calls and the refused ahrefs one", calls)
	}

	// After exec: every task is completed and its token refused by the proxy.
	before, _ := ahrefs.requests()
	for _, r := range *runs {
		if got := taskStatus(t, r.Task.ID); got != "completed" {
			t.Errorf("task %s is %s after exec, want completed", r.Task.ID, got)
		}
		hc := &http.Client{Transport: r.Task.Transport(nil), Timeout: 10 * time.Second}
		resp, err := hc.Get(s.URL + "/proxy/ahrefs/v3/site-explorer/domain-rating?target=after.example")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("the token of ended task %s: %d %s, want 401", r.Task.ID, resp.StatusCode, b)
		}
	}
	if after, _ := ahrefs.requests(); len(after) != len(before) {
		t.Error("a request with an ended task's token reached the upstream")
	}
}
