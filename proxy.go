package main

// The request path: method gate → key mapping → upstream request → sign →
// round trip with retries → stream (resuming after a mid-body failure) →
// error mapping.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// copyBufferBytes is the streaming buffer size. Every response in
	// flight holds one, so it bounds memory under many slow clients (1000
	// clients: 16 MiB); larger buffers measured no faster on 256 KiB ranges.
	copyBufferBytes = 32 << 10
	// defaultRetryBase and maxRetryBackoff bound the pause between attempts.
	defaultRetryBase = 50 * time.Millisecond
	maxRetryBackoff  = time.Second
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
	// retries is how many times a failed attempt is repeated.
	retries int
	// bodyTimeout ends an attempt whose body sends nothing for this long;
	// zero means never.
	bodyTimeout time.Duration
	// backoff returns the pause before retry n (1-based); nil means full
	// jitter over 50 ms·2^(n-1), capped at 1 s.
	backoff func(n int) time.Duration
	// now is the clock; nil means time.Now.
	now func() time.Time

	// clockFix corrects the signing time when this host's clock is off.
	clockFix clockCorrection

	bufs     sync.Pool
	inFlight atomic.Int64
}

// statusClientGone is nginx's 499: the client closed the connection before
// the answer, so nothing is written; it appears in logs and metrics only.
const statusClientGone = 499

// proxyError is a failure with the status the client gets.
type proxyError struct {
	status int
	// kind names the failure class in logs and metrics; empty for an error
	// answer from S3, whose cause says it all.
	kind string
	// public is what the client may read after the status text; it never
	// echoes the client's input.
	public string
	err    error
}

// Error names the failure class and its cause.
func (e *proxyError) Error() string {
	if e.kind == "" {
		return e.err.Error()
	}
	return e.kind + ": " + e.err.Error()
}

// badRequest is a client error answered with status and a generic reason.
func badRequest(status int, err error) *proxyError {
	return &proxyError{status: status, kind: "client", public: clientReason(err), err: err}
}

// clientGone ends an exchange whose client went away.
func clientGone(err error) *proxyError {
	return &proxyError{status: statusClientGone, kind: "client_gone", err: err}
}

// Unwrap returns the cause.
func (e *proxyError) Unwrap() error { return e.err }

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
	// s3Region is the bucket's region when an S3 error names it.
	s3Region string
	bytes    int64
	attempts int
	resumes  int
	err      error
}

// clock reads the injected clock.
func (p *Proxy) clock() time.Time {
	if p.now == nil {
		return time.Now()
	}
	return p.now()
}

// InFlight returns how many requests are being served.
func (p *Proxy) InFlight() int64 { return p.inFlight.Load() }

// ServeHTTP serves one GET or HEAD.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	x := exchange{start: p.clock(), method: r.Method, remote: r.RemoteAddr}
	p.inFlight.Add(1)
	defer p.inFlight.Add(-1)
	defer p.finish(r.Context(), &x)
	up, err := p.upstreamFor(r, &x)
	if err != nil {
		p.fail(w, r, &x, err)
		return
	}
	answer, err := p.attempts(r.Context(), &up, &x, nil)
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
	return upstreamRequest{route: rt, method: r.Method, client: r.Header,
		uri: rt.uriPrefix + canonicalURI(rt.keyPrefix+key), query: canonicalQuery(params)}, nil
}

// upstream describes the S3 request of one exchange; every attempt and
// resume is built from it.
type upstreamRequest struct {
	route  route
	method string
	// client is the inbound request's header, read only: each attempt
	// copies the forwarded ones from it.
	client http.Header
	// uri and query are canonical and are sent exactly as signed.
	uri   string
	query string
}

// newRequest builds one signed attempt. extra headers (a resume's Range and
// If-Match) replace the client's.
func (p *Proxy) newRequest(ctx context.Context, up *upstreamRequest, creds *Credentials, now time.Time, extra http.Header) *http.Request {
	h := make(http.Header, len(forwardedRequestHeaders)+5)
	copyRequestHeaders(h, up.client)
	for k, v := range extra {
		h[k] = v
	}
	h["User-Agent"] = []string{userAgent}
	req := &http.Request{
		Method:     up.method,
		URL:        upstreamURL(p.scheme, up.route.host, up.uri, up.query),
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     h,
		Host:       up.route.host,
	}
	req = req.WithContext(ctx)
	p.signer.Sign(h, &signingRequest{method: up.method, host: up.route.host, uri: up.uri, query: up.query}, creds, p.clockFix.apply(now))
	return req
}

// upstreamAnswer is what S3 answered an exchange: a response whose body is
// passed on (2xx and 304), or an error answer already read and closed.
type upstreamAnswer struct {
	// resp is set when the body is passed on; nil for an error answer.
	resp *http.Response
	// status and s3 describe an error answer.
	status int
	s3     s3ErrorDetails
}

// outcome is what one attempt's result calls for.
type outcome int

const (
	// passOn: the answer (or the error) goes to the client.
	passOn outcome = iota
	// signAgain: the signing time or the credentials were corrected; send
	// again at once.
	signAgain
	// retryLater: a transient failure; pause, then try again.
	retryLater
)

// retryState is what one exchange has tried so far.
type retryState struct {
	retries   int  // transient failures retried
	refreshed bool // credentials were replaced after S3 rejected them
	reclocked bool // the signing time was corrected from S3's clock
}

// attempts sends the request until S3 answers for good: connect errors,
// header timeouts and 500/502/503/504 are retried with backoff, each time
// freshly signed; a skewed clock or rejected credentials are corrected and
// signed again once. extra headers (a resume's Range and If-Match) replace
// the client's. The error is set only when no answer can be passed on.
func (p *Proxy) attempts(ctx context.Context, up *upstreamRequest, x *exchange, extra http.Header) (upstreamAnswer, error) {
	var tried retryState
	for {
		answer, next, err := p.attempt(ctx, up, x, extra, &tried)
		switch next {
		case signAgain:
			continue
		case passOn:
			return answer, err
		}
		var perr *proxyError
		errors.As(err, &perr)
		p.metrics.UpstreamError(perr.kind)
		if tried.retries >= p.retries {
			if answer.status != 0 {
				return answer, nil // S3's own last answer passes through
			}
			return upstreamAnswer{}, perr
		}
		tried.retries++
		p.metrics.Retry()
		p.log.Debug("retrying upstream", "key", x.key, "attempt", tried.retries, "err", perr, "s3_code", x.s3Code)
		if err := sleepCtx(ctx, p.retryPause(tried.retries)); err != nil {
			return upstreamAnswer{}, clientGone(err)
		}
	}
}

// attempt sends one signed request and decides what its result calls for.
func (p *Proxy) attempt(ctx context.Context, up *upstreamRequest, x *exchange, extra http.Header, tried *retryState) (upstreamAnswer, outcome, error) {
	now := p.clock()
	creds, err := p.creds.Get(ctx, now)
	if err != nil {
		if ctx.Err() != nil {
			return upstreamAnswer{}, passOn, clientGone(ctx.Err())
		}
		return upstreamAnswer{}, passOn, &proxyError{status: http.StatusServiceUnavailable, kind: "credentials", err: err}
	}
	resp, err := p.send(ctx, up, x, creds, now, extra)
	if ctx.Err() != nil {
		if resp != nil {
			resp.Body.Close()
		}
		return upstreamAnswer{}, passOn, clientGone(ctx.Err())
	}
	if err != nil {
		return upstreamAnswer{}, retryLater, classifyTransport(err)
	}
	if resp.StatusCode < 300 || resp.StatusCode == http.StatusNotModified {
		return upstreamAnswer{resp: resp}, passOn, nil
	}
	answer := upstreamAnswer{status: resp.StatusCode, s3: readS3Error(resp)}
	x.s3Code, x.s3Region = answer.s3.code, answer.s3.region
	switch {
	case !tried.reclocked && p.clockFix.learn(resp.Header.Get("Date"), answer.s3.code, p.clock(), p.log):
		tried.reclocked = true // our clock is off: signed with S3's time, the request succeeds
		return answer, signAgain, nil
	case !tried.refreshed && credentialsRejected(answer.s3.code):
		// The set was revoked or expired early: fetch another once and
		// retry, instead of failing until the next refresh.
		tried.refreshed = true
		if _, rerr := p.creds.Refresh(ctx, creds); rerr == nil {
			p.log.Warn("S3 rejected the credentials; retrying with a fresh set", "key", x.key,
				"s3_code", answer.s3.code, "rejected_access_key_id", creds.AccessKeyID)
			return answer, signAgain, nil
		}
	case retryableStatus(resp.StatusCode):
		return answer, retryLater, &proxyError{status: resp.StatusCode, kind: "status_" + strconv.Itoa(resp.StatusCode),
			err: fmt.Errorf("S3 answered %d %s", resp.StatusCode, answer.s3.code)}
	}
	return answer, passOn, nil
}

// send signs and sends one attempt, timing S3's response headers and
// watching the body for stalls.
func (p *Proxy) send(ctx context.Context, up *upstreamRequest, x *exchange, creds *Credentials, now time.Time, extra http.Header) (*http.Response, error) {
	x.attempts++
	actx, cancel := context.WithCancel(ctx)
	sent := p.clock()
	resp, err := p.transport.RoundTrip(p.newRequest(actx, up, creds, now, extra))
	if err != nil {
		cancel()
		return nil, err
	}
	p.metrics.UpstreamTTFB(p.clock().Sub(sent))
	if extra == nil { // a resume's 206 is not what the client was answered
		x.upstreamStatus = resp.StatusCode
	}
	resp.Body = watchBody(resp.Body, cancel, p.bodyTimeout)
	return resp, nil
}

// classifyTransport maps a transport error to the status the client gets:
// 504 for a timeout, 502 for everything else.
func classifyTransport(err error) *proxyError {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return &proxyError{status: http.StatusGatewayTimeout, kind: "timeout", err: err}
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "dial" {
		return &proxyError{status: http.StatusBadGateway, kind: "connect", err: err}
	}
	return &proxyError{status: http.StatusBadGateway, kind: "transport", err: err}
}

// retryPause is full jitter over 50 ms doubling per retry, capped at 1 s.
func (p *Proxy) retryPause(n int) time.Duration {
	if p.backoff != nil {
		return p.backoff(n)
	}
	ceiling := min(defaultRetryBase<<min(n-1, 10), maxRetryBackoff)
	return time.Duration(rand.Int64N(int64(ceiling) + 1))
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
	}
	return "request not allowed"
}

// finish logs the exchange once and records its metrics.
func (p *Proxy) finish(ctx context.Context, x *exchange) {
	dur := p.clock().Sub(x.start)
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
		case !resumable || x.resumes >= p.retries || plan.complete():
			p.metrics.UpstreamError("body")
			p.abort(x, fmt.Errorf("upstream body failed after %d bytes, aborting the client response: %w", x.bytes, err))
		}
		x.resumes++
		p.metrics.Resume()
		p.log.Info("resuming upstream body", "key", x.key, "after_bytes", x.bytes, "err", err)
		answer, err := p.attempts(ctx, up, x, plan.restRequest())
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

// upstreamURL builds a URL whose request target is uri and query exactly as
// signed: Opaque stops net/http from re-escaping the path.
func upstreamURL(scheme, host, uri, query string) *url.URL {
	opaque := uri
	if strings.HasPrefix(opaque, "//") {
		// A key starting with '/' under virtual-hosted addressing: "//key"
		// would read as an authority, so send the absolute form instead
		// (RFC 9112 §3.2.2 obliges servers to accept it).
		opaque = "//" + host + uri
	}
	return &url.URL{Scheme: scheme, Host: host, Opaque: opaque, RawQuery: query}
}
