package federation_test

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/federation"
	"github.com/mandate-dev/mandate/internal/federation/oidctest"
	"github.com/mandate-dev/mandate/internal/principal"
)

// memStore is an in-memory federation.Store: rules are listed in the order they were created.
type memStore struct {
	mu      sync.Mutex
	issuers map[string]federation.Issuer
	rules   []federation.Rule
	events  []audit.Event
}

func newMemStore() *memStore { return &memStore{issuers: map[string]federation.Issuer{}} }

func (m *memStore) record(ev audit.Event) {
	ev.Outcome = audit.OutcomeSuccess
	m.events = append(m.events, ev)
}

func (m *memStore) CreateIssuer(_ context.Context, is federation.Issuer, ev audit.Event) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.issuers[is.URL]; ok {
		return federation.ErrExists
	}
	m.issuers[is.URL] = is
	m.record(ev)
	return nil
}

func (m *memStore) GetIssuer(_ context.Context, url string) (federation.Issuer, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	is, ok := m.issuers[url]
	if !ok {
		return federation.Issuer{}, federation.ErrNotFound
	}
	return is, nil
}

func (m *memStore) ListIssuers(context.Context) ([]federation.Issuer, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []federation.Issuer
	for _, is := range m.issuers {
		out = append(out, is)
	}
	slices.SortFunc(out, func(a, b federation.Issuer) int { return strings.Compare(a.URL, b.URL) })
	return out, nil
}

func (m *memStore) RemoveIssuer(_ context.Context, url string, ev audit.Event) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.issuers[url]; !ok {
		return federation.ErrNotFound
	}
	delete(m.issuers, url)
	m.rules = slices.DeleteFunc(m.rules, func(r federation.Rule) bool { return r.Issuer == url })
	m.record(ev)
	return nil
}

func (m *memStore) CreateRule(_ context.Context, r federation.Rule, ev audit.Event) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.issuers[r.Issuer]; !ok {
		return federation.ErrNotFound
	}
	m.rules = append(m.rules, r)
	m.record(ev)
	return nil
}

func (m *memStore) GetRule(_ context.Context, id string) (federation.Rule, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, r := range m.rules {
		if r.ID == id {
			return r, nil
		}
	}
	return federation.Rule{}, federation.ErrNotFound
}

func (m *memStore) ListRules(_ context.Context, issuer string) ([]federation.Rule, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []federation.Rule
	for _, r := range m.rules {
		if issuer == "" || r.Issuer == issuer {
			out = append(out, r)
		}
	}
	return out, nil
}

func (m *memStore) SetRuleDisabled(_ context.Context, id string, disabled bool, ev audit.Event) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range m.rules {
		if m.rules[i].ID == id {
			m.rules[i].Disabled = disabled
			m.record(ev)
			return nil
		}
	}
	return federation.ErrNotFound
}

func (m *memStore) Events() []audit.Event {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.events)
}

// memAccounts holds service accounts by id and name.
type memAccounts struct {
	mu       sync.Mutex
	accounts []principal.ServiceAccount
}

func (m *memAccounts) GetServiceAccount(_ context.Context, ref string) (principal.ServiceAccount, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, a := range m.accounts {
		if a.ID == ref || a.Name == ref {
			return a, nil
		}
	}
	return principal.ServiceAccount{}, principal.ErrNotFound
}

func (m *memAccounts) add(name string) principal.ServiceAccount {
	m.mu.Lock()
	defer m.mu.Unlock()
	a := principal.ServiceAccount{ID: "svc_" + name, Name: name, OwnerID: "usr_admin"}
	m.accounts = append(m.accounts, a)
	return a
}

func (m *memAccounts) setDisabled(name string, disabled bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range m.accounts {
		if m.accounts[i].Name == name {
			m.accounts[i].Disabled = disabled
		}
	}
}

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// start is the test clock's first reading.
var start = time.Unix(1_800_000_000, 0)

var (
	admin  = principal.User{ID: "usr_admin", Name: "admin", Admin: true}
	notAdm = principal.User{ID: "usr_bob", Name: "bob"}
)

// env is a federation.Service on in-memory stores and a test clock.
type env struct {
	t        testing.TB
	svc      *federation.Service
	store    *memStore
	accounts *memAccounts
	clock    *clock
}

func newEnv(t testing.TB) *env {
	e := &env{t: t, store: newMemStore(), accounts: &memAccounts{}, clock: &clock{t: start}}
	e.accounts.add("ci-deploy")
	e.svc = federation.New(federation.Config{
		Store: e.store, ServiceAccounts: e.accounts, Now: e.clock.Now,
		Log: slog.New(slog.DiscardHandler),
	})
	return e
}

// newIssuer starts a test issuer on the env's clock.
func (e *env) newIssuer(opts ...oidctest.Option) *oidctest.Issuer {
	return oidctest.New(e.t, append([]oidctest.Option{oidctest.WithClock(e.clock.Now)}, opts...)...)
}

func (e *env) addIssuer(is federation.Issuer) federation.Issuer {
	e.t.Helper()
	got, err := e.svc.AddIssuer(context.Background(), "req_test", admin, is)
	if err != nil {
		e.t.Fatalf("AddIssuer(%s): %v", is.URL, err)
	}
	return got
}

// addRule adds r, defaulting the service account (ci-deploy) and scopes (deploy).
func (e *env) addRule(r federation.Rule) federation.Rule {
	e.t.Helper()
	if r.ServiceAccount == "" {
		r.ServiceAccount = "ci-deploy"
	}
	if r.Scopes == nil {
		r.Scopes = []string{"deploy"}
	}
	got, err := e.svc.AddRule(context.Background(), "req_test", admin, r)
	if err != nil {
		e.t.Fatalf("AddRule: %v", err)
	}
	return got
}

// match runs Match and returns the refusal reason, or "" on success.
func (e *env) match(assertion string) (federation.Match, string) {
	e.t.Helper()
	m, err := e.svc.Match(context.Background(), assertion)
	if err == nil {
		return m, ""
	}
	var ref *federation.Refusal
	if !errors.As(err, &ref) {
		e.t.Fatalf("Match: internal error %v", err)
	}
	return m, ref.Reason
}

func kindOf(err error) (apperr.Kind, bool) {
	ae, ok := apperr.As(err)
	if !ok {
		return 0, false
	}
	return ae.Kind, true
}
