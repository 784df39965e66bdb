package cli

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/server"
	"github.com/mandate-dev/mandate/internal/servertest"
	"github.com/mandate-dev/mandate/internal/syncbuf"
)

// runServe runs mandate serve with args and env through the real command tree until the test
// ends, and returns what it logs. It waits until url answers (over client), or fails if serve
// ends first.
func runServe(t *testing.T, env map[string]string, client *http.Client, url string, args ...string) *syncbuf.Buffer {
	t.Helper()
	cleanEnv(t, env)
	logs := &syncbuf.Buffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	root := NewRoot(io.Discard, logs)
	root.SetArgs(append([]string{"serve"}, args...))
	go func() { done <- root.ExecuteContext(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, context.Canceled) {
			t.Errorf("serve: %v", err)
		}
	})
	giveUp := time.After(time.Minute)
	for {
		res, err := client.Get(url)
		if err == nil {
			res.Body.Close()
			return logs
		}
		select {
		case err := <-done:
			done <- err
			t.Fatalf("serve ended before %s answered: %v\n%s", url, err, logs.String())
		case <-giveUp:
			t.Fatalf("%s does not answer: %v\n%s", url, err, logs.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// servedSerial is the serial number of the certificate a new connection to url gets, and the
// response.
func servedSerial(t *testing.T, client *http.Client, url string) (int64, *http.Response) {
	t.Helper()
	res, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if res.TLS == nil {
		t.Fatalf("GET %s: not over TLS", url)
	}
	return res.TLS.PeerCertificates[0].SerialNumber.Int64(), res
}

// waitSerial makes new connections to url until one gets the certificate with serial want.
func waitSerial(t *testing.T, client *http.Client, url string, want int64, logs *syncbuf.Buffer) {
	t.Helper()
	giveUp := time.Now().Add(time.Minute)
	for {
		got, _ := servedSerial(t, client, url)
		if got == want {
			return
		}
		if time.Now().After(giveUp) {
			t.Fatalf("%s still serves serial %d, want %d\n%s", url, got, want, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// mandate serve --tls-cert/--tls-key (flag or MANDATE_* env) serves HTTPS on --listen and
// --metrics-listen with TLS 1.2 at least and HTTP/2, under an https issuer with HSTS; a renewed
// certificate written over the files is served to new connections without a restart (by the
// periodic check, then by SIGHUP), and a pair that does not load is logged while the previous one
// is still served.
func TestServeTLS(t *testing.T) {
	ca := servertest.NewCA(t)
	dir := t.TempDir()
	certPath, keyPath := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	write := func(cert, key []byte) {
		servertest.WriteFileAtomic(t, certPath, cert)
		servertest.WriteFileAtomic(t, keyPath, key)
	}
	write(ca.Issue(t, 1001))
	addr, metricsAddr := servertest.FreeAddr(t), servertest.FreeAddr(t)
	base := "https://" + addr
	client := ca.Client()
	logs := runServe(t, map[string]string{"MANDATE_TLS_KEY": keyPath}, client, base+"/healthz",
		"--listen", addr, "--metrics-listen", metricsAddr, "--data-dir", filepath.Join(dir, "data"), "--tls-cert", certPath)

	serial, res := servedSerial(t, client, base+"/.well-known/oauth-authorization-server")
	if serial != 1001 || res.StatusCode != 200 {
		t.Fatalf("serial %d, status %d; want 1001, 200", serial, res.StatusCode)
	}
	if res.TLS.Version < tls.VersionTLS12 || res.ProtoMajor != 2 {
		t.Errorf("TLS version %#x, protocol %s: want TLS 1.2 or later and HTTP/2", res.TLS.Version, res.Proto)
	}
	if got := res.Header.Get("Strict-Transport-Security"); got != server.HSTS {
		t.Errorf("Strict-Transport-Security %q, want %q", got, server.HSTS)
	}
	meta, err := client.Get(base + "/.well-known/oauth-authorization-server")
	if err != nil {
		t.Fatal(err)
	}
	var md struct{ Issuer string }
	json.NewDecoder(meta.Body).Decode(&md)
	meta.Body.Close()
	if md.Issuer != base {
		t.Errorf("issuer %q, want %q (https by default with --tls-cert)", md.Issuer, base)
	}
	if serial, res := servedSerial(t, client, "https://"+metricsAddr+"/metrics"); serial != 1001 || res.StatusCode != 200 {
		t.Errorf("metrics listener: serial %d, status %d", serial, res.StatusCode)
	}
	// Plain HTTP is answered with a 400, and TLS before 1.2 is refused.
	if res, err := http.Get("http://" + addr + "/healthz"); err == nil {
		res.Body.Close()
		if res.StatusCode != http.StatusBadRequest {
			t.Errorf("plain http: %d, want 400", res.StatusCode)
		}
	}
	old := ca.Client()
	old.Transport.(*http.Transport).TLSClientConfig.MaxVersion = tls.VersionTLS11
	if res, err := old.Get(base + "/healthz"); err == nil {
		res.Body.Close()
		t.Error("a TLS 1.1 client was served")
	}

	// A renewal: new connections get it, on both listeners, with no signal and no restart.
	write(ca.Issue(t, 1002))
	waitSerial(t, client, base+"/healthz", 1002, logs)
	waitSerial(t, client, "https://"+metricsAddr+"/metrics", 1002, logs)

	// A certificate whose key is another's: logged, and the previous pair is still served.
	cert3, _ := ca.Issue(t, 1003)
	_, otherKey := ca.Issue(t, 1004)
	write(cert3, otherKey)
	for giveUp := time.Now().Add(time.Minute); !strings.Contains(logs.String(), "private key does not match public key"); {
		servedSerial(t, client, base+"/healthz") // a handshake makes it look
		if time.Now().After(giveUp) {
			t.Fatalf("the mismatched pair was not logged:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if serial, _ := servedSerial(t, client, base+"/healthz"); serial != 1002 {
		t.Errorf("after a bad pair, serial %d is served, want the previous 1002", serial)
	}

	// SIGHUP reads the files at once (the serve command keeps the signal from ending the test).
	write(ca.Issue(t, 1005))
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitSerial(t, client, base+"/healthz", 1005, logs)
	hasAll(t, logs.String(), "serving TLS", "reloaded TLS certificate", "serial=1005")
}

// Strict-Transport-Security is on every response when the issuer is https, whether mandate
// serves TLS itself or sits behind a proxy that does, and never under an http issuer.
func TestServeHSTS(t *testing.T) {
	ca := servertest.NewCA(t)
	dir := t.TempDir()
	certPath, keyPath := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	cert, key := ca.Issue(t, 7)
	servertest.WriteFileAtomic(t, certPath, cert)
	servertest.WriteFileAtomic(t, keyPath, key)
	tests := map[string]struct {
		tls    bool
		issuer string
		want   string
	}{
		"https issuer, TLS here":       {true, "", server.HSTS},
		"https issuer, TLS at proxy":   {false, "https://auth.example.com", server.HSTS},
		"http issuer on loopback":      {false, "", ""},
		"https issuer named, TLS here": {true, "https://localhost:1", server.HSTS},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			addr := servertest.FreeAddr(t)
			args := []string{"--listen", addr, "--data-dir", filepath.Join(t.TempDir(), "data")}
			scheme, client := "http", http.DefaultClient
			if tt.tls {
				args = append(args, "--tls-cert", certPath, "--tls-key", keyPath)
				scheme, client = "https", ca.Client()
			}
			if tt.issuer != "" {
				args = append(args, "--issuer", tt.issuer)
			}
			runServe(t, nil, client, scheme+"://"+addr+"/healthz", args...)
			for _, path := range []string{"/healthz", "/.well-known/oauth-authorization-server", "/no/such/path", "/v1/agents", "/metrics"} {
				res, err := client.Get(scheme + "://" + addr + path)
				if err != nil {
					t.Fatal(err)
				}
				res.Body.Close()
				if got := res.Header.Get("Strict-Transport-Security"); got != tt.want {
					t.Errorf("%s (%d): Strict-Transport-Security %q, want %q", path, res.StatusCode, got, tt.want)
				}
			}
		})
	}
}

// What serve refuses at start, before it creates anything, each with what to do.
func TestServeTLSRefused(t *testing.T) {
	ca := servertest.NewCA(t)
	dir := t.TempDir()
	file := func(name string, data []byte) string {
		path := filepath.Join(dir, name)
		servertest.WriteFileAtomic(t, path, data)
		return path
	}
	cert, key := ca.Issue(t, 1)
	_, otherKey := ca.Issue(t, 2)
	certPath, keyPath, otherKeyPath := file("tls.crt", cert), file("tls.key", key), file("other.key", otherKey)
	tests := map[string]struct {
		env  map[string]string
		args []string
		want []string
	}{
		"cert without key":     {nil, []string{"--tls-cert", certPath}, []string{"--tls-cert and --tls-key go together"}},
		"key without cert":     {map[string]string{"MANDATE_TLS_KEY": keyPath}, nil, []string{"--tls-cert and --tls-key go together"}},
		"key of another cert":  {nil, []string{"--tls-cert", certPath, "--tls-key", otherKeyPath}, []string{"private key does not match public key", certPath, otherKeyPath}},
		"key and cert swapped": {nil, []string{"--tls-cert", keyPath, "--tls-key", certPath}, []string{"--tls-cert " + keyPath, "PEM"}},
		"no such cert":         {nil, []string{"--tls-cert", filepath.Join(dir, "none.crt"), "--tls-key", keyPath}, []string{"--tls-cert", "no such file"}},
		"http issuer over TLS": {nil, []string{"--tls-cert", certPath, "--tls-key", keyPath, "--issuer", "http://127.0.0.1:8420"}, []string{"give an https issuer"}},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			cleanEnv(t, tt.env)
			data := filepath.Join(t.TempDir(), "data")
			args := append([]string{"serve", "--listen", servertest.FreeAddr(t), "--data-dir", data}, tt.args...)
			fails(t, "", args, tt.want...)
			if _, err := os.Stat(data); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the refused start created %s (%v)", data, err)
			}
		})
	}
}

// --tls-cert and --tls-key are settings like every other: documented by serve --help with their
// environment variables, and read from the --config file.
func TestServeTLSSettings(t *testing.T) {
	cleanEnv(t, nil)
	hasAll(t, ok(t, "serve", "--help"), "--tls-cert", "MANDATE_TLS_CERT", "--tls-key", "MANDATE_TLS_KEY", "re-read when they change")
	file := writeFile(t, "tls.yaml", "tls-cert: /etc/mandate/tls.crt\ntls-key: /etc/mandate/tls.key\nlisten: 127.0.0.1:8443\n")
	got, err := printConfig(t, nil, "--config", file)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]setting{"tls-cert": {"/etc/mandate/tls.crt", "file " + file}, "tls-key": {"/etc/mandate/tls.key", "file " + file}}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s = %+v, want %+v", k, got[k], w)
		}
	}
}
