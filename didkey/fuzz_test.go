package didkey

import (
	"errors"
	"strings"
	"testing"
)

// FuzzParse checks that Parse never panics, that every refusal matches
// ErrInvalid, and that whatever it accepts formats back to the same string
// (less a verification-method fragment) and survives the JWK round trip.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp",
		"did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp#z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp",
		"did:key:zDnaerx9CtbPJ1q36T5Ln5wYt3MQYeGRG5ehnPAmxcf5mDZpv",
		"did:key:zDnaerDaTF5BXEavCrfRZEk316dpbLsfPDZ3WJ5hRTPFU2169",
		"did:key:z6LShs9GGnqk85isEBzzshkuVWrVKsRp24GnDuHk8QWkARMW",
		"did:key:z82Lm1MpAkeJcix9K8TMiLd5NMAhnwkjjCBeWHXyu3U4oT2MVJJKXkcVBgjGhnLBn2Kaau9",
		"did:key:",
		"did:key:z",
		"did:key:z1111",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		pub, err := Parse(s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Parse(%q) error %v does not match ErrInvalid", s, err)
			}
			return
		}
		want, _, _ := strings.Cut(s, "#")
		got, err := Format(pub)
		if err != nil {
			t.Fatalf("Format(Parse(%q)): %v", s, err)
		}
		if got != want {
			t.Fatalf("Format(Parse(%q)) = %q", s, got)
		}
		jwk, err := JWK(pub)
		if err != nil {
			t.Fatalf("JWK: %v", err)
		}
		if back, err := FromJWK(jwk); err != nil || back != want {
			t.Fatalf("FromJWK(JWK(Parse(%q))) = %q, %v", s, back, err)
		}
	})
}
