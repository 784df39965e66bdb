package proxy

import (
	"bytes"
	"io"
	"testing"
	"testing/iotest"
)

// FuzzRedact streams arbitrary upstream answers, in reads of any size, through the masking of
// echoed credentials: the output has the input's length, holds no secret, and equals masking
// the whole body at once.
func FuzzRedact(f *testing.F) {
	for _, seed := range []string{"", "sk_live_0123456789", "xsk_live_0123456789sk_live_0123456789y", "sk_live_012345678", "sk_live_01%2B3456789"} {
		f.Add([]byte(seed), uint8(1))
	}
	secrets := []string{"sk_live_0123456789", "sk_live_01%2B3456789"}
	f.Fuzz(func(t *testing.T, body []byte, chunk uint8) {
		var src io.Reader = bytes.NewReader(body)
		if chunk%4 == 1 {
			src = iotest.OneByteReader(src)
		} else if chunk%4 == 2 {
			src = iotest.HalfReader(src)
		}
		got, err := io.ReadAll(newRedactingReader(io.NopCloser(src), secrets))
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(body) {
			t.Fatalf("length %d, want %d", len(got), len(body))
		}
		for _, s := range secrets {
			if bytes.Contains(got, []byte(s)) {
				t.Fatalf("secret %q survived in %q", s, got)
			}
		}
		if want := redactSecrets(string(body), secrets); string(got) != want {
			t.Fatalf("streamed %q, whole-body %q", got, want)
		}
	})
}
