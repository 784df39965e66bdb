package sqlstore

import (
	"os"
	"path/filepath"
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
