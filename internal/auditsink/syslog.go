package auditsink

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/mandate-dev/mandate/internal/audit"
)

// syslogSink writes each record as an RFC 5424 message, framed by octet counting (RFC 6587
// §3.4.1, the framing RFC 5425 prescribes for TLS), over one TCP or TLS connection it keeps and
// re-opens after a failure. Syslog has no acknowledgement: a batch counts as delivered once it
// is written. Before each batch the sink checks that the receiver has not closed the
// connection; if it has, the batch written last on it may have been dropped unread, so it is
// written again on the new connection, before the next one.
type syslogSink struct {
	name, addr string
	tls        *tls.Config
	hostname   string
	procID     string
	conn       net.Conn
	timeout    time.Duration
	// last is the batch last written on conn, as framed: written again if conn turns out
	// closed by the receiver.
	last []byte
}

func newSyslogSink(spec Spec, tc *tls.Config, _ Options) *syslogSink {
	return &syslogSink{name: spec.Name, addr: spec.Addr, tls: tc, hostname: syslogHostname(),
		procID: strconv.Itoa(os.Getpid()), timeout: 30 * time.Second}
}

func (s *syslogSink) Name() string { return s.name }

func (s *syslogSink) Close() error {
	if s.conn == nil {
		return nil
	}
	err := s.conn.Close()
	s.conn = nil
	return err
}

func (s *syslogSink) Deliver(ctx context.Context, batch []Record) error {
	var buf bytes.Buffer
	for _, r := range batch {
		msg, err := FormatSyslog(r, s.hostname, s.procID)
		if err != nil {
			return err
		}
		buf.WriteString(strconv.Itoa(len(msg)))
		buf.WriteByte(' ')
		buf.Write(msg)
	}
	out := buf.Bytes()
	if s.conn != nil && !open(s.conn) {
		s.Close()
	}
	if s.conn == nil {
		if err := s.dial(ctx); err != nil {
			return err
		}
		// The last batch may not have been read on the connection that broke.
		out = append(slices.Clip(s.last), out...)
	}
	deadline := time.Now().Add(s.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	c := s.conn
	c.SetWriteDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { c.SetWriteDeadline(time.Now()) })
	_, err := c.Write(out)
	stop()
	if err != nil {
		s.Close()
		return fmt.Errorf("write to %s: %w", s.addr, err)
	}
	s.last = buf.Bytes()
	return nil
}

func (s *syslogSink) dial(ctx context.Context) error {
	d := &net.Dialer{Timeout: s.timeout, KeepAlive: 30 * time.Second}
	var c net.Conn
	var err error
	if s.tls != nil {
		c, err = (&tls.Dialer{NetDialer: d, Config: s.tls}).DialContext(ctx, "tcp", s.addr)
	} else {
		c, err = d.DialContext(ctx, "tcp", s.addr)
	}
	if err != nil {
		return fmt.Errorf("connect to %s: %w", s.addr, err)
	}
	s.conn = c
	return nil
}

// open reports whether the receiver has kept c open. Syslog receivers send nothing, so a read
// that does not time out at once means the connection was closed (or is broken).
func open(c net.Conn) bool {
	c.SetReadDeadline(time.Now())
	var b [1]byte
	_, err := c.Read(b[:])
	c.SetReadDeadline(time.Time{})
	var ne net.Error
	return err == nil || errors.As(err, &ne) && ne.Timeout()
}

// Syslog header values (RFC 5424 §6.2).
const (
	syslogFacility = 13 // log audit
	sevNotice      = 5  // a refusal or a failure
	sevInfo        = 6  // anything else
	syslogApp      = "mandate"
	bom            = "\xef\xbb\xbf"
)

// FormatSyslog is one record as an RFC 5424 message: PRI (facility log audit; severity notice
// for a denied or failed event, informational otherwise), version 1, the record's time, host
// name, APP-NAME mandate, PROCID, MSGID "event" or "checkpoint", no structured data, and as
// MSG the record's JSON line (UTF-8, after a BOM).
func FormatSyslog(r Record, hostname, procID string) ([]byte, error) {
	sev := sevInfo
	var t time.Time
	if r.Event != nil {
		t = r.Event.Time
		if r.Event.Outcome == audit.OutcomeDenied || r.Event.Outcome == audit.OutcomeFailure {
			sev = sevNotice
		}
	} else {
		t = r.Checkpoint.Time
	}
	body, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("encode seq %d: %w", r.Seq(), err)
	}
	ts := "-"
	if !t.IsZero() {
		ts = t.UTC().Format("2006-01-02T15:04:05.000000Z07:00")
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "<%d>1 %s %s %s %s %s - %s", syslogFacility*8+sev, ts, headerField(hostname, 255),
		syslogApp, headerField(procID, 128), r.Type(), bom)
	b.Write(body)
	return b.Bytes(), nil
}

// headerField is v as an RFC 5424 header field: printable US-ASCII without spaces, at most n
// characters, "-" when empty.
func headerField(v string, n int) string {
	out := make([]byte, 0, len(v))
	for i := 0; i < len(v) && len(out) < n; i++ {
		if c := v[i]; c > 32 && c < 127 {
			out = append(out, c)
		}
	}
	if len(out) == 0 {
		return "-"
	}
	return string(out)
}

func syslogHostname() string {
	h, err := os.Hostname()
	if err != nil {
		return "-"
	}
	return h
}
