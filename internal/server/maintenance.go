package server

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/mandate-dev/mandate/internal/config"
	"github.com/mandate-dev/mandate/internal/masterkey"
	"github.com/mandate-dev/mandate/internal/sqlstore"
)

// Maintenance is a server's database and master key file opened for offline maintenance on the
// server's host (the CLI's mandate masterkey and mandate vault commands), while servers run or
// not. Only the composition root knows which store backend runs: the CLI gets the operations,
// never the store.
type Maintenance struct {
	store   *sqlstore.Store
	keyPath string
}

// OpenMaintenance opens the database and the master key file that the settings name (the
// server's own --data-dir, --master-key-file and --database). It creates neither: a missing
// file or database is an error saying which setting to give.
func OpenMaintenance(ctx context.Context, cfg config.Config) (*Maintenance, error) {
	if err := cfg.ValidateStorage(); err != nil {
		return nil, fmt.Errorf("invalid settings:\n%w", err)
	}
	keyPath := cfg.MasterKeyPath()
	if _, err := os.Stat(keyPath); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no master key file at %s: give the --data-dir or --master-key-file of the server", keyPath)
	}
	dsn := cfg.Database
	if dsn == "" {
		dsn = filepath.Join(cfg.DataDir, DatabaseFile)
		if _, err := os.Stat(dsn); err != nil {
			return nil, fmt.Errorf("no database at %s: give the --data-dir (or --database) of the server: %w", dsn, err)
		}
	}
	store, err := sqlstore.Open(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	return &Maintenance{store: store, keyPath: keyPath}, nil
}

// MasterKeys returns the master key operations on the file and the database.
func (m *Maintenance) MasterKeys() *masterkey.Maintenance {
	return &masterkey.Maintenance{Path: m.keyPath, Store: m.store}
}

// Store is the open store (for tests: what a server left in the database).
func (m *Maintenance) Store() *sqlstore.Store { return m.store }

// Close closes the database.
func (m *Maintenance) Close() error { return m.store.Close() }
