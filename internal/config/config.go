// Package config is the server's one configuration struct: defaults, the flag set that documents
// every setting, the layering of YAML file < MANDATE_* environment < flags, and Validate.
package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"gopkg.in/yaml.v3"

	"github.com/mandate-dev/mandate/internal/loopback"
	"github.com/mandate-dev/mandate/internal/ratelimit"
)

// Config is every setting of mandate serve.
type Config struct {
	DataDir         string
	MasterKeyFile   string // "" = <DataDir>/master.key; see MasterKeyPath
	Listen          string
	MetricsListen   string // "" = /metrics on Listen
	Issuer          string
	Database        string
	LogLevel        string
	LogFormat       string
	SigningAlg      string
	KeyPublishDelay time.Duration
	TokenTTL        time.Duration
	DPoPWindow      time.Duration
	DPoPNonce       bool
	NonceRotation   time.Duration
	ClaimCodeTTL    time.Duration
	KeyGrace        time.Duration
	ShutdownTimeout time.Duration

	// Abuse of the anonymous endpoints, per client address and per replica (see
	// internal/ratelimit): rates are a minute, 0 disables.
	RegisterRate      float64
	RegisterBurst     int
	ClaimRate         float64 // claims and new claim codes
	ClaimBurst        int
	DenialAuditRate   float64 // anonymous denials written one by one; past it they are counted
	DenialAuditBurst  int
	DenialAuditWindow time.Duration // identical anonymous denials are counted into one event
	TrustedProxies    []string      // whose X-Forwarded-For is believed; none by default
	UnclaimedGrace    time.Duration // an UNCLAIMED agent is removed this long after its code lapsed
}

// Default returns the zero-configuration settings: SQLite in ./mandate-data on loopback.
func Default() Config {
	return Config{
		DataDir:         "mandate-data",
		Listen:          "127.0.0.1:8420",
		LogLevel:        "info",
		LogFormat:       "text",
		SigningAlg:      "EdDSA",
		KeyPublishDelay: 10 * time.Minute,
		TokenTTL:        5 * time.Minute,
		DPoPWindow:      60 * time.Second,
		DPoPNonce:       true,
		NonceRotation:   5 * time.Minute,
		ClaimCodeTTL:    15 * time.Minute,
		KeyGrace:        time.Hour,
		ShutdownTimeout: 15 * time.Second,

		RegisterRate:      10,
		RegisterBurst:     20,
		ClaimRate:         10,
		ClaimBurst:        10,
		DenialAuditRate:   30,
		DenialAuditBurst:  30,
		DenialAuditWindow: time.Minute,
		UnclaimedGrace:    24 * time.Hour,
	}
}

// DefaultMasterKeyFile is the name of the master key file in the data directory.
const DefaultMasterKeyFile = "master.key"

// MasterKeyPath is the master key file: --master-key-file, else master.key in the data
// directory.
func (c *Config) MasterKeyPath() string {
	if c.MasterKeyFile != "" {
		return c.MasterKeyFile
	}
	return filepath.Join(c.DataDir, DefaultMasterKeyFile)
}

// EnvPrefix starts the environment variable of every flag: --data-dir is MANDATE_DATA_DIR.
const EnvPrefix = "MANDATE_"

// EnvName is the environment variable for a flag name.
func EnvName(flag string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// ConfigFlag names the optional YAML file; its keys are the flag names.
const ConfigFlag = "config"

// Bind registers every setting as a flag on fs, writing into c. The help text names the
// environment variable too, so --help documents every way to set it.
func (c *Config) Bind(fs *pflag.FlagSet) {
	fs.String(ConfigFlag, "", "optional YAML file whose keys are these flag names (env MANDATE_CONFIG)")
	fs.StringVar(&c.DataDir, "data-dir", c.DataDir, "directory for the SQLite database, master key and bootstrap token (env MANDATE_DATA_DIR)")
	fs.StringVar(&c.MasterKeyFile, "master-key-file", c.MasterKeyFile, "file of the master keys that encrypt the signing keys and upstream secrets, created (0600) on first start; default <data-dir>/master.key (env MANDATE_MASTER_KEY_FILE)")
	fs.StringVar(&c.Listen, "listen", c.Listen, "address to listen on (env MANDATE_LISTEN)")
	fs.StringVar(&c.MetricsListen, "metrics-listen", c.MetricsListen, "serve /metrics only on this address, e.g. 127.0.0.1:9420, instead of on --listen (env MANDATE_METRICS_LISTEN)")
	fs.StringVar(&c.Issuer, "issuer", c.Issuer, "public URL of this server, used as token issuer; default http://<listen> (env MANDATE_ISSUER)")
	fs.StringVar(&c.Database, "database", c.Database, "postgres:// URL to use PostgreSQL instead of the embedded SQLite (env MANDATE_DATABASE)")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "debug, info, warn or error (env MANDATE_LOG_LEVEL)")
	fs.StringVar(&c.LogFormat, "log-format", c.LogFormat, "text or json (env MANDATE_LOG_FORMAT)")
	fs.StringVar(&c.SigningAlg, "signing-alg", c.SigningAlg, "algorithm of new signing keys: EdDSA or ES256 (env MANDATE_SIGNING_ALG)")
	fs.DurationVar(&c.KeyPublishDelay, "key-publish-delay", c.KeyPublishDelay, "how long a rotated-in signing key is published before it signs (env MANDATE_KEY_PUBLISH_DELAY)")
	fs.DurationVar(&c.TokenTTL, "token-ttl", c.TokenTTL, "access token lifetime (env MANDATE_TOKEN_TTL)")
	fs.DurationVar(&c.DPoPWindow, "dpop-window", c.DPoPWindow, "accepted clock difference for a DPoP proof's iat, either way (env MANDATE_DPOP_WINDOW)")
	fs.BoolVar(&c.DPoPNonce, "dpop-nonce", c.DPoPNonce, "require server-issued DPoP nonces at the token endpoint (env MANDATE_DPOP_NONCE)")
	fs.DurationVar(&c.NonceRotation, "dpop-nonce-rotation", c.NonceRotation, "how often DPoP nonces rotate (env MANDATE_DPOP_NONCE_ROTATION)")
	fs.DurationVar(&c.ClaimCodeTTL, "claim-code-ttl", c.ClaimCodeTTL, "lifetime of an agent's one-time claim code (env MANDATE_CLAIM_CODE_TTL)")
	fs.DurationVar(&c.KeyGrace, "agent-key-grace", c.KeyGrace, "how long an agent's old key keeps working after key rotation (env MANDATE_AGENT_KEY_GRACE)")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", c.ShutdownTimeout, "how long to wait for requests in flight on SIGTERM/SIGINT (env MANDATE_SHUTDOWN_TIMEOUT)")
	fs.Float64Var(&c.RegisterRate, "register-rate", c.RegisterRate, "agent registrations a minute per client address, per replica; past it 429 with Retry-After; 0 = no limit (env MANDATE_REGISTER_RATE)")
	fs.IntVar(&c.RegisterBurst, "register-burst", c.RegisterBurst, "agent registrations one client address may make at once (env MANDATE_REGISTER_BURST)")
	fs.Float64Var(&c.ClaimRate, "claim-rate", c.ClaimRate, "agent claims and new claim codes a minute per client address, per replica; 0 = no limit (env MANDATE_CLAIM_RATE)")
	fs.IntVar(&c.ClaimBurst, "claim-burst", c.ClaimBurst, "claims and new claim codes one client address may ask for at once (env MANDATE_CLAIM_BURST)")
	fs.Float64Var(&c.DenialAuditRate, "denial-audit-rate", c.DenialAuditRate, "anonymous refusals a minute per client address written to the audit trail one by one; past it they are counted into one event per --denial-audit-window; 0 = write each (env MANDATE_DENIAL_AUDIT_RATE)")
	fs.IntVar(&c.DenialAuditBurst, "denial-audit-burst", c.DenialAuditBurst, "anonymous refusals per client address written one by one at once (env MANDATE_DENIAL_AUDIT_BURST)")
	fs.DurationVar(&c.DenialAuditWindow, "denial-audit-window", c.DenialAuditWindow, "past --denial-audit-rate, identical anonymous refusals (same client address, action and reason) within this window are written as one event with their count (env MANDATE_DENIAL_AUDIT_WINDOW)")
	fs.StringSliceVar(&c.TrustedProxies, "trusted-proxies", c.TrustedProxies, "addresses or CIDR prefixes of reverse proxies whose X-Forwarded-For names the client address; none by default, so the header is ignored (env MANDATE_TRUSTED_PROXIES, comma-separated)")
	fs.DurationVar(&c.UnclaimedGrace, "unclaimed-agent-grace", c.UnclaimedGrace, "how long an UNCLAIMED agent is kept after its claim code lapsed, the time it has to ask for a new one, before it is removed and its handle and key are free; 0 = never remove (env MANDATE_UNCLAIMED_AGENT_GRACE)")
}

// Resolve layers the settings after fs has parsed the command line: defaults < YAML file <
// MANDATE_* environment < flags given on the command line. Every layer goes through the flag's
// own parser, so a value means the same wherever it is written.
func Resolve(fs *pflag.FlagSet, getenv func(string) string) error {
	given := map[string]string{}
	fs.Visit(func(f *pflag.Flag) { given[f.Name] = f.Value.String() })

	path := given[ConfigFlag]
	if path == "" {
		path = getenv(EnvName(ConfigFlag))
	}
	if path != "" {
		if err := applyFile(fs, path); err != nil {
			return err
		}
	}
	var errs []error
	fs.VisitAll(func(f *pflag.Flag) {
		if v, ok := lookupEnv(getenv, EnvName(f.Name)); ok {
			if err := f.Value.Set(v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %v", EnvName(f.Name), v, err))
			}
		}
	})
	for name, v := range given {
		if err := fs.Set(name, v); err != nil {
			errs = append(errs, fmt.Errorf("--%s=%q: %v", name, v, err))
		}
	}
	return errors.Join(errs...)
}

func lookupEnv(getenv func(string) string, name string) (string, bool) {
	v := getenv(name)
	return v, v != ""
}

func applyFile(fs *pflag.FlagSet, path string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read config file: %w", err)
	}
	var m map[string]any
	if err := yaml.Unmarshal(raw, &m); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	var errs []error
	for k, v := range m {
		f := fs.Lookup(k)
		if f == nil || k == ConfigFlag {
			errs = append(errs, fmt.Errorf("config file %s: unknown key %q (keys are the flag names of mandate serve --help)", path, k))
			continue
		}
		if err := f.Value.Set(fmt.Sprint(v)); err != nil {
			errs = append(errs, fmt.Errorf("config file %s: %s: %v", path, k, err))
		}
	}
	return errors.Join(errs...)
}

// ValidateStorage reports the problems of the settings that say where the data is (the
// database, the data directory, the master key file): all that the offline commands, such as
// mandate vault rotate-master-key, use.
func (c *Config) ValidateStorage() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.Database != "" && !strings.HasPrefix(c.Database, "postgres://") && !strings.HasPrefix(c.Database, "postgresql://") {
		bad("--database: want a postgres:// URL, or leave it empty for the embedded SQLite in --data-dir")
	}
	if c.DataDir == "" {
		bad("--data-dir must not be empty")
	}
	if strings.HasSuffix(c.MasterKeyFile, "/") {
		bad("--master-key-file %q: want a file, not a directory", c.MasterKeyFile)
	}
	return errors.Join(errs...)
}

// Validate reports every problem at once, and fills in the issuer default.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if err := c.ValidateStorage(); err != nil {
		errs = append(errs, err)
	}
	host, _, err := net.SplitHostPort(c.Listen)
	if err != nil {
		bad("--listen %q: want host:port, e.g. 127.0.0.1:8420", c.Listen)
	}
	if c.MetricsListen != "" {
		if _, _, err := net.SplitHostPort(c.MetricsListen); err != nil {
			bad("--metrics-listen %q: want host:port, e.g. 127.0.0.1:9420", c.MetricsListen)
		} else if c.MetricsListen == c.Listen {
			bad("--metrics-listen %q: must differ from --listen; leave it empty to serve /metrics there", c.MetricsListen)
		}
	}
	if c.Issuer == "" && err == nil {
		if host == "" || host == "0.0.0.0" || host == "::" {
			bad("--issuer is required when listening on all interfaces: set the public URL clients use")
		}
		c.Issuer = "http://" + c.Listen
	}
	if c.Issuer != "" {
		u, err := url.Parse(c.Issuer)
		switch {
		case err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http"):
			bad("--issuer %q: want an absolute https URL such as https://auth.example.com", c.Issuer)
		case u.RawQuery != "" || u.Fragment != "":
			bad("--issuer %q: must not have a query or fragment (RFC 8414 §2)", c.Issuer)
		case u.Scheme == "http" && !loopback.Host(u.Hostname()):
			bad("--issuer %q: plain http is allowed only on loopback; use https", c.Issuer)
		}
		c.Issuer = strings.TrimSuffix(c.Issuer, "/")
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("--log-level %q: want debug, info, warn or error", c.LogLevel)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		bad("--log-format %q: want text or json", c.LogFormat)
	}
	if c.SigningAlg != "EdDSA" && c.SigningAlg != "ES256" {
		bad("--signing-alg %q: want EdDSA or ES256", c.SigningAlg)
	}
	between := func(name string, d, lo, hi time.Duration) {
		if d < lo || d > hi {
			bad("--%s %v: want between %v and %v", name, d, lo, hi)
		}
	}
	between("token-ttl", c.TokenTTL, 10*time.Second, time.Hour)
	between("dpop-window", c.DPoPWindow, time.Second, 10*time.Minute)
	between("dpop-nonce-rotation", c.NonceRotation, 10*time.Second, 24*time.Hour)
	between("claim-code-ttl", c.ClaimCodeTTL, time.Minute, 24*time.Hour)
	between("agent-key-grace", c.KeyGrace, 0, 30*24*time.Hour)
	between("key-publish-delay", c.KeyPublishDelay, 0, 7*24*time.Hour)
	between("shutdown-timeout", c.ShutdownTimeout, 0, 10*time.Minute)
	between("denial-audit-window", c.DenialAuditWindow, time.Second, time.Hour)
	between("unclaimed-agent-grace", c.UnclaimedGrace, 0, 365*24*time.Hour)
	for _, r := range []struct {
		name  string
		rate  float64
		burst int
	}{{"register", c.RegisterRate, c.RegisterBurst}, {"claim", c.ClaimRate, c.ClaimBurst}, {"denial-audit", c.DenialAuditRate, c.DenialAuditBurst}} {
		switch {
		case r.rate < 0 || r.rate > 1e6:
			bad("--%s-rate %v: want a number a minute from 0 (no limit) to 1000000", r.name, r.rate)
		case r.rate > 0 && (r.burst < 1 || r.burst > 1e6):
			bad("--%s-burst %d: want 1 to 1000000", r.name, r.burst)
		}
	}
	if _, err := ratelimit.ParsePrefixes(c.TrustedProxies); err != nil {
		bad("--trusted-proxies: %v", err)
	}
	return errors.Join(errs...)
}
