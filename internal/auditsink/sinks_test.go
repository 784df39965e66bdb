package auditsink_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/auditsink"
	"github.com/mandate-dev/mandate/internal/servertest"
	"github.com/mandate-dev/mandate/internal/sqlstore"
)

// export runs an exporter of sink on store until it has delivered n events and every checkpoint
// of cps (its saved cursor says so), calling each() while it waits.
func export(t *testing.T, store *sqlstore.Store, sink auditsink.Sink, cps *fakeCheckpoints, n int64, each func()) {
	t.Helper()
	e, err := auditsink.New(auditsink.Config{Store: store, Checkpoints: cps, Sinks: []auditsink.Sink{sink},
		Batch: 7, Poll: 5 * time.Millisecond, MinBackoff: time.Millisecond, MaxBackoff: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	stopped := make(chan struct{})
	go func() { e.Run(ctx); close(stopped) }()
	finished := caughtUp(t, store, sink.Name(), n, cps.all)
	for !finished() {
		if each != nil {
			each()
		}
		time.Sleep(2 * time.Millisecond) // polls only
	}
	cancel()
	<-stopped
	if err := e.Drain(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
}

// everyThird are checkpoints of every third event up to n.
func everyThird(n int64) *fakeCheckpoints {
	f := &fakeCheckpoints{late: map[int64]int{}}
	for seq := int64(3); seq <= n; seq += 3 {
		f.all = append(f.all, auditsink.Checkpoint{Seq: seq, Hash: fmt.Sprintf("%064d", seq), JWS: "eyJ.x.y", Time: time.Unix(1e9+seq, 0).UTC()})
	}
	return f
}

// store of records received, safe for concurrent use.
type received struct {
	mu sync.Mutex
	rs []auditsink.Record
}

func (r *received) add(rs ...auditsink.Record) {
	r.mu.Lock()
	r.rs = append(r.rs, rs...)
	r.mu.Unlock()
}

func (r *received) all() []auditsink.Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]auditsink.Record(nil), r.rs...)
}

func TestFileSink(t *testing.T) {
	const n = 40
	store := openStore(t, n)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	// A torn line left by a crash mid-write: the sink starts a new line after it.
	if err := os.WriteFile(path, []byte(`{"type":"event","seq":1,"id":"ev`), 0o600); err != nil {
		t.Fatal(err)
	}
	spec, err := auditsink.ParseSpec("file:" + path)
	if err != nil {
		t.Fatal(err)
	}
	sink, err := auditsink.Open(spec, auditsink.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cps := everyThird(n)
	read := func() []auditsink.Record {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		var rs []auditsink.Record
		sc := bufio.NewScanner(f)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var r auditsink.Record
			if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
				continue // the torn line
			}
			rs = append(rs, r)
		}
		return rs
	}
	export(t, store, sink, cps, n, nil)
	checkStream(t, read(), n, cps.all)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
	// Every event line is the event's own JSON schema plus "type", and its hash verifies.
	for _, r := range read() {
		if r.Event != nil && r.Event.ComputeHash() != r.Event.Hash {
			t.Errorf("seq %d: the exported event does not match its hash", r.Event.Seq)
		}
	}
}

// syslogReceiver accepts RFC 6587 octet-counted RFC 5424 messages on ln and keeps the records in
// their MSG, checking each header.
func syslogReceiver(t *testing.T, ln net.Listener, got *received) {
	header := regexp.MustCompile(`^<(\d{1,3})>1 (\S+) (\S+) mandate (\S+) (event|checkpoint) - \x{FEFF}`)
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			br := bufio.NewReader(c)
			for {
				lenText, err := br.ReadString(' ')
				if err != nil {
					return
				}
				n, err := strconv.Atoi(strings.TrimSuffix(lenText, " "))
				if err != nil || n <= 0 {
					t.Errorf("bad frame length %q", lenText)
					return
				}
				msg := make([]byte, n)
				if _, err := io.ReadFull(br, msg); err != nil {
					return
				}
				m := header.FindSubmatchIndex(msg)
				if m == nil {
					t.Errorf("not an RFC 5424 message of mandate: %q", msg)
					return
				}
				pri, _ := strconv.Atoi(string(msg[m[2]:m[3]]))
				if pri/8 != 13 || pri%8 < 5 || pri%8 > 6 {
					t.Errorf("PRI %d: want facility 13 (log audit), severity 5 or 6", pri)
				}
				if _, err := time.Parse(time.RFC3339Nano, string(msg[m[4]:m[5]])); err != nil {
					t.Errorf("TIMESTAMP: %v", err)
				}
				var r auditsink.Record
				if err := json.Unmarshal(msg[m[1]:], &r); err != nil {
					t.Errorf("MSG is not a record: %v", err)
					return
				}
				if r.Type() != string(msg[m[10]:m[11]]) {
					t.Errorf("MSGID %s for a %s record", msg[m[10]:m[11]], r.Type())
				}
				got.add(r)
			}
		}()
	}
}

// A syslog receiver that is down for a while (connections refused), then up: every event
// arrives, in order, with its checkpoints.
func TestSyslogSink(t *testing.T) {
	for _, secure := range []bool{false, true} {
		name := "tcp"
		if secure {
			name = "tls"
		}
		t.Run(name, func(t *testing.T) {
			const n = 60
			store := openStore(t, n)
			addr := servertest.FreeAddr(t) // the receiver is down
			up := false
			var opts auditsink.Options
			var serverTLS *tls.Config
			scheme := "syslog+tcp://"
			if secure {
				scheme = "syslog+tls://"
				serverTLS, opts.CAFile = testCA(t)
			}
			spec, err := auditsink.ParseSpec(scheme + addr)
			if err != nil {
				t.Fatal(err)
			}
			sink, err := auditsink.Open(spec, opts)
			if err != nil {
				t.Fatal(err)
			}
			var got received
			cps := everyThird(n)
			var refused atomic.Int32
			counting := &countingSink{Sink: sink, onErr: func(error) { refused.Add(1) }}
			export(t, store, counting, cps, n, func() {
				if refused.Load() >= 3 && !up {
					// Down for three attempts; now up, on the same address.
					up = true
					l, err := net.Listen("tcp", addr)
					if err != nil {
						t.Fatalf("listen again on %s: %v", addr, err)
					}
					if secure {
						l = tls.NewListener(l, serverTLS)
					}
					t.Cleanup(func() { l.Close() })
					go syslogReceiver(t, l, &got)
				}
			})
			// Written is not yet read: wait for the receiver to read the last record.
			eventually(t, func() bool { return done(got.all(), n, len(cps.all)) })
			checkStream(t, got.all(), n, cps.all)
		})
	}
}

// countingSink calls onErr on each failed delivery, from the exporter's goroutine.
type countingSink struct {
	auditsink.Sink
	mu    sync.Mutex
	onErr func(error)
}

func (c *countingSink) Deliver(ctx context.Context, b []auditsink.Record) error {
	err := c.Sink.Deliver(ctx, b)
	if err != nil {
		c.mu.Lock()
		c.onErr(err)
		c.mu.Unlock()
	}
	return err
}

// testCA makes a CA and a server certificate for 127.0.0.1 signed by it; it returns the
// server's TLS settings and the CA's PEM file.
func testCA(t *testing.T) (*tls.Config, string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{leafDER}, PrivateKey: key}}}, caFile
}

// A syslog+tls sink refuses a receiver whose certificate the CA file does not vouch for.
func TestSyslogTLSRefusesUnknownCA(t *testing.T) {
	serverTLS, _ := testCA(t)
	_, otherCA := testCA(t)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", serverTLS)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	spec, _ := auditsink.ParseSpec("syslog+tls://" + ln.Addr().String())
	sink, err := auditsink.Open(spec, auditsink.Options{CAFile: otherCA})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	err = sink.Deliver(t.Context(), []auditsink.Record{{Checkpoint: &auditsink.Checkpoint{Seq: 1}}})
	var unknown x509.UnknownAuthorityError
	if !errors.As(err, &unknown) {
		t.Errorf("Deliver to a receiver of another CA: %v, want an unknown authority error", err)
	}
}

// A webhook that answers 503 for a while, then a 400 (a receiver's mistake, retried too), then
// 200: every event arrives at least once, in order, each request signed.
func TestWebhookSink(t *testing.T) {
	const n = 50
	store := openStore(t, n)
	secret := []byte("0123456789abcdef0123456789abcdef")
	var got received
	var mu sync.Mutex
	requests := 0
	srv := webhookReceiver(t, secret, &got, func() int {
		mu.Lock()
		defer mu.Unlock()
		requests++
		switch {
		case requests <= 4:
			return http.StatusServiceUnavailable
		case requests == 5:
			return http.StatusBadRequest // the receiver's mistake: retried too
		}
		return 0
	})
	spec, err := auditsink.ParseSpec(srv.URL + "/hook?token=x")
	if err != nil {
		t.Fatal(err)
	}
	if spec.Name != srv.URL+"/hook" {
		t.Errorf("name %q: want the URL without its query", spec.Name)
	}
	sink, err := auditsink.Open(spec, auditsink.Options{WebhookSecret: secret})
	if err != nil {
		t.Fatal(err)
	}
	cps := everyThird(n)
	export(t, store, sink, cps, n, nil)
	checkStream(t, got.all(), n, cps.all)
}

func TestSignature(t *testing.T) {
	secret := []byte("0123456789abcdef")
	body := []byte(`{"records":[]}`)
	now := time.Unix(1_800_000_000, 0)
	h := auditsink.Sign(secret, now, body)
	if want := "t=1800000000,v1="; !strings.HasPrefix(h, want) {
		t.Errorf("header %q, want it to start %q", h, want)
	}
	for _, tc := range []struct {
		name   string
		secret []byte
		header string
		body   []byte
		now    time.Time
		ok     bool
	}{
		{"good", secret, h, body, now, true},
		{"clock a little off", secret, h, body, now.Add(4 * time.Minute), true},
		{"replayed later", secret, h, body, now.Add(6 * time.Minute), false},
		{"from the future", secret, h, body, now.Add(-6 * time.Minute), false},
		{"other body", secret, h, []byte(`{"records":[{}]}`), now, false},
		{"other secret", []byte("fedcba9876543210"), h, body, now, false},
		{"time changed", secret, strings.Replace(h, "t=1800000000", "t=1800000001", 1), body, now, false},
		{"no time", secret, h[strings.Index(h, "v1="):], body, now, false},
		{"no signature", secret, "t=1800000000", body, now, false},
		{"empty", secret, "", body, now, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := auditsink.VerifySignature(tc.secret, tc.header, tc.body, tc.now, 5*time.Minute)
			if (err == nil) != tc.ok {
				t.Errorf("VerifySignature = %v, want ok %v", err, tc.ok)
			}
		})
	}
}

func FuzzVerifySignature(f *testing.F) {
	f.Add("t=1800000000,v1=00", []byte("{}"))
	f.Add(",,=,v1=,t=", []byte(""))
	f.Fuzz(func(t *testing.T, header string, body []byte) {
		secret := []byte("0123456789abcdef")
		now := time.Unix(1_800_000_000, 0)
		if auditsink.VerifySignature(secret, header, body, now, time.Minute) == nil &&
			!strings.Contains(header, strings.TrimPrefix(auditsink.Sign(secret, now, body), "t=1800000000,")) {
			t.Errorf("accepted %q without the body's signature", header)
		}
	})
}

// eventually polls cond until it holds, failing after a minute.
func eventually(t *testing.T, cond func() bool) {
	t.Helper()
	giveUp := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(giveUp) {
			t.Fatal("gave up waiting")
		}
		time.Sleep(2 * time.Millisecond) // polls only
	}
}

// webhookReceiver is a webhook on 127.0.0.1 that checks every request's signature and keeps the
// records of each batch it accepts; refuse returns the status to answer instead (0 = accept).
func webhookReceiver(t *testing.T, secret []byte, got *received, refuse func() int) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			t.Error(err)
			return
		}
		if ct := r.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type %q", ct)
		}
		if err := auditsink.VerifySignature(secret, r.Header.Get(auditsink.SignatureHeader), body, time.Now(), 5*time.Minute); err != nil {
			t.Errorf("signature: %v", err)
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		if code := refuse(); code != 0 {
			http.Error(w, http.StatusText(code), code)
			return
		}
		var batch struct {
			Records []auditsink.Record `json:"records"`
		}
		if err := json.Unmarshal(body, &batch); err != nil {
			t.Errorf("body: %v", err)
		}
		got.add(batch.Records...)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// A webhook's error names the sink, never the query of its URL (which may hold a token).
func TestWebhookErrorHidesQuery(t *testing.T) {
	spec, err := auditsink.ParseSpec("http://" + servertest.FreeAddr(t) + "/hook?token=s3cr3t")
	if err != nil {
		t.Fatal(err)
	}
	sink, err := auditsink.Open(spec, auditsink.Options{WebhookSecret: []byte("0123456789abcdef")})
	if err != nil {
		t.Fatal(err)
	}
	err = sink.Deliver(t.Context(), []auditsink.Record{{Checkpoint: &auditsink.Checkpoint{Seq: 1}}})
	if err == nil || strings.Contains(err.Error(), "s3cr3t") || !strings.Contains(err.Error(), spec.Name) {
		t.Errorf("Deliver to a webhook that is down: %v; want an error naming %s without the token", err, spec.Name)
	}
}
