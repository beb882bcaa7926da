// Command loadtest measures what s3-helper adds to a Range fetch, on
// loopback only. It starts an origin that answers like S3 from memory
// (accepting any signature), a plain httputil.ReverseProxy with no signing
// (the standard-library baseline) and s3-helper with static credentials,
// each in its own process, then measures 4 KiB, 64 KiB and 256 KiB ranges
// against (a) the origin, (b) the baseline and (c) s3-helper in
// interleaved rounds, once with a plain HTTP origin and once with a TLS
// origin (as S3 is reached in production; the certificate is made here
// with crypto/x509, and s3-helper trusts it through SSL_CERT_FILE). Beside
// requests per second it reads the CPU time (user and system, from
// /proc/PID/stat) of every process before and after each round, and prints
// each one's CPU time per request. With -before REV, s3-helper built from
// git revision REV (c') runs beside the working tree's in the same rounds.
// It prints medians, ratios, latency percentiles and s3-helper's peak RSS,
// then runs 1000 slow clients each reading 1 MiB. Last come S3's bad days:
// a TLS origin with an S3-like latency tail (a log-normal time to first
// byte, and a small fraction of answers held back) and a brownout switch
// (every answer SlowDown), measured at a steady rate with hedging off and
// on, and with and without the retry budget. It exits non-zero if any
// request failed.
//
//	go run ./tools/loadtest [-round 2s] [-rounds 3] [-before REV] [-cells plain/4/16,TLS/256/256]
//	    [-cpuprofile DIR [-profile-time 10s]] [-slow-clients 0] [-bad-days=false]
package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/http/pprof"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const objectBytes = 64 << 20 // the object the ranges are cut from

func main() {
	mode := flag.String("mode", "", "internal: origin or baseline (the processes this tool starts)")
	addr := flag.String("addr", "", "internal: listen address")
	target := flag.String("target", "", "internal: baseline's upstream URL")
	certFile := flag.String("cert", "", "internal: the origin's TLS certificate (PEM), which the baseline also trusts")
	keyFile := flag.String("key", "", "internal: the origin's TLS key (PEM)")
	pprofAddr := flag.String("pprof-addr", "", "internal: where the baseline serves /debug/pprof/profile")
	round := flag.Duration("round", 2*time.Second, "length of one measurement")
	rounds := flag.Int("rounds", 3, "interleaved rounds per configuration (the median is reported)")
	before := flag.String("before", "", "also measure s3-helper built from this git revision, in the same rounds (c')")
	cells := flag.String("cells", "", "comma-separated cells to measure, ORIGIN/KiB/CONNS (plain/4/16,TLS/256/256); empty: all")
	cpuProfile := flag.String("cpuprofile", "", "after the rounds, write a CPU profile of each proxy in each cell measured to this directory")
	profileTime := flag.Duration("profile-time", 10*time.Second, "length of each -cpuprofile profile")
	slowClients := flag.Int("slow-clients", 1000, "concurrent slow clients reading 1 MiB each; 0 skips")
	badDays := flag.Bool("bad-days", true, "measure the latency tail and a brownout with hedging and the retry budget off and on")
	flag.Parse()
	switch *mode {
	case "origin":
		serveOrigin(*addr, *certFile, *keyFile)
	case "tail-origin":
		serveTailOrigin(*addr, *certFile, *keyFile)
	case "baseline":
		serveBaseline(*addr, *target, *certFile, *pprofAddr)
	case "":
		opts := options{round: *round, rounds: *rounds, before: *before, cells: *cells, cpuProfile: *cpuProfile,
			profileTime: *profileTime, slowClients: *slowClients, badDays: *badDays}
		if err := measure(opts); err != nil {
			log.Fatal(err)
		}
	default:
		log.Fatalf("unknown -mode %q", *mode)
	}
}

// options are the harness's flags.
type options struct {
	round, profileTime        time.Duration
	rounds, slowClients       int
	before, cells, cpuProfile string
	badDays                   bool
}

// serveOrigin answers every GET with the requested range of a fixed
// pseudo-random object, as S3 would (206, Content-Range, ETag, x-amz-*).
func serveOrigin(addr, certFile, keyFile string) {
	object := make([]byte, objectBytes)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range object {
		object[i] = byte(r.Uint32())
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("X-Amz-Request-Id", "LOADTEST")
		w.Header().Set("Server", "AmazonS3")
		w.Header().Set("Etag", `"loadtest"`)
		http.ServeContent(w, req, "", time.Unix(0, 0), bytes.NewReader(object))
	})
	// A client that gives up on a handshake (a hedge's loser under the
	// slow clients' storm) is expected: not the harness's output.
	srv := &http.Server{Addr: addr, Handler: h, ErrorLog: log.New(io.Discard, "", 0)}
	if certFile != "" {
		log.Fatal(srv.ListenAndServeTLS(certFile, keyFile))
	}
	log.Fatal(srv.ListenAndServe())
}

// writeCertificate makes a self-signed ECDSA certificate for 127.0.0.1 and
// writes it and its key as PEM; it returns the pool that trusts it.
func writeCertificate(certFile, keyFile string) (*x509.CertPool, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "loadtest origin"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(crand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	return pool, nil
}

// trusting returns a pool with the PEM certificates in file.
func trusting(file string) *x509.CertPool {
	raw, err := os.ReadFile(file)
	if err != nil {
		log.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(raw)
	return pool
}

// serveBaseline is the plain standard-library reverse proxy; with
// pprofAddr it serves /debug/pprof/profile there.
func serveBaseline(addr, target, caFile, pprofAddr string) {
	u, err := url.Parse(target)
	if err != nil {
		log.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	tr := &http.Transport{MaxIdleConnsPerHost: 512, DisableCompression: true}
	if caFile != "" {
		tr.TLSClientConfig = &tls.Config{RootCAs: trusting(caFile)}
	}
	rp.Transport = tr
	rp.ErrorLog = log.New(io.Discard, "", 0) // clients cancelling at the end of a round are expected
	if pprofAddr != "" {
		mux := http.NewServeMux()
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		go func() { log.Fatal(http.ListenAndServe(pprofAddr, mux)) }()
	}
	log.Fatal((&http.Server{Addr: addr, Handler: rp}).ListenAndServe())
}

func freeAddr() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func waitUp(url string, roots *x509.CertPool) error {
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := client.Get(url); err == nil {
			resp.Body.Close()
			return nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	return fmt.Errorf("%s did not answer", url)
}

type result struct {
	reqs   int64
	bytes  int64
	failed int64
	lat    []time.Duration
	dur    time.Duration
	// cpu is the CPU time the measured process used in the round;
	// originCPU the origin's.
	cpu, originCPU time.Duration
}

func (r result) rps() float64   { return float64(r.reqs) / r.dur.Seconds() }
func (r result) mibps() float64 { return float64(r.bytes) / r.dur.Seconds() / (1 << 20) }
func (r result) pct(p float64) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	return r.lat[int(p*float64(len(r.lat)-1))]
}

// load runs conns clients fetching rangeBytes ranges from base for d.
func load(base string, roots *x509.CertPool, conns, rangeBytes int, d time.Duration) result {
	tr := &http.Transport{MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns, DisableCompression: true,
		TLSClientConfig: &tls.Config{RootCAs: roots}}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var reqs, total, failed atomic.Int64
	lats := make([][]time.Duration, conns)
	var wg sync.WaitGroup
	buf := make([][]byte, conns)
	for c := range conns {
		buf[c] = make([]byte, 64<<10)
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(c), 7))
			for ctx.Err() == nil {
				from := r.IntN(objectBytes - rangeBytes)
				req, _ := http.NewRequestWithContext(ctx, "GET", base+"/videos/load.mp4", nil)
				req.Header.Set("Range", "bytes="+strconv.Itoa(from)+"-"+strconv.Itoa(from+rangeBytes-1))
				start := time.Now()
				resp, err := client.Do(req)
				if err != nil {
					if ctx.Err() == nil {
						failed.Add(1)
					}
					continue
				}
				n, err := io.CopyBuffer(io.Discard, resp.Body, buf[c])
				resp.Body.Close()
				if ctx.Err() != nil {
					return
				}
				if err != nil || resp.StatusCode != 206 || n != int64(rangeBytes) {
					failed.Add(1)
					continue
				}
				lats[c] = append(lats[c], time.Since(start))
				reqs.Add(1)
				total.Add(n)
			}
		})
	}
	wg.Wait()
	res := result{reqs: reqs.Load(), bytes: total.Load(), failed: failed.Load(), dur: d}
	for _, l := range lats {
		res.lat = append(res.lat, l...)
	}
	slices.Sort(res.lat)
	return res
}

func peakRSSMiB(pid int) float64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for line := range strings.SplitSeq(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return float64(kb) / 1024
		}
	}
	return -1
}

// resetPeakRSS starts process pid's peak RSS (VmHWM) over from its RSS
// now (proc(5), /proc/PID/clear_refs).
func resetPeakRSS(pid int) {
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		log.Printf("reset the peak RSS of %d: %v", pid, err)
	}
}

// start runs a process of the harness; its log goes to stderr.
func start(name string, args []string, env []string, stderr io.Writer) (*exec.Cmd, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = stderr
	return cmd, cmd.Start()
}

func measure(o options) error {
	dir, err := os.MkdirTemp("", "s3-helper-load")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	helperBin := filepath.Join(dir, "s3-helper")
	if err := buildHelper(".", helperBin); err != nil {
		return err
	}
	helpers := []helperBuild{{"s3-helper", "c", helperBin}}
	if o.before != "" {
		beforeBin := filepath.Join(dir, "s3-helper-before")
		if err := buildRevision(o.before, filepath.Join(dir, "before"), beforeBin); err != nil {
			return err
		}
		helpers = append(helpers, helperBuild{"s3-helper@" + o.before, "c'", beforeBin})
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	certFile, keyFile := filepath.Join(dir, "origin.pem"), filepath.Join(dir, "origin-key.pem")
	roots, err := writeCertificate(certFile, keyFile)
	if err != nil {
		return err
	}
	var procs []*exec.Cmd
	defer func() {
		for _, p := range procs {
			p.Process.Kill()
			p.Wait() // reaped, not left a zombie
		}
	}()
	launch := func(name string, args, env []string, stderr io.Writer) (*exec.Cmd, error) {
		cmd, err := start(name, args, env, stderr)
		if err == nil {
			procs = append(procs, cmd)
		}
		return cmd, err
	}
	credentialsEnv := []string{"AWS_ACCESS_KEY_ID=AKIALOADTEST", "AWS_SECRET_ACCESS_KEY=loadtest-secret", "AWS_SESSION_TOKEN=" + strings.Repeat("T", 700)}
	var stacks []stack
	firstServed := time.Duration(0)
	for _, useTLS := range []bool{false, true} {
		st := stack{origin: "plain"}
		direct, baseline := "http://"+freeAddr(), "http://"+freeAddr()
		originArgs := []string{"-mode", "origin", "-addr", strings.TrimPrefix(direct, "http://")}
		baselineArgs := []string{"-mode", "baseline", "-addr", strings.TrimPrefix(baseline, "http://")}
		helperEnv := credentialsEnv
		if useTLS {
			st.origin, st.roots = "TLS", roots
			direct = "https://" + strings.TrimPrefix(direct, "http://")
			originArgs = append(originArgs, "-cert", certFile, "-key", keyFile)
			baselineArgs = append(baselineArgs, "-cert", certFile)
			helperEnv = append(slices.Clone(credentialsEnv), "SSL_CERT_FILE="+certFile)
		}
		baselineArgs = append(baselineArgs, "-target", direct)
		var baselineProfile string
		if o.cpuProfile != "" {
			pa := freeAddr()
			baselineArgs = append(baselineArgs, "-pprof-addr", pa)
			baselineProfile = "http://" + pa + "/debug/pprof/profile"
		}
		origin, err := launch(self, originArgs, nil, os.Stderr)
		if err != nil {
			return err
		}
		st.originPID = origin.Process.Pid
		bp, err := launch(self, baselineArgs, nil, os.Stderr)
		if err != nil {
			return err
		}
		if err := waitUp(direct+"/", roots); err != nil {
			return err
		}
		st.targets = []target{{name: "direct", short: "a", base: direct, pid: st.originPID},
			{name: "ReverseProxy", short: "b", base: baseline, pid: bp.Process.Pid, profile: baselineProfile}}
		for _, h := range helpers {
			base, admin := "http://"+freeAddr(), freeAddr()
			// -admin as in production (the kubelet's probes, /metrics):
			// the metrics are aggregated.
			helperArgs := []string{"-listen", strings.TrimPrefix(base, "http://"), "-admin", admin, "-bucket", "media", "-region", "us-east-1",
				"-endpoint", direct, "-log-level", "warn"}
			tg := target{name: h.name, short: h.short, base: base}
			if o.cpuProfile != "" {
				helperArgs = append(helperArgs, "-pprof")
				tg.profile = "http://" + admin + "/debug/pprof/profile"
			}
			startAt := time.Now()
			helper, err := launch(h.bin, helperArgs, helperEnv, os.Stderr)
			if err != nil {
				return err
			}
			tg.pid = helper.Process.Pid
			if err := waitFirstObject(base); err != nil {
				return err
			}
			if !useTLS && h.short == "c" {
				firstServed = time.Since(startAt)
			}
			st.targets = append(st.targets, tg)
		}
		if err := waitUp(baseline+"/", nil); err != nil {
			return err
		}
		stacks = append(stacks, st)
	}
	fi, err := os.Stat(helperBin)
	if err != nil {
		return err
	}

	configs, err := chooseConfigs(o.cells)
	if err != nil {
		return err
	}
	results := map[string][]result{}
	var failed int64
	for _, st := range stacks {
		for r := range o.rounds {
			for _, c := range configs {
				if !c.in(st.origin) {
					continue
				}
				for _, tg := range rotate(st.targets, r) { // interleaved, in a rotating order
					res, err := st.measured(tg, func() result { return load(tg.base, st.roots, c.conns, c.bytes, o.round) })
					if err != nil {
						return err
					}
					results[st.key(tg, c)] = append(results[st.key(tg, c)], res)
					failed += res.failed
				}
			}
		}
	}
	if o.rounds > 0 {
		printTables(results, stacks, configs, o.rounds, o.round)
	}
	if o.cpuProfile != "" {
		if err := writeProfiles(o.cpuProfile, stacks, configs, o.profileTime); err != nil {
			return err
		}
	}
	if o.slowClients > 0 {
		fmt.Printf("\n%d slow clients reading 1 MiB each at once, %d rounds interleaved; peak RSS of each round (the peak reset before it)\n\n",
			o.slowClients, max(o.rounds, 1))
		fmt.Println("| origin | s3-helper | complete | failed | peak RSS, median | peak RSS, each round |")
		fmt.Println("|---|---|---|---|---|---|")
		for _, st := range stacks {
			helpers := st.targets[2:]
			peaks := make([][]float64, len(helpers))
			complete, fails := make([]int64, len(helpers)), make([]int64, len(helpers))
			for range max(o.rounds, 1) {
				for i, tg := range helpers {
					resetPeakRSS(tg.pid)
					n, sf, _ := slowLoad(tg.base, o.slowClients)
					complete[i], fails[i] = complete[i]+n, fails[i]+sf
					peaks[i] = append(peaks[i], peakRSSMiB(tg.pid))
				}
			}
			for i, tg := range helpers {
				failed += fails[i]
				var each []string
				for _, p := range peaks[i] {
					each = append(each, strconv.FormatFloat(p, 'f', 1, 64))
				}
				sorted := slices.Sorted(slices.Values(peaks[i]))
				fmt.Printf("| %s | %s | %d | %d | %.1f MiB | %s |\n", st.origin, tg.name, complete[i], fails[i], sorted[len(sorted)/2], strings.Join(each, ", "))
			}
		}
		fmt.Println()
	}
	fmt.Printf("start to first served request: %v; static binary: %.1f MB\n", firstServed.Round(time.Millisecond), float64(fi.Size())/1e6)
	if o.badDays {
		n, err := measureBadDays(launch, self, helperBin, certFile, keyFile, roots, credentialsEnv)
		if err != nil {
			return err
		}
		failed += n
	}
	if failed > 0 {
		return fmt.Errorf("%d requests failed", failed)
	}
	return nil
}

// helperBuild is one s3-helper binary measured.
type helperBuild struct{ name, short, bin string }

// buildHelper builds s3-helper from the source in dir into out.
func buildHelper(dir, out string) error {
	build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, ".")
	build.Dir = dir
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("build s3-helper in %s: %w", dir, err)
	}
	return nil
}

// buildRevision builds s3-helper as git revision rev has it, from a copy
// of its tree in dir.
func buildRevision(rev, dir, out string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tarball := dir + ".tar"
	archive := exec.Command("git", "archive", "-o", tarball, rev)
	archive.Stderr = os.Stderr
	if err := archive.Run(); err != nil {
		return fmt.Errorf("git archive %s: %w", rev, err)
	}
	unpack := exec.Command("tar", "-xf", tarball, "-C", dir)
	unpack.Stderr = os.Stderr
	if err := unpack.Run(); err != nil {
		return fmt.Errorf("unpack %s: %w", rev, err)
	}
	return buildHelper(dir, out)
}

// stack is one origin (plain or TLS) with the baseline and s3-helper in
// front of it.
type stack struct {
	origin string
	// roots trusts the TLS origin; nil for the plain one.
	roots     *x509.CertPool
	originPID int
	// targets are the origin itself (direct) first, then the baseline,
	// then each s3-helper build.
	targets []target
}

// target is one process the clients measure.
type target struct {
	// name is how the tables call it; short its letter in ratios.
	name, short string
	base        string
	pid         int
	// profile is the URL of its CPU profile; "" without -cpuprofile, and
	// for the origin.
	profile string
}

// key names the results of tg in configuration c.
func (st *stack) key(tg target, c config) string {
	return fmt.Sprintf("%s/%s/%d/%d", st.origin, tg.name, c.conns, c.bytes)
}

// measured runs one round against tg and adds what it cost in CPU: tg's
// process's and the origin's.
func (st *stack) measured(tg target, run func() result) (result, error) {
	self0, err := cpuTime(tg.pid)
	if err != nil {
		return result{}, err
	}
	origin0, err := cpuTime(st.originPID)
	if err != nil {
		return result{}, err
	}
	res := run()
	self1, err := cpuTime(tg.pid)
	if err != nil {
		return result{}, err
	}
	origin1, err := cpuTime(st.originPID)
	res.cpu, res.originCPU = self1-self0, origin1-origin0
	return res, err
}

// config is one cell's load: its connections and range size.
type config struct {
	conns, bytes int
	// origins limits the cell to these origins ("plain", "TLS"); nil: both.
	origins []string
}

// in reports whether the cell runs against origin.
func (c config) in(origin string) bool { return c.origins == nil || slices.Contains(c.origins, origin) }

// allConfigs are the cells measured without -cells.
var allConfigs = []config{{conns: 16, bytes: 4 << 10}, {conns: 256, bytes: 4 << 10}, {conns: 16, bytes: 64 << 10},
	{conns: 16, bytes: 256 << 10}, {conns: 256, bytes: 256 << 10}}

// chooseConfigs parses -cells: ORIGIN/KiB/CONNS, comma-separated.
func chooseConfigs(cells string) ([]config, error) {
	if cells == "" {
		return allConfigs, nil
	}
	var out []config
	for cell := range strings.SplitSeq(cells, ",") {
		parts := strings.Split(cell, "/")
		if len(parts) != 3 || parts[0] != "plain" && parts[0] != "TLS" {
			return nil, fmt.Errorf("-cells: %q is not ORIGIN/KiB/CONNS (ORIGIN plain or TLS)", cell)
		}
		kib, err1 := strconv.Atoi(parts[1])
		conns, err2 := strconv.Atoi(parts[2])
		if err1 != nil || err2 != nil || kib <= 0 || conns <= 0 {
			return nil, fmt.Errorf("-cells: %q is not ORIGIN/KiB/CONNS", cell)
		}
		i := slices.IndexFunc(out, func(c config) bool { return c.conns == conns && c.bytes == kib<<10 })
		if i < 0 {
			out, i = append(out, config{conns: conns, bytes: kib << 10, origins: []string{}}), len(out)
		}
		out[i].origins = append(out[i].origins, parts[0])
	}
	return out, nil
}

// printTables prints, per cell, requests per second and CPU time per
// request, then throughput and latency.
func printTables(results map[string][]result, stacks []stack, configs []config, rounds int, round time.Duration) {
	fmt.Printf("s3-helper load test: %s, %d CPUs, GOMAXPROCS %d, %d rounds of %v; req/s are medians, CPU µs per request the sum over the rounds\n\n",
		runtime.GOOS+"/"+runtime.GOARCH, runtime.NumCPU(), runtime.GOMAXPROCS(0), rounds, round)
	targets := stacks[0].targets
	proxies := targets[1:]
	head := "| origin | range | conns |"
	for _, tg := range targets {
		head += " " + tg.name + " req/s |"
	}
	for _, tg := range proxies {
		head += " " + tg.name + " CPU µs/req |"
	}
	head += " origin CPU µs/req " + shorts(targets) + " | c/b req/s | c/b CPU |"
	if len(targets) > 3 {
		head += " c/c' req/s | c/c' CPU |"
	}
	fmt.Println(head)
	fmt.Println(strings.Repeat("|---", strings.Count(head, "|")-1) + "|")
	for _, st := range stacks {
		for _, c := range configs {
			if !c.in(st.origin) {
				continue
			}
			all := make([][]result, len(st.targets))
			for i, tg := range st.targets {
				all[i] = results[st.key(tg, c)]
			}
			line := fmt.Sprintf("| %s | %d KiB | %d |", st.origin, c.bytes>>10, c.conns)
			for i := range st.targets {
				line += fmt.Sprintf(" %.0f |", median(all[i]).rps())
			}
			for i := range proxies {
				line += fmt.Sprintf(" %.1f |", cpuPerRequest(all[i+1], false))
			}
			var origin []string
			for i := range st.targets {
				origin = append(origin, strconv.FormatFloat(cpuPerRequest(all[i], true), 'f', 1, 64))
			}
			line += " " + strings.Join(origin, "/") + " |"
			ratio := func(x, y int) string {
				return fmt.Sprintf(" %.2f | %.2f |", median(all[x]).rps()/median(all[y]).rps(), cpuPerRequest(all[x], false)/cpuPerRequest(all[y], false))
			}
			line += ratio(2, 1)
			if len(st.targets) > 3 {
				line += ratio(2, 3)
			}
			fmt.Println(line)
		}
	}
	fmt.Println()
	fmt.Println("| origin | range | conns | s3-helper MiB/s | c/a req/s | p50 " + shorts(targets) + " | p99 " + shorts(targets) + " |")
	fmt.Println("|---|---|---|---|---|---|---|")
	for _, st := range stacks {
		for _, c := range configs {
			if !c.in(st.origin) {
				continue
			}
			var p50, p99 []string
			for _, tg := range st.targets {
				m := median(results[st.key(tg, c)])
				p50, p99 = append(p50, ms(m.pct(0.5))), append(p99, ms(m.pct(0.99)))
			}
			a, h := median(results[st.key(st.targets[0], c)]), median(results[st.key(st.targets[2], c)])
			fmt.Printf("| %s | %d KiB | %d | %.0f | %.2f | %s | %s |\n", st.origin, c.bytes>>10, c.conns, h.mibps(), h.rps()/a.rps(),
				strings.Join(p50, "/"), strings.Join(p99, "/"))
		}
	}
	for _, st := range stacks {
		for _, tg := range st.targets[2:] {
			fmt.Printf("\n%s (%s origin) peak RSS after the load: %.1f MiB", tg.name, st.origin, peakRSSMiB(tg.pid))
		}
	}
	fmt.Println()
}

// shorts is the targets' letters, a/b/c.
func shorts(targets []target) string {
	var s []string
	for _, tg := range targets {
		s = append(s, tg.short)
	}
	return strings.Join(s, "/")
}

// waitFirstObject polls until s3-helper serves an object.
func waitFirstObject(base string) error {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		req, _ := http.NewRequest("GET", base+"/first.mp4", nil)
		req.Header.Set("Range", "bytes=0-0")
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 206 {
				return nil
			}
		}
		time.Sleep(time.Millisecond)
	}
	return errors.New("s3-helper served nothing within 20 s")
}

func rotate[T any](s []T, by int) []T {
	by %= len(s)
	return append(append([]T(nil), s[by:]...), s[:by]...)
}

func median(rs []result) result {
	s := slices.Clone(rs)
	slices.SortFunc(s, func(a, b result) int { return int(a.reqs - b.reqs) })
	return s[len(s)/2]
}

func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 2, 64) + "ms"
}

// slowLoad opens n connections at once, each reading 1 MiB at about
// 2 MiB/s, so all responses are in flight together.
func slowLoad(base string, n int) (complete, failed int64, dur time.Duration) {
	tr := &http.Transport{MaxIdleConnsPerHost: n, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 2 * time.Minute}
	var ok, bad atomic.Int64
	var wg sync.WaitGroup
	begin := time.Now()
	for i := range n {
		wg.Go(func() {
			from := (i * 65536) % (objectBytes - 1<<20)
			req, _ := http.NewRequest("GET", base+"/videos/slow.mp4", nil)
			req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", from, from+1<<20-1))
			resp, err := client.Do(req)
			if err != nil {
				bad.Add(1)
				return
			}
			defer resp.Body.Close()
			buf := make([]byte, 16<<10)
			var got int
			for {
				m, err := resp.Body.Read(buf)
				got += m
				if err != nil {
					break
				}
				time.Sleep(8 * time.Millisecond)
			}
			if resp.StatusCode != 206 || got != 1<<20 {
				bad.Add(1)
				return
			}
			ok.Add(1)
		})
	}
	wg.Wait()
	return ok.Load(), bad.Load(), time.Since(begin)
}
