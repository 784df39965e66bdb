package auditsink

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/mandate-dev/mandate/internal/loopback"
)

// Kinds of sink, as the settings write them.
const (
	KindFile    = "file"       // file:/var/log/mandate/audit.jsonl
	KindSyslog  = "syslog+tcp" // syslog+tcp://host:514
	KindSyslogS = "syslog+tls" // syslog+tls://host:6514
	KindWebhook = "webhook"    // https://siem.example/hook (http:// on loopback only)
)

// Spec is one parsed --audit-sink value.
type Spec struct {
	Kind string
	// Name names the sink in metrics, logs and its saved cursor: the value without a query or
	// user info, so it holds no secret. Changing it starts the sink again from the beginning.
	Name string
	Path string // KindFile
	Addr string // the syslog kinds: host:port
	URL  string // KindWebhook
}

// Default syslog ports (RFC 6587 has none: 514 is the common choice; RFC 5425 names 6514).
const (
	defaultSyslogPort    = "514"
	defaultSyslogTLSPort = "6514"
)

// ParseSpec reads one --audit-sink value.
func ParseSpec(v string) (Spec, error) {
	if path, ok := strings.CutPrefix(v, "file:"); ok {
		if path == "" || strings.HasSuffix(path, "/") {
			return Spec{}, fmt.Errorf("%q: want file:PATH, e.g. file:/var/log/mandate/audit.jsonl", v)
		}
		return Spec{Kind: KindFile, Name: v, Path: path}, nil
	}
	u, err := url.Parse(v)
	if err != nil || u.Host == "" {
		return Spec{}, fmt.Errorf("%q: want file:PATH, syslog+tcp://HOST:PORT, syslog+tls://HOST:PORT or https://HOST/PATH", v)
	}
	switch u.Scheme {
	case KindSyslog, KindSyslogS:
		if u.Path != "" && u.Path != "/" || u.RawQuery != "" || u.User != nil || u.Fragment != "" {
			return Spec{}, fmt.Errorf("%q: a syslog sink is %s://HOST:PORT, nothing more", v, u.Scheme)
		}
		port := u.Port()
		if port == "" {
			port = defaultSyslogPort
			if u.Scheme == KindSyslogS {
				port = defaultSyslogTLSPort
			}
		}
		addr := net.JoinHostPort(u.Hostname(), port)
		return Spec{Kind: u.Scheme, Name: u.Scheme + "://" + addr, Addr: addr}, nil
	case "https", "http":
		if u.Scheme == "http" && !loopback.Host(u.Hostname()) {
			return Spec{}, fmt.Errorf("%q: plain http is allowed only on loopback; use https", v)
		}
		if u.User != nil {
			return Spec{}, fmt.Errorf("%q: no user info in a webhook URL; the webhook is authenticated by its signature", v)
		}
		name := *u
		name.RawQuery, name.Fragment = "", ""
		return Spec{Kind: KindWebhook, Name: name.String(), URL: v}, nil
	}
	return Spec{}, fmt.Errorf("%q: unknown kind of sink %q: want file:, syslog+tcp://, syslog+tls:// or https://", v, u.Scheme)
}

// Options are the settings every sink of a kind shares.
type Options struct {
	CAFile        string // PEM roots for syslog+tls and https sinks; "" = the system's
	WebhookSecret []byte // the HMAC key of webhook signatures; required for a webhook
	Log           *slog.Logger
	Now           func() time.Time
}

// MinWebhookSecret is the shortest webhook secret accepted, in bytes.
const MinWebhookSecret = 16

// ReadSecretFile reads a webhook secret: the file's content without surrounding white space.
func ReadSecretFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read the webhook secret: %w", err)
	}
	s := []byte(strings.TrimSpace(string(b)))
	if len(s) < MinWebhookSecret {
		return nil, fmt.Errorf("the webhook secret in %s has %d bytes; want at least %d (e.g. openssl rand -hex 32 > %s)", path, len(s), MinWebhookSecret, path)
	}
	return s, nil
}

// Open makes the sink of spec. It connects to nothing yet: the first delivery does.
func Open(spec Spec, opts Options) (Sink, error) {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	switch spec.Kind {
	case KindFile:
		return newFileSink(spec), nil
	case KindSyslog:
		return newSyslogSink(spec, nil, opts), nil
	case KindSyslogS:
		tc, err := tlsConfig(opts.CAFile, spec.Addr)
		if err != nil {
			return nil, err
		}
		return newSyslogSink(spec, tc, opts), nil
	case KindWebhook:
		if len(opts.WebhookSecret) < MinWebhookSecret {
			return nil, errors.New("a webhook sink needs a secret of at least 16 bytes (--audit-webhook-secret-file)")
		}
		tc, err := tlsConfig(opts.CAFile, "")
		if err != nil {
			return nil, err
		}
		return newWebhookSink(spec, tc, opts), nil
	}
	return nil, fmt.Errorf("unknown kind of sink %q", spec.Kind)
}

// tlsConfig trusts the roots in caFile, or the system's when it is "".
func tlsConfig(caFile, addr string) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if addr != "" {
		host, _, _ := net.SplitHostPort(addr)
		tc.ServerName = host
	}
	if caFile == "" {
		return tc, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("read the sinks' CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("the sinks' CA file %s holds no PEM certificate", caFile)
	}
	tc.RootCAs = pool
	return tc, nil
}
