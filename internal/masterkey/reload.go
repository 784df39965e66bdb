package masterkey

import (
	"log/slog"
	"sync"
	"time"
)

// File is the master key file of a running server and the keyring loaded from it. The keyring
// is reloaded from the file on Reload (the server calls it on SIGHUP) and when a blob names a
// key the keyring does not hold (at most once a second), so that keys added or promoted by
// another process (mandate masterkey, mandate vault rotate-master-key) need no restart.
type File struct {
	path string
	log  *slog.Logger
	ring *Keyring

	mu     sync.Mutex
	loaded time.Time // last reload (wall clock: it only rate-limits reloads); zero until the first
}

// unknownKeyReload bounds the reloads caused by blobs that name a key the keyring does not hold.
const unknownKeyReload = time.Second

// Open reads the master key file at path, creating it with one fresh key when it does not
// exist (created says so), and returns it with its keyring. log may be nil.
func Open(path string, log *slog.Logger) (f *File, keys []Key, created bool, err error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	keys, created, err = LoadOrCreate(path)
	if err != nil {
		return nil, nil, false, err
	}
	ring, err := NewKeyringOf(keys)
	if err != nil {
		return nil, nil, false, err
	}
	f = &File{path: path, log: log, ring: ring}
	ring.OnUnknownKey(f.unknown)
	return f, keys, created, nil
}

// Path is the file's path.
func (f *File) Path() string { return f.path }

// Keyring is the keyring loaded from the file: it seals with the file's primary key.
func (f *File) Keyring() *Keyring { return f.ring }

// Reload re-reads the file into the keyring: after a key was added or promoted, the new
// primary key seals what this server writes from then on.
func (f *File) Reload() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reloadLocked()
}

func (f *File) reloadLocked() error {
	f.loaded = time.Now()
	keys, err := Read(f.path)
	if err != nil {
		return err
	}
	defer Clear(keys)
	if err := f.ring.Set(keys); err != nil {
		return err
	}
	f.log.Info("reloaded master keys", slog.String("path", f.path), slog.Any("key_ids", IDs(keys)))
	return nil
}

// unknown is called when a blob names a key id the keyring does not hold, as when another
// replica seals with a key promoted since this one loaded the file: it reloads the file (at
// most once a second) and reports whether the keyring holds the key now.
func (f *File) unknown(id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ring.Holds(id) {
		return true // reloaded meanwhile
	}
	if time.Since(f.loaded) < unknownKeyReload {
		return false
	}
	if err := f.reloadLocked(); err != nil {
		f.log.Error("reload master keys", slog.String("path", f.path), slog.String("error", err.Error()))
		return false
	}
	return f.ring.Holds(id)
}
