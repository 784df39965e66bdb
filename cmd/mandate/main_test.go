package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestServeZeroConfig is the README's first command: `mandate serve` with no flags starts on
// SQLite in ./mandate-data, prints where the bootstrap token is, serves, and shuts down cleanly
// on SIGTERM. It runs the real binary in a fresh directory.
func TestServeZeroConfig(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	// The default address is fixed (127.0.0.1:8420); skip rather than fail if something holds it.
	if ln, err := net.Listen("tcp", "127.0.0.1:8420"); err != nil {
		t.Skipf("127.0.0.1:8420 is in use, cannot test the zero-config default: %v", err)
	} else {
		ln.Close()
	}
	bin := filepath.Join(t.TempDir(), "mandate")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "serve")
	cmd.Dir = dir
	cmd.Env = cleanEnv()
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var sawBootstrap, sawListening bool
	var output []string
	deadline := time.After(30 * time.Second)
	for !sawListening {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("mandate serve exited early:\n%s", strings.Join(output, "\n"))
			}
			output = append(output, l)
			sawBootstrap = sawBootstrap || strings.Contains(l, "bootstrap token is in mandate-data/bootstrap-token")
			sawListening = strings.Contains(l, "mandate listening")
		case <-deadline:
			t.Fatalf("no 'mandate listening' line in 30s:\n%s", strings.Join(output, "\n"))
		}
	}
	if !sawBootstrap {
		t.Errorf("the first start did not say where the bootstrap token is:\n%s", strings.Join(output, "\n"))
	}
	fi, err := os.Stat(filepath.Join(dir, "mandate-data", "bootstrap-token"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("bootstrap token file: %v, mode %v; want mode 0600", err, fi.Mode().Perm())
	}
	for _, f := range []string{"master.key", "mandate.db"} {
		if fi, err := os.Stat(filepath.Join(dir, "mandate-data", f)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, want mode 0600", f, err)
		}
	}
	resp, err := http.Get("http://127.0.0.1:8420/readyz")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("/readyz: %s", resp.Status)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	go func() {
		for range lines { // keep draining so the child never blocks on stderr
		}
	}()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("mandate serve after SIGTERM: %v (want a clean exit)", err)
	}
}

// cleanEnv drops MANDATE_* so the developer's settings do not leak into the zero-config run.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MANDATE_") {
			env = append(env, kv)
		}
	}
	return env
}
