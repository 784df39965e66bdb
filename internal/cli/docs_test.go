package cli

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/server"
	"github.com/mandate-dev/mandate/internal/servertest"
)

// The shell walkthroughs of README.md and examples/README.md run as pasted: the test takes their
// ```sh blocks, changes only what the table of substitutions names (each a placeholder a reader
// copies from an earlier output, a port this machine may have taken, or a path that the
// walkthrough takes from the repository's root), and runs them with bash -e against the built
// binaries. A substitution that no longer matches fails, so the docs cannot drift from the test.

// docBlocks returns the ```sh blocks of the markdown file from the heading start on, up to the
// next heading of the same level when one is true.
func docBlocks(t *testing.T, file, start string, onlySection bool) string {
	t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	text := string(raw)
	i := strings.Index(text, "\n"+start+"\n")
	if i < 0 {
		t.Fatalf("%s has no heading %q", file, start)
	}
	text = text[i+len(start)+2:]
	if onlySection {
		level := start[:strings.IndexByte(start, ' ')+1]
		if j := strings.Index(text, "\n"+level); j >= 0 {
			text = text[:j]
		}
	}
	var script strings.Builder
	for _, m := range regexp.MustCompile("(?s)```sh\n(.*?)```").FindAllStringSubmatch(text, -1) {
		script.WriteString(m[1])
		script.WriteString("\n")
	}
	if script.Len() == 0 {
		t.Fatalf("no sh blocks under %q in %s", start, file)
	}
	return script.String()
}

// substitute applies each substitution, which must match.
func substitute(t *testing.T, script string, subs [][2]string) string {
	t.Helper()
	for _, s := range subs {
		if !strings.Contains(script, s[0]) {
			t.Fatalf("the docs no longer contain %q: update the walkthrough test with them", s[0])
		}
		script = strings.ReplaceAll(script, s[0], s[1])
	}
	return script
}

// docEnv builds the binaries into dir/bin, with mandate wrapped so that everything it prints is
// also kept in dir/mandate.log (where the substitutions find claim codes and grant ids).
func docEnv(t *testing.T, dir string, pkgs ...string) []string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the binaries")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "bin")
	build := exec.Command(goTool, append([]string{"build", "-o", bin + "/"}, pkgs...)...)
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	if err := os.Rename(filepath.Join(bin, "mandate"), filepath.Join(bin, "mandate.real")); err != nil {
		t.Fatal(err)
	}
	wrapper := "#!/usr/bin/env bash\nset -o pipefail\n\"$(dirname \"$(readlink -f \"$0\")\")/mandate.real\" \"$@\" 2>&1 | tee -a \"$DOC_LOG\"\n"
	if err := os.WriteFile(filepath.Join(bin, "mandate"), []byte(wrapper), 0o755); err != nil {
		t.Fatal(err)
	}
	env := []string{"PATH=" + bin + ":" + os.Getenv("PATH"), "HOME=" + dir, "DOC_LOG=" + filepath.Join(dir, "mandate.log"),
		"MANDATE_CONFIG_DIR=" + filepath.Join(dir, "config")}
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k != "PATH" && k != "HOME" && !strings.HasPrefix(k, "MANDATE_") {
			env = append(env, kv)
		}
	}
	return env
}

// runScript runs script with bash -e in dir and returns what it printed; every process it left
// running in the background (servers) is stopped.
func runScript(t *testing.T, dir, script string, env []string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-e", "-o", "pipefail", "-c", script)
	cmd.Dir, cmd.Env = dir, env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// A file, not a pipe: the servers started with & keep their output open after bash exits.
	outFile, err := os.Create(filepath.Join(dir, "walkthrough.out"))
	if err != nil {
		t.Fatal(err)
	}
	defer outFile.Close()
	cmd.Stdout, cmd.Stderr = outFile, outFile
	err = cmd.Run()
	if cmd.Process != nil {
		// Stop what the script left running, and let it end before the directory goes.
		pgid := -cmd.Process.Pid
		_ = syscall.Kill(pgid, syscall.SIGTERM)
		for i := 0; i < 200 && syscall.Kill(pgid, 0) == nil; i++ {
			time.Sleep(50 * time.Millisecond)
		}
		_ = syscall.Kill(pgid, syscall.SIGKILL)
	}
	out, _ := os.ReadFile(outFile.Name())
	if err != nil {
		t.Fatalf("the walkthrough failed: %v\n--- script\n%s\n--- output\n%s", err, script, out)
	}
	return string(out)
}

// Placeholders the walkthroughs ask the reader to copy from an earlier output.
const (
	claimCodeFromLog = `"$(sed -n 's/.*mandate agents claim \([A-Z0-9-]*\)$/\1/p' "$DOC_LOG" | tail -1)"`
	grantIDFromLog   = `$(sed -n 's/^Granted \(gr_[a-z0-9]*\) to .*/\1/p' "$DOC_LOG" | tail -1)`
)

// README's "A first agent in five commands", after go run ./cmd/mandate serve (its first block).
func TestReadmeFirstAgent(t *testing.T) {
	dir := t.TempDir()
	env := docEnv(t, dir, "./cmd/mandate")
	addr := servertest.FreeAddr(t)
	env = append(env, "MANDATE_LISTEN="+addr)
	script := docBlocks(t, "../../README.md", "## A first agent in five commands", true)
	script = substitute(t, script, [][2]string{
		{"go build -o mandate ./cmd/mandate\n", "ln -s bin/mandate mandate\nmandate serve &\n"}, // built above; the server of README's first block
		{"127.0.0.1:8420", addr},
		{"KQ7M-3XPT-9HCD-W2RA", claimCodeFromLog},
	})
	out := runScript(t, dir, script, env)
	hasAll(t, out, "Logged in to http://"+addr+" as admin", "Created agent key", "Claimed agent @research-bot", "research-bot")
}

// docs/cli.md's "Getting started".
func TestCLIGettingStarted(t *testing.T) {
	dir := t.TempDir()
	env := docEnv(t, dir, "./cmd/mandate")
	addr := servertest.FreeAddr(t)
	env = append(env, "MANDATE_LISTEN="+addr)
	script := docBlocks(t, "../../docs/cli.md", "## Getting started", true)
	script = substitute(t, script, [][2]string{
		{"127.0.0.1:8420", addr},
		{"QFFJ-4RPQ-G31H-3V06", claimCodeFromLog},
	})
	out := runScript(t, dir, script, env)
	hasAll(t, out, "Logged in to http://"+addr+" as admin", "Claimed agent @release-bot", "release-bot")
}

// examples/README.md's walkthrough, from building the binaries to the long-running sidecar.
func TestExamplesWalkthrough(t *testing.T) {
	for _, tool := range []string{"node", "sqlite3", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is needed for the examples walkthrough", tool)
			}
			t.Skipf("%s not found: the examples walkthrough is not run (set CI to make this a failure)", tool)
		}
	}
	dir := t.TempDir()
	env := docEnv(t, dir, "./cmd/mandate", "./examples/resend", "./examples/fakeapi")
	addr, ahrefs, resend, sidecar := servertest.FreeAddr(t), servertest.FreeAddr(t), servertest.FreeAddr(t), servertest.FreeAddr(t)
	env = append(env, "MANDATE_LISTEN="+addr)
	repo, _ := filepath.Abs("../..")
	script := docBlocks(t, "../../examples/README.md", "## Walkthrough", false)
	script = substitute(t, script, [][2]string{
		{"go build -o bin/ ./cmd/mandate ./examples/resend ./examples/fakeapi\nexport PATH=$PWD/bin:$PATH\n", ""}, // built above
		{"127.0.0.1:8420", addr},
		{"127.0.0.1:9001", ahrefs},
		{"127.0.0.1:9002", resend},
		{"127.0.0.1:8421", sidecar},
		{"F010-4H0C-RK37-B9AE", claimCodeFromLog},
		{"G=gr_iq5ohsmpfvaqcl3ij2dy6fij4u", "G=" + grantIDFromLog},
		{" examples/ahrefs/", " " + repo + "/examples/ahrefs/"}, // from the repository's root
		{"exit 3'\n", "exit 3' || test $? = 3\n"},               // the failure the walkthrough shows
	})
	out := runScript(t, dir, script, env)
	hasAll(t, out, "Logged in to http://"+addr+" as admin", "Stored its credential", `"domain_rating": 91`, `"id":"em_`,
		"AHREFS_API_KEY=mandate-placeholder-", "insufficient_scope", "completed  a route not granted", "proxy ahrefs: GET /v3/site-explorer/* -> 200")
	for _, secret := range []string{"sk-real-ahrefs", "re_real_resend"} {
		if n := strings.Count(out, secret); n != 0 {
			t.Errorf("the walkthrough's output shows %s %d times", secret, n)
		}
	}
}

// docs/api.md's curl of POST /v1/login, as pasted, from a directory holding the server's
// mandate-data: the bootstrap token becomes the named admin token, and its file goes.
func TestAPILoginCurl(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("no curl")
	}
	ts := newTestServer(t)
	dir := t.TempDir()
	if err := os.Symlink(ts.DataDir, filepath.Join(dir, "mandate-data")); err != nil {
		t.Fatal(err)
	}
	script := docBlocks(t, "../../docs/api.md", "### `POST /v1/login`", true)
	env := append(os.Environ(), "MANDATE="+ts.URL)
	out := runScript(t, dir, script, env)
	var res struct {
		User  struct{ Name string }
		Token struct{ Name, Token string }
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.User.Name != "admin" || res.Token.Name != "login laptop" ||
		!strings.HasPrefix(res.Token.Token, "mnd_") {
		t.Fatalf("the curl printed %q (%v): want the admin and a new token named \"login laptop\"", out, err)
	}
	if _, err := os.Stat(filepath.Join(ts.DataDir, server.BootstrapFile)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the bootstrap token file is still there after the login (%v)", err)
	}
}
