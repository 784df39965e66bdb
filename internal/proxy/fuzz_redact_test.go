package proxy

import (
	"bytes"
	"io"
	"testing"
	"testing/iotest"
)

// FuzzRedact streams arbitrary upstream answers, in reads of any size, through the masking of
// echoed credentials: the output has the input's length, holds none of the credentials in any
// form an upstream may echo them in (echoedForms, written independently of the masker), differs
// from the input only by masked bytes, and equals masking the whole body at once.
func FuzzRedact(f *testing.F) {
	for _, seed := range []string{"", "sk_live_0123456789", "xsk_live_0123456789sk_live_0123456789y", "sk_live_012345678",
		"sk_live_01%2B3456789", "c2tfbGl2ZV8wMTIzNDU2Nzg5", "736b5f6c6976655f30313233343536373839", `"sk_live_01+3\/456789"`} {
		f.Add([]byte(seed), uint8(1))
	}
	secrets := []string{"sk_live_0123456789", "sk_live_01+3/456789"}
	m := newMasker(secrets)
	f.Fuzz(func(t *testing.T, body []byte, chunk uint8) {
		var src io.Reader = bytes.NewReader(body)
		if chunk%4 == 1 {
			src = iotest.OneByteReader(src)
		} else if chunk%4 == 2 {
			src = iotest.HalfReader(src)
		}
		got, err := io.ReadAll(newMaskingReader(io.NopCloser(src), m, nil))
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(body) {
			t.Fatalf("length %d, want %d", len(got), len(body))
		}
		for i := range got {
			if got[i] != body[i] && got[i] != maskByte {
				t.Fatalf("byte %d changed to %q", i, got[i])
			}
		}
		for _, s := range secrets {
			if form, ok := containsForm(got, s); ok {
				t.Fatalf("the form %q of %q survived in %q", form, s, got)
			}
		}
		if want := m.maskString(string(body)); string(got) != want {
			t.Fatalf("streamed %q, whole-body %q", got, want)
		}
	})
}
