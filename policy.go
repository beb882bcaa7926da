package main

// What an upstream attempt's facts call for, and what an exchange may still
// spend: the decision table (pass the answer on, sign again, retry later),
// what a fetch says of its bucket's region, the retry and resume limits,
// the pause between attempts, the hedge delay and the process's retry
// budget that retries, resumes and hedges share. Nothing here sends a
// request; upstream.go's loop applies what a decision names.

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"
)

// retryBackoff paces transient retries (connect errors, timeouts, 500,
// 502, 504): full jitter over 50 ms doubling, capped at 1 s, so a retry
// usually lands within the player's patience. throttleBackoff paces
// SlowDown (a 503 with that code or none): S3 asked for less, so the base
// is four times longer. The AWS SDKs use a 1 s base for throttling; a
// packager's player waits seconds at most, and the retry budget, not the
// pause, is what keeps a fleet from multiplying a brownout.
var (
	retryBackoff    = backoff{base: 50 * time.Millisecond, ceiling: time.Second}
	throttleBackoff = backoff{base: 200 * time.Millisecond, ceiling: time.Second}
)

// attemptFacts is what one round trip to S3 produced. An attempt writes
// nothing else, so two attempts of one fetch may be in flight at once; the
// fetch loop reads the facts and writes its trace from them.
type attemptFacts struct {
	// resp is S3's 2xx or 304 response with its body unread; nil otherwise.
	resp *http.Response
	// status is S3's status; 0 when no response arrived.
	status int
	// s3 is what an error answer's body said; the body is read and closed.
	s3 s3ErrorDetails
	// skew is what S3's Date says of this host's clock on an error answer.
	skew skewReading
	// ttfb is the time from sending to S3's response headers.
	ttfb time.Duration
	// err is why no answer came: the credentials could not be had, the
	// client went away, or the transport failed (classified).
	err *proxyError
	// creds signed the attempt; nil when none could be had.
	creds *Credentials
	// front is the front end it went to; nil for the shared transport.
	front *frontEnd
}

// answer is what the facts give the client when they are passed on.
func (f *attemptFacts) answer() upstreamAnswer {
	return upstreamAnswer{resp: f.resp, status: f.status, s3: f.s3, front: f.front}
}

// upstreamAnswer is what S3 answered an exchange: a response whose body is
// passed on (2xx and 304), or an error answer already read and closed.
type upstreamAnswer struct {
	// resp is set when the body is passed on; nil for an error answer.
	resp *http.Response
	// status and s3 describe an error answer.
	status int
	s3     s3ErrorDetails
	// front is the front end that answered; nil for the shared transport.
	front *frontEnd
}

// statusCode is S3's status on the answer.
func (a upstreamAnswer) statusCode() int {
	if a.resp != nil {
		return a.resp.StatusCode
	}
	return a.status
}

// respHeader is the answer's response header; nil for an error answer.
func (a upstreamAnswer) respHeader() http.Header {
	if a.resp != nil {
		return a.resp.Header
	}
	return nil
}

// verdict is what an attempt's facts call for.
type verdict int

const (
	// passOn: the answer (or the error) goes to the client.
	passOn verdict = iota
	// signAgain: correct what the decision's fix names, then send again at
	// once.
	signAgain
	// retryLater: a transient failure; pause, then try again if the
	// policy allows.
	retryLater
)

// fix is the side effect a signAgain decision asks of the loop.
type fix int

const (
	noFix fix = iota
	// adoptClock signs with S3's clock from now on (clockskew.go).
	adoptClock
	// refreshCredentials replaces a credential set S3 rejected.
	refreshCredentials
)

// decision is decide's answer.
type decision struct {
	verdict verdict
	fix     fix
	// throttled marks a retryLater for SlowDown: paced by throttleBackoff.
	throttled bool
	// err is the failure a retryLater names (its kind is counted), or the
	// one a passOn gives the client; nil when S3's answer passes on.
	err *proxyError
}

// retryState is what one fetch (an answer, or the rest of one) has tried.
type retryState struct {
	retries   int  // transient failures retried
	refreshed bool // credentials were replaced after S3 rejected them
	reclocked bool // the signing time was corrected from S3's clock
}

// decide is the decision table: a pure function of one attempt's facts and
// what the fetch has tried. Each correction (clock, credentials) is tried
// once per fetch; everything transient is retried later; the rest passes on.
func decide(f *attemptFacts, tried retryState) decision {
	switch {
	case f.err != nil && (f.err.kind == kindClientGone || f.err.kind == kindCredentials):
		return decision{verdict: passOn, err: f.err}
	case f.err != nil:
		return decision{verdict: retryLater, err: f.err}
	case f.resp != nil:
		return decision{verdict: passOn}
	case !tried.reclocked && f.skew.adopt:
		// Our clock is off: signed with S3's time, the request succeeds.
		return decision{verdict: signAgain, fix: adoptClock}
	case !tried.refreshed && credentialsRejected(f.s3.code):
		// The set was revoked or expired early: fetch another once and
		// retry, instead of failing until the next refresh.
		return decision{verdict: signAgain, fix: refreshCredentials}
	case retryableStatus(f.status):
		return decision{verdict: retryLater, throttled: throttling(f.status, f.s3.code),
			err: &proxyError{kind: "status_" + strconv.Itoa(f.status), err: fmt.Errorf("S3 answered %d %s", f.status, f.s3.code)}}
	}
	return decision{verdict: passOn}
}

// commits reports whether facts end a hedge race: S3 answered and the
// answer passes on (2xx, 304, S3's own 4xx word). A failure the policy
// would retry or correct lets the other attempt run on.
func commits(f *attemptFacts, tried retryState) bool {
	return f.err == nil && decide(f, tried).verdict == passOn
}

// throttling reports S3 asking for fewer requests: 503 SlowDown, or a 503
// without a code (a HEAD has no error body).
func throttling(status int, code string) bool {
	return status == http.StatusServiceUnavailable && (code == "SlowDown" || code == "")
}

// retryPolicy is how much an exchange may spend on S3's failures and slow
// answers, and how it waits between attempts. Its fields are set before
// the proxy serves; budget and hedges are shared by every exchange.
type retryPolicy struct {
	// limit is how many times a failed attempt is repeated in one fetch,
	// and how many times one response is resumed mid-body; zero means
	// neither, and no hedges either.
	limit int
	// pause returns the wait before retry n (1-based) of either kind; nil
	// means retryBackoff or throttleBackoff with full jitter drawn from rand.
	pause func(n int) time.Duration
	// rand returns the jitter, uniform in [0, 1); nil means math/rand/v2.
	rand func() float64
	// budget is the process's retry budget; nil means unlimited.
	budget *retryBudget
	// hedge says when a second attempt is sent beside a slow one.
	hedge hedgePolicy
	// hedges caps hedges at a fraction of requests; nil means no cap.
	hedges *hedgeAllowance
}

// retry reports whether the fetch may try again, and counts the retry.
func (rp retryPolicy) retry(tried *retryState) bool {
	if tried.retries >= rp.limit {
		return false
	}
	tried.retries++
	return true
}

// resume reports whether a response that already resumed resumes times
// may resume once more.
func (rp retryPolicy) resume(resumes int) bool { return resumes < rp.limit }

// wait is the pause before retry n.
func (rp retryPolicy) wait(n int, throttled bool) time.Duration {
	if rp.pause != nil {
		return rp.pause(n)
	}
	u := rand.Float64
	if rp.rand != nil {
		u = rp.rand
	}
	if throttled {
		return throttleBackoff.fullJitter(n, u())
	}
	return retryBackoff.fullJitter(n, u())
}

// retryCostOf is what a retry after err costs the budget: a timeout costs
// twice a retry, as in the SDKs (it held a connection for the whole
// timeout).
func retryCostOf(err *proxyError) int64 {
	if err != nil && err.kind == kindTimeout {
		return timeoutRetryCost
	}
	return retryCost
}

// The retry budget, in the AWS SDKs' standard-mode shape (aws-sdk-go-v2
// aws/retry: 500 tokens; a retry costs 5, a timeout retry 10; a retry that
// succeeds refunds its cost; a first try that succeeds adds 1; when it
// cannot pay, nothing is retried). Where s3-helper differs: mid-body
// resumes and hedges pay a retry's cost from the same budget (a winning
// hedge and a resume that succeeds are refunded like a successful retry),
// and there is one budget for the process, not one per client: the SDKs
// have one client per process too, and S3's throttling of one bucket then
// costs the other buckets their retries only while it lasts, never their
// first tries.
const (
	defaultRetryBudget = 500
	retryCost          = 5
	timeoutRetryCost   = 10
	firstTrySuccess    = 1
	// budgetRefilled is where an emptied budget counts as refilled again,
	// so a budget hovering at empty logs its transitions rarely.
	budgetRefilled = 100
)

// retryBudget is the process's token bucket for retries, resumes and
// hedges. Spending returns the token whose release refunds it, as
// aws-sdk-go-v2's retry token bucket returns a release function, so a
// refund lives with its spend. A nil *retryBudget never refuses.
type retryBudget struct {
	capacity int64
	tokens   atomic.Int64
	// empty is set when a spend was refused and cleared once the tokens
	// are back at budgetRefilled: each transition is logged once.
	empty atomic.Bool
	log   *slog.Logger
}

// newRetryBudget returns a full budget of capacity tokens; nil when
// capacity is zero (no budget).
func newRetryBudget(capacity int64, log *slog.Logger) *retryBudget {
	if capacity <= 0 {
		return nil
	}
	b := &retryBudget{capacity: capacity, log: log}
	b.tokens.Store(capacity)
	return b
}

// budgetToken is what one attempt was paid with.
type budgetToken struct {
	b    *retryBudget
	cost int64
}

// firstTry is the token of a fetch's first attempt: it costs nothing.
func (b *retryBudget) firstTry() budgetToken { return budgetToken{b: b} }

// release settles t for an attempt whose answer passed on as a success: a
// retry's, resume's or hedge's cost comes back, a first try adds
// firstTrySuccess. A token not released was spent for good.
func (t budgetToken) release() {
	if t.cost > 0 {
		t.b.give(t.cost)
		return
	}
	t.b.give(firstTrySuccess)
}

// spend takes cost tokens for a retry, resume or hedge and returns the
// token that refunds them, or false when the budget cannot pay.
func (b *retryBudget) spend(cost int64) (budgetToken, bool) {
	tok := budgetToken{b: b, cost: cost}
	if b == nil {
		return tok, true
	}
	for {
		t := b.tokens.Load()
		if t < cost {
			if b.empty.CompareAndSwap(false, true) {
				b.log.Warn("retry budget empty: S3 keeps failing, so nothing is retried, resumed or hedged until requests succeed again",
					"tokens", t)
			}
			return tok, false
		}
		if b.tokens.CompareAndSwap(t, t-cost) {
			return tok, true
		}
	}
}

// give returns n tokens (a refund or a reward), up to the capacity.
func (b *retryBudget) give(n int64) {
	if b == nil {
		return
	}
	for {
		t := b.tokens.Load()
		next := min(t+n, b.capacity)
		if b.tokens.CompareAndSwap(t, next) {
			if next >= budgetRefilled && b.empty.Load() && b.empty.CompareAndSwap(true, false) {
				b.log.Info("retry budget refilled: retries, resumes and hedges are back", "tokens", next)
			}
			return
		}
	}
}

// Tokens returns the tokens left; 0 for no budget.
func (b *retryBudget) Tokens() int64 {
	if b == nil {
		return 0
	}
	return b.tokens.Load()
}

// hedgeMode is how the hedge delay is chosen.
type hedgeMode int

const (
	// hedgeAuto follows the p95 of recent times to first byte, clamped.
	hedgeAuto hedgeMode = iota
	hedgeOff
	// hedgeFixed always waits hedgePolicy.fixed.
	hedgeFixed
)

// The adaptive hedge delay's bounds. The floor keeps a fast, steady S3
// (a p95 of a few milliseconds from a nearby gateway or cache) from being
// hedged on every wobble; the ceiling keeps a slow S3 from pushing the
// hedge past what a player waits for a segment. Until the window holds
// enough samples the delay is the ceiling.
const (
	hedgeFloor   = 20 * time.Millisecond
	hedgeCeiling = time.Second
)

// hedgePolicy is the -hedge setting.
type hedgePolicy struct {
	mode  hedgeMode
	fixed time.Duration
}

// delay is how long an attempt may wait for response headers before a
// hedge is sent, given the route's latency window; false means never.
func (hp hedgePolicy) delay(w *latencyWindow) (time.Duration, bool) {
	switch hp.mode {
	case hedgeOff:
		return 0, false
	case hedgeFixed:
		return hp.fixed, true
	}
	p95 := w.percentile95()
	if p95 == 0 {
		return hedgeCeiling, true
	}
	return min(max(p95, hedgeFloor), hedgeCeiling), true
}

// mayHedge is the hedge decision for one exchange: only for the answer
// itself (never a resume: bytes have reached the client), once per
// exchange, and never when retries are off.
func (rp retryPolicy) mayHedge(resume, hedged bool) bool {
	return rp.limit > 0 && rp.hedge.mode != hedgeOff && !resume && !hedged
}

// Hedges are capped at hedgeFraction of recent requests: each request
// earns a tenth of a hedge, at most maxHedgeBurst are saved up. A slowdown
// of every request then costs S3 at most 10% more requests, never double
// (the failure of hedging everything that is slow).
const (
	hedgeFraction = 0.1
	maxHedgeBurst = 10
	// hedgeUnit is one hedge in the allowance's fixed-point units.
	hedgeUnit = 1000
)

// hedgeAllowance is the hedge cap's account. The zero value holds nothing;
// newHedgeAllowance starts it full.
type hedgeAllowance struct {
	units atomic.Int64
}

// newHedgeAllowance returns a full allowance.
func newHedgeAllowance() *hedgeAllowance {
	a := &hedgeAllowance{}
	a.units.Store(maxHedgeBurst * hedgeUnit)
	return a
}

// earn credits one request.
func (a *hedgeAllowance) earn() {
	if a == nil {
		return
	}
	for {
		u := a.units.Load()
		next := min(u+int64(hedgeFraction*hedgeUnit), maxHedgeBurst*hedgeUnit)
		if next == u || a.units.CompareAndSwap(u, next) {
			return
		}
	}
}

// giveBack returns a hedge that take granted but was not sent.
func (a *hedgeAllowance) giveBack() {
	if a == nil {
		return
	}
	for {
		u := a.units.Load()
		if a.units.CompareAndSwap(u, min(u+hedgeUnit, maxHedgeBurst*hedgeUnit)) {
			return
		}
	}
}

// take spends one hedge, or reports that the cap is reached.
func (a *hedgeAllowance) take() bool {
	if a == nil {
		return true
	}
	for {
		u := a.units.Load()
		if u < hedgeUnit {
			return false
		}
		if a.units.CompareAndSwap(u, u-hedgeUnit) {
			return true
		}
	}
}

// proxyError is a failure of the S3 conversation, or of the client's
// request, named by its kind; answers.go's answerFor chooses the status
// and body the client gets from it, in one place.
type proxyError struct {
	// kind names the failure class in logs and metrics (the error kinds
	// below, "client" for a rejected request, "status_NNN" for an S3 5xx
	// that is retried).
	kind string
	err  error
}

// Error names the failure class and its cause.
func (e *proxyError) Error() string { return e.kind + ": " + e.err.Error() }

// Unwrap returns the cause.
func (e *proxyError) Unwrap() error { return e.err }

// clientGone ends an exchange whose client went away.
func clientGone(err error) *proxyError { return &proxyError{kind: kindClientGone, err: err} }

// The failure kinds, as the upstream_errors metric and the log name them.
const (
	kindClientGone  = "client_gone"
	kindCredentials = "credentials"
	kindClient      = "client"
	kindTimeout     = "timeout"
	kindConnect     = "connect"
	kindTransport   = "transport"
	// kindBody is S3's body failing after the status was sent.
	kindBody     = "body"
	kindInternal = "internal"
)

// classifyTransport names a transport error: a timeout, a failed dial, or
// any other transport failure.
func classifyTransport(err error) *proxyError {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return &proxyError{kind: kindTimeout, err: err}
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "dial" {
		return &proxyError{kind: kindConnect, err: err}
	}
	return &proxyError{kind: kindTransport, err: err}
}

// copiesToTry is the failover decision: the copies a fetch tries at now,
// in order: those up; when every copy is down, all of them, since refusing
// would serve no one. due lists the copies marked down whose probe is due,
// each claimed for one probe the caller sends in the background.
func copiesToTry(copies []route, now time.Time) (order, due []route) {
	order = make([]route, 0, len(copies))
	for _, c := range copies {
		up, probe := c.health.admit(now)
		if up {
			order = append(order, c)
		}
		if probe {
			due = append(due, c)
		}
	}
	if len(order) == 0 {
		order = append(order, copies...)
	}
	return order, due
}

// failedForRegion reports failure kinds that are the region's doing.
func failedForRegion(kind string) bool {
	return kind == kindConnect || kind == kindTimeout || kind == kindTransport
}

// evidenceOf is what a probe's one attempt says of the region: any answer
// but a 5xx means it serves.
func evidenceOf(f *attemptFacts) evidence {
	if f.err == nil && retryableStatus(f.status) {
		return regionFailed // a 5xx: the probe is the region's one chance
	}
	return hangEvidence(f)
}

// hangEvidence is what one attempt says of the region when no retry
// followed it (its client left and it stayed on as a witness, or the
// budget refused the retry): a connect error, a timeout or a reset fails
// the region; a 5xx says nothing, since the retry S3 might have served was
// never sent; any other answer means it serves.
func hangEvidence(f *attemptFacts) evidence {
	switch {
	case f.err != nil && failedForRegion(f.err.kind):
		return regionFailed
	case f.err != nil, retryableStatus(f.status):
		return noEvidence
	}
	return regionServed
}

// failOver reports a fetch whose answer another copy should give instead:
// the region could not serve (whether or not the budget let it retry).
// S3's 4xx answers are its word, and a client gone or missing credentials
// are no region's fault.
func failOver(answer upstreamAnswer, err error) bool {
	var perr *proxyError
	if errors.As(err, &perr) {
		return failedForRegion(perr.kind)
	}
	return err == nil && answer.resp == nil && retryableStatus(answer.status)
}
