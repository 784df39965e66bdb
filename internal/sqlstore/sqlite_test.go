package sqlstore

import (
	"io/fs"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mandate-dev/mandate/internal/storetest"
)

func newSQLiteDSN(t *testing.T) string {
	return filepath.Join(t.TempDir(), "mandate.db")
}

func TestSQLite(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Store { return mustOpen(t, newSQLiteDSN(t)) })
}

func TestSQLiteAuditFaults(t *testing.T) {
	storetest.RunAuditFaults(t, func(t *testing.T) (storetest.Store, string) {
		dsn := newSQLiteDSN(t)
		return mustOpen(t, dsn), dsn
	})
}

func TestSQLiteDialect(t *testing.T) {
	runDialectTests(t, DialectSQLite, newSQLiteDSN)
}

func TestSQLiteRefusesOtherNames(t *testing.T) {
	dir := t.TempDir()
	for _, dsn := range []string{"", ":memory:", "file:x.db", filepath.Join(dir, "a.db?mode=ro"), filepath.Join(dir, "a#b.db")} {
		if s, err := Open(t.Context(), dsn); err == nil {
			s.Close()
			t.Errorf("Open(%q) succeeded, want an error", dsn)
		}
	}
}

func TestSQLiteSettings(t *testing.T) {
	s := mustOpen(t, newSQLiteDSN(t))
	for _, tc := range []struct {
		name   string
		pragma string
		reader bool
		want   string
	}{
		{"writer journal", "journal_mode", false, "wal"},
		{"reader journal", "journal_mode", true, "wal"},
		{"writer foreign keys", "foreign_keys", false, "1"},
		{"writer synchronous", "synchronous", false, "2"},
		{"writer busy timeout", "busy_timeout", false, "5000"}, // DefaultTimeout
		{"reader busy timeout", "busy_timeout", true, "5000"},
		{"reader query only", "query_only", true, "1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db := s.db
			if tc.reader {
				db = s.rdb
			}
			var got string
			if err := db.QueryRowContext(t.Context(), "PRAGMA "+tc.pragma).Scan(&got); err != nil {
				t.Fatalf("PRAGMA %s: %v", tc.pragma, err)
			}
			if !strings.EqualFold(got, tc.want) {
				t.Errorf("PRAGMA %s = %s, want %s", tc.pragma, got, tc.want)
			}
		})
	}
	if _, err := s.rdb.ExecContext(t.Context(), `DELETE FROM users`); err == nil {
		t.Errorf("a write through the reader pool succeeded")
	}
}

// fsysReadDir lists the file names of a migration directory.
func fsysReadDir(fsys fs.FS) ([]string, error) {
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names, nil
}
