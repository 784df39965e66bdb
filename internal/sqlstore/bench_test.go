package sqlstore

import (
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/ids"
	"github.com/mandate-dev/mandate/internal/pgtest"
)

// BenchmarkAppendEvent measures durable appends of standalone events (a denial, a proxied
// call's record), one caller after another and from many at once (-cpu sets how many
// goroutines, 8 per CPU here). It uses only what every version of the store has, so one file
// measures before and after group commit.
func BenchmarkAppendEvent(b *testing.B) {
	dsns := map[string]func(b *testing.B) string{
		"sqlite": func(b *testing.B) string { return filepath.Join(b.TempDir(), "mandate.db") },
	}
	if os.Getenv(pgtest.EnvVar) != "" {
		dsns["postgres"] = func(b *testing.B) string { return pgtest.URL(b) }
	}
	for name, dsn := range dsns {
		open := func(b *testing.B) *Store {
			s, err := Open(b.Context(), dsn(b))
			if err != nil {
				b.Fatalf("Open: %v", err)
			}
			b.Cleanup(func() { s.Close() })
			return s
		}
		event := func() audit.Event {
			ev := audit.New(time.Now(), ids.New("req"), "proxy.call")
			ev.ActorType, ev.ActorID, ev.AgentID, ev.PrincipalID = audit.ActorAgent, ids.New("agt"), ids.New("agt"), ids.New("usr")
			ev.Outcome, ev.Detail = audit.OutcomePending, "GET /repos/{owner}/{repo} on github"
			return ev
		}
		b.Run(name+"/serial", func(b *testing.B) {
			s := open(b)
			for b.Loop() {
				if err := s.AppendEvent(b.Context(), event()); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/parallel", func(b *testing.B) {
			s := open(b)
			b.SetParallelism(8)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := s.AppendEvent(b.Context(), event()); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkAuditBytesPerEvent reports what one audit event costs on disk on SQLite: the growth
// of the database file over b.N appends (run with -benchtime 10000x), measured after a WAL
// checkpoint, for a typical proxied call (the pending record and its completion are each one
// such event) and a typical token issue. Appends run from 64 goroutines so the run is short;
// the bytes do not depend on it.
func BenchmarkAuditBytesPerEvent(b *testing.B) {
	call := func() audit.Event {
		ev := audit.New(time.Now(), ids.New("req"), "proxy.call")
		ev.ClientRequestID = "0f6c1e0a-3c1b-4a7e-9d0e-6f1f0c1b2a3d"
		ev.Outcome = audit.OutcomeSuccess
		ev.ActorType, ev.ActorID, ev.ActorHandle = audit.ActorAgent, ids.New("agt"), "triage-bot"
		ev.PrincipalID, ev.AgentID = ids.New("usr"), ev.ActorID
		ev.AgentDID = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
		ev.KeyJKT, ev.InstanceKey = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs", "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
		ev.TaskID, ev.ParentTaskID, ev.GrantID = ids.New("tsk"), ids.New("tsk"), ids.New("gr")
		ev.Chain = []audit.Link{{AgentID: ev.AgentID, Handle: "triage-bot", DID: ev.AgentDID, TaskID: ev.TaskID}}
		ev.Scopes, ev.Resources = []string{"items:read"}, []string{"https://mandate.example.com/proxy/items"}
		ev.TokenID = ids.New("jti")
		ev.Call = &audit.Call{Upstream: "items", Method: "GET", Path: "/v1/items/42", Route: "/v1/**",
			Query:  []audit.QueryParam{{Name: "page", ValueHash: "3b5d5c3712955042212316173ccf37be"}, {Name: "q", ValueHash: "9f86d081884c7d659a2feaa0c55ad015"}},
			Status: 200, BytesIn: 0, BytesOut: 1832, DurationUS: 2150}
		ev.Addr, ev.UserAgent = "10.1.2.3:51234", "mandate-sdk-go/0.9"
		ev.Detail = "proxy GET /v1/** on items: 200, 1832 bytes out"
		return ev
	}
	issue := func() audit.Event {
		ev := audit.New(time.Now(), ids.New("req"), audit.ActionTokenIssue)
		ev.Outcome = audit.OutcomeSuccess
		ev.ActorType, ev.ActorID, ev.ActorHandle = audit.ActorAgent, ids.New("agt"), "triage-bot"
		ev.PrincipalID, ev.AgentID = ids.New("usr"), ev.ActorID
		ev.AgentDID = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
		ev.KeyJKT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
		ev.Scopes, ev.TokenID = []string{"items:read"}, ids.New("jti")
		ev.Addr, ev.UserAgent = "10.1.2.3:51234", "mandate-sdk-go/0.9"
		ev.Detail = "client_credentials token for @triage-bot"
		return ev
	}
	for name, event := range map[string]func() audit.Event{"proxy_call": call, "token_issue": issue} {
		b.Run(name, func(b *testing.B) {
			path := filepath.Join(b.TempDir(), "mandate.db")
			s, err := Open(b.Context(), path)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			size := func() int64 {
				if _, err := s.db.ExecContext(b.Context(), `PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
					b.Fatal(err)
				}
				fi, err := os.Stat(path)
				if err != nil {
					b.Fatal(err)
				}
				return fi.Size()
			}
			before := size()
			var next atomic.Int64
			var wg sync.WaitGroup
			for range 64 {
				wg.Go(func() {
					for next.Add(1) <= int64(b.N) {
						if err := s.AppendEvent(b.Context(), event()); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			b.ReportMetric(float64(size()-before)/float64(b.N), "bytes/event")
		})
	}
}
