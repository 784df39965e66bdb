package cli

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/config"
	"github.com/mandate-dev/mandate/internal/server"
	"github.com/mandate-dev/mandate/internal/sqlstore"
	"github.com/mandate-dev/mandate/internal/token"
	"github.com/mandate-dev/mandate/internal/vault"
)

// Audit actions of the master key commands.
const (
	actionMasterKeyRotate = "master_key.rotate"
	actionMasterKeyRewrap = "master_key.rewrap"
	actionMasterKeyPrune  = "master_key.prune"
)

// rewrapBatch is how many rows one re-wrap transaction writes: small, so that the write lock a
// running server also needs is held briefly.
const rewrapBatch = 100

// rewrapPasses bounds the passes over the database: a pass re-reads the rows a server changed
// while the previous pass was re-wrapping them.
const rewrapPasses = 5

// The flags the offline vault commands show; the other settings of mandate serve are accepted
// (so that one --config file or one environment serves both) but hidden.
var vaultShownFlags = map[string]bool{"data-dir": true, "master-key-file": true, "database": true, config.ConfigFlag: true}

func newVaultCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "vault",
		Short: "Rotate the master key that encrypts upstream secrets and signing keys (on the server's host)",
		Long: `Manage the master keys. These commands run on the server's host, with the server's own
settings (--data-dir, --master-key-file, --database, or their MANDATE_* variables, or --config):
they read the master key file and open the database directly, and work while servers run.`,
		Args: cobra.NoArgs,
	}

	rotate := &cobra.Command{
		Use:   "rotate-master-key [--data-dir D | --master-key-file F] [--database URL]",
		Short: "Add a new master key and re-wrap every sealed secret and signing key under it",
		Long: `Add a new master key and re-wrap everything sealed under the old ones, without downtime:

 1. check that every sealed row opens with the keys of the master key file;
 2. write the file again (atomically, mode 0600) with a new random key first and the old
    keys after it;
 3. re-wrap every upstream secret's data key and re-seal every signing key under the new key,
    in batches, each row written only if no server changed it meanwhile (a changed row is
    re-read and re-wrapped in another pass). Every batch is an audit event.

Running servers keep working: they still hold the old keys, and they reload the file when
they meet a row sealed by the new key, on SIGHUP, and at restart; from then on they seal with
the new key. Once every replica has reloaded (SIGHUP) or restarted, drop the old keys with
mandate vault prune-master-keys. An interrupted rotation is finished with mandate vault rewrap.`,
		Example: "  mandate vault rotate-master-key --data-dir /var/lib/mandate\n" +
			"  MANDATE_DATABASE=postgres://… mandate vault rotate-master-key --master-key-file /etc/mandate/master.key",
		Args: cobra.NoArgs,
	}
	rotateCfg := bindVaultFlags(rotate)
	rotate.RunE = func(cmd *cobra.Command, _ []string) error {
		v, err := openVault(cmd, rotateCfg)
		if err != nil {
			return err
		}
		defer v.close()
		return v.rotate(cmd.Context(), cmd.OutOrStdout())
	}

	rewrap := &cobra.Command{
		Use:   "rewrap [--data-dir D | --master-key-file F] [--database URL]",
		Short: "Re-wrap every row not sealed by the newest master key (finishes a rotation)",
		Long: `Re-wrap every upstream secret and re-seal every signing key that is not sealed by the
newest key of the master key file, as the last step of rotate-master-key does. Run it to finish an
interrupted rotation, or when prune-master-keys reports rows that a server wrote with an old key
before it reloaded the file.`,
		Example: "  mandate vault rewrap --data-dir /var/lib/mandate",
		Args:    cobra.NoArgs,
	}
	rewrapCfg := bindVaultFlags(rewrap)
	rewrap.RunE = func(cmd *cobra.Command, _ []string) error {
		v, err := openVault(cmd, rewrapCfg)
		if err != nil {
			return err
		}
		defer v.close()
		return v.rewrapCmd(cmd.Context(), cmd.OutOrStdout())
	}

	prune := &cobra.Command{
		Use:   "prune-master-keys [--data-dir D | --master-key-file F] [--database URL]",
		Short: "Drop every master key but the newest, once no row needs them",
		Long: `Rewrite the master key file with its newest key only. It refuses while any sealed row
of the database does not open with that key alone (run mandate vault rewrap first). Run it only
once every replica has reloaded the file (SIGHUP) or restarted since the rotation: a server that
still seals with an old key would write rows that nothing can open once that key is gone.`,
		Example: "  mandate vault prune-master-keys --data-dir /var/lib/mandate",
		Args:    cobra.NoArgs,
	}
	pruneCfg := bindVaultFlags(prune)
	prune.RunE = func(cmd *cobra.Command, _ []string) error {
		v, err := openVault(cmd, pruneCfg)
		if err != nil {
			return err
		}
		defer v.close()
		return v.prune(cmd.Context(), cmd.OutOrStdout())
	}

	cmd.AddCommand(rotate, rewrap, prune)
	return cmd
}

// bindVaultFlags gives cmd the settings of mandate serve, showing only those that locate the
// data.
func bindVaultFlags(cmd *cobra.Command) *config.Config {
	cfg := config.Default()
	cfg.Bind(cmd.Flags())
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if !vaultShownFlags[f.Name] {
			f.Hidden = true
		}
	})
	return &cfg
}

// offlineVault is an open database and its master key file.
type offlineVault struct {
	store   *sqlstore.Store
	keyPath string
	again   string // the flags to repeat in a suggested command

	// beforeWrite, when set (tests), runs between reading a page of rows and writing it back.
	beforeWrite func()
}

func openVault(cmd *cobra.Command, cfg *config.Config) (*offlineVault, error) {
	if err := cfg.ValidateStorage(); err != nil {
		return nil, fmt.Errorf("invalid settings:\n%w", err)
	}
	var again []string
	for _, name := range []string{"data-dir", "master-key-file", "database", config.ConfigFlag} {
		if f := cmd.Flags().Lookup(name); f != nil && f.Changed && name != "database" {
			again = append(again, "--"+name+" "+f.Value.String())
		}
	}
	keyPath := cfg.MasterKeyPath()
	if _, err := os.Stat(keyPath); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no master key file at %s: give the --data-dir or --master-key-file of the server", keyPath)
	}
	dsn := cfg.Database
	if dsn == "" {
		dsn = filepath.Join(cfg.DataDir, server.DatabaseFile)
		if _, err := os.Stat(dsn); err != nil {
			return nil, fmt.Errorf("no database at %s: give the --data-dir (or --database) of the server: %w", dsn, err)
		}
	}
	store, err := sqlstore.Open(cmd.Context(), dsn)
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	return &offlineVault{store: store, keyPath: keyPath, again: strings.Join(again, " ")}, nil
}

func (v *offlineVault) close() { v.store.Close() }

func (v *offlineVault) command(sub string) string {
	return strings.TrimSpace("mandate vault " + sub + " " + v.again)
}

func (v *offlineVault) event(action, target, detail string) audit.Event {
	ev := audit.New(time.Now(), "", action)
	ev.ActorType, ev.Target, ev.Detail = audit.ActorSystem, target, detail
	return ev
}

func (v *offlineVault) appendEvent(ctx context.Context, ev audit.Event) error {
	ev.Outcome = audit.OutcomeSuccess
	return v.store.AppendEvent(ctx, ev)
}

func keyIDs(keys [][]byte) []string {
	ids := make([]string, len(keys))
	for i, k := range keys {
		ids[i] = token.MasterKeyID(k)
	}
	return ids
}

// rotate adds a key, then re-wraps everything under it.
func (v *offlineVault) rotate(ctx context.Context, out io.Writer) error {
	keys, err := token.ReadMasterKeys(v.keyPath)
	if err != nil {
		return err
	}
	// Refuse before changing anything when the file does not open this database.
	unopened, total, err := v.unopened(ctx, keys)
	if err != nil {
		return err
	}
	if len(unopened) > 0 {
		return fmt.Errorf("refusing to rotate: %s of %d sealed rows do not open with the keys of %s: is it the master key file of this database?",
			describeUnopened(unopened), total, v.keyPath)
	}
	fresh := make([]byte, token.MasterKeySize)
	if _, err := rand.Read(fresh); err != nil {
		return fmt.Errorf("generate master key: %w", err)
	}
	newKeys := append([][]byte{fresh}, keys...)
	if err := token.WriteMasterKeys(v.keyPath, newKeys); err != nil {
		return err
	}
	id := token.MasterKeyID(fresh)
	fmt.Fprintf(out, "Added master key %s to %s (keys, newest first: %s).\n", id, v.keyPath, strings.Join(keyIDs(newKeys), ", "))
	if err := v.appendEvent(ctx, v.event(actionMasterKeyRotate, id, "keys="+strings.Join(keyIDs(newKeys), ","))); err != nil {
		return fmt.Errorf("record the rotation: %w (the new key is in the file: finish with %s)", err, v.command("rewrap"))
	}
	st, err := v.rewrap(ctx, newKeys)
	if err != nil {
		return fmt.Errorf("%w\nThe new key is in the file and the rows re-wrapped so far use it: finish with %s", err, v.command("rewrap"))
	}
	fmt.Fprintf(out, "Re-wrapped %s under master key %s.\n", st, id)
	fmt.Fprintf(out, "Running servers reload the file on SIGHUP, at restart, and when they meet a row sealed by the new key.\n"+
		"Once every replica has reloaded or restarted, drop the old keys with:\n  %s\n", v.command("prune-master-keys"))
	return nil
}

func (v *offlineVault) rewrapCmd(ctx context.Context, out io.Writer) error {
	keys, err := token.ReadMasterKeys(v.keyPath)
	if err != nil {
		return err
	}
	st, err := v.rewrap(ctx, keys)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "Re-wrapped %s under master key %s.\n", st, token.MasterKeyID(keys[0]))
	if len(keys) > 1 {
		fmt.Fprintf(out, "Once every replica has reloaded the file (SIGHUP) or restarted, drop the old keys with:\n  %s\n", v.command("prune-master-keys"))
	}
	return nil
}

// prune keeps the newest key only, if every row opens with it.
func (v *offlineVault) prune(ctx context.Context, out io.Writer) error {
	raw, err := os.ReadFile(v.keyPath)
	if err != nil {
		return fmt.Errorf("read master key file: %w", err)
	}
	defer clear(raw)
	keys, err := token.ReadMasterKeys(v.keyPath)
	if err != nil {
		return err
	}
	if len(keys) == 1 {
		fmt.Fprintf(out, "Nothing to prune: %s holds one master key (%s).\n", v.keyPath, token.MasterKeyID(keys[0]))
		return nil
	}
	keep := keys[:1]
	unopened, _, err := v.unopened(ctx, keep)
	if err != nil {
		return err
	}
	if len(unopened) > 0 {
		return fmt.Errorf("refusing to drop master keys %s: %s would no longer open. Run %s first; "+
			"if rows keep appearing, a server still seals with an old key: reload it (SIGHUP) or restart it",
			strings.Join(keyIDs(keys[1:]), ", "), describeUnopened(unopened), v.command("rewrap"))
	}
	// Write only over the file that was checked (a rotation may have run meanwhile).
	now, err := os.ReadFile(v.keyPath)
	if err != nil {
		return fmt.Errorf("read master key file: %w", err)
	}
	defer clear(now)
	if !bytes.Equal(now, raw) {
		return fmt.Errorf("refusing to prune: %s changed while it was being checked; run the command again", v.keyPath)
	}
	if err := token.WriteMasterKeys(v.keyPath, keep); err != nil {
		return err
	}
	dropped := keyIDs(keys[1:])
	if err := v.appendEvent(ctx, v.event(actionMasterKeyPrune, token.MasterKeyID(keep[0]), "dropped="+strings.Join(dropped, ","))); err != nil {
		return fmt.Errorf("record the pruning (the file was pruned): %w", err)
	}
	fmt.Fprintf(out, "Dropped master keys %s from %s; it holds master key %s.\n", strings.Join(dropped, ", "), v.keyPath, token.MasterKeyID(keep[0]))
	return nil
}

// rewrapStats counts the rows a re-wrap wrote.
type rewrapStats struct{ Secrets, SigningKeys int }

func (s rewrapStats) String() string {
	return plural(s.Secrets, "upstream secret") + " and " + plural(s.SigningKeys, "signing key")
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// rewrap re-wraps every row not sealed by keys[0], in passes until a pass meets no row that a
// server changed while it was being re-wrapped.
func (v *offlineVault) rewrap(ctx context.Context, keys [][]byte) (rewrapStats, error) {
	kr, err := vault.NewKeyring(keys...)
	if err != nil {
		return rewrapStats{}, err
	}
	ring, err := token.NewMasterKeyring(keys...)
	if err != nil {
		return rewrapStats{}, err
	}
	newest := token.MasterKeyID(keys[0])
	var total rewrapStats
	for range rewrapPasses {
		st, conflicts, err := v.rewrapPass(ctx, kr, ring, newest)
		total.Secrets += st.Secrets
		total.SigningKeys += st.SigningKeys
		if err != nil || conflicts == 0 {
			return total, err
		}
	}
	return total, fmt.Errorf("rows kept changing while they were being re-wrapped (%s so far): run %s again", total, v.command("rewrap"))
}

func (v *offlineVault) rewrapPass(ctx context.Context, kr *vault.Keyring, ring *token.MasterKeyring, newest string) (st rewrapStats, conflicts int, err error) {
	var after vault.SealedRow
	for {
		page, err := v.store.SealedSecrets(ctx, after, rewrapBatch)
		if err != nil {
			return st, conflicts, err
		}
		if len(page) == 0 {
			break
		}
		after = vault.SealedRow{Upstream: page[len(page)-1].Upstream, Kind: page[len(page)-1].Kind}
		var todo []vault.SealedRow
		for _, r := range page {
			nb, err := kr.Rewrap(r.Upstream, r.Kind, r.Sealed)
			if err != nil {
				return st, conflicts, fmt.Errorf("the %s secret of upstream %s does not open with the keys of %s: %w", r.Kind, r.Upstream, v.keyPath, err)
			}
			if !bytes.Equal(nb, r.Sealed) {
				r.New = nb
				todo = append(todo, r)
			}
		}
		if len(todo) > 0 {
			if v.beforeWrite != nil {
				v.beforeWrite()
			}
			n, err := v.store.RewrapSecrets(ctx, todo, v.event(actionMasterKeyRewrap, newest, "table=upstream_secrets"))
			if err != nil {
				return st, conflicts, err
			}
			st.Secrets += n
			conflicts += len(todo) - n
		}
		if len(page) < rewrapBatch {
			break
		}
	}
	afterKID := ""
	for {
		page, err := v.store.SealedSigningKeys(ctx, afterKID, rewrapBatch)
		if err != nil {
			return st, conflicts, err
		}
		if len(page) == 0 {
			break
		}
		afterKID = page[len(page)-1].KID
		var todo []token.SealedKey
		for _, k := range page {
			nb, err := ring.Reseal(k.Sealed, k.KID)
			if err != nil {
				return st, conflicts, fmt.Errorf("with the keys of %s: %w", v.keyPath, err)
			}
			if !bytes.Equal(nb, k.Sealed) {
				k.New = nb
				todo = append(todo, k)
			}
		}
		if len(todo) > 0 {
			if v.beforeWrite != nil {
				v.beforeWrite()
			}
			n, err := v.store.ResealSigningKeys(ctx, todo, v.event(actionMasterKeyRewrap, newest, "table=signing_keys"))
			if err != nil {
				return st, conflicts, err
			}
			st.SigningKeys += n
			conflicts += len(todo) - n
		}
		if len(page) < rewrapBatch {
			break
		}
	}
	return st, conflicts, nil
}

// unopened counts, per the master key id they name ("none" for a signing key sealed by an
// earlier version, which names none), the sealed rows that do not open with keys; and every
// sealed row.
func (v *offlineVault) unopened(ctx context.Context, keys [][]byte) (map[string]int, int, error) {
	kr, err := vault.NewKeyring(keys...)
	if err != nil {
		return nil, 0, err
	}
	ring, err := token.NewMasterKeyring(keys...)
	if err != nil {
		return nil, 0, err
	}
	bad, total := map[string]int{}, 0
	var after vault.SealedRow
	for {
		page, err := v.store.SealedSecrets(ctx, after, rewrapBatch)
		if err != nil {
			return nil, 0, err
		}
		for _, r := range page {
			total++
			if kr.CanOpen(r.Upstream, r.Kind, r.Sealed) != nil {
				bad[orNone(vault.WrappedBy(r.Sealed))]++
			}
		}
		if len(page) < rewrapBatch {
			break
		}
		after = vault.SealedRow{Upstream: page[len(page)-1].Upstream, Kind: page[len(page)-1].Kind}
	}
	afterKID := ""
	for {
		page, err := v.store.SealedSigningKeys(ctx, afterKID, rewrapBatch)
		if err != nil {
			return nil, 0, err
		}
		for _, k := range page {
			total++
			plain, err := ring.Open(k.Sealed, k.KID)
			clear(plain)
			if err != nil {
				bad[orNone(token.SealedBy(k.Sealed))]++
			}
		}
		if len(page) < rewrapBatch {
			break
		}
		afterKID = page[len(page)-1].KID
	}
	return bad, total, nil
}

func orNone(id string) string {
	if id == "" {
		return "none"
	}
	return id
}

// describeUnopened says "3 rows (2 sealed by master key 0a1b…, 1 naming no key)".
func describeUnopened(bad map[string]int) string {
	ids := make([]string, 0, len(bad))
	n := 0
	for id, c := range bad {
		ids = append(ids, id)
		n += c
	}
	sort.Strings(ids)
	parts := make([]string, len(ids))
	for i, id := range ids {
		if id == "none" {
			parts[i] = fmt.Sprintf("%d of an earlier version, naming no key", bad[id])
		} else {
			parts[i] = fmt.Sprintf("%d sealed by master key %s", bad[id], id)
		}
	}
	return fmt.Sprintf("%s (%s)", plural(n, "row"), strings.Join(parts, ", "))
}
