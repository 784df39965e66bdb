package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/mandate-dev/mandate/internal/server"
)

// typeAtTerminal runs the command with a real terminal (a pty) as its stdin, types line once the
// command has switched echo off, and returns what the terminal showed (its echo) and what the
// command printed.
func typeAtTerminal(t *testing.T, line string, args ...string) (echoed, out string) {
	t.Helper()
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Skipf("no pty on this machine: %v", err)
	}
	defer ptmx.Close()
	defer tty.Close()
	var buf bytes.Buffer
	root := NewRoot(&buf, &buf)
	root.SetIn(tty)
	root.SetArgs(args)
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(context.Background()) }()
	fd := int(tty.Fd())
	giveUp := time.After(30 * time.Second)
	for {
		tio, err := unix.IoctlGetTermios(fd, unix.TCGETS)
		if err != nil {
			t.Fatal(err)
		}
		if tio.Lflag&unix.ECHO == 0 {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("mandate %s ended without reading the terminal: %v\n%s", strings.Join(args, " "), err, buf.String())
		case <-giveUp:
			t.Fatalf("mandate %s reads the terminal with echo on", strings.Join(args, " "))
		case <-time.After(5 * time.Millisecond):
		}
	}
	if _, err := ptmx.Write([]byte(line + "\n")); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("mandate %s: %v\n%s", strings.Join(args, " "), err, buf.String())
	}
	// Whatever the terminal showed (its echo) is ahead of a marker written to it now.
	const marker = "--end of test--"
	if _, err := tty.Write([]byte(marker + "\n")); err != nil {
		t.Fatal(err)
	}
	var shown bytes.Buffer
	b := make([]byte, 4096)
	for !strings.Contains(shown.String(), marker) {
		n, err := ptmx.Read(b)
		if err != nil {
			t.Fatalf("reading the terminal: %v", err)
		}
		shown.Write(b[:n])
	}
	return shown.String(), buf.String()
}

// A token or secret typed at a terminal is not echoed (it used to show as typed); piped stdin
// keeps working (TestEndToEnd, TestUpstream*).
func TestSecretsTypedAtTerminalNotEchoed(t *testing.T) {
	ts := newTestServer(t)
	raw, err := os.ReadFile(filepath.Join(ts.DataDir, server.BootstrapFile))
	if err != nil {
		t.Fatal(err)
	}
	tok := strings.TrimSpace(string(raw))
	echoed, out := typeAtTerminal(t, tok, "login", "--server", ts.URL)
	hasAll(t, out, "API token (not shown): ", "Logged in to "+ts.URL)
	if strings.Contains(echoed, tok[:12]) {
		t.Errorf("the terminal showed the token: %q", echoed)
	}
	const secret = "sk-typed-at-a-terminal-0123456789"
	echoed, out = typeAtTerminal(t, secret, "upstream", "add", "typed", "--base-url", "http://127.0.0.1:9", "--allow-private", "--auth", "bearer")
	hasAll(t, out, "credential (not shown): ", "Stored its credential")
	if strings.Contains(echoed, secret[:12]) || strings.Contains(out, secret[:12]) {
		t.Errorf("the terminal showed the secret: %q / %q", echoed, out)
	}
}
