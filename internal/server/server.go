// Package server is the composition root: it opens the store, loads keys, builds every service
// and the router, and runs the HTTP server until its context ends. Only this package knows which
// store backend runs.
package server

import (
	"context"
	"crypto/hkdf"
	"crypto/sha256"
	"errors"
	"fmt"
	"github.com/mandate-dev/mandate/internal/cpuslot"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/mandate-dev/mandate/dpop"
	"github.com/mandate-dev/mandate/internal/api"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/auditsink"
	"github.com/mandate-dev/mandate/internal/buildinfo"
	"github.com/mandate-dev/mandate/internal/config"
	"github.com/mandate-dev/mandate/internal/delegation"
	"github.com/mandate-dev/mandate/internal/federation"
	"github.com/mandate-dev/mandate/internal/httpapi"
	"github.com/mandate-dev/mandate/internal/ids"
	"github.com/mandate-dev/mandate/internal/masterkey"
	"github.com/mandate-dev/mandate/internal/oauth"
	"github.com/mandate-dev/mandate/internal/principal"
	"github.com/mandate-dev/mandate/internal/proxy"
	"github.com/mandate-dev/mandate/internal/ratelimit"
	"github.com/mandate-dev/mandate/internal/registry"
	"github.com/mandate-dev/mandate/internal/sqlstore"
	"github.com/mandate-dev/mandate/internal/token"
	"github.com/mandate-dev/mandate/internal/vault"
	"github.com/mandate-dev/mandate/verify"
)

// File names inside the data directory.
const (
	DatabaseFile  = "mandate.db"
	MasterKeyFile = config.DefaultMasterKeyFile
	BootstrapFile = "bootstrap-token"
)

// Server is a running mandate.
type Server struct {
	cfg     config.Config
	log     *slog.Logger
	store   *sqlstore.Store
	keys    *token.Keys
	vault   *vault.Service
	handler http.Handler
	metrics http.Handler // /metrics; on the main handler too unless cfg.MetricsListen is set
	masters *masterkey.File
	now     func() time.Time

	legacyBootstrapWarned atomic.Bool // the warning about a never-expiring bootstrap file, once
	agents                *registry.Service
	denials               *audit.Aggregator   // anonymous denials, counted instead of written one by one
	trail                 *audit.Checkpointer // signs checkpoints, checks the tail, prunes past --audit-retention
	proxy                 *proxy.Proxy
	sinks                 *auditsink.Exporter // nil without --audit-sink
	tls                   *tlsFiles           // nil without --tls-cert: plain HTTP
	// revocationStreams wakes the revocation feed's streams on every revocation committed by
	// any replica, and ends them at shutdown.
	revocationStreams *api.Wakeup

	// BootstrapPath is where the admin bootstrap token was written, when this start created it.
	BootstrapPath string
}

// New builds the server from validated settings. now may be nil (time.Now).
func New(ctx context.Context, cfg config.Config, log *slog.Logger, now func() time.Time) (*Server, error) {
	if now == nil {
		now = time.Now
	}
	// TLS first: a pair that does not load is refused before anything is created.
	var tlsf *tlsFiles
	if cfg.TLSCert != "" || cfg.TLSKey != "" {
		var err error
		if tlsf, err = loadTLSFiles(cfg.TLSCert, cfg.TLSKey, log, time.Now); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data directory %s: %w", cfg.DataDir, err)
	}
	dsn := cfg.Database
	if dsn == "" {
		dsn = filepath.Join(cfg.DataDir, DatabaseFile)
		// SQLite creates the file (and its -wal and -shm siblings) with the mode of the
		// existing file: create it 0600 first, it holds every hash and key of the server.
		f, err := os.OpenFile(dsn, os.O_RDONLY|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("create database file: %w", err)
		}
		f.Close()
	}
	store, err := sqlstore.Open(ctx, dsn, sqlstore.WithTimeout(cfg.DBTimeout))
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	s := &Server{cfg: cfg, log: log, store: store, now: now}
	s.tls = tlsf
	if err := s.build(ctx, now); err != nil {
		store.Close()
		return nil, err
	}
	return s, nil
}

func (s *Server) build(ctx context.Context, now func() time.Time) error {
	cfg := s.cfg
	// The master key file holds the master keys, newest first (see internal/masterkey). One
	// keyring seals the signing keys and wraps the vault's data keys; it is reloaded from the
	// file on SIGHUP and when a blob names a key it does not hold, so keys added or promoted by
	// another process (mandate masterkey, mandate vault rotate-master-key) need no restart.
	masterPath := cfg.MasterKeyPath()
	masterFile, masterKeys, created, err := masterkey.Open(masterPath, s.log)
	if err != nil {
		return err
	}
	if created {
		s.log.Info("created master key; back it up: it decrypts every signing key and upstream secret", slog.String("path", masterPath))
	}
	s.masters = masterFile
	keyring := masterFile.Keyring()
	s.log.Debug("loaded master keys", slog.String("path", masterPath), slog.Any("key_ids", masterkey.IDs(masterKeys)))
	// The keys derived below come from the oldest key that seals (a staged key is never it).
	masters := masterkey.Active(masterKeys)
	s.keys, err = token.NewKeys(token.KeysConfig{Store: s.store, Sealer: keyring, Alg: cfg.SigningAlg,
		PublishDelay: cfg.KeyPublishDelay, MaxTokenTTL: cfg.TokenTTL, Now: now})
	if err != nil {
		return err
	}
	principals := principal.New(s.store, now)
	principals.OnBootstrapSpent(func(ctx context.Context) { s.removeSpentBootstrap(context.WithoutCancel(ctx)) })
	// Replicas starting together on an empty database take turns: the first creates the first
	// signing key and the admin, the others find them.
	if err := s.store.Exclusive(ctx, func(ctx context.Context) error {
		if err := s.keys.Ensure(ctx); err != nil {
			return fmt.Errorf("signing keys: %w", err)
		}
		return s.bootstrap(ctx, principals)
	}); err != nil {
		return err
	}

	// DPoP nonces are stateless HMACs; deriving their secret from the master key lets every
	// replica that shares the key accept every other replica's nonces. The oldest key is used:
	// a rotation adds a key in front and leaves it, so replicas agree throughout a rotation
	// (and a file of one key gives the secret of earlier versions).
	nonceSecret, err := hkdf.Key(sha256.New, masters[len(masters)-1], nil, "mandate dpop nonce v1", 32)
	if err != nil {
		return fmt.Errorf("derive nonce secret: %w", err)
	}
	// The key of the hashes of query values in proxied calls' audit events: from the master
	// key too, so every replica hashes a value alike and an investigator's hash matches.
	queryKey, err := hkdf.Key(sha256.New, masters[len(masters)-1], nil, "mandate audit query v1", 32)
	if err != nil {
		return fmt.Errorf("derive audit query key: %w", err)
	}
	var nonces *dpop.Nonces
	if cfg.DPoPNonce {
		nonces = dpop.NewNonces(nonceSecret, cfg.NonceRotation, now)
	}
	replay := dpop.NewMemoryReplayStore()
	// Single use of DPoP proofs across replicas (see sharedProofs): on PostgreSQL a proof's id
	// is also used up in the database — with the token's issue, with a proxied call's pending
	// record, or on its own for /v1 — so no replica accepts a proof another accepted. One
	// SQLite process keeps proof ids in memory only.
	proofs := s.sharedProofs(replay)

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), buildInfo())
	// The sinks come first: retention (buildTrail) never prunes what they have not shipped.
	if err := s.buildSinks(reg, now); err != nil {
		return err
	}
	// Refusals of anonymous callers go through one aggregator, so a flood of them costs a bounded
	// number of audit rows (see audit.Aggregator); every other event passes straight through.
	s.denials = audit.NewAggregator(audit.AggregatorConfig{Store: s.store, Window: cfg.DenialAuditWindow,
		PerSource: ratelimit.New(cfg.DenialAuditRate, cfg.DenialAuditBurst, 0, now),
		Source:    ratelimit.Client, Log: s.log, Now: now})
	if err := s.buildTrail(ctx, masters, reg, now); err != nil {
		return err
	}
	registrySvc := registry.New(registry.Config{Store: s.store, Audit: s.denials, JTIs: s.store, Issuer: cfg.Issuer,
		ClaimCodeTTL: cfg.ClaimCodeTTL, KeyGrace: cfg.KeyGrace, UnclaimedGrace: cfg.UnclaimedGrace,
		CacheTTL: cfg.AgentCacheTTL, Now: now})
	s.agents = registrySvc
	// The registry keeps agents and their parsed keys in memory: every change of one, committed
	// here or at another replica, drops it (see registry/cache.go).
	s.store.OnChange(func(c sqlstore.Change) {
		switch c.Kind {
		case sqlstore.KindAgentChanged, token.KindAgent:
			registrySvc.Invalidate(c.ID)
		case token.KindKey:
			registrySvc.Invalidate("") // a key's thumbprint does not name its agent
		}
	})
	deleg := delegation.New(delegation.Config{Store: s.store, Agents: s.store, Keys: s.keys, Tokens: s.store, Audit: s.store,
		Issuer: cfg.Issuer, MaxTokenTTL: cfg.TokenTTL, Upstreams: s.store, Now: now})
	fed := federation.New(federation.Config{Store: s.store, ServiceAccounts: s.store, Log: s.log, Now: now})
	tokenDPoP := dpop.NewChecker(dpop.Config{Window: cfg.DPoPWindow, Replay: replay, Nonces: nonces, Now: now})
	issuance := token.NewIssuance(token.IssuanceConfig{Keys: s.keys, Store: proofs.issues, Issuer: cfg.Issuer, TTL: cfg.TokenTTL, Now: now})
	oauthSrv := oauth.New(oauth.Config{
		Issuer: cfg.Issuer, Keys: s.keys, Issuance: issuance, Registry: registrySvc,
		Principals: principals, Audit: s.denials, JTIs: s.store, Delegation: deleg, Federation: fed,
		DPoP:    tokenDPoP,
		Nonces:  nonces,
		Metrics: oauth.NewMetrics(reg), Log: s.log, Now: now, SharedProofs: proofs.shared,
		// Two requests computing per core keep the cores busy while one waits for a core;
		// 50 ms is what a request may lose to slots held by requests blocked elsewhere.
		CPU: cpuslot.New(2*runtime.GOMAXPROCS(0), 50*time.Millisecond),
	})
	verifier, err := verify.New(verify.Config{
		Issuer: cfg.Issuer, Audience: cfg.Issuer, BaseURL: cfg.Issuer,
		Keys: localKeys{s.keys}, Status: localStatus{deleg},
		DPoP: dpop.Config{Window: cfg.DPoPWindow, Replay: proofs.store, Now: now},
		Now:  now, OnDeny: s.auditResourceDenial(now), RequestID: requestID,
	})
	if err != nil {
		return fmt.Errorf("verifier: %w", err)
	}
	s.revocationStreams = api.NewWakeup()
	s.store.OnChange(func(c sqlstore.Change) {
		if c.Seq > 0 { // a revocation log entry
			s.revocationStreams.Notify()
		}
	})
	s.vault = vault.New(vault.Config{Store: s.store, Keyring: keyring, Leases: s.store, Audit: s.store, Log: s.log, Now: now})
	apiSrv := api.New(api.Config{Issuer: cfg.Issuer, Registry: registrySvc, Agents: s.store, Principals: principals,
		Keys: s.keys, Tokens: s.store, Audit: s.denials, Delegation: deleg, Vault: s.vault, Federation: fed,
		Trail:         s.trail,
		DPoP:          dpop.NewChecker(dpop.Config{Window: cfg.DPoPWindow, Replay: proofs.store, Now: now}),
		AgentAuth:     verifier.Middleware,
		RegisterLimit: ratelimit.New(cfg.RegisterRate, cfg.RegisterBurst, 0, now),
		ClaimLimit:    ratelimit.New(cfg.ClaimRate, cfg.ClaimBurst, 0, now),
		Log:           s.log, Now: now, RevocationWakeup: s.revocationStreams})

	// The egress proxy: one verifier per upstream (audience {issuer}/proxy/{name}) with our own
	// keys and live status; the proxy audits every call itself, so no OnDeny. It signs identity
	// assertions with the token signing keys, so upstreams verify them with /oauth/jwks.
	px, err := proxy.New(proxy.Config{
		Issuer: cfg.Issuer, Upstreams: s.vault, Credentials: s.vault, Tasks: s.store, Audit: s.denials,
		ProofUses: proofs.pending, ProofNotUsed: proofs.notUsed,
		AuditKey: queryKey, SignAssertion: s.keys.Sign,
		Verifier: func(audience string) (*verify.Verifier, error) {
			return verify.New(verify.Config{
				Issuer: cfg.Issuer, Audience: audience, BaseURL: cfg.Issuer,
				Keys: localKeys{s.keys}, Status: localStatus{deleg},
				DPoP: dpop.Config{Window: cfg.DPoPWindow, Replay: replay, Now: now},
				Now:  now, RequestID: requestID,
			})
		},
		Metrics: reg, Log: s.log, Now: now,
	})
	if err != nil {
		return fmt.Errorf("proxy: %w", err)
	}
	s.proxy = px

	mux := http.NewServeMux()
	h := func(f httpapi.HandlerFunc) http.Handler { return httpapi.Handle(s.log, f) }
	mux.Handle("GET "+oauth.PathMetadata, h(oauthSrv.Metadata))
	mux.Handle("GET "+oauth.PathJWKS, h(oauthSrv.JWKS))
	mux.Handle("POST "+oauth.PathToken, h(oauthSrv.Token))
	mux.Handle("POST "+oauth.PathIntrospect, h(oauthSrv.Introspect))
	mux.Handle("POST "+oauth.PathRevoke, h(oauthSrv.Revoke))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		httpapi.WriteJSON(w, 200, map[string]string{"status": "ok"})
	})
	mux.Handle("GET /readyz", h(func(w http.ResponseWriter, r *http.Request) error {
		// The ping has the deadline of every database call (--db-timeout).
		if err := s.store.Ping(r.Context()); err != nil {
			return &httpapi.Error{Status: http.StatusServiceUnavailable, Code: "unavailable",
				Description: fmt.Sprintf("the database is unreachable or did not answer within --db-timeout (%v); retry later", cfg.DBTimeout),
				Header:      http.Header{"Retry-After": {httpapi.RetryAfter}}, Cause: err}
		}
		httpapi.WriteJSON(w, 200, map[string]string{"status": "ready"})
		return nil
	}))
	s.metrics = promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	if cfg.MetricsListen == "" {
		mux.Handle("GET /metrics", s.metrics)
	}
	apiSrv.Register(mux)
	mux.Handle(proxy.Pattern, px)
	mux.HandleFunc(proxy.MetadataPattern, px.Metadata)
	mux.Handle("/", h(func(w http.ResponseWriter, r *http.Request) error {
		return httpapi.Errorf(http.StatusNotFound, "not_found", "no such endpoint; the API is described at "+cfg.Issuer+"/v1/openapi.json")
	}))
	trusted, err := ratelimit.ParsePrefixes(cfg.TrustedProxies)
	if err != nil {
		return fmt.Errorf("--trusted-proxies: %w", err)
	}
	// Guard hands every /proxy/ path to the proxy before ServeMux could redirect an unclean one.
	// The client address goes into the context outermost: httpapi.Middleware reads the route
	// the mux sets on the very request it passed on.
	s.handler = ratelimit.Middleware(trusted, httpapi.Middleware(s.log, httpapi.NewMetrics(reg), px.Guard(mux)))
	s.handler = withHSTS(cfg.Issuer, s.handler)
	return nil
}

// requestID is the server's own id of r (httpapi.Middleware issues it), for the refusals of the
// verify SDK's middleware on our own resources.
func requestID(r *http.Request) string { return httpapi.RequestID(r.Context()) }

// buildSinks opens the --audit-sink sinks and their exporter, woken by every audited commit.
// Nothing connects yet: Serve starts them.
func (s *Server) buildSinks(reg prometheus.Registerer, now func() time.Time) error {
	specs, err := s.cfg.AuditSinkSpecs()
	if err != nil || len(specs) == 0 {
		return err
	}
	opts := auditsink.Options{CAFile: s.cfg.AuditSinkCAFile, Log: s.log, Now: now}
	if s.cfg.AuditWebhookSecretFile != "" {
		if opts.WebhookSecret, err = auditsink.ReadSecretFile(s.cfg.AuditWebhookSecretFile); err != nil {
			return fmt.Errorf("--audit-webhook-secret-file: %w", err)
		}
	}
	var sinks []auditsink.Sink
	for _, spec := range specs {
		sink, err := auditsink.Open(spec, opts)
		if err != nil {
			return fmt.Errorf("--audit-sink %s: %w", spec.Name, err)
		}
		sinks = append(sinks, sink)
	}
	s.sinks, err = auditsink.New(auditsink.Config{Store: s.store, Checkpoints: sinkCheckpoints{s.store}, Sinks: sinks,
		Batch: s.cfg.AuditSinkBatch, Metrics: reg, Log: s.log, Now: now})
	if err != nil {
		return err
	}
	s.store.OnAppend(s.sinks.Notify)
	for _, spec := range specs {
		s.log.Info("shipping the audit trail", slog.String("sink", spec.Name))
	}
	return nil
}

// buildInfo is mandate_build_info: 1, with the version mandate --version shows.
func buildInfo() prometheus.Collector {
	bi := buildinfo.Get()
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "mandate_build_info", Help: "Always 1; the labels say which build of mandate is running.",
	}, []string{"version", "revision", "goversion"})
	g.WithLabelValues(bi.Version, bi.Revision, bi.GoVersion).Set(1)
	return g
}

// bootstrap creates the admin and writes its bootstrap token to a 0600 file on the very first
// start. Later starts make none (there is a user) and remove the file if its token is spent.
func (s *Server) bootstrap(ctx context.Context, principals *principal.Service) error {
	path := s.bootstrapFile()
	created, err := principals.Bootstrap(ctx, func(secret string) (func(), error) {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("%s exists but the database has no users: remove it if the database was reset", path)
		}
		if err != nil {
			return nil, fmt.Errorf("write bootstrap token: %w", err)
		}
		_, err = f.WriteString(secret + "\n")
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		undo := func() { os.Remove(path) }
		if err != nil {
			undo()
			return nil, fmt.Errorf("write bootstrap token: %w", err)
		}
		return undo, nil
	})
	if err != nil {
		return err
	}
	if created {
		s.BootstrapPath = path
		return nil
	}
	s.removeSpentBootstrap(ctx)
	return nil
}

func (s *Server) bootstrapFile() string { return filepath.Join(s.cfg.DataDir, BootstrapFile) }

// removeSpentBootstrap removes the bootstrap token file once the token in it is used or expired.
// The server owns the file (mandate login may run on another host): this runs at start, after
// every exchange or refused use of the token, and with the purge job (for expiry, and for an
// exchange on another replica). A file holding anything but a bootstrap token is left alone.
func (s *Server) removeSpentBootstrap(ctx context.Context) {
	path := s.bootstrapFile()
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	warn := func(msg string, err error) {
		s.log.WarnContext(ctx, msg, slog.String("path", path), slog.String("error", err.Error()))
	}
	if err != nil {
		warn("read the bootstrap token file", err)
		return
	}
	hash := ids.Hash(strings.TrimSpace(string(data)))
	t, err := s.store.LookupBootstrapToken(ctx, hash)
	if errors.Is(err, principal.ErrNotFound) {
		if old, _, err := s.store.LookupAPIToken(ctx, hash); err == nil && !s.legacyBootstrapWarned.Swap(true) {
			// Made by a version before bootstrap tokens expired: an ordinary token that never
			// does, perhaps the admin's only one, so it is not touched.
			s.log.WarnContext(ctx, "the bootstrap token file holds a token that never expires (made by an earlier mandate): once you have another admin token, revoke it with mandate tokens revoke and delete the file",
				slog.String("path", path), slog.String("token_id", old.ID))
		}
		return
	}
	if err != nil {
		warn("look up the bootstrap token", err)
		return
	}
	if t.Usable(s.now()) {
		return
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		warn("remove the used bootstrap token file", err)
		return
	}
	s.log.InfoContext(ctx, "removed the bootstrap token file: its token was used or has expired", slog.String("path", path), slog.String("token_id", t.ID))
}

// auditResourceDenial records every refusal of the verify middleware on our own resources.
func (s *Server) auditResourceDenial(now func() time.Time) func(*http.Request, *verify.Error) {
	return func(r *http.Request, e *verify.Error) {
		if e.Code == verify.CodeTemporarilyUnavail {
			return // the keys or the status could not be read (the database did not answer): no decision
		}
		ev := audit.New(now(), httpapi.RequestID(r.Context()), audit.ActionResourceDeny)
		ev.ActorType, ev.Reason, ev.Detail, ev.Target = audit.ActorAnonymous, e.Reason, e.Description, r.URL.Path
		if e.Caller != nil {
			// The token verified: the refusal is its agent's, on its principal's behalf, so it
			// is in the principal's report (the reason says why it was refused).
			s.describeCaller(r.Context(), &ev, e.Caller)
		}
		if err := s.denials.AppendEvent(context.WithoutCancel(r.Context()), ev); err != nil {
			s.log.ErrorContext(r.Context(), "record resource denial", slog.String("error", err.Error()))
		}
	}
}

// describeCaller fills ev with whose token c is: its agent, principal (the agent's owner for a
// self token), task, grant, chain, key, scopes, resources and id.
func (s *Server) describeCaller(ctx context.Context, ev *audit.Event, c *verify.Caller) {
	ev.ActorType, ev.ActorID, ev.ActorHandle = audit.ActorAgent, c.AgentID, c.Handle
	ev.AgentID, ev.AgentDID, ev.KeyJKT, ev.TokenID = c.AgentID, c.DID, c.JKT, c.JTI
	ev.PrincipalID, ev.TaskID, ev.GrantID = c.Principal, c.Task, c.Grant
	ev.Scopes, ev.Resources = c.Scopes, c.Audience
	ev.Chain = make([]audit.Link, len(c.Chain))
	for i, a := range c.Chain {
		ev.Chain[i] = audit.Link{AgentID: a.AgentID, Handle: a.Handle, DID: a.DID, InstanceKey: a.InstanceJKT, TaskID: a.Task}
	}
	if n := len(c.Chain); n > 0 {
		ev.InstanceKey = c.Chain[n-1].InstanceJKT
		if n > 1 {
			ev.ParentTaskID = c.Chain[n-2].Task
		}
	}
	if ev.PrincipalID == "" {
		if a, err := s.store.GetAgent(ctx, c.AgentID); err == nil {
			ev.PrincipalID = a.OwnerID
		}
	}
}

// Handler is the server's HTTP handler (for tests on a real listener).
func (s *Server) Handler() http.Handler { return s.handler }

// Vault is the vault service (for tests and the proxy).
func (s *Server) Vault() *vault.Service { return s.vault }

// Store is the open store (for tests and the CLI's offline commands).
func (s *Server) Store() *sqlstore.Store { return s.store }

// Checkpointer signs, stores and verifies the audit chain's checkpoints (for tests and the CLI).
func (s *Server) Checkpointer() *audit.Checkpointer { return s.trail }

// Close writes the proxy's last completion events and closes the store.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), max(s.cfg.ShutdownTimeout, 15*time.Second))
	defer cancel()
	var perr error
	if s.proxy != nil {
		perr = s.proxy.Close(ctx)
	}
	return errors.Join(perr, s.store.Close())
}

// Serve answers on ln until ctx ends, then shuts down gracefully within the configured timeout.
// metricsLn is where /metrics is served when the settings name a --metrics-listen address (it
// is required then, and must be nil otherwise); it starts and stops with ln.
func (s *Server) Serve(ctx context.Context, ln, metricsLn net.Listener) error {
	if (metricsLn != nil) != (s.cfg.MetricsListen != "") {
		return fmt.Errorf("serve: a metrics listener is needed exactly when --metrics-listen is set (it is %q)", s.cfg.MetricsListen)
	}
	servers := []*http.Server{s.httpServer(s.handler)}
	listeners := []net.Listener{ln}
	if metricsLn != nil {
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", s.metrics) // the same route, on its own listener
		servers = append(servers, s.httpServer(withHSTS(s.cfg.Issuer, mux)))
		listeners = append(listeners, metricsLn)
	}
	go s.purgeLoop(ctx)
	go s.denials.Run(ctx)
	trailDone := make(chan struct{})
	go func() { s.trail.Run(ctx); close(trailDone) }()
	sinksDone := make(chan struct{})
	if s.sinks != nil {
		go func() { s.sinks.Run(ctx); close(sinksDone) }()
	} else {
		close(sinksDone)
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP) // before serving: a SIGHUP from then on reloads, never kills
	defer signal.Stop(hup)
	go s.reloadOnHangup(ctx, hup)
	errc := make(chan error, len(servers))
	if s.tls != nil {
		go s.tls.reloadOnHangup(ctx)
	}
	for i, srv := range servers {
		go func() { errc <- s.serveOn(srv, listeners[i]) }()
	}
	var err error
	select {
	case err = <-errc: // one stopped on its own: stop the other too
	case <-ctx.Done():
	}
	s.log.Info("shutting down", slog.Duration("timeout", s.cfg.ShutdownTimeout))
	sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	for _, srv := range servers {
		if serr := srv.Shutdown(sctx); serr != nil && err == nil {
			err = fmt.Errorf("shutdown: %w", serr)
		}
	}
	// After the last request: no proxied call's completion and no denial count is lost; then
	// the last checkpoint covers them all, and the sinks ship what is left, checkpoint included.
	if perr := s.proxy.Close(sctx); perr != nil {
		s.log.Error("proxy completions", slog.String("error", perr.Error()))
	}
	s.FlushDenials(context.WithoutCancel(ctx))
	<-trailDone
	if _, _, cerr := s.trail.Checkpoint(context.WithoutCancel(ctx)); cerr != nil {
		s.log.Error("sign the last audit checkpoint at shutdown", slog.String("error", cerr.Error()))
	}
	<-sinksDone
	s.drainSinks(sctx)
	return err
}

// drainSinks delivers to each sink what it has not received yet, within the shutdown timeout;
// what does not make it goes at the next start, from the sink's saved cursor.
func (s *Server) drainSinks(ctx context.Context) {
	if s.sinks == nil {
		return
	}
	if err := s.sinks.Drain(ctx); err != nil {
		s.log.Warn("audit sinks not up to date at shutdown; they resume from their cursors at the next start", slog.String("error", err.Error()))
	}
	if err := s.sinks.Close(); err != nil {
		s.log.Warn("close audit sinks", slog.String("error", err.Error()))
	}
}

func (s *Server) httpServer(h http.Handler) *http.Server {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	srv.RegisterOnShutdown(s.revocationStreams.Close) // streams never end by themselves
	return srv
}

// FlushDenials waits for the proxy to record the calls it has answered, then writes the
// anonymous denials still being counted as their aggregated events, as at shutdown, and returns
// how many events it wrote.
func (s *Server) FlushDenials(ctx context.Context) int {
	wctx, cancel := context.WithTimeout(ctx, max(s.cfg.ShutdownTimeout, 15*time.Second))
	defer cancel()
	if err := s.proxy.Wait(wctx); err != nil {
		s.log.Error("proxy completions", slog.String("error", err.Error()))
	}
	return s.denials.Flush(ctx, true)
}

// Proxy is the egress proxy (for tests: Wait for its events).
func (s *Server) Proxy() *proxy.Proxy { return s.proxy }

// ReloadMasterKeys re-reads the master key file, as on SIGHUP: after a rotation, the new key
// seals what this server writes from then on.
func (s *Server) ReloadMasterKeys() error { return s.masters.Reload() }

// reloadOnHangup reloads the master key file on every SIGHUP until ctx ends.
func (s *Server) reloadOnHangup(ctx context.Context, hup <-chan os.Signal) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			if err := s.ReloadMasterKeys(); err != nil {
				s.log.Error("reload master keys on SIGHUP", slog.String("error", err.Error()))
			}
		}
	}
}

// PurgeUnclaimedAgents removes the UNCLAIMED agents whose claim code lapsed more than
// --unclaimed-agent-grace ago, as the purge loop does every minute, and returns how many.
func (s *Server) PurgeUnclaimedAgents(ctx context.Context) (int, error) {
	n, err := s.agents.PurgeUnclaimed(ctx)
	if n > 0 {
		s.log.Info("removed unclaimed agents whose claim code lapsed", slog.Int("agents", n))
	}
	return n, err
}

// purgeLoop deletes expired state (used jtis, revoked tokens, retired keys, and tasks, grants
// and grant requests ended --retention ago) in batches: once at start, so that restarts do not
// let it pile up, then every minute.
func (s *Server) purgeLoop(ctx context.Context) {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for first := true; ; first = false {
		if !first {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
		if _, err := s.PurgeEnded(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("purge ended tasks and grants", slog.String("error", err.Error()))
		}
		s.removeSpentBootstrap(ctx)
		n, err := s.store.Purge(ctx, time.Now())
		if err != nil {
			s.log.Warn("purge expired state", slog.String("error", err.Error()))
		} else if n > 0 {
			s.log.Debug("purged expired state", slog.Int64("rows", n))
		}
		if _, err := s.PurgeUnclaimedAgents(ctx); err != nil {
			s.log.Warn("purge unclaimed agents", slog.String("error", err.Error()))
		}
	}
}

// PurgeEnded removes the tasks, grants and grant requests that ended more than --retention ago
// (none when it is 0), as the purge loop does at start and every minute, and returns how many.
func (s *Server) PurgeEnded(ctx context.Context) (int64, error) {
	if s.cfg.Retention <= 0 {
		return 0, nil
	}
	now := s.now()
	n, err := s.store.PurgeEnded(ctx, now.Add(-s.cfg.Retention), now)
	if n > 0 {
		s.log.Info("purged ended tasks, grants and grant requests past --retention", slog.Int64("rows", n))
	}
	return n, err
}
