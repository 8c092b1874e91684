// Command bangerd is banger's daemon. It runs as root in the foreground
// (systemd supervises it), owns the state directory, and serves the API on
// a unix socket.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"banger/internal/api"
	"banger/internal/buildinfo"
	"banger/internal/config"
	"banger/internal/daemon"
	"banger/internal/model"
)

var _ api.Backend = (*daemon.Daemon)(nil)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fs := flag.NewFlagSet("bangerd", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `Usage: bangerd [flags]

bangerd is banger's daemon. It runs as root in the foreground, keeps state in
SQLite under state_dir, and serves the banger CLI on a unix socket.

Configuration is read from --config, else $%s, else %s
(a missing default file means built-in defaults).

Flags:
`, config.EnvPath, config.DefaultPath)
		fs.PrintDefaults()
	}
	configFlag := fs.String("config", "", "configuration file (TOML)")
	logLevel := fs.String("log-level", "", "log level: debug, info, warn, error (overrides log_level)")
	logFormat := fs.String("log-format", "", "log format: text or json (overrides log_format)")
	version := fs.Bool("version", false, "print the version and exit")
	pprofSocket := fs.String("pprof-socket", "", "debugging: serve Go profiles (/debug/pprof/) on this unix socket, mode 0600 (root only)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *version {
		v := buildinfo.Info()
		fmt.Printf("bangerd %s %s\n", v.Version, v.GoVersion)
		return 0
	}
	path, explicit := config.Path(*configFlag)
	cfg, err := config.Load(path, explicit)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bangerd: %v\n", err)
		return 2
	}
	if *logLevel != "" {
		cfg.LogLevel = *logLevel
	}
	if *logFormat != "" {
		cfg.LogFormat = *logFormat
	}
	logger, err := newLogger(cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bangerd: %v\n", err)
		return 2
	}
	if os.Geteuid() != 0 {
		logger.Warn("bangerd is not running as root; VMs, taps and NAT will not work")
	}

	if *pprofSocket != "" {
		closePprof, err := servePprof(*pprofSocket, logger)
		if err != nil {
			fmt.Fprintf(os.Stderr, "bangerd: %v\n", err)
			return 2
		}
		defer closePprof()
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	d, err := daemon.New(ctx, daemon.Options{Config: cfg, Logger: logger, Version: buildinfo.Info()})
	if err != nil {
		logger.Error("start failed", "err", err)
		return 1
	}
	srv := api.NewServer(d, logger)
	srv.Configure(api.Access{AdminGroup: cfg.AdminGroup, ReadTimeout: cfg.APIReadTimeout, IdleTimeout: cfg.APIIdleTimeout, Limits: cfg.Limits})
	if err := srv.Listen(cfg.SocketPath, cfg.SocketGroup); err != nil {
		logger.Error("listen failed", "err", err)
		d.Close()
		if model.ErrorCode(err) == model.ECONFLICT {
			return 3
		}
		return 1
	}
	if err := d.Start(ctx); err != nil {
		logger.Error("start failed", "err", err)
		d.Close()
		return 1
	}
	logger.Info("bangerd ready", "version", buildinfo.Version, "socket", cfg.SocketPath, "state_dir", cfg.StateDir, "config", path)

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve() }()
	select {
	case <-ctx.Done():
		logger.Info("shutting down")
	case err := <-errc:
		if err != nil {
			logger.Error("serve failed", "err", err)
		}
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutCtx); err != nil {
		logger.Warn("shutdown", "err", err)
	}
	if err := d.Close(); err != nil {
		logger.Warn("close", "err", err)
	}
	os.Remove(cfg.SocketPath)
	logger.Info("stopped")
	return 0
}

func newLogger(level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(strings.ToUpper(level))); err != nil {
		return nil, fmt.Errorf("log level %q: use debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text", "":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("log format %q: use text or json", format)
}
