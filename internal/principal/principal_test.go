package principal_test

import (
	"context"
	"math/rand/v2"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/principal"
	"github.com/mandate-dev/mandate/internal/sqlstore"
)

// fixture is the principal service on a real SQLite store, with a clock the test moves and a
// count of the "bootstrap token spent" notices.
type fixture struct {
	svc   *principal.Service
	store *sqlstore.Store
	now   time.Time
	spent atomic.Int32
	boot  string // the bootstrap token's secret
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	st, err := sqlstore.Open(context.Background(), filepath.Join(t.TempDir(), "m.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	f := &fixture{store: st, now: time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)}
	f.svc = principal.New(st, func() time.Time { return f.now })
	f.svc.OnBootstrapSpent(func(context.Context) { f.spent.Add(1) })
	created, err := f.svc.Bootstrap(t.Context(), func(secret string) (func(), error) {
		f.boot = secret
		return func() {}, nil
	})
	if err != nil || !created {
		t.Fatalf("Bootstrap = %v, %v", created, err)
	}
	return f
}

func reason(err error) string {
	if de, ok := apperr.As(err); ok {
		return de.Reason
	}
	if err != nil {
		return "error: " + err.Error()
	}
	return ""
}

// TestBootstrapToken: the bootstrap token's known cases, at the domain level.
func TestBootstrapToken(t *testing.T) {
	tests := map[string]struct {
		before     func(t *testing.T, f *fixture)
		auth       string // Authenticate's refusal reason
		login      string // Login's refusal reason; "" = exchanged
		spentCalls int32  // notices during the two calls
	}{
		"fresh": {func(*testing.T, *fixture) {}, "bootstrap_only", "", 1},
		"a second before expiry": {func(_ *testing.T, f *fixture) { f.now = f.now.Add(principal.BootstrapTTL - time.Second) },
			"bootstrap_only", "", 1},
		"expired": {func(_ *testing.T, f *fixture) { f.now = f.now.Add(principal.BootstrapTTL) },
			"bootstrap_spent", "bootstrap_spent", 2},
		"used": {func(t *testing.T, f *fixture) {
			if _, next, _, err := f.svc.Login(t.Context(), "", f.boot, "first"); err != nil || next == nil {
				t.Fatalf("first Login = %v, %v", next, err)
			}
			f.spent.Store(0)
		}, "bootstrap_spent", "bootstrap_spent", 2},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t)
			tt.before(t, f)
			_, err := f.svc.Authenticate(t.Context(), f.boot)
			if got := reason(err); got != tt.auth {
				t.Errorf("Authenticate refusal %q, want %q", got, tt.auth)
			}
			u, next, secret, err := f.svc.Login(t.Context(), "", f.boot, "login host 2026-12-03")
			if got := reason(err); got != tt.login {
				t.Fatalf("Login refusal %q, want %q", got, tt.login)
			}
			if n := f.spent.Load(); n != tt.spentCalls {
				t.Errorf("spent notices %d, want %d", n, tt.spentCalls)
			}
			if tt.login != "" {
				return
			}
			if next == nil || next.Name != "login host 2026-12-03" || next.Bootstrap || !next.ExpiresAt.IsZero() || !u.Admin {
				t.Fatalf("Login = %+v, %+v", u, next)
			}
			if got, err := f.svc.Authenticate(t.Context(), secret); err != nil || got.ID != u.ID {
				t.Errorf("the new token: %+v, %v", got, err)
			}
		})
	}
}

// TestOrdinaryTokenLogin: Login answers an ordinary token with its user and makes nothing.
func TestOrdinaryTokenLogin(t *testing.T) {
	f := newFixture(t)
	_, next, secret, err := f.svc.Login(t.Context(), "", f.boot, "")
	if err != nil {
		t.Fatal(err)
	}
	u, again, _, err := f.svc.Login(t.Context(), "", secret, "ignored")
	if err != nil || again != nil || !u.Admin {
		t.Fatalf("Login with an ordinary token = %+v, %+v, %v", u, again, err)
	}
	toks, _ := f.store.ListAPITokens(t.Context(), u.ID)
	if len(toks) != 2 || next.Name == "" {
		t.Errorf("tokens after logins: %+v (default name %q)", toks, next.Name)
	}
	for _, bad := range []string{"", "mnd_", "mnd_unknown", "xyz_" + secret[4:], secret + "x"} {
		if _, _, _, err := f.svc.Login(t.Context(), "", bad, ""); reason(err) != "bad_token" {
			t.Errorf("Login(%q) refusal %q, want bad_token", bad, reason(err))
		}
	}
}

// TestBootstrapTokenProperty states the promise over random sequences of what callers do: the
// bootstrap token never authenticates a management call, Login exchanges it at most once and
// only before it expires, and every token Login gives out works until the test ends.
func TestBootstrapTokenProperty(t *testing.T) {
	for seed := range uint64(40) {
		f := newFixture(t)
		rng := rand.New(rand.NewPCG(seed, 3))
		start := f.now
		exchanged := 0
		var issued []string
		for range 12 {
			switch rng.IntN(4) {
			case 0:
				if _, err := f.svc.Authenticate(t.Context(), f.boot); err == nil {
					t.Fatalf("seed %d: the bootstrap token authenticated", seed)
				}
			case 1:
				_, next, secret, err := f.svc.Login(t.Context(), "", f.boot, "")
				usable := exchanged == 0 && f.now.Before(start.Add(principal.BootstrapTTL))
				if (err == nil && next != nil) != usable {
					t.Fatalf("seed %d: Login at +%v after %d exchanges = %v, %v", seed, f.now.Sub(start), exchanged, next, err)
				}
				if err == nil {
					exchanged++
					issued = append(issued, secret)
				}
			case 2:
				f.now = f.now.Add(time.Duration(rng.IntN(16)) * time.Hour)
			case 3:
				for _, s := range issued {
					if _, err := f.svc.Authenticate(t.Context(), s); err != nil {
						t.Fatalf("seed %d: a token from Login stopped working: %v", seed, err)
					}
				}
			}
		}
	}
}
