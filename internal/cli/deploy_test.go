package cli

import (
	"debug/elf"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/spf13/pflag"

	"github.com/mandate-dev/mandate/internal/config"
	"github.com/mandate-dev/mandate/internal/masterkey"
	"github.com/mandate-dev/mandate/internal/pgtest"
	"github.com/mandate-dev/mandate/internal/servertest"
)

// The deployment the repository ships: the Dockerfile's build line makes a static binary, the
// systemd unit passes systemd-analyze verify with that binary, and every shell block of
// docs/deploy.md runs as pasted or is parsed, as the block's marker says.
func TestDeploy(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the static binary")
	}
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	df := readDockerfile(t, filepath.Join(repo, "Dockerfile"))
	const version = "v0.0.0-deploytest"
	bin := df.build(t, repo, version)

	t.Run("static binary", func(t *testing.T) {
		f, err := elf.Open(bin)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
				t.Errorf("the binary has a %v program header: it is linked dynamically", p.Type)
			}
		}
		if libs, _ := f.ImportedLibraries(); len(libs) > 0 || f.Section(".dynamic") != nil {
			t.Errorf("the binary needs shared libraries %q", libs)
		}
		out, err := exec.Command(bin, "--version").CombinedOutput()
		if err != nil || !strings.Contains(string(out), version) {
			t.Errorf("mandate --version: %q (%v); want the version the Dockerfile's -ldflags set, %s", out, err, version)
		}
	})

	t.Run("Dockerfile", func(t *testing.T) { df.check(t, repo) })

	t.Run("systemd unit", func(t *testing.T) { checkSystemdUnit(t, repo, bin) })

	t.Run("docs/deploy.md", func(t *testing.T) { checkDeployDoc(t, repo, bin, df) })
}

// dockerfile is what the test reads from the Dockerfile.
type dockerfile struct {
	text      string
	buildEnv  []string // the VAR=value words before go build
	buildArgs []string // go build's arguments
	out       string   // its -o
	env       []string // the final image's ENV, as VAR=value
}

func readDockerfile(t *testing.T, path string) *dockerfile {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	df := &dockerfile{text: strings.ReplaceAll(string(raw), "\\\n", " ")}
	m := regexp.MustCompile(`(?m)^RUN (.*\bgo build\b.*)$`).FindStringSubmatch(df.text)
	if m == nil {
		t.Fatal("the Dockerfile has no RUN … go build line")
	}
	segs := shellSegments(m[1])
	if len(segs) != 1 {
		t.Fatalf("the Dockerfile's build line is not one command: %q", m[1])
	}
	words := segs[0]
	for len(words) > 0 && strings.Contains(words[0], "=") {
		df.buildEnv, words = append(df.buildEnv, words[0]), words[1:]
	}
	if len(words) < 2 || words[0] != "go" || words[1] != "build" {
		t.Fatalf("the Dockerfile's build line runs %q, want go build", words)
	}
	df.buildArgs = words[1:]
	for i, w := range df.buildArgs {
		if w == "-o" && i+1 < len(df.buildArgs) {
			df.out = df.buildArgs[i+1]
		}
	}
	// The last stage's ENV (one instruction, several VAR=value).
	last := df.text[strings.LastIndex(df.text, "\nFROM "):]
	for _, m := range regexp.MustCompile(`(?m)^ENV (.*)$`).FindAllStringSubmatch(last, -1) {
		df.env = append(df.env, strings.Fields(m[1])...)
	}
	return df
}

// build runs the Dockerfile's go build, as written but for the output path and the version.
func (df *dockerfile) build(t *testing.T, repo, version string) string {
	t.Helper()
	if !slices.Contains(df.buildEnv, "CGO_ENABLED=0") {
		t.Errorf("the Dockerfile builds with %q: want CGO_ENABLED=0, for a static binary", df.buildEnv)
	}
	bin := filepath.Join(t.TempDir(), "bin", "mandate")
	args := make([]string, len(df.buildArgs))
	for i, a := range df.buildArgs {
		switch {
		case a == df.out && i > 0 && df.buildArgs[i-1] == "-o":
			args[i] = bin
		default:
			args[i] = strings.ReplaceAll(a, "${VERSION}", version)
		}
	}
	cmd := exec.Command("go", args...)
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), df.buildEnv...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return bin
}

// check reads the Dockerfile's promises: a multi-stage build of the Go version go.mod asks for,
// a distroless or scratch image running as a non-root user, the binary the build made, the data
// volume, the port.
func (df *dockerfile) check(t *testing.T, repo string) {
	froms := regexp.MustCompile(`(?m)^FROM (\S+)`).FindAllStringSubmatch(df.text, -1)
	if len(froms) < 2 {
		t.Fatalf("the Dockerfile has %d stages, want a build stage and a runtime stage", len(froms))
	}
	gomod, _ := os.ReadFile(filepath.Join(repo, "go.mod"))
	goVersion := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(gomod)
	if goVersion == nil || !strings.HasPrefix(froms[0][1], "golang:"+string(goVersion[1])) {
		t.Errorf("the build stage is %s, want golang:%s (go.mod)", froms[0][1], goVersion[1])
	}
	final := froms[len(froms)-1][1]
	if !strings.HasPrefix(final, "gcr.io/distroless/static") && final != "scratch" {
		t.Errorf("the image is based on %s, want distroless/static or scratch", final)
	}
	user := regexp.MustCompile(`(?m)^USER (\S+)`).FindAllStringSubmatch(df.text, -1)
	if len(user) == 0 {
		t.Fatal("the Dockerfile sets no USER: the image would run as root")
	}
	if u, _, _ := strings.Cut(user[len(user)-1][1], ":"); u == "0" || u == "root" {
		t.Errorf("the image runs as %s", u)
	}
	wantLines := []string{
		"COPY --from=build " + df.out + " ",
		`VOLUME ["/data"]`,
		"EXPOSE " + strings.TrimPrefix(config.Default().Listen, "127.0.0.1:"),
		`ENTRYPOINT ["/usr/local/bin/mandate"]`,
	}
	for _, want := range wantLines {
		if !strings.Contains(df.text, want) {
			t.Errorf("the Dockerfile has no %q", want)
		}
	}
	if !slices.Contains(df.env, "MANDATE_DATA_DIR=/data") {
		t.Errorf("the image's ENV %q does not put the data directory in the volume", df.env)
	}
	for _, kv := range df.env {
		checkSettingEnv(t, "the Dockerfile", strings.SplitN(kv, "=", 2)[0])
	}
}

// checkSystemdUnit runs systemd-analyze verify and security on the unit, with ExecStart pointed
// at the built binary, and checks its hardening and reload.
func checkSystemdUnit(t *testing.T, repo, bin string) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed: deploy/mandate.service is not checked")
	}
	raw, err := os.ReadFile(filepath.Join(repo, "deploy", "mandate.service"))
	if err != nil {
		t.Fatal(err)
	}
	unit := string(raw)
	for _, want := range []string{
		"\nExecStart=/usr/local/bin/mandate serve\n", "\nExecReload=/bin/kill -HUP $MAINPID\n", "\nUser=mandate\n",
		"\nStateDirectory=mandate\n", "\nEnvironment=MANDATE_DATA_DIR=/var/lib/mandate\n", "\nNoNewPrivileges=yes\n",
		"\nProtectSystem=strict\n", "\nProtectHome=yes\n", "\nPrivateTmp=yes\n", "\nCapabilityBoundingSet=\n",
		"\nAmbientCapabilities=\n", "\nRestrictSUIDSGID=yes\n", "\nSystemCallFilter=@system-service\n",
	} {
		if !strings.Contains(unit, want) {
			t.Errorf("deploy/mandate.service has no line %q", strings.TrimSpace(want))
		}
	}
	for _, m := range regexp.MustCompile(`(?m)^Environment=(\w+)=`).FindAllStringSubmatch(unit, -1) {
		checkSettingEnv(t, "deploy/mandate.service", m[1])
	}
	copyPath := filepath.Join(t.TempDir(), "mandate.service")
	if err := os.WriteFile(copyPath, []byte(strings.ReplaceAll(unit, "/usr/local/bin/mandate", bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	// verify reports unknown keys and bad values on stderr but exits 0: any output fails.
	out, err := exec.Command(analyze, "verify", "--man=no", copyPath).CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	out, err = exec.Command(analyze, "security", "--offline=yes", copyPath).CombinedOutput()
	m := regexp.MustCompile(`Overall exposure level for mandate\.service: (\d+\.\d) (\w+)`).FindSubmatch(out)
	if err != nil || m == nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	if score, _ := strconv.ParseFloat(string(m[1]), 64); score > 2 {
		t.Errorf("systemd-analyze security rates the unit %s %s, want 2.0 or less", m[1], m[2])
	}
	doc, _ := os.ReadFile(filepath.Join(repo, "docs", "deploy.md"))
	if claim := fmt.Sprintf("rates it %s, %q", m[1], string(m[2])); !strings.Contains(strings.Join(strings.Fields(string(doc)), " "), claim) {
		t.Errorf("docs/deploy.md does not say what systemd-analyze security says: %s %s", m[1], m[2])
	}
}

// checkSettingEnv fails unless name is the environment variable of a mandate serve setting.
func checkSettingEnv(t *testing.T, where, name string) {
	t.Helper()
	serve, _, err := NewRoot(nil, nil).Find([]string{"serve"})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	serve.Flags().VisitAll(func(f *pflag.Flag) { found = found || config.Env(f) == name })
	if !found {
		t.Errorf("%s names %s, which is no setting of mandate serve", where, name)
	}
}

// deployBlock is one fenced block of docs/deploy.md with its marker.
type deployBlock struct {
	kind, name, lang, text string
}

func checkDeployDoc(t *testing.T, repo, bin string, df *dockerfile) {
	raw, err := os.ReadFile(filepath.Join(repo, "docs", "deploy.md"))
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	var blocks []deployBlock
	for _, m := range regexp.MustCompile("(?s)<!-- deploy-test: (run|parse) ?([a-z-]*)[^>]*-->\n```(sh|text)\n(.*?)```").FindAllStringSubmatch(doc, -1) {
		blocks = append(blocks, deployBlock{m[1], m[2], m[3], m[4]})
	}
	if fences := strings.Count(doc, "\n```") / 2; fences != len(blocks) {
		t.Fatalf("docs/deploy.md has %d fenced blocks, %d of them marked deploy-test: run or parse: mark every one", fences, len(blocks))
	}
	for _, name := range regexp.MustCompile(`\bMANDATE_[A-Z_]+\b`).FindAllString(doc, -1) {
		checkSettingEnv(t, "docs/deploy.md", name)
	}
	ran := map[string]bool{}
	for i, b := range blocks {
		t.Run(fmt.Sprintf("%d %s %s", i, b.kind, b.name), func(t *testing.T) {
			switch {
			case b.kind == "run":
				ran[b.name] = true
				runDeployBlock(t, bin, b)
			case b.lang == "text" && b.name == "postgres-url":
				checkPostgresURL(t, strings.TrimSpace(b.text), 3)
			case b.lang == "sh":
				parseDeployBlock(t, repo, bin, df, b.text)
			default:
				t.Fatalf("no check for a %s block named %q", b.lang, b.name)
			}
		})
	}
	for _, want := range []string{"tls", "replicas", "backup"} {
		if !ran[want] {
			t.Errorf("docs/deploy.md has no run block %q", want)
		}
	}
}

// runDeployBlock runs a block with bash -e, the built binary first on PATH, after the
// substitutions its name calls for.
func runDeployBlock(t *testing.T, bin string, b deployBlock) {
	dir := t.TempDir()
	env := []string{"PATH=" + filepath.Dir(bin) + ":" + os.Getenv("PATH"), "HOME=" + dir, "MANDATE_CONFIG_DIR=" + filepath.Join(dir, "config")}
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k != "PATH" && k != "HOME" && !strings.HasPrefix(k, "MANDATE_") {
			env = append(env, kv)
		}
	}
	var subs [][2]string
	var want []string
	switch b.name {
	case "tls":
		for _, tool := range []string{"openssl", "curl"} {
			if _, err := exec.LookPath(tool); err != nil {
				t.Skipf("%s is not installed: the TLS walkthrough is not run", tool)
			}
		}
		subs = [][2]string{{"127.0.0.1:8443", servertest.FreeAddr(t)}}
		want = []string{"strict-transport-security: max-age=31536000", "renewed: serial="}
	case "replicas":
		base := pgtest.URL(t) // skips without MANDATE_TEST_POSTGRES
		u, err := url.Parse(base)
		if err != nil {
			t.Fatal(err)
		}
		// The first host is down: the driver goes on to the second, the test's server.
		multi := fmt.Sprintf("%s@127.0.0.1:1,%s%s?%s&target_session_attrs=read-write", u.User.String(), u.Host, u.Path, u.RawQuery)
		checkPostgresURL(t, "postgres://"+multi, 2)
		subs = [][2]string{
			{"mandate:secret@db1.internal:5432,db2.internal:5432/mandate?target_session_attrs=read-write", multi},
			{"127.0.0.1:8420", servertest.FreeAddr(t)},
			{"127.0.0.1:8421", servertest.FreeAddr(t)},
			{"/etc/mandate/master.key", filepath.Join(dir, "master.key")},
		}
		want = []string{"same signing keys"}
	case "backup":
		data, secrets := filepath.Join(dir, "data"), filepath.Join(dir, "secrets")
		for _, d := range []string{data, secrets} {
			if err := os.MkdirAll(d, 0o700); err != nil {
				t.Fatal(err)
			}
		}
		if _, _, err := masterkey.LoadOrCreate(filepath.Join(data, "master.key")); err != nil {
			t.Fatal(err)
		}
		subs = [][2]string{{"/var/lib/mandate/", data + "/"}, {"/mnt/secrets/", secrets + "/"}}
		want = []string{"backup matches"}
	default:
		t.Fatalf("no substitutions known for the run block %q", b.name)
	}
	out := runScript(t, dir, substitute(t, b.text, subs), env)
	hasAll(t, strings.ToLower(out), want...)
}

// checkPostgresURL parses a connection URL as the store's driver does, and checks it names hosts
// hosts and asks for the writable one.
func checkPostgresURL(t *testing.T, dsn string, hosts int) {
	t.Helper()
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		t.Fatalf("pgx does not parse %q: %v", dsn, err)
	}
	if got := 1 + len(cfg.Fallbacks); got != hosts {
		t.Errorf("%q names %d hosts for pgx, want %d", dsn, got, hosts)
	}
	if cfg.ValidateConnect == nil {
		t.Errorf("%q does not make pgx check that the server accepts writes", dsn)
	}
}

// parseDeployBlock checks a block that cannot run here: its syntax, the repository files it
// names, the unit it controls, and its docker run's settings, read as the image would.
func parseDeployBlock(t *testing.T, repo, bin string, df *dockerfile, text string) {
	if out, err := exec.Command("bash", "-n", "-c", text).CombinedOutput(); err != nil {
		t.Fatalf("bash -n: %v\n%s", err, out)
	}
	tag := ""
	for _, line := range strings.Split(strings.ReplaceAll(text, "\\\n", " "), "\n") {
		for _, words := range shellSegments(line) {
			if words[0] == "sudo" {
				words = words[1:]
			}
			for _, w := range words {
				if strings.HasPrefix(w, "deploy/") || w == "Dockerfile" {
					if _, err := os.Stat(filepath.Join(repo, w)); err != nil {
						t.Errorf("%q names %s: %v", line, w, err)
					}
				}
			}
			switch {
			case len(words) > 2 && words[0] == "systemctl" && !strings.HasPrefix(words[1], "daemon-"):
				if unit := words[len(words)-1]; unit != "mandate" {
					t.Errorf("%q controls %s; the unit is mandate.service", line, unit)
				}
			case len(words) > 2 && words[0] == "docker" && words[1] == "build":
				for i, w := range words {
					if w == "-t" && i+1 < len(words) {
						tag = words[i+1]
					}
				}
				if words[len(words)-1] != "." {
					t.Errorf("%q: want the repository's root as the build context", line)
				}
			case len(words) > 2 && words[0] == "docker" && words[1] == "run":
				checkDockerRun(t, bin, df, tag, words[2:])
			}
		}
	}
}

// checkDockerRun runs the built binary as the image would run with these docker run arguments,
// with --print-config: the settings must be valid.
func checkDockerRun(t *testing.T, bin string, df *dockerfile, tag string, words []string) {
	env := append([]string{"PATH=/nonexistent", "HOME=" + t.TempDir()}, df.env...)
	withValue := map[string]bool{"--name": true, "-p": true, "-v": true, "-e": true, "--env": true}
	var args []string
	for i := 0; i < len(words); i++ {
		switch w := words[i]; {
		case (w == "-e" || w == "--env") && i+1 < len(words):
			env = append(env, words[i+1])
			checkSettingEnv(t, "docker run", strings.SplitN(words[i+1], "=", 2)[0])
			i++
		case withValue[w]:
			i++
		case strings.HasPrefix(w, "-"):
		default:
			if w != tag {
				t.Errorf("docker run runs the image %q, but docker build tagged %q", w, tag)
			}
			args = words[i+1:]
			i = len(words)
		}
	}
	if len(args) == 0 {
		args = []string{"serve"} // the image's CMD
	}
	cmd := exec.Command(bin, append(args, "--print-config")...)
	cmd.Env = env
	cmd.Dir = t.TempDir()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("the image, run as docker run %s says, does not start: %v\n%s", strings.Join(words, " "), err, out)
	}
}
