package main

// S3's bad days in the load harness: an origin with S3's latency tail and a
// brownout switch, and s3-helper measured in front of it at a steady rate
// with hedging off and on, and with and without the retry budget.

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// The tail origin's time to first byte: log-normal around 30 ms
	// (p95 about 70 ms), and one answer in 66 (1.5%) held back 1.5 s.
	tailMedian   = 30 * time.Millisecond
	tailSigma    = 0.5
	tailFraction = 0.015
	tailHold     = 1500 * time.Millisecond
	// badDayRate is the steady load: Range GETs of badDayRange per second.
	badDayRate  = 200
	badDayRange = 64 << 10
)

// serveTailOrigin answers like serveOrigin after an S3-like wait, or
// SlowDown while the brownout is on; /_stats reports the requests and new
// connections (each a TLS handshake) so far, POST /_brownout?on=1|0 flips
// the switch.
func serveTailOrigin(addr, certFile, keyFile string) {
	object := make([]byte, objectBytes)
	seed := rand.New(rand.NewPCG(1, 2))
	for i := range object {
		object[i] = byte(seed.Uint32())
	}
	var requests, conns atomic.Int64
	var brownout atomic.Bool
	var mu sync.Mutex
	rng := rand.New(rand.NewPCG(3, 4))
	wait := func() time.Duration {
		mu.Lock()
		defer mu.Unlock()
		if rng.Float64() < tailFraction {
			return tailHold
		}
		return time.Duration(float64(tailMedian) * math.Exp(tailSigma*rng.NormFloat64()))
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/_stats", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%d %d\n", requests.Load(), conns.Load())
	})
	mux.HandleFunc("POST /_brownout", func(w http.ResponseWriter, r *http.Request) {
		brownout.Store(r.URL.Query().Get("on") == "1")
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, req *http.Request) {
		requests.Add(1)
		w.Header().Set("X-Amz-Request-Id", "LOADTEST")
		w.Header().Set("Server", "AmazonS3")
		if brownout.Load() {
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>")
			return
		}
		t := time.NewTimer(wait())
		defer t.Stop()
		select {
		case <-t.C:
		case <-req.Context().Done():
			return
		}
		w.Header().Set("Etag", `"loadtest"`)
		http.ServeContent(w, req, "", time.Unix(0, 0), bytes.NewReader(object))
	})
	srv := &http.Server{Addr: addr, Handler: mux, ConnState: func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}}
	log.Fatal(srv.ListenAndServeTLS(certFile, keyFile))
}

// originStats reads the tail origin's counters.
func originStats(client *http.Client, origin string) (requests, conns int64, err error) {
	resp, err := client.Get(origin + "/_stats")
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	_, err = fmt.Fscan(resp.Body, &requests, &conns)
	return requests, conns, err
}

// steadyResult is what clients got from one steady run, and what the origin saw.
type steadyResult struct {
	lat                    []time.Duration // sorted
	requests, failed, s503 int
	originRequests, conns  int64
}

func (r steadyResult) pct(p float64) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	return r.lat[min(len(r.lat)-1, int(p*float64(len(r.lat))))]
}

// steadyLoad sends rate Range GETs per second to base for d, open loop (a
// slow answer never delays the next request). okStatus also counts as no
// failure (503 in a brownout).
func steadyLoad(base string, rate int, d time.Duration, okStatus int) steadyResult {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1024, DisableCompression: true}, Timeout: 30 * time.Second}
	defer client.CloseIdleConnections()
	var mu sync.Mutex
	var res steadyResult
	var wg sync.WaitGroup
	r := rand.New(rand.NewPCG(uint64(rate), 9))
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	for end := time.Now().Add(d); time.Now().Before(end); <-tick.C {
		from := r.IntN(objectBytes - badDayRange)
		wg.Go(func() {
			req, _ := http.NewRequest("GET", base+"/videos/tail.mp4", nil)
			req.Header.Set("Range", "bytes="+strconv.Itoa(from)+"-"+strconv.Itoa(from+badDayRange-1))
			start := time.Now()
			resp, err := client.Do(req)
			ok, is503 := false, false
			if err == nil {
				n, cerr := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				ok = cerr == nil && (resp.StatusCode == 206 && n == badDayRange || resp.StatusCode == okStatus)
				is503 = resp.StatusCode == http.StatusServiceUnavailable
			}
			took := time.Since(start)
			mu.Lock()
			defer mu.Unlock()
			res.requests++
			res.lat = append(res.lat, took)
			if !ok {
				res.failed++
			}
			if is503 {
				res.s503++
			}
		})
	}
	wg.Wait()
	slices.Sort(res.lat)
	return res
}

// measureBadDays starts the tail origin and s3-helpers with the settings
// compared, prints both tables and returns the failed requests.
func measureBadDays(launch func(string, []string, []string, io.Writer) (*exec.Cmd, error), self, helperBin, certFile, keyFile string,
	roots *x509.CertPool, credentialsEnv []string) (int64, error) {
	origin := "https://" + freeAddr()
	if _, err := launch(self, []string{"-mode", "tail-origin", "-addr", strings.TrimPrefix(origin, "https://"), "-cert", certFile, "-key", keyFile}, nil, os.Stderr); err != nil {
		return 0, err
	}
	if err := waitUp(origin+"/_stats", roots); err != nil {
		return 0, err
	}
	control := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	helperFor := func(flags ...string) (string, error) {
		base := "http://" + freeAddr()
		args := append([]string{"-listen", strings.TrimPrefix(base, "http://"), "-bucket", "media", "-region", "us-east-1",
			"-endpoint", origin, "-log-level", "error"}, flags...)
		// Every 503 of the brownout is an error line: not the harness's output.
		if _, err := launch(helperBin, args, append(slices.Clone(credentialsEnv), "SSL_CERT_FILE="+certFile), io.Discard); err != nil {
			return "", err
		}
		return base, waitFirstObject(base)
	}
	run := func(base string, d time.Duration, okStatus int) (steadyResult, error) {
		req0, conns0, err := originStats(control, origin)
		if err != nil {
			return steadyResult{}, err
		}
		res := steadyLoad(base, badDayRate, d, okStatus)
		req1, conns1, err := originStats(control, origin)
		res.originRequests, res.conns = req1-req0, conns1-conns0
		return res, err
	}
	brownout := func(on bool) error {
		v := "0"
		if on {
			v = "1"
		}
		resp, err := control.Post(origin+"/_brownout?on="+v, "", nil)
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	var failed int64
	fmt.Printf("\nS3's bad days: a TLS origin answering after a log-normal wait (median %v, σ %.1f), %.1f%% of answers held back %v; %d Range GETs of %d KiB per second for 20 s, open loop\n\n",
		tailMedian, tailSigma, tailFraction*100, tailHold, badDayRate, badDayRange>>10)
	fmt.Println("| s3-helper | p50 | p99 | p99.9 | max | failed | origin requests per client request | new origin connections (TLS handshakes) |")
	fmt.Println("|---|---|---|---|---|---|---|---|")
	for _, c := range []struct{ name, flag string }{{"-hedge off", "off"}, {"default (-hedge auto)", "auto"}} {
		base, err := helperFor("-hedge", c.flag)
		if err != nil {
			return failed, err
		}
		steadyLoad(base, badDayRate, 2*time.Second, 0) // warm: connections, the latency window
		res, err := run(base, 20*time.Second, 0)
		if err != nil {
			return failed, err
		}
		failed += int64(res.failed)
		fmt.Printf("| %s | %s | %s | %s | %s | %d | %.3f | %d |\n", c.name, ms(res.pct(0.5)), ms(res.pct(0.99)), ms(res.pct(0.999)),
			ms(res.pct(1)), res.failed, float64(res.originRequests)/float64(res.requests), res.conns)
	}
	fmt.Printf("\nA brownout: every answer SlowDown for 8 s at %d requests per second\n\n", badDayRate)
	fmt.Println("| s3-helper | origin requests per client request | clients answered 503 | p50 | p99 | after: failed, p99 (3 s from 1 s after) |")
	fmt.Println("|---|---|---|---|---|---|")
	for _, c := range []struct{ name, budget string }{{"-retry-budget 0 (none)", "0"}, {"default (-retry-budget 500)", "500"}} {
		base, err := helperFor("-retry-budget", c.budget)
		if err != nil {
			return failed, err
		}
		steadyLoad(base, badDayRate, 2*time.Second, 0)
		if err := brownout(true); err != nil {
			return failed, err
		}
		res, err := run(base, 8*time.Second, http.StatusServiceUnavailable)
		if err := errors.Join(err, brownout(false)); err != nil {
			return failed, err
		}
		failed += int64(res.failed)
		first := steadyLoad(base, badDayRate, time.Second, 0)
		after := steadyLoad(base, badDayRate, 3*time.Second, 0)
		failed += int64(first.failed + after.failed)
		fmt.Printf("| %s | %.3f | %d of %d | %s | %s | %d, %s |\n", c.name, float64(res.originRequests)/float64(res.requests),
			res.s503, res.requests, ms(res.pct(0.5)), ms(res.pct(0.99)), after.failed, ms(after.pct(0.99)))
	}
	return failed, nil
}
