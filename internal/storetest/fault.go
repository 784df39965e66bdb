package storetest

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver
	_ "modernc.org/sqlite"             // the "sqlite" database/sql driver
)

// Fault injection into the real store, the way SPIRE's fake datastore injects errors into the
// real SQLite store: FailAuditWrites installs, through a connection of its own, a trigger that
// makes the database refuse every insert into audit_events past the next after ones. The store
// under test then fails exactly as it would on a full disk or a lost connection at the audit
// insert, in whatever transaction appends the event, with no change to its code.

// faultMessage is the error the trigger raises.
const faultMessage = "fault injected: audit writes refused"

// FailAuditWrites makes the database at dsn (a SQLite path or a postgres:// URL, as
// sqlstore.Open takes) refuse audit inserts once after more events have been appended, and
// returns a function that lifts the fault (also run at cleanup). after = 0 refuses the next one.
func FailAuditWrites(t testing.TB, dsn string, after int) (restore func()) {
	t.Helper()
	pg := strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
	var db *sql.DB
	var err error
	if pg {
		db, err = sql.Open("pgx", dsn)
	} else {
		// IMMEDIATE: the end of the chain cannot move between reading it and installing the trigger.
		db, err = sql.Open("sqlite", dsn+"?_busy_timeout=10000&_txlock=immediate")
	}
	if err != nil {
		t.Fatalf("fault injection: open: %v", err)
	}
	db.SetMaxOpenConns(1)
	exec := func(stmts ...string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer tx.Rollback()
		var last int64
		if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(seq), 0) FROM audit_events`).Scan(&last); err != nil {
			return err
		}
		for _, s := range stmts {
			if _, err := tx.ExecContext(ctx, strings.ReplaceAll(s, "{LIMIT}", fmt.Sprint(last+int64(after)))); err != nil {
				return fmt.Errorf("%s: %w", s, err)
			}
		}
		return tx.Commit()
	}
	install := []string{`CREATE TRIGGER mandate_fault_audit BEFORE INSERT ON audit_events WHEN NEW.seq > {LIMIT}
		BEGIN SELECT RAISE(ABORT, '` + faultMessage + `'); END`}
	remove := []string{`DROP TRIGGER IF EXISTS mandate_fault_audit`}
	if pg {
		install = []string{
			`CREATE FUNCTION mandate_fault_audit() RETURNS trigger LANGUAGE plpgsql AS $f$
			BEGIN
				IF NEW.seq > {LIMIT} THEN
					RAISE EXCEPTION '` + faultMessage + `' USING ERRCODE = '53100'; -- disk_full
				END IF;
				RETURN NEW;
			END $f$`,
			`CREATE TRIGGER mandate_fault_audit BEFORE INSERT ON audit_events
				FOR EACH ROW EXECUTE FUNCTION mandate_fault_audit()`,
		}
		remove = []string{`DROP TRIGGER IF EXISTS mandate_fault_audit ON audit_events`, `DROP FUNCTION IF EXISTS mandate_fault_audit()`}
	}
	if err := exec(install...); err != nil {
		db.Close()
		t.Fatalf("fault injection: install: %v", err)
	}
	done := false
	restore = func() {
		if done {
			return
		}
		done = true
		defer db.Close()
		if err := exec(remove...); err != nil {
			t.Errorf("fault injection: remove: %v", err)
		}
	}
	t.Cleanup(restore)
	return restore
}
