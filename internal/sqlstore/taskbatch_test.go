package sqlstore

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/dpop"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/delegation"
	"github.com/mandate-dev/mandate/internal/ids"
	"github.com/mandate-dev/mandate/internal/principal"
	"github.com/mandate-dev/mandate/internal/registry"
	"github.com/mandate-dev/mandate/internal/token"
)

// taskFixture is a user and an agent with grants and parent tasks in every state.
type taskFixture struct {
	user, agent               string
	grantActive, grantRevoked string
	parentActive, parentEnded string
	now                       time.Time
	newEvent                  func(action string) audit.Event
	grantOf                   map[string]string // parent task → its grant
	createTask                func(s *Store, grant, parent, agent, marker string, uses []token.SingleUse) error
}

func newTaskFixture(t testing.TB, s *Store) *taskFixture {
	ctx := t.Context()
	now := time.Now().UTC()
	f := &taskFixture{now: now, grantOf: map[string]string{}}
	f.newEvent = func(action string) audit.Event {
		e := audit.New(now, ids.New("req"), action)
		e.ActorType = audit.ActorSystem
		return e
	}
	u := principal.User{ID: ids.New("usr"), Name: "erin-" + ids.New("n"), CreatedAt: now}
	if err := s.CreateUser(ctx, u, f.newEvent(audit.ActionUserCreate)); err != nil {
		t.Fatal(err)
	}
	a := registry.Agent{ID: ids.New("agt"), Handle: "bot-" + ids.New("h")[4:12], Status: registry.StatusUnclaimed, CreatedAt: now,
		Keys: []registry.Key{{DID: "did:key:z" + ids.New("k"), JKT: ids.New("jkt"), CreatedAt: now}}}
	if err := s.CreateAgent(ctx, a, registry.ClaimCode{Hash: ids.Hash(ids.Secret("clm")), ExpiresAt: now.Add(time.Hour)}, f.newEvent(audit.ActionAgentRegister)); err != nil {
		t.Fatal(err)
	}
	f.user, f.agent = u.ID, a.ID
	newGrant := func() string {
		g := delegation.Grant{ID: ids.New("gr"), PrincipalID: u.ID, AgentID: a.ID, Scopes: []string{"read"},
			Limits: delegation.Limits{MaxTaskTTL: time.Hour, MaxTokenTTL: time.Minute, MaxDepth: 3},
			Status: delegation.GrantActive, CreatedAt: now, ExpiresAt: now.Add(24 * time.Hour)}
		if err := s.CreateGrant(ctx, g, f.newEvent(delegation.ActionGrantCreate)); err != nil {
			t.Fatal(err)
		}
		return g.ID
	}
	f.createTask = func(s *Store, grant, parent, agent, marker string, uses []token.SingleUse) error {
		tk := delegation.Task{ID: ids.New("tsk"), GrantID: grant, ParentID: parent, Depth: 1, PrincipalID: u.ID, AgentID: agent,
			Purpose: marker, Scopes: []string{"read"}, Status: delegation.TaskActive, CreatedAt: now, ExpiresAt: now.Add(time.Hour)}
		tk.RootID = tk.ID
		if parent != "" {
			tk.Depth, tk.RootID = 2, parent
		}
		start, exchange := f.newEvent(delegation.ActionTaskStart), f.newEvent(delegation.ActionTokenExchange)
		start.Detail, exchange.Detail = marker, marker
		return s.CreateTask(t.Context(), tk, uses, start, exchange)
	}
	f.grantActive, f.grantRevoked = newGrant(), newGrant()
	var err error
	if err = f.createTask(s, f.grantActive, "", a.ID, "parent-active", nil); err != nil {
		t.Fatal(err)
	}
	if err = f.createTask(s, f.grantActive, "", a.ID, "parent-ended", nil); err != nil {
		t.Fatal(err)
	}
	tasks, err := s.ListTasks(ctx, u.ID, "", f.grantActive)
	if err != nil || len(tasks) != 2 {
		t.Fatalf("ListTasks: %v, %d tasks", err, len(tasks))
	}
	for _, tk := range tasks {
		if tk.Purpose == "parent-active" {
			f.parentActive = tk.ID
		} else {
			f.parentEnded = tk.ID
		}
	}
	if _, err := s.EndTask(ctx, f.parentEnded, delegation.TaskCompleted, now, f.newEvent(delegation.ActionTaskEnd)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RevokeGrant(ctx, f.grantRevoked, now, f.newEvent(delegation.ActionGrantRevoke)); err != nil {
		t.Fatal(err)
	}
	return f
}

// testTasksInBatches states the promise of batched task creation (taskrows.go) as a property:
// whatever writes share a batch, on however many replicas, a task starts exactly when its grant
// and parent are active, its principal and agent exist and its single-use ids are fresh — each
// contended id going to exactly one task; a refused task leaves nothing behind (no row, no event,
// none of its ids, so it never takes an id from a task that could have had it); every started
// task has both its events, and the chain verifies.
//
// missing adds tasks that name a grant, parent or agent that does not exist: their statement
// fails, and the batch is retried one write at a time, so without them the run's checks are
// the batched ones.
func testTasksInBatches(t *testing.T, dsn string, missing bool) {
	replicas := []*Store{mustOpen(t, dsn), mustOpen(t, dsn)}
	var biggest atomic.Int64
	for _, s := range replicas {
		s.gc.batchStarted = func(n int) {
			for {
				b := biggest.Load()
				if int64(n) <= b || biggest.CompareAndSwap(b, int64(n)) {
					return
				}
			}
		}
	}
	f := newTaskFixture(t, replicas[0])
	ctx := t.Context()
	exp := time.Now().Add(time.Hour)
	const writes = 240
	rng := rand.New(rand.NewPCG(2, uint64(time.Now().UnixNano())))
	type plan struct {
		grant, parent, agent string
		shared               int
		want                 error // the refusal the checks must give, nil when it may start
	}
	plans := make([]plan, writes)
	for i := range plans {
		p := plan{grant: f.grantActive, agent: f.agent, shared: rng.IntN(writes / 4)}
		n := rng.IntN(10)
		if !missing && (n == 1 || n == 3 || n == 4) {
			n = 9
		}
		switch n {
		case 0:
			p.grant, p.want = f.grantRevoked, delegation.ErrNotActive
		case 1:
			p.grant, p.want = "gr_missing"+fmt.Sprint(i), delegation.ErrNotFound
		case 2:
			p.parent, p.want = f.parentEnded, delegation.ErrNotActive
		case 3:
			p.parent, p.want = "tsk_missing"+fmt.Sprint(i), delegation.ErrNotFound
		case 4:
			p.agent, p.want = "agt_missing"+fmt.Sprint(i), delegation.ErrNotFound
		case 5:
			p.parent = f.parentActive
		}
		plans[i] = p
	}
	var mu sync.Mutex
	won := map[int]int{}       // shared id → the task that has it
	contended := map[int]int{} // shared id → tasks that passed the checks and wanted it
	started := map[string]bool{}
	var wg sync.WaitGroup
	for i, p := range plans {
		wg.Add(1)
		go func() {
			defer wg.Done()
			marker := fmt.Sprintf("task-%d", i)
			uses := []token.SingleUse{{ID: "own-" + marker, ExpiresAt: exp}, {ID: fmt.Sprintf("shared-%d", p.shared), ExpiresAt: exp}}
			if i%2 == 1 {
				uses[0], uses[1] = uses[1], uses[0]
			}
			err := f.createTask(replicas[i%len(replicas)], p.grant, p.parent, p.agent, marker, uses)
			mu.Lock()
			defer mu.Unlock()
			if p.want != nil {
				// A task whose agent is missing passes the checks; its ids are used up before its
				// row is inserted, so a replayed id may refuse it first.
				replayFirst := p.agent != f.agent && errors.Is(err, dpop.ErrReplay)
				if !errors.Is(err, p.want) && !replayFirst {
					t.Errorf("task %d (grant %s, parent %q, agent %s): %v, want %v", i, p.grant, p.parent, p.agent, err, p.want)
				}
				return
			}
			contended[p.shared]++
			switch {
			case err == nil:
				if w, ok := won[p.shared]; ok {
					t.Errorf("shared id %d used by task %d and task %d", p.shared, w, i)
				}
				won[p.shared] = i
				started[marker] = true
			case errors.Is(err, dpop.ErrReplay):
			default:
				t.Errorf("task %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	if len(won) != len(contended) {
		t.Errorf("%d shared ids used, want %d: each one that a startable task wanted goes to exactly one", len(won), len(contended))
	}
	s := replicas[0]
	tasks, err := s.ListTasks(ctx, f.user, "", "")
	if err != nil {
		t.Fatal(err)
	}
	rows := 0
	for _, tk := range tasks {
		if tk.Purpose == "parent-active" || tk.Purpose == "parent-ended" {
			continue
		}
		rows++
		if !started[tk.Purpose] {
			t.Errorf("task row %s of refused write %s", tk.ID, tk.Purpose)
		}
	}
	if rows != len(started) {
		t.Errorf("%d task rows, want %d", rows, len(started))
	}
	events := map[string]int{}
	if err := s.ScanEvents(ctx, 0, func(ev *audit.Event) error { events[ev.Detail]++; return nil }); err != nil {
		t.Fatal(err)
	}
	for i := range writes {
		marker := fmt.Sprintf("task-%d", i)
		want := 0
		if started[marker] {
			want = 2
		}
		if events[marker] != want {
			t.Errorf("task %d (started %v) has %d events, want %d", i, started[marker], events[marker], want)
		}
		var n int
		if err := s.rdb.QueryRowContext(ctx, `SELECT COUNT(*) FROM used_jtis WHERE id = $1`, "own-"+marker).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if (n == 1) != started[marker] {
			t.Errorf("task %d (started %v) left %d rows of its own id", i, started[marker], n)
		}
	}
	if err := s.VerifyChain(ctx); err != nil {
		t.Errorf("VerifyChain: %v", err)
	}
	if biggest.Load() < 2 {
		t.Logf("no batch held more than one write (biggest %d): the run did not exercise batching", biggest.Load())
	}
}

// testRevokeWhileStarting: a grant revoked while tasks start under it, on two replicas, leaves
// no active task under it — each task either was refused or was ended by the revocation's
// cascade (the checks and the cascade are ordered by the chain lock).
func testRevokeWhileStarting(t *testing.T, dsn string) {
	replicas := []*Store{mustOpen(t, dsn), mustOpen(t, dsn)}
	f := newTaskFixture(t, replicas[0])
	ctx := t.Context()
	const writes = 120
	var wg sync.WaitGroup
	var startedN atomic.Int64
	for i := range writes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i == writes/3 {
				if _, err := replicas[1].RevokeGrant(ctx, f.grantActive, f.now, f.newEvent(delegation.ActionGrantRevoke)); err != nil {
					t.Errorf("RevokeGrant: %v", err)
				}
				return
			}
			parent := ""
			if i%3 == 0 {
				parent = f.parentActive
			}
			err := f.createTask(replicas[i%2], f.grantActive, parent, f.agent, fmt.Sprintf("task-%d", i), nil)
			switch {
			case err == nil:
				startedN.Add(1)
			case errors.Is(err, delegation.ErrNotActive):
			default:
				t.Errorf("task %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	tasks, err := replicas[0].ListTasks(ctx, f.user, "", f.grantActive)
	if err != nil {
		t.Fatal(err)
	}
	for _, tk := range tasks {
		if tk.Status == delegation.TaskActive {
			t.Errorf("task %s (%s) is active under a revoked grant", tk.ID, tk.Purpose)
		}
	}
	t.Logf("%d of %d tasks started before the revocation", startedN.Load(), writes-1)
	if err := replicas[0].VerifyChain(ctx); err != nil {
		t.Errorf("VerifyChain: %v", err)
	}
}
