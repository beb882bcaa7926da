// Command loadtest measures what s3-helper adds to a Range fetch, on
// loopback only. It starts an origin that answers like S3 from memory
// (accepting any signature), a plain httputil.ReverseProxy with no signing
// (the standard-library baseline) and s3-helper with static credentials,
// each in its own process, then measures 4 KiB and 256 KiB ranges at 16 and
// 256 connections against (a) the origin, (b) the baseline and (c)
// s3-helper in interleaved rounds. It prints medians, ratios, latency
// percentiles and s3-helper's peak RSS, then runs 1000 slow clients each
// reading 1 MiB. It exits non-zero if any request failed.
//
//	go run ./tools/loadtest [-round 2s] [-rounds 3]
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
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
	round := flag.Duration("round", 2*time.Second, "length of one measurement")
	rounds := flag.Int("rounds", 3, "interleaved rounds per configuration (the median is reported)")
	slowClients := flag.Int("slow-clients", 1000, "concurrent slow clients reading 1 MiB each; 0 skips")
	flag.Parse()
	switch *mode {
	case "origin":
		serveOrigin(*addr)
	case "baseline":
		serveBaseline(*addr, *target)
	case "":
		if err := measure(*round, *rounds, *slowClients); err != nil {
			log.Fatal(err)
		}
	default:
		log.Fatalf("unknown -mode %q", *mode)
	}
}

// serveOrigin answers every GET with the requested range of a fixed
// pseudo-random object, as S3 would (206, Content-Range, ETag, x-amz-*).
func serveOrigin(addr string) {
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
	log.Fatal(srv.ListenAndServe())
}

// serveBaseline is the plain standard-library reverse proxy.
func serveBaseline(addr, target string) {
	u, err := url.Parse(target)
	if err != nil {
		log.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.Transport = &http.Transport{MaxIdleConnsPerHost: 512, DisableCompression: true}
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

func waitUp(url string) error {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(url); err == nil {
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
func load(base string, conns, rangeBytes int, d time.Duration) result {
	tr := &http.Transport{MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns, DisableCompression: true}
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

func start(name string, args []string, env []string) (*exec.Cmd, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	return cmd, cmd.Start()
}

func measure(round time.Duration, rounds, slowClients int) error {
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
	originAddr, baseAddr, helperAddr := freeAddr(), freeAddr(), freeAddr()
	origin, err := start(self, []string{"-mode", "origin", "-addr", originAddr}, nil)
	if err != nil {
		return err
	}
	defer origin.Process.Kill()
	baseline, err := start(self, []string{"-mode", "baseline", "-addr", baseAddr, "-target", "http://" + originAddr}, nil)
	if err != nil {
		return err
	}
	defer baseline.Process.Kill()
	if err := waitUp("http://" + originAddr + "/"); err != nil {
		return err
	}
	startAt := time.Now()
	helperArgs := []string{"-listen", helperAddr, "-bucket", "media", "-region", "us-east-1",
		"-endpoint", "http://" + originAddr, "-log-level", "warn"}
	if admin := os.Getenv("LOADTEST_ADMIN"); admin != "" { // profiling: LOADTEST_ADMIN=127.0.0.1:6060
		helperArgs = append(helperArgs, "-admin", admin, "-pprof")
	}
	helper, err := start(helperBin, helperArgs,
		[]string{"AWS_ACCESS_KEY_ID=AKIALOADTEST", "AWS_SECRET_ACCESS_KEY=loadtest-secret", "AWS_SESSION_TOKEN=" + strings.Repeat("T", 700)})
	if err != nil {
		return err
	}
	defer helper.Process.Kill()
	if err := waitFirstObject("http://" + helperAddr); err != nil {
		return err
	}
	firstServed := time.Since(startAt)
	if err := waitUp("http://" + baseAddr + "/"); err != nil {
		return err
	}
	fi, err := os.Stat(helperBin)
	if err != nil {
		return err
	}

	targets := []struct{ name, base string }{
		{"direct", "http://" + originAddr}, {"ReverseProxy", "http://" + baseAddr}, {"s3-helper", "http://" + helperAddr},
	}
	configs := []config{{16, 4 << 10}, {256, 4 << 10}, {16, 256 << 10}, {256, 256 << 10}}
	results := map[string][]result{}
	var failed int64
	for r := range rounds {
		for _, c := range configs {
			for _, tg := range rotate(targets, r) { // interleaved, in a rotating order
				res := load(tg.base, c.conns, c.bytes, round)
				key := fmt.Sprintf("%s/%d/%d", tg.name, c.conns, c.bytes)
				results[key] = append(results[key], res)
				failed += res.failed
			}
		}
	}
	if rounds > 0 {
		printTable(results, configs, rounds, round)
	}
	fmt.Printf("\ns3-helper peak RSS after the load: %.1f MiB\n", peakRSSMiB(helper.Process.Pid))
	if slowClients > 0 {
		n, sf, dur := slowLoad("http://"+helperAddr, slowClients)
		failed += sf
		fmt.Printf("%d slow clients reading 1 MiB each: %d complete, %d failed in %v; s3-helper peak RSS %.1f MiB\n",
			slowClients, n, sf, dur.Round(time.Millisecond), peakRSSMiB(helper.Process.Pid))
	}
	fmt.Printf("start to first served request: %v; static binary: %.1f MB\n", firstServed.Round(time.Millisecond), float64(fi.Size())/1e6)
	if failed > 0 {
		return fmt.Errorf("%d requests failed", failed)
	}
	return nil
}

type config struct{ conns, bytes int }

func printTable(results map[string][]result, configs []config, rounds int, round time.Duration) {
	fmt.Printf("s3-helper load test: %s, %d CPUs, GOMAXPROCS %d, %d rounds of %v, medians\n\n",
		runtime.GOOS+"/"+runtime.GOARCH, runtime.NumCPU(), runtime.GOMAXPROCS(0), rounds, round)
	fmt.Println("| range | conns | direct req/s | ReverseProxy req/s | s3-helper req/s | s3-helper MiB/s | c/a | c/b | p50 a/b/c | p99 a/b/c |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|")
	for _, c := range configs {
		a := median(results[fmt.Sprintf("direct/%d/%d", c.conns, c.bytes)])
		b := median(results[fmt.Sprintf("ReverseProxy/%d/%d", c.conns, c.bytes)])
		h := median(results[fmt.Sprintf("s3-helper/%d/%d", c.conns, c.bytes)])
		fmt.Printf("| %d KiB | %d | %.0f | %.0f | %.0f | %.0f | %.2f | %.2f | %s/%s/%s | %s/%s/%s |\n",
			c.bytes>>10, c.conns, a.rps(), b.rps(), h.rps(), h.mibps(), h.rps()/a.rps(), h.rps()/b.rps(),
			ms(a.pct(0.5)), ms(b.pct(0.5)), ms(h.pct(0.5)), ms(a.pct(0.99)), ms(b.pct(0.99)), ms(h.pct(0.99)))
	}
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
