package main

// What an upstream attempt's facts call for, and what an exchange may still
// spend: the decision table (pass the answer on, sign again, retry later),
// the retry and resume limits, and the pause between attempts. Nothing here
// sends a request or changes shared state; proxy.go's loop applies what a
// decision names.

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"time"
)

// retryBackoff paces transient retries: full jitter over 50 ms doubling,
// capped at 1 s, so a retry usually lands within the player's patience.
var retryBackoff = backoff{base: 50 * time.Millisecond, ceiling: time.Second}

// attemptFacts is what one round trip to S3 produced. An attempt writes
// nothing else, so two attempts of one exchange may be in flight at once;
// the loop reads the facts and is the only writer of the exchange's record.
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
}

// answer is what the facts give the client when they are passed on.
func (f *attemptFacts) answer() upstreamAnswer {
	return upstreamAnswer{resp: f.resp, status: f.status, s3: f.s3}
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
		return decision{verdict: retryLater, err: &proxyError{status: f.status, kind: "status_" + strconv.Itoa(f.status),
			err: fmt.Errorf("S3 answered %d %s", f.status, f.s3.code)}}
	}
	return decision{verdict: passOn}
}

// retryPolicy is how much an exchange may spend on S3's failures and how it
// waits between attempts. It is read only once the proxy serves.
type retryPolicy struct {
	// limit is how many times a failed attempt is repeated in one fetch,
	// and how many times one response is resumed mid-body; zero means
	// neither.
	limit int
	// pause returns the wait before retry n (1-based); nil means
	// retryBackoff with full jitter.
	pause func(n int) time.Duration
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
func (rp retryPolicy) wait(n int) time.Duration {
	if rp.pause != nil {
		return rp.pause(n)
	}
	return retryBackoff.fullJitter(n, rand.Float64())
}

// Failure kinds named by proxyError.kind that decide treats specially.
const (
	kindClientGone  = "client_gone"
	kindCredentials = "credentials"
)

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
