package config

// The precedence of settings is tested through the real commands, in internal/cli
// (settings_test.go).

import (
	"strings"
	"testing"
	"time"
)

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
		"retention forever":   {func(c *Config) { c.Retention = 0 }, nil},
		"retention negative":  {func(c *Config) { c.Retention = -time.Hour }, []string{"--retention"}},
		"db timeout":          {func(c *Config) { c.DBTimeout = 0 }, []string{"--db-timeout 0s: want between 100ms and 5m0s"}},
		"abuse settings": {func(c *Config) {
			c.RegisterRate, c.ClaimBurst, c.DenialAuditWindow = -1, 0, 0
			c.TrustedProxies = []string{"proxy.example"}
			c.UnclaimedGrace = -time.Hour
		}, []string{"--register-rate", "--claim-burst", "--denial-audit-window", "--trusted-proxies", "proxy.example", "--unclaimed-agent-grace"}},
		"audit sinks": {func(c *Config) {
			c.AuditSinks = []string{"file:/var/log/a.jsonl", "syslog+tls://logs.example", "https://siem.example/hook"}
			c.AuditWebhookSecretFile = "/etc/mandate/webhook.secret"
		}, nil},
		"audit sinks bad": {func(c *Config) {
			c.AuditSinks = []string{"syslog+udp://logs.example", "https://siem.example/hook", "https://siem.example/hook?k=1", "/var/log/a"}
			c.AuditSinkBatch = 0
		}, []string{"syslog+udp", "--audit-webhook-secret-file is required", "a second sink named https://siem.example/hook",
			`"/var/log/a": want file:PATH`, "--audit-sink-batch"}},
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
