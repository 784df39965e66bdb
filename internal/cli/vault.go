package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/mandate-dev/mandate/internal/config"
	"github.com/mandate-dev/mandate/internal/masterkey"
	"github.com/mandate-dev/mandate/internal/server"
)

// The flags the offline vault commands show; the other settings of mandate serve are accepted
// (so that one --config file or one environment serves both) but hidden.
var vaultShownFlags = map[string]bool{"data-dir": true, "master-key-file": true, "database": true, config.ConfigFlag: true}

func newVaultCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "vault",
		Short: "Rotate the master key that encrypts upstream secrets and signing keys (on the server's host)",
		Long: `Manage the master keys. These commands run on the server's host, with the server's own
settings (--data-dir, --master-key-file, --database, or their MANDATE_* variables, or --config):
they read the master key file and open the database directly, and work while servers run.
For replicas with separate copies of the master key file, use the two steps of mandate masterkey.`,
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
		Long: `Rewrite the master key file without its retired keys (all but the primary and staged ones). It refuses while any sealed row
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
	db    *server.Maintenance
	keys  *masterkey.Maintenance
	again string // the flags to repeat in a suggested command
	group string // the command group suggested commands are in: vault (default) or masterkey
}

func openVault(cmd *cobra.Command, cfg *config.Config) (*offlineVault, error) {
	var again []string
	for _, name := range []string{"data-dir", "master-key-file", "database", config.ConfigFlag} {
		if f := cmd.Flags().Lookup(name); f != nil && f.Changed && name != "database" {
			again = append(again, "--"+name+" "+f.Value.String())
		}
	}
	db, err := server.OpenMaintenance(cmd.Context(), *cfg)
	if err != nil {
		return nil, err
	}
	return &offlineVault{db: db, keys: db.MasterKeys(), again: strings.Join(again, " ")}, nil
}

func (v *offlineVault) close() { v.db.Close() }

func (v *offlineVault) command(sub string) string {
	if v.group == "masterkey" {
		sub = strings.TrimSuffix(sub, "-master-keys")
		return strings.TrimSpace("mandate masterkey " + sub + " " + v.again)
	}
	return strings.TrimSpace("mandate vault " + sub + " " + v.again)
}

// rotate adds a key, then re-wraps everything under it.
func (v *offlineVault) rotate(ctx context.Context, out io.Writer) error {
	r, err := v.keys.Rotate(ctx)
	if u := (*masterkey.UnopenedError)(nil); errors.As(err, &u) {
		return fmt.Errorf("refusing to rotate: %s of %d sealed rows do not open with the keys of %s: is it the master key file of this database?",
			u, u.Total, v.keys.Path)
	}
	if r.ID == "" {
		return err
	}
	fmt.Fprintf(out, "Added master key %s to %s (keys, newest first: %s).\n", r.ID, v.keys.Path, strings.Join(r.Keys, ", "))
	if err != nil {
		return fmt.Errorf("%w\nThe new key is in the file and the rows re-wrapped so far use it: finish with %s", err, v.command("rewrap"))
	}
	fmt.Fprintf(out, "Re-wrapped %s under master key %s.\n", r.Stats, r.ID)
	fmt.Fprintf(out, "Running servers reload the file on SIGHUP, at restart, and when they meet a row sealed by the new key.\n"+
		"Once every replica has reloaded or restarted, drop the old keys with:\n  %s\n", v.command("prune-master-keys"))
	return nil
}

func (v *offlineVault) rewrapCmd(ctx context.Context, out io.Writer) error {
	id, st, err := v.keys.Rewrap(ctx)
	if errors.Is(err, masterkey.ErrKeptChanging) {
		return fmt.Errorf("%w: run %s again", err, v.command("rewrap"))
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "Re-wrapped %s under master key %s.\n", st, id)
	if keys, err := masterkey.Read(v.keys.Path); err == nil && len(keys) > 1 {
		masterkey.Clear(keys)
		fmt.Fprintf(out, "Once every replica has reloaded the file (SIGHUP) or restarted, drop the old keys with:\n  %s\n", v.command("prune-master-keys"))
	}
	return nil
}

// prune drops the retired keys, if every row opens without them.
func (v *offlineVault) prune(ctx context.Context, out io.Writer) error {
	p, err := v.keys.Prune(ctx)
	if u := (*masterkey.UnopenedError)(nil); errors.As(err, &u) {
		return fmt.Errorf("refusing to drop master keys %s: %s would no longer open. Run %s first; "+
			"if rows keep appearing, a server still seals with an old key: reload it (SIGHUP) or restart it",
			strings.Join(retired(p), ", "), u, v.command("rewrap"))
	}
	if errors.Is(err, masterkey.ErrFileChanged) {
		return fmt.Errorf("refusing to prune: %s changed while it was being checked; run the command again", v.keys.Path)
	}
	if err != nil {
		return err
	}
	if len(p.Dropped) == 0 {
		fmt.Fprintf(out, "Nothing to prune: %s holds no retired master key (keys, newest first: %s).\n", v.keys.Path, strings.Join(p.Keys, ", "))
		return nil
	}
	fmt.Fprintf(out, "Dropped master keys %s from %s; it holds master key %s.\n", strings.Join(p.Dropped, ", "), v.keys.Path, strings.Join(p.Keys, ", "))
	return nil
}

// retired is the ids of the keys a refused prune would have dropped.
func retired(p masterkey.Pruned) []string {
	var out []string
	for _, id := range p.Keys {
		if id != p.Primary && !strings.HasSuffix(id, " (staged)") {
			out = append(out, id)
		}
	}
	return out
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
