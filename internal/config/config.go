// Package config is the server's one configuration struct: defaults, the flag set that documents
// every setting, and Validate; and the one precedence of every command's settings (Resolve):
// flags > MANDATE_* environment > YAML file > defaults.
package config

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"gopkg.in/yaml.v3"

	"github.com/mandate-dev/mandate/internal/auditsink"
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
	DBTimeout       time.Duration // every database call's deadline
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
	AgentCacheTTL     time.Duration // the longest an agent is served from memory without a change notice

	// Retention is how long ended tasks, grants and grant requests are kept after they ended
	// (0 = forever); the audit trail keeps their story (internal/sqlstore/retention.go).
	Retention time.Duration

	// The audit chain's signed checkpoints (internal/audit/checkpoint.go): one after this many
	// events or this long, whichever first, when the head moved; and retention (0 = forever).
	AuditCheckpointEvents   int
	AuditCheckpointInterval time.Duration
	AuditRetention          time.Duration
	// Audit sinks (internal/auditsink): where the trail is shipped, at least once, by cursor.
	AuditSinks             []string // file:PATH, syslog+tcp://HOST:PORT, syslog+tls://HOST:PORT, https://HOST/PATH
	AuditSinkCAFile        string   // PEM roots for syslog+tls and https sinks; "" = the system's
	AuditWebhookSecretFile string   // the HMAC key of webhook signatures
	AuditSinkBatch         int      // records read and delivered at once

	// TLS served by mandate itself (internal/server/tls.go): PEM files, both or neither,
	// re-read when they change.
	TLSCert string
	TLSKey  string
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
		DBTimeout:       5 * time.Second,

		RegisterRate:      10,
		RegisterBurst:     20,
		ClaimRate:         10,
		ClaimBurst:        10,
		DenialAuditRate:   30,
		DenialAuditBurst:  30,
		DenialAuditWindow: time.Minute,
		UnclaimedGrace:    24 * time.Hour,
		AgentCacheTTL:     2 * time.Second,
		Retention:         DefaultRetention,

		AuditCheckpointEvents:   1000,
		AuditCheckpointInterval: time.Minute,
		AuditSinkBatch:          100,
	}
}

// DefaultRetention keeps ended tasks, grants and grant requests a week: long enough for their
// owners to list what ended this week and for an agent to read the answer to its request, short
// enough that state stays about a week of activity, not all of it. Their story stays in the
// audit trail (--audit-retention), which mandate audit explain reads.
const DefaultRetention = 7 * 24 * time.Hour

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

// EnvPrefix starts the environment variable of every setting: --data-dir is MANDATE_DATA_DIR.
const EnvPrefix = "MANDATE_"

// EnvName is the environment variable for a flag name.
func EnvName(flag string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// ConfigFlag names the optional YAML file; its keys are the flag names.
const ConfigFlag = "config"

// Bind registers every setting as a flag on fs, writing into c, each with its MANDATE_*
// environment variable (see WithEnv).
func (c *Config) Bind(fs *pflag.FlagSet) {
	own := pflag.NewFlagSet("settings", pflag.ContinueOnError)
	own.String(ConfigFlag, "", "optional YAML file whose keys are these flag names; it must exist")
	own.StringVar(&c.DataDir, "data-dir", c.DataDir, "directory for the SQLite database, master key and bootstrap token")
	own.StringVar(&c.MasterKeyFile, "master-key-file", c.MasterKeyFile, "file of the master keys that encrypt the signing keys and upstream secrets, created (0600) on first start; default <data-dir>/master.key")
	own.StringVar(&c.Listen, "listen", c.Listen, "address to listen on")
	own.StringVar(&c.MetricsListen, "metrics-listen", c.MetricsListen, "serve /metrics only on this address, e.g. 127.0.0.1:9420, instead of on --listen")
	own.StringVar(&c.Issuer, "issuer", c.Issuer, "public URL of this server, used as token issuer; default http://<listen>")
	own.StringVar(&c.Database, "database", c.Database, "postgres:// URL to use PostgreSQL instead of the embedded SQLite")
	own.DurationVar(&c.DBTimeout, "db-timeout", c.DBTimeout, "deadline of every database call (a connect, a statement, a commit, a ping); a request the database does not answer within it gets 503 temporarily_unavailable with Retry-After, and /readyz says 503")
	own.StringVar(&c.LogLevel, "log-level", c.LogLevel, "debug, info, warn or error")
	own.StringVar(&c.LogFormat, "log-format", c.LogFormat, "text or json")
	own.StringVar(&c.SigningAlg, "signing-alg", c.SigningAlg, "algorithm of new signing keys: EdDSA or ES256")
	own.DurationVar(&c.KeyPublishDelay, "key-publish-delay", c.KeyPublishDelay, "how long a rotated-in signing key is published before it signs")
	own.DurationVar(&c.TokenTTL, "token-ttl", c.TokenTTL, "access token lifetime")
	own.DurationVar(&c.DPoPWindow, "dpop-window", c.DPoPWindow, "accepted clock difference for a DPoP proof's iat, either way")
	own.BoolVar(&c.DPoPNonce, "dpop-nonce", c.DPoPNonce, "require server-issued DPoP nonces at the token endpoint")
	own.DurationVar(&c.NonceRotation, "dpop-nonce-rotation", c.NonceRotation, "how often DPoP nonces rotate")
	own.DurationVar(&c.ClaimCodeTTL, "claim-code-ttl", c.ClaimCodeTTL, "lifetime of an agent's one-time claim code")
	own.DurationVar(&c.KeyGrace, "agent-key-grace", c.KeyGrace, "how long an agent's old key keeps working after key rotation")
	own.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", c.ShutdownTimeout, "how long to wait for requests in flight on SIGTERM/SIGINT")
	own.Float64Var(&c.RegisterRate, "register-rate", c.RegisterRate, "agent registrations a minute per client address, per replica; past it 429 with Retry-After; 0 = no limit")
	own.IntVar(&c.RegisterBurst, "register-burst", c.RegisterBurst, "agent registrations one client address may make at once")
	own.Float64Var(&c.ClaimRate, "claim-rate", c.ClaimRate, "agent claims and new claim codes a minute per client address, per replica; 0 = no limit")
	own.IntVar(&c.ClaimBurst, "claim-burst", c.ClaimBurst, "claims and new claim codes one client address may ask for at once")
	own.Float64Var(&c.DenialAuditRate, "denial-audit-rate", c.DenialAuditRate, "anonymous refusals a minute per client address written to the audit trail one by one; past it they are counted into one event per --denial-audit-window; 0 = write each")
	own.IntVar(&c.DenialAuditBurst, "denial-audit-burst", c.DenialAuditBurst, "anonymous refusals per client address written one by one at once")
	own.DurationVar(&c.DenialAuditWindow, "denial-audit-window", c.DenialAuditWindow, "past --denial-audit-rate, identical anonymous refusals (same client address, action and reason) within this window are written as one event with their count")
	own.StringSliceVar(&c.TrustedProxies, "trusted-proxies", c.TrustedProxies, "addresses or CIDR prefixes of reverse proxies whose X-Forwarded-For names the client address; comma-separated; none by default, so the header is ignored")
	own.DurationVar(&c.AgentCacheTTL, "agent-cache-ttl", c.AgentCacheTTL, "how long an agent and its keys are served from memory; every change is pushed to every replica at once (PostgreSQL LISTEN/NOTIFY), so this only bounds a change notice that was lost")
	own.DurationVar(&c.UnclaimedGrace, "unclaimed-agent-grace", c.UnclaimedGrace, "how long an UNCLAIMED agent is kept after its claim code lapsed, the time it has to ask for a new one, before it is removed and its handle and key are free; 0 = never remove")
	own.DurationVar(&c.Retention, "retention", c.Retention, "how long ended or expired tasks, grants and answered grant requests are kept after they ended, before they are purged (at start and every minute) with their budget counters; their story stays in the audit trail, so mandate audit explain still explains their events; nothing a live token rests on is purged; 0 = keep forever")
	own.IntVar(&c.AuditCheckpointEvents, "audit-checkpoint-events", c.AuditCheckpointEvents, "sign a checkpoint of the audit chain's head after this many events (or --audit-checkpoint-interval, whichever comes first); keep copies outside the database with mandate audit checkpoints")
	own.DurationVar(&c.AuditCheckpointInterval, "audit-checkpoint-interval", c.AuditCheckpointInterval, "sign a checkpoint of the audit chain's head at least this often while events are written")
	own.DurationVar(&c.AuditRetention, "audit-retention", c.AuditRetention, "remove audit events older than this, only up to a signed checkpoint so the rest still verifies; 0 = keep every event")
	own.StringSliceVar(&c.AuditSinks, "audit-sink", c.AuditSinks, "ship the audit trail, with its checkpoints, at least once and in order to file:PATH (JSON lines), syslog+tcp://HOST:PORT or syslog+tls://HOST:PORT (RFC 5424) or https://HOST/PATH (a signed webhook); repeat or comma-separate for several; each resumes from its cursor in the database, a new one from the first event (docs/audit-sinks.md)")
	own.StringVar(&c.AuditSinkCAFile, "audit-sink-ca-file", c.AuditSinkCAFile, "PEM file of the CA certificates that syslog+tls and https audit sinks must chain to, instead of the system's")
	own.StringVar(&c.AuditWebhookSecretFile, "audit-webhook-secret-file", c.AuditWebhookSecretFile, "file holding the secret (at least 16 bytes) that signs each webhook batch (HMAC-SHA256, header Mandate-Signature); required with an https:// --audit-sink")
	own.IntVar(&c.AuditSinkBatch, "audit-sink-batch", c.AuditSinkBatch, "audit events read and delivered to a sink at once (1 to 10000)")
	own.StringVar(&c.TLSCert, "tls-cert", c.TLSCert, "serve HTTPS (TLS 1.2 or later) with this PEM certificate chain, on --listen and --metrics-listen; needs --tls-key; both files are re-read when they change (checked every few seconds, and on SIGHUP), a bad new pair is logged and the old one kept; the issuer defaults to https://<listen>")
	own.StringVar(&c.TLSKey, "tls-key", c.TLSKey, "PEM private key of --tls-cert")
	own.VisitAll(func(f *pflag.Flag) { WithEnv(own, f.Name, EnvName(f.Name)) })
	fs.AddFlagSet(own)
}

// Flag annotations: the environment variable of a setting, and where Resolve took its value
// from.
const (
	envAnnotation    = "mandate-env"
	sourceAnnotation = "mandate-source"
)

// WithEnv makes the flag name of fs a setting read from the environment variable env when the
// command line does not give it, and names env in the flag's help, so that --help documents
// every way to set it. Resolve reads it.
func WithEnv(fs *pflag.FlagSet, name, env string) {
	f := fs.Lookup(name)
	if f == nil {
		panic("config.WithEnv: no flag --" + name) // a programming error, found by every test
	}
	if f.Annotations == nil {
		f.Annotations = map[string][]string{}
	}
	f.Annotations[envAnnotation] = []string{env}
	if !strings.Contains(f.Usage, env) {
		f.Usage += " (env " + env + ")"
	}
}

// Env is the environment variable of a setting, "" for a flag that is not one.
func Env(f *pflag.Flag) string {
	if v := f.Annotations[envAnnotation]; len(v) == 1 {
		return v[0]
	}
	return ""
}

// Source says where Resolve took a setting's value from: "flag", "env NAME", "file PATH" or
// "default".
func Source(f *pflag.Flag) string {
	if v := f.Annotations[sourceAnnotation]; len(v) == 1 {
		return v[0]
	}
	return sourceDefault
}

const (
	sourceFlag    = "flag"
	sourceDefault = "default"
)

// Resolve is the one precedence of every setting of every command, run once the command line
// is parsed: a flag given on the command line > its environment variable > the YAML file of
// --config (on the commands that have it) > the default. Every layer goes through the flag's
// own parser, so a value means the same wherever it is written. A named config file that does
// not exist, a key in it that is no setting, and a value that does not parse are errors.
func Resolve(fs *pflag.FlagSet, getenv func(string) string) error {
	file, err := readConfigFile(fs, getenv)
	if err != nil {
		return err
	}
	var errs []error
	fs.VisitAll(func(f *pflag.Flag) {
		env := Env(f)
		if env == "" {
			return
		}
		src := sourceDefault
		switch {
		case f.Changed:
			src = sourceFlag
		case getenv(env) != "":
			v := getenv(env)
			if err := f.Value.Set(v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %v", env, v, err))
			}
			src = "env " + env
		case file.has(f.Name):
			if err := f.Value.Set(file.values[f.Name]); err != nil {
				errs = append(errs, fmt.Errorf("config file %s: %s: %v", file.path, f.Name, err))
			}
			src = "file " + file.path
		}
		f.Annotations[sourceAnnotation] = []string{src}
	})
	return errors.Join(errs...)
}

// configFile is the YAML file of --config: the settings' values as written.
type configFile struct {
	path   string
	values map[string]string
}

func (c configFile) has(name string) bool {
	_, ok := c.values[name]
	return ok
}

// readConfigFile reads the file named by --config, else by its environment variable; no file
// when neither names one or the command has no --config.
func readConfigFile(fs *pflag.FlagSet, getenv func(string) string) (configFile, error) {
	f := fs.Lookup(ConfigFlag)
	if f == nil || Env(f) == "" {
		return configFile{}, nil
	}
	path := f.Value.String()
	if !f.Changed && getenv(Env(f)) != "" {
		path = getenv(Env(f))
	}
	if path == "" {
		return configFile{}, nil
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return configFile{}, fmt.Errorf("config file %s: %w", path, unwrapPath(err))
	}
	values, err := parseConfigFile(raw, settingNames(fs))
	if err != nil {
		return configFile{}, fmt.Errorf("config file %s: %w", path, err)
	}
	return configFile{path: path, values: values}, nil
}

// unwrapPath drops the *fs.PathError around err, whose path the message already names.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// settingNames are the flags of fs a config file may set.
func settingNames(fs *pflag.FlagSet) []string {
	var names []string
	fs.VisitAll(func(f *pflag.Flag) {
		if Env(f) != "" && f.Name != ConfigFlag {
			names = append(names, f.Name)
		}
	})
	return names
}

// parseConfigFile reads a YAML mapping of setting names to single values, reporting every key
// that is no setting (with the one meant, when it is close) and every value that is not one.
func parseConfigFile(raw []byte, settings []string) (map[string]string, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return nil, err
	}
	out := map[string]string{}
	if len(doc.Content) == 0 {
		return out, nil // an empty file sets nothing
	}
	m := doc.Content[0]
	if m.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("line %d: want a mapping of setting names to values, e.g. listen: 127.0.0.1:8420", m.Line)
	}
	var errs []error
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		switch {
		case !slices.Contains(settings, k.Value):
			hint := "the keys are the flag names of mandate serve --help"
			if near := closest(k.Value, settings); near != "" {
				hint = "did you mean " + near + "?"
			}
			errs = append(errs, fmt.Errorf("line %d: unknown key %q (%s)", k.Line, k.Value, hint))
		case v.Kind != yaml.ScalarNode || v.Tag == "!!null":
			errs = append(errs, fmt.Errorf("line %d: %s: want a single value", v.Line, k.Value))
		default:
			if _, dup := out[k.Value]; dup {
				errs = append(errs, fmt.Errorf("line %d: %s is set twice", k.Line, k.Value))
			}
			out[k.Value] = v.Value
		}
	}
	return out, errors.Join(errs...)
}

// closest is the name within two edits of s, if there is one.
func closest(s string, names []string) string {
	best, bestD := "", 3
	for _, n := range names {
		if d := editDistance(s, n); d < bestD {
			best, bestD = n, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// WriteSettings writes the settings of fs as a YAML config file, each with where its value came
// from as a comment, after Resolve. A password in a URL (a --database DSN) is masked.
func WriteSettings(w io.Writer, fs *pflag.FlagSet) error {
	doc := &yaml.Node{Kind: yaml.MappingNode}
	for _, name := range settingNames(fs) {
		f := fs.Lookup(name)
		doc.Content = append(doc.Content,
			&yaml.Node{Kind: yaml.ScalarNode, Value: name},
			&yaml.Node{Kind: yaml.ScalarNode, Value: maskPassword(Text(f)), Style: valueStyle(f), LineComment: Source(f)})
	}
	enc := yaml.NewEncoder(w)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return err
	}
	return enc.Close()
}

// Text is a setting's value as a config file or the environment writes it: a list comma-separated
// (pflag's String shows it as "[a,b]", which no layer reads back).
func Text(f *pflag.Flag) string {
	if sv, ok := f.Value.(pflag.SliceValue); ok {
		return strings.Join(sv.GetSlice(), ",")
	}
	return f.Value.String()
}

// valueStyle quotes string values, so that "" and a string like "true" read back as strings.
func valueStyle(f *pflag.Flag) yaml.Style {
	if _, list := f.Value.(pflag.SliceValue); list || f.Value.Type() == "string" {
		return yaml.DoubleQuotedStyle
	}
	return 0
}

func maskPassword(v string) string {
	u, err := url.Parse(v)
	if err != nil || u.User == nil {
		return v
	}
	if _, ok := u.User.Password(); !ok {
		return v
	}
	return u.Redacted()
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
	if (c.TLSCert == "") != (c.TLSKey == "") {
		bad("--tls-cert and --tls-key go together: give both, the certificate chain and its private key (PEM), or neither to serve plain HTTP")
	}
	if c.Issuer == "" && err == nil {
		if host == "" || host == "0.0.0.0" || host == "::" {
			bad("--issuer is required when listening on all interfaces: set the public URL clients use")
		}
		c.Issuer = "http://" + c.Listen
		if c.TLSCert != "" {
			c.Issuer = "https://" + c.Listen
		}
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
		case u.Scheme == "http" && c.TLSCert != "":
			bad("--issuer %q: mandate serves TLS (--tls-cert), so clients reach it at https://; give an https issuer", c.Issuer)
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
	between("db-timeout", c.DBTimeout, 100*time.Millisecond, 5*time.Minute)
	between("denial-audit-window", c.DenialAuditWindow, time.Second, time.Hour)
	between("unclaimed-agent-grace", c.UnclaimedGrace, 0, 365*24*time.Hour)
	between("agent-cache-ttl", c.AgentCacheTTL, 0, 24*time.Hour)
	between("retention", c.Retention, 0, 100*365*24*time.Hour)
	between("audit-checkpoint-interval", c.AuditCheckpointInterval, time.Second, 24*time.Hour)
	if c.AuditCheckpointEvents < 1 || c.AuditCheckpointEvents > 1e9 {
		bad("--audit-checkpoint-events %d: want 1 to 1000000000", c.AuditCheckpointEvents)
	}
	if c.AuditRetention != 0 {
		between("audit-retention", c.AuditRetention, time.Hour, 100*365*24*time.Hour)
	}
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
	errs = append(errs, c.validateSinks())
	return errors.Join(errs...)
}

// AuditSinkSpecs parses --audit-sink.
func (c *Config) AuditSinkSpecs() ([]auditsink.Spec, error) {
	var specs []auditsink.Spec
	var errs []error
	names := map[string]bool{}
	for _, v := range c.AuditSinks {
		spec, err := auditsink.ParseSpec(strings.TrimSpace(v))
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("--audit-sink %w", err))
		case names[spec.Name]:
			errs = append(errs, fmt.Errorf("--audit-sink %q: a second sink named %s; give each sink once", v, spec.Name))
		default:
			names[spec.Name] = true
			specs = append(specs, spec)
		}
	}
	return specs, errors.Join(errs...)
}

func (c *Config) validateSinks() error {
	specs, err := c.AuditSinkSpecs()
	errs := []error{err}
	webhook := slices.ContainsFunc(specs, func(s auditsink.Spec) bool { return s.Kind == auditsink.KindWebhook })
	if webhook && c.AuditWebhookSecretFile == "" {
		errs = append(errs, errors.New("--audit-webhook-secret-file is required with a webhook --audit-sink: create one with openssl rand -hex 32"))
	}
	if c.AuditSinkBatch < 1 || c.AuditSinkBatch > 10000 {
		errs = append(errs, fmt.Errorf("--audit-sink-batch %d: want 1 to 10000", c.AuditSinkBatch))
	}
	return errors.Join(errs...)
}
