package main

// S3's front ends. Since 2023-08-30 S3's DNS answers with up to eight
// addresses, each a different front-end host, and one host can be slow,
// hang or vanish while the others are fine. net/http dials the first
// address that answers and keeps its pool there, so one host would carry
// every request, and a hedge or a retry would go to the host it replaces.
// Here each endpoint's name is resolved, and resolved again in the
// background when a request finds the answer older than frontEndRefresh;
// each address has a keep-alive pool of its own; requests are
// spread over the addresses in use by the power of two choices on requests
// in flight; and an address clearly worse than the rest is left out for a
// while. The Host header, TLS's server name and the signature keep the
// name: only the dial goes to the address.
//
// The rule that leaves an address out, judged on each outcome it reports:
//
//	failures   2 in a row (1 on probation): a connect error, a timeout, a
//	           reset, a 500, 502 or 504, or its body failing mid-way
//	slowness   the median of its last 32 times to first byte is more than
//	           4× the median of the others' medians and either more than
//	           50 ms above it or made of attempts that mostly lost the
//	           hedge race, once it has 16 samples (4 on probation)
//
// A left-out address gets no request for frontEndRest, its idle
// connections are closed, and it comes back on probation: one request at
// a time, left out again on one failure, two lost races or 4 slow
// samples, and back for good after 16 good ones. At most half the addresses are left out at once: when they
// all fail, S3 is failing, not a host, and the rest stay in use. A first
// attempt the hedge race cancelled counts its wait as a time to first
// byte (it was at least that slow), so a host that hangs is found as
// surely as one that refuses. S3's DNS answers rotate: an address DNS
// stops naming keeps its pool and its record for frontEndForget, in case
// it comes back, and then gets no request.

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// frontEndRefresh is the age past which a request's pick resolves the
	// name again, in the background: S3's answers live 5 s, and Go's
	// resolver does not say how long.
	frontEndRefresh = 5 * time.Second
	// maxFrontEnds bounds the addresses kept per name (S3 gives 8).
	maxFrontEnds = 16
	// frontEndSamples is the window of times to first byte per address.
	frontEndSamples = 32
	// judgeAfter and judgeOnProbation are how many samples an address
	// needs before it is judged slow.
	judgeAfter, judgeOnProbation = 16, 4
	// slowFactor and slowMargin make an address slow: its median more
	// than slowFactor times the others' and more than slowMargin above.
	slowFactor = 4
	slowMargin = 50 * time.Millisecond
	// failuresToLeaveOut is how many connect errors, timeouts or resets in a
	// row leave an address out.
	failuresToLeaveOut = 2
	// frontEndRest is how long a left-out address gets no request.
	frontEndRest = 10 * time.Second
	// frontEndForget is how long an address DNS no longer names is kept.
	frontEndForget = 10 * time.Second
)

// frontDoor keeps the front ends of every endpoint name the S3 client
// talks to. Its fields must be set before the first pick and not changed
// after.
type frontDoor struct {
	// resolve returns a name's addresses; nil means the system resolver.
	resolve func(ctx context.Context, host string) ([]netip.Addr, error)
	// newTransport makes the keep-alive pool of one address.
	newTransport func(addr netip.AddrPort) frontTransport
	// now is the clock; rand returns an int in [0, n); nil means the
	// default of each.
	now  clock
	rand func(n int) int
	// timeout bounds the first resolution of a name, which a request
	// waits for; zero means frontEndRefresh.
	timeout time.Duration
	// log must be set; metrics may be nil.
	log     *slog.Logger
	metrics *Metrics
	// background runs the re-resolutions.
	background *backgroundWork

	mu    sync.Mutex // guards names
	names map[string]*frontEnds
}

// frontEnds is one endpoint name's addresses.
type frontEnds struct {
	door *frontDoor
	// name is the endpoint's host; port the port its addresses are dialled at.
	name string
	port uint16

	mu sync.Mutex // guards the fields below
	// addrs are the addresses DNS names, or named within frontEndForget.
	addrs []*frontEnd
	// retired are addresses forgotten, kept until their last request
	// ended so their connections can be closed.
	retired    []*frontEnd
	resolvedAt time.Time
	refreshing bool
	// lastErr is the last resolution that failed, for /healthz.
	lastErr error
}

// frontTransport is one address's pool of connections: the lean client
// (leanclient.go) whose every dial goes to it (frontEndTransport).
type frontTransport interface {
	http.RoundTripper
	CloseIdleConnections()
}

// frontEnd is one address of a name, with its own connections.
type frontEnd struct {
	set       *frontEnds
	addr      netip.AddrPort
	transport frontTransport
	inFlight  atomic.Int64

	// The fields below are guarded by set.mu.
	samples [frontEndSamples]time.Duration
	// lost marks the samples of attempts the hedge race cancelled; lostN
	// counts them.
	lost  [frontEndSamples]bool
	lostN int
	// median is the window's, kept every 4 samples.
	median    time.Duration
	n, next   int
	failures  int
	leftOut   bool
	probation bool
	until     time.Time
	// absentSince is when DNS stopped naming it; zero while it does.
	absentSince time.Time
	// reason is why it was last left out.
	reason string
}

// frontOutcome is what one attempt at a front end came to.
type frontOutcome int

const (
	// frontAnswered: S3 sent response headers (any status) after ttfb.
	frontAnswered frontOutcome = iota
	// frontFailed: a connect error, a timeout or a reset.
	frontFailed
	// frontOutraced: the hedge race cancelled it, a first attempt, after
	// it waited ttfb for its answer.
	frontOutraced
	// frontUnjudged: anything else (the client left, no credentials, a
	// hedge cancelled because the first attempt answered).
	frontUnjudged
)

// pick chooses the front end an attempt to host (host[:port] of scheme)
// goes to, another than avoid when there is one in use; nil when host has
// none (an IP address, a name that does not resolve): the caller then
// dials host itself. The caller must report the attempt's outcome.
func (d *frontDoor) pick(ctx context.Context, scheme, host string, avoid *frontEnd) *frontEnd {
	if d == nil {
		return nil
	}
	fs := d.frontEndsOf(scheme, host)
	if fs == nil {
		return nil
	}
	now := d.now.read()
	fs.refreshIfDue(ctx, now)
	return fs.pick(avoid, now)
}

// frontEndsOf is host's frontEnds, made on first use; nil for an address.
func (d *frontDoor) frontEndsOf(scheme, host string) *frontEnds {
	key := scheme + "://" + host // the default port is the scheme's
	d.mu.Lock()
	defer d.mu.Unlock()
	if fs, ok := d.names[key]; ok {
		return fs
	}
	name, portText, err := net.SplitHostPort(host)
	if err != nil {
		name, portText = host, "443"
		if scheme == "http" {
			portText = "80"
		}
	}
	port, perr := strconv.ParseUint(portText, 10, 16)
	var fs *frontEnds
	if _, aerr := netip.ParseAddr(strings.Trim(name, "[]")); aerr != nil && perr == nil {
		fs = &frontEnds{door: d, name: name, port: uint16(port)}
	}
	if d.names == nil {
		d.names = map[string]*frontEnds{}
	}
	d.names[key] = fs // nil for an address: asked once
	return fs
}

// refreshIfDue resolves the name when it was never resolved (the caller
// waits, within the door's timeout: there is nothing to pick from) or, in
// the background, when the last answer is older than frontEndRefresh.
func (fs *frontEnds) refreshIfDue(ctx context.Context, now time.Time) {
	fs.mu.Lock()
	first := fs.resolvedAt.IsZero()
	due := !first && now.Sub(fs.resolvedAt) >= frontEndRefresh && !fs.refreshing
	if due {
		fs.refreshing = true
	}
	fs.mu.Unlock()
	switch {
	case first:
		rctx, cancel := context.WithTimeout(ctx, cmp.Or(fs.door.timeout, frontEndRefresh))
		defer cancel()
		fs.resolveNow(rctx)
	case due:
		closing, ok := fs.door.background.start()
		if !ok {
			return
		}
		go func() {
			defer fs.door.background.done()
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), frontEndRefresh)
			defer cancel()
			go func() { // ends with rctx
				select {
				case <-closing:
					cancel()
				case <-rctx.Done():
				}
			}()
			fs.resolveNow(rctx)
		}()
	}
}

// resolveNow resolves the name and takes the answer (takeAddrs). A
// resolution that fails keeps the last answer; one whose context ended (a
// client that left) is tried again by the next request.
func (fs *frontEnds) resolveNow(ctx context.Context) {
	resolve := fs.door.resolve
	if resolve == nil {
		resolve = func(ctx context.Context, host string) ([]netip.Addr, error) {
			return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		}
	}
	ips, err := resolve(ctx, fs.name)
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.refreshing = false
	if err != nil && ctx.Err() != nil {
		return
	}
	now := fs.door.now.read()
	fs.resolvedAt = now
	fs.lastErr = err
	if err != nil || len(ips) == 0 {
		if err == nil {
			fs.lastErr = fmt.Errorf("no address for %s", fs.name)
		}
		return
	}
	fs.takeAddrs(ips, now)
}

// takeAddrs takes a DNS answer: a new address gets a pool, one named again
// is present, one no longer named is marked absent and, absent for
// frontEndForget (or the longest absent, past maxFrontEnds), forgotten: no
// new request, its connections closed once idle. fs.mu must be held.
func (fs *frontEnds) takeAddrs(ips []netip.Addr, now time.Time) {
	named := make([]netip.AddrPort, 0, len(ips))
	for _, ip := range ips {
		if ap := netip.AddrPortFrom(ip.Unmap(), fs.port); !slices.Contains(named, ap) && len(named) < maxFrontEnds {
			named = append(named, ap)
		}
	}
	for _, fe := range fs.addrs {
		switch {
		case slices.Contains(named, fe.addr):
			fe.absentSince = time.Time{}
		case fe.absentSince.IsZero():
			fe.absentSince = now
			fs.door.log.Info("front end no longer in DNS: kept a while in case DNS names it again, then left",
				"name", fs.name, "address", fe.addr.String(), "for", frontEndForget)
		}
	}
	for _, ap := range named {
		if !slices.ContainsFunc(fs.addrs, func(fe *frontEnd) bool { return fe.addr == ap }) {
			fs.addrs = append(fs.addrs, &frontEnd{set: fs, addr: ap, transport: fs.door.newTransport(ap)})
		}
	}
	// The longest absent last: forgotten first when there are too many.
	slices.SortStableFunc(fs.addrs, func(a, b *frontEnd) int { return cmp.Compare(absence(a, now), absence(b, now)) })
	for n := len(fs.addrs); n > 0; n = len(fs.addrs) {
		last := fs.addrs[n-1]
		if n <= maxFrontEnds && absence(last, now) < frontEndForget {
			break
		}
		fs.door.log.Info("front end gone from DNS: no new request goes there; its connections close once idle",
			"name", fs.name, "address", last.addr.String())
		fs.retired = append(fs.retired, last)
		fs.addrs = fs.addrs[:n-1]
	}
	fs.closeRetired()
}

// absence is how long fe has been absent from DNS at now; 0 while named.
func absence(fe *frontEnd, now time.Time) time.Duration {
	if fe.absentSince.IsZero() {
		return 0
	}
	return now.Sub(fe.absentSince)
}

// closeRetired closes the connections of retired addresses whose last
// request ended. fs.mu must be held.
func (fs *frontEnds) closeRetired() {
	fs.retired = slices.DeleteFunc(fs.retired, func(fe *frontEnd) bool {
		if fe.inFlight.Load() > 0 {
			return false
		}
		fe.transport.CloseIdleConnections()
		return true
	})
}

// pick is the power of two choices over the addresses in use, but avoid:
// two at random, the one with fewer requests in flight. It spreads
// requests as evenly as round-robin while steering them off an address
// whose requests pile up (a slow one), without every instance of a fleet
// herding to the same least-loaded host. When avoid is the only address in
// use, a left-out one is taken instead: a hedge or a retry must not go
// back to the host it replaces.
func (fs *frontEnds) pick(avoid *frontEnd, now time.Time) *frontEnd {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	var buf [maxFrontEnds]*frontEnd // on the stack: no allocation per pick
	use := buf[:0]
	trials := 0
	for _, fe := range fs.addrs {
		if fe.leftOut && !now.Before(fe.until) {
			fe.comeBack()
		}
		switch {
		case fe.leftOut:
		case fe.probation && fe.inFlight.Load() > 0:
			trials++ // on probation one request at a time, as a trial
		default:
			use = append(use, fe)
		}
	}
	if len(use) == 0 && trials > 0 { // only trials left: use them all the same
		for _, fe := range fs.addrs {
			if !fe.leftOut {
				use = append(use, fe)
			}
		}
	}
	if len(use) == 1 && use[0] == avoid && len(fs.addrs) > 1 {
		use = append(use[:0], fs.addrs...)
	}
	if len(use) > 1 && avoid != nil {
		if i := slices.Index(use, avoid); i >= 0 {
			use = slices.Delete(use, i, i+1)
		}
	}
	var fe *frontEnd
	switch len(use) {
	case 0:
		return nil
	case 1:
		fe = use[0]
	default:
		i := fs.door.randIndex(len(use))
		j := fs.door.randIndex(len(use) - 1)
		if j >= i {
			j++
		}
		fe = use[i]
		if use[j].inFlight.Load() < fe.inFlight.Load() {
			fe = use[j]
		}
	}
	fe.inFlight.Add(1)
	return fe
}

// randIndex is a random int in [0, n).
func (d *frontDoor) randIndex(n int) int {
	if d.rand != nil {
		return d.rand(n)
	}
	return rand.IntN(n)
}

// report records what an attempt picked at fe came to; ttfb is the time
// to response headers, or how long a first attempt waited before the
// race cancelled it. A nil fe reports nothing.
func (fe *frontEnd) report(o frontOutcome, ttfb time.Duration) {
	if fe == nil {
		return
	}
	fs := fe.set
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fe.inFlight.Add(-1)
	switch o {
	case frontAnswered:
		fe.failures = 0
		fe.observe(ttfb, false)
	case frontOutraced:
		fe.observe(ttfb, true)
	case frontFailed:
		fe.failures++
	}
	fs.judgeAndRest(fe)
	fs.closeRetired()
}

// bodyFailed records that a body fe sent failed mid-way (a reset, a
// stall), after its headers were reported. A nil fe records nothing.
func (fe *frontEnd) bodyFailed() {
	if fe == nil {
		return
	}
	fe.set.mu.Lock()
	defer fe.set.mu.Unlock()
	fe.failures++
	fe.set.judgeAndRest(fe)
}

// judgeAndRest leaves fe out when the rule says so. fs.mu must be held.
func (fs *frontEnds) judgeAndRest(fe *frontEnd) {
	if fe.leftOut || len(fs.addrs) < 2 { // one address is never left out
		return
	}
	if reason := fs.judgeFront(fe); reason != "" {
		fs.leaveOut(fe, reason)
	}
}

// observe adds one time to first byte, or a lost race's wait, and keeps
// the window's count of lost races and its median (every 4 samples once
// the window judges: sorting on every request would cost more than the
// pick). fs.mu must be held.
func (fe *frontEnd) observe(d time.Duration, lost bool) {
	if fe.n == frontEndSamples && fe.lost[fe.next] {
		fe.lostN--
	}
	if lost {
		fe.lostN++
	}
	fe.samples[fe.next], fe.lost[fe.next] = d, lost
	fe.next = (fe.next + 1) % frontEndSamples
	fe.n = min(fe.n+1, frontEndSamples)
	if fe.n <= judgeAfter || fe.next%4 == 0 {
		fe.median = medianTTFB(fe.samples[:fe.n])
	}
}

// judgeFront says why fe should be left out, or "" when it should not.
// fs.mu must be held.
func (fs *frontEnds) judgeFront(fe *frontEnd) string {
	switch {
	case fe.failures >= failuresToLeaveOut || fe.probation && fe.failures > 0:
		failures := " failures in a row"
		if fe.failures == 1 { // on probation one is enough
			failures = " failure in a row"
		}
		return strconv.Itoa(fe.failures) + failures + " (connect errors, timeouts, resets, 5xx, broken bodies)"
	case fe.probation && fe.lostN >= 2:
		// A healthy host loses a race on 1 request in 40 or so: two on
		// probation say it is still slow, or hangs.
		return strconv.Itoa(fe.lostN) + " hedge races lost on probation"
	}
	need := judgeAfter
	if fe.probation {
		need = judgeOnProbation
	}
	if fe.n < need {
		return ""
	}
	// The others' median is the median of their medians: each address
	// counts once, however many requests it carried.
	var medians [maxFrontEnds]time.Duration
	k, samples := 0, 0
	for _, o := range fs.addrs {
		if o != fe && !o.leftOut && o.n >= judgeOnProbation {
			medians[k], k, samples = o.median, k+1, samples+o.n
		}
	}
	if samples < judgeAfter {
		return ""
	}
	mine, theirs := fe.median, medianTTFB(medians[:k])
	// Lost races' waits are the hedge delay, a few times a fast S3's
	// answers but maybe not 50 ms more: losing most races is the sign.
	if mine > slowFactor*theirs && (mine-theirs > slowMargin || 2*fe.lostN >= fe.n) {
		return fmt.Sprintf("median time to first byte %v, the others' %v; %d of its last %d attempts lost the hedge race",
			mine.Round(time.Millisecond), theirs.Round(time.Millisecond), fe.lostN, fe.n)
	}
	if fe.probation && fe.n >= judgeAfter {
		fe.probation = false // judged over a full window: back for good
	}
	return ""
}

// medianTTFB is the median of ds (at most frontEndSamples); ds is not
// modified.
func medianTTFB(ds []time.Duration) time.Duration {
	var buf [frontEndSamples]time.Duration
	s := buf[:copy(buf[:], ds)]
	slices.Sort(s)
	return s[len(s)/2]
}

// leaveOut rests fe, unless half the addresses are left out already.
// fs.mu must be held.
func (fs *frontEnds) leaveOut(fe *frontEnd, reason string) {
	leftOut := 0
	for _, o := range fs.addrs {
		if o.leftOut {
			leftOut++
		}
	}
	if leftOut+1 > len(fs.addrs)/2 || !slices.Contains(fs.addrs, fe) {
		return
	}
	fe.leftOut, fe.reason = true, reason
	fe.until = fs.door.now.read().Add(frontEndRest)
	fs.door.metrics.Inc(mFrontEndsLeftOut)
	fe.transport.CloseIdleConnections()
	fs.door.log.Warn("front end left out: it is worse than the others; requests go to the rest, and it is tried again later",
		"name", fs.name, "address", fe.addr.String(), "reason", reason, "for", frontEndRest)
}

// comeBack puts fe back in use on probation. fe.set.mu must be held.
func (fe *frontEnd) comeBack() {
	fe.leftOut, fe.probation, fe.failures, fe.n, fe.next, fe.lostN = false, true, 0, 0, 0, 0
	fe.set.door.log.Info("front end back in use, on probation", "name", fe.set.name, "address", fe.addr.String())
}
