package auditsink

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// SignatureHeader carries the webhook's signature: "t=UNIX,v1=HEX", where HEX is
// HMAC-SHA256(secret, UNIX + "." + body). A receiver recomputes it, compares in constant time,
// and refuses a t too far from its clock (a replayed request).
const SignatureHeader = "Mandate-Signature"

// webhookSink POSTs each batch as {"records":[…]} and counts it delivered on a 2xx answer only.
// Anything else is retried from the cursor: a 4xx other than 408 and 429 too (nothing is
// dropped), logged as an error since the receiver will refuse it again until someone fixes it.
type webhookSink struct {
	name, url string
	client    *http.Client
	secret    []byte
	log       *slog.Logger
	now       func() time.Time
}

func newWebhookSink(spec Spec, tc *tls.Config, opts Options) *webhookSink {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tc
	return &webhookSink{name: spec.Name, url: spec.URL, secret: opts.WebhookSecret, log: opts.Log, now: opts.Now,
		client: &http.Client{Transport: tr, Timeout: 30 * time.Second,
			// A redirect is the receiver's misconfiguration: report it rather than re-send a
			// signed batch elsewhere.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

func (s *webhookSink) Name() string { return s.name }

func (s *webhookSink) Close() error {
	s.client.CloseIdleConnections()
	return nil
}

func (s *webhookSink) Deliver(ctx context.Context, batch []Record) error {
	body, err := json.Marshal(struct {
		Records []Record `json:"records"`
	}{batch})
	if err != nil {
		return fmt.Errorf("encode batch: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(SignatureHeader, Sign(s.secret, s.now(), body))
	resp, err := s.client.Do(req)
	if err != nil {
		// The URL's query may hold the receiver's token: name the sink instead.
		var ue *url.Error
		if errors.As(err, &ue) {
			ue.URL = s.name
		}
		return err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	switch c := resp.StatusCode; {
	case c >= 200 && c < 300:
		return nil
	case c >= 400 && c < 500 && c != http.StatusRequestTimeout && c != http.StatusTooManyRequests:
		s.log.ErrorContext(ctx, "the audit webhook refused a batch; it is sent again until accepted, so fix the receiver (its URL, or the secret it checks the signature with)",
			slog.String("sink", s.name), slog.Int("status", c), slog.Int64("first_seq", batch[0].Seq()))
	}
	return fmt.Errorf("POST %s: %s", s.name, resp.Status)
}

// Sign is the SignatureHeader value for body sent at t.
func Sign(secret []byte, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac(secret, ts, body))
}

func mac(secret []byte, ts string, body []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return m.Sum(nil)
}

// VerifySignature checks a SignatureHeader value against body and secret, refusing one made more
// than tolerance away from now. It is what a receiver written in Go runs (docs/audit-sinks.md
// shows the same in shell).
func VerifySignature(secret []byte, header string, body []byte, now time.Time, tolerance time.Duration) error {
	var ts string
	var sigs [][]byte
	for _, part := range bytes.Split([]byte(header), []byte(",")) {
		k, v, ok := bytes.Cut(bytes.TrimSpace(part), []byte("="))
		if !ok {
			continue
		}
		switch string(k) {
		case "t":
			ts = string(v)
		case "v1":
			if sig, err := hex.DecodeString(string(v)); err == nil {
				sigs = append(sigs, sig)
			}
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return fmt.Errorf("%s has no time t=", SignatureHeader)
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("%s is %v old; more than %v", SignatureHeader, d.Round(time.Second), tolerance)
	}
	want := mac(secret, ts, body)
	for _, sig := range sigs {
		if hmac.Equal(sig, want) {
			return nil
		}
	}
	return fmt.Errorf("%s does not match the body", SignatureHeader)
}
