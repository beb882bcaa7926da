package main

// The S3 client's ground floor: its type, the upstream request and the
// trace a fetch keeps, and one attempt at S3 with the work around it:
// building and signing it, sending it and reading what came back as facts,
// racing a hedge beside it (hedge.go runs the race), keeping it on as its
// bucket's witness when the client leaves, and the background work
// (probes, witnesses) Close waits for. upstream.go's loop is above it.

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// userAgent identifies us in S3 server access logs.
const userAgent = "s3-helper"

// s3Client talks to S3 for the handler. Its fields must be set before the
// first fetch and not changed after.
type s3Client struct {
	// scheme is the upstream scheme, "https" or "http", of routes that do
	// not name their own.
	scheme string
	signer *Signer
	creds  credentialGetter
	// transport sends upstream requests to a host without front ends of
	// its own; it must be shared (keep-alive).
	transport http.RoundTripper
	// fronts spreads requests over S3's front-end addresses; nil means
	// none: transport dials every host.
	fronts *frontDoor
	// metrics may be nil.
	metrics *Metrics
	// log must be set.
	log *slog.Logger
	// policy limits and paces retries, resumes and hedges.
	policy retryPolicy
	// timeout ends an attempt that waits this long on S3 (a body read; the
	// transport bounds the wait for headers), and bounds a probe and a
	// witness; zero means never.
	timeout time.Duration
	// now is the clock; nil means time.Now.
	now clock

	// clockFix corrects the signing time when this host's clock is off.
	clockFix clockCorrection

	races sync.Pool // *fetchRace
	// background is the probes and witnesses Close ends.
	background backgroundWork
}

// upstreamRequest describes the S3 request of one exchange; every attempt
// and resume is built from it, and attempts only read it.
type upstreamRequest struct {
	route  route
	method string
	// client is the inbound request's header, read only: each attempt
	// copies the forwarded ones from it.
	client http.Header
	// key is the client's key, relative to the route (for a replica's uri).
	key string
	// uri and query are canonical and are sent exactly as signed.
	uri   string
	query string
	// ifRange is the client's If-Range, which S3 does not evaluate.
	ifRange ifRange
	// whole is set when the client's Range must be ignored: its If-Range
	// does not hold.
	whole bool
	// rest is set on a resume: the bytes still owed, pinned to the
	// object's version. Its Range and If-Match replace the client's.
	rest *restOfResponse
	// avoid is a front end the first attempt does not go to (the one
	// whose body broke, for a resume); nil for none.
	avoid *frontEnd
}

// resumeOf is the upstream request for the rest of a response whose body
// broke at the front end broken.
func (up *upstreamRequest) resumeOf(rest *restOfResponse, broken *frontEnd) *upstreamRequest {
	r := *up
	r.rest, r.avoid = rest, broken
	return &r
}

// fetchTrace is what the client did for one fetch, for the handler's
// record of the exchange.
type fetchTrace struct {
	// attempts is how many requests S3 saw, hedges and cancelled ones too.
	attempts int
	hedged   bool
	// status is S3's status on the answer; 0 when none came.
	status int
	// s3Code is the last error code S3 gave.
	s3Code string
}

// record adds one attempt's facts to the trace, the TTFB histogram and
// the route's latency window.
func (c *s3Client) record(tr *fetchTrace, up *upstreamRequest, f *attemptFacts) {
	if f.creds == nil {
		return // nothing was sent
	}
	tr.attempts++
	if f.err == nil {
		c.metrics.Observe(mUpstreamTTFB, f.ttfb)
		up.route.latency.observe(f.ttfb)
		tr.status = f.status
	}
	if f.s3.code != "" {
		tr.s3Code = f.s3.code
	}
	if f.skew.implausible {
		reportImplausible(f.skew, c.log)
	}
}

// newRequest builds one signed attempt.
func (c *s3Client) newRequest(ctx context.Context, up *upstreamRequest, creds *Credentials, now time.Time) *http.Request {
	// A Range, User-Agent and the signature's four fit a map of 8, which
	// is one allocation; a larger hint would make it several.
	h := make(http.Header, 8)
	copyRequestHeaders(h, up.client)
	switch {
	case up.rest != nil:
		h["Range"] = []string{up.rest.rangeHeader}
		h["If-Match"] = []string{up.rest.etag}
	case up.whole:
		delete(h, "Range")
	default:
		up.ifRange.condition(h)
	}
	h["User-Agent"] = []string{userAgent}
	base := http.Request{
		Method:     up.method,
		URL:        upstreamURL(cmp.Or(up.route.scheme, c.scheme), up.route.host, up.uri, up.query),
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     h,
		Host:       up.route.host,
	}
	req := base.WithContext(ctx) // base stays on the stack
	in := signingRequest{method: up.method, host: up.route.host, uri: up.uri, query: up.query}
	if v4a := up.route.signer; v4a != nil {
		// Through the interface the request escapes to the heap: only
		// access points pay for that, SigV4 keeps its concrete call.
		escaping := in
		v4a.Sign(h, &escaping, creds, c.clockFix.apply(now))
	} else {
		c.signer.Sign(h, &in, creds, c.clockFix.apply(now))
	}
	return req
}

// credsFor is where rt's requests get their credentials: a directory
// bucket's session cache (express.go), or the role's.
func (c *s3Client) credsFor(rt *route) credentialGetter {
	if rt.creds != nil {
		return rt.creds
	}
	return c.creds
}

// attempt signs and sends one request, to a front end other than avoid
// when there is one, and returns what happened, changing nothing but the
// clock's, credentials' and front ends' state it goes through. The body
// of a passed-on response is watched for stalls.
func (c *s3Client) attempt(ctx context.Context, up *upstreamRequest, avoid *frontEnd) attemptFacts {
	actx, cancel := context.WithCancel(ctx)
	return c.attemptWithin(ctx, actx, cancel, up, c.pickFront(ctx, up, avoid), false)
}

// pickFront is the front end (frontends.go) an attempt at up goes to,
// other than avoid when there is one; nil when the route's host has none
// of its own (an address, a directory bucket dialled where -endpoint
// says, no front ends at all): the shared transport dials it.
func (c *s3Client) pickFront(ctx context.Context, up *upstreamRequest, avoid *frontEnd) *frontEnd {
	if up.route.dialAddr != "" {
		return nil
	}
	return c.fronts.pick(ctx, cmp.Or(up.route.scheme, c.scheme), up.route.host, avoid)
}

// attemptWithin is attempt sent to fe (nil: the shared transport) on
// actx, a context of its own that cancel ends (the body's close, a stall,
// or a hedge race); ctx is the request's (or its witness's), which tells a
// client gone from an attempt cancelled; hedge marks a race's second
// attempt. fe hears the outcome. A dial to fe that fails goes once more to
// another address within the attempt, as net.Dialer tries a name's next
// address: nothing was sent, and an address this host cannot reach (an
// IPv6 one without a route) must not cost a retry.
func (c *s3Client) attemptWithin(ctx, actx context.Context, cancel context.CancelFunc, up *upstreamRequest, fe *frontEnd, hedge bool) attemptFacts {
	now := c.now.read()
	creds, err := c.credsFor(&up.route).Get(ctx, now)
	if err != nil {
		cancel()
		fe.report(frontUnjudged, 0)
		return attemptFacts{err: credentialsFailure(ctx, err)}
	}
	req := c.newRequest(actx, up, creds, now)
	var resp *http.Response
	var sent time.Time
	for try := 0; ; try++ {
		transport := c.transport
		if fe != nil {
			transport = fe.transport
		}
		sent = c.now.read()
		resp, err = transport.RoundTrip(req)
		if err == nil || fe == nil || try > 0 || ctx.Err() != nil || actx.Err() != nil || classifyTransport(err).kind != kindConnect {
			break
		}
		next := c.pickFront(ctx, up, fe)
		fe.report(frontFailed, 0)
		if next == nil || next == fe { // no other address: the failure stands
			next.report(frontUnjudged, 0)
			fe = nil
			break
		}
		fe = next
	}
	f := attemptFacts{creds: creds, front: fe}
	switch {
	case ctx.Err() != nil:
		if resp != nil {
			resp.Body.Close()
		}
		cancel()
		f.err = endedBy(ctx)
		fe.report(frontUnjudged, 0)
		return f
	case err != nil && actx.Err() != nil:
		// The hedge race cancelled it. A first attempt's wait is a lower
		// bound of its time to first byte; a hedge cancelled because the
		// first attempt answered says nothing of its address.
		cancel()
		f.err = classifyTransport(err)
		if hedge {
			fe.report(frontUnjudged, 0)
		} else {
			fe.report(frontOutraced, c.now.read().Sub(sent))
		}
		return f
	case err != nil:
		cancel()
		f.err = classifyTransport(err)
		fe.report(frontFailed, 0)
		return f
	}
	f.ttfb, f.status = c.now.read().Sub(sent), resp.StatusCode
	switch resp.StatusCode {
	case http.StatusInternalServerError, http.StatusBadGateway, http.StatusGatewayTimeout:
		fe.report(frontFailed, 0) // the host failing; 503 SlowDown is S3 asking for less
	default:
		fe.report(frontAnswered, f.ttfb)
	}
	if resp.StatusCode < 300 || resp.StatusCode == http.StatusNotModified {
		resp.Body = watchBody(resp.Body, cancel, c.timeout)
		f.resp = resp
		return f
	}
	f.s3 = readS3Error(resp)
	cancel()
	f.skew = c.clockFix.judge(resp.Header.Get("Date"), f.s3.code, c.now.read())
	return f
}

// credentialsFailure names why an attempt had no credentials: the client
// went away, a directory bucket's zone did not answer CreateSession (the
// zone failing, retried and failed over like any transport failure), or
// none could be had.
func credentialsFailure(ctx context.Context, err error) *proxyError {
	switch {
	case ctx.Err() != nil:
		return endedBy(ctx)
	case zoneCannotServe(err):
		return &proxyError{kind: kindTransport, err: err}
	}
	return &proxyError{kind: kindCredentials, err: err}
}

// errOwnTimeout ends a witness or a probe whose attempt waited the whole
// timeout: s3-helper's own, not a client's patience.
var errOwnTimeout = errors.New("S3 sent no response headers within -timeout")

// endedBy names why ctx ended an attempt: s3-helper's own timeout (a
// witness's, a probe's), or the client going away.
func endedBy(ctx context.Context) *proxyError {
	if cause := context.Cause(ctx); errors.Is(cause, errOwnTimeout) {
		return &proxyError{kind: kindTimeout, err: cause}
	}
	return clientGone(ctx.Err())
}

// race runs one attempt and, when the policy allows and S3 sends no
// response headers within the hedge delay, a second, freshly signed one
// on another connection (hedge.go). It records in tr every attempt S3
// saw, and returns the outcome, what the hedge was paid with, and whether
// the hedge's answer won.
func (c *s3Client) race(ctx context.Context, up *upstreamRequest, tr *fetchTrace, tried retryState, avoid *frontEnd) (attemptFacts, budgetToken, bool) {
	delay, ok := c.policy.hedge.delay(up.route.latency)
	if !ok || !c.policy.mayHedge(up.rest != nil, tr.hedged) {
		f := c.attempt(ctx, up, avoid)
		c.record(tr, up, &f)
		return f, budgetToken{}, false
	}
	fr, _ := c.races.Get().(*fetchRace)
	if fr == nil {
		fr = &fetchRace{}
	}
	fr.c, fr.ctx, fr.up, fr.tried, fr.avoid = c, ctx, *up, tried, avoid
	start := c.now.read()
	res := fr.race.runHedged(ctx, delay, fr)
	hedge := fr.hedge
	fr.c, fr.ctx, fr.up, fr.tried, fr.hedge, fr.avoid = nil, nil, upstreamRequest{}, retryState{}, budgetToken{}, nil // the pool keeps no request's state
	fr.first.Store(nil)
	c.races.Put(fr)
	if !res.hedged {
		c.record(tr, up, &res.outcome)
		return res.outcome, budgetToken{}, false
	}
	tr.hedged = true
	c.recordOther(tr, up, &res.other, res.cancelled, tried)
	c.record(tr, up, &res.outcome)
	if res.winner == 2 {
		if res.cancelled {
			// The first attempt was cancelled after waiting at least this
			// long, which the latency window learns.
			up.route.latency.observe(c.now.read().Sub(start))
		}
		c.metrics.Inc(mHedgesWon)
	}
	return res.outcome, hedge, res.winner == 2
}

// recordOther records the attempt of a hedged pair that did not give the
// outcome: S3 saw it, and a failure the policy would retry is counted as
// the fetch loop counts its own; one the race cancelled is neither an
// answer nor an error.
func (c *s3Client) recordOther(tr *fetchTrace, up *upstreamRequest, f *attemptFacts, cancelled bool, tried retryState) {
	if cancelled {
		c.metrics.Inc(mHedgeCancels)
		if f.creds != nil {
			tr.attempts++
		}
		return
	}
	if d := decide(f, tried); d.verdict == retryLater {
		c.metrics.UpstreamError(d.err.kind)
	}
	c.record(tr, up, f)
}

// fetchRace is one fetch's attempts as a hedge race runs them, pooled with
// the race's state.
type fetchRace struct {
	race hedgeRace[attemptFacts]
	c    *s3Client
	ctx  context.Context
	// up is a copy of the fetch's upstream request: a pointer kept here
	// would move every request's to the heap.
	up    upstreamRequest
	tried retryState
	// hedge is what the hedge was paid with, once admitted.
	hedge budgetToken
	// avoid is the front end the attempt before the race went to; first
	// the one the race's first attempt went to, which the hedge avoids.
	avoid *frontEnd
	first atomic.Pointer[frontEnd]
}

// sendAttempt sends attempt n: the first to another front end than the
// attempt before the race, the hedge to another than the first.
func (fr *fetchRace) sendAttempt(actx context.Context, cancel context.CancelFunc, n int) attemptFacts {
	avoid := fr.avoid
	if n == 2 {
		avoid = fr.first.Load()
	}
	fe := fr.c.pickFront(fr.ctx, &fr.up, avoid)
	if n == 1 {
		fr.first.Store(fe)
	}
	return fr.c.attemptWithin(fr.ctx, actx, cancel, &fr.up, fe, n == 2)
}

// wins is the policy's word: an answer that passes on.
func (fr *fetchRace) wins(f attemptFacts) bool { return commits(&f, fr.tried) }

// allowHedge takes the hedge from the cap and pays for it from the budget.
func (fr *fetchRace) allowHedge() bool {
	rp := &fr.c.policy
	if !rp.hedges.take() {
		fr.c.metrics.Count(mBudgetRefused, refusedHedgeRate, 1)
		return false
	}
	tok, ok := rp.budget.spend(retryCost)
	if !ok {
		rp.hedges.giveBack() // not sent, so not counted against the cap
		fr.c.metrics.Count(mBudgetRefused, refusedHedge, 1)
		return false
	}
	fr.hedge = tok
	fr.c.metrics.Inc(mHedges)
	return true
}

// drop closes the body of an answer that lost the race.
func (fr *fetchRace) drop(f attemptFacts) {
	if f.resp != nil {
		f.resp.Body.Close()
	}
}

// witness keeps a fetch's attempts running when its client leaves while
// they wait on S3, so the region's own timeout, not the client's patience,
// says whether it hangs: a nginx or player that gives up after 3 s would
// otherwise never let a hanging region be found (-timeout is 5 s). A
// bucket keeps at most markDownAfter witnesses at once; a fetch that finds
// no place is cancelled as usual. A nil *witness is a fetch from a bucket
// without replicas: nothing to witness for.
type witness struct {
	c      *s3Client
	health *bucketHealth
	wctx   context.Context
	cancel context.CancelCauseFunc

	mu sync.Mutex // guards the fields below
	// sent is when the attempt in flight was sent.
	sent time.Time
	// deadline ends a kept fetch's attempt -timeout after it was sent.
	deadline *time.Timer
	// kept is set while the fetch stays on for a client that left; ended
	// once the fetch returned.
	kept, ended bool
}

// witness prepares a fetch from a bucket with health to witness: its
// attempts run on a context the client's leaving does not end by itself.
func (c *s3Client) witness(ctx context.Context, h *bucketHealth) *witness {
	if h == nil {
		return nil
	}
	w := &witness{c: c, health: h}
	w.wctx, w.cancel = context.WithCancelCause(context.WithoutCancel(ctx))
	context.AfterFunc(ctx, w.clientLeft)
	return w
}

// ctx is the context the fetch's attempts run on.
func (w *witness) ctx(ctx context.Context) context.Context {
	if w == nil {
		return ctx
	}
	return w.wctx
}

// attemptSent notes when the attempt in flight was sent; a kept fetch's
// deadline then runs from it.
func (w *witness) attemptSent(t time.Time) {
	if w == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.sent = t
	if w.deadline != nil {
		w.deadline.Reset(w.c.timeout)
	}
}

// on reports whether the fetch stayed on for a client that left.
func (w *witness) on() bool {
	if w == nil {
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.kept
}

// clientLeft runs when the request's context ends: the attempts stay on
// until the timeout if a witness's place is free, and are cancelled
// otherwise (or once the fetch has returned: a body being read must end
// with its client).
func (w *witness) clientLeft() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ended || w.c.timeout <= 0 || !w.health.takeWitness() {
		w.cancel(context.Canceled)
		return
	}
	closing, ok := w.c.background.start()
	if !ok {
		w.health.endWitness()
		w.cancel(context.Canceled)
		return
	}
	w.kept = true
	left := w.c.timeout
	if !w.sent.IsZero() { // else no attempt was sent yet: it will be now
		left = max(left-w.c.now.read().Sub(w.sent), 0)
	}
	w.deadline = time.NewTimer(left)
	deadline := w.deadline.C
	go func() {
		defer w.c.background.done()
		select {
		case <-deadline:
			w.cancel(errOwnTimeout)
		case <-closing:
			w.cancel(context.Canceled)
		case <-w.wctx.Done():
		}
	}()
}

// end marks the fetch returned and frees its witness's place.
func (w *witness) end() {
	if w == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ended = true
	if w.kept {
		w.kept = false
		w.deadline.Stop()
		w.health.endWitness()
		w.cancel(context.Canceled)
	}
}
