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
	// maxErrorBodyBytes bounds how much of an S3 error body is read to find
	// its <Code>.
	maxErrorBodyBytes = 8 << 10
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

const (
	// maxClockOffset bounds a learned clock offset: a larger one means a
	// broken Date header, not a skewed clock.
	maxClockOffset = 24 * time.Hour
	// clockOffsetTTL is how long a learned offset is trusted; then the
	// local clock is tried again, and a remaining skew is re-learned at
	// the cost of one retried request.
	clockOffsetTTL = 10 * time.Minute
	// skewedSignatureThreshold is how far S3's Date must be from our clock
	// before a SignatureDoesNotMatch is taken for a skewed clock.
	skewedSignatureThreshold = 5 * time.Minute
	// dateResolution is the precision of an HTTP Date header, which is
	// truncated to the second: S3's time is Date plus half of it, on average.
	dateResolution = time.Second
	// relogClockOffsetChange is how much a learned offset must move to be
	// logged again.
	relogClockOffsetChange = time.Minute
)

// clockCorrection is the offset between S3's clock and this host's,
// learned from S3's Date header when S3 refuses a signature as too skewed
// (SigV4 allows 15 minutes). While no offset is learned, apply costs one
// atomic load.
type clockCorrection struct {
	current atomic.Pointer[clockOffset]

	mu sync.Mutex // guards logged
	// logged is the offset last logged.
	logged time.Duration
}

// clockOffset is one learned offset and when it stops being trusted.
type clockOffset struct {
	offset time.Duration
	until  time.Time
}

// apply returns the signing time for the local time now.
func (c *clockCorrection) apply(now time.Time) time.Time {
	if o := c.current.Load(); o != nil && now.Before(o.until) {
		return now.Add(o.offset)
	}
	return now
}

// Offset returns the offset in force at now, zero when none.
func (c *clockCorrection) Offset(now time.Time) time.Duration {
	if o := c.current.Load(); o != nil && now.Before(o.until) {
		return o.offset
	}
	return 0
}

// learn adopts S3's clock when its answer says ours is off: the code is
// RequestTimeTooSkewed, or SignatureDoesNotMatch while S3's Date is more
// than 5 minutes from now. It reports whether the request should be signed
// again.
func (c *clockCorrection) learn(date, code string, now time.Time, log *slog.Logger) bool {
	if code != "RequestTimeTooSkewed" && code != "SignatureDoesNotMatch" {
		return false
	}
	serverTime, err := http.ParseTime(date)
	if err != nil {
		return false
	}
	offset := serverTime.Add(dateResolution / 2).Sub(now)
	if offset.Abs() > maxClockOffset {
		log.Error("S3's Date header is more than a day from this host's clock; not adopting it", "s3_date", clip(date, 40))
		return false
	}
	if code == "SignatureDoesNotMatch" && offset.Abs() < skewedSignatureThreshold {
		return false
	}
	if prev := c.current.Load(); code == "RequestTimeTooSkewed" && prev != nil && (prev.offset-offset).Abs() < 2*dateResolution && now.Before(prev.until) {
		return false // signed with this very offset and still refused: not a clock problem
	}
	c.current.Store(&clockOffset{offset: offset, until: now.Add(clockOffsetTTL)})
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.logged == 0 || (offset-c.logged).Abs() > relogClockOffsetChange {
		c.logged = offset
		log.Warn("this host's clock is off from S3's; signing with S3's time (fix the clock: NTP, chrony or systemd-timesyncd)",
			"offset", offset, "s3_code", code)
	}
	return true
}

// proxyError is a failure with the status the client gets.
type proxyError struct {
	status int
	// kind names the failure class in logs and metrics.
	kind string
	err  error
}

// Error names the failure class and its cause.
func (e *proxyError) Error() string { return e.kind + ": " + e.err.Error() }

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
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		p.reject(w, &x, http.StatusMethodNotAllowed, fmt.Errorf("method %q not allowed: read-only", clip(r.Method, maxLoggedMethodBytes)))
		return
	}
	if vs := r.Header["Range"]; len(vs) == 1 {
		x.rangeHeader = vs[0]
	}
	rt, key, err := p.mapPath(r.URL.Path)
	x.key = key
	if err != nil {
		status := http.StatusBadRequest
		if errors.Is(err, errNoKey) {
			status = http.StatusNotFound
		}
		p.reject(w, &x, status, err)
		return
	}
	params, dropped, err := filterQuery(r.URL.RawQuery)
	if err != nil {
		p.reject(w, &x, http.StatusBadRequest, err)
		return
	}
	if dropped > 0 {
		p.log.Debug("dropped query parameters", "key", key, "count", dropped)
	}
	if err := checkRequestHeaders(r.Header); err != nil {
		p.reject(w, &x, http.StatusBadRequest, err)
		return
	}
	up := upstream{route: rt, method: r.Method, client: r.Header}
	up.uri = rt.uriPrefix + canonicalURI(rt.keyPrefix+key)
	up.query = canonicalQuery(params)
	resp, err := p.attempts(r.Context(), &up, &x, nil)
	if err != nil {
		p.fail(w, r, &x, err)
		return
	}
	p.respond(w, r, resp, &up, &x)
}

// upstream describes the S3 request of one exchange; every attempt and
// resume is built from it.
type upstream struct {
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
func (p *Proxy) newRequest(ctx context.Context, up *upstream, creds *Credentials, now time.Time, extra http.Header) *http.Request {
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

// attempts sends the request, retrying connect errors, header timeouts
// and 500/502/503/504 with a fresh signature each time. extra headers (a
// resume's Range and If-Match) replace the client's. It returns the final
// response, whatever its status, or an error only when no response came.
func (p *Proxy) attempts(ctx context.Context, up *upstream, x *exchange, extra http.Header) (*http.Response, error) {
	refreshed, reclocked := false, false
	for n := 0; ; n++ {
		now := p.clock()
		creds, err := p.creds.Get(ctx, now)
		if err != nil {
			if ctx.Err() != nil {
				return nil, &proxyError{499, "client_gone", ctx.Err()}
			}
			return nil, &proxyError{http.StatusServiceUnavailable, "credentials", err}
		}
		x.attempts++
		actx, cancel := context.WithCancel(ctx)
		req := p.newRequest(actx, up, creds, now, extra)
		sent := p.clock()
		resp, err := p.transport.RoundTrip(req)
		if err == nil {
			p.metrics.UpstreamTTFB(p.clock().Sub(sent))
			if extra == nil { // a resume's 206 is not what the client was answered
				x.upstreamStatus = resp.StatusCode
			}
			resp.Body = p.watchBody(resp.Body, cancel)
		} else {
			cancel()
		}
		if ctx.Err() != nil {
			if resp != nil {
				resp.Body.Close()
			}
			return nil, &proxyError{499, "client_gone", ctx.Err()}
		}
		if err == nil && !(refreshed && reclocked) && (resp.StatusCode == http.StatusBadRequest || resp.StatusCode == http.StatusForbidden) {
			d := readS3Error(resp)
			x.s3Code, x.s3Region = d.code, d.region
			if !reclocked && p.clockFix.learn(resp.Header.Get("Date"), x.s3Code, p.clock(), p.log) {
				// Our clock is off: signed again with S3's time, the
				// request succeeds.
				reclocked = true
				continue
			}
			if !refreshed && credentialsRejected(x.s3Code) {
				// The set was revoked or expired early: fetch another once
				// and retry, instead of failing until the next refresh.
				refreshed = true
				if _, rerr := p.creds.Refresh(ctx, creds); rerr == nil {
					p.log.Warn("S3 rejected the credentials; retrying with a fresh set", "key", x.key,
						"s3_code", x.s3Code, "rejected_access_key_id", creds.AccessKeyID)
					continue
				}
			}
			return resp, nil // body already read; respond() maps the status
		}
		if err == nil && !retryableStatus(resp.StatusCode) {
			return resp, nil
		}
		perr := classifyUpstream(err, resp)
		if resp != nil {
			x.s3Code = s3ErrorCode(resp)
			perr.kind = "status_" + strconv.Itoa(resp.StatusCode)
		}
		p.metrics.UpstreamError(perr.kind)
		if n >= p.retries {
			if resp != nil {
				return resp, nil // already drained; respond() maps the status
			}
			return nil, perr
		}
		p.metrics.Retry()
		p.log.Debug("retrying upstream", "key", x.key, "attempt", n+1, "err", perr, "s3_code", x.s3Code)
		if err := sleepCtx(ctx, p.retryPause(n+1)); err != nil {
			return nil, &proxyError{499, "client_gone", err}
		}
	}
}

// errBodyStalled is the cause when S3 sends no body bytes for -timeout.
var errBodyStalled = errors.New("upstream body stalled")

// watchBody cancels the attempt (and so unblocks the read) when one read of
// the body waits bodyTimeout for S3: ResponseHeaderTimeout covers only the
// wait for headers, and a stalled body would otherwise hold the client
// forever. Only time blocked on S3 counts: while s3-helper writes to a slow
// or paused client (a paused player, nginx with proxy_buffering off) the
// watch is off. Closing the body ends the attempt.
func (p *Proxy) watchBody(body io.ReadCloser, cancel context.CancelFunc) io.ReadCloser {
	b := &attemptBody{ReadCloser: body, cancel: cancel, timeout: p.bodyTimeout}
	if p.bodyTimeout > 0 {
		b.timer = time.AfterFunc(p.bodyTimeout, func() {
			b.stalled.Store(true)
			cancel()
		})
		b.timer.Stop() // armed only inside Read
	}
	return b
}

// attemptBody is an upstream body bound to its attempt's cancel function.
type attemptBody struct {
	io.ReadCloser
	cancel  context.CancelFunc
	timeout time.Duration
	// timer cancels the attempt when a Read waits longer than timeout; nil
	// when reads are not watched.
	timer   *time.Timer
	stalled atomic.Bool
}

// Read arms the stall timer for the duration of one read from S3 and names
// a stall as the cause.
func (b *attemptBody) Read(p []byte) (int, error) {
	if b.timer == nil {
		return b.ReadCloser.Read(p)
	}
	b.timer.Reset(b.timeout)
	n, err := b.ReadCloser.Read(p)
	b.timer.Stop()
	if err != nil && err != io.EOF && b.stalled.Load() {
		err = fmt.Errorf("%w: no bytes for %v", errBodyStalled, b.timeout)
	}
	return n, err
}

// Close ends the attempt.
func (b *attemptBody) Close() error {
	if b.timer != nil {
		b.timer.Stop()
	}
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

// credentialsRejected reports S3 error codes that mean the credential set
// itself is no longer valid
// (https://docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html).
func credentialsRejected(code string) bool {
	switch code {
	case "ExpiredToken", "InvalidToken", "TokenRefreshRequired", "InvalidAccessKeyId":
		return true
	}
	return false
}

// retryableStatus reports S3 answers worth another attempt: internal
// errors, SlowDown (503) and gateway failures.
func retryableStatus(status int) bool {
	switch status {
	case http.StatusInternalServerError, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

// classifyUpstream maps a transport error to the status the client gets:
// 504 for a timeout, 502 for everything else.
func classifyUpstream(err error, resp *http.Response) *proxyError {
	if err == nil {
		return &proxyError{resp.StatusCode, "status", fmt.Errorf("S3 answered %d", resp.StatusCode)}
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return &proxyError{http.StatusGatewayTimeout, "timeout", err}
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "dial" {
		return &proxyError{http.StatusBadGateway, "connect", err}
	}
	return &proxyError{http.StatusBadGateway, "transport", err}
}

// retryPause is full jitter over 50 ms doubling per retry, capped at 1 s.
func (p *Proxy) retryPause(n int) time.Duration {
	if p.backoff != nil {
		return p.backoff(n)
	}
	ceiling := min(defaultRetryBase<<min(n-1, 10), maxRetryBackoff)
	return time.Duration(rand.Int64N(int64(ceiling) + 1))
}

// s3ErrorDetails is what s3-helper takes from an S3 error answer: plain
// words only, never arbitrary bytes.
type s3ErrorDetails struct {
	code string
	// region is the bucket's region when S3 names it: the
	// x-amz-bucket-region header or the body's <Region>, which is what
	// botocore's region redirector reads.
	region string
}

// readS3Error reads an S3 XML error body (bounded) and closes it. The body
// itself never reaches the client.
func readS3Error(resp *http.Response) s3ErrorDetails {
	defer resp.Body.Close()
	var d s3ErrorDetails
	if resp.StatusCode < 300 {
		return d
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBodyBytes))
	d.code = xmlWord(body, "Code")
	d.region = plainWord([]byte(resp.Header.Get("X-Amz-Bucket-Region")))
	if d.region == "" {
		d.region = xmlWord(body, "Region")
	}
	return d
}

// s3ErrorCode reads the <Code> of an S3 XML error body and closes the body.
func s3ErrorCode(resp *http.Response) string { return readS3Error(resp).code }

// regionHint names the fix for an answer that says the bucket is in
// another region, or "" when it does not.
func regionHint(status int, d s3ErrorDetails) string {
	redirect := status == http.StatusMovedPermanently || status == http.StatusTemporaryRedirect
	if !redirect && d.code != "AuthorizationHeaderMalformed" && d.code != "PermanentRedirect" && d.code != "IllegalLocationConstraintException" {
		return ""
	}
	if d.region != "" {
		return "the bucket is in " + d.region + " (S3 says so): set -region " + d.region
	}
	if redirect {
		return "the bucket is in another region than -region, or -endpoint is wrong"
	}
	return "S3 refused the signing region: -region is not the bucket's region"
}

// respond passes S3's status through. Errors get a short text body of our
// own; successes stream the body.
func (p *Proxy) respond(w http.ResponseWriter, r *http.Request, resp *http.Response, up *upstream, x *exchange) {
	x.status = resp.StatusCode
	redirect := resp.StatusCode >= 300 && resp.StatusCode < 400 && resp.StatusCode != http.StatusNotModified
	if resp.StatusCode >= 400 || redirect {
		if x.s3Code == "" && resp.Body != nil {
			d := readS3Error(resp)
			x.s3Code, x.s3Region = d.code, d.region
		}
		resp.Body.Close()
		p.metrics.S3Error(x.s3Code, resp.StatusCode)
		x.err = fmt.Errorf("S3 answered %d", resp.StatusCode)
		if x.s3Code != "" {
			x.err = fmt.Errorf("S3 answered %d %s", resp.StatusCode, x.s3Code)
		}
		if hint := regionHint(resp.StatusCode, s3ErrorDetails{x.s3Code, x.s3Region}); hint != "" {
			x.err = fmt.Errorf("%w: %s", x.err, hint)
		}
		if redirect {
			// 301 PermanentRedirect and 307 TemporaryRedirect: nginx cannot
			// follow them, and they mean our configuration is wrong.
			x.status = http.StatusBadGateway
		}
		writeText(w, r, x.status)
		return
	}
	copyResponseHeaders(w.Header(), resp.Header)
	w.WriteHeader(resp.StatusCode)
	if r.Method == http.MethodHead || resp.StatusCode == http.StatusNotModified || resp.StatusCode == http.StatusNoContent {
		resp.Body.Close()
		return
	}
	p.stream(r.Context(), w, resp, up, x)
}

// writeText writes an error status with a one-line text body.
func writeText(w http.ResponseWriter, r *http.Request, status int) {
	body := strconv.Itoa(status) + " " + http.StatusText(status) + "\n"
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		io.WriteString(w, body)
	}
}

// stream copies the body. When S3 fails mid-body and the response has an
// ETag, the rest is fetched with a freshly signed Range pinned by If-Match
// and appended to the same client response. When that is impossible the
// client connection is aborted, so nginx sees a truncated response and
// never a short body that looks complete.
func (p *Proxy) stream(ctx context.Context, w http.ResponseWriter, resp *http.Response, up *upstream, x *exchange) {
	buf := p.getBuffer()
	defer p.bufs.Put(buf)
	plan, resumable := planResume(resp)
	body := resp.Body
	defer func() { body.Close() }()
	for {
		n, err := copyBody(w, body, *buf)
		x.bytes += n
		plan.done += n
		if err == nil {
			return
		}
		if errors.Is(err, errClientWrite) || ctx.Err() != nil {
			x.err = fmt.Errorf("client went away after %d bytes: %w", x.bytes, err)
			x.status = 499
			return
		}
		if !resumable || x.resumes >= p.retries || plan.complete() {
			x.err = fmt.Errorf("upstream body failed after %d bytes, aborting the client response: %w", x.bytes, err)
			x.status = 502
			p.metrics.UpstreamError("body")
			panic(http.ErrAbortHandler)
		}
		x.resumes++
		p.metrics.Resume()
		p.log.Info("resuming upstream body", "key", x.key, "after_bytes", x.bytes, "err", err)
		next, rerr := p.resume(ctx, up, x, &plan)
		if rerr != nil {
			x.err = fmt.Errorf("resume after %d bytes failed, aborting the client response: %w", x.bytes, rerr)
			x.status = 502
			panic(http.ErrAbortHandler)
		}
		body.Close()
		body = next
	}
}

// errClientWrite marks a failed write to the client.
var errClientWrite = errors.New("write to client")

// copyBody copies src to w with buf. A nil error means src ended cleanly.
func copyBody(w io.Writer, src io.Reader, buf []byte) (int64, error) {
	var written int64
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			m, werr := w.Write(buf[:n])
			written += int64(m)
			if werr != nil {
				return written, fmt.Errorf("%w: %w", errClientWrite, werr)
			}
		}
		if rerr == io.EOF {
			return written, nil
		}
		if rerr != nil {
			return written, rerr
		}
	}
}

// getBuffer takes a copy buffer from the pool.
func (p *Proxy) getBuffer() *[]byte {
	if b, ok := p.bufs.Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, copyBufferBytes)
	return &b
}

// resumePlan is the byte range a response covers, for continuing it.
type resumePlan struct {
	etag string
	// first and last are the absolute offsets of the response's first and
	// last byte; last is -1 when the length is unknown.
	first, last int64
	// done is how many bytes were delivered.
	done int64
}

// complete reports whether every byte of a known-length response was delivered.
func (r *resumePlan) complete() bool { return r.last >= 0 && r.first+r.done > r.last }

// planResume reads the ETag and range of a 200 or 206; resuming without an
// ETag could splice two versions of an object, so it is not attempted.
func planResume(resp *http.Response) (resumePlan, bool) {
	plan := resumePlan{etag: resp.Header.Get("Etag"), last: -1}
	if plan.etag == "" || strings.HasPrefix(plan.etag, "W/") {
		return plan, false
	}
	switch resp.StatusCode {
	case http.StatusOK:
		if resp.ContentLength >= 0 {
			plan.last = resp.ContentLength - 1
		}
		return plan, true
	case http.StatusPartialContent:
		first, last, ok := parseContentRange(resp.Header.Get("Content-Range"))
		if !ok {
			return plan, false
		}
		plan.first, plan.last = first, last
		return plan, true
	}
	return plan, false
}

// parseContentRange parses "bytes FIRST-LAST/TOTAL" (TOTAL may be "*").
func parseContentRange(v string) (first, last int64, ok bool) {
	rest, found := strings.CutPrefix(v, "bytes ")
	if !found {
		return 0, 0, false
	}
	span, _, found := strings.Cut(rest, "/")
	if !found {
		return 0, 0, false
	}
	a, b, found := strings.Cut(span, "-")
	if !found {
		return 0, 0, false
	}
	first, err1 := strconv.ParseInt(a, 10, 64)
	last, err2 := strconv.ParseInt(b, 10, 64)
	if err1 != nil || err2 != nil || first < 0 || last < first {
		return 0, 0, false
	}
	return first, last, true
}

// errObjectChanged is returned when a resume finds another object version.
var errObjectChanged = errors.New("object changed during the response (If-Match failed)")

// resume requests the bytes not yet delivered and checks that S3 answers
// with exactly them.
func (p *Proxy) resume(ctx context.Context, up *upstream, x *exchange, plan *resumePlan) (io.ReadCloser, error) {
	from := plan.first + plan.done
	rng := "bytes=" + strconv.FormatInt(from, 10) + "-"
	if plan.last >= 0 {
		rng += strconv.FormatInt(plan.last, 10)
	}
	extra := http.Header{"Range": {rng}, "If-Match": {plan.etag}}
	resp, err := p.attempts(ctx, up, x, extra)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode == http.StatusPreconditionFailed {
		resp.Body.Close()
		return nil, errObjectChanged
	}
	if resp.StatusCode != http.StatusPartialContent {
		resp.Body.Close()
		return nil, fmt.Errorf("resume answered %d, want 206", resp.StatusCode)
	}
	first, last, ok := parseContentRange(resp.Header.Get("Content-Range"))
	if !ok || first != from || plan.last >= 0 && last != plan.last {
		resp.Body.Close()
		return nil, fmt.Errorf("resume answered Content-Range %q, want bytes %s", resp.Header.Get("Content-Range"), rng[len("bytes="):])
	}
	return resp.Body, nil
}

// fail maps a request-path error to its status, once.
func (p *Proxy) fail(w http.ResponseWriter, r *http.Request, x *exchange, err error) {
	var perr *proxyError
	if !errors.As(err, &perr) {
		perr = &proxyError{http.StatusBadGateway, "internal", err}
	}
	x.err = perr
	x.status = perr.status
	if perr.status == 499 { // client gone: nothing to answer
		return
	}
	writeText(w, r, perr.status)
}

// reject answers a bad client request.
func (p *Proxy) reject(w http.ResponseWriter, x *exchange, status int, err error) {
	x.status = status
	x.err = err
	body := strconv.Itoa(status) + " " + http.StatusText(status) + ": " + clientReason(err) + "\n"
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	io.WriteString(w, body)
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
	case status == 499:
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
