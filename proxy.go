package main

// The handler: method gate → key mapping → the S3 client (upstream.go) →
// stream the answer, resuming after a mid-body failure → one answer for
// every failure (answers.go) → the access log line; and the drain at
// shutdown. Only the handler writes the exchange's record.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
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
)

// Proxy is an http.Handler that serves GET and HEAD for object keys from S3
// through its S3 client. Its fields must be set before the first request
// and not changed after.
type Proxy struct {
	// routes is ordered longest pathPrefix first.
	routes []route
	// upstream gets S3's answers; it must be set.
	upstream *s3Client
	// metrics may be nil.
	metrics *Metrics
	// log must be set.
	log       *slog.Logger
	accessLog bool
	// now is the clock; nil means time.Now.
	now clock

	bufs     bufferPool // of copyBufferBytes
	inFlight atomic.Int64
	// draining is set when shutdown begins; cutting once its time is up
	// and the requests still in flight are being cut.
	draining, cutting atomic.Bool
	// idle is signalled when the last request in flight ends while cutting.
	idle chan struct{}
}

// badRequest is a request s3-helper refuses; answerFor chooses the status
// from the cause.
func badRequest(err error) *proxyError { return &proxyError{kind: kindClient, err: err} }

// exchange is the state of one client request.
type exchange struct {
	start  time.Time
	method string
	remote string
	// key is the client's, relative to its route; bucket and s3Key are
	// the object S3 was asked for (the copy that answered, after a
	// failover).
	key, bucket, s3Key string
	rangeHeader        string
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

// add takes what the S3 client did into the record; answer marks the
// fetch of the answer itself, whose status the client's started from.
func (x *exchange) add(tr fetchTrace, answer bool) {
	x.attempts += tr.attempts
	x.hedged = x.hedged || tr.hedged
	if answer {
		x.upstreamStatus = tr.status
	}
	if tr.s3Code != "" {
		x.s3Code = tr.s3Code
	}
}

// InFlight returns how many requests are being served.
func (p *Proxy) InFlight() int64 { return p.inFlight.Load() }

// BudgetTokens returns what the retry budget holds; false when there is
// no budget.
func (p *Proxy) BudgetTokens() (func() int64, bool) { return p.upstream.budgetTokens() }

// ClockOffset is how far S3's clock is ahead of this host's, as signing
// applies it.
func (p *Proxy) ClockOffset(now time.Time) time.Duration { return p.upstream.clockOffset(now) }

// Close ends the S3 client's background work (probes, witnesses) and the
// directory buckets' session refreshes.
func (p *Proxy) Close() {
	p.upstream.Close()
	closeSessions(p.routes)
}

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
				states = append(states, bucketState{c.bucket, p.upstream.regionOf(&c), up})
			}
		}
		noCopyUp = noCopyUp || !anyUp
	}
	return states, noCopyUp
}

// bucketFrontEnds lists every bucket (each route's and each replica's,
// once) whose endpoint name has front-end addresses of its own, with them.
func (p *Proxy) bucketFrontEnds() (buckets []string, sets []*frontEnds) {
	for _, rt := range p.routes {
		for _, c := range append([]route{rt}, rt.replicas...) {
			if fs := p.upstream.frontEndsFor(&c); fs != nil && !slices.Contains(buckets, c.bucket) {
				buckets, sets = append(buckets, c.bucket), append(sets, fs)
			}
		}
	}
	return buckets, sets
}

// frontEndLines describes each endpoint name's addresses, one line each,
// for /healthz.
func (p *Proxy) frontEndLines() []string {
	var lines []string
	_, sets := p.bucketFrontEnds()
	for i, fs := range sets {
		if !slices.Contains(sets[:i], fs) { // buckets of one name share it
			lines = append(lines, fs.describeLines()...)
		}
	}
	return lines
}

// Draining reports whether shutdown has begun.
func (p *Proxy) Draining() bool { return p.draining.Load() }

// startDrain marks shutdown begun: /healthz turns unhealthy, and the S3
// client's background work ends (its probes, and the witnesses that would
// hold a drain for up to -timeout after their clients left).
func (p *Proxy) startDrain() {
	p.draining.Store(true)
	p.upstream.Close()
}

// startCut marks the requests still in flight as being cut: each is
// logged as cut at shutdown, not as a client gone.
func (p *Proxy) startCut() { p.cutting.Store(true) }

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

// awaitIdle waits, at most d, until no request is in flight; startCut must
// have been called.
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
	answer, tr, err := p.upstream.fetch(r.Context(), &up)
	x.add(tr, true)
	x.bucket = up.route.bucket
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
		return upstreamRequest{}, badRequest(fmt.Errorf("%w: %q", errMethodNotAllowed, clip(r.Method, maxLoggedMethodBytes)))
	}
	if n := requestHeaderBytes(r); n > maxRequestHeaderBytes {
		return upstreamRequest{}, badRequest(fmt.Errorf("%w: %d bytes, limit %d", errHeaderTooLarge, n, maxRequestHeaderBytes))
	}
	if vs := r.Header["Range"]; len(vs) == 1 {
		x.rangeHeader = vs[0]
	}
	rt, key, err := mapPath(p.routes, r.URL.Path)
	x.key, x.bucket, x.s3Key = key, rt.bucket, rt.keyPrefix+key
	if err != nil {
		return upstreamRequest{}, badRequest(err)
	}
	params, dropped, err := filterQuery(r.URL.RawQuery)
	if err != nil {
		return upstreamRequest{}, badRequest(err)
	}
	if dropped > 0 {
		p.log.Debug("dropped query parameters", "key", key, "count", dropped)
	}
	if err := checkRequestHeaders(r.Header); err != nil {
		return upstreamRequest{}, badRequest(err)
	}
	ir, whole := parseIfRange(r.Header)
	return upstreamRequest{route: rt, method: r.Method, client: r.Header, key: key,
		uri: rt.uri(key), query: canonicalQuery(params), ifRange: ir, whole: whole}, nil
}

// respond passes S3's answer on: a success streams its body; an error
// answer is S3's status and code in a body of our own (answers.go).
func (p *Proxy) respond(w http.ResponseWriter, r *http.Request, answer upstreamAnswer, up *upstreamRequest, x *exchange) {
	if answer.resp == nil {
		p.metrics.S3Error(answer.s3.code, answer.status)
		p.fail(w, r, x, &s3Refusal{status: answer.status, s3: answer.s3})
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
	p.stream(r.Context(), w, answer, up, x)
}

// note records in x the answer err gives the client, and returns it.
func (p *Proxy) note(x *exchange, err error) clientAnswer {
	a := answerFor(err, p.cutting.Load(), x.bytes)
	x.status, x.err = a.status, a.cause
	return a
}

// fail is where a failure becomes the client's answer before any byte of
// it was sent: the status and S3-shaped body answerFor chooses (none for
// HEAD, nothing at all when the client is gone).
func (p *Proxy) fail(w http.ResponseWriter, r *http.Request, x *exchange, err error) {
	a := p.note(x, err)
	if a.status == statusClientGone {
		return
	}
	body := a.body()
	h := w.Header()
	if a.status == http.StatusMethodNotAllowed {
		h.Set("Allow", "GET, HEAD")
	}
	h.Set("Content-Type", "application/xml")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(a.status)
	if r.Method != http.MethodHead {
		io.WriteString(w, body)
	}
}

// finish logs the exchange once and records its metrics.
func (p *Proxy) finish(ctx context.Context, x *exchange) {
	dur := p.now.read().Sub(x.start)
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
		slog.String("bucket", x.bucket),
		slog.String("s3_key", clip(x.s3Key, maxKeyBytes)),
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

// stream copies the body to the client. When S3 fails mid-body and the
// response has an ETag, the S3 client fetches the rest with a freshly
// signed Range pinned by If-Match, appended to the same client response.
// When that is impossible the client connection is aborted: the status was
// sent, and a broken connection is the only honest answer left
// (httputil.ReverseProxy does the same), never a short body that looks
// complete. A body that fails counts against the front end it came from.
func (p *Proxy) stream(ctx context.Context, w http.ResponseWriter, answer upstreamAnswer, up *upstreamRequest, x *exchange) {
	buf := p.bufs.lend(copyBufferBytes)
	defer p.bufs.takeBack(buf, copyBufferBytes)
	plan, resumable := planResume(answer.resp)
	body, front := answer.resp.Body, answer.front
	defer func() { body.Close() }()
	for {
		n, err := copyBody(w, body, *buf)
		x.bytes += n
		plan.done += n
		switch {
		case err == nil:
			return
		case errors.Is(err, errClientWrite) || ctx.Err() != nil:
			p.note(x, clientGone(fmt.Errorf("client went away after %d bytes: %w", x.bytes, err)))
			return
		case !resumable || plan.complete():
			front.bodyFailed()
			p.metrics.UpstreamError(kindBody)
			p.abort(x, fmt.Errorf("upstream body failed after %d bytes, aborting the client response: %w", x.bytes, err))
		}
		front.bodyFailed()
		p.log.Info("resuming upstream body", "key", x.key, "after_bytes", x.bytes, "err", err)
		answer, tr, rerr := p.upstream.resume(ctx, up, plan.rest(), x.resumes, front)
		x.add(tr, false)
		var next io.ReadCloser
		switch {
		case errors.Is(rerr, errResumeLimit) || errors.Is(rerr, errNoBudget):
			p.abort(x, fmt.Errorf("upstream body failed after %d bytes and %w, aborting the client response: %w", x.bytes, rerr, err))
		case rerr == nil:
			x.resumes++
			front = answer.front
			next, rerr = plan.acceptRest(answer.resp, answer.status)
		default:
			x.resumes++
		}
		if rerr != nil {
			p.abort(x, fmt.Errorf("resume after %d bytes failed, aborting the client response: %w", x.bytes, rerr))
		}
		body.Close()
		body = next
	}
}

// abort ends a response whose status was already sent; it never returns:
// panicking with http.ErrAbortHandler makes net/http close the connection
// without logging, so the client sees a broken response.
func (p *Proxy) abort(x *exchange, err error) {
	x.status, x.err = http.StatusBadGateway, &proxyError{kind: kindBody, err: err}
	panic(http.ErrAbortHandler)
}
