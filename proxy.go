package main

// The request path: method gate → key mapping → upstream request → sign →
// round trip with retries → stream (resuming after a mid-body failure) →
// error mapping.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// copyBufferBytes is the streaming buffer size. Every response in
	// flight holds one, so it bounds memory under many slow clients (1000
	// clients: 16 MiB); larger buffers measured no faster on 256 KiB ranges.
	copyBufferBytes = 32 << 10
	// maxLoggedMethodBytes and maxLoggedRangeBytes bound client text in log
	// lines; slog quotes what remains. Keys are bounded by maxKeyBytes.
	maxLoggedMethodBytes = 16
	maxLoggedRangeBytes  = 128
	// userAgent identifies us in S3 server access logs.
	userAgent = "s3-helper"
)

// Proxy is an http.Handler that serves GET and HEAD for object keys from S3,
// signing each upstream request. Its fields must be set before the first
// request and not changed after.
type Proxy struct {
	// routes is ordered longest pathPrefix first.
	routes []route
	// scheme is the upstream scheme, "https" or "http".
	scheme string
	signer *Signer
	creds  credentialGetter
	// transport sends upstream requests; it must be shared (keep-alive).
	transport http.RoundTripper
	// metrics may be nil.
	metrics *Metrics
	// log must be set.
	log       *slog.Logger
	accessLog bool
	// policy limits and paces retries and resumes.
	policy retryPolicy
	// bodyTimeout ends an attempt whose body sends nothing for this long;
	// zero means never.
	bodyTimeout time.Duration
	// now is the clock; nil means time.Now.
	now clock

	// clockFix corrects the signing time when this host's clock is off.
	clockFix clockCorrection

	bufs     sync.Pool
	races    sync.Pool
	inFlight atomic.Int64
	// draining is set when shutdown begins; cutting once its time is up
	// and the requests still in flight are being cut.
	draining, cutting atomic.Bool
	// idle is signalled when the last request in flight ends while cutting.
	idle chan struct{}
}

// badRequest is a client error answered with status and a generic reason.
func badRequest(status int, err error) *proxyError {
	return &proxyError{status: status, kind: "client", public: clientReason(err), err: err}
}

// exchange is the state of one client request.
type exchange struct {
	start       time.Time
	method      string
	remote      string
	key         string
	rangeHeader string
	// status is what the client was answered.
	status int
	// upstreamStatus is S3's status on the response the client's answer
	// started from (after retries, before any resume).
	upstreamStatus int
	s3Code         string
	bytes          int64
	attempts       int
	resumes        int
	// hedged is set once a hedge was sent: at most one per exchange.
	hedged bool
	err    error
}

// signerFor is the route's signer: SigV4A for a Multi-Region Access
// Point, else the proxy's SigV4 signer.
func (p *Proxy) signerFor(rt *route) requestSigner {
	if rt.signer != nil {
		return rt.signer
	}
	return p.signer
}

// InFlight returns how many requests are being served.
func (p *Proxy) InFlight() int64 { return p.inFlight.Load() }

// bucketState is one configured bucket with replicas, or a replica, for
// /healthz and the bucket_up gauge.
type bucketState struct {
	bucket, region string
	up             bool
}

// bucketStates lists every bucket with replicas and each replica, and
// whether some route has no copy up (all marked down).
func (p *Proxy) bucketStates() (states []bucketState, noCopyUp bool) {
	listed := map[*bucketHealth]bool{} // routes to one bucket share it
	for _, rt := range p.routes {
		if rt.health == nil {
			continue
		}
		anyUp := false
		for _, c := range append([]route{rt}, rt.replicas...) {
			up := c.health.Up()
			anyUp = anyUp || up
			if !listed[c.health] {
				listed[c.health] = true
				states = append(states, bucketState{c.bucket, cmp.Or(c.region, p.signer.Region), up})
			}
		}
		noCopyUp = noCopyUp || !anyUp
	}
	return states, noCopyUp
}

// Draining reports whether shutdown has begun.
func (p *Proxy) Draining() bool { return p.draining.Load() }

// endRequest counts a request out, and tells awaitIdle when the last one
// cut at shutdown has ended.
func (p *Proxy) endRequest() {
	if p.inFlight.Add(-1) == 0 && p.cutting.Load() && p.idle != nil {
		select {
		case p.idle <- struct{}{}:
		default:
		}
	}
}

// awaitIdle waits, at most d, until no request is in flight; p.cutting
// must be set.
func (p *Proxy) awaitIdle(d time.Duration) {
	if p.InFlight() == 0 || p.idle == nil {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.idle:
	case <-t.C:
	}
}

// ServeHTTP serves one GET or HEAD.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	x := exchange{start: p.now.read(), method: r.Method, remote: r.RemoteAddr}
	if len(r.TransferEncoding) > 0 {
		// A GET or HEAD with a chunked body: net/http drops a
		// Content-Length beside it, and RFC 9112 §6.1 says the
		// connection must close after such a request (the
		// precondition for request smuggling).
		w.Header().Set("Connection", "close")
	}
	p.inFlight.Add(1)
	defer p.endRequest()
	defer p.finish(r.Context(), &x)
	up, err := p.upstreamFor(r, &x)
	if err != nil {
		p.fail(w, r, &x, err)
		return
	}
	answer, err := p.fetch(r.Context(), &up, &x, 0)
	if err != nil {
		p.fail(w, r, &x, err)
		return
	}
	p.respond(w, r, answer, &up, &x)
}

// upstreamFor checks the client's request and describes the S3 request
// that serves it.
func (p *Proxy) upstreamFor(r *http.Request, x *exchange) (upstreamRequest, error) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return upstreamRequest{}, badRequest(http.StatusMethodNotAllowed, fmt.Errorf("method %q not allowed: read-only", clip(r.Method, maxLoggedMethodBytes)))
	}
	if n := requestHeaderBytes(r); n > maxRequestHeaderBytes {
		return upstreamRequest{}, badRequest(http.StatusRequestHeaderFieldsTooLarge, fmt.Errorf("%w: %d bytes, limit %d", errHeaderTooLarge, n, maxRequestHeaderBytes))
	}
	if vs := r.Header["Range"]; len(vs) == 1 {
		x.rangeHeader = vs[0]
	}
	rt, key, err := mapPath(p.routes, r.URL.Path)
	x.key = key
	if errors.Is(err, errNoKey) {
		return upstreamRequest{}, badRequest(http.StatusNotFound, err)
	}
	if err != nil {
		return upstreamRequest{}, badRequest(http.StatusBadRequest, err)
	}
	params, dropped, err := filterQuery(r.URL.RawQuery)
	if err != nil {
		return upstreamRequest{}, badRequest(http.StatusBadRequest, err)
	}
	if dropped > 0 {
		p.log.Debug("dropped query parameters", "key", key, "count", dropped)
	}
	if err := checkRequestHeaders(r.Header); err != nil {
		return upstreamRequest{}, badRequest(http.StatusBadRequest, err)
	}
	return upstreamRequest{route: rt, method: r.Method, client: r.Header, key: key,
		uri: rt.uri(key), query: canonicalQuery(params)}, nil
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
	// rest is set on a resume: the bytes still owed, pinned to the
	// object's version. Its Range and If-Match replace the client's.
	rest *restOfResponse
}

// resumeOf is the upstream request for the rest of a response.
func (up *upstreamRequest) resumeOf(rest *restOfResponse) *upstreamRequest {
	r := *up
	r.rest = rest
	return &r
}

// newRequest builds one signed attempt.
func (p *Proxy) newRequest(ctx context.Context, up *upstreamRequest, creds *Credentials, now time.Time) *http.Request {
	h := make(http.Header, len(forwardedRequestHeaders)+5)
	copyRequestHeaders(h, up.client)
	if up.rest != nil {
		h["Range"] = []string{up.rest.rangeHeader}
		h["If-Match"] = []string{up.rest.etag}
	}
	h["User-Agent"] = []string{userAgent}
	req := &http.Request{
		Method:     up.method,
		URL:        upstreamURL(cmp.Or(up.route.scheme, p.scheme), up.route.host, up.uri, up.query),
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     h,
		Host:       up.route.host,
	}
	req = req.WithContext(ctx)
	in := signingRequest{method: up.method, host: up.route.host, uri: up.uri, query: up.query}
	if v4a := up.route.signer; v4a != nil {
		// Through the interface the request escapes to the heap: only
		// access points pay for that, SigV4 keeps its concrete call.
		escaping := in
		v4a.Sign(h, &escaping, creds, p.clockFix.apply(now))
	} else {
		p.signer.Sign(h, &in, creds, p.clockFix.apply(now))
	}
	return req
}

// fetch gets S3's answer from the route's bucket or, when its region cannot
// serve, from its replicas in order: only for the answer itself (a resume
// stays with the bucket that started the response: the ETag pins the
// object there), only after the retry policy gave up, and never for an
// answer that is S3's word (4xx). A bucket marked down is skipped but for
// its probes. up.route is left on the copy that answered.
func (p *Proxy) fetch(ctx context.Context, up *upstreamRequest, x *exchange, spent int64) (upstreamAnswer, error) {
	if up.rest == nil {
		p.policy.hedges.earn() // once per request: the cap is a share of requests
	}
	if up.rest != nil || len(up.route.replicas) == 0 {
		return p.fetchFrom(ctx, up, x, spent)
	}
	copies := append(make([]route, 0, 1+len(up.route.replicas)), up.route)
	copies = append(copies, up.route.replicas...)
	order := copiesToTry(copies, p.now.read())
	var answer upstreamAnswer
	var err error
	for i, c := range order {
		try := *up
		try.route, try.uri = c.route, c.route.uri(up.key)
		answer, err = p.fetchFrom(ctx, &try, x, spent)
		down := regionCannotServe(answer, err)
		p.reportHealth(&c.route, !down, c.probe)
		*up = try
		if !down || ctx.Err() != nil {
			return answer, err
		}
		if i+1 < len(order) {
			p.metrics.Inc(mFailovers)
			p.log.Debug("failing over", "key", x.key, "from", c.route.bucket, "to", order[i+1].route.bucket, "err", err, "status", answer.status)
		}
	}
	return answer, err
}

// reportHealth records how a fetch from rt ended and logs a transition.
func (p *Proxy) reportHealth(rt *route, served, probe bool) {
	switch rt.health.report(served, probe, p.now.read()) {
	case markedDown:
		p.log.Warn("bucket marked down: its region keeps failing; requests go to its replica, and a probe tries it again every few seconds",
			"bucket", rt.bucket, "region", cmp.Or(rt.region, p.signer.Region), "failures", markDownAfter)
	case cameBack:
		p.log.Info("bucket back up: it answered a probe; it takes its traffic back", "bucket", rt.bucket, "region", cmp.Or(rt.region, p.signer.Region))
	}
}

// fetchFrom sends up until S3 answers for good: each attempt (hedged when
// S3 is slow to answer) returns its facts, decide says what they call for,
// and fetchFrom applies it (a correction, or a paced retry the policy and
// the budget allow) and records the exchange. spent is what the budget
// already paid for the first attempt (a resume's cost, or 0). The error is
// set only when no answer can be passed on.
func (p *Proxy) fetchFrom(ctx context.Context, up *upstreamRequest, x *exchange, spent int64) (upstreamAnswer, error) {
	tried := retryState{spent: spent}
	for {
		f := p.race(ctx, up, x)
		p.record(x, up, &f)
		d := decide(&f, tried)
		switch d.verdict {
		case passOn:
			if d.err != nil {
				return upstreamAnswer{}, d.err
			}
			if f.resp != nil {
				spent := tried.spent
				if f.hedgeWon { // the hedge was a retry that succeeded
					spent += retryCost
				}
				p.policy.budget.succeeded(spent)
			}
			return f.answer(), nil
		case signAgain:
			if p.correct(ctx, d.fix, &f, x, &tried) {
				continue
			}
			return f.answer(), nil
		}
		p.metrics.UpstreamError(d.err.kind)
		if !p.policy.retry(&tried) {
			return giveUp(&f, d)
		}
		cost := retryCostOf(d.err)
		if !p.policy.budget.spend(cost) {
			p.metrics.Count(mBudgetRefused, refusedRetry, 1)
			return giveUp(&f, d)
		}
		tried.spent = cost
		p.metrics.Inc(mRetries)
		p.log.Debug("retrying upstream", "key", x.key, "attempt", tried.retries, "err", d.err, "s3_code", f.s3.code)
		if err := sleepCtx(ctx, p.policy.wait(tried.retries, d.throttled)); err != nil {
			return upstreamAnswer{}, clientGone(err)
		}
	}
}

// giveUp is what a failed fetch passes on when it may not retry: S3's own
// last answer, or the transport failure.
func giveUp(f *attemptFacts, d decision) (upstreamAnswer, error) {
	if f.status != 0 {
		return f.answer(), nil
	}
	return upstreamAnswer{}, d.err
}

// race runs one attempt and, when the policy allows and S3 sends no
// response headers within the hedge delay, a second, freshly signed one on
// another connection: the first to get response headers wins and the other
// is cancelled (its connection closed). Both have ended when race returns.
func (p *Proxy) race(ctx context.Context, up *upstreamRequest, x *exchange) attemptFacts {
	if !p.policy.mayHedge(up.rest != nil, x.hedged) {
		return p.attempt(ctx, up)
	}
	delay, ok := p.policy.hedge.delay(up.route.latency)
	if !ok {
		return p.attempt(ctx, up)
	}
	r := p.getRace(ctx, up)
	defer p.races.Put(r)
	// The first attempt's context ends with the request's unless the
	// hedge wins or there is no body to read: a winner's body is read
	// after race returns.
	actx, cancel := context.WithCancel(ctx)
	r.cancel[0] = cancel
	start := p.now.read()
	r.timer.Reset(delay)
	f := p.attemptWithin(ctx, actx, cancel, up)
	if !r.timer.Stop() {
		<-r.fired // fire ran: a hedge was started, or refused
	}
	won := r.settle(1)
	if !r.started {
		return f
	}
	x.hedged = true
	x.attempts++ // S3 saw both
	hedge := <-r.hedgeDone
	if won {
		return f
	}
	// The hedge answered first: the first attempt was cancelled after
	// waiting at least this long, which the latency window learns.
	if f.resp != nil {
		f.resp.Body.Close()
	}
	up.route.latency.observe(p.now.read().Sub(start))
	p.metrics.Inc(mHedgesWon)
	hedge.hedgeWon = true
	return hedge
}

// hedgeRace is the state one hedged attempt shares with its hedge. It is
// pooled with its timer and channels, so a race whose hedge never fires
// allocates nothing of its own.
type hedgeRace struct {
	p     *Proxy
	timer *time.Timer // runs fire
	// fired receives once each time fire has run.
	fired chan struct{}
	// hedgeDone receives the hedge's facts once it ended.
	hedgeDone chan attemptFacts
	ctx       context.Context
	// up is a copy of the exchange's upstream request, for the hedge.
	up upstreamRequest

	mu sync.Mutex // guards winner, started and cancel
	// winner is 1 (the first attempt) or 2 (the hedge) once one got
	// response headers; 0 before.
	winner  int
	started bool
	cancel  [2]context.CancelFunc
}

// getRace takes a reset race from the pool.
func (p *Proxy) getRace(ctx context.Context, up *upstreamRequest) *hedgeRace {
	r, ok := p.races.Get().(*hedgeRace)
	if !ok {
		r = &hedgeRace{p: p, fired: make(chan struct{}, 1), hedgeDone: make(chan attemptFacts, 1)}
		r.timer = time.AfterFunc(time.Hour, r.fire)
		r.timer.Stop()
	}
	r.ctx, r.up = ctx, *up
	r.winner, r.started, r.cancel = 0, false, [2]context.CancelFunc{}
	return r
}

// fire sends the hedge, unless the first attempt already answered or the
// budget or the hedge cap refuse it.
func (r *hedgeRace) fire() {
	defer func() { r.fired <- struct{}{} }()
	r.mu.Lock()
	if r.winner != 0 {
		r.mu.Unlock()
		return
	}
	if !r.p.policy.hedges.take() {
		r.mu.Unlock()
		r.p.metrics.Count(mBudgetRefused, refusedHedgeRate, 1)
		return
	}
	if !r.p.policy.budget.spend(retryCost) {
		r.p.policy.hedges.giveBack() // not sent, so not counted against the cap
		r.mu.Unlock()
		r.p.metrics.Count(mBudgetRefused, refusedHedge, 1)
		return
	}
	hctx, cancel := context.WithCancel(r.ctx)
	r.cancel[1] = cancel
	r.started = true
	r.mu.Unlock()
	r.p.metrics.Inc(mHedges)
	ctx, up := r.ctx, &r.up
	go func() {
		f := r.p.attemptWithin(ctx, hctx, cancel, up)
		if !r.settle(2) && f.resp != nil {
			f.resp.Body.Close()
		}
		r.hedgeDone <- f
	}()
}

// settle claims the race for attempt n (1 or 2) when it is still open and
// cancels the other, reporting whether n won. A loser's connection is
// closed, and that is counted: the next request must dial (and with TLS,
// handshake) again.
func (r *hedgeRace) settle(n int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.winner != 0 {
		return r.winner == n
	}
	r.winner = n
	if r.started {
		r.cancel[2-n]()
		r.p.metrics.Inc(mHedgeCancels)
	}
	return true
}

// record is the one writer of the exchange's record of its attempts.
func (p *Proxy) record(x *exchange, up *upstreamRequest, f *attemptFacts) {
	if f.creds == nil {
		return // nothing was sent
	}
	x.attempts++
	if f.err == nil {
		p.metrics.Observe(mUpstreamTTFB, f.ttfb)
		up.route.latency.observe(f.ttfb)
		if up.rest == nil { // a resume's 206 is not what the client was answered
			x.upstreamStatus = f.status
		}
	}
	if f.s3.code != "" {
		x.s3Code = f.s3.code
	}
	if f.skew.implausible {
		reportImplausible(f.skew, p.log)
	}
}

// correct applies the fix a signAgain names and reports whether signing
// again can help. Each fix is tried once per fetch.
func (p *Proxy) correct(ctx context.Context, fx fix, f *attemptFacts, x *exchange, tried *retryState) bool {
	switch fx {
	case adoptClock:
		tried.reclocked = true
		p.clockFix.adopt(f.skew, p.now.read(), p.log)
		return true
	case refreshCredentials:
		tried.refreshed = true
		if _, err := p.creds.Refresh(ctx, f.creds); err != nil {
			return false
		}
		p.log.Warn("S3 rejected the credentials; retrying with a fresh set", "key", x.key,
			"s3_code", f.s3.code, "rejected_access_key_id", f.creds.AccessKeyID)
		return true
	}
	return false
}

// attempt signs and sends one request and returns what happened, changing
// nothing but the clock's and credentials' caches it reads through. The
// body of a passed-on response is watched for stalls.
func (p *Proxy) attempt(ctx context.Context, up *upstreamRequest) attemptFacts {
	actx, cancel := context.WithCancel(ctx)
	return p.attemptWithin(ctx, actx, cancel, up)
}

// attemptWithin is attempt sent on actx, a context of its own that cancel
// ends (the body's close, a stall, or a hedge race); ctx is the request's,
// which tells a client gone from an attempt cancelled.
func (p *Proxy) attemptWithin(ctx, actx context.Context, cancel context.CancelFunc, up *upstreamRequest) attemptFacts {
	now := p.now.read()
	creds, err := p.creds.Get(ctx, now)
	if err != nil {
		cancel()
		if ctx.Err() != nil {
			return attemptFacts{err: clientGone(ctx.Err())}
		}
		return attemptFacts{err: &proxyError{status: http.StatusServiceUnavailable, kind: kindCredentials, err: err}}
	}
	f := attemptFacts{creds: creds}
	req := p.newRequest(actx, up, creds, now)
	sent := p.now.read()
	resp, err := p.transport.RoundTrip(req)
	switch {
	case ctx.Err() != nil:
		if resp != nil {
			resp.Body.Close()
		}
		cancel()
		f.err = clientGone(ctx.Err())
		return f
	case err != nil:
		cancel()
		f.err = classifyTransport(err)
		return f
	}
	f.ttfb, f.status = p.now.read().Sub(sent), resp.StatusCode
	if resp.StatusCode < 300 || resp.StatusCode == http.StatusNotModified {
		resp.Body = watchBody(resp.Body, cancel, p.bodyTimeout)
		f.resp = resp
		return f
	}
	f.s3 = readS3Error(resp)
	cancel()
	f.skew = p.clockFix.judge(resp.Header.Get("Date"), f.s3.code, p.now.read())
	return f
}

// respond passes S3's answer on: a success streams its body; an error
// answer becomes S3's status with a short text of our own (the XML body
// never reaches the client), except a redirect, which is our
// misconfiguration and a 502.
func (p *Proxy) respond(w http.ResponseWriter, r *http.Request, answer upstreamAnswer, up *upstreamRequest, x *exchange) {
	if answer.resp == nil {
		p.metrics.S3Error(answer.s3.code, answer.status)
		cause := fmt.Errorf("S3 answered %d", answer.status)
		if answer.s3.code != "" {
			cause = fmt.Errorf("S3 answered %d %s", answer.status, answer.s3.code)
		}
		if hint := regionHint(answer.status, answer.s3); hint != "" {
			cause = fmt.Errorf("%w: %s", cause, hint)
		}
		status := answer.status
		if status < 400 { // 301 PermanentRedirect, 307 TemporaryRedirect: nginx cannot follow them
			status = http.StatusBadGateway
		}
		p.fail(w, r, x, &proxyError{status: status, err: cause})
		return
	}
	resp := answer.resp
	x.status = resp.StatusCode
	copyResponseHeaders(w.Header(), resp.Header)
	w.WriteHeader(resp.StatusCode)
	if r.Method == http.MethodHead || resp.StatusCode == http.StatusNotModified || resp.StatusCode == http.StatusNoContent {
		resp.Body.Close()
		return
	}
	p.stream(r.Context(), w, resp, up, x)
}

// fail is the one place a failure becomes an answer: it records the status
// and cause for the log line and metrics, and writes the status with a
// one-line text (none for HEAD, nothing at all when the client is gone).
func (p *Proxy) fail(w http.ResponseWriter, r *http.Request, x *exchange, err error) {
	var perr *proxyError
	if !errors.As(err, &perr) {
		perr = &proxyError{status: http.StatusBadGateway, kind: "internal", err: err}
	}
	x.status, x.err = perr.status, perr
	if perr.status == statusClientGone {
		return
	}
	body := strconv.Itoa(perr.status) + " " + http.StatusText(perr.status)
	if perr.public != "" {
		body += ": " + perr.public
	}
	body += "\n"
	h := w.Header()
	if perr.status == http.StatusMethodNotAllowed {
		h.Set("Allow", "GET, HEAD")
	}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(perr.status)
	if r.Method != http.MethodHead {
		io.WriteString(w, body)
	}
}

// clientReason is the cause of a rejection as the client may see it:
// generic, without echoing the input.
func clientReason(err error) string {
	switch {
	case errors.Is(err, errInvalidKey):
		return "invalid object key"
	case errors.Is(err, errNoKey):
		return "no such object"
	case errors.Is(err, errBadQuery):
		return "invalid query string"
	case errors.Is(err, errBadRequestHeader):
		return "invalid request header"
	case errors.Is(err, errHeaderTooLarge):
		return "request header too large"
	}
	return "request not allowed"
}

// finish logs the exchange once and records its metrics.
func (p *Proxy) finish(ctx context.Context, x *exchange) {
	dur := p.now.read().Sub(x.start)
	if x.status == statusClientGone && p.cutting.Load() {
		// s3-helper closed the connection, not the client.
		x.status = http.StatusServiceUnavailable
		x.err = fmt.Errorf("cut at shutdown after %d bytes: -shutdown-timeout expired while the request was in flight", x.bytes)
	}
	status := x.status
	if status == 0 {
		status = http.StatusOK
	}
	p.metrics.Request(x.method, status, x.bytes, dur)
	level := slog.LevelInfo
	switch {
	case x.err == nil && !p.accessLog:
		return
	case status == statusClientGone:
		level = slog.LevelInfo
	case status >= 500 || status == http.StatusForbidden:
		level = slog.LevelError
	case x.err != nil && status >= 400 && status != http.StatusNotFound && status != http.StatusNotModified &&
		status != http.StatusPreconditionFailed && status != http.StatusRequestedRangeNotSatisfiable:
		level = slog.LevelWarn
	}
	msg := "request"
	if x.err != nil && level > slog.LevelInfo {
		msg = "request failed"
	}
	attrs := []slog.Attr{
		slog.String("method", clip(x.method, maxLoggedMethodBytes)),
		slog.String("key", clip(x.key, maxKeyBytes)),
		slog.Int("status", status),
		slog.Int("upstream_status", x.upstreamStatus),
		slog.Int64("bytes", x.bytes),
		slog.Duration("dur", dur),
		slog.Int("attempts", x.attempts),
		slog.Int("resumes", x.resumes),
		slog.Bool("hedged", x.hedged),
		slog.String("remote", x.remote),
	}
	if x.rangeHeader != "" {
		attrs = append(attrs, slog.String("range", clip(x.rangeHeader, maxLoggedRangeBytes)))
	}
	if x.s3Code != "" {
		attrs = append(attrs, slog.String("s3_code", x.s3Code))
	}
	if x.err != nil {
		attrs = append(attrs, slog.String("err", x.err.Error()))
	}
	p.log.LogAttrs(ctx, level, msg, attrs...)
}

// getBuffer takes a copy buffer from the pool.
func (p *Proxy) getBuffer() *[]byte {
	if b, ok := p.bufs.Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, copyBufferBytes)
	return &b
}

// stream copies the body to the client. When S3 fails mid-body and the
// response has an ETag, the rest is fetched with a freshly signed Range
// pinned by If-Match and appended to the same client response. When that
// is impossible the client connection is aborted: the status was sent, and
// a broken connection is the only honest answer left (httputil.ReverseProxy
// does the same), never a short body that looks complete.
func (p *Proxy) stream(ctx context.Context, w http.ResponseWriter, resp *http.Response, up *upstreamRequest, x *exchange) {
	buf := p.getBuffer()
	defer p.bufs.Put(buf)
	plan, resumable := planResume(resp)
	body := resp.Body
	defer func() { body.Close() }()
	for {
		n, err := copyBody(w, body, *buf)
		x.bytes += n
		plan.done += n
		switch {
		case err == nil:
			return
		case errors.Is(err, errClientWrite) || ctx.Err() != nil:
			x.status, x.err = statusClientGone, fmt.Errorf("client went away after %d bytes: %w", x.bytes, err)
			return
		case !resumable || !p.policy.resume(x.resumes) || plan.complete():
			p.metrics.UpstreamError("body")
			p.abort(x, fmt.Errorf("upstream body failed after %d bytes, aborting the client response: %w", x.bytes, err))
		case !p.policy.budget.spend(retryCost):
			p.metrics.UpstreamError("body")
			p.metrics.Count(mBudgetRefused, refusedResume, 1)
			p.abort(x, fmt.Errorf("upstream body failed after %d bytes and the retry budget is empty, aborting the client response: %w", x.bytes, err))
		}
		x.resumes++
		p.metrics.Inc(mResumes)
		p.log.Info("resuming upstream body", "key", x.key, "after_bytes", x.bytes, "err", err)
		answer, err := p.fetch(ctx, up.resumeOf(plan.rest()), x, retryCost)
		var next io.ReadCloser
		if err == nil {
			next, err = plan.acceptRest(answer.resp, answer.status)
		}
		if err != nil {
			p.abort(x, fmt.Errorf("resume after %d bytes failed, aborting the client response: %w", x.bytes, err))
		}
		body.Close()
		body = next
	}
}

// abort ends a response whose status was already sent.
func (p *Proxy) abort(x *exchange, err error) {
	x.status, x.err = http.StatusBadGateway, err
	panic(http.ErrAbortHandler)
}
