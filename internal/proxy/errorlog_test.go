package proxy

import (
	"bufio"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/mandate-dev/mandate/internal/syncbuf"

	"github.com/mandate-dev/mandate/internal/vault"
)

// rawUpstream answers every connection on 127.0.0.1 with answer(), whatever was asked.
func rawUpstream(t *testing.T, answer func() string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				br := bufio.NewReader(conn)
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				_, _ = io.WriteString(conn, answer())
			}()
		}
	}()
	return "http://" + ln.Addr().String()
}

// rawEnv is a proxy whose upstream "echo" (X-Api-Key: oracleSecrets[0]) is a rawUpstream;
// set changes its answer. It returns a token for it.
func rawEnv(t *testing.T, opts ...envOpts) (e *env, tok string, set func(string)) {
	e = newEnv(t, opts...)
	secret := oracleSecrets[0]
	e.creds.secret.Store(&secret)
	var mu sync.Mutex
	var answer string
	base := rawUpstream(t, func() string { mu.Lock(); defer mu.Unlock(); return answer })
	e.upstreams.put(vault.Upstream{Name: "echo", BaseURL: base, Auth: vault.AuthHeader, Param: "X-Api-Key", AllowPrivate: true,
		Routes: []vault.Route{{Scope: "echo:read", Methods: []string{"GET"}, Paths: []string{"/**"}}}})
	return e, e.token(tokenOpts{scope: "echo:read", upstream: "echo"}), func(a string) { mu.Lock(); defer mu.Unlock(); answer = a }
}

// TestErrorLogsMaskSecret: an upstream answering garbage that holds the injected credential
// (not HTTP, a header line without a colon, a bad chunk or trailer line) makes the transport
// quote it in an error; no form of the credential reaches the log, at any level, or the
// audit trail.
func TestErrorLogsMaskSecret(t *testing.T) {
	var logs syncbuf.Buffer
	e, tok, setAnswer := rawEnv(t, envOpts{cfg: func(c *Config) {
		c.Log = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}})
	secret := oracleSecrets[0]
	for _, form := range echoedForms(secret) {
		for _, a := range []string{
			form + "\r\n\r\n",
			"HTTP/1.1 " + form + "\r\n\r\n",
			"HTTP/1.1 200 OK\r\n" + form + "\r\n\r\n",
			"HTTP/1.1 200 OK\r\nContent-Length: " + form + "\r\n\r\n",
			"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + form + "\r\n",
			"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n" + form + "\r\n\r\n",
		} {
			setAnswer(a)
			resp, err := e.client.Do(e.request("GET", "/proxy/echo/x", tok, nil))
			if err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}
	}
	got := logs.String()
	if !strings.Contains(got, "malformed") {
		t.Fatalf("the transport errors were not logged:\n%s", got)
	}
	if f, ok := containsForm([]byte(got), secret); ok {
		t.Errorf("the log holds the credential as %q:\n%s", f, got)
	}
	for _, ev := range e.audit.all() {
		if f, ok := containsForm([]byte(ev.Detail), secret); ok {
			t.Errorf("an audit detail holds the credential as %q: %s", f, ev.Detail)
		}
	}
}
