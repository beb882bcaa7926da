package main

// The S3 client below the handler, the way httputil.ReverseProxy sits on a
// RoundTripper: given an upstream request it sends attempts (attempt.go),
// retries what the policy and the budget allow, fails over to a replica
// when a region cannot serve, fetches the rest of a response that broke,
// probes a bucket marked down and keeps each bucket's health. It returns
// S3's answer and a trace of what it did, and writes nothing the handler
// owns.

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"time"
)

// Close ends the probes and witnesses running in the background and waits
// for them. Fetches may still run; they send no more probes and keep no
// witness.
func (c *s3Client) Close() {
	if c != nil {
		c.background.close()
	}
}

// budgetTokens returns what the retry budget holds; false when there is
// no budget.
func (c *s3Client) budgetTokens() (func() int64, bool) {
	b := c.policy.budget
	return b.Tokens, b != nil
}

// clockOffset is how far S3's clock is ahead of this host's, as signing
// applies it.
func (c *s3Client) clockOffset(now time.Time) time.Duration { return c.clockFix.Offset(now) }

// frontEndsFor is the front ends rt's requests go to; nil when it has
// none of its own (see pickFront).
func (c *s3Client) frontEndsFor(rt *route) *frontEnds {
	if c.fronts == nil || rt.dialAddr != "" {
		return nil
	}
	return c.fronts.frontEndsOf(cmp.Or(rt.scheme, c.scheme), rt.host)
}

// regionOf is the region rt is signed for.
func (c *s3Client) regionOf(rt *route) string { return cmp.Or(rt.region, c.signer.Region) }

// fetch gets S3's answer to up, deciding the client's If-Range here: S3's
// GetObject does not evaluate it (RFC 9110 §13.1.5). up.route is left on
// the copy that answered. The error is set only when no answer can be
// passed on.
func (c *s3Client) fetch(ctx context.Context, up *upstreamRequest) (upstreamAnswer, fetchTrace, error) {
	var tr fetchTrace
	c.policy.hedges.earn() // once per request: the cap is a share of requests
	answer, err := c.fetchCopies(ctx, up, &tr, c.policy.budget.firstTry())
	if err != nil || up.whole || up.ifRange.holds(up.client, answer.statusCode(), answer.respHeader()) {
		return answer, tr, err
	}
	if answer.resp != nil {
		answer.resp.Body.Close()
	}
	up.whole, tr.s3Code = true, "" // the whole object's answer is the client's
	answer, err = c.fetchCopies(ctx, up, &tr, c.policy.budget.firstTry())
	return answer, tr, err
}

// Errors of a resume that was never sent.
var (
	errResumeLimit = errors.New("the response was resumed as often as -retries allows")
	errNoBudget    = errors.New("the retry budget is empty")
)

// resume fetches the rest of a response whose body failed at the front
// end broken, given how often it was resumed already: within the policy's
// limit and paid from the budget, refunded if S3 serves the rest, from
// another address when there is one.
func (c *s3Client) resume(ctx context.Context, up *upstreamRequest, rest *restOfResponse, resumes int, broken *frontEnd) (upstreamAnswer, fetchTrace, error) {
	var tr fetchTrace
	c.metrics.UpstreamError(kindBody)
	if !c.policy.resume(resumes) {
		return upstreamAnswer{}, tr, errResumeLimit
	}
	tok, ok := c.policy.budget.spend(retryCost)
	if !ok {
		c.metrics.Count(mBudgetRefused, refusedResume, 1)
		return upstreamAnswer{}, tr, errNoBudget
	}
	c.metrics.Inc(mResumes)
	answer, err := c.fetchCopies(ctx, up.resumeOf(rest, broken), &tr, tok)
	return answer, tr, err
}

// fetchCopies gets S3's answer from the route's bucket or, when its region
// cannot serve, from its replicas in order: only for the answer itself (a
// resume stays with the bucket that started the response: the ETag pins
// the object there), only once the retry policy gave up or the budget
// refused a retry, and never for an answer that is S3's word (4xx). A bucket marked down is skipped, and
// probed in the background when its probe is due.
func (c *s3Client) fetchCopies(ctx context.Context, up *upstreamRequest, tr *fetchTrace, paid budgetToken) (upstreamAnswer, error) {
	if up.rest != nil || len(up.route.replicas) == 0 {
		answer, _, err := c.fetchFrom(ctx, up, tr, paid)
		return answer, err
	}
	copies := append(make([]route, 0, 1+len(up.route.replicas)), up.route)
	copies = append(copies, up.route.replicas...)
	order, due := copiesToTry(copies, c.now.read())
	for _, rt := range due {
		c.probe(ctx, rt, up.key)
	}
	var answer upstreamAnswer
	var err error
	for i, rt := range order {
		try := *up
		try.route, try.uri = rt, rt.uri(up.key)
		var ev evidence
		answer, ev, err = c.fetchFrom(ctx, &try, tr, paid)
		c.reportHealth(&rt, ev, false)
		*up = try
		paid = c.policy.budget.firstTry()
		if !failOver(answer, err) || ctx.Err() != nil {
			return answer, err
		}
		if i+1 < len(order) {
			c.metrics.Inc(mFailovers)
			c.log.Debug("failing over", "key", up.key, "from", rt.bucket, "to", order[i+1].bucket, "err", err, "status", answer.status)
		}
	}
	return answer, err
}

// reportHealth records what a fetch or probe said of rt's region and logs
// a transition.
func (c *s3Client) reportHealth(rt *route, ev evidence, probe bool) {
	switch rt.health.report(ev, probe, c.now.read()) {
	case markedDown:
		c.log.Warn("bucket marked down: its region keeps failing; requests go to its replica, and a probe in the background tries it again every few seconds",
			"bucket", rt.bucket, "region", c.regionOf(rt), "failures", markDownAfter)
	case cameBack:
		c.log.Info("bucket back up: it answered a probe; it takes its traffic back", "bucket", rt.bucket, "region", c.regionOf(rt))
	}
}

// probe finds out in the background whether rt, marked down, serves
// again: one HEAD of key (an object players asked for, so s3:GetObject,
// which the role has, is all it needs), bounded by the timeout. Any answer
// but a 5xx brings the bucket back; no request waits on it.
func (c *s3Client) probe(ctx context.Context, rt route, key string) {
	closing, ok := c.background.start()
	if !ok {
		c.reportHealth(&rt, noEvidence, true) // frees the probe's place
		return
	}
	go func() {
		defer c.background.done()
		pctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		defer cancel()
		if c.timeout > 0 {
			var stop context.CancelFunc
			pctx, stop = context.WithTimeoutCause(pctx, c.timeout, errOwnTimeout)
			defer stop()
		}
		go func() { // ends with pctx, at the latest when the probe returns
			select {
			case <-closing:
				cancel()
			case <-pctx.Done():
			}
		}()
		up := upstreamRequest{route: rt, method: http.MethodHead, client: http.Header{}, key: key, uri: rt.uri(key)}
		f := c.attempt(pctx, &up, nil)
		if f.resp != nil {
			f.resp.Body.Close()
		}
		ev := evidenceOf(&f)
		c.log.Debug("probed a bucket marked down", "bucket", rt.bucket, "status", f.status, "err", f.err)
		c.reportHealth(&rt, ev, true)
	}()
}

// fetchFrom sends up until S3 answers for good: each race of an attempt
// (and a hedge when S3 is slow to answer) returns its facts, decide says
// what they call for, and fetchFrom applies it (a correction, or a paced
// retry the policy and the budget allow). paid is what the first attempt
// was paid with. The error is set only when no answer can be passed on;
// the evidence is what the fetch says of the region.
func (c *s3Client) fetchFrom(ctx context.Context, up *upstreamRequest, tr *fetchTrace, paid budgetToken) (upstreamAnswer, evidence, error) {
	health := up.route.health
	if up.rest != nil {
		health = nil // a resume's outcome is not the answer's: no witness
	}
	w := c.witness(ctx, health)
	defer w.end()
	tried := retryState{}
	last := up.avoid // a retry goes to another front end
	for {
		if ctx.Err() != nil { // the client left before another attempt
			return upstreamAnswer{}, noEvidence, clientGone(ctx.Err())
		}
		w.attemptSent(c.now.read())
		f, hedge, won := c.race(w.ctx(ctx), up, tr, tried, last)
		last = f.front
		if ctx.Err() != nil { // the client left: nothing to pass on
			if f.resp != nil {
				f.resp.Body.Close()
			}
			ev := noEvidence
			if w.on() {
				ev = hangEvidence(&f)
			}
			return upstreamAnswer{}, ev, clientGone(ctx.Err())
		}
		d := decide(&f, tried)
		switch d.verdict {
		case passOn:
			if d.err != nil {
				return upstreamAnswer{}, noEvidence, d.err
			}
			if f.resp != nil {
				settle(paid, hedge, won)
			}
			return f.answer(), regionServed, nil
		case signAgain:
			if c.correct(ctx, d.fix, &f, up, &tried) {
				continue
			}
			return f.answer(), regionServed, nil
		}
		c.metrics.UpstreamError(d.err.kind)
		if !c.policy.retry(&tried) {
			answer, err := giveUp(&f, d)
			return answer, regionFailed, err
		}
		tok, ok := c.policy.budget.spend(retryCostOf(d.err))
		if !ok {
			c.metrics.Count(mBudgetRefused, refusedRetry, 1)
			answer, err := giveUp(&f, d)
			return answer, hangEvidence(&f), err
		}
		paid = tok
		c.metrics.Inc(mRetries)
		c.log.Debug("retrying upstream", "key", up.key, "attempt", tried.retries, "err", d.err, "s3_code", f.s3.code)
		if err := sleepCtx(ctx, c.policy.wait(tried.retries, d.throttled)); err != nil {
			return upstreamAnswer{}, noEvidence, clientGone(err)
		}
	}
}

// settle refunds what an answer that passed on as a success was paid
// with: the attempt's token, and a winning hedge's (the hedge was a retry
// that succeeded); a first try whose hedge won earns nothing more.
func settle(paid, hedge budgetToken, hedgeWon bool) {
	if !hedgeWon {
		paid.release()
		return
	}
	hedge.release()
	if paid.cost > 0 {
		paid.release()
	}
}

// giveUp is what a failed fetch passes on when it may not retry: S3's own
// last answer, or the failure.
func giveUp(f *attemptFacts, d decision) (upstreamAnswer, error) {
	if f.status != 0 {
		return f.answer(), nil
	}
	return upstreamAnswer{}, d.err
}

// correct applies the fix a signAgain names and reports whether signing
// again can help. Each fix is tried once per fetch.
func (c *s3Client) correct(ctx context.Context, fx fix, f *attemptFacts, up *upstreamRequest, tried *retryState) bool {
	switch fx {
	case adoptClock:
		tried.reclocked = true
		c.clockFix.adopt(f.skew, c.now.read(), c.log)
		return true
	case refreshCredentials:
		tried.refreshed = true
		if _, err := c.credsFor(&up.route).Refresh(ctx, f.creds); err != nil {
			return false
		}
		c.log.Warn("S3 rejected the credentials; retrying with a fresh set", "key", up.key,
			"s3_code", f.s3.code, "rejected_access_key_id", f.creds.AccessKeyID)
		return true
	}
	return false
}

// send signs up with the current credentials and makes one round trip,
// for -check: no retry, no hedge, no health.
func (c *s3Client) send(ctx context.Context, up *upstreamRequest) (*http.Response, error) {
	now := c.now.read()
	creds, err := c.credsFor(&up.route).Get(ctx, now)
	if err != nil {
		return nil, err
	}
	return c.transport.RoundTrip(c.newRequest(ctx, up, creds, now))
}

// presign is a presigned GET URL of key in rt, signed as the proxy would
// sign it.
func (c *s3Client) presign(ctx context.Context, rt route, key string, expires time.Duration) (string, error) {
	now := c.now.read()
	creds, err := c.credsFor(&rt).Get(ctx, now)
	if err != nil {
		return "", fmt.Errorf("presign: %w", err)
	}
	uri := rt.uri(key)
	var signer requestSigner = c.signer
	if rt.signer != nil {
		signer = rt.signer
	}
	query, err := signer.Presign(signingRequest{method: http.MethodGet, host: rt.host, uri: uri}, creds, now, expires)
	if err != nil {
		return "", fmt.Errorf("presign: %w", err)
	}
	return cmp.Or(rt.scheme, c.scheme) + "://" + rt.host + uri + "?" + query, nil
}

// The upstream connection pool: nginx-vod-module keeps hundreds of ranges
// in flight per host, so Go's default of 2 idle connections per host would
// make most requests open a new TLS connection.
const (
	maxIdleConns        = 1024
	maxIdleConnsPerHost = 512
	upstreamIdleTimeout = 90 * time.Second
)

// frontEndTransport is the keep-alive pool of one front-end address:
// newUpstreamTransport whose every dial goes to addr. The request's URL
// keeps the name, so the Host header and TLS's server name (and the
// certificate it verifies) are the name's.
func frontEndTransport(timeout time.Duration, addr netip.AddrPort) *leanTransport {
	t := newUpstreamTransport(timeout)
	t.addr = addr
	return t
}

// newUpstreamTransport is the one keep-alive transport all S3 requests to
// a host without front ends of its own share: the lean client
// (leanclient.go), which never goes through a proxy (a stray HTTPS_PROXY
// must never see signed requests) and never asks for compression.
func newUpstreamTransport(timeout time.Duration) *leanTransport {
	return &leanTransport{leanSettings: leanSettings{
		timeout:        timeout,
		tlsConfig:      &tls.Config{MinVersion: tls.VersionTLS12},
		maxIdle:        maxIdleConns,
		maxIdlePerHost: maxIdleConnsPerHost,
		maxIdleTime:    upstreamIdleTimeout,
	}}
}
