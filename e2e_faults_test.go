package main

// S3's bad days end to end: the real binary in front of versitygw behind a
// fault proxy written here, which forwards each request exactly as signed
// (Host included) and can hold answers back or answer SlowDown itself, and
// counts what S3 saw. A steady 200 Range GETs of 64 KiB per second measure
// what clients get: the latency tail with and without hedging, and the S3
// requests per client request in a brownout with and without the budget.

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// faultProxy sits between s3-helper and versitygw.
type faultProxy struct {
	url  string
	seen atomic.Int64 // requests that reached "S3"
	// holdEvery holds every n-th request back for hold before it is
	// forwarded (0: none); slowDownEvery answers every n-th SlowDown.
	holdEvery, slowDownEvery atomic.Int64
	hold                     time.Duration
	// slowDownAll answers every request SlowDown while set.
	slowDownAll atomic.Bool
	// hangAll accepts every request, reads it, and never answers while set
	// (a partition, a load balancer whose targets hang).
	hangAll atomic.Bool
}

func newFaultProxy(t *testing.T, s3 string) *faultProxy {
	t.Helper()
	target, err := url.Parse(s3)
	if err != nil {
		t.Fatal(err)
	}
	f := &faultProxy{hold: 2 * time.Second}
	rp := &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) {
		pr.Out.URL.Scheme, pr.Out.URL.Host = target.Scheme, target.Host
		pr.Out.Host = pr.In.Host // as signed
	}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := f.seen.Add(1)
		if f.hangAll.Load() {
			<-r.Context().Done() // until s3-helper gives up on the attempt
			return
		}
		if e := f.slowDownAll.Load() || f.slowDownEvery.Load() > 0 && n%f.slowDownEvery.Load() == 0; e {
			s3Error(w, http.StatusServiceUnavailable, "SlowDown", "Please reduce your request rate.")
			return
		}
		if e := f.holdEvery.Load(); e > 0 && n%e == 0 {
			select {
			case <-time.After(f.hold):
			case <-r.Context().Done():
				return // the client gave up on this attempt
			}
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	f.url = srv.URL
	return f
}

// loadResult is what the clients of one load run got.
type loadResult struct {
	requests, failed, s3Requests int
	latencies                    []time.Duration // sorted
	statuses                     map[int]int
}

func (l loadResult) quantile(q float64) time.Duration {
	if len(l.latencies) == 0 {
		return 0
	}
	return l.latencies[min(len(l.latencies)-1, int(q*float64(len(l.latencies))))]
}

func (l loadResult) perClient() float64 { return float64(l.s3Requests) / float64(l.requests) }

func (l loadResult) String() string {
	return fmt.Sprintf("%d requests, %d failed, p50 %v, p99 %v, max %v, %.3f S3 requests per client request, statuses %v",
		l.requests, l.failed, l.quantile(0.5).Round(100*time.Microsecond), l.quantile(0.99).Round(100*time.Microsecond),
		l.quantile(1).Round(time.Millisecond), l.perClient(), l.statuses)
}

// rangeLoad sends 64 KiB Range GETs of big.bin at rate per second for d
// through s3-helper (open loop: a slow answer never delays the next
// request) and checks every 206 byte for byte; f counts what S3 saw. ok
// names the statuses that are not failures.
func rangeLoad(t *testing.T, h *helperProcess, f *faultProxy, object []byte, rate int, d time.Duration, ok ...int) loadResult {
	t.Helper()
	before := f.seen.Load()
	res := rangeLoadAt(t, h.url("/big.bin"), object, rate, d, ok...)
	res.s3Requests = int(f.seen.Load() - before)
	return res
}

// rangeLoadAt is rangeLoad against any URL of big.bin.
func rangeLoadAt(t *testing.T, target string, object []byte, rate int, d time.Duration, ok ...int) loadResult {
	t.Helper()
	return rangeLoadPatient(t, target, object, rate, d, 30*time.Second, ok...)
}

// rangeLoadPatient is rangeLoadAt with clients that give up after patience
// (nginx's proxy_read_timeout, or a player's).
func rangeLoadPatient(t *testing.T, target string, object []byte, rate int, d, patience time.Duration, ok ...int) loadResult {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 512}, Timeout: patience}
	defer client.CloseIdleConnections()
	var (
		mu  sync.Mutex
		res = loadResult{statuses: map[int]int{}}
		wg  sync.WaitGroup
	)
	rng := rand.New(rand.NewPCG(uint64(rate), uint64(d)))
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	for end := time.Now().Add(d); time.Now().Before(end); <-tick.C {
		first := rng.IntN(len(object) - 64<<10)
		wg.Go(func() {
			req, _ := http.NewRequest("GET", target, nil)
			req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", first, first+64<<10-1))
			start := time.Now()
			resp, err := client.Do(req)
			status, good := 0, false
			if err == nil {
				var body bytes.Buffer
				_, err = body.ReadFrom(resp.Body)
				resp.Body.Close()
				status = resp.StatusCode
				good = err == nil && (status == 206 && bytes.Equal(body.Bytes(), object[first:first+64<<10]) || slices.Contains(ok, status))
			}
			took := time.Since(start)
			mu.Lock()
			defer mu.Unlock()
			res.requests++
			res.statuses[status]++
			res.latencies = append(res.latencies, took)
			if !good {
				res.failed++
			}
		})
	}
	wg.Wait()
	slices.Sort(res.latencies)
	return res
}

// TestE2EHedgingCutsTheTail: one S3 answer in 50 held back 2 s. Without
// hedging p99 is the 2 s; with the default flags nothing fails, p99 is at
// most 300 ms and S3 sees at most 1.15 requests per client request.
func TestE2EHedgingCutsTheTail(t *testing.T) {
	env := needE2E(t)
	object := readSeed(t, env, "big.bin")
	for _, tt := range []struct {
		name  string
		flags []string
	}{
		{"hedging off", []string{"-hedge", "off"}},
		{"default flags", nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFaultProxy(t, env.s3)
			h := startHelper(t, env, "127.0.0.1:0", append([]string{"-endpoint", f.url, "-access-log=false"}, tt.flags...)...)
			rangeLoad(t, h, f, object, 200, time.Second) // the latency window learns S3
			f.holdEvery.Store(50)
			res := rangeLoad(t, h, f, object, 200, 10*time.Second)
			_, metrics := get(t, "GET", "http://"+h.admin+"/metrics", nil)
			samples := promSamples(t, string(metrics))
			t.Logf("%s, one answer in 50 held back 2 s: %s; hedges %s, won %s, connections cancelled %s", tt.name, res,
				samples["s3helper_upstream_hedges_total"], samples["s3helper_upstream_hedges_won_total"], samples["s3helper_upstream_hedge_cancels_total"])
			if res.failed > 0 {
				t.Errorf("%d requests failed", res.failed)
			}
			if tt.flags != nil {
				if res.quantile(0.99) < time.Second {
					t.Errorf("without hedging p99 = %v: the fault proxy did not hold answers back", res.quantile(0.99))
				}
				return
			}
			if p99 := res.quantile(0.99); p99 > 300*time.Millisecond {
				t.Errorf("p99 = %v, want at most 300 ms", p99)
			}
			if r := res.perClient(); r > 1.15 {
				t.Errorf("%.3f S3 requests per client request, want at most 1.15", r)
			}
		})
	}
}

// TestE2EBrownout: every S3 answer SlowDown for 8 s. With the retry budget
// S3 sees at most 1.25 requests per client request and clients get their
// 503 within 2 s (p99); once S3 recovers nothing fails and p99 is under
// 100 ms within a second. Without the budget (-retry-budget 0) the storm
// is multiplied by the retries. One answer in 50 SlowDown at all times
// fails nothing: the budget still pays for sporadic errors.
func TestE2EBrownout(t *testing.T) {
	env := needE2E(t)
	object := readSeed(t, env, "big.bin")
	for _, tt := range []struct {
		name  string
		flags []string
	}{
		{"no budget", []string{"-retry-budget", "0"}},
		{"default flags", nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFaultProxy(t, env.s3)
			h := startHelper(t, env, "127.0.0.1:0", append([]string{"-endpoint", f.url, "-access-log=false"}, tt.flags...)...)
			rangeLoad(t, h, f, object, 200, time.Second)
			f.slowDownAll.Store(true)
			storm := rangeLoad(t, h, f, object, 200, 8*time.Second, 503)
			f.slowDownAll.Store(false)
			t.Logf("%s, every answer SlowDown for 8 s: %s", tt.name, storm)
			if tt.flags != nil {
				if storm.perClient() < 2 {
					t.Errorf("without a budget: %.3f S3 requests per client request; the retries should multiply the storm", storm.perClient())
				}
				return
			}
			if r := storm.perClient(); r > 1.25 {
				t.Errorf("%.3f S3 requests per client request during the storm, want at most 1.25", r)
			}
			if p99 := storm.quantile(0.99); p99 > 2*time.Second {
				t.Errorf("p99 during the storm = %v, want the 503 within 2 s", p99)
			}
			rangeLoad(t, h, f, object, 200, time.Second) // the first second after
			after := rangeLoad(t, h, f, object, 200, 3*time.Second)
			t.Logf("from one second after the storm: %s", after)
			if after.failed > 0 || after.quantile(0.99) > 100*time.Millisecond {
				t.Errorf("after the storm: %d failed, p99 %v; want none and under 100 ms", after.failed, after.quantile(0.99))
			}
			if !h.logs.waitFor("retry budget empty") || !h.logs.waitFor("retry budget refilled") {
				t.Errorf("the budget's emptying and refilling are not logged:\n%.3000s", h.logs)
			}
			if resp, body := get(t, "GET", "http://"+h.admin+"/healthz", nil); resp.StatusCode != 200 {
				t.Errorf("/healthz after the storm = %d %s: S3 had a bad day, not s3-helper", resp.StatusCode, body)
			}
			f.slowDownEvery.Store(50)
			sporadic := rangeLoad(t, h, f, object, 200, 5*time.Second)
			t.Logf("one answer in 50 SlowDown: %s", sporadic)
			if sporadic.failed > 0 {
				t.Errorf("%d requests failed with one answer in 50 SlowDown", sporadic.failed)
			}
		})
	}
}

// faultProxy.seenSince counts nothing by time; replicaLog records when the
// replica's gateway saw each request.
type replicaLog struct {
	mu sync.Mutex
	at []time.Time
}

// countingProxy forwards to target as signed and records each request's
// arrival; the replica's requests are counted this way.
func countingProxy(t *testing.T, target string, log *replicaLog) string {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	rp := &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) {
		pr.Out.URL.Scheme, pr.Out.URL.Host = u.Scheme, u.Host
		pr.Out.Host = pr.In.Host
	}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		log.mu.Lock()
		log.at = append(log.at, time.Now())
		log.mu.Unlock()
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func (l *replicaLog) since(t0 time.Time) (n int, last time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, at := range l.at {
		if at.After(t0) {
			n++
			last = at
		}
	}
	return n, last
}

// TestE2EReplicaFailover: the primary gateway (us-east-1) behind the fault
// proxy, its replica bucket behind a second gateway that says it is in
// us-west-2. While the primary is healthy it serves, a missing key is its
// 404, and the replica sees at most 2% of requests; when it answers 503 to
// everything nothing fails, byte for byte, and p99 is at most 150 ms at 100
// Range GETs/s once it is marked down; when it is back it takes the traffic
// back within 40 s; a primary endpoint refusing connections fails over too.
func TestE2EReplicaFailover(t *testing.T) {
	env := needE2E(t)
	object := readSeed(t, env, "big.bin")
	replicas := &replicaLog{}
	replicaURL := countingProxy(t, env.replicaS3, replicas)
	replicaFlags := func(primary string) []string {
		return []string{"-endpoint", primary, "-access-log=false",
			"-replica", env.bucket + "=" + env.replicaBucket + "@" + env.replicaRegion, "-region-endpoint", env.replicaRegion + "=" + replicaURL}
	}
	f := newFaultProxy(t, env.s3)
	h := startHelper(t, env, "127.0.0.1:0", replicaFlags(f.url)...)

	t0 := time.Now()
	healthy := rangeLoad(t, h, f, object, 100, 5*time.Second)
	if resp, _ := get(t, "GET", h.url("/missing.bin"), nil); resp.StatusCode != 404 {
		t.Errorf("a missing key with a healthy primary = %d, want the primary's 404", resp.StatusCode)
	}
	seenByReplica, _ := replicas.since(t0)
	t.Logf("primary healthy: %s; the replica saw %d", healthy, seenByReplica)
	if healthy.failed > 0 || float64(seenByReplica) > 0.02*float64(healthy.requests) {
		t.Errorf("primary healthy: %d failed, the replica saw %d of %d requests (want at most 2%%)", healthy.failed, seenByReplica, healthy.requests)
	}

	f.slowDownAll.Store(true)                    // 503 to everything
	rangeLoad(t, h, f, object, 100, time.Second) // until it is marked down
	down := rangeLoad(t, h, f, object, 100, 10*time.Second)
	t.Logf("primary answering 503, once marked down: %s", down)
	if down.failed > 0 || down.quantile(0.99) > 150*time.Millisecond {
		t.Errorf("primary down: %d failed, p99 %v; want none and at most 150 ms", down.failed, down.quantile(0.99))
	}
	resp, body := get(t, "HEAD", h.url("/big.bin"), nil)
	if resp.StatusCode != 200 || resp.ContentLength != int64(len(object)) || len(body) != 0 {
		t.Errorf("HEAD from the replica = %d, length %d", resp.StatusCode, resp.ContentLength)
	}
	if resp, body := get(t, "GET", h.url("/hello.txt"), nil); resp.StatusCode != 200 || !bytes.Equal(body, readSeed(t, env, "hello.txt")) {
		t.Errorf("a whole object from the replica = %d %q", resp.StatusCode, body)
	}
	_, health := get(t, "GET", "http://"+h.admin+"/healthz", nil)
	if !strings.Contains(string(health), "bucket media (us-east-1): down") || !strings.Contains(string(health), "bucket media-replica (us-west-2): up") {
		t.Errorf("/healthz during the outage:\n%s", health)
	}

	f.slowDownAll.Store(false)
	back := time.Now()
	checkTrafficBack(t, h, replicas, back, rangeLoad(t, h, f, object, 100, 20*time.Second))

	refused := startHelper(t, env, "127.0.0.1:0", replicaFlags("http://"+freeTCPAddr(t))...)
	res := rangeLoadAt(t, refused.url("/big.bin"), object, 100, 3*time.Second)
	t.Logf("primary refusing connections: %s", res)
	if res.failed > 0 {
		t.Errorf("a primary refusing connections: %d of %d requests failed", res.failed, res.requests)
	}
}

// TestE2EBlackholedRegion: the primary region accepts every request and
// never answers, its replica is healthy, clients give up after 3 s (sooner
// than -timeout, 5 s) and ask 50 Range GETs a second. After 10 s nothing
// fails and p99 is at most 150 ms; once the primary answers again it takes
// its traffic back within 40 s, nothing failing.
func TestE2EBlackholedRegion(t *testing.T) {
	env := needE2E(t)
	object := readSeed(t, env, "big.bin")
	replicas := &replicaLog{}
	replicaURL := countingProxy(t, env.replicaS3, replicas)
	f := newFaultProxy(t, env.s3)
	h := startHelper(t, env, "127.0.0.1:0", "-endpoint", f.url, "-access-log=false",
		"-replica", env.bucket+"="+env.replicaBucket+"@"+env.replicaRegion, "-region-endpoint", env.replicaRegion+"="+replicaURL)
	const rate, patience = 50, 3 * time.Second
	target := h.url("/big.bin")
	if warm := rangeLoadPatient(t, target, object, rate, 2*time.Second, patience); warm.failed > 0 {
		t.Fatalf("the primary healthy: %s", warm)
	}

	f.hangAll.Store(true)
	first := rangeLoadPatient(t, target, object, rate, 10*time.Second, patience)
	t.Logf("the primary hanging, the first 10 s: %s", first)
	then := rangeLoadPatient(t, target, object, rate, 10*time.Second, patience)
	t.Logf("the primary hanging, the next 10 s: %s", then)
	if then.failed > 0 || then.quantile(0.99) > 150*time.Millisecond {
		t.Errorf("after 10 s of a hanging primary: %d failed, p99 %v; want none and at most 150 ms", then.failed, then.quantile(0.99))
	}
	_, health := get(t, "GET", "http://"+h.admin+"/healthz", nil)
	if !strings.Contains(string(health), "bucket media (us-east-1): down") {
		t.Errorf("/healthz with the primary hanging:\n%s", health)
	}

	f.hangAll.Store(false)
	back := time.Now()
	checkTrafficBack(t, h, replicas, back, rangeLoadPatient(t, target, object, rate, 30*time.Second, patience))
}

// checkTrafficBack: once the primary is back (at back), nothing failed
// under the load after and the replica served its last request within
// 40 s; both transitions were logged.
func checkTrafficBack(t *testing.T, h *helperProcess, replicas *replicaLog, back time.Time, after loadResult) {
	t.Helper()
	_, last := replicas.since(back)
	t.Logf("the primary back: %s; the replica's last request %v after", after, last.Sub(back).Round(time.Millisecond))
	if after.failed > 0 || last.Sub(back) > 40*time.Second {
		t.Errorf("the primary back: %d failed; the replica served until %v after, want the primary back within 40 s", after.failed, last.Sub(back))
	}
	if !h.logs.waitFor("bucket marked down") || !h.logs.waitFor("bucket back up") {
		t.Errorf("the transitions are not logged:\n%.3000s", h.logs)
	}
}
