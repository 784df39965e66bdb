package proxy

import (
	"bufio"
	"io"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const gib = 1 << 30

var pattern = func() (p [4096]byte) {
	for i := range p {
		p[i] = byte(i * 7)
	}
	return p
}()

// patternReader yields n bytes of a fixed pattern without holding them.
type patternReader struct{ left int64 }

func (r *patternReader) Read(b []byte) (int, error) {
	if r.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(b)) > r.left {
		b = b[:r.left]
	}
	n := 0
	for n < len(b) {
		n += copy(b[n:], pattern[:])
	}
	r.left -= int64(len(b))
	return len(b), nil
}

// memSampler records the peak heap in use and resident set size while it runs.
type memSampler struct {
	stop              chan struct{}
	done              sync.WaitGroup
	peakHeap, peakRSS atomic.Uint64
	baseHeap, baseRSS uint64
}

func vmRSS() uint64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func heapInuse() uint64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

func startSampler() *memSampler {
	runtime.GC()
	s := &memSampler{stop: make(chan struct{}), baseHeap: heapInuse(), baseRSS: vmRSS()}
	s.peakHeap.Store(s.baseHeap)
	s.peakRSS.Store(s.baseRSS)
	s.done.Add(1)
	go func() {
		defer s.done.Done()
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-t.C:
				if h := heapInuse(); h > s.peakHeap.Load() {
					s.peakHeap.Store(h)
				}
				if r := vmRSS(); r > s.peakRSS.Load() {
					s.peakRSS.Store(r)
				}
			}
		}
	}()
	return s
}

func (s *memSampler) finish(t *testing.T, what string) {
	close(s.stop)
	s.done.Wait()
	heap := int64(s.peakHeap.Load()) - int64(s.baseHeap)
	rss := int64(s.peakRSS.Load()) - int64(s.baseRSS)
	t.Logf("%s: peak heap growth %.1f MiB, peak RSS growth %.1f MiB", what, float64(heap)/(1<<20), float64(rss)/(1<<20))
	const limit = 64 << 20
	if heap >= limit {
		t.Errorf("%s: heap grew by %d MiB, want < 64 MiB", what, heap>>20)
	}
	if s.baseRSS > 0 && rss >= limit {
		t.Errorf("%s: RSS grew by %d MiB, want < 64 MiB", what, rss>>20)
	}
}

// TestStreaming1GiB sends a 1 GiB upload and a 1 GiB download through the proxy; the process
// (client, proxy and upstream together) must not grow by 64 MiB.
func TestStreaming1GiB(t *testing.T) {
	if testing.Short() {
		t.Skip("1 GiB each way; skipped with -short")
	}
	e := newEnv(t)
	var received atomic.Int64
	e.setUpstreamHandler(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodPost:
			n, err := io.Copy(io.Discard, r.Body)
			received.Store(n)
			if err != nil {
				http.Error(w, err.Error(), 500)
				return
			}
			w.WriteHeader(http.StatusNoContent)
		case http.MethodGet:
			// chunked: no Content-Length
			_, _ = io.Copy(w, &patternReader{left: gib})
		}
	})

	// Warm up the connections and the verifier, so the baseline includes them.
	if resp, body := e.do(e.request("POST", "/proxy/api/upload", e.token(tokenOpts{scope: "api:write"}), strings.NewReader("warm"))); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("warm-up: %d %s", resp.StatusCode, body)
	}

	t.Run("upload", func(t *testing.T) {
		s := startSampler()
		req := e.request("POST", "/proxy/api/upload", e.token(tokenOpts{scope: "api:write"}), io.NopCloser(&patternReader{left: gib}))
		req.ContentLength = gib
		start := time.Now()
		resp, body := e.do(req)
		elapsed := time.Since(start)
		s.finish(t, "upload")
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		if got := received.Load(); got != gib {
			t.Errorf("upstream received %d bytes", got)
		}
		t.Logf("upload: %.0f MiB/s", gib/(1<<20)/elapsed.Seconds())
		if ev := e.audit.last(t); !strings.Contains(ev.Detail, "in "+strconv.Itoa(gib)+" B") {
			t.Errorf("audit detail %q", ev.Detail)
		}
	})
	t.Run("download", func(t *testing.T) {
		s := startSampler()
		resp, err := e.client.Do(e.request("GET", "/proxy/api/items/big", e.token(tokenOpts{scope: "api:read"}), nil))
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		elapsed := time.Since(start)
		s.finish(t, "download")
		if err != nil || n != gib {
			t.Fatalf("read %d bytes: %v", n, err)
		}
		t.Logf("download: %.0f MiB/s", gib/(1<<20)/elapsed.Seconds())
		deadline := time.Now().Add(2 * time.Second)
		for {
			ev := e.audit.last(t)
			if strings.Contains(ev.Detail, "out "+strconv.Itoa(gib)+" B") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("audit detail %q", ev.Detail)
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
}
