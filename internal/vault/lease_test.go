package vault_test

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/pgtest"
	"github.com/mandate-dev/mandate/internal/sqlstore"
	"github.com/mandate-dev/mandate/internal/vault"
)

// busyLeases is the store's leases, closing busy the first time a lease is refused.
type busyLeases struct {
	*sqlstore.Store
	busy func()
}

func (l busyLeases) TakeRefreshLease(ctx context.Context, upstream, holder string, now time.Time, ttl time.Duration) (bool, error) {
	held, err := l.Store.TakeRefreshLease(ctx, upstream, holder, now, ttl)
	if err == nil && !held {
		l.busy()
	}
	return held, err
}

func TestRefreshLeaseSQLite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.db")
	testRefreshLease(t, path)
}

func TestRefreshLeasePostgres(t *testing.T) {
	pgtest.BaseURL(t)
	testRefreshLease(t, pgtest.URL(t))
}

// Two replicas (two vault services, each with its own store, on one database) find the access
// token of an OAuth upstream expired at once, with many calls each: the token endpoint is
// called once, by the replica holding the lease, after its pending audit record; the other
// waits and injects the token that replica stored. The endpoint holds its answer until a
// replica has been refused the lease, so the refreshes do overlap.
func testRefreshLease(t *testing.T, dsn string) {
	ctx := t.Context()
	open := func() *sqlstore.Store {
		st, err := sqlstore.Open(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	}
	stA, stB := open(), open()
	ring := mustKeyring(t, randomKey(t))
	clk := &clock{now: time.Now().UTC()}
	busy, second := make(chan struct{}), make(chan struct{})
	var busyOnce, secondOnce sync.Once
	replica := func(st *sqlstore.Store) *vault.Service {
		return vault.New(vault.Config{Store: st, Keyring: ring.keys, Audit: st, Now: clk.Now,
			Leases: busyLeases{Store: st, busy: func() { busyOnce.Do(func() { close(busy) }) }}})
	}
	a, b := replica(stA), replica(stB)

	for _, auth := range []vault.AuthKind{vault.AuthOAuth2ClientCredentials, vault.AuthOAuth2Refresh} {
		t.Run(string(auth), func(t *testing.T) {
			name := "lease-" + string(auth)[len("oauth2-"):]
			ts := newTokenServer(t, "rt-0")
			secrets := map[string]string{vault.SecretClientSecret: "client-secret"}
			if auth == vault.AuthOAuth2Refresh {
				secrets[vault.SecretRefreshToken] = "rt-0"
			}
			u := addOAuth(t, a, name, auth, ts.URL, secrets)
			if got := injected(t, a, u); got != "at-1" {
				t.Fatalf("first token = %q", got)
			}
			pending := func() int {
				t.Helper()
				evs, err := stA.ListEvents(context.WithoutCancel(ctx), audit.Filter{Action: vault.ActionTokenRefresh, Limit: 1000})
				if err != nil {
					t.Fatal(err)
				}
				n := 0
				for _, ev := range evs {
					if ev.Target == name && ev.Outcome == audit.OutcomePending {
						n++
					}
				}
				return n
			}
			before := pending()
			pendingAtCall := -1
			ts.hook = func(n int) {
				switch n {
				case 2: // the refresh: answer once the other replica was refused the lease
					pendingAtCall = pending()
					select {
					case <-busy:
					case <-second: // a second refresh: the lease failed, and the test says so
					}
				case 3:
					secondOnce.Do(func() { close(second) })
				}
			}
			// Both replicas' caches and the stored token are past expiry.
			clk.Advance(2 * time.Hour)
			var wg sync.WaitGroup
			var mu sync.Mutex
			got := map[string]int{}
			for i := range 20 {
				svc := a
				if i%2 == 1 {
					svc = b
				}
				wg.Go(func() {
					tok := injected(t, svc, u)
					mu.Lock()
					got[tok]++
					mu.Unlock()
				})
			}
			wg.Wait()
			if n := ts.callCount(); n != 2 {
				t.Errorf("token endpoint called %d times, want 2 (the first token and one refresh)", n)
			}
			if len(got) != 1 || got["at-2"] != 20 {
				t.Errorf("injected %v, want at-2 on every call of both replicas", got)
			}
			if pendingAtCall != before+1 || pending() != before+1 {
				t.Errorf("pending refresh records: %d before, %d when the endpoint was called, %d after; want one more, written before the call",
					before, pendingAtCall, pending())
			}
			// The lease was given back: anyone takes it at once.
			if held, err := stB.TakeRefreshLease(ctx, name, "probe", clk.Now(), time.Minute); err != nil || !held {
				t.Errorf("the lease was not released: %v, %v", held, err)
			}
		})
		busy, second = make(chan struct{}), make(chan struct{})
		busyOnce, secondOnce = sync.Once{}, sync.Once{}
	}
}
