package cli

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mandate-dev/mandate/internal/config"
	"github.com/mandate-dev/mandate/internal/masterkey"
	"github.com/mandate-dev/mandate/internal/pgtest"
	"github.com/mandate-dev/mandate/internal/servertest"
	"github.com/mandate-dev/mandate/internal/vault"
)

func TestMasterKeyTwoStepSQLite(t *testing.T) { testMasterKeyTwoStep(t, "") }

func TestMasterKeyTwoStepPostgres(t *testing.T) {
	pgtest.BaseURL(t)
	testMasterKeyTwoStep(t, pgtest.URL(t))
}

// Two replicas on one database, each with its own copy of the master key file, change master
// keys in two steps — add the key to each file (staged), then promote it in each — and neither
// ever meets a row it cannot open: a staged key seals nothing, and a replica whose file holds
// the key staged opens what a replica that promoted it seals.
func testMasterKeyTwoStep(t *testing.T, database string) {
	ctx := context.Background()
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	keyA, keyB := filepath.Join(dir, "a", "master.key"), filepath.Join(dir, "b", "master.key")
	for _, d := range []string{dataDir, filepath.Dir(keyA), filepath.Dir(keyB)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	start := func(key string) *servertest.Server {
		return servertest.Start(t, servertest.Options{Config: func(c *config.Config) {
			c.DataDir, c.Database, c.MasterKeyFile = dataDir, database, key
		}})
	}
	a := start(keyA)
	raw, err := os.ReadFile(keyA)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyB, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	b := start(keyB)
	old := readKeys(t, keyA)[0]
	flags := func(key string, args ...string) []string {
		args = append(append([]string{"masterkey"}, args...), "--data-dir", dataDir, "--master-key-file", key)
		if database != "" {
			args = append(args, "--database", database)
		}
		return args
	}
	t.Setenv(envConfigDir, t.TempDir())
	t.Setenv(envToken, a.AdminToken)
	t.Setenv(envAgentKey, "")
	// set adds an upstream with its secret through a replica and returns the key that sealed
	// it; every replica then injects it (a new upstream: no replica has it cached).
	set := func(via *servertest.Server, name string) string {
		t.Helper()
		if out, err := mandate(t, "sk-"+name+"-0123456789\n", "upstream", "add", name, "--server", via.URL,
			"--base-url", "https://"+name+".example", "--auth", "bearer"); err != nil {
			t.Fatalf("upstream add: %v\n%s", err, out)
		}
		for _, r := range []*servertest.Server{a, b} {
			if got := injected(t, r.Srv, name); got != "Bearer sk-"+name+"-0123456789" {
				t.Fatalf("%s injects %q for %s", r.URL, got, name)
			}
		}
		sealed, _, _, err := a.Srv.Store().GetSecret(ctx, name, vault.SecretCredential)
		if err != nil {
			t.Fatal(err)
		}
		return vault.WrappedBy(sealed)
	}

	newKey := filepath.Join(dir, "new.key")
	out := ok(t, "masterkey", "new", "--out", newKey)
	if m := fileMode(t, newKey); m != 0o600 {
		t.Errorf("%s has mode %04o, want 0600", newKey, m)
	}
	fresh := readKeys(t, newKey)[0]
	hasAll(t, out, "Wrote master key "+fresh, "mandate masterkey add --from "+newKey)
	fails(t, "", []string{"masterkey", "new", "--out", newKey}, "exists")

	// Step 1, on A's file only: A holds the key staged, and still seals with the old one, so B,
	// which does not hold it, opens what A writes.
	hasAll(t, ok(t, flags(keyA, "add", "--from", newKey)...), "Staged master key "+fresh, "mandate masterkey promote "+fresh)
	if ids := readKeys(t, keyA); len(ids) != 2 || ids[0] != fresh+" (staged)" || ids[1] != old {
		t.Fatalf("A's file holds %v after add", ids)
	}
	if err := a.Srv.ReloadMasterKeys(); err != nil {
		t.Fatal(err)
	}
	if by := set(a, "u1"); by != old {
		t.Errorf("A sealed with %s while the new key was staged, want %s", by, old)
	}
	hasAll(t, ok(t, flags(keyA, "add", "--from", newKey)...), "holds master key "+fresh+" already")
	// Step 1, on B's file. B is not reloaded: it learns the key when it meets a row sealed by it.
	ok(t, flags(keyB, "add", "--from", newKey)...)

	// Step 2: promoted in A's file, A seals with it once reloaded; B opens that.
	fails(t, "", flags(keyA, "promote", "0000000000000000"), "does not hold master key 0000000000000000")
	hasAll(t, ok(t, flags(keyA, "promote", "--from", newKey)...), "Master key "+fresh+" seals from now on", "mandate masterkey rewrap")
	if ids := readKeys(t, keyA); len(ids) != 2 || ids[0] != fresh || ids[1] != old {
		t.Fatalf("A's file holds %v after promote", ids)
	}
	if err := a.Srv.ReloadMasterKeys(); err != nil {
		t.Fatal(err)
	}
	if by := set(a, "u2"); by != fresh {
		t.Errorf("A sealed with %s after the promotion, want %s", by, fresh)
	}
	// B still seals with the old key until its own file promotes the new one.
	if by := set(b, "u3"); by != old {
		t.Errorf("B sealed with %s before its promotion, want %s", by, old)
	}
	hasAll(t, ok(t, flags(keyB, "promote", fresh)...), "seals from now on")
	hasAll(t, ok(t, flags(keyB, "promote", fresh)...), "seals already")
	if err := b.Srv.ReloadMasterKeys(); err != nil {
		t.Fatal(err)
	}
	if by := set(b, "u4"); by != fresh {
		t.Errorf("B sealed with %s after the promotion, want %s", by, fresh)
	}

	// Re-wrap once, prune every file; both replicas go on, and a new one on B's file too.
	hasAll(t, ok(t, flags(keyA, "rewrap")...), "under master key "+fresh)
	list := ok(t, flags(keyB, "list")...)
	hasAll(t, list, fresh+"  primary", old+"  retired   0")
	for _, key := range []string{keyA, keyB} {
		hasAll(t, ok(t, flags(key, "prune")...), "Dropped master keys "+old, "it holds master key "+fresh)
		if ids := readKeys(t, key); len(ids) != 1 || ids[0] != fresh {
			t.Errorf("%s holds %v after prune, want [%s]", key, ids, fresh)
		}
	}
	hasAll(t, ok(t, flags(keyA, "prune")...), "Nothing to prune")
	if strings.Contains(ok(t, flags(keyA, "list")...), old) {
		t.Error("list still names the pruned key")
	}
	for _, r := range []*servertest.Server{a, b} {
		if err := r.Srv.ReloadMasterKeys(); err != nil {
			t.Fatal(err)
		}
	}
	set(b, "u5")
	c := start(keyB)
	if got := injected(t, c.Srv, "u5"); got != "Bearer sk-u5-0123456789" {
		t.Errorf("a new replica on B's file injects %q", got)
	}
	hasAll(t, ok(t, "keys", "list", "--server", c.URL), "signing")
}

// docs/masterkey.md runs as pasted: two replicas with their own key files on one database, a
// key added to both files, promoted in both, everything re-wrapped and the old key pruned.
func TestMasterKeyDocs(t *testing.T) {
	dir := t.TempDir()
	env := docEnv(t, dir, "./cmd/mandate")
	addrA, addrB := servertest.FreeAddr(t), servertest.FreeAddr(t)
	script := docBlocks(t, "../../docs/masterkey.md", "## A key file per replica: two steps", true)
	// The mandate on PATH is a wrapper that keeps the output (docEnv): the signal goes to the
	// server it runs.
	script = substitute(t, script, [][2]string{{"127.0.0.1:8420", addrA}, {"127.0.0.1:8421", addrB},
		{`kill -HUP "$replica_a" "$replica_b"`, `kill -HUP $(pgrep -P "$replica_a" -x mandate.real) $(pgrep -P "$replica_b" -x mandate.real)`}})
	out := runScript(t, dir, script, env)
	hasAll(t, out, "Wrote master key ", "Staged master key ", "seals from now on", "Re-wrapped 1 upstream secret and 1 signing key under master key ",
		"Dropped master keys ", "reloaded master keys", "primary")
	keys, err := masterkey.Read(filepath.Join(dir, "a", "master.key"))
	if err != nil {
		t.Fatal(err)
	}
	id := masterkey.IDs(keys)
	other := readKeys(t, filepath.Join(dir, "b", "master.key"))
	if len(id) != 1 || len(other) != 1 || id[0] != other[0] {
		t.Fatalf("after the walkthrough the key files hold %v and %v, want one key, the same", id, other)
	}
	hasAll(t, out, id[0]+"  primary   2")
	if _, err := os.Stat(filepath.Join(dir, "new.key")); !os.IsNotExist(err) {
		t.Errorf("new.key is still there: %v", err)
	}
}
