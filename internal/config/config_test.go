package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func TestResolvePrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "mandate.yaml")
	if err := os.WriteFile(file, []byte("listen: 127.0.0.1:9000\ntoken-ttl: 2m\nlog-level: debug\ndata-dir: fromfile\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"MANDATE_CONFIG":    file,
		"MANDATE_TOKEN_TTL": "3m",      // beats the file
		"MANDATE_DATA_DIR":  "fromenv", // loses to the flag
	}
	c := Default()
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	c.Bind(fs)
	if err := fs.Parse([]string{"--data-dir", "fromflag"}); err != nil {
		t.Fatal(err)
	}
	if err := Resolve(fs, func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:9000" || c.TokenTTL != 3*time.Minute || c.DataDir != "fromflag" || c.LogLevel != "debug" {
		t.Errorf("got listen=%s ttl=%v data-dir=%s log-level=%s", c.Listen, c.TokenTTL, c.DataDir, c.LogLevel)
	}
	if c.DPoPWindow != 60*time.Second {
		t.Errorf("default lost: dpop-window=%v", c.DPoPWindow)
	}
}

func TestResolveUnknownFileKey(t *testing.T) {
	file := filepath.Join(t.TempDir(), "m.yaml")
	os.WriteFile(file, []byte("listn: x\n"), 0o600)
	c := Default()
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	c.Bind(fs)
	fs.Parse([]string{"--config", file})
	err := Resolve(fs, func(string) string { return "" })
	if err == nil || !strings.Contains(err.Error(), `unknown key "listn"`) {
		t.Fatalf("err = %v, want unknown key", err)
	}
}

func TestValidate(t *testing.T) {
	tests := map[string]struct {
		edit func(*Config)
		want []string // substrings; empty = valid
	}{
		"defaults":            {func(*Config) {}, nil},
		"issuer default":      {func(c *Config) { c.Listen = "127.0.0.1:1" }, nil},
		"all interfaces":      {func(c *Config) { c.Listen = "0.0.0.0:8420" }, []string{"--issuer is required"}},
		"http not loopback":   {func(c *Config) { c.Issuer = "http://auth.example.com" }, []string{"plain http"}},
		"metrics listen":      {func(c *Config) { c.MetricsListen = "127.0.0.1:9420" }, nil},
		"metrics listen bad":  {func(c *Config) { c.MetricsListen = "9420" }, []string{"--metrics-listen"}},
		"metrics listen same": {func(c *Config) { c.MetricsListen = c.Listen }, []string{"--metrics-listen", "must differ"}},
		"issuer query":        {func(c *Config) { c.Issuer = "https://a.example/?x=1" }, []string{"query"}},
		"limits off":          {func(c *Config) { c.RegisterRate, c.ClaimRate, c.DenialAuditRate, c.UnclaimedGrace = 0, 0, 0, 0 }, nil},
		"trusted proxies":     {func(c *Config) { c.TrustedProxies = []string{"10.0.0.0/8", "192.0.2.1", "2001:db8::/32"} }, nil},
		"abuse settings": {func(c *Config) {
			c.RegisterRate, c.ClaimBurst, c.DenialAuditWindow = -1, 0, 0
			c.TrustedProxies = []string{"proxy.example"}
			c.UnclaimedGrace = -time.Hour
		}, []string{"--register-rate", "--claim-burst", "--denial-audit-window", "--trusted-proxies", "proxy.example", "--unclaimed-agent-grace"}},
		"many at once": {func(c *Config) {
			c.LogLevel = "loud"
			c.TokenTTL = 0
			c.SigningAlg = "RS256"
			c.Database = "mysql://x"
		}, []string{"--log-level", "--token-ttl", "--signing-alg", "--database"}},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			c := Default()
			tt.edit(&c)
			err := c.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil, want %v", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate() = %v, missing %q", err, w)
				}
			}
		})
	}
}
