package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/exporter-toolkit/web"
	"go.uber.org/zap"
	"go.uber.org/zap/exp/zapslog"
)

// ServerOptions configure a Server.
type ServerOptions struct {
	// ListenAddress is the main listener's host:port: /metrics and
	// POST /-/reload, plus the probes when ProbeAddress is empty.
	ListenAddress string
	// ProbeAddress, when set, is a second host:port that serves only
	// /healthz and /readyz, over plain HTTP and without authentication, for
	// kubelet probes. The main listener then does not serve the probes.
	ProbeAddress string
	// WebConfigFile is an exporter-toolkit web configuration file (TLS,
	// basic auth, headers, rate limit) for the main listener; "" serves
	// plain HTTP without authentication. exporter-toolkit reads the file
	// again for every request and TLS handshake, so edits to it (new users,
	// a renewed certificate) apply without a restart.
	WebConfigFile string
	// Ready reports nil when the daemon can serve (/readyz); required.
	Ready func() error
	// Reload reloads the configuration for POST /-/reload; its error is the
	// body of the 500 answer, so it must hold no secret. Nil disables the
	// endpoint.
	Reload func(ctx context.Context) error
	// Logger receives the server's logs; default no logging.
	Logger *zap.Logger
}

// Server serves the metrics, the probes and the reload endpoint on muxes of
// its own (never http.DefaultServeMux). The main listener goes through
// exporter-toolkit's web.Serve, as every Prometheus exporter does.
type Server struct {
	opts ServerOptions
	log  *zap.Logger

	main   *http.Server
	mainLn net.Listener

	probe   *http.Server
	probeLn net.Listener
}

// NewServer listens on the configured addresses right away, so a bad or busy
// address fails at start-up rather than later. The web configuration file
// is checked with web.Validate for the same reason.
func NewServer(m *Metrics, opts ServerOptions) (*Server, error) {
	if opts.Ready == nil {
		return nil, errors.New("metrics server: no readiness function")
	}

	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}

	if err := web.Validate(opts.WebConfigFile); err != nil {
		return nil, fmt.Errorf("web config file %s: %w", opts.WebConfigFile, err)
	}

	s := &Server{opts: opts, log: opts.Logger}

	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())

	if opts.Reload != nil {
		mux.HandleFunc("POST /-/reload", s.reload)
	}

	if opts.ProbeAddress == "" {
		s.probeRoutes(mux)
	}

	mainLn, err := net.Listen("tcp", opts.ListenAddress)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", opts.ListenAddress, err)
	}

	s.main, s.mainLn = newHTTPServer(mux), mainLn

	if opts.ProbeAddress != "" {
		probeLn, err := net.Listen("tcp", opts.ProbeAddress)
		if err != nil {
			_ = mainLn.Close()
			return nil, fmt.Errorf("listen on %s: %w", opts.ProbeAddress, err)
		}

		probeMux := http.NewServeMux()
		s.probeRoutes(probeMux)
		s.probe, s.probeLn = newHTTPServer(probeMux), probeLn
	}

	return s, nil
}

func newHTTPServer(h http.Handler) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
}

func (s *Server) probeRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := s.opts.Ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}

		_, _ = w.Write([]byte("ready\n"))
	})
}

func (s *Server) reload(w http.ResponseWriter, r *http.Request) {
	if err := s.opts.Reload(r.Context()); err != nil {
		http.Error(w, "reload failed:\n"+err.Error(), http.StatusInternalServerError)
		return
	}

	_, _ = w.Write([]byte("configuration reloaded\n"))
}

// Addr is the address of the main listener.
func (s *Server) Addr() string { return s.mainLn.Addr().String() }

// ProbeAddr is the address of the probe listener, "" when the probes are
// served on the main listener.
func (s *Server) ProbeAddr() string {
	if s.probeLn == nil {
		return ""
	}

	return s.probeLn.Addr().String()
}

// Run serves until ctx is done, then shuts down within five seconds.
func (s *Server) Run(ctx context.Context) error {
	// exporter-toolkit logs through slog; zapslog sends it to our logger.
	slogger := slog.New(zapslog.NewHandler(s.log.Core(), zapslog.WithName(s.log.Name())))
	webConfig := s.opts.WebConfigFile

	servers := 1
	errc := make(chan error, 2)

	go func() {
		errc <- web.Serve(s.mainLn, s.main, &web.FlagConfig{WebConfigFile: &webConfig}, slogger)
	}()

	if s.probe != nil {
		servers++

		s.log.Info("serving probes", zap.String("address", s.ProbeAddr()))

		go func() { errc <- s.probe.Serve(s.probeLn) }()
	}

	var first error

	select {
	case err := <-errc:
		servers--
		first = fmt.Errorf("http server: %w", err)
	case <-ctx.Done():
	}

	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()

	errs := []error{first}

	for _, srv := range []*http.Server{s.main, s.probe} {
		if srv == nil {
			continue
		}

		if err := srv.Shutdown(shutdownCtx); err != nil {
			errs = append(errs, fmt.Errorf("http server shutdown: %w", err))
		}
	}

	for range servers {
		if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
			errs = append(errs, fmt.Errorf("http server: %w", err))
		}
	}

	return errors.Join(errs...)
}
