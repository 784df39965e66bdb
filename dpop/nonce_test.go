package dpop

import (
	"strings"
	"testing"
	"time"
)

func TestNonces(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	now := time.Unix(1_700_000_000, 0).Truncate(time.Minute)
	clock := func() time.Time { return now }
	n := NewNonces(secret, time.Minute, clock)

	first := n.Current()
	if !n.Valid(first) {
		t.Fatal("current nonce is not valid")
	}
	if n.Current() != first {
		t.Error("nonce changed within one window")
	}
	now = now.Add(time.Minute)
	second := n.Current()
	if second == first {
		t.Error("nonce did not rotate")
	}
	if !n.Valid(first) || !n.Valid(second) {
		t.Error("nonce of the previous window is not valid")
	}
	now = now.Add(time.Minute)
	if n.Valid(first) {
		t.Error("nonce two windows old is still valid")
	}
	if !n.Valid(second) {
		t.Error("nonce of the previous window is not valid")
	}
	// Nonces from the future are as suspect as old ones.
	now = now.Add(-3 * time.Minute)
	if n.Valid(second) {
		t.Error("nonce of a later window is valid")
	}
	now = now.Add(3 * time.Minute)

	cur := n.Current()
	other := NewNonces([]byte("another secret, at least 16 bytes"), time.Minute, clock)
	forged := []byte(cur)
	forged[len(forged)-1] ^= 1
	for name, s := range map[string]string{
		"other secret":      other.Current(),
		"flipped bit":       string(forged),
		"empty":             "",
		"truncated":         cur[:len(cur)-1],
		"extended":          cur + "A",
		"padding":           cur[:len(cur)-1] + "=",
		"not base64":        strings.Repeat("*", len(cur)),
		"counter only":      cur[:11],
		"RFC example nonce": "eyJ7S_zG.eyJH0-Z.HX4w-7v",
	} {
		if n.Valid(s) {
			t.Errorf("%s: Valid(%q) = true", name, s)
		}
	}
}

func TestNewNoncesRejectsWeakConfig(t *testing.T) {
	for name, f := range map[string]func(){
		"short secret": func() { NewNonces(make([]byte, 15), time.Minute, nil) },
		"zero period":  func() { NewNonces(make([]byte, 32), 0, nil) },
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Error("did not panic")
				}
			}()
			f()
		})
	}
}
