package verify

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// The revocation stream: RevocationFeed asks the feed for server-sent events (Accept:
// text/event-stream) and keeps that connection open in the background while Checks come, so a
// revocation reaches the set as soon as the issuer commits it instead of at the next poll. Each
// event is one log entry, its id the entry's seq (the cursor); the issuer sends a comment line as
// a heartbeat twice a second once the entries after the cursor are sent, and each heartbeat
// marks the set complete as of its arrival, so Check needs no poll while they come. When the
// stream is unavailable (an older issuer answers JSON, a proxy refuses or buffers it, the
// connection drops or stalls) Check polls as before, and the stream is tried again, resuming
// from the cursor.
const (
	// streamStall is how long a stream may send nothing (not even a heartbeat) before it is
	// dropped and opened again.
	streamStall = 5 * time.Second
	// streamIdle is how long the stream stays open without a Check; the next Check opens it
	// again (and polls meanwhile).
	streamIdle = time.Minute
	// streamUnsupportedRetry is how long to wait before asking again an issuer that answered
	// without a stream.
	streamUnsupportedRetry = time.Minute
	streamMinBackoff       = 250 * time.Millisecond
	streamMaxBackoff       = 30 * time.Second
	// streamMaxLine bounds one line of the stream.
	streamMaxLine = 64 << 10
)

// errNoStream means the feed answered without a stream.
var errNoStream = errors.New("the revocation feed does not stream")

// stream keeps one feed's event stream open while the feed is in use.
type stream struct {
	f  *feed
	hc *http.Client // f.hc without its overall timeout: a stream is long

	running atomic.Bool
	lastUse atomic.Int64 // wall-clock unix nanos of the latest Check

	mu     sync.Mutex
	closed bool
	cancel context.CancelFunc

	// connected counts streams that delivered a heartbeat (for tests).
	connected atomic.Int64
}

func newStream(f *feed) *stream {
	hc := *f.hc
	hc.Timeout = 0
	return &stream{f: f, hc: &hc}
}

// use notes a Check, and opens the stream if it is not running.
func (s *stream) use() {
	if s == nil {
		return
	}
	now := time.Now().UnixNano()
	if now-s.lastUse.Load() > int64(100*time.Millisecond) {
		s.lastUse.Store(now)
	}
	if s.running.Load() || !s.running.CompareAndSwap(false, true) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		s.running.Store(false)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go func() {
		defer s.running.Store(false)
		defer cancel()
		s.run(ctx)
	}()
}

// close ends the stream for good.
func (s *stream) close() {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.cancel != nil {
		s.cancel()
	}
}

func (s *stream) idle() bool {
	return time.Since(time.Unix(0, s.lastUse.Load())) > streamIdle
}

// run opens the stream again and again, with backoff, until ctx ends or no Check came for
// streamIdle.
func (s *stream) run(ctx context.Context) {
	backoff := streamMinBackoff
	for ctx.Err() == nil && !s.idle() {
		live, err := s.once(ctx)
		wait := backoff
		switch {
		case errors.Is(err, errNoStream):
			wait = streamUnsupportedRetry
		case live:
			backoff, wait = streamMinBackoff, streamMinBackoff
		default:
			backoff = min(2*backoff, streamMaxBackoff)
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
}

// once follows one stream from the set's cursor until it fails, stalls or the feed goes idle,
// and reports whether it delivered a heartbeat.
func (s *stream) once(ctx context.Context) (live bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var after int64
	if snap := s.f.snap.Load(); snap != nil {
		after = snap.cursor
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.f.url+strconv.FormatInt(after, 10), nil)
	if err != nil {
		return false, err
	}
	req.Header.Set("Accept", "text/event-stream")
	stall := time.AfterFunc(s.f.o.timeout, cancel) // until the answer's header, then streamStall
	defer stall.Stop()
	resp, err := s.hc.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	ct, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if resp.StatusCode != http.StatusOK || ct != "text/event-stream" {
		return false, fmt.Errorf("%w: HTTP %d, %s", errNoStream, resp.StatusCode, ct)
	}
	stall.Reset(streamStall)
	err = readEvents(resp.Body, func(ev sseEvent) error {
		stall.Reset(streamStall)
		if ev.comment {
			// A heartbeat: every entry committed before it was sent has come.
			s.f.apply(nil, 0, s.f.o.now(), s.f.o.now())
			if !live {
				live = true
				s.connected.Add(1)
			}
			if s.idle() {
				return errIdle
			}
			return nil
		}
		if ev.data == "" || (ev.event != "" && ev.event != "revocation") {
			return nil
		}
		var e feedEntry
		if err := json.Unmarshal([]byte(ev.data), &e); err != nil {
			return fmt.Errorf("revocation event %s: %w", ev.id, err)
		}
		seq, err := strconv.ParseInt(ev.id, 10, 64)
		if err != nil || seq < 0 {
			return fmt.Errorf("revocation event: id %q is not a cursor", ev.id)
		}
		s.f.apply([]feedEntry{e}, seq, s.f.o.now(), time.Time{})
		return nil
	})
	if errors.Is(err, errIdle) {
		err = nil
	}
	return live, err
}

var errIdle = errors.New("no Check for a while")

// sseEvent is one dispatched event of a server-sent event stream, or a comment line.
type sseEvent struct {
	comment bool
	id      string // the last id seen on the stream, as the spec keeps it
	event   string
	data    string
}

// readEvents parses a text/event-stream body (the WHATWG HTML "server-sent events" format) and
// calls fn with every event and every comment line, until r ends, fn returns an error, or a line
// is longer than streamMaxLine.
func readEvents(r io.Reader, fn func(sseEvent) error) error {
	br := bufio.NewReaderSize(r, streamMaxLine)
	var id, event string
	var data []byte
	hasData := false
	first := true
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			return errors.New("revocation stream: a line is too long")
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return io.ErrUnexpectedEOF // the issuer never ends a stream
			}
			return err
		}
		line = bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r"))
		if first {
			line = bytes.TrimPrefix(line, []byte("\xef\xbb\xbf")) // a byte order mark
			first = false
		}
		if len(line) == 0 {
			if hasData {
				if err := fn(sseEvent{id: id, event: event, data: string(bytes.TrimSuffix(data, []byte("\n")))}); err != nil {
					return err
				}
			}
			event, data, hasData = "", data[:0], false
			continue
		}
		if line[0] == ':' {
			if err := fn(sseEvent{comment: true}); err != nil {
				return err
			}
			continue
		}
		name, value, _ := bytes.Cut(line, []byte(":"))
		value = bytes.TrimPrefix(value, []byte(" "))
		switch string(name) {
		case "id":
			if bytes.IndexByte(value, 0) < 0 {
				id = string(value)
			}
		case "event":
			event = string(value)
		case "data":
			data = append(append(data, value...), '\n')
			hasData = true
			if len(data) > streamMaxLine {
				return errors.New("revocation stream: an event is too long")
			}
		}
	}
}
