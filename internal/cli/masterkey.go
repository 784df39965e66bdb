package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/mandate-dev/mandate/internal/config"
	"github.com/mandate-dev/mandate/internal/masterkey"
)

// newMasterKeyCmd is mandate masterkey: the master keys of replicas that each have their own
// copy of the master key file, changed in two steps (add everywhere, then promote).
func newMasterKeyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "masterkey",
		Short: "Add, promote, re-wrap and prune master keys, in two steps for replicas with their own key files",
		Long: `Manage the master keys that seal upstream secrets and signing keys, on the server's host, with
the server's own settings (--data-dir, --master-key-file, --database, their MANDATE_* variables,
or --config). They read the master key file, open the database directly, and work while servers run.

Replicas that each have their own copy of the master key file change keys in two steps, so that no
replica ever meets a row sealed by a key its file does not hold:

 1. mandate masterkey new --out new.key, then mandate masterkey add --from new.key on every
    replica's file: the key is staged there, it opens what it seals but seals nothing yet;
 2. mandate masterkey promote --from new.key on every replica's file and reload each replica
    (SIGHUP): from then on it seals with the new key. Then mandate masterkey rewrap once, and
    mandate masterkey prune on every file.

Replicas sharing one file can do it in one step: mandate vault rotate-master-key.
See docs/masterkey.md.`,
		Args: cobra.NoArgs,
	}

	var out string
	newKey := &cobra.Command{
		Use:   "new --out FILE",
		Short: "Write a fresh master key to a file (mode 0600), to add to every replica's key file",
		Long: `Write a fresh random master key to FILE, which must not exist (mode 0600, in the format of a
master key file). Add it to every replica's master key file with mandate masterkey add --from FILE,
promote it with mandate masterkey promote --from FILE, then delete FILE.`,
		Example: "  mandate masterkey new --out new.key",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return errors.New("give the file to write with --out")
			}
			key, err := masterkey.New()
			if err != nil {
				return err
			}
			defer clear(key.Secret)
			f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return fmt.Errorf("write the new master key: %w", err)
			}
			data := masterkey.Format([]masterkey.Key{key})
			defer clear(data)
			_, err = f.Write(data)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				os.Remove(out)
				return fmt.Errorf("write the new master key: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Wrote master key %s to %s.\nAdd it to every replica's master key file with: mandate masterkey add --from %s\n", key.ID(), out, out)
			return nil
		},
	}
	newKey.Flags().StringVar(&out, "out", "", "the file to write the key to (must not exist)")

	var addFrom string
	add := &cobra.Command{
		Use:   "add [--from FILE] [--data-dir D | --master-key-file F] [--database URL]",
		Short: "Stage a master key in this replica's key file: it opens what it seals, but seals nothing yet",
		Long: `Put a master key in front of the master key file as a staged key: a server that loads the
file opens what that key sealed, but seals nothing with it until it is promoted. The key is the one
in --from FILE (written by mandate masterkey new), or a fresh one. Nothing changes when the file
holds the key already. It refuses, changing nothing, when the file does not open every sealed row
of the database.`,
		Example: "  mandate masterkey add --from new.key --data-dir /var/lib/mandate",
		Args:    cobra.NoArgs,
	}
	addCfg := bindVaultFlags(add)
	add.Flags().StringVar(&addFrom, "from", "", "the file holding the key to add (from mandate masterkey new); default a fresh key")
	add.RunE = func(cmd *cobra.Command, _ []string) error {
		key, err := keyFrom(addFrom)
		if err != nil {
			return err
		}
		defer clear(key.Secret)
		return withMasterKeys(cmd, addCfg, func(ctx context.Context, v *offlineVault, w io.Writer) error {
			a, err := v.keys.Add(ctx, key)
			if u := (*masterkey.UnopenedError)(nil); errors.As(err, &u) {
				return fmt.Errorf("refusing to add a key: %s of %d sealed rows do not open with the keys of %s: is it the master key file of this database?",
					u, u.Total, v.keys.Path)
			}
			if err != nil {
				return err
			}
			if a.Already {
				fmt.Fprintf(w, "%s holds master key %s already (keys, newest first: %s).\n", v.keys.Path, a.ID, strings.Join(a.Keys, ", "))
				return nil
			}
			fmt.Fprintf(w, "Staged master key %s in %s (keys, newest first: %s).\n", a.ID, v.keys.Path, strings.Join(a.Keys, ", "))
			fmt.Fprintf(w, "It opens what it seals but seals nothing yet. Once every replica's file holds it, promote it in each:\n  %s\n",
				v.command("promote "+a.ID))
			return nil
		})
	}

	var promoteFrom string
	promote := &cobra.Command{
		Use:   "promote (ID | --from FILE) [--data-dir D | --master-key-file F] [--database URL]",
		Short: "Make a staged master key the one that seals, in this replica's key file",
		Long: `Make the master key ID (or the key in --from FILE) the primary key of the master key file:
the server that loads the file seals with it once it reloads the file (SIGHUP) or restarts. Promote
a key only once every replica's file holds it (mandate masterkey add): a replica whose file does not
could not open what this one then seals. Then re-wrap with mandate masterkey rewrap.`,
		Example: "  mandate masterkey promote --from new.key --data-dir /var/lib/mandate\n" +
			"  mandate masterkey promote 3f9c0e1ab2d47765 --master-key-file /etc/mandate/master.key",
		Args: cobra.MaximumNArgs(1),
	}
	promoteCfg := bindVaultFlags(promote)
	promote.Flags().StringVar(&promoteFrom, "from", "", "the file holding the key to promote (from mandate masterkey new)")
	promote.RunE = func(cmd *cobra.Command, args []string) error {
		var id string
		switch {
		case len(args) == 1 && promoteFrom == "":
			id = args[0]
		case len(args) == 0 && promoteFrom != "":
			key, err := keyFrom(promoteFrom)
			if err != nil {
				return err
			}
			id = key.ID()
			clear(key.Secret)
		default:
			return errors.New("name the key to promote: its id, or --from and the file that holds it")
		}
		return withMasterKeys(cmd, promoteCfg, func(ctx context.Context, v *offlineVault, w io.Writer) error {
			changed, err := v.keys.Promote(ctx, id)
			if errors.Is(err, masterkey.ErrNotInFile) {
				return fmt.Errorf("%s does not hold master key %s: add it first with mandate masterkey add --from FILE", v.keys.Path, id)
			}
			if err != nil {
				return err
			}
			if !changed {
				fmt.Fprintf(w, "Master key %s seals already in %s.\n", id, v.keys.Path)
				return nil
			}
			fmt.Fprintf(w, "Master key %s seals from now on in %s.\n", id, v.keys.Path)
			fmt.Fprintf(w, "Reload the server that uses this file (SIGHUP) or restart it. Once every replica's file has it promoted\n"+
				"and every replica has reloaded, re-wrap what the old keys sealed:\n  %s\n", v.command("rewrap"))
			return nil
		})
	}

	rewrap := &cobra.Command{
		Use:   "rewrap [--data-dir D | --master-key-file F] [--database URL]",
		Short: "Re-wrap every row not sealed by the primary master key",
		Long: `Re-wrap every upstream secret and re-seal every signing key that is not sealed by the primary
key of the master key file (the first key not staged), as mandate vault rewrap does. Rows are
written in batches of 100, each only if no server changed it meanwhile.`,
		Example: "  mandate masterkey rewrap --data-dir /var/lib/mandate",
		Args:    cobra.NoArgs,
	}
	rewrapCfg := bindVaultFlags(rewrap)
	rewrap.RunE = func(cmd *cobra.Command, _ []string) error {
		return withMasterKeys(cmd, rewrapCfg, func(ctx context.Context, v *offlineVault, w io.Writer) error { return v.rewrapCmd(ctx, w) })
	}

	prune := &cobra.Command{
		Use:   "prune [--data-dir D | --master-key-file F] [--database URL]",
		Short: "Drop the retired master keys from this replica's key file, once no row needs them",
		Long: `Drop every key of the master key file but the primary one and the staged ones. It refuses
while a sealed row of the database needs a retired key (run mandate masterkey rewrap first). Run it
once every replica seals with the primary key (its file promoted it, and it reloaded).`,
		Example: "  mandate masterkey prune --data-dir /var/lib/mandate",
		Args:    cobra.NoArgs,
	}
	pruneCfg := bindVaultFlags(prune)
	prune.RunE = func(cmd *cobra.Command, _ []string) error {
		return withMasterKeys(cmd, pruneCfg, func(ctx context.Context, v *offlineVault, w io.Writer) error { return v.prune(ctx, w) })
	}

	list := &cobra.Command{
		Use:     "list [--data-dir D | --master-key-file F] [--database URL]",
		Short:   "List the keys of the master key file and how many sealed rows each seals",
		Example: "  mandate masterkey list --data-dir /var/lib/mandate",
		Args:    cobra.NoArgs,
	}
	listCfg := bindVaultFlags(list)
	list.RunE = func(cmd *cobra.Command, _ []string) error {
		return withMasterKeys(cmd, listCfg, func(ctx context.Context, v *offlineVault, w io.Writer) error {
			keys, err := masterkey.Read(v.keys.Path)
			if err != nil {
				return err
			}
			defer masterkey.Clear(keys)
			rows, err := v.keys.Count(ctx)
			if err != nil {
				return err
			}
			primary := masterkey.ID(masterkey.Active(keys)[0])
			fmt.Fprintf(w, "%-16s  %-8s  %s\n", "KEY", "STATE", "SEALED ROWS")
			for _, k := range keys {
				state := "retired"
				switch {
				case k.Staged:
					state = "staged"
				case k.ID() == primary:
					state = "primary"
				}
				fmt.Fprintf(w, "%-16s  %-8s  %d\n", k.ID(), state, rows[k.ID()])
				delete(rows, k.ID())
			}
			for id, n := range rows {
				fmt.Fprintf(w, "%-16s  %-8s  %d\n", id, "missing", n)
			}
			return nil
		})
	}

	cmd.AddCommand(newKey, add, promote, rewrap, prune, list)
	return cmd
}

// keyFrom reads the one key of a file written by mandate masterkey new; a fresh key for "".
func keyFrom(path string) (masterkey.Key, error) {
	if path == "" {
		return masterkey.New()
	}
	keys, err := masterkey.Read(path)
	if err != nil {
		return masterkey.Key{}, err
	}
	if len(keys) != 1 {
		masterkey.Clear(keys)
		return masterkey.Key{}, fmt.Errorf("%s holds %d keys: give the file mandate masterkey new wrote", path, len(keys))
	}
	return masterkey.Key{Secret: keys[0].Secret}, nil
}

// withMasterKeys opens the database and master key file of the settings and runs fn on them.
func withMasterKeys(cmd *cobra.Command, cfg *config.Config, fn func(context.Context, *offlineVault, io.Writer) error) error {
	v, err := openVault(cmd, cfg)
	if err != nil {
		return err
	}
	defer v.close()
	v.group = "masterkey"
	return fn(cmd.Context(), v, cmd.OutOrStdout())
}
