package api

import (
	"encoding/json"
	"errors"
	"log/slog"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mandate-dev/mandate/internal/apperr"
)

// Wakeup wakes the connections of the revocation stream when the revocation log may have grown
// (the server calls Notify for every revocation committed by any replica), and ends them at
// shutdown (Close). It is safe for concurrent use.
type Wakeup struct {
	mu     sync.Mutex
	ch     chan struct{} // closed and replaced by Notify
	done   chan struct{} // closed by Close
	closed bool
}

// NewWakeup returns a Wakeup.
func NewWakeup() *Wakeup {
	return &Wakeup{ch: make(chan struct{}), done: make(chan struct{})}
}

// Notify wakes every stream waiting for the log to grow. It never blocks.
func (w *Wakeup) Notify() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.closed {
		close(w.ch)
		w.ch = make(chan struct{})
	}
}

// Close ends every stream, and those that start later at once; for server shutdown, which
// otherwise waits for them.
func (w *Wakeup) Close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.closed {
		w.closed = true
		close(w.done)
	}
}

// wait returns a channel closed by the next Notify, and the one closed by Close.
func (w *Wakeup) wait() (next, done <-chan struct{}) {
	if w == nil {
		return nil, nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ch, w.done
}

// Stream timing. The heartbeat proves to a client that its stream is live, so it treats its copy
// as current; it is shorter than the verify SDK's default freshness (1s). The log is read again
// every recheck even without a wakeup.
const (
	streamHeartbeat    = 500 * time.Millisecond
	streamRecheck      = 15 * time.Second
	streamWriteTimeout = 10 * time.Second
)

// wantsStream reports whether r asks for the revocation feed as server-sent events.
func wantsStream(r *http.Request) bool {
	for part := range strings.SplitSeq(r.Header.Get("Accept"), ",") {
		if t, _, err := mime.ParseMediaType(strings.TrimSpace(part)); err == nil && t == "text/event-stream" {
			return true
		}
	}
	return false
}

// streamRevocations is the revocation feed as server-sent events (Accept: text/event-stream):
// every log entry after the cursor (after, or the Last-Event-ID a reconnecting client sends,
// which wins), then each new one as soon as it is committed on any replica, one event each:
//
//	id: <seq>
//	event: revocation
//	data: {"kind": "task", "id": "tsk_…", "exp": <unix seconds, 0 = never>}
//
// and a comment line as a heartbeat every half second. A client that reconnects resumes from
// the id of the last event it received.
// parseCursor reads a feed cursor: exactly one value of decimal digits (no sign, no space)
// that fits an int64. Anything else is refused rather than read as some other cursor.
func parseCursor(vs []string) (int64, bool) {
	if len(vs) != 1 || vs[0] == "" || len(vs[0]) > 19 {
		return 0, false
	}
	for _, c := range vs[0] {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(vs[0], 10, 64)
	if err != nil {
		return 0, false
	}
	return n, true
}

func (a *API) streamRevocations(w http.ResponseWriter, r *http.Request, after int64) error {
	if vs := r.Header.Values("Last-Event-ID"); len(vs) > 0 {
		n, ok := parseCursor(vs)
		if !ok {
			return apperr.New(apperr.Invalid, "cursor", "send one Last-Event-ID, the id of an event of this stream (a whole number)")
		}
		after = n
	}
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no") // nginx: pass events on as they come
	w.WriteHeader(http.StatusOK)
	write := func(b []byte) bool {
		if err := rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout)); err != nil && !errors.Is(err, http.ErrNotSupported) {
			return false
		}
		if _, err := w.Write(b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	if !write([]byte("retry: 1000\n\n")) {
		return nil
	}
	heartbeat := time.NewTicker(streamHeartbeat)
	defer heartbeat.Stop()
	recheck := time.NewTicker(streamRecheck)
	defer recheck.Stop()
	ctx := r.Context()
	var buf []byte
	for {
		// Before reading: a commit after the read wakes us. Without a Wakeup, next and done are
		// nil and the log is read every recheck.
		next, done := a.cfg.RevocationWakeup.wait()
		for {
			list, err := a.cfg.Tokens.ListRevocations(ctx, after, a.cfg.Now(), revocationPage)
			if err != nil {
				if ctx.Err() == nil {
					a.cfg.Log.WarnContext(ctx, "revocation stream: read the log; the client reconnects", slog.String("error", err.Error()))
				}
				return nil // the client reconnects, from its last event
			}
			buf = buf[:0]
			for _, e := range list {
				var exp int64
				if !e.ExpiresAt.IsZero() {
					exp = e.ExpiresAt.Unix()
				}
				data, _ := json.Marshal(RevocationJSON{Kind: e.Kind, ID: e.ID, Exp: exp})
				buf = append(buf, "id: "...)
				buf = strconv.AppendInt(buf, e.Seq, 10)
				buf = append(buf, "\nevent: revocation\ndata: "...)
				buf = append(buf, data...)
				buf = append(buf, "\n\n"...)
				after = e.Seq
			}
			if len(buf) > 0 && !write(buf) {
				return nil
			}
			if len(list) < revocationPage {
				break
			}
		}
	wait:
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-done:
				return nil
			case <-next:
				break wait
			case <-recheck.C:
				break wait
			case <-heartbeat.C:
				if !write([]byte(":\n\n")) {
					return nil
				}
			}
		}
	}
}
