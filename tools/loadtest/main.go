// Command loadtest measures what s3-helper adds to a Range fetch, on
// loopback only. It starts an origin that answers like S3 from memory
// (accepting any signature), a plain httputil.ReverseProxy with no signing
// (the standard-library baseline) and s3-helper with static credentials,
// each in its own process, then measures 4 KiB and 256 KiB ranges at 16 and
// 256 connections against (a) the origin, (b) the baseline and (c)
// s3-helper in interleaved rounds, once with a plain HTTP origin and once
// with a TLS origin (as S3 is reached in production; the certificate is
// made here with crypto/x509, and s3-helper trusts it through
// SSL_CERT_FILE). It prints medians, ratios, latency percentiles and
// s3-helper's peak RSS, then runs 1000 slow clients each reading 1 MiB.
// Last come S3's bad days: a TLS origin with an S3-like latency tail (a
// log-normal time to first byte, and a small fraction of answers held back)
// and a brownout switch (every answer SlowDown), measured at a steady rate
// with hedging off and on, and with and without the retry budget. It exits
// non-zero if any request failed.
//
//	go run ./tools/loadtest [-round 2s] [-rounds 3] [-bad-days=false]
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
	round := flag.Duration("round", 2*time.Second, "length of one measurement")
	rounds := flag.Int("rounds", 3, "interleaved rounds per configuration (the median is reported)")
	slowClients := flag.Int("slow-clients", 1000, "concurrent slow clients reading 1 MiB each; 0 skips")
	badDays := flag.Bool("bad-days", true, "measure the latency tail and a brownout with hedging and the retry budget off and on")
	flag.Parse()
	switch *mode {
	case "origin":
		serveOrigin(*addr, *certFile, *keyFile)
	case "tail-origin":
		serveTailOrigin(*addr, *certFile, *keyFile)
	case "baseline":
		serveBaseline(*addr, *target, *certFile)
	case "":
		if err := measure(*round, *rounds, *slowClients, *badDays); err != nil {
			log.Fatal(err)
		}
	default:
		log.Fatalf("unknown -mode %q", *mode)
	}
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
	srv := &http.Server{Addr: addr, Handler: h}
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

// serveBaseline is the plain standard-library reverse proxy.
func serveBaseline(addr, target, caFile string) {
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

// start runs a process of the harness; its log goes to stderr.
func start(name string, args []string, env []string, stderr io.Writer) (*exec.Cmd, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = stderr
	return cmd, cmd.Start()
}

func measure(round time.Duration, rounds, slowClients int, badDays bool) error {
	dir, err := os.MkdirTemp("", "s3-helper-load")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	helperBin := filepath.Join(dir, "s3-helper")
	build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", helperBin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("build s3-helper: %w", err)
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
		st := stack{origin: "plain", direct: "http://" + freeAddr(), baseline: "http://" + freeAddr(), helper: "http://" + freeAddr()}
		originArgs := []string{"-mode", "origin", "-addr", strings.TrimPrefix(st.direct, "http://")}
		baselineArgs := []string{"-mode", "baseline", "-addr", strings.TrimPrefix(st.baseline, "http://"), "-target", st.direct}
		helperEnv := credentialsEnv
		if useTLS {
			st.origin, st.roots = "TLS", roots
			st.direct = "https://" + strings.TrimPrefix(st.direct, "http://")
			originArgs = append(originArgs, "-cert", certFile, "-key", keyFile)
			baselineArgs = []string{"-mode", "baseline", "-addr", strings.TrimPrefix(st.baseline, "http://"), "-target", st.direct, "-cert", certFile}
			helperEnv = append(slices.Clone(credentialsEnv), "SSL_CERT_FILE="+certFile)
		}
		if _, err := launch(self, originArgs, nil, os.Stderr); err != nil {
			return err
		}
		if _, err := launch(self, baselineArgs, nil, os.Stderr); err != nil {
			return err
		}
		if err := waitUp(st.direct+"/", roots); err != nil {
			return err
		}
		startAt := time.Now()
		helperArgs := []string{"-listen", strings.TrimPrefix(st.helper, "http://"), "-bucket", "media", "-region", "us-east-1",
			"-endpoint", st.direct, "-log-level", "warn"}
		helper, err := launch(helperBin, helperArgs, helperEnv, os.Stderr)
		if err != nil {
			return err
		}
		st.helperPID = helper.Process.Pid
		if err := waitFirstObject(st.helper); err != nil {
			return err
		}
		if !useTLS {
			firstServed = time.Since(startAt)
		}
		if err := waitUp(st.baseline+"/", nil); err != nil {
			return err
		}
		stacks = append(stacks, st)
	}
	fi, err := os.Stat(helperBin)
	if err != nil {
		return err
	}

	configs := []config{{16, 4 << 10}, {256, 4 << 10}, {16, 256 << 10}, {256, 256 << 10}}
	results := map[string][]result{}
	var failed int64
	for _, st := range stacks {
		targets := []struct{ name, base string }{{"direct", st.direct}, {"ReverseProxy", st.baseline}, {"s3-helper", st.helper}}
		for r := range rounds {
			for _, c := range configs {
				for _, tg := range rotate(targets, r) { // interleaved, in a rotating order
					res := load(tg.base, st.roots, c.conns, c.bytes, round)
					key := fmt.Sprintf("%s/%s/%d/%d", st.origin, tg.name, c.conns, c.bytes)
					results[key] = append(results[key], res)
					failed += res.failed
				}
			}
		}
	}
	if rounds > 0 {
		printTable(results, stacks, configs, rounds, round)
	}
	plain := stacks[0]
	if slowClients > 0 {
		n, sf, dur := slowLoad(plain.helper, slowClients)
		failed += sf
		fmt.Printf("%d slow clients reading 1 MiB each: %d complete, %d failed in %v; s3-helper peak RSS %.1f MiB\n",
			slowClients, n, sf, dur.Round(time.Millisecond), peakRSSMiB(plain.helperPID))
	}
	fmt.Printf("start to first served request: %v; static binary: %.1f MB\n", firstServed.Round(time.Millisecond), float64(fi.Size())/1e6)
	if badDays {
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

// stack is one origin (plain or TLS) with the baseline and s3-helper in
// front of it.
type stack struct {
	origin                   string
	direct, baseline, helper string
	// roots trusts the TLS origin; nil for the plain one.
	roots     *x509.CertPool
	helperPID int
}

type config struct{ conns, bytes int }

func printTable(results map[string][]result, stacks []stack, configs []config, rounds int, round time.Duration) {
	fmt.Printf("s3-helper load test: %s, %d CPUs, GOMAXPROCS %d, %d rounds of %v, medians\n\n",
		runtime.GOOS+"/"+runtime.GOARCH, runtime.NumCPU(), runtime.GOMAXPROCS(0), rounds, round)
	fmt.Println("| origin | range | conns | direct req/s | ReverseProxy req/s | s3-helper req/s | s3-helper MiB/s | c/a | c/b | p50 a/b/c | p99 a/b/c |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|---|")
	for _, st := range stacks {
		for _, c := range configs {
			a := median(results[fmt.Sprintf("%s/direct/%d/%d", st.origin, c.conns, c.bytes)])
			b := median(results[fmt.Sprintf("%s/ReverseProxy/%d/%d", st.origin, c.conns, c.bytes)])
			h := median(results[fmt.Sprintf("%s/s3-helper/%d/%d", st.origin, c.conns, c.bytes)])
			fmt.Printf("| %s | %d KiB | %d | %.0f | %.0f | %.0f | %.0f | %.2f | %.2f | %s/%s/%s | %s/%s/%s |\n",
				st.origin, c.bytes>>10, c.conns, a.rps(), b.rps(), h.rps(), h.mibps(), h.rps()/a.rps(), h.rps()/b.rps(),
				ms(a.pct(0.5)), ms(b.pct(0.5)), ms(h.pct(0.5)), ms(a.pct(0.99)), ms(b.pct(0.99)), ms(h.pct(0.99)))
		}
	}
	for _, st := range stacks {
		fmt.Printf("\ns3-helper (%s origin) peak RSS after the load: %.1f MiB", st.origin, peakRSSMiB(st.helperPID))
	}
	fmt.Println()
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
