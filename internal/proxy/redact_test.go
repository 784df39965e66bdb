package proxy

import (
	"bytes"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

func TestRedactingReader(t *testing.T) {
	secret := "sk_live_0123456789abcdef"
	mask := strings.Repeat("*", len(secret))
	tests := map[string]struct{ in, want string }{
		"no secret":          {"hello world", "hello world"},
		"one":                {`{"key":"` + secret + `"}`, `{"key":"` + mask + `"}`},
		"several":            {secret + " and " + secret, mask + " and " + mask},
		"at the end":         {"tail " + secret, "tail " + mask},
		"a prefix, not more": {"sk_live_0123 only", "sk_live_0123 only"},
		"query-escaped form": {"next=https%3A%2F%2Fx%3Fk%3D" + "sk_live_0123456789abcdef", "next=https%3A%2F%2Fx%3Fk%3D" + mask},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			// One byte at a time: every secret is split across reads.
			r := newRedactingReader(io.NopCloser(iotest.OneByteReader(strings.NewReader(tt.in))), []string{secret})
			got, err := io.ReadAll(r)
			if err != nil || string(got) != tt.want {
				t.Fatalf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
	// A large body streams through with the secret removed wherever the chunks fall.
	var in bytes.Buffer
	for i := 0; i < 20000; i++ {
		in.WriteString("filler filler filler ")
		if i%997 == 0 {
			in.WriteString(secret)
		}
	}
	size := in.Len()
	got, _ := io.ReadAll(newRedactingReader(io.NopCloser(&in), []string{secret}))
	if bytes.Contains(got, []byte(secret)) || !bytes.Contains(got, []byte(mask)) || len(got) != size {
		t.Fatal("the secret survived a large body")
	}
}
