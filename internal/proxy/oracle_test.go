package proxy

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/mandate-dev/mandate/internal/vault"
)

// oracleSecrets are credentials whose forms the release-timing property is checked against.
var oracleSecrets = []string{"sk_live_Q7x9KpZ2mN4bV8cR", echoSecret}

// pausedReader returns src in reads of the given sizes (cycled; each 1-64 bytes): the pauses
// of an upstream that flushes after each write.
type pausedReader struct {
	src   []byte
	sizes []byte
	i     int
}

func (r *pausedReader) Read(p []byte) (int, error) {
	if len(r.src) == 0 {
		return 0, io.EOF
	}
	n := len(r.src)
	if len(r.sizes) > 0 {
		n = min(n, int(r.sizes[r.i%len(r.sizes)])%64+1)
		r.i++
	}
	n = copy(p, r.src[:n])
	r.src = r.src[n:]
	return n, nil
}

// releases is what the agent observes of a streamed body besides its bytes: the length of
// each piece the masking reader releases, in order (ReverseProxy flushes each as a chunk).
func releases(t testing.TB, m *masker, text, sizes []byte) []int {
	r := newMaskingReader(io.NopCloser(&pausedReader{src: text, sizes: sizes}), m, nil)
	defer r.Close()
	var out []int
	p := make([]byte, 32<<10)
	for {
		n, err := r.Read(p)
		if n > 0 {
			out = append(out, n)
		}
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// unlike is text with every byte that occurs in some form of a secret replaced by one that
// occurs in none: the same length, sharing no prefix with any form.
func unlike(m *masker, text []byte) []byte {
	var in [256]bool
	for _, f := range m.forms {
		for _, c := range f {
			in[c] = true
		}
	}
	var other byte
	for c := range 256 {
		if !in[c] {
			other = byte(c)
			break
		}
	}
	out := bytes.Clone(text)
	for i, c := range out {
		if in[c] {
			out[i] = other
		}
	}
	return out
}

// FuzzMaskRelease states that masking is no oracle: for any text the agent makes an upstream
// echo and any way the upstream cuts it into reads, the pieces released (their number and
// lengths) are the same as for a text of the same length that shares no byte with any form of
// the credential. The old masker held back only a tail that could start a form, so "sk_l"
// (a prefix) was held and "sk_x" released at once.
func FuzzMaskRelease(f *testing.F) {
	m := newMasker(oracleSecrets)
	for _, s := range oracleSecrets {
		for _, form := range echoForms(s) {
			for _, cut := range []int{1, 4, len(form) / 2, len(form) - 1} {
				f.Add([]byte("data: "+form[:cut]), []byte{5, byte(cut - 1)})
				f.Add([]byte("data: "+form[:cut]+"|END"), []byte{5, byte(cut - 1), 3})
			}
		}
	}
	f.Add([]byte(strings.Repeat("x", 200)+oracleSecrets[0]), []byte{0, 63, 7})
	f.Fuzz(func(t *testing.T, text, sizes []byte) {
		a, b := releases(t, m, text, sizes), releases(t, m, unlike(m, text), sizes)
		if !slices.Equal(a, b) {
			t.Fatalf("text %q in reads %v released %v; the same length of unrelated bytes released %v", text, sizes, a, b)
		}
	})
}

// TestMaskReleaseTable: the red team's guesses, each a prefix of a form of the credential or
// not, read in the pieces an SSE echo with a pause gives.
func TestMaskReleaseTable(t *testing.T) {
	m := newMasker(oracleSecrets)
	for _, s := range oracleSecrets {
		for _, form := range echoForms(s) {
			for cut := 1; cut < len(form); cut++ {
				guess := []byte("data: " + form[:cut] + "|END")
				sizes := []byte{5, byte(cut - 1), 3}
				if a, b := releases(t, m, guess, sizes), releases(t, m, unlike(m, guess), sizes); !slices.Equal(a, b) {
					t.Fatalf("%q released %v, unrelated bytes %v", guess, a, b)
				}
			}
		}
	}
}

// signalConn reports each read of the proxy's upstream connection that returned bytes.
type signalConn struct {
	net.Conn
	read chan<- struct{}
}

func (c *signalConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		select {
		case c.read <- struct{}{}:
		default:
		}
	}
	return n, err
}

type signalDialer struct{ read chan struct{} }

func (d signalDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return &signalConn{Conn: c, read: d.read}, nil
}

// TestPrefixOracleThroughProxy is the red team's attack through the real proxy: an SSE
// upstream on 127.0.0.1 echoes ?q= after "data: ", flushes, pauses until the proxy has read
// it, then sends "|END". The agent reads the chunks off the wire: their sizes are the same for
// a correct prefix of the credential and for a wrong one.
func TestPrefixOracleThroughProxy(t *testing.T) {
	read := make(chan struct{}, 1)
	e := newEnv(t, envOpts{cfg: func(c *Config) { c.Audit = &discardAudit{}; c.Dialer = signalDialer{read} }})
	secret := oracleSecrets[0]
	e.creds.secret.Store(&secret)
	e.upstreams.put(vault.Upstream{Name: "echo", BaseURL: e.up.URL, Auth: vault.AuthHeader, Param: "X-Api-Key", AllowPrivate: true,
		Routes: []vault.Route{{Scope: "echo:read", Methods: []string{"GET"}, Paths: []string{"/**"}}}})
	e.setUpstreamHandler(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: "+r.URL.Query().Get("q"))
		w.(http.Flusher).Flush()
		<-read // the proxy has the first part; the upstream pauses until then
		_, _ = io.WriteString(w, "|END\n\n")
	})
	tok := e.token(tokenOpts{scope: "echo:read", upstream: "echo"})
	chunks := func(q string) []int {
		for len(read) > 0 {
			<-read
		}
		req := e.request("GET", "/proxy/echo/stream?q="+q, tok, nil)
		conn, err := net.Dial("tcp", e.srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if err := req.Write(conn); err != nil {
			t.Fatal(err)
		}
		sizes, body := readChunks(t, bufio.NewReader(conn))
		if want := "data: " + q + "|END\n\n"; body != want {
			t.Errorf("the agent read %q, want %q", body, want)
		}
		return sizes
	}
	right, wrong := chunks(secret[:4]), chunks("sk_x")
	if !slices.Equal(right, wrong) {
		t.Errorf("a correct prefix arrived in chunks %v, a wrong one in %v", right, wrong)
	}
	if got := chunks(secret[:4]); !slices.Equal(got, right) {
		t.Errorf("the same guess arrived in chunks %v, then %v", right, got)
	}
}

// readChunks reads a chunked HTTP/1.1 response as sent: the size of each chunk, and the body.
func readChunks(t *testing.T, br *bufio.Reader) ([]int, string) {
	t.Helper()
	tp := textproto.NewReader(br)
	status, err := tp.ReadLine()
	if err != nil || !strings.Contains(status, " 200 ") {
		t.Fatalf("status %q: %v", status, err)
	}
	h, err := tp.ReadMIMEHeader()
	if err != nil || h.Get("Transfer-Encoding") != "chunked" {
		t.Fatalf("headers %v: %v", h, err)
	}
	var sizes []int
	var body strings.Builder
	for {
		line, err := tp.ReadLine()
		if err != nil {
			t.Fatal(err)
		}
		n, err := strconv.ParseInt(line, 16, 32)
		if err != nil {
			t.Fatalf("chunk size %q", line)
		}
		if n == 0 {
			return sizes, body.String()
		}
		sizes = append(sizes, int(n))
		b := make([]byte, n+2)
		if _, err := io.ReadFull(br, b); err != nil {
			t.Fatal(err)
		}
		body.Write(b[:n])
	}
}
