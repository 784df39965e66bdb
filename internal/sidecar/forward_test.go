package sidecar

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/syncbuf"

	"github.com/mandate-dev/mandate/client"
	"github.com/mandate-dev/mandate/dpop"
)

// seenRequest is what the fake server's proxy got.
type seenRequest struct {
	Method, RequestURI, Host string
	Header                   http.Header
	Body                     []byte
}

// resumedTask is a real client.Task over issuer (a fake server here: these tests look at what the
// sidecar sends) with a token valid for an hour, which the keeper will not renew during a test.
func resumedTask(t *testing.T, issuer string, exp time.Duration) (*client.Task, string) {
	t.Helper()
	key, err := client.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	jkt, _ := dpop.Thumbprint(key.Public())
	now := time.Now()
	tok := fakeJWT(map[string]any{"txn": "tsk_1", "grant": "gr_1", "iat": now.Add(-time.Hour).Unix(),
		"exp": now.Add(exp).Unix(), "cnf": map[string]string{"jkt": jkt}})
	task, err := client.ResumeTask(issuer, nil, tok, key)
	if err != nil {
		t.Fatal(err)
	}
	return task, tok
}

// startSidecarFor starts a sidecar for task on 127.0.0.1:0 until the test ends.
func startSidecarFor(t *testing.T, issuer string, task *client.Task, notices io.Writer, upstreams ...string) *Sidecar {
	t.Helper()
	sc, err := New(Config{Issuer: issuer, Task: task, Listen: "127.0.0.1:0", Upstreams: upstreams, Notices: notices})
	if err != nil {
		t.Fatal(err)
	}
	if err := sc.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sc.Stop(time.Second) })
	return sc
}

func TestSidecarForwards(t *testing.T) {
	var mu sync.Mutex
	var seen []seenRequest
	issuer := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		seen = append(seen, seenRequest{r.Method, r.RequestURI, r.Host, r.Header.Clone(), body})
		mu.Unlock()
		w.Header().Set("X-Upstream", "yes")
		w.Header().Set("Set-Cookie", "session=upstream-secret")
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusTeapot)
		fmt.Fprint(w, `{"ok":true}`)
	}))
	defer issuer.Close()
	task, tok := resumedTask(t, issuer.URL, time.Hour)
	rs := startSidecarFor(t, issuer.URL, task, nil, "ahrefs", "resend")

	req, _ := http.NewRequest(http.MethodPost, rs.URL()+"/ahrefs/v3/site-explorer/a%2Fb?target=example.com&x=%20y", strings.NewReader(`{"q":1}`))
	req.Header.Set("Authorization", "Bearer mandate-placeholder-abc")
	req.Header.Set("Proxy-Authorization", "Basic Zm9vOmJhcg==")
	req.Header.Set("Cookie", "sid=tool")
	req.Header.Set("DPoP", "tool-proof")
	req.Header.Set("Connection", "X-Hop")
	req.Header.Set("X-Hop", "1")
	req.Header.Set("X-Forwarded-For", "10.0.0.1")
	req.Header.Set("X-Custom", "kept")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusTeapot || string(body) != `{"ok":true}` || resp.Header.Get("X-Upstream") != "yes" ||
		resp.Header.Get("Content-Type") != "application/json" {
		t.Errorf("response = %d %v %s; want the server's 418, headers and body", resp.StatusCode, resp.Header, body)
	}
	if resp.Header.Get("Set-Cookie") != "" {
		t.Error("the sidecar handed an upstream cookie to the tool")
	}
	mu.Lock()
	if len(seen) != 1 {
		mu.Unlock()
		t.Fatalf("the server got %d requests, want 1", len(seen))
	}
	got := seen[0]
	if got.Method != http.MethodPost || got.RequestURI != "/proxy/ahrefs/v3/site-explorer/a%2Fb?target=example.com&x=%20y" {
		t.Errorf("forwarded %s %s; want POST /proxy/ahrefs/v3/site-explorer/a%%2Fb?target=example.com&x=%%20y", got.Method, got.RequestURI)
	}
	if u, _ := url.Parse(issuer.URL); got.Host != u.Host {
		t.Errorf("Host %q, want the server's %q", got.Host, u.Host)
	}
	if a := got.Header.Values("Authorization"); len(a) != 1 || a[0] != "DPoP "+tok {
		t.Errorf("Authorization %q, want only the task's", a)
	}
	if p := got.Header.Values("DPoP"); len(p) != 1 || proofClaims(t, p[0])["htu"] == nil {
		t.Errorf("DPoP %q, want only the task's proof", p)
	}
	for _, h := range []string{"Proxy-Authorization", "Cookie", "X-Hop", "X-Forwarded-For", "Forwarded"} {
		if v := got.Header.Get(h); v != "" {
			t.Errorf("the sidecar forwarded %s: %q", h, v)
		}
	}
	if got.Header.Get("X-Custom") != "kept" || got.Header.Get("Content-Type") != "application/json" || string(got.Body) != `{"q":1}` {
		t.Errorf("forwarded headers %v body %q; want the tool's own headers and body", got.Header, got.Body)
	}
	for _, v := range got.Header {
		for _, s := range v {
			if strings.Contains(s, "placeholder") || strings.Contains(s, "tool") {
				t.Errorf("a credential of the tool went through: %q", s)
			}
		}
	}

	mu.Unlock()

	// An upstream's bare base URL and a trailing slash are kept apart.
	for path, want := range map[string]string{"/resend": "/proxy/resend", "/resend/": "/proxy/resend/", "/resend/emails": "/proxy/resend/emails"} {
		resp, err := http.Get(rs.URL() + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		mu.Lock()
		if last := seen[len(seen)-1]; last.RequestURI != want {
			t.Errorf("%s forwarded as %s, want %s", path, last.RequestURI, want)
		}
		mu.Unlock()
	}
}

func TestSidecarRefuses(t *testing.T) {
	var hits atomic.Int32
	issuer := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
	defer issuer.Close()
	task, _ := resumedTask(t, issuer.URL, time.Hour)
	rs := startSidecarFor(t, issuer.URL, task, nil, "ahrefs")
	for _, tc := range []struct {
		name, path, host string
		absolute         bool
		want             int
	}{
		{name: "another upstream", path: "/resend/emails", want: http.StatusNotFound},
		{name: "no upstream", path: "/", want: http.StatusNotFound},
		{name: "not an upstream name", path: "/Ahrefs/v3", want: http.StatusNotFound},
		{name: "escaped name", path: "/ahr%65fs/v3", want: http.StatusNotFound},
		{name: "rebound DNS name", path: "/ahrefs/v3/x", host: "evil.example:80", want: http.StatusMisdirectedRequest},
		{name: "private address as host", path: "/ahrefs/v3/x", host: "10.1.2.3", want: http.StatusMisdirectedRequest},
		{name: "absolute-form", path: "/ahrefs/v3/x", absolute: true, want: http.StatusBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := rawRequest(t, rs.URL(), tc.path, tc.host, tc.absolute)
			if status != tc.want {
				t.Errorf("status %d, want %d (%s)", status, tc.want, body)
			}
			var e struct {
				Error string `json:"error"`
			}
			if json.Unmarshal([]byte(body), &e) != nil || e.Error == "" {
				t.Errorf("body %q is not an OAuth-style error", body)
			}
		})
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("refused requests reached the server %d times", n)
	}
	// A web page's request (cross-site) never spends the task's authority.
	for name, h := range map[string][2]string{
		"Origin":                    {"Origin", "https://evil.example"},
		"Sec-Fetch-Site cross-site": {"Sec-Fetch-Site", "cross-site"},
		"Sec-Fetch-Site same-site":  {"Sec-Fetch-Site", "same-site"},
	} {
		req, _ := http.NewRequest("POST", rs.URL()+"/ahrefs/v3/x", strings.NewReader("{}"))
		req.Header.Set(h[0], h[1])
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s: status %d, want 403", name, resp.StatusCode)
		}
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("a web page's request reached the server %d times", n)
	}
	// localhost and [::1]-style names are loopback.
	if status, body := rawRequest(t, rs.URL(), "/ahrefs/v3/x", "localhost", false); status != http.StatusOK {
		t.Errorf("Host localhost: %d %s", status, body)
	}
}

// rawRequest sends GET path with the Host header host (default: the sidecar's), in
// absolute-form when absolute, and returns the status and body.
func rawRequest(t *testing.T, base, path, host string, absolute bool) (int, string) {
	t.Helper()
	u, _ := url.Parse(base)
	if host == "" {
		host = u.Host
	}
	target := path
	if absolute {
		target = "http://" + host + path
	}
	req := &http.Request{Method: http.MethodGet, URL: &url.URL{Scheme: "http", Host: u.Host, Opaque: target}, Host: host, Header: http.Header{}}
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestCheckListen(t *testing.T) {
	for _, ok := range []string{"127.0.0.1:0", "127.0.0.1:8421", "127.1.2.3:80", "[::1]:8421", "localhost:8421", "LOCALHOST:1"} {
		if err := CheckListen(ok); err != nil {
			t.Errorf("CheckListen(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{":8421", "0.0.0.0:8421", "[::]:8421", "192.168.1.10:8421", "example.com:80", "127.0.0.1", "localhost.evil.example:1", ""} {
		if err := CheckListen(bad); err == nil {
			t.Errorf("CheckListen(%q) accepted a non-loopback address", bad)
		}
	}
}

// TestSidecarNonceAndExpired: a small body is sent again when the server asks for a DPoP nonce,
// every request carries a fresh proof for the proxy URL, and a task whose token has expired
// answers 401 saying so, without offering the expired token to the server.
func TestSidecarNonceAndExpired(t *testing.T) {
	key, err := client.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	jkt, _ := dpop.Thumbprint(key.Public())
	var issuerURL string
	var mu sync.Mutex
	var proofs []string
	var bodies []string
	var exchanges int
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/.well-known/oauth-authorization-server" {
			json.NewEncoder(w).Encode(map[string]string{"issuer": issuerURL, "token_endpoint": issuerURL + "/token"})
			return
		}
		if r.URL.Path == "/token" {
			mu.Lock()
			exchanges++
			mu.Unlock()
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprint(w, `{"error":"invalid_grant","error_description":"the task has ended"}`)
			return
		}
		body, _ := io.ReadAll(r.Body)
		proof := r.Header.Get("DPoP")
		mu.Lock()
		proofs = append(proofs, proof)
		bodies = append(bodies, string(body))
		mu.Unlock()
		claims := proofClaims(t, proof)
		if claims["htu"] != issuerURL+"/proxy/resend/emails" || claims["htm"] != "POST" || claims["ath"] == nil {
			t.Errorf("proof claims %v", claims)
		}
		if claims["nonce"] != "n-1" {
			w.Header().Set("DPoP-Nonce", "n-1")
			w.Header().Set("WWW-Authenticate", `DPoP error="use_dpop_nonce"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusCreated)
		fmt.Fprint(w, `{"id":"em_1"}`)
	}))
	defer srv.Close()
	issuerURL = srv.URL

	now := time.Now()
	task, err := client.ResumeTask(srv.URL, nil, fakeJWT(map[string]any{"txn": "tsk_1", "grant": "gr_1", "iat": now.Unix(),
		"exp": now.Add(time.Hour).Unix(), "cnf": map[string]string{"jkt": jkt}}), key)
	if err != nil {
		t.Fatal(err)
	}
	rs := startSidecarFor(t, srv.URL, task, nil)
	resp, err := http.Post(rs.URL()+"/resend/emails", "application/json", strings.NewReader(`{"to":["a@example.com"]}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated || string(b) != `{"id":"em_1"}` {
		t.Fatalf("POST through the sidecar: %d %s", resp.StatusCode, b)
	}
	mu.Lock()
	if len(proofs) != 2 || proofs[0] == proofs[1] || bodies[1] != `{"to":["a@example.com"]}` {
		t.Errorf("the server saw proofs %d (distinct: %v) and bodies %q; want the request sent again, whole, with a new proof", len(proofs), len(proofs) == 2 && proofs[0] != proofs[1], bodies)
	}
	mu.Unlock()

	// A task whose token has expired: the tool gets a 401 it can read, the server nothing.
	old := fakeJWT(map[string]any{"txn": "tsk_2", "grant": "gr_1", "iat": now.Add(-time.Hour).Unix(),
		"exp": now.Add(-time.Second).Unix(), "cnf": map[string]string{"jkt": jkt}})
	ended, err := client.ResumeTask(srv.URL, nil, old, key)
	if err != nil {
		t.Fatal(err)
	}
	var notices syncbuf.Buffer
	rs2 := startSidecarFor(t, srv.URL, ended, &notices)
	resp, err = http.Get(rs2.URL() + "/resend/emails")
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(string(b), "expired at") || !strings.Contains(string(b), "tsk_2") {
		t.Errorf("expired token: %d %s; want 401 saying the token of tsk_2 expired", resp.StatusCode, b)
	}
	if !strings.Contains(notices.String(), "expired at") {
		t.Errorf("notices %q: want the loss said on the notices writer", notices.String())
	}
	mu.Lock()
	if exchanges != 0 {
		t.Errorf("the expired token was offered to the token endpoint %d times", exchanges)
	}
	mu.Unlock()
}

func fakeJWT(claims map[string]any) string {
	b, _ := json.Marshal(claims)
	return base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"EdDSA","typ":"at+jwt"}`)) + "." +
		base64.RawURLEncoding.EncodeToString(b) + ".c2ln"
}

func proofClaims(t *testing.T, proof string) map[string]any {
	parts := strings.Split(proof, ".")
	if len(parts) != 3 {
		t.Errorf("DPoP proof %q is not a JWS", proof)
		return nil
	}
	b, _ := base64.RawURLEncoding.DecodeString(parts[1])
	var c map[string]any
	_ = json.Unmarshal(b, &c)
	return c
}

// TestSidecarStreams checks that neither body is held whole: the tool reads the first chunk of
// the answer before the server has written the rest, and a large upload arrives intact.
func TestSidecarStreams(t *testing.T) {
	release := make(chan struct{})
	var got atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut {
			n, _ := io.Copy(io.Discard, r.Body)
			got.Store(n)
			w.WriteHeader(http.StatusNoContent)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		<-release
		fmt.Fprint(w, "data: second\n\n")
	}))
	defer srv.Close()
	task, _ := resumedTask(t, srv.URL, time.Hour)
	rs := startSidecarFor(t, srv.URL, task, nil)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, rs.URL()+"/events/stream", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len("data: first\n\n"))
	if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != "data: first\n\n" {
		t.Fatalf("first chunk %q, %v", buf, err)
	}
	close(release)
	rest, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(rest) != "data: second\n\n" {
		t.Errorf("rest %q", rest)
	}

	// 32 MiB of unknown length (chunked) goes up.
	const size = 32 << 20
	pr, pw := io.Pipe()
	go func() {
		chunk := make([]byte, 1<<20)
		rand.Read(chunk)
		for i := 0; i < size/len(chunk); i++ {
			if _, err := pw.Write(chunk); err != nil {
				return
			}
		}
		pw.Close()
	}()
	req, _ = http.NewRequestWithContext(ctx, http.MethodPut, rs.URL()+"/files/upload", pr)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent || got.Load() != size {
		t.Errorf("upload: %d, server got %d bytes, want %d", resp.StatusCode, got.Load(), size)
	}
}
