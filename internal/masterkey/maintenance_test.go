package masterkey_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"math/big"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/masterkey"
	"github.com/mandate-dev/mandate/internal/sqlstore"
	"github.com/mandate-dev/mandate/internal/vault"
)

func envelopes(t *testing.T, keys ...[]byte) *vault.Envelopes {
	t.Helper()
	return vault.NewEnvelopes(mustRing(t, keys...))
}

// A server writing while the rotation re-wraps loses nothing: a row changed between the
// re-wrap's read and its write keeps the new value, and is re-wrapped in a later pass.
func TestVaultRewrapConcurrentWriter(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := sqlstore.Open(ctx, filepath.Join(dir, "mandate.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	keyA, keyB := newMasterKey(t), newMasterKey(t)
	krA, krB := envelopes(t, keyA), envelopes(t, keyB, keyA)
	const rows = 3*masterkey.Batch + 11
	name := func(i int) string { return fmt.Sprintf("u%03d", i) }
	put := func(kr *vault.Envelopes, i int, value string) {
		blob, err := kr.Seal(name(i), vault.SecretCredential, []byte(value))
		if err == nil {
			err = st.PutSecret(ctx, name(i), vault.SecretCredential, blob, time.Time{}, audit.New(time.Now(), "", vault.ActionSecretSet))
		}
		if err != nil {
			t.Error(err)
		}
	}
	want := map[int]string{}
	for i := range rows {
		u := vault.Upstream{Name: name(i), BaseURL: "https://x.example", Auth: vault.AuthBearer, CreatedAt: time.Now(), UpdatedAt: time.Now()}
		if err := st.CreateUpstream(ctx, u, audit.New(time.Now(), "", vault.ActionUpstreamCreate)); err != nil {
			t.Fatal(err)
		}
		want[i] = fmt.Sprintf("v0-%d", i)
		put(krA, i, want[i])
	}
	keyPath := filepath.Join(dir, "master.key")
	if err := masterkey.Write(keyPath, keysOf(keyB, keyA)); err != nil {
		t.Fatal(err)
	}

	// Deterministic: between reading the first page and writing it back, a server that has not
	// reloaded rewrites three of its rows with key A.
	v := &masterkey.Maintenance{Path: keyPath, Store: st}
	first := true
	var mu sync.Mutex
	v.BeforeWrite = func() {
		if !first {
			return
		}
		first = false
		mu.Lock()
		defer mu.Unlock()
		for i := range 3 {
			want[i] = fmt.Sprintf("hook-%d", i)
			put(krA, i, want[i])
		}
	}
	// And at random: a writer rewriting rows with either key all along.
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for n := 0; ; n++ {
			select {
			case <-stop:
				return
			default:
			}
			r, _ := rand.Int(rand.Reader, big.NewInt(rows))
			i := int(r.Int64())
			kr := krA
			if n%2 == 1 {
				kr = krB
			}
			value := fmt.Sprintf("w%d-%d", n, i)
			mu.Lock()
			want[i] = value
			put(kr, i, value)
			mu.Unlock()
		}
	}()
	_, stats, err := v.Rewrap(ctx)
	close(stop)
	<-done
	// A writer that never pauses may keep every pass from finishing clean: the re-wrap then
	// says to run it again, and has still lost nothing.
	if err != nil && !errors.Is(err, masterkey.ErrKeptChanging) {
		t.Fatalf("rewrap: %v", err)
	}
	// How many rows this pass re-wrapped depends on the writer (a row it rewrote with key B
	// needs none); that nothing is lost and nothing stays under A is checked below.
	if stats.Secrets == 0 {
		t.Errorf("re-wrapped no rows")
	}
	check := func() (byA int) {
		t.Helper()
		for i := range rows {
			sealed, _, _, err := st.GetSecret(ctx, name(i), vault.SecretCredential)
			if err != nil {
				t.Fatal(err)
			}
			got, err := krB.Open(name(i), vault.SecretCredential, sealed)
			if err != nil || string(got) != want[i] {
				t.Errorf("%s = %q, %v; want %q (a write was lost)", name(i), got, err, want[i])
			}
			if vault.WrappedBy(sealed) == masterkey.ID(keyA) {
				byA++
			}
		}
		return byA
	}
	check()
	for i := range 3 {
		if want[i] == fmt.Sprintf("v0-%d", i) {
			t.Errorf("the hook did not run for %s", name(i))
		}
	}
	// With the writer gone, one more re-wrap leaves nothing under A.
	if _, _, err := v.Rewrap(ctx); err != nil {
		t.Fatal(err)
	}
	if byA := check(); byA != 0 {
		t.Errorf("%d rows still wrapped by A after the second re-wrap", byA)
	}
	if err := st.VerifyChain(ctx); err != nil {
		t.Errorf("VerifyChain: %v", err)
	}
}
