package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"gopkg.in/yaml.v3"

	"github.com/mandate-dev/mandate/internal/config"
	"github.com/mandate-dev/mandate/internal/masterkey"
	"github.com/mandate-dev/mandate/internal/server"
	"github.com/mandate-dev/mandate/internal/servertest"
)

// cleanEnv unsets every MANDATE_* variable for the test (empty counts as unset), then sets env.
func cleanEnv(t *testing.T, env map[string]string) {
	t.Helper()
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, config.EnvPrefix) {
			t.Setenv(k, "")
		}
	}
	for k, v := range env {
		t.Setenv(k, v)
	}
}

// setting is one line of mandate serve --print-config.
type setting struct{ value, source string }

// printConfig runs mandate serve --print-config with args in env and reads what it printed; err
// is the command's (the settings are printed even when they do not validate).
func printConfig(t *testing.T, env map[string]string, args ...string) (map[string]setting, error) {
	t.Helper()
	cleanEnv(t, env)
	var out, errOut bytes.Buffer
	root := NewRoot(&out, &errOut)
	root.SetArgs(append([]string{"serve", "--print-config"}, args...))
	err := root.ExecuteContext(context.Background())
	var doc yaml.Node
	if yerr := yaml.Unmarshal(out.Bytes(), &doc); yerr != nil {
		t.Fatalf("--print-config is not YAML: %v\n%s", yerr, out.String())
	}
	got := map[string]setting{}
	if len(doc.Content) == 0 {
		return got, err
	}
	m := doc.Content[0]
	for i := 0; i+1 < len(m.Content); i += 2 {
		got[m.Content[i].Value] = setting{m.Content[i+1].Value, strings.TrimSpace(strings.TrimPrefix(m.Content[i+1].LineComment, "#"))}
	}
	return got, err
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// The precedence of mandate serve's settings, through the real command: flag > env > file >
// default, wherever the file is named; a file that is missing or names no setting is an error.
func TestServeSettingsPrecedence(t *testing.T) {
	file := writeFile(t, "mandate.yaml", "listen: 127.0.0.1:9001\ntoken-ttl: 2m\nlog-level: debug\n")
	tests := map[string]struct {
		env  map[string]string
		args []string
		want map[string]setting
	}{
		"defaults": {nil, nil, map[string]setting{
			"listen": {"127.0.0.1:8420", "default"}, "token-ttl": {"5m0s", "default"}, "data-dir": {"mandate-data", "default"}}},
		"--config file": {nil, []string{"--config", file}, map[string]setting{
			"listen": {"127.0.0.1:9001", "file " + file}, "token-ttl": {"2m0s", "file " + file}, "data-dir": {"mandate-data", "default"}}},
		"MANDATE_CONFIG file": {map[string]string{"MANDATE_CONFIG": file}, nil, map[string]setting{
			"listen": {"127.0.0.1:9001", "file " + file}}},
		"env beats file": {map[string]string{"MANDATE_LISTEN": "127.0.0.1:9002"}, []string{"--config", file}, map[string]setting{
			"listen": {"127.0.0.1:9002", "env MANDATE_LISTEN"}, "log-level": {"debug", "file " + file}}},
		"flag beats env and file": {map[string]string{"MANDATE_LISTEN": "127.0.0.1:9002", "MANDATE_TOKEN_TTL": "3m"},
			[]string{"--config", file, "--listen", "127.0.0.1:9003"}, map[string]setting{
				"listen": {"127.0.0.1:9003", "flag"}, "token-ttl": {"3m0s", "env MANDATE_TOKEN_TTL"}, "log-level": {"debug", "file " + file}}},
		"flag --config beats MANDATE_CONFIG": {map[string]string{"MANDATE_CONFIG": writeFile(t, "other.yaml", "listen: 127.0.0.1:9009\n")},
			[]string{"--config", file}, map[string]setting{"listen": {"127.0.0.1:9001", "file " + file}}},
		"a password is masked": {map[string]string{"MANDATE_DATABASE": "postgres://u:hunter2@db.example/m"}, nil, map[string]setting{
			"database": {"postgres://u:xxxxx@db.example/m", "env MANDATE_DATABASE"}}},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := printConfig(t, tt.env, tt.args...)
			if err != nil {
				t.Fatalf("serve --print-config: %v", err)
			}
			for k, want := range tt.want {
				if got[k] != want {
					t.Errorf("%s = %+v, want %+v", k, got[k], want)
				}
			}
		})
	}
}

func TestServeSettingsErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nowhere.yaml")
	tests := map[string]struct {
		env  map[string]string
		args []string
		want []string
	}{
		"--config missing":       {nil, []string{"--config", missing}, []string{"config file " + missing, "no such file"}},
		"MANDATE_CONFIG missing": {map[string]string{"MANDATE_CONFIG": missing}, nil, []string{"config file " + missing}},
		"unknown key": {nil, []string{"--config", writeFile(t, "typo.yaml", "listen: 127.0.0.1:1\nlisten-addr: x\ntoken_ttl: 1m\n")},
			[]string{`line 2: unknown key "listen-addr"`, `line 3: unknown key "token_ttl" (did you mean token-ttl?)`}},
		"config in the file": {nil, []string{"--config", writeFile(t, "nested.yaml", "config: other.yaml\n")}, []string{`unknown key "config"`}},
		"not one value": {nil, []string{"--config", writeFile(t, "list.yaml", "listen: [a, b]\nissuer:\n")},
			[]string{"line 1: listen: want a single value", "issuer: want a single value"}},
		"set twice":       {nil, []string{"--config", writeFile(t, "twice.yaml", "listen: a:1\nlisten: b:2\n")}, []string{"listen is set twice"}},
		"not a mapping":   {nil, []string{"--config", writeFile(t, "list2.yaml", "- listen\n")}, []string{"want a mapping"}},
		"bad file value":  {nil, []string{"--config", writeFile(t, "ttl.yaml", "token-ttl: 300\n")}, []string{"token-ttl", "missing unit"}},
		"bad env value":   {map[string]string{"MANDATE_DPOP_NONCE": "maybe"}, nil, []string{"MANDATE_DPOP_NONCE"}},
		"invalid setting": {nil, []string{"--log-level", "loud"}, []string{"invalid settings", "--log-level"}},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := printConfig(t, tt.env, tt.args...)
			if err == nil {
				t.Fatalf("serve --print-config succeeded, want an error with %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

// samples are values of a flag type, told apart by the flag's own String; a setting of a new
// type needs an entry here, and then every precedence below covers it.
var samples = map[string][]string{
	"string":   {"value-one", "value-two", "value-three"},
	"duration": {"61s", "62s", "63s"},
	"bool":     {"true", "false"},
	"int":      {"7", "8", "9"},
	"float64":  {"1.5", "2.5", "3.5"},
	// IP addresses, so that a list setting that checks its values (--trusted-proxies) takes them.
	"stringSlice": {"192.0.2.1", "192.0.2.2,192.0.2.3", "198.51.100.0/24"},
}

// Every setting of mandate serve, present and future, obeys the one precedence: for each,
// the higher layer wins over each lower one, alone and all together.
func TestEveryServeSettingPrecedence(t *testing.T) {
	cleanEnv(t, nil)
	serve, _, err := NewRoot(io.Discard, io.Discard).Find([]string{"serve"})
	if err != nil {
		t.Fatal(err)
	}
	var settings []*pflag.Flag
	serve.Flags().VisitAll(func(f *pflag.Flag) {
		switch {
		case f.Name == "help" || f.Name == "print-config":
		case config.Env(f) == "":
			t.Errorf("--%s of mandate serve has no environment variable: define it in config.Bind", f.Name)
		case !strings.Contains(f.Usage, config.Env(f)):
			t.Errorf("the help of --%s does not name %s", f.Name, config.Env(f))
		case f.Name != config.ConfigFlag:
			settings = append(settings, f)
		}
	})
	if len(settings) < 16 {
		t.Fatalf("only %d settings found", len(settings))
	}
	// canonical is how --print-config shows v for the flag's type.
	canonical := func(f *pflag.Flag, v string) string {
		fresh, _, _ := NewRoot(io.Discard, io.Discard).Find([]string{"serve"})
		g := fresh.Flags().Lookup(f.Name)
		if err := g.Value.Set(v); err != nil {
			t.Fatalf("--%s %s: %v", f.Name, v, err)
		}
		return config.Text(g)
	}
	// deflt is how --print-config shows the flag's default.
	defText := func(f *pflag.Flag) string {
		fresh, _, _ := NewRoot(io.Discard, io.Discard).Find([]string{"serve"})
		return config.Text(fresh.Flags().Lookup(f.Name))
	}
	type layer int
	const (
		deflt layer = iota
		file
		env
		flag
	)
	names := []string{"default", "file", "env", "flag"}
	for _, f := range settings {
		vals := samples[f.Value.Type()]
		if len(vals) < 2 {
			t.Fatalf("--%s has type %s: add sample values for it", f.Name, f.Value.Type())
		}
		// run sets each layer of set to its value and checks that the setting shows want.
		run := func(t *testing.T, set map[layer]string, want layer) {
			t.Helper()
			envs := map[string]string{}
			var args []string
			if v, ok := set[file]; ok {
				args = append(args, "--config", writeFile(t, "m.yaml", fmt.Sprintf("%s: %q\n", f.Name, v)))
			}
			if v, ok := set[env]; ok {
				envs[config.Env(f)] = v
			}
			if v, ok := set[flag]; ok {
				args = append(args, "--"+f.Name+"="+v)
			}
			got, _ := printConfig(t, envs, args...)
			wantSrc := names[want]
			switch want {
			case file:
				wantSrc = "file " + args[1]
			case env:
				wantSrc = "env " + config.Env(f)
			}
			wantVal := defText(f)
			if want != deflt {
				wantVal = canonical(f, set[want])
			}
			if got[f.Name] != (setting{wantVal, wantSrc}) {
				t.Errorf("with %v: %s = %+v, want {%s %s}", set, f.Name, got[f.Name], wantVal, wantSrc)
			}
		}
		// Two values, each unlike the default where that matters, for a lower and a higher layer.
		var other []string
		for _, v := range vals {
			if canonical(f, v) != defText(f) {
				other = append(other, v)
			}
		}
		t.Run(f.Name, func(t *testing.T) {
			for lo := deflt; lo <= flag; lo++ {
				for hi := lo + 1; hi <= flag; hi++ {
					set := map[layer]string{hi: other[0]}
					if lo != deflt {
						set = map[layer]string{lo: other[0], hi: vals[0]}
						if canonical(f, vals[0]) == canonical(f, other[0]) {
							set[hi] = vals[1]
						}
					}
					run(t, set, hi)
				}
			}
			if len(vals) >= 3 {
				run(t, map[layer]string{file: vals[0], env: vals[1], flag: vals[2]}, flag)
				run(t, map[layer]string{file: vals[0], env: vals[1]}, env)
			}
		})
	}
}

// The real server runs with what the --config file says (it used to be ignored), under what the
// environment and the flags say.
func TestServeUsesConfigFile(t *testing.T) {
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "from-file")
	file := writeFile(t, "mandate.yaml", fmt.Sprintf("data-dir: %q\nlisten: 127.0.0.1:1\n", dataDir))
	cleanEnv(t, map[string]string{"MANDATE_LISTEN": "127.0.0.1:2"})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	root := NewRoot(io.Discard, io.Discard)
	root.SetArgs([]string{"serve", "--config", file, "--listen", "127.0.0.1:0"})
	go func() { done <- root.ExecuteContext(ctx) }()
	bootstrap := filepath.Join(dataDir, server.BootstrapFile)
	giveUp := time.After(time.Minute)
	for {
		if _, err := os.Stat(bootstrap); err == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("serve ended before writing %s: %v", bootstrap, err)
		case <-giveUp:
			t.Fatalf("serve has not written %s", bootstrap)
		case <-time.After(10 * time.Millisecond):
		}
	}
	cancel()
	if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, context.Canceled) {
		t.Fatalf("serve: %v", err)
	}
}

// The case: MANDATE_DATA_DIR=a mandate vault rotate-master-key --data-dir b rotates b's
// key and leaves a's alone (it rotated a's).
func TestVaultDataDirFlagBeatsEnv(t *testing.T) {
	a := servertest.Start(t, servertest.Options{})
	b := servertest.Start(t, servertest.Options{})
	keyA, keyB := filepath.Join(a.DataDir, server.MasterKeyFile), filepath.Join(b.DataDir, server.MasterKeyFile)
	beforeA, err := os.ReadFile(keyA)
	if err != nil {
		t.Fatal(err)
	}
	cleanEnv(t, map[string]string{"MANDATE_DATA_DIR": a.DataDir})
	out := ok(t, "vault", "rotate-master-key", "--data-dir", b.DataDir)
	hasAll(t, out, "Added master key")
	if keys, _ := masterkey.Read(keyB); len(keys) != 2 {
		t.Errorf("%s holds %d keys after the rotation, want 2", keyB, len(keys))
	}
	if afterA, _ := os.ReadFile(keyA); !bytes.Equal(beforeA, afterA) {
		t.Errorf("the rotation changed %s, named only by MANDATE_DATA_DIR", keyA)
	}
	// Without the flag, the environment names the data directory.
	ok(t, "vault", "rewrap")
	if keys, _ := masterkey.Read(keyA); len(keys) != 1 {
		t.Errorf("rewrap changed %s", keyA)
	}
	// A --config file names it when neither does.
	cleanEnv(t, nil)
	file := writeFile(t, "vault.yaml", fmt.Sprintf("data-dir: %q\nlisten: 0.0.0.0:1\n", a.DataDir))
	ok(t, "vault", "rotate-master-key", "--config", file)
	if keys, _ := masterkey.Read(keyA); len(keys) != 2 {
		t.Errorf("%s holds %d keys after the rotation named by the config file, want 2", keyA, len(keys))
	}
	fails(t, "", []string{"vault", "rewrap", "--config", filepath.Join(t.TempDir(), "none.yaml")}, "none.yaml")
}

// The client settings follow the same precedence: --server > MANDATE_SERVER > the saved login,
// --key-file > MANDATE_AGENT_KEY > the default.
func TestClientSettingsPrecedence(t *testing.T) {
	ts := newTestServer(t)
	dead := "http://127.0.0.1:1"
	bootstrap := filepath.Join(ts.DataDir, server.BootstrapFile)

	// MANDATE_SERVER stands for --server, on login too (where --server was required).
	t.Setenv(envServer, ts.URL)
	hasAll(t, ok(t, "login", "--token-file", bootstrap), "Logged in to "+ts.URL)
	hasAll(t, ok(t, "users", "list"), "admin")
	// The flag beats it.
	t.Setenv(envServer, dead)
	hasAll(t, ok(t, "users", "list", "--server", ts.URL), "admin")
	// Alone, it must match the login, and the error says where the other URL came from.
	fails(t, "", []string{"users", "list"}, "you are logged in to "+ts.URL+", not "+dead+" ("+envServer+")")
	t.Setenv(envServer, "")
	hasAll(t, ok(t, "users", "list"), "admin")
	fails(t, "", []string{"login", "--token-file", bootstrap}, "no server: pass --server URL", envServer)

	// --key-file beats MANDATE_AGENT_KEY, which beats the default.
	dir := t.TempDir()
	fromEnv, fromFlag := filepath.Join(dir, "env", "key.jwk"), filepath.Join(dir, "flag", "key.jwk")
	t.Setenv(envAgentKey, fromEnv)
	ok(t, "agent", "init", "--key-file", fromFlag)
	if _, err := os.Stat(fromFlag); err != nil {
		t.Errorf("agent init --key-file did not write the flag's file: %v", err)
	}
	if _, err := os.Stat(fromEnv); err == nil {
		t.Error("agent init wrote MANDATE_AGENT_KEY's file despite --key-file")
	}
	ok(t, "agent", "init")
	if _, err := os.Stat(fromEnv); err != nil {
		t.Errorf("agent init without --key-file did not use MANDATE_AGENT_KEY: %v", err)
	}
}

// mandate serve & then mandate login --token-file at once: login waits for the file, saying so
// (it failed with "no such file").
func TestLoginWaitsForBootstrapFile(t *testing.T) {
	cleanEnv(t, map[string]string{envConfigDir: t.TempDir()})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	dataDir := filepath.Join(t.TempDir(), "data")
	bootstrap := filepath.Join(dataDir, server.BootstrapFile)

	pr, pw := io.Pipe()
	var out bytes.Buffer
	login := NewRoot(&out, pw)
	login.SetArgs([]string{"login", "--server", "http://" + addr, "--token-file", bootstrap})
	loginDone := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { err := login.ExecuteContext(ctx); pw.Close(); loginDone <- err }()
	said := make([]byte, 256)
	n, _ := io.ReadAtLeast(pr, said, len("Waiting for"))
	if !strings.Contains(string(said[:n]), "Waiting for "+bootstrap+" to appear (is mandate serve starting?)") {
		t.Fatalf("login said %q before the server started", said[:n])
	}
	go io.Copy(io.Discard, pr)

	serve := NewRoot(io.Discard, io.Discard)
	serve.SetArgs([]string{"serve", "--listen", addr, "--data-dir", dataDir})
	serveDone := make(chan error, 1)
	go func() { serveDone <- serve.ExecuteContext(ctx) }()
	if err := <-loginDone; err != nil {
		t.Fatalf("login: %v\n%s", err, out.String())
	}
	hasAll(t, out.String(), "Logged in to http://"+addr+" as admin")
	cancel()
	<-serveDone
}

// What --print-config prints is a config file that gives the same settings back.
func TestPrintConfigRoundTrip(t *testing.T) {
	first, err := printConfig(t, map[string]string{"MANDATE_TOKEN_TTL": "2m", "MANDATE_DPOP_NONCE": "false"}, "--listen", "127.0.0.1:9999", "--issuer", "http://localhost:9999")
	if err != nil {
		t.Fatal(err)
	}
	var printed bytes.Buffer
	root := NewRoot(&printed, io.Discard)
	root.SetArgs([]string{"serve", "--print-config", "--listen", "127.0.0.1:9999", "--issuer", "http://localhost:9999", "--token-ttl", "2m", "--dpop-nonce=false"})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	again, err := printConfig(t, nil, "--config", writeFile(t, "printed.yaml", printed.String()))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range first {
		if again[k].value != v.value || !strings.HasPrefix(again[k].source, "file ") {
			t.Errorf("%s: printed %+v, read back %+v", k, v, again[k])
		}
	}
}
