package token_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/masterkey"
	"github.com/mandate-dev/mandate/internal/sqlstore"
	"github.com/mandate-dev/mandate/internal/token"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func setup(t *testing.T, alg string) (*token.Keys, *sqlstore.Store, *clock, []byte) {
	st, err := sqlstore.Open(context.Background(), filepath.Join(t.TempDir(), "m.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	_, keys, _, err := masterkey.Open(filepath.Join(t.TempDir(), "master.key"), nil)
	if err != nil {
		t.Fatal(err)
	}
	master := keys[0].Secret
	ring, err := masterkey.NewKeyring(master)
	if err != nil {
		t.Fatal(err)
	}
	clk := &clock{t: time.Now()}
	k, err := token.NewKeys(token.KeysConfig{Store: st, Sealer: ring, Alg: alg, PublishDelay: 10 * time.Minute, MaxTokenTTL: 5 * time.Minute, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Ensure(context.Background()); err != nil {
		t.Fatal(err)
	}
	return k, st, clk, master
}

func signingKID(t *testing.T, k *token.Keys) string {
	raw, err := k.Sign(context.Background(), token.TypeAccessToken, map[string]any{"x": 1})
	if err != nil {
		t.Fatal(err)
	}
	jws, err := jose.ParseSigned(raw, []jose.SignatureAlgorithm{jose.EdDSA, jose.ES256})
	if err != nil {
		t.Fatal(err)
	}
	return jws.Signatures[0].Protected.KeyID
}

func published(t *testing.T, k *token.Keys) []string {
	set, err := k.JWKS(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var kids []string
	for _, key := range set.Keys {
		kids = append(kids, key.KeyID)
	}
	return kids
}

// TestRotatePublishThenSign: a new key is published before it signs, and the old one stays
// published until the last token it signed has expired.
func TestRotatePublishThenSign(t *testing.T) {
	for _, alg := range []string{token.AlgEdDSA, token.AlgES256} {
		t.Run(alg, func(t *testing.T) {
			k, _, clk, _ := setup(t, alg)
			old := signingKID(t, k)
			ev := audit.New(clk.Now(), "", audit.ActionKeyRotate)
			nk, err := k.Rotate(context.Background(), ev)
			if err != nil {
				t.Fatal(err)
			}
			if got := published(t, k); len(got) != 2 {
				t.Fatalf("after rotate JWKS = %v, want old and new", got)
			}
			if got := signingKID(t, k); got != old {
				t.Fatalf("signs with %s right after rotate, want the old key %s until the publish delay passes", got, old)
			}
			clk.Add(10*time.Minute + time.Second)
			if got := signingKID(t, k); got != nk.KID {
				t.Fatalf("after the publish delay signs with %s, want %s", got, nk.KID)
			}
			if got := published(t, k); len(got) != 2 {
				t.Fatalf("old key left the JWKS while its tokens live: %v", got)
			}
			clk.Add(5*time.Minute + time.Second)
			if got := published(t, k); len(got) != 1 || got[0] != nk.KID {
				t.Fatalf("after the old key's last token expired JWKS = %v, want only %s", got, nk.KID)
			}
			if _, err := k.PublicKey(context.Background(), old); err == nil {
				t.Error("the retired key still verifies")
			}
		})
	}
}

// TestPrivateKeysSealed: the store never holds a private key in the clear, and another master
// key cannot open it.
func TestPrivateKeysSealed(t *testing.T) {
	_, st, clk, _ := setup(t, token.AlgEdDSA)
	rows, err := st.ListSigningKeys(context.Background(), clk.Now())
	if err != nil || len(rows) != 1 {
		t.Fatalf("keys: %v %v", rows, err)
	}
	if _, err := x509.ParsePKCS8PrivateKey(rows[0].Private); err == nil {
		t.Fatal("the stored private key parses as PKCS#8: it is not sealed")
	}
	other, err := masterkey.NewKeyring(bytes.Repeat([]byte{7}, masterkey.Size))
	if err != nil {
		t.Fatal(err)
	}
	k2, err := token.NewKeys(token.KeysConfig{Store: st, Sealer: other, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	if err := k2.Ensure(context.Background()); err == nil || !strings.Contains(err.Error(), "wrong master key") {
		t.Fatalf("opening with another master key: %v, want a wrong master key error", err)
	}
}
