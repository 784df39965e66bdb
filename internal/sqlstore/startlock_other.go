//go:build !unix

package sqlstore

import "sync"

// startMu stands in for a file lock where there is no flock: servers in one process still take
// turns.
var startMu sync.Mutex

func lockFile(string) (unlock func() error, err error) {
	startMu.Lock()
	return func() error { startMu.Unlock(); return nil }, nil
}
