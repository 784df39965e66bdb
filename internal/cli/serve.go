package cli

import (
	"fmt"
	"log/slog"
	"net"

	"github.com/spf13/cobra"

	"github.com/mandate-dev/mandate/internal/config"
	"github.com/mandate-dev/mandate/internal/httpapi"
	"github.com/mandate-dev/mandate/internal/principal"
	"github.com/mandate-dev/mandate/internal/server"
)

func newServeCmd() *cobra.Command {
	cfg := config.Default()
	var printConfig bool
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the mandate server (SQLite in ./mandate-data unless told otherwise)",
		Long: `Run the mandate server.

With no flags it keeps everything in ./mandate-data (SQLite, the master key that wraps the
signing keys, and on first start a one-time admin bootstrap token for mandate login, removed once
used, expiring after 24 h) and listens on 127.0.0.1:8420.

Every flag can also be set with its MANDATE_* environment variable or in a YAML file given with
--config whose keys are the flag names. A flag beats the environment, which beats the file, which
beats the default. --print-config shows what each setting resolves to, and from where.`,
		Example: "  mandate serve\n  mandate serve --config /etc/mandate.yaml --listen 127.0.0.1:9000\n" +
			"  MANDATE_LOG_LEVEL=debug mandate serve --print-config",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if printConfig {
				// What would run, even when it would not: the settings first, then the problems.
				if err := config.WriteSettings(cmd.OutOrStdout(), cmd.Flags()); err != nil {
					return err
				}
			}
			if err := cfg.Validate(); err != nil {
				return fmt.Errorf("invalid settings:\n%w", err)
			}
			if printConfig {
				return nil
			}
			log := newLogger(cmd, cfg)
			ctx := cmd.Context()
			ln, err := net.Listen("tcp", cfg.Listen)
			if err != nil {
				return fmt.Errorf("listen on %s: %w (is another mandate running? choose another --listen)", cfg.Listen, err)
			}
			var metricsLn net.Listener
			if cfg.MetricsListen != "" {
				if metricsLn, err = net.Listen("tcp", cfg.MetricsListen); err != nil {
					ln.Close()
					return fmt.Errorf("listen on %s: %w (choose another --metrics-listen)", cfg.MetricsListen, err)
				}
			}
			srv, err := server.New(ctx, cfg, log, nil)
			if err != nil {
				ln.Close()
				if metricsLn != nil {
					metricsLn.Close()
				}
				return err
			}
			defer srv.Close()
			if srv.BootstrapPath != "" {
				fmt.Fprintf(cmd.ErrOrStderr(), "\nFirst start: the admin bootstrap token is in %s (mode 0600). It works once, for mandate login,\nwithin %.0f h; the file is removed once it is used.\nLog in with:  mandate login --server %s --token-file %s\n\n",
					srv.BootstrapPath, principal.BootstrapTTL.Hours(), cfg.Issuer, srv.BootstrapPath)
			}
			log.Info("mandate listening", slog.String("addr", ln.Addr().String()), slog.String("issuer", cfg.Issuer),
				slog.String("data_dir", cfg.DataDir), slog.String("database", srv.Store().Dialect()))
			if metricsLn != nil {
				log.Info("metrics listening", slog.String("addr", metricsLn.Addr().String()))
			}
			return srv.Serve(ctx, ln, metricsLn)
		},
	}
	cfg.Bind(cmd.Flags())
	cmd.Flags().BoolVar(&printConfig, "print-config", false, "print the settings as a --config file, with where each came from, check them, and exit")
	return cmd
}

func newLogger(cmd *cobra.Command, cfg config.Config) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel))
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler
	if cfg.LogFormat == "json" {
		h = slog.NewJSONHandler(cmd.ErrOrStderr(), opts)
	} else {
		h = slog.NewTextHandler(cmd.ErrOrStderr(), opts)
	}
	return slog.New(httpapi.LogHandler{Handler: h})
}
