package verify

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// sseIssuer is a revocation feed that streams: GET with Accept: text/event-stream answers the
// entries after the cursor (after, or Last-Event-ID) as events, then new ones as they are
// added, with a heartbeat comment every 50ms. streams counts opened streams, polls JSON reads.
type sseIssuer struct {
	mu      sync.Mutex
	log     []revocation
	added   chan struct{} // closed and replaced on every add
	streams atomic.Int32
	polls   atomic.Int32
	url     string
}

func newSSEIssuer(t *testing.T) *sseIssuer {
	is := &sseIssuer{added: make(chan struct{})}
	srv := httptest.NewServer(http.HandlerFunc(is.serve))
	t.Cleanup(srv.Close)
	is.url = srv.URL
	return is
}

func (is *sseIssuer) add(kind, id string) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.log = append(is.log, revocation{Kind: kind, ID: id})
	close(is.added)
	is.added = make(chan struct{})
}

func (is *sseIssuer) serve(w http.ResponseWriter, r *http.Request) {
	after, _ := strconv.Atoi(r.URL.Query().Get("after"))
	if !strings.Contains(r.Header.Get("Accept"), "text/event-stream") {
		is.polls.Add(1)
		is.mu.Lock()
		page := []revocation{}
		if after < len(is.log) {
			page = is.log[after:]
		}
		n := len(is.log)
		is.mu.Unlock()
		writeJSON(w, map[string]any{"revocations": page, "cursor": max(after, n), "more": false})
		return
	}
	if v := r.Header.Get("Last-Event-ID"); v != "" {
		after, _ = strconv.Atoi(v)
	}
	is.streams.Add(1)
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(200)
	rc := http.NewResponseController(w)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		is.mu.Lock()
		added := is.added
		var b strings.Builder
		for ; after < len(is.log); after++ {
			e := is.log[after]
			fmt.Fprintf(&b, "id: %d\nevent: revocation\ndata: {\"kind\":%q,\"id\":%q,\"exp\":0}\n\n", after+1, e.Kind, e.ID)
		}
		is.mu.Unlock()
		if _, err := io.WriteString(w, b.String()); err != nil || rc.Flush() != nil {
			return
		}
	wait:
		for {
			select {
			case <-r.Context().Done():
				return
			case <-added:
				break wait
			case <-tick.C:
				if _, err := io.WriteString(w, ": heartbeat\n\n"); err != nil || rc.Flush() != nil {
					return
				}
			}
		}
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within a minute", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRevocationFeedStream: a feed whose polls are an hour apart learns a revocation from the
// stream, without polling again.
func TestRevocationFeedStream(t *testing.T) {
	is := newSSEIssuer(t)
	is.add("token", "jti_old")
	f := RevocationFeed(is.url, nil, time.Hour)
	t.Cleanup(func() { f.(io.Closer).Close() })
	ctx := context.Background()
	if err := f.Check(ctx, feedCaller("agt_a")); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the stream opens", func() bool { return f.(*feed).stream.connected.Load() > 0 })
	is.add("agent", "agt_a")
	waitUntil(t, "the stream delivers the revocation", func() bool {
		return errors.Is(f.Check(ctx, feedCaller("agt_a")), ErrRevoked)
	})
	if err := f.Check(ctx, &Caller{AgentID: "agt_b", JTI: "jti_old"}); !errors.Is(err, ErrRevoked) {
		t.Errorf("the entry from before: %v, want ErrRevoked", err)
	}
	if got := is.polls.Load(); got != 1 {
		t.Errorf("%d polls, want only the first", got)
	}
}

// TestRevocationFeedStreamFallsBack: against an issuer without a stream (one that answers the
// stream request with JSON, as an older mandate does) the feed polls, and asks for the stream
// again only after a while.
func TestRevocationFeedStreamFallsBack(t *testing.T) {
	var streamAsks atomic.Int32
	old := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.Header.Get("Accept"), "text/event-stream") {
			streamAsks.Add(1)
		}
		writeJSON(w, map[string]any{"revocations": []revocation{{Kind: "agent", ID: "agt_gone"}}, "cursor": 1, "more": false})
	}))
	t.Cleanup(old.Close)
	f := RevocationFeed(old.URL, nil, 10*time.Millisecond)
	t.Cleanup(func() { f.(io.Closer).Close() })
	for range 20 {
		if err := f.Check(context.Background(), feedCaller("agt_gone")); !errors.Is(err, ErrRevoked) {
			t.Fatalf("err = %v, want ErrRevoked from a poll", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := streamAsks.Load(); n != 1 {
		t.Errorf("the stream was asked for %d times in 200ms, want once (then again after %v)", n, streamUnsupportedRetry)
	}
}

// TestReadEvents: the server-sent event format as the WHATWG spec has it.
func TestReadEvents(t *testing.T) {
	in := "\xef\xbb\xbfretry: 1000\n\n: hi\r\nid: 7\nevent: revocation\ndata: {\"a\":\ndata: 1}\n\ndata:x\n\nid: 8\nid\n\n"
	var got []sseEvent
	err := readEvents(strings.NewReader(in), func(e sseEvent) error { got = append(got, e); return nil })
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("end of stream: %v, want io.ErrUnexpectedEOF", err)
	}
	want := []sseEvent{
		{comment: true},
		{id: "7", event: "revocation", data: "{\"a\":\n1}"},
		{id: "7", data: "x"},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("events\n got %+v\nwant %+v", got, want)
	}
	long := "data: " + strings.Repeat("x", streamMaxLine) + "\n\n"
	if err := readEvents(strings.NewReader(long), func(sseEvent) error { return nil }); err == nil || errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("a line longer than %d bytes: %v, want an error", streamMaxLine, err)
	}
}

// FuzzReadEvents: any stream (the issuer, or whatever answers in its place) never panics the
// parser, and every event it yields has data.
func FuzzReadEvents(f *testing.F) {
	f.Add("id: 1\nevent: revocation\ndata: {\"kind\":\"task\",\"id\":\"tsk_1\",\"exp\":0}\n\n:\n\n")
	f.Add("retry: 1000\n\n: heartbeat\r\n\r\nid: 2\r\ndata: {}\r\n\r\n")
	f.Add("\xef\xbb\xbfdata\ndata:\n\nid: \x00\nevent\n\n")
	f.Add(strings.Repeat("data: x\n", 100))
	f.Fuzz(func(t *testing.T, in string) {
		_ = readEvents(strings.NewReader(in), func(e sseEvent) error {
			if !e.comment && strings.Contains(e.id, "\x00") {
				t.Fatalf("id with NUL: %q", e.id)
			}
			return nil
		})
	})
}
