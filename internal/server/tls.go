package server

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// TLSCheckInterval is how often, at most, the --tls-cert and --tls-key files are read again to
// see whether they changed (by the first TLS handshake after it has passed); SIGHUP reads them
// at once.
const TLSCheckInterval = 3 * time.Second

// tlsFiles is the certificate mandate serves: the pair of --tls-cert and --tls-key, read at
// start (a start with a pair that does not load is refused) and read again when the files
// change, so that a renewed certificate needs no restart. A new pair that does not load (a
// certificate and a key that do not match, a half-written file) is logged and the pair in use is
// kept. Handshakes never wait for a reload another handshake is doing: they take the pair in use.
type tlsFiles struct {
	certPath, keyPath string
	log               *slog.Logger
	now               func() time.Time // wall clock; it only spaces the checks
	every             time.Duration

	pair    atomic.Pointer[tlsPair]
	checked atomic.Int64 // unix nanoseconds of the last read of the files

	mu      sync.Mutex // one reload at a time
	refused [32]byte   // the digest of the last pair that did not load: logged once
}

// tlsPair is a loaded certificate and the digest of the files it came from.
type tlsPair struct {
	cert *tls.Certificate
	sum  [32]byte
}

// loadTLSFiles reads the pair at start; an error says which files and what to do.
func loadTLSFiles(certPath, keyPath string, log *slog.Logger, now func() time.Time) (*tlsFiles, error) {
	f := &tlsFiles{certPath: certPath, keyPath: keyPath, log: log, now: now, every: TLSCheckInterval}
	p, err := f.read()
	if err != nil {
		return nil, err
	}
	f.pair.Store(p)
	f.checked.Store(now().UnixNano())
	log.Info("serving TLS", certAttrs(f.certPath, p.cert)...)
	return f, nil
}

// read loads the pair as the files are now.
func (f *tlsFiles) read() (*tlsPair, error) {
	certPEM, err := os.ReadFile(f.certPath)
	if err != nil {
		return nil, fmt.Errorf("--tls-cert: %w", err)
	}
	keyPEM, err := os.ReadFile(f.keyPath)
	if err != nil {
		return nil, fmt.Errorf("--tls-key: %w", err)
	}
	h := sha256.New()
	fmt.Fprintf(h, "%d\n", len(certPEM))
	h.Write(certPEM)
	h.Write(keyPEM)
	p := &tlsPair{}
	h.Sum(p.sum[:0])
	if cur := f.pair.Load(); cur != nil && cur.sum == p.sum {
		return cur, nil
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return p, fmt.Errorf("--tls-cert %s and --tls-key %s: %w: give a PEM certificate chain and the private key of its first certificate", f.certPath, f.keyPath, err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return p, fmt.Errorf("--tls-cert %s: %w", f.certPath, err)
		}
	}
	p.cert = &cert
	return p, nil
}

// Reload reads the files now, as on SIGHUP, and serves their pair when it loads.
func (f *tlsFiles) Reload() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reloadLocked()
}

func (f *tlsFiles) reloadLocked() error {
	f.checked.Store(f.now().UnixNano())
	p, err := f.read()
	cur := f.pair.Load()
	switch {
	case err != nil && p != nil && p.sum == f.refused:
		return err // logged when first seen
	case err != nil:
		if p != nil {
			f.refused = p.sum
		}
		f.log.Error("the new TLS certificate and key do not load; still serving the previous certificate",
			slog.String("error", err.Error()), slog.String("serial", cur.cert.Leaf.SerialNumber.String()))
		return err
	case p == cur:
		return nil
	}
	f.pair.Store(p)
	f.log.Info("reloaded TLS certificate", certAttrs(f.certPath, p.cert)...)
	return nil
}

// current is the pair to serve, after reading the files if TLSCheckInterval has passed since
// they were last read and no other handshake is reading them.
func (f *tlsFiles) current() *tls.Certificate {
	if f.now().UnixNano()-f.checked.Load() >= int64(f.every) && f.mu.TryLock() {
		if f.now().UnixNano()-f.checked.Load() >= int64(f.every) {
			_ = f.reloadLocked() // logged
		}
		f.mu.Unlock()
	}
	return f.pair.Load().cert
}

// config is the TLS configuration of every listener: Go's defaults, TLS 1.2 at least.
func (f *tlsFiles) config() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return f.current(), nil
		},
	}
}

// reloadOnHangup reads the files on every SIGHUP until ctx ends (the master key file is
// reloaded by its own handler of the same signal).
func (f *tlsFiles) reloadOnHangup(ctx context.Context) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			_ = f.Reload() // logged
		}
	}
}

func certAttrs(path string, c *tls.Certificate) []any {
	return []any{slog.String("cert", path), slog.String("subject", c.Leaf.Subject.String()),
		slog.String("serial", c.Leaf.SerialNumber.String()), slog.Time("not_after", c.Leaf.NotAfter)}
}

// HSTS is the Strict-Transport-Security value sent on every response when the issuer is https:
// browsers (the console) then never use plain http for the issuer's host for a year. Subdomains
// are not included: they may be other services.
const HSTS = "max-age=31536000"

// withHSTS adds Strict-Transport-Security to every response of h when the issuer is https, and
// returns h as it is otherwise (the header means nothing, and would pin nothing, over http).
func withHSTS(issuer string, h http.Handler) http.Handler {
	if !strings.HasPrefix(issuer, "https://") {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Strict-Transport-Security", HSTS)
		h.ServeHTTP(w, r)
	})
}

// serveOn serves srv on ln, with TLS (and HTTP/2) when --tls-cert is set.
func (s *Server) serveOn(srv *http.Server, ln net.Listener) error {
	if s.tls == nil {
		return srv.Serve(ln)
	}
	srv.TLSConfig = s.tls.config()
	return srv.ServeTLS(ln, "", "")
}
