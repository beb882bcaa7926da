package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// testDoor is a frontDoor whose name s3.test resolves to what answer
// holds, with a deterministic choice and its log in logs.
type testDoor struct {
	*frontDoor
	mu      sync.Mutex
	answer  []netip.Addr
	lookups int
	logs    *syncBuffer
}

func newTestDoor(n int) *testDoor {
	td := &testDoor{logs: &syncBuffer{}}
	td.setAddrs(n)
	rng := rand.New(rand.NewPCG(24, 1))
	var rngMu sync.Mutex
	td.frontDoor = &frontDoor{
		resolve: func(ctx context.Context, host string) ([]netip.Addr, error) {
			td.mu.Lock()
			defer td.mu.Unlock()
			td.lookups++
			if host != "s3.test" {
				return nil, errors.New("no such host")
			}
			return td.answer, nil
		},
		newTransport: func(netip.AddrPort) frontTransport { return &http.Transport{} },
		rand: func(n int) int {
			rngMu.Lock()
			defer rngMu.Unlock()
			return rng.IntN(n)
		},
		log:        slog.New(slog.NewTextHandler(td.logs, nil)),
		metrics:    newMetrics(nil, true),
		background: &backgroundWork{},
	}
	return td
}

// setAddrs makes s3.test resolve to 127.0.0.11 and the n-1 after it.
func (td *testDoor) setAddrs(n int) {
	td.mu.Lock()
	defer td.mu.Unlock()
	td.answer = nil
	for i := range n {
		td.answer = append(td.answer, netip.AddrFrom4([4]byte{127, 0, 0, byte(11 + i)}))
	}
}

// serve picks n times for attempts that end at once with what end says
// of the address picked, and counts the picks per address.
func (td *testDoor) serve(t *testing.T, n int, end func(fe *frontEnd) (frontOutcome, time.Duration)) map[string]int {
	t.Helper()
	picks := map[string]int{}
	for range n {
		fe := td.pick(t.Context(), "https", "s3.test", nil)
		if fe == nil {
			t.Fatal("no front end picked")
		}
		picks[fe.addr.Addr().String()]++
		fe.report(end(fe))
	}
	return picks
}

// healthy answers in 5 ms everywhere but at bad, which end says.
func healthy(bad string, end func() (frontOutcome, time.Duration)) func(fe *frontEnd) (frontOutcome, time.Duration) {
	return func(fe *frontEnd) (frontOutcome, time.Duration) {
		if fe.addr.Addr().String() == bad {
			return end()
		}
		return frontAnswered, 5 * time.Millisecond
	}
}

// TestFrontEndsSpread: 8 addresses, requests spread evenly; with 32
// requests in flight at all times, too.
func TestFrontEndsSpread(t *testing.T) {
	td := newTestDoor(8)
	picks := td.serve(t, 8000, healthy("", nil))
	if len(picks) != 8 {
		t.Fatalf("picks went to %d addresses, want all 8: %v", len(picks), picks)
	}
	for addr, n := range picks {
		if n < 800 || n > 1200 {
			t.Errorf("%s carried %d of 8000, want 10%% to 15%%", addr, n)
		}
	}
	inFlight := map[*frontEnd]int{}
	var window []*frontEnd
	for range 8000 {
		fe := td.pick(t.Context(), "https", "s3.test", nil)
		inFlight[fe]++
		if window = append(window, fe); len(window) > 32 {
			window[0].report(frontAnswered, 5*time.Millisecond)
			window = window[1:]
		}
	}
	for fe, n := range inFlight {
		if n < 800 || n > 1200 {
			t.Errorf("32 in flight: %s carried %d of 8000", fe.addr, n)
		}
	}
}

// TestFrontEndLeftOutForFailures: two connect errors in a row leave an
// address out for frontEndRest; it comes back on probation, where one
// more failure leaves it out again; one success in between resets the
// count.
func TestFrontEndLeftOutForFailures(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		td := newTestDoor(4)
		bad := "127.0.0.12"
		fails := healthy(bad, func() (frontOutcome, time.Duration) { return frontFailed, 0 })
		picks := td.serve(t, 400, fails)
		if picks[bad] != failuresToLeaveOut {
			t.Fatalf("the failing address got %d requests, want %d before it was left out", picks[bad], failuresToLeaveOut)
		}
		if n := strings.Count(td.logs.String(), "front end left out"); n != 1 {
			t.Errorf("left out logged %d times, want once:\n%s", n, td.logs)
		}
		time.Sleep(frontEndRest - time.Millisecond)
		if picks := td.serve(t, 400, fails); picks[bad] != 0 {
			t.Errorf("%d requests went to the address before its rest was over", picks[bad])
		}
		time.Sleep(time.Millisecond)
		if picks := td.serve(t, 400, fails); picks[bad] != 1 {
			t.Errorf("on probation the failing address got %d requests, want 1", picks[bad])
		}
		if !strings.Contains(td.logs.String(), "front end back in use") {
			t.Errorf("the return is not logged:\n%s", td.logs)
		}
		if n := td.metrics.agg.counts[mFrontEndsLeftOut][0].Load(); n != 2 {
			t.Errorf("leave-outs counted %d, want 2", n)
		}
	})
}

// TestFrontEndLeftOutForSlowness: an address answering 300 ms late while
// the others answer in 5 ms is left out once it has 16 samples; back on
// probation, 4 slow samples leave it out again; an address that recovered
// stays.
func TestFrontEndLeftOutForSlowness(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		td := newTestDoor(8)
		bad := "127.0.0.15"
		slow := true
		end := healthy(bad, func() (frontOutcome, time.Duration) {
			if slow {
				return frontAnswered, 300 * time.Millisecond
			}
			return frontAnswered, 6 * time.Millisecond
		})
		if picks := td.serve(t, 2000, end); picks[bad] != judgeAfter {
			t.Fatalf("the slow address got %d requests, want %d before it was left out", picks[bad], judgeAfter)
		}
		if !strings.Contains(td.logs.String(), "median time to first byte 300ms, the others' 5ms; 0 of its last 16 attempts lost the hedge race") {
			t.Errorf("the reason is not logged:\n%s", td.logs)
		}
		time.Sleep(frontEndRest)
		if picks := td.serve(t, 2000, end); picks[bad] != judgeOnProbation {
			t.Errorf("on probation the slow address got %d requests, want %d", picks[bad], judgeOnProbation)
		}
		slow = false
		time.Sleep(frontEndRest)
		if picks := td.serve(t, 2000, end); picks[bad] < 2000/8/2 {
			t.Errorf("recovered, the address got %d of 2000 requests", picks[bad])
		}
	})
}

// TestFrontEndHangingFound: an address whose first attempts are always
// outraced by hedges (it hangs) collects its waits as times to first byte
// and is left out; on probation, 2 lost races leave it out again.
func TestFrontEndHangingFound(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		td := newTestDoor(8)
		bad := "127.0.0.13"
		end := healthy(bad, func() (frontOutcome, time.Duration) { return frontOutraced, 70 * time.Millisecond })
		if picks := td.serve(t, 2000, end); picks[bad] != judgeAfter {
			t.Fatalf("the hanging address got %d requests, want %d", picks[bad], judgeAfter)
		}
		time.Sleep(frontEndRest)
		if picks := td.serve(t, 2000, end); picks[bad] != 2 {
			t.Errorf("on probation the hanging address got %d requests, want 2", picks[bad])
		}
	})
}

// TestFrontEndsNeverAllLeftOut: with every address failing, S3 is
// failing, not a host: at most half the addresses are left out, and the
// requests spread over the rest instead of piling onto one.
func TestFrontEndsNeverAllLeftOut(t *testing.T) {
	for _, n := range []int{2, 3, 8} {
		td := newTestDoor(n)
		td.serve(t, 100, func(*frontEnd) (frontOutcome, time.Duration) { return frontFailed, 0 })
		if known, inUse, leftOut := td.frontEndsOf("https", "s3.test").tally(); known != n || leftOut != n/2 || inUse != n-n/2 {
			t.Errorf("%d addresses all failing: known %d, in use %d, left out %d; want %d left out", n, known, inUse, leftOut, n/2)
		}
	}
}

// TestEquallySlowNotLeftOut: 8 addresses all answering in 80 ms (a far
// region, a slow server) are all healthy: none is left out, from the
// first request on.
func TestEquallySlowNotLeftOut(t *testing.T) {
	td := newTestDoor(8)
	td.serve(t, 2000, func(*frontEnd) (frontOutcome, time.Duration) { return frontAnswered, 80 * time.Millisecond })
	if _, _, leftOut := td.frontEndsOf("https", "s3.test").tally(); leftOut > 0 {
		t.Errorf("%d of 8 equally healthy addresses left out:\n%s", leftOut, td.logs)
	}
}

// TestProbationIsOneAtATime: an address back on probation takes one
// request at a time while the others are in use.
func TestProbationIsOneAtATime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		td := newTestDoor(4)
		td.serve(t, 100, healthy("127.0.0.12", func() (frontOutcome, time.Duration) { return frontFailed, 0 }))
		time.Sleep(frontEndRest)
		trials := 0
		var held []*frontEnd
		for range 100 {
			fe := td.pick(t.Context(), "https", "s3.test", nil)
			if fe.addr.Addr().String() == "127.0.0.12" {
				trials++
			}
			held = append(held, fe)
		}
		if trials != 1 {
			t.Errorf("100 requests in flight: %d at the address on probation, want 1", trials)
		}
		for _, fe := range held {
			fe.report(frontAnswered, 5*time.Millisecond)
		}
	})
}

// TestAvoidedWhenItIsTheOnlyOneInUse: when the address a hedge or a retry
// must avoid is the only one in use, it goes to one left out instead.
func TestAvoidedWhenItIsTheOnlyOneInUse(t *testing.T) {
	td := newTestDoor(2)
	td.serve(t, 20, healthy("127.0.0.12", func() (frontOutcome, time.Duration) { return frontFailed, 0 }))
	first := td.pick(t.Context(), "https", "s3.test", nil)
	if first.addr.Addr().String() != "127.0.0.11" {
		t.Fatalf("the address in use is %s", first.addr)
	}
	if second := td.pick(t.Context(), "https", "s3.test", first); second == first {
		t.Error("the retry went back to the address it must avoid")
	}
}

// TestBodyFailuresLeaveOut: bodies that break mid-way count as failures
// of their front end.
func TestBodyFailuresLeaveOut(t *testing.T) {
	td := newTestDoor(4)
	var bad *frontEnd
	for bad == nil || bad.addr.Addr().String() != "127.0.0.13" {
		bad = td.pick(t.Context(), "https", "s3.test", nil)
		bad.report(frontAnswered, 5*time.Millisecond)
	}
	bad.bodyFailed()
	bad.bodyFailed()
	if picks := td.serve(t, 100, healthy("", nil)); picks["127.0.0.13"] != 0 {
		t.Errorf("after two broken bodies the address got %d of 100 requests", picks["127.0.0.13"])
	}
}

// TestFirstResolutionBounded: a resolver that hangs holds a request for
// the door's timeout at most; the name is then tried again by the next
// request, not written off for frontEndRefresh.
func TestFirstResolutionBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		td := newTestDoor(2)
		td.timeout = time.Second
		hang := true
		resolve := td.resolve
		td.resolve = func(ctx context.Context, host string) ([]netip.Addr, error) {
			if hang {
				<-ctx.Done()
				return nil, ctx.Err()
			}
			return resolve(ctx, host)
		}
		start := time.Now()
		if fe := td.pick(t.Context(), "https", "s3.test", nil); fe != nil || time.Since(start) != time.Second {
			t.Fatalf("with the resolver hanging: %v after %v, want nil after 1s", fe, time.Since(start))
		}
		hang = false
		if fe := td.pick(t.Context(), "https", "s3.test", nil); fe == nil {
			t.Error("the next request did not resolve the name again")
		}
	})
}

// TestRestOverReadsAsBack: an address whose rest is over reads as in use
// in the gauges and /healthz even before a request finds it.
func TestRestOverReadsAsBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		td := newTestDoor(4)
		td.serve(t, 100, healthy("127.0.0.12", func() (frontOutcome, time.Duration) { return frontFailed, 0 }))
		fs := td.frontEndsOf("https", "s3.test")
		if _, _, leftOut := fs.tally(); leftOut != 1 {
			t.Fatalf("left out %d, want 1", leftOut)
		}
		time.Sleep(frontEndRest)
		if _, _, leftOut := fs.tally(); leftOut != 0 {
			t.Errorf("its rest over, the address still reads as left out")
		}
	})
}

// TestFrontEndAvoided: a hedge or a retry told to avoid an address goes
// to another; with one address it goes there all the same.
func TestFrontEndAvoided(t *testing.T) {
	td := newTestDoor(8)
	for range 1000 {
		first := td.pick(t.Context(), "https", "s3.test", nil)
		second := td.pick(t.Context(), "https", "s3.test", first)
		if second == first {
			t.Fatalf("the hedge went to the first attempt's %s", first.addr)
		}
		first.report(frontAnswered, time.Millisecond)
		second.report(frontAnswered, time.Millisecond)
	}
	one := newTestDoor(1)
	first := one.pick(t.Context(), "https", "s3.test", nil)
	if second := one.pick(t.Context(), "https", "s3.test", first); second != first {
		t.Errorf("with one address, the hedge went to %v", second)
	}
}

// TestOneAddressChangesNothing: a name with one address gets every
// request and is never left out, whatever it does.
func TestOneAddressChangesNothing(t *testing.T) {
	td := newTestDoor(1)
	picks := td.serve(t, 100, func(*frontEnd) (frontOutcome, time.Duration) { return frontFailed, 0 })
	if picks["127.0.0.11"] != 100 {
		t.Errorf("picks %v, want all 100 at the one address", picks)
	}
	if strings.Contains(td.logs.String(), "left out") {
		t.Errorf("the one address was left out:\n%s", td.logs)
	}
}

// TestNoFrontEndsForAnAddress: an endpoint given as an address, or a name
// that does not resolve, has no front ends: the shared transport dials it.
func TestNoFrontEndsForAnAddress(t *testing.T) {
	td := newTestDoor(8)
	for _, host := range []string{"127.0.0.1:9000", "[::1]:9000", "10.0.0.5", "unknown.test"} {
		if fe := td.pick(t.Context(), "http", host, nil); fe != nil {
			t.Errorf("%s: picked %s", host, fe.addr)
		}
	}
	if lines := td.frontEndsOf("http", "unknown.test").describeLines(); !strings.Contains(lines[0], "no address yet: no such host") {
		t.Errorf("describe = %q", lines)
	}
}

// TestFrontEndsFollowDNS: the name is resolved again every
// frontEndRefresh in the background; an address DNS stops naming gets no
// request from then on, and a new one gets its share.
func TestFrontEndsFollowDNS(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		td := newTestDoor(8)
		defer td.background.close()
		td.serve(t, 100, healthy("", nil))
		td.setAddrs(7) // 127.0.0.18 is gone
		refresh := func() {
			time.Sleep(frontEndRefresh)
			td.serve(t, 1, healthy("", nil)) // starts the re-resolution
			synctest.Wait()
		}
		refresh()
		if picks := td.serve(t, 800, healthy("", nil)); picks["127.0.0.18"] == 0 {
			t.Errorf("just after DNS dropped 127.0.0.18 it got no request: a rotating answer would churn pools")
		}
		refresh()
		refresh()
		picks := td.serve(t, 800, healthy("", nil))
		if picks["127.0.0.18"] != 0 || len(picks) != 7 {
			t.Errorf("%v after DNS dropped 127.0.0.18: %v", 3*frontEndRefresh, picks)
		}
		if !strings.Contains(td.logs.String(), "front end gone from DNS") {
			t.Errorf("not logged:\n%s", td.logs)
		}
		td.setAddrs(9)
		time.Sleep(frontEndRefresh)
		td.serve(t, 1, healthy("", nil))
		synctest.Wait()
		if picks := td.serve(t, 900, healthy("", nil)); picks["127.0.0.18"] < 50 || picks["127.0.0.19"] < 50 {
			t.Errorf("after DNS named 127.0.0.18 and .19: %v", picks)
		}
		if td.lookups != 5 {
			t.Errorf("%d lookups, want 5 (one each %v of use)", td.lookups, frontEndRefresh)
		}
	})
}

// TestFrontEndsDescribe: /healthz's lines name each address and state.
func TestFrontEndsDescribe(t *testing.T) {
	td := newTestDoor(2)
	td.serve(t, 40, healthy("127.0.0.12", func() (frontOutcome, time.Duration) { return frontFailed, 0 }))
	lines := strings.Join(td.frontEndsOf("https", "s3.test").describeLines(), "\n")
	for _, want := range []string{
		"front end s3.test 127.0.0.11:443: in use, 0 in flight, median time to first byte 5ms",
		"front end s3.test 127.0.0.12:443: left out: 2 failures in a row (connect errors, timeouts, resets, 5xx, broken bodies), 0 in flight",
	} {
		if !strings.Contains(lines, want) {
			t.Errorf("describe lacks %q:\n%s", want, lines)
		}
	}
}

// loopbackFronts serves handler at n loopback addresses, 127.0.0.21 on,
// all on one port, and returns the port; before each request, delay(i)
// says how long address i holds it (the request's end cuts it short).
func loopbackFronts(t *testing.T, n int, handler http.Handler, delay func(i int) time.Duration) (port string, seen []atomic.Int64) {
	t.Helper()
	seen = make([]atomic.Int64, n)
	for i := range n {
		addr := fmt.Sprintf("127.0.0.%d:%s", 21+i, port)
		if port == "" {
			addr = "127.0.0.21:0"
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Skipf("cannot listen on %s (needs 127.0.0.0/8 on lo): %v", addr, err)
		}
		if port == "" {
			_, port, _ = net.SplitHostPort(ln.Addr().String())
		}
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			seen[i].Add(1)
			if d := delay(i); d > 0 && !hold(r, d) {
				return
			}
			handler.ServeHTTP(w, r)
		}))
		srv.Listener = ln
		srv.Start()
		t.Cleanup(srv.Close)
	}
	return port, seen
}

// TestFrontEndsThroughTheProxy: the proxy in front of a strict S3
// stand-in at 4 loopback addresses of one name, over real connections
// (each its own pool, the Host header and the signature the name's): the
// requests spread over all four; one address 300 ms late is left out and
// gets almost nothing after.
func TestFrontEndsThroughTheProxy(t *testing.T) {
	tp := newTestProxy(t)
	tp.s3.put("k", []byte("through every front end"))
	var slowAddr atomic.Int64
	slowAddr.Store(-1)
	port, seen := loopbackFronts(t, 4, tp.s3, func(i int) time.Duration {
		if int64(i) == slowAddr.Load() {
			return 300 * time.Millisecond
		}
		return 0
	})
	endpoint, _ := url.Parse("http://s3.test:" + port)
	tp.routes = buildRoutes([]routeSpec{{"/", testBucket, ""}}, endpoint, true, true)
	fronts := []netip.Addr{}
	for i := range 4 {
		fronts = append(fronts, netip.AddrFrom4([4]byte{127, 0, 0, byte(21 + i)}))
	}
	tp.upstream.fronts = &frontDoor{
		resolve:      func(context.Context, string) ([]netip.Addr, error) { return fronts, nil },
		newTransport: func(ap netip.AddrPort) frontTransport { return frontEndTransport(time.Second, ap) },
		log:          tp.log, background: &tp.upstream.background,
	}
	defer tp.upstream.Close()
	count := func() []int64 {
		out := make([]int64, len(seen))
		for i := range seen {
			out[i] = seen[i].Load()
		}
		return out
	}
	for range 200 {
		if resp, body := get(t, "GET", tp.url+"/k", nil); resp.StatusCode != 200 || string(body) != "through every front end" {
			t.Fatalf("GET = %d %q", resp.StatusCode, body)
		}
	}
	for i, n := range count() {
		if n < 20 || n > 90 {
			t.Errorf("address %d carried %d of 200 requests, want 10%% to 45%%", i, n)
		}
	}

	slowAddr.Store(2)
	for range 200 {
		get(t, "GET", tp.url+"/k", nil)
	}
	before := count()
	for range 200 {
		get(t, "GET", tp.url+"/k", nil)
	}
	if n := count()[2] - before[2]; n > 10 {
		t.Errorf("the address 300 ms late carried %d of the next 200 requests, want under 5%%", n)
	}
	if !tp.logs.waitFor("front end left out") {
		t.Errorf("no leave-out logged:\n%s\n%s", tp.logs, strings.Join(tp.frontEndLines(), "\n"))
	}
}

// staticFront is a front end's pool answering from memory.
type staticFront struct{ http.RoundTripper }

func (staticFront) CloseIdleConnections() {}

// BenchmarkProxyFrontEnds is BenchmarkProxy/4KiB with the endpoint a name
// of one address, or of 8, each a pool answering from memory: the cost of
// picking an address and reporting to it, against BenchmarkProxy.
func BenchmarkProxyFrontEnds(b *testing.B) {
	for _, n := range []int{1, 8} {
		b.Run(fmt.Sprintf("%d address(es)", n), func(b *testing.B) {
			body := make([]byte, 4<<10)
			p := benchProxy(body)
			addrs := make([]netip.Addr, n)
			for i := range addrs {
				addrs[i] = netip.AddrFrom4([4]byte{10, 0, 0, byte(1 + i)})
			}
			p.upstream.fronts = &frontDoor{
				resolve:      func(context.Context, string) ([]netip.Addr, error) { return addrs, nil },
				newTransport: func(netip.AddrPort) frontTransport { return staticFront{staticUpstream(body)} },
				log:          slog.New(slog.DiscardHandler), background: &p.upstream.background,
			}
			defer p.upstream.Close()
			req := httptest.NewRequest("GET", "/videos/2026/11/some-show/episode-01/video_1080p_h264.mp4", nil)
			req.Header.Set("Range", "bytes=0-4095")
			w := &discardResponse{h: make(http.Header, 8)}
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				clear(w.h)
				w.n = 0
				p.ServeHTTP(w, req)
			}
			if w.status != 206 || w.n != int64(len(body)) {
				b.Fatalf("status %d, %d bytes", w.status, w.n)
			}
		})
	}
}

// scriptedFront is one address's pool in memory: answer says what it does
// with each request, and the addresses' requests are logged in order.
type scriptedFront struct {
	addr   netip.AddrPort
	answer func(r *http.Request) (*http.Response, error)
	log    *[]string
	mu     *sync.Mutex
}

func (s scriptedFront) RoundTrip(r *http.Request) (*http.Response, error) {
	s.mu.Lock()
	*s.log = append(*s.log, s.addr.Addr().String())
	s.mu.Unlock()
	return s.answer(r)
}

func (scriptedFront) CloseIdleConnections() {}

// frontsProxy is scriptedProxy over 2 in-memory front ends, 10.0.0.1 and
// 10.0.0.2, the first always picked first (the choice is injected);
// behave says what address i does.
func frontsProxy(behave func(addr string, r *http.Request) (*http.Response, error)) (*Proxy, *[]string) {
	var mu sync.Mutex
	seen := &[]string{}
	p := scriptedProxy(&scriptedS3{}, hedgePolicy{mode: hedgeFixed, fixed: 10 * time.Millisecond}, &syncBuffer{})
	setPause(p, 0)
	addrs := []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")}
	p.upstream.fronts = &frontDoor{
		resolve: func(context.Context, string) ([]netip.Addr, error) { return addrs, nil },
		newTransport: func(ap netip.AddrPort) frontTransport {
			return scriptedFront{addr: ap, log: seen, mu: &mu, answer: func(r *http.Request) (*http.Response, error) {
				return behave(ap.Addr().String(), r)
			}}
		},
		rand: func(int) int { return 0 }, // 10.0.0.1 unless it must be avoided
		log:  p.log, background: &p.upstream.background,
	}
	return p, seen
}

// TestFrontEndsInTheRequestLoop: through the handler, a hedge goes to
// another address than the attempt it races, a retry to another than the
// attempt that failed, a dial that fails goes to the next address within
// the attempt (no retry spent), and a hedge cancelled because the first
// attempt answered counts nothing against its address.
func TestFrontEndsInTheRequestLoop(t *testing.T) {
	body := []byte("through the front ends")
	ok := func(r *http.Request) (*http.Response, error) { return objectAnswer(r, body, `"v"`), nil }
	for _, tt := range []struct {
		name   string
		behave func(addr string, r *http.Request) (*http.Response, error)
		seen   string
		limit  int
	}{
		{"the hedge goes elsewhere", func(addr string, r *http.Request) (*http.Response, error) {
			if addr == "10.0.0.1" && !hold(r, time.Second) {
				return nil, r.Context().Err()
			}
			return ok(r)
		}, "10.0.0.1 10.0.0.2", 3},
		{"the retry goes elsewhere", func(addr string, r *http.Request) (*http.Response, error) {
			if addr == "10.0.0.1" {
				return errorAnswer(503, "SlowDown", time.Time{}), nil
			}
			return ok(r)
		}, "10.0.0.1 10.0.0.2", 3},
		{"a refused dial goes to the next address, no retry spent", func(addr string, r *http.Request) (*http.Response, error) {
			if addr == "10.0.0.1" {
				return nil, refused()
			}
			return ok(r)
		}, "10.0.0.1 10.0.0.2", 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				p, seen := frontsProxy(tt.behave)
				defer p.Close()
				p.upstream.policy.limit = tt.limit
				if tt.limit == 0 {
					p.upstream.policy.hedge = hedgePolicy{mode: hedgeOff}
				}
				w := serveOne(p, httptest.NewRequest("GET", "/k", nil))
				if w.Code != 200 || w.Body.String() != string(body) {
					t.Fatalf("client got %d %q", w.Code, w.Body)
				}
				if got := strings.Join(*seen, " "); got != tt.seen {
					t.Errorf("addresses asked in order: %s, want %s", got, tt.seen)
				}
			})
		})
	}
	t.Run("a hedge that lost to an answer is no evidence", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			p, _ := frontsProxy(func(addr string, r *http.Request) (*http.Response, error) {
				if !hold(r, 40*time.Millisecond) {
					return nil, r.Context().Err()
				}
				return ok(r)
			})
			defer p.Close()
			fs := p.upstream.fronts.frontEndsOf("https", p.routes[0].host)
			serveOne(p, httptest.NewRequest("GET", "/k", nil)) // resolves
			fs.mu.Lock()
			second := fs.addrs[1]
			second.probation = true
			fs.mu.Unlock()
			for range 10 {
				serveOne(p, httptest.NewRequest("GET", "/k", nil))
			}
			if _, _, leftOut := fs.tally(); leftOut != 0 {
				t.Errorf("hedges cancelled by the first attempt's answer left %d address out", leftOut)
			}
		})
	})
}

// TestJudgeFrontFailuresReadRight: the reason an address is left out for
// failures reads right for one (on probation) and for more.
func TestJudgeFrontFailuresReadRight(t *testing.T) {
	tests := []struct {
		name      string
		failures  int
		probation bool
		want      string
	}{
		{"one on probation", 1, true, "1 failure in a row (connect errors, timeouts, resets, 5xx, broken bodies)"},
		{"two", failuresToLeaveOut, false, "2 failures in a row (connect errors, timeouts, resets, 5xx, broken bodies)"},
		{"three on probation", 3, true, "3 failures in a row (connect errors, timeouts, resets, 5xx, broken bodies)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := &frontEnds{}
			fe := &frontEnd{set: fs, failures: tt.failures, probation: tt.probation}
			if got := fs.judgeFront(fe); got != tt.want {
				t.Errorf("judgeFront(failures %d, probation %v) = %q, want %q", tt.failures, tt.probation, got, tt.want)
			}
		})
	}
}

// TestFrontEndsResolveAgainOnUse: what the README says of re-resolution. A
// name is resolved again only when a request finds the last answer older
// than frontEndRefresh, in the background: that request does not wait for
// DNS, and an idle name is not resolved at all.
func TestFrontEndsResolveAgainOnUse(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		td := newTestDoor(4)
		defer td.background.close()
		resolve := td.resolve
		release := make(chan struct{})
		td.resolve = func(ctx context.Context, host string) ([]netip.Addr, error) {
			if td.lookups > 0 { // every lookup after the first hangs until released
				select {
				case <-release:
				case <-ctx.Done():
				}
			}
			return resolve(ctx, host)
		}
		td.serve(t, 1, healthy("", nil))
		time.Sleep(10 * frontEndRefresh)
		synctest.Wait()
		if td.lookups != 1 {
			t.Errorf("%d lookups after %v idle, want 1: no request, no resolution", td.lookups, 10*frontEndRefresh)
		}
		start := time.Now()
		td.serve(t, 1, healthy("", nil)) // finds the answer old: starts a lookup, which hangs
		if waited := time.Since(start); waited != 0 {
			t.Errorf("the request that found the answer old waited %v for DNS, want 0", waited)
		}
		close(release)
		synctest.Wait()
		if td.lookups != 2 {
			t.Errorf("%d lookups, want 2", td.lookups)
		}
	})
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Join(strings.Fields(string(readme)), " ")
	if want := "resolves it again when a request finds the last answer older than 5 s: in the background, without holding that request"; !strings.Contains(text, want) {
		t.Errorf("README's \"S3's front ends\" lacks %q", want)
	}
}
