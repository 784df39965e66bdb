package sqlstore

import (
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/pgtest"
	"github.com/mandate-dev/mandate/internal/token"
)

// BenchmarkCreateTaskParallel: tasks started by 64 concurrent callers, each with a single-use id
// and two events — what an exchange writes — on PostgreSQL (with MANDATE_TEST_POSTGRES) and
// SQLite. The store's part of an exchange, without HTTP or signatures.
func BenchmarkCreateTaskParallel(b *testing.B) {
	for _, d := range []string{DialectSQLite, DialectPostgres} {
		b.Run(d, func(b *testing.B) {
			var dsn string
			if d == DialectPostgres {
				dsn = pgtest.URL(b)
			} else {
				dsn = filepath.Join(b.TempDir(), "mandate.db")
			}
			s := mustOpen(b, dsn)
			f := newTaskFixture(b, s)
			exp := time.Now().Add(time.Hour)
			var n atomic.Int64
			b.SetParallelism(32) // 64 callers on 2 cores
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := n.Add(1)
					uses := []token.SingleUse{{ID: fmt.Sprintf("dpop:%d-%d", time.Now().UnixNano(), i), ExpiresAt: exp}}
					if err := f.createTask(s, f.grantActive, "", f.agent, "bench", uses); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tasks/s")
		})
	}
}
