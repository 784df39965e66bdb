package auditsink_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/auditsink"
	"github.com/mandate-dev/mandate/internal/cli"
	"github.com/mandate-dev/mandate/internal/servertest"
	"github.com/mandate-dev/mandate/internal/sqlstore"
	"github.com/mandate-dev/mandate/internal/syncbuf"
)

// The real mandate serve ships its trail to a file, a syslog server and a webhook. In the first
// run the syslog server and the webhook are down; mandate stops with them behind. In the second
// run, on the same database, they are up: each catches up, and after it stops every receiver
// holds every event from the first to the last, in order (after de-duplication by seq).
func TestServeShipsAcrossRestart(t *testing.T) {
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "MANDATE_") {
			t.Setenv(k, "")
		}
	}
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	jsonl := filepath.Join(dir, "audit.jsonl")
	secretFile := filepath.Join(dir, "webhook.secret")
	secret := []byte("9f2c1e7a5b3d4c6e8f0a1b2c3d4e5f60")
	if err := os.WriteFile(secretFile, append(secret, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}

	var webhookUp atomic.Bool
	var hook received
	hookSrv := webhookReceiver(t, secret, &hook, func() int {
		if !webhookUp.Load() {
			return http.StatusServiceUnavailable
		}
		return 0
	})
	syslogAddr := servertest.FreeAddr(t) // down: nothing listens there in the first run
	var sys received

	fileRecords := func() []auditsink.Record {
		b, err := os.ReadFile(jsonl)
		if err != nil {
			return nil
		}
		var rs []auditsink.Record
		for line := range bytes.Lines(b) {
			var r auditsink.Record
			if json.Unmarshal(line, &r) == nil {
				rs = append(rs, r)
			}
		}
		return rs
	}
	sinks := map[string]func() []auditsink.Record{"file": fileRecords, "syslog": sys.all, "webhook": hook.all}
	metricsName := "syslog+tcp://" + syslogAddr

	// run serves, makes n refusals (each one audit event), waits for until, and stops.
	run := func(n int, until func(base string) bool) {
		t.Helper()
		addr := servertest.FreeAddr(t)
		var logs syncbuf.Buffer
		root := cli.NewRoot(io.Discard, &logs)
		root.SetArgs([]string{"serve", "--listen", addr, "--data-dir", dataDir, "--dpop-nonce=false", "--denial-audit-rate", "0",
			"--audit-sink", "file:" + jsonl, "--audit-sink", "syslog+tcp://" + syslogAddr,
			"--audit-sink", hookSrv.URL + "/hook", "--audit-webhook-secret-file", secretFile, "--audit-sink-batch", "4"})
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		done := make(chan error, 1)
		go func() { done <- root.ExecuteContext(ctx) }()
		base := "http://" + addr
		waitFor(t, done, &logs, func() bool {
			resp, err := http.Get(base + "/healthz")
			if err == nil {
				resp.Body.Close()
			}
			return err == nil && resp.StatusCode == 200
		})
		for range n {
			resp, err := http.PostForm(base+"/oauth/token", url.Values{"grant_type": {"urn:example:no-such-grant"}})
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest {
				t.Fatalf("POST /oauth/token with an unknown grant: %s, want 400", resp.Status)
			}
		}
		waitFor(t, done, &logs, func() bool { return until(base) })
		cancel()
		if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, context.Canceled) {
			t.Fatalf("serve: %v\n%s", err, logs.String())
		}
	}
	head := func() int64 {
		t.Helper()
		s, err := sqlstore.Open(t.Context(), filepath.Join(dataDir, "mandate.db"))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		evs, err := s.ListEvents(t.Context(), audit.Filter{Limit: 1})
		if err != nil || len(evs) != 1 {
			t.Fatalf("last event: %v %v", evs, err)
		}
		return evs[0].Seq
	}
	// The signed checkpoints the server stored: the sinks carry each beside its event.
	checkpoints := func() []auditsink.Checkpoint {
		t.Helper()
		s, err := sqlstore.Open(t.Context(), filepath.Join(dataDir, "mandate.db"))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		cps, err := s.ListCheckpoints(t.Context(), 0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		var out []auditsink.Checkpoint
		for _, cp := range cps {
			out = append(out, auditsink.Checkpoint{Seq: cp.Seq, Hash: cp.Hash, Time: cp.Time, JWS: cp.JWS})
		}
		return out
	}

	// First run: the syslog server and the webhook are down; the file gets what it can, and
	// the metrics show the others failing and behind.
	run(12, func(base string) bool {
		m := metrics(base)
		return hasEvent(fileRecords(), 12) &&
			strings.Contains(m, `mandate_audit_sink_failures_total{sink="`+metricsName+`"}`) &&
			!strings.Contains(m, `mandate_audit_sink_failures_total{sink="`+metricsName+`"} 0`) &&
			!strings.Contains(m, `mandate_audit_sink_lag_events{sink="`+metricsName+`"} 0`)
	})
	first := head()
	checkStream(t, fileRecords(), first, checkpointsUpTo(fileRecords()))
	if got := len(hook.all()) + len(sys.all()); got != 0 {
		t.Fatalf("the receivers that were down got %d records", got)
	}

	// Between the runs both come up.
	webhookUp.Store(true)
	ln, err := net.Listen("tcp", syslogAddr)
	if err != nil {
		t.Fatalf("listen again on %s: %v", syslogAddr, err)
	}
	defer ln.Close()
	go syslogReceiver(t, ln, &sys)

	// Second run: everything from the first run arrives, and what the second adds.
	run(10, func(string) bool {
		return hasEvent(sys.all(), first+10) && hasEvent(hook.all(), first+10) && hasEvent(fileRecords(), first+10)
	})
	last := head()
	cps := checkpoints()
	if len(cps) == 0 || cps[len(cps)-1].Seq != last {
		t.Fatalf("checkpoints %v: want the last one, signed at shutdown, at the head %d", cps, last)
	}
	for _, got := range sinks { // written is not yet read
		eventually(t, func() bool { return hasEvent(got(), last) && hasCheckpoint(got(), last) })
	}
	for name, got := range sinks {
		t.Run(name, func(t *testing.T) { checkStream(t, got(), last, cps) })
	}
}

// waitFor polls cond until it holds, failing if serve ends first or after a minute.
func waitFor(t *testing.T, done <-chan error, logs *syncbuf.Buffer, cond func() bool) {
	t.Helper()
	giveUp := time.After(time.Minute)
	for !cond() {
		select {
		case err := <-done:
			t.Fatalf("serve ended: %v\n%s", err, logs.String())
		case <-giveUp:
			t.Fatalf("gave up waiting\n%s", logs.String())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// hasCheckpoint reports whether rs holds the checkpoint of seq.
func hasCheckpoint(rs []auditsink.Record, seq int64) bool {
	for _, r := range rs {
		if r.Checkpoint != nil && r.Checkpoint.Seq == seq {
			return true
		}
	}
	return false
}

// checkpointsUpTo is the checkpoints rs holds, de-duplicated: what a run that stopped early
// shipped so far (the rest follow in the next run, which checks them all).
func checkpointsUpTo(rs []auditsink.Record) []auditsink.Checkpoint {
	var out []auditsink.Checkpoint
	for _, r := range dedup(rs) {
		if r.Checkpoint != nil {
			out = append(out, *r.Checkpoint)
		}
	}
	return out
}

func hasEvent(rs []auditsink.Record, seq int64) bool {
	for _, r := range rs {
		if r.Event != nil && r.Event.Seq >= seq {
			return true
		}
	}
	return false
}

func metrics(base string) string {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var b strings.Builder
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "mandate_audit_sink_") {
			b.WriteString(sc.Text() + "\n")
		}
	}
	return b.String()
}
