package server_test

import (
	"bytes"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/server"
	"github.com/mandate-dev/mandate/internal/servertest"
	"github.com/mandate-dev/mandate/internal/syncbuf"
)

// The promise of the certificate reloader, over random sequences of what can happen to the
// files on disk (a renewal, a certificate without its key, a key without its certificate,
// garbage, a missing file, each renewal reused later) and to the clock, and SIGHUP: a handshake
// always gets a certificate that loaded, the pair on disk once it has been read (after
// TLSCheckInterval or a reload) if it loads, and the pair served before otherwise; the files are
// never read again before the interval has passed; a refused pair is logged once.
func TestTLSFilesFollowTheFiles(t *testing.T) {
	ca := servertest.NewCA(t)
	type pair struct{ cert, key []byte }
	pairs := make([]pair, 4)
	for i := range pairs {
		pairs[i].cert, pairs[i].key = ca.Issue(t, int64(100+i))
	}
	dir := t.TempDir()
	certPath, keyPath := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	servertest.WriteFileAtomic(t, certPath, pairs[0].cert)
	servertest.WriteFileAtomic(t, keyPath, pairs[0].key)

	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	const interval = 3 * time.Second
	clock := time.Unix(1e9, 0)
	var logs syncbuf.Buffer
	f, err := server.LoadTLSFiles(certPath, keyPath, slog.New(slog.NewTextHandler(&logs, nil)), func() time.Time { return clock }, interval)
	if err != nil {
		t.Fatal(err)
	}
	onDisk := pairs[0]           // what the files hold
	good := func(p pair) int64 { // the serial of a pair that loads, -1 otherwise
		for i, q := range pairs {
			if bytes.Equal(p.cert, q.cert) && bytes.Equal(p.key, q.key) {
				return int64(100 + i)
			}
		}
		return -1
	}
	want := int64(100)
	lastRead := clock
	refusals := map[string]bool{} // distinct refused pairs: each logged once
	for step := range 400 {
		switch op := rng.IntN(7); op {
		case 0: // a renewal, certificate and key
			p := pairs[rng.IntN(len(pairs))]
			servertest.WriteFileAtomic(t, certPath, p.cert)
			servertest.WriteFileAtomic(t, keyPath, p.key)
			onDisk = p
		case 1: // one half of a renewal
			p := pairs[rng.IntN(len(pairs))]
			if rng.IntN(2) == 0 {
				servertest.WriteFileAtomic(t, certPath, p.cert)
				onDisk.cert = p.cert
			} else {
				servertest.WriteFileAtomic(t, keyPath, p.key)
				onDisk.key = p.key
			}
		case 2: // garbage in one file
			junk := []byte("-----BEGIN CERTIFICATE-----\nnot base64\n")
			servertest.WriteFileAtomic(t, certPath, junk)
			onDisk.cert = junk
		case 3: // time passes, less than the interval or more
			clock = clock.Add(time.Duration(rng.Int64N(int64(2 * interval))))
		case 4: // SIGHUP
			f.Reload()
			lastRead = clock
			if s := good(onDisk); s >= 0 {
				want = s
			} else {
				refusals[string(onDisk.cert)+string(onDisk.key)] = true
			}
		case 5: // the key file is gone for a moment
			if rng.IntN(4) == 0 {
				os.Remove(keyPath)
				onDisk.key = nil
			}
		case 6: // a handshake
			if clock.Sub(lastRead) >= interval {
				lastRead = clock
				if s := good(onDisk); s >= 0 {
					want = s
				} else if onDisk.key != nil {
					refusals[string(onDisk.cert)+string(onDisk.key)] = true
				}
			}
			if got := f.HandshakeSerial(); got != want {
				t.Fatalf("step %d: a handshake got serial %d, want %d", step, got, want)
			}
		}
	}
	if got, want := strings.Count(logs.String(), "do not load; still serving the previous certificate"), len(refusals); got < want {
		t.Errorf("%d refusals logged, want one for each of the %d refused pairs", got, want)
	}
}

// A pair that does not load is refused at start, saying which files and why.
func TestTLSFilesRefusedAtStart(t *testing.T) {
	ca := servertest.NewCA(t)
	cert, _ := ca.Issue(t, 1)
	_, otherKey := ca.Issue(t, 2)
	dir := t.TempDir()
	certPath, keyPath := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	servertest.WriteFileAtomic(t, certPath, cert)
	servertest.WriteFileAtomic(t, keyPath, otherKey)
	_, err := server.LoadTLSFiles(certPath, keyPath, slog.New(slog.DiscardHandler), time.Now, time.Second)
	if err == nil || !strings.Contains(err.Error(), "private key does not match public key") || !strings.Contains(err.Error(), certPath) {
		t.Errorf("a mismatched pair: %v", err)
	}
}
