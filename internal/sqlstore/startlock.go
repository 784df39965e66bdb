package sqlstore

import (
	"context"
	"errors"
	"fmt"
)

// startLockID serialises the start-up of replicas on one PostgreSQL database (session-scoped;
// see the other advisory lock keys in store.go).
const startLockID int64 = 0x6d616e64617465_15

// Exclusive runs fn while it holds the store's start-up lock, so that of several servers
// starting together on one database (replicas on PostgreSQL, processes on one SQLite file) one at
// a time runs fn: what fn looks for, finds missing and creates (the first signing key, the
// bootstrap admin) is created once, and the others find it made. On PostgreSQL the lock is a
// session advisory lock, released when fn returns or, should this process die, when its
// connection closes; on SQLite it is an exclusive lock of the file <database>-start.lock, which
// the operating system releases likewise.
//
// Waiting for the lock is bounded by ctx only, not by the store's timeout: another replica may
// be creating keys.
func (s *Store) Exclusive(ctx context.Context, fn func(context.Context) error) (err error) {
	var unlock func() error
	if s.dialect == DialectPostgres {
		unlock, err = lockSession(unbounded(ctx), s.db, startLockID)
	} else {
		unlock, err = lockFile(s.path + "-start.lock")
	}
	if err != nil {
		return fmt.Errorf("take the start-up lock: %w", markUnavailable(err))
	}
	defer func() { err = errors.Join(err, unlock()) }()
	return fn(ctx)
}
