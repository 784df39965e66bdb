package cli

import (
	"bytes"
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/config"
	"github.com/mandate-dev/mandate/internal/masterkey"
	"github.com/mandate-dev/mandate/internal/pgtest"
	"github.com/mandate-dev/mandate/internal/server"
	"github.com/mandate-dev/mandate/internal/servertest"
	"github.com/mandate-dev/mandate/internal/token"
	"github.com/mandate-dev/mandate/internal/vault"
)

func randomMasterKey(t *testing.T) []byte {
	t.Helper()
	k := make([]byte, masterkey.Size)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func mustVaultKeyring(t *testing.T, keys ...[]byte) *vault.Envelopes {
	t.Helper()
	kr, err := masterkey.NewKeyring(keys...)
	if err != nil {
		t.Fatal(err)
	}
	return vault.NewEnvelopes(kr)
}

// legacySigningKey is a signing key as an earlier version stored it: sealed with master and no
// header (nonce || AES-256-GCM(master, PKCS#8, kid)).
func legacySigningKey(t *testing.T, master []byte, now time.Time) token.SigningKey {
	t.Helper()
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	jwk := jose.JSONWebKey{Key: pub, Algorithm: token.AlgEdDSA, Use: "sig"}
	tp, err := jwk.Thumbprint(crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	jwk.KeyID = base64.RawURLEncoding.EncodeToString(tp)
	pubJSON, _ := json.Marshal(jwk)
	der, _ := x509.MarshalPKCS8PrivateKey(priv)
	block, _ := aes.NewCipher(master)
	aead, _ := cipher.NewGCM(block)
	nonce := make([]byte, aead.NonceSize())
	rand.Read(nonce)
	return token.SigningKey{KID: jwk.KeyID, Alg: token.AlgEdDSA, PublicJWK: pubJSON,
		Private: aead.Seal(nonce, nonce, der, []byte(jwk.KeyID)), CreatedAt: now, ActiveAt: now}
}

// sealedBy counts the rows of the store per master key id that sealed them ("" for a signing
// key of an earlier version, which names none).
func sealedBy(t *testing.T, st masterkey.Store) (secrets, keys map[string]int) {
	t.Helper()
	ctx := context.Background()
	secrets, keys = map[string]int{}, map[string]int{}
	for after := (vault.SealedRow{}); ; {
		page, err := st.SealedSecrets(ctx, after, 1000)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range page {
			secrets[vault.WrappedBy(r.Sealed)]++
		}
		if len(page) < 1000 {
			break
		}
		after = page[len(page)-1]
	}
	page, err := st.SealedSigningKeys(ctx, "", 1000)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range page {
		keys[masterkey.SealedBy(k.Sealed)]++
	}
	return secrets, keys
}

// injected is the Authorization header the server's vault puts on a request to upstream name.
func injected(t *testing.T, srv *server.Server, name string) string {
	t.Helper()
	ctx := context.Background()
	u, err := srv.Vault().Upstream(ctx, name)
	if err != nil {
		t.Fatalf("Upstream(%s): %v", name, err)
	}
	req := httptest.NewRequest("GET", u.BaseURL+"/v3/x", nil)
	if err := srv.Vault().Inject(ctx, u, req); err != nil {
		t.Fatalf("Inject(%s): %v", name, err)
	}
	return req.Header.Get("Authorization")
}

func readKeys(t *testing.T, path string) []string {
	t.Helper()
	keys, err := masterkey.Read(path)
	if err != nil {
		t.Fatal(err)
	}
	if m := fileMode(t, path); m != 0o600 {
		t.Errorf("%s has mode %04o, want 0600", path, m)
	}
	return masterkey.IDs(keys)
}

func TestVaultRotateMasterKeySQLite(t *testing.T) { testVaultRotation(t, "") }

func TestVaultRotateMasterKeyPostgres(t *testing.T) {
	pgtest.BaseURL(t)
	testVaultRotation(t, pgtest.URL(t))
}

func testVaultRotation(t *testing.T, database string) {
	ctx := context.Background()
	dataDir := filepath.Join(t.TempDir(), "data")
	os.MkdirAll(dataDir, 0o700)
	keyPath := filepath.Join(dataDir, server.MasterKeyFile)
	// The master key file of an earlier version: 32 raw bytes.
	keyA := randomMasterKey(t)
	if err := os.WriteFile(keyPath, keyA, 0o600); err != nil {
		t.Fatal(err)
	}
	idA := masterkey.ID(keyA)
	start := func() *servertest.Server {
		return servertest.Start(t, servertest.Options{Config: func(c *config.Config) { c.DataDir, c.Database = dataDir, database }})
	}
	flags := []string{"--data-dir", dataDir}
	if database != "" {
		flags = append(flags, "--database", database)
	}
	vaultCmd := func(sub string, extra ...string) []string {
		return append(append([]string{"vault", sub}, flags...), extra...)
	}

	s1 := start()
	t.Setenv(envConfigDir, t.TempDir())
	t.Setenv(envToken, s1.AdminToken)
	t.Setenv(envAgentKey, "")
	const key = "sk_live_rotation_canary_0123456789"
	if out, err := mandate(t, key+"\n", "upstream", "add", "ahrefs", "--server", s1.URL, "--base-url", "https://api.ahrefs.com",
		"--auth", "bearer", "--route", "ahrefs:read=GET /v3/**"); err != nil {
		t.Fatalf("upstream add: %v\n%s", err, out)
	}
	ok(t, "upstream", "add", "x", "--server", s1.URL, "--base-url", "http://127.0.0.1:9", "--auth", "oauth2-refresh", "--allow-private",
		"--token-url", "http://127.0.0.1:9/token", "--client-id", "cid", "--no-secret")
	if out, err := mandate(t, "rt-canary-0123456789\n", "upstream", "set-secret", "x", "--server", s1.URL); err != nil {
		t.Fatalf("set-secret: %v\n%s", err, out)
	}
	// Enough rows for several pages, written as a server holding key A does.
	st := s1.Srv.Store()
	krA := mustVaultKeyring(t, keyA)
	for i := range 2*masterkey.Batch + 7 {
		name := fmt.Sprintf("bulk-%03d", i)
		u := vault.Upstream{Name: name, BaseURL: "https://" + name + ".example", Auth: vault.AuthBearer, CreatedAt: time.Now(), UpdatedAt: time.Now()}
		if err := st.CreateUpstream(ctx, u, audit.New(time.Now(), "", vault.ActionUpstreamCreate)); err != nil {
			t.Fatal(err)
		}
		blob, _ := krA.Seal(name, vault.SecretCredential, []byte("bulk-secret-"+name))
		if err := st.PutSecret(ctx, name, vault.SecretCredential, blob, time.Time{}, audit.New(time.Now(), "", vault.ActionSecretSet)); err != nil {
			t.Fatal(err)
		}
	}
	// A signing key sealed as earlier versions did (no key id); it is the newest, so it signs.
	legacy := legacySigningKey(t, keyA, time.Now())
	if err := st.AddSigningKey(ctx, legacy, time.Time{}, audit.New(time.Now(), "", audit.ActionKeyRotate)); err != nil {
		t.Fatal(err)
	}
	secrets, keys := sealedBy(t, st)
	nSecrets, nKeys := secrets[idA], keys[idA]+keys[""]
	if len(secrets) != 1 || nSecrets != 2*masterkey.Batch+7+3 || keys[""] != 1 || nKeys != 2 {
		t.Fatalf("before the rotation: secrets by key %v, signing keys by key %v", secrets, keys)
	}

	// A key file that does not open this database is refused before anything changes.
	wrong := filepath.Join(t.TempDir(), "wrong.key")
	masterkey.Write(wrong, []masterkey.Key{{Secret: randomMasterKey(t)}})
	fails(t, "", vaultCmd("rotate-master-key", "--master-key-file", wrong), "refusing to rotate",
		fmt.Sprintf("%d rows", nSecrets+nKeys))
	if ids := readKeys(t, wrong); len(ids) != 1 {
		t.Errorf("a refused rotation changed the key file: %v", ids)
	}
	fails(t, "", []string{"vault", "rotate-master-key", "--data-dir", t.TempDir()}, "no master key file")

	// Rotate while s1 runs, holding key A only.
	out := ok(t, vaultCmd("rotate-master-key")...)
	ids := readKeys(t, keyPath)
	if len(ids) != 2 || ids[1] != idA {
		t.Fatalf("after the rotation the key file holds %v, want [new, %s]", ids, idA)
	}
	idB := ids[0]
	hasAll(t, out, "Added master key "+idB, fmt.Sprintf("Re-wrapped %d upstream secrets and %d signing keys under master key %s", nSecrets, nKeys, idB),
		"mandate vault prune-master-keys --data-dir "+dataDir)
	if database != "" && strings.Contains(out, database) {
		t.Errorf("the output repeats the database URL (it may hold a password):\n%s", out)
	}
	secrets, keys = sealedBy(t, st)
	if len(secrets) != 1 || secrets[idB] != nSecrets || len(keys) != 1 || keys[idB] != nKeys {
		t.Fatalf("after the rotation: secrets by key %v, signing keys by key %v; want all by %s", secrets, keys, idB)
	}
	evs, err := st.ListEvents(ctx, audit.Filter{Action: masterkey.ActionRewrap})
	if err != nil || len(evs) != 4 { // three pages of secrets, one of signing keys
		t.Errorf("%d rewrap events, want 4 (%v)", len(evs), err)
	}
	if evs, _ := st.ListEvents(ctx, audit.Filter{Action: masterkey.ActionRotate}); len(evs) != 1 || evs[0].Target != idB {
		t.Errorf("rotate events = %+v", evs)
	}
	if err := st.VerifyChain(ctx); err != nil {
		t.Errorf("VerifyChain: %v", err)
	}
	// Rewrapping again finds nothing to do.
	hasAll(t, ok(t, vaultCmd("rewrap")...), "Re-wrapped 0 upstream secrets and 0 signing keys under master key "+idB)

	// s1 never reloaded: it meets rows sealed by B, reloads the file and opens them.
	if got := injected(t, s1.Srv, "ahrefs"); got != "Bearer "+key {
		t.Errorf("s1 injects %q after the rotation", got)
	}
	hasAll(t, ok(t, "keys", "list", "--server", s1.URL), legacy.KID)
	// and seals what it writes from then on with B.
	if out, err := mandate(t, key+"-2\n", "upstream", "set-secret", "ahrefs", "--server", s1.URL); err != nil {
		t.Fatalf("set-secret: %v\n%s", err, out)
	}
	sealed, _, _, _ := st.GetSecret(ctx, "ahrefs", vault.SecretCredential)
	if vault.WrappedBy(sealed) != idB {
		t.Errorf("s1 sealed a new secret with %s after reloading, want %s", vault.WrappedBy(sealed), idB)
	}

	// A server started from the new key file signs and verifies tokens, with the signing key
	// that was sealed by an earlier version, and injects the secret.
	s2 := start()
	if got := injected(t, s2.Srv, "ahrefs"); got != "Bearer "+key+"-2" {
		t.Errorf("s2 injects %q", got)
	}
	if got := injected(t, s2.Srv, "bulk-123"); got != "Bearer bulk-secret-bulk-123" {
		t.Errorf("s2 injects %q", got)
	}
	kf := filepath.Join(t.TempDir(), "agent", "key.jwk")
	ok(t, "agent", "init", "--key-file", kf)
	var reg struct {
		AgentID   string `json:"agent_id"`
		ClaimCode string `json:"claim_code"`
	}
	decodeJSON(t, ok(t, "agent", "register", "--server", s2.URL, "--handle", "rotation-bot", "--key-file", kf, "--json"), &reg)
	ok(t, "agents", "claim", reg.ClaimCode, "--server", s2.URL)
	at := strings.TrimSpace(ok(t, "agent", "token", "--key-file", kf))
	var header struct {
		KID string `json:"kid"`
	}
	h, _ := base64.RawURLEncoding.DecodeString(strings.Split(at, ".")[0])
	if json.Unmarshal(h, &header); header.KID != legacy.KID {
		t.Errorf("the token is signed by %q, want the re-sealed legacy key %s", header.KID, legacy.KID)
	}
	hasAll(t, ok(t, "agent", "whoami", "--key-file", kf), reg.AgentID, "@rotation-bot")

	// A replica that has not reloaded writes a row with key A: prune refuses to drop A.
	blob, _ := krA.Seal("bulk-000", vault.SecretCredential, []byte("written-with-A"))
	if err := st.PutSecret(ctx, "bulk-000", vault.SecretCredential, blob, time.Time{}, audit.New(time.Now(), "", vault.ActionSecretSet)); err != nil {
		t.Fatal(err)
	}
	fails(t, "", vaultCmd("prune-master-keys"), "refusing to drop master keys "+idA, "1 row (1 sealed by master key "+idA+")",
		"mandate vault rewrap --data-dir "+dataDir)
	if ids := readKeys(t, keyPath); len(ids) != 2 {
		t.Fatalf("a refused prune changed the key file: %v", ids)
	}
	hasAll(t, ok(t, vaultCmd("rewrap")...), "Re-wrapped 1 upstream secret and 0 signing keys under master key "+idB)
	hasAll(t, ok(t, vaultCmd("prune-master-keys")...), "Dropped master keys "+idA, "it holds master key "+idB)
	if ids := readKeys(t, keyPath); len(ids) != 1 || ids[0] != idB {
		t.Fatalf("after prune the key file holds %v, want [%s]", ids, idB)
	}
	hasAll(t, ok(t, vaultCmd("prune-master-keys")...), "Nothing to prune")
	if evs, _ := st.ListEvents(ctx, audit.Filter{Action: masterkey.ActionPrune}); len(evs) != 1 || !strings.Contains(evs[0].Detail, idA) {
		t.Errorf("prune events = %+v", evs)
	}

	// Everything still opens with B alone: a reload, and a fresh server.
	if err := s2.Srv.ReloadMasterKeys(); err != nil {
		t.Fatalf("ReloadMasterKeys: %v", err)
	}
	s3 := start()
	if got := injected(t, s3.Srv, "bulk-000"); got != "Bearer written-with-A" {
		t.Errorf("s3 injects %q", got)
	}
	hasAll(t, ok(t, "keys", "list", "--server", s3.URL), legacy.KID)
	if err := st.VerifyChain(ctx); err != nil {
		t.Errorf("VerifyChain: %v", err)
	}
}

// The vault commands show only the flags that locate the data, and accept the others.
func TestVaultCommandFlags(t *testing.T) {
	out := ok(t, "vault", "rotate-master-key", "--help")
	hasAll(t, out, "--data-dir", "--master-key-file", "--database", "--config")
	if strings.Contains(out, "--listen") || strings.Contains(out, "--token-ttl") {
		t.Errorf("help shows server-only flags:\n%s", out)
	}
	t.Setenv("MANDATE_MASTER_KEY_FILE", filepath.Join(t.TempDir(), "none.key"))
	fails(t, "", []string{"vault", "prune-master-keys", "--listen", "0.0.0.0:1"}, "no master key file at", "none.key")
	if !bytes.Contains([]byte(fails(t, "", []string{"vault", "rewrap", "--database", "mysql://x"}, "--database")), []byte("postgres://")) {
		t.Error("no hint for --database")
	}
}

// A running server reloads the master key file on SIGHUP and seals with its newest key.
func TestServerReloadsMasterKeysOnSIGHUP(t *testing.T) {
	s := servertest.Start(t, servertest.Options{})
	t.Setenv(envConfigDir, t.TempDir())
	t.Setenv(envToken, s.AdminToken)
	if out, err := mandate(t, "k1-0123456789\n", "upstream", "add", "ahrefs", "--server", s.URL, "--base-url", "https://api.ahrefs.com", "--auth", "bearer"); err != nil {
		t.Fatalf("upstream add: %v\n%s", err, out)
	}
	keyPath := filepath.Join(s.DataDir, server.MasterKeyFile)
	old, err := masterkey.Read(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	keyB := randomMasterKey(t)
	if err := masterkey.Write(keyPath, append([]masterkey.Key{{Secret: keyB}}, old...)); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if out, err := mandate(t, "k2-0123456789\n", "upstream", "set-secret", "ahrefs", "--server", s.URL); err != nil {
			t.Fatalf("set-secret: %v\n%s", err, out)
		}
		sealed, _, _, err := s.Srv.Store().GetSecret(context.Background(), "ahrefs", vault.SecretCredential)
		if err != nil {
			t.Fatal(err)
		}
		if vault.WrappedBy(sealed) == masterkey.ID(keyB) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after SIGHUP the server still seals with %s, want %s", vault.WrappedBy(sealed), masterkey.ID(keyB))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := injected(t, s.Srv, "ahrefs"); got != "Bearer k2-0123456789" {
		t.Errorf("injects %q", got)
	}
}
