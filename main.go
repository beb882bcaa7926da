// Command s3-helper serves a private S3 bucket to a local nginx as if it
// were a bucket that needs no signature: it takes plain GET and HEAD
// requests on 127.0.0.1, signs them with the instance role's credentials
// (SigV4) and streams S3's answer back with every AWS-specific header
// removed.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime/debug"
	"sync"
	"syscall"
	"time"
)

// releaseVersion is reported by -version and in the start-up log.
const releaseVersion = "0.1.0"

const (
	// Server limits. No WriteTimeout: long range responses are normal.
	idleTimeout = 2 * time.Minute
	// serverHeaderCap is net/http's own limit on a request's header block;
	// it adds 4096 bytes of slack, so only blocks over 68 KiB are refused
	// by Go itself, unlogged. Below it the proxy applies
	// maxRequestHeaderBytes and answers 431 itself, logged and counted.
	serverHeaderCap = 64 << 10
)

// main runs the daemon until SIGINT, SIGTERM or SIGHUP, each of which
// drains; exit status 2 means bad configuration. SIGHUP's default action
// would end the process at once, cutting every response in flight: a
// closed terminal or an operator's kill -HUP stops it as SIGTERM does
// (there is no configuration to reload: a restart reads it).
func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	err := run(ctx, os.Args[1:], getenvOf(os.Environ()), os.Stdout, os.Stderr)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "s3-helper:", err)
		var ce configError
		if errors.As(err, &ce) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// newLogger returns a slog logger in the -log-format on w.
func newLogger(w io.Writer, format string, level slog.Level) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// run is main without the process: it reads the configuration, wires the
// parts and serves until ctx ends, then drains in-flight requests.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := loadConfig(args, getenv, stdout)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return err
	case cfg.showVersion:
		fmt.Fprintln(stdout, "s3-helper", versionString())
		return nil
	case cfg.check:
		return runCheck(ctx, stdout, cfg, configProblems(err), getenv)
	case err != nil:
		return err
	}
	passed, err := passedListeners(cfg, getenv)
	if err != nil {
		return err
	}
	defer passed.close()
	log := newLogger(stderr, cfg.logFormat, cfg.level)
	notify, err := newNotifier(getenv)
	if err != nil {
		log.Warn("cannot report to the service manager; serving without readiness reports", "err", err)
	}
	defer notify.close()
	if err := cfg.discoverRegion(ctx); err != nil {
		return err
	}

	metrics, statsd, err := newOutputs(cfg, passed.admin != nil)
	if err != nil {
		return err
	}
	defer metrics.Close()
	if cfg.newRelicKey != "" {
		nr := newNewRelicPusher(cfg, metrics, log)
		nr.start()
		defer nr.close()
	}
	caches := newCredentialCaches(cfg, getenv, log.With("component", "credentials"), metrics)
	for _, c := range caches {
		c.Start(ctx)
		defer c.Close()
	}
	cache := caches[len(caches)-1] // the one that signs S3 requests

	if cfg.presignRequested {
		routes := newRoutes(cfg)
		s3 := newS3Client(cfg, routes, cache, metrics, log)
		routes = withSessions(routes, cache, s3.transport, metrics, log)
		defer closeSessions(routes)
		return printPresignedURL(ctx, stdout, s3, routes, cfg)
	}
	proxy := newProxy(cfg, cache, metrics, log)
	defer proxy.Close()
	registerGauges(metrics, proxy, cache, statsd)
	go reportReady(ctx, notify, cache, log)
	// The watchdog beats through the drain too: systemd would otherwise
	// kill a process that is finishing its requests.
	beating, stopBeating := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBeating()
	go notify.keepWatchdog(beating, watchdogInterval(getenv, os.Getpid()))
	return listenAndServe(ctx, cfg, passed, proxy, cache, metrics, log, notify)
}

// reportReady tells the service manager s3-helper can serve once the first
// credential set is in: the moment /healthz turns healthy, and what
// systemctl start (Type=notify) waits for.
func reportReady(ctx context.Context, notify *notifier, cache *credentialCache, log *slog.Logger) {
	select {
	case <-ctx.Done():
	case <-cache.Ready():
		if err := notify.send("READY=1\nSTATUS=serving"); err != nil {
			log.Warn("cannot report readiness to the service manager", "err", err)
		}
	}
}

// inherited are the listeners systemd passed; either may be nil.
type inherited struct {
	proxy, admin net.Listener
}

// close closes what was not handed to a server.
func (in *inherited) close() {
	for _, ln := range []net.Listener{in.proxy, in.admin} {
		if ln != nil {
			ln.Close()
		}
	}
}

// passedListeners takes the sockets systemd passed (see systemd.go). A
// socket for a role whose flag was given as well is a configuration error:
// the two would disagree on where s3-helper listens. So is a non-loopback
// socket without -allow-remote, as it is for -listen.
func passedListeners(cfg config, getenv func(string) string) (inherited, error) {
	sockets, err := listenEnv(getenv, os.Getpid())
	if err != nil || sockets == nil {
		return inherited{}, configErrorOf(err)
	}
	clearListenEnv()
	if err := checkDistinctSockets(sockets); err != nil {
		return inherited{}, configErrorOf(err)
	}
	var in inherited
	for _, s := range sockets {
		if s.role == roleProxy && cfg.listenGiven || s.role == roleAdmin && cfg.adminGiven {
			flagName := map[string]string{roleProxy: "-listen", roleAdmin: "-admin"}[s.role]
			in.close()
			return inherited{}, configErrorOf(fmt.Errorf("%w: systemd passed the %s socket (fd %d) and %s is set too: use one (remove %s and its S3_HELPER_ variable)",
				errSocketActivation, s.role, s.fd, flagName, flagName))
		}
		ln, err := listenerFor(s)
		if err == nil && !cfg.allowRemote && !isLoopbackListener(ln.Addr()) {
			ln.Close()
			err = fmt.Errorf("%w: the %s socket %s is not a loopback address; add -allow-remote to serve other hosts", errSocketActivation, s.role, ln.Addr())
		}
		if err != nil {
			in.close()
			return inherited{}, configErrorOf(err)
		}
		if s.role == roleProxy {
			in.proxy = ln
		} else {
			in.admin = ln
		}
	}
	return in, nil
}

// configErrorOf makes err a configuration error (exit status 2); nil stays nil.
func configErrorOf(err error) error {
	if err == nil {
		return nil
	}
	return configError{[]error{err}}
}

// loadConfig parses args and the environment and resolves the result; the
// error joins every problem of both steps in one configError.
func loadConfig(args []string, getenv func(string) string, stdout io.Writer) (config, error) {
	parsed, err := parseConfig(args, getenv, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return config{}, err
	}
	cfg, rerr := parsed.resolve(getenv)
	if all := append(configProblems(err), configProblems(rerr)...); len(all) > 0 {
		return cfg, configError{all}
	}
	return cfg, nil
}

// configProblems returns the problems a configError lists, or none.
func configProblems(err error) []error {
	var ce configError
	if errors.As(err, &ce) {
		return ce.problems
	}
	return nil
}

// newOutputs returns the measurements and, with -statsd, the emitter they
// feed; with an admin listener (-admin, or passed by systemd) they are
// aggregated for /metrics and the New Relic push.
func newOutputs(cfg config, passedAdmin bool) (*Metrics, *statsdEmitter, error) {
	var statsd *statsdEmitter
	if cfg.statsd != "" {
		conn, err := net.Dial("udp", cfg.statsd) // resolves the name; UDP has no handshake
		if err != nil {
			return nil, nil, fmt.Errorf("-statsd %q: %w", cfg.statsd, err)
		}
		statsd = newStatsdEmitter(conn, cfg.statsdPrefix, cfg.statsdTags, 0)
	}
	return newMetrics(statsd, cfg.admin != "" || passedAdmin || cfg.newRelicKey != ""), statsd, nil
}

// newNewRelicPusher sends the measurements to New Relic with the key read
// by resolve.
func newNewRelicPusher(cfg config, metrics *Metrics, log *slog.Logger) *newRelicPusher {
	host, _ := os.Hostname()
	nr := &newRelicPusher{metrics: metrics, endpoint: cfg.newRelicEndpoint, key: cfg.newRelicKey, interval: cfg.newRelicInterval,
		attributes: map[string]any{"service.name": "s3-helper", "host.name": host, "instance": cfg.listen, "service.version": releaseVersion},
		log:        log.With("component", "newrelic")}
	return nr
}

// registerGauges adds the values read when an output reports.
func registerGauges(metrics *Metrics, proxy *Proxy, cache *credentialCache, statsd *statsdEmitter) {
	metrics.Gauge(mInFlight, proxy.InFlight)
	if states, _ := proxy.bucketStates(); len(states) > 0 {
		names := make([]string, len(states))
		for i, s := range states {
			names[i] = s.bucket
		}
		metrics.GaugeSet(mBucketUp, names, func(i int) int64 {
			if states, _ := proxy.bucketStates(); i < len(states) && states[i].up {
				return 1
			}
			return 0
		})
		metrics.Gauge(mAllCopiesDown, func() int64 {
			if _, noCopyUp := proxy.bucketStates(); noCopyUp {
				return 1
			}
			return 0
		})
	}
	if buckets, sets := proxy.bucketFrontEnds(); len(buckets) > 0 {
		count := func(pick func(known, inUse, leftOut int) int) func(i int) int64 {
			return func(i int) int64 { return int64(pick(sets[i].tally())) }
		}
		metrics.GaugeSet(mFrontEnds, buckets, count(func(known, _, _ int) int { return known }))
		metrics.GaugeSet(mFrontEndsInUse, buckets, count(func(_, inUse, _ int) int { return inUse }))
		metrics.GaugeSet(mFrontEndsResting, buckets, count(func(_, _, leftOut int) int { return leftOut }))
	}
	if tokens, ok := proxy.BudgetTokens(); ok {
		metrics.Gauge(mRetryBudgetTokens, tokens)
	}
	metrics.Gauge(mCredentialTTL, func() int64 {
		return int64(cache.Status(time.Now()).ExpiresIn / time.Second)
	})
	metrics.Gauge(mClockOffset, func() int64 {
		return int64(proxy.ClockOffset(time.Now()) / time.Second)
	})
	if statsd != nil {
		metrics.Gauge(mStatsdDropped, statsd.Dropped)
	}
}

// listenAndServe listens (failing fast on bind errors), serves until ctx ends, then
// drains in-flight requests for up to -shutdown-timeout.
func listenAndServe(ctx context.Context, cfg config, passed inherited, proxy *Proxy, cache *credentialCache, metrics *Metrics, log *slog.Logger, notify *notifier) error {
	ln, aln := passed.proxy, passed.admin
	if ln == nil {
		var err error
		if ln, err = listenProxy(cfg); err != nil {
			return err
		}
	}
	errorLog := slog.NewLogLogger(log.Handler(), slog.LevelWarn)
	srv := &http.Server{
		Handler:           proxy,
		ReadHeaderTimeout: cfg.readHeaderWait,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    serverHeaderCap,
		ErrorLog:          errorLog,
		// OPTIONS * would be answered 200 by net/http itself; the proxy
		// answers every method but GET and HEAD with 405.
		DisableGeneralOptionsHandler: true,
	}
	servers := []serving{{"proxy", srv, ln}}
	if aln == nil && cfg.admin != "" {
		var err error
		if aln, err = net.Listen("tcp", cfg.admin); err != nil {
			ln.Close()
			return fmt.Errorf("-admin %q: %w", cfg.admin, err)
		}
	}
	if aln != nil {
		admin := &http.Server{Handler: adminHandler(cache, metrics, credentialSourceName(cfg), cfg.pprof, proxy), ReadHeaderTimeout: readHeaderTimeout, ErrorLog: errorLog}
		servers = append(servers, serving{"admin", admin, aln})
		log.Info("admin listening", "addr", aln.Addr().String(), "pprof", cfg.pprof)
	}
	if !isLoopbackListener(ln.Addr()) {
		log.Warn("listening on a non-loopback address: anyone who can reach it can read the bucket", "addr", ln.Addr().String())
	}
	log.Info("listening", "addr", ln.Addr().String(), "version", releaseVersion, "region", cfg.region,
		"endpoint", cfg.endpointURL.String(), "bucket", cfg.bucket, "routes", len(cfg.routeSpecs),
		"credentials", credentialSourceName(cfg), "statsd", cfg.statsd != "", "newrelic", cfg.newRelicKey != "")
	return runServers(ctx, servers, cfg.shutdownTimeout, log, proxy, notify)
}

// listenProxy binds -listen: TCP, or a Unix socket with -socket-mode.
func listenProxy(cfg config) (net.Listener, error) {
	if cfg.listenNetwork == "unix" {
		if err := removeStaleSocket(cfg.listenAddress); err != nil {
			return nil, fmt.Errorf("-listen %q: %w", cfg.listen, err)
		}
	}
	ln, err := net.Listen(cfg.listenNetwork, cfg.listenAddress)
	if err != nil {
		return nil, fmt.Errorf("-listen %q: %w", cfg.listen, err)
	}
	if cfg.listenNetwork == "unix" {
		// The umask would leave the socket writable by its owner only, and
		// nginx (www-data) could not connect.
		if err := os.Chmod(cfg.listenAddress, cfg.socketPerm); err != nil {
			ln.Close()
			return nil, fmt.Errorf("-socket-mode %s: %w", cfg.socketMode, err)
		}
		return ownSocket(ln.(*net.UnixListener), cfg.listenAddress), nil
	}
	return ln, nil
}

// ownedSocket is a Unix listener that removes its socket file on Close
// only while the file is still its own: a process that replaced it (a
// restart that overlapped) keeps serving on it.
type ownedSocket struct {
	*net.UnixListener
	path  string
	inode uint64
}

// ownSocket takes over removing path from ln.
func ownSocket(ln *net.UnixListener, path string) net.Listener {
	ln.SetUnlinkOnClose(false)
	return &ownedSocket{UnixListener: ln, path: path, inode: inodeOf(path)}
}

// Close closes the listener and removes the socket file if it is ours.
func (o *ownedSocket) Close() error {
	err := o.UnixListener.Close()
	if ino := inodeOf(o.path); ino != 0 && ino == o.inode {
		os.Remove(o.path)
	}
	return err
}

// inodeOf is path's inode number; 0 when it cannot be read.
func inodeOf(path string) uint64 {
	fi, err := os.Lstat(path)
	if err != nil {
		return 0
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}

// serving is one server and the listener it serves.
type serving struct {
	name string
	srv  *http.Server
	ln   net.Listener
}

// runServers serves every listener until ctx ends or one server fails.
// Then it drains: the service manager hears STOPPING=1, /healthz says
// draining, the proxy stops accepting and closes idle keep-alive
// connections (nginx opens new ones, to the next process), and requests in
// flight may finish within shutdownTimeout; those still running then are
// cut, logged and counted as cut at shutdown. The admin listener stops
// last, so it reports the drain while it lasts. A cut is how a drain ends,
// not an error; a failed server is, so the process exits non-zero instead
// of running on half its listeners.
func runServers(ctx context.Context, servers []serving, shutdownTimeout time.Duration, log *slog.Logger, proxy *Proxy, notify *notifier) error {
	errc := make(chan error, len(servers))
	var serveLoops sync.WaitGroup
	for _, s := range servers {
		// Shutdown runs this once the listener is closed: from then on new
		// connections are refused while requests in flight finish.
		s.srv.RegisterOnShutdown(func() { log.Info("stopped accepting", "server", s.name) })
		serveLoops.Go(func() {
			if err := s.srv.Serve(s.ln); !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("%s server on %s: %w", s.name, s.ln.Addr(), err)
			}
		})
	}
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
		log.Error("a server failed; stopping the others", "err", serveErr)
	}
	proxy.startDrain()
	notify.send("STOPPING=1\nSTATUS=draining")
	log.Info("shutting down", "in_flight", proxy.InFlight(), "timeout", shutdownTimeout)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	for _, s := range servers { // the proxy first: admin reports the drain
		if err := s.srv.Shutdown(sctx); err == nil {
			continue
		}
		cut := proxy.InFlight()
		proxy.startCut()
		s.srv.Close()
		if s.name == "proxy" {
			proxy.awaitIdle(time.Second) // so each cut request is logged
			log.Warn("shutdown: -shutdown-timeout expired; cut the requests still in flight", "cut", cut, "timeout", shutdownTimeout)
		}
	}
	serveLoops.Wait() // every listener is closed once its Serve returns
	log.Info("stopped")
	return serveErr
}

// credentialSourceName names the credential source and why it was chosen,
// for the start-up log and /healthz; never a value.
func credentialSourceName(cfg config) string {
	name := cfg.source.name
	if name == sourceIMDS {
		name += " " + cfg.imdsURL
	}
	if cfg.assumeRole != "" {
		name = sourceAssumeRole + " " + cfg.assumeRole + " with " + name
	}
	return name + " (" + cfg.source.reason + ")"
}

// isLoopbackListener reports whether a listener only accepts local connections.
func isLoopbackListener(a net.Addr) bool {
	if t, ok := a.(*net.TCPAddr); ok {
		return t.IP.IsLoopback()
	}
	return true // Unix sockets are local by nature
}

// removeStaleSocket removes a socket file left by a previous run; it never
// removes anything that is not a socket, nor a socket a process still
// serves: that is an error.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode()&os.ModeSocket == 0 {
		return nil
	}
	if conn, err := net.DialTimeout("unix", path, time.Second); err == nil {
		conn.Close()
		return fmt.Errorf("another process serves the socket %s (an s3-helper still running?): stop it, or choose another -listen path", path)
	}
	os.Remove(path)
	return nil
}

// adminHandler serves /healthz, /metrics (Prometheus) and, with withPprof,
// /debug/pprof/. /healthz ends with a line per bucket with replicas and one
// per directory bucket's session (sessionStatus), never a secret.
func adminHandler(cache *credentialCache, metrics *Metrics, source string, withPprof bool, proxy *Proxy) http.Handler {
	mux := http.NewServeMux()
	if metrics != nil && metrics.agg != nil {
		mux.Handle("GET /metrics", metrics)
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		now := time.Now()
		status := cache.Status(now)
		ok, reason := status.Healthy()
		buckets, noCopyUp := proxy.bucketStates()
		if ok && noCopyUp {
			ok, reason = false, "no copy of a bucket can serve: the bucket and all its replicas are marked down"
		}
		if proxy.Draining() {
			// From SIGTERM on: readiness probes and load balancers stop
			// sending while requests in flight finish.
			ok, reason = false, "draining: shutting down, requests in flight are finishing"
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "unhealthy:", reason)
		} else {
			fmt.Fprintln(w, "ok:", reason)
		}
		fmt.Fprintf(w, "source=%s access_key_id=%s age=%s expires_in=%s extended=%t refreshes=%d failures=%d\n",
			status.Source, status.AccessKeyID, status.Age.Round(time.Second), durationText(status.ExpiresIn), status.Extended, status.Refreshes, status.Failures)
		fmt.Fprintf(w, "credentials: %s\n", source)
		for _, b := range buckets {
			state := "up"
			if !b.up {
				state = "down"
			}
			fmt.Fprintf(w, "bucket %s (%s): %s\n", b.bucket, b.region, state)
		}
		for _, st := range sessionStates(proxy.routes, now) {
			fmt.Fprintln(w, st)
		}
		for _, line := range proxy.frontEndLines() {
			fmt.Fprintln(w, line)
		}
	})
	if withPprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// printPresignedURL prints a presigned URL for cfg.presign in the default
// route, signed as the proxy would sign it.
func printPresignedURL(ctx context.Context, stdout io.Writer, s3 *s3Client, routes []route, cfg config) error {
	rt := routes[len(routes)-1] // longest prefix first, so "/" is last
	wctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()
	u, err := s3.presign(wctx, rt, cfg.presign, cfg.presignExpires)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, u)
	return nil
}

// versionString adds the VCS revision when the binary was built from a
// checkout.
func versionString() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return releaseVersion
	}
	for _, s := range info.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			return releaseVersion + " (" + s.Value[:12] + ")"
		}
	}
	return releaseVersion
}
