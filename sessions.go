package main

// S3 Express One Zone sessions: a directory bucket's data requests are
// signed with a session's keys, which CreateSession hands out for a few
// minutes (5 on AWS). One cache per directory bucket makes them with the
// base credentials of the moment, one CreateSession at a time, and the
// next before the current one runs out, so a request never waits for one
// but the very first and never goes out on a session about to expire.
// https://docs.aws.amazon.com/AmazonS3/latest/API/API_CreateSession.html

import (
	"cmp"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// sessionRefreshLead is the least time before a session expires at
	// which the next one is made; sessionRefreshJitter makes it up to that
	// much earlier (uniformly), so a fleet's CreateSessions do not fall in
	// step. The AWS SDKs refresh within the last minute too.
	sessionRefreshLead   = time.Minute
	sessionRefreshJitter = 10 * time.Second
	// minSessionLeft: no request is signed with a session that has less
	// left; it could expire while the request waits in a queue (aws-c-s3
	// treats a session as expired 5 s early too).
	minSessionLeft = 5 * time.Second
	// minSessionBackoff and maxSessionBackoff bound the pause after a
	// failed CreateSession (doubling, equal jitter): about six tries in
	// the minute a refresh has before the session runs out.
	minSessionBackoff = time.Second
	maxSessionBackoff = 30 * time.Second
	// createSessionMode asks for a session that can only read (GetObject,
	// HeadObject): all s3-helper does, and all a bucket policy with
	// s3express:SessionMode ReadOnly allows.
	createSessionMode       = "ReadOnly"
	headerCreateSessionMode = "X-Amz-Create-Session-Mode"
	lowerCreateSessionMode  = "x-amz-create-session-mode"
	// sessionUserAgent names s3-helper in S3's logs, as the proxy's
	// requests do.
	sessionUserAgent = "s3-helper"
)

// errSessionsClosed is the cause a closed cache gives for having no session.
var errSessionsClosed = errors.New("session cache closed")

// sessionCache makes and keeps the sessions of one directory bucket and is
// the credentialGetter of every route to it: Get returns a session's
// credentials (Source sourceS3Express) made with the credentials base
// hands out at that moment. No timer runs; the current session moves
// between these states on a Get, a Refresh or the end of a CreateSession:
//
//	state       when                                  Get
//	none        no session yet, or it ran out         starts a CreateSession, or joins the one
//	            (expires−5 s), or S3 rejected it       in flight, and waits (bounded by ctx);
//	                                                  within a failure's backoff, fails at once
//	fresh       before its refresh moment, made        returns it: one atomic load, no lock
//	            with the base set of the moment
//	refreshing  from its refresh moment (≥ 1 min      returns it, and starts the next
//	            before expiry, jittered) to            CreateSession in the background (one at a
//	            expires−5 s, or the base set rotated   time, none within a failure's backoff)
//
// Sessions of base sets that rotated away are dropped when the next one is
// in: the cache holds one session, so it is bounded by construction.
// Every CreateSession runs in a goroutine the cache owns; Close waits.
type sessionCache struct {
	bucket directoryBucket
	// region is the bucket's, which CreateSession is signed for.
	region string
	// host and scheme reach the bucket's zonal endpoint; transport sends
	// CreateSession there (the proxy's, so dial addresses apply) and must
	// be set.
	host, scheme string
	transport    http.RoundTripper
	// base hands out the credentials CreateSession is signed with; it
	// must be set.
	base credentialGetter
	// now is the clock; nil means time.Now.
	now clock
	// rand returns jitter in [0, 1); nil means math/rand/v2.
	rand func() float64
	// pause is the wait between attempts of one CreateSession after a 5xx
	// or a network error; nil means 200 ms doubling with full jitter.
	pause func(n int) time.Duration
	// log receives session events; nil means slog.Default(). metrics may
	// be nil.
	log     *slog.Logger
	metrics *Metrics

	current atomic.Pointer[expressSession]
	// wg tracks the CreateSession goroutines so Close can wait.
	wg sync.WaitGroup

	mu sync.Mutex // guards every field below
	// inflight is closed when the running CreateSession ends; nil when
	// none runs.
	inflight chan struct{}
	lastErr  error
	// failStreak counts CreateSessions failed in a row; none starts on a
	// Get before retryAt.
	failStreak int
	retryAt    time.Time
	// lastForced is when Refresh last started a CreateSession.
	lastForced time.Time
	// made counts sessions made, so the first one is logged at info.
	made   int64
	closed bool
}

// expressSession is one session and when to stop relying on it.
type expressSession struct {
	creds *Credentials
	// base is the base set CreateSession was signed with.
	base *Credentials
	// refreshAt is when the next session is made; usableUntil is
	// minSessionLeft before creds.Expires: never handed out after.
	refreshAt, usableUntil time.Time
}

// Get returns a session's credentials usable at now (the caller's clock
// reading). While the session is fresh it takes no lock and sends nothing.
func (s *sessionCache) Get(ctx context.Context, now time.Time) (*Credentials, error) {
	base, err := s.base.Get(ctx, now)
	if err != nil {
		return nil, err
	}
	if cur := s.current.Load(); cur != nil && cur.base == base && now.Before(cur.refreshAt) {
		return cur.creds, nil
	}
	return s.getSlow(ctx, now, base)
}

// getSlow serves a session that is due for refreshing (starting the next
// one) or waits for one when none is usable.
func (s *sessionCache) getSlow(ctx context.Context, now time.Time, base *Credentials) (*Credentials, error) {
	s.mu.Lock()
	cur := s.current.Load()
	switch {
	case cur != nil && cur.base == base && now.Before(cur.refreshAt):
		s.mu.Unlock() // replaced since the lock-free look
		return cur.creds, nil
	case cur != nil && now.Before(cur.usableUntil):
		if s.inflight == nil && !now.Before(s.retryAt) {
			s.startLocked(ctx, base)
		}
		s.mu.Unlock()
		return cur.creds, nil
	case s.inflight == nil && now.Before(s.retryAt):
		err := s.lastErr
		s.mu.Unlock()
		return nil, fmt.Errorf("%w: %w", errCredentialsUnavailable, err)
	}
	done := s.startLocked(ctx, base)
	s.mu.Unlock()
	return s.await(ctx, done, nil)
}

// await waits for a CreateSession to end, or for ctx, and returns the
// session then usable unless it is dead.
func (s *sessionCache) await(ctx context.Context, done <-chan struct{}, dead *Credentials) (*Credentials, error) {
	if err := awaitFetch(ctx, done); err != nil {
		return nil, err
	}
	if cur := s.current.Load(); cur != nil && cur.creds != dead && s.now.read().Before(cur.usableUntil) {
		return cur.creds, nil
	}
	s.mu.Lock()
	err := s.lastErr
	s.mu.Unlock()
	if err == nil {
		err = errors.New("no session made yet")
	}
	return nil, fmt.Errorf("%w: %w", errCredentialsUnavailable, err)
}

// startLocked starts a CreateSession signed with base unless one runs, and
// returns the channel closed when it ends. It runs on a context detached
// from ctx's cancellation, so one waiter giving up does not fail it for
// the others. s.mu must be held.
func (s *sessionCache) startLocked(ctx context.Context, base *Credentials) <-chan struct{} {
	if s.inflight != nil {
		return s.inflight
	}
	done := make(chan struct{})
	if s.closed {
		s.lastErr = errSessionsClosed
		close(done)
		return done
	}
	s.inflight = done
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), fetchTimeout)
		used, creds, err := s.create(fctx, base)
		cancel()
		s.finish(used, creds, err)
		close(done)
	}()
	return done
}

// create makes a session with base. When S3 refuses base itself (revoked,
// or expired before its Expiration), base's cache is asked for another set
// once, and CreateSession is tried with that. It returns the base set used.
func (s *sessionCache) create(ctx context.Context, base *Credentials) (*Credentials, *Credentials, error) {
	creds, err := s.createSession(ctx, base)
	var cerr *createSessionError
	if errors.As(err, &cerr) && credentialsRejected(cerr.code) {
		if fresh, rerr := s.base.Refresh(ctx, base); rerr == nil && fresh != base {
			base = fresh
			creds, err = s.createSession(ctx, fresh)
		}
	}
	return base, creds, err
}

// finish records a CreateSession's result.
func (s *sessionCache) finish(base, creds *Credentials, err error) {
	now := s.now.read()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.inflight = nil
	if err != nil {
		s.failStreak++
		s.lastErr = err
		s.retryAt = now.Add(s.backoff(s.failStreak))
		s.metrics.Inc(mExpressSessionFailures)
		s.logger().Warn("CreateSession failed", "bucket", s.bucket.name, "err", err,
			"failures_in_a_row", s.failStreak, "retry_in", s.retryAt.Sub(now).Round(time.Millisecond))
		return
	}
	recovered := s.failStreak > 0
	s.failStreak, s.lastErr, s.retryAt = 0, nil, time.Time{}
	s.made++
	next := &expressSession{creds: creds, base: base, refreshAt: s.refreshMoment(creds.Expires, now),
		usableUntil: creds.Expires.Add(-minSessionLeft)}
	s.current.Store(next)
	s.metrics.Inc(mExpressSessions)
	attrs := []any{"bucket", s.bucket.name, "access_key_id", creds.AccessKeyID, "base_access_key_id", base.AccessKeyID,
		"expires_in", untilText(creds.Expires, now), "next_in", untilText(next.refreshAt, now)}
	if recovered || s.made == 1 {
		s.logger().Info("session made", attrs...)
	} else {
		s.logger().Debug("session made", attrs...)
	}
}

// refreshMoment is uniform between sessionRefreshLead and
// sessionRefreshLead+sessionRefreshJitter before expires: for 5-minute
// sessions 3m50s to 4m after they were made, for 90-second ones 20 to 30
// s. A session shorter-lived than that is refreshed halfway through.
func (s *sessionCache) refreshMoment(expires, now time.Time) time.Time {
	lead := sessionRefreshLead + time.Duration(s.jitter()*float64(sessionRefreshJitter))
	if at := expires.Add(-lead); at.After(now) {
		return at
	}
	return now.Add(expires.Sub(now) / 2)
}

// backoff is the pause after failures CreateSessions in a row:
// exponential from 1 s to 30 s, jittered over its upper half.
func (s *sessionCache) backoff(failures int) time.Duration {
	d := backoff{base: minSessionBackoff, ceiling: maxSessionBackoff}.limit(failures)
	return d/2 + time.Duration(s.jitter()*float64(d/2))
}

// jitter returns a uniform number in [0, 1) from the injected source.
func (s *sessionCache) jitter() float64 {
	if s.rand == nil {
		return rand.Float64()
	}
	return s.rand()
}

// logger returns the injected logger or the default.
func (s *sessionCache) logger() *slog.Logger {
	if s.log == nil {
		return slog.Default()
	}
	return s.log
}

// Refresh is called when S3 rejected the session dead (ExpiredToken,
// InvalidToken: see credentialsRejected). dead is dropped, never handed
// out again, and one CreateSession replaces it however many requests were
// rejected together; at most one forced CreateSession runs per 10 s. It
// returns the new session, or errSameCredentials.
func (s *sessionCache) Refresh(ctx context.Context, dead *Credentials) (*Credentials, error) {
	now := s.now.read()
	base, err := s.base.Get(ctx, now)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	cur := s.current.Load()
	if cur != nil && cur.creds != dead && now.Before(cur.usableUntil) {
		s.mu.Unlock()
		return cur.creds, nil // already replaced
	}
	if s.inflight == nil {
		if !s.lastForced.IsZero() && now.Sub(s.lastForced) < minForcedRefreshInterval {
			s.mu.Unlock()
			return nil, errSameCredentials
		}
		s.lastForced = now
	}
	if cur != nil && cur.creds == dead {
		s.current.Store(nil)
	}
	done := s.startLocked(ctx, base)
	s.mu.Unlock()
	if creds, err := s.await(ctx, done, dead); err == nil {
		return creds, nil
	}
	return nil, errSameCredentials
}

// sessionStatus is a session cache's state for /healthz: no key, secret
// or token, only what an operator needs to tell a working bucket from a
// failing one.
type sessionStatus struct {
	bucket string
	// state is sessionCache's: none, fresh or refreshing, by the clock (a
	// rotation of the base set shows at the next request, which starts
	// the refresh).
	state string
	// expiresIn is the current session's time left; zero when none.
	expiresIn time.Duration
	// failures counts CreateSessions failed in a row and lastErr is the
	// last one's error; zero and nil since a success.
	failures int
	lastErr  error
	// creating is set while a CreateSession runs; made counts sessions
	// made.
	creating bool
	made     int64
}

// Status reports the cache's state at now. It only reads: it never
// starts a CreateSession or asks for base credentials.
func (s *sessionCache) Status(now time.Time) sessionStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := sessionStatus{bucket: s.bucket.name, failures: s.failStreak, lastErr: s.lastErr, creating: s.inflight != nil, made: s.made}
	switch cur := s.current.Load(); {
	case cur == nil || !now.Before(cur.usableUntil):
		st.state = "none"
	case now.Before(cur.refreshAt):
		st.state, st.expiresIn = "fresh", cur.creds.Expires.Sub(now)
	default:
		st.state, st.expiresIn = "refreshing", cur.creds.Expires.Sub(now)
	}
	return st
}

// String is the status as one line of /healthz: "session BUCKET: fresh,
// expires in 3m10s", "refreshing" likewise (with the failures of the
// refresh, if any), or "none: " and why (the last CreateSession's error,
// one in flight, none made yet or the last one ran out).
func (st sessionStatus) String() string {
	line := "session " + st.bucket + ": " + st.state
	if st.state != "none" {
		line += ", expires in " + durationText(st.expiresIn)
		if st.lastErr != nil {
			line += fmt.Sprintf("; CreateSession failing (%d in a row): %s", st.failures, oneLine(st.lastErr))
		}
		return line
	}
	switch {
	case st.lastErr != nil:
		return line + ": " + oneLine(st.lastErr)
	case st.creating:
		return line + ": CreateSession in flight"
	case st.made == 0:
		return line + ": no session made yet"
	}
	return line + ": the last session ran out or S3 rejected it; the next request makes one"
}

// oneLine is err's text on one line. Its parts from outside the process
// are bounded already (printable, in createSession's error).
func oneLine(err error) string {
	return strings.Map(func(r rune) rune {
		if r == '\n' || r == '\r' {
			return ' '
		}
		return r
	}, err.Error())
}

// Close stops new CreateSessions and waits for the one in flight.
func (s *sessionCache) Close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.wg.Wait()
}

// createSession asks the bucket's zonal endpoint for a session: GET
// /?session signed with SigV4 for s3express with base (its session token
// in X-Amz-Security-Token, signed, as for any AWS call), read-only. A 5xx,
// SlowDown or a network error is tried up to three times.
func (s *sessionCache) createSession(ctx context.Context, base *Credentials) (*Credentials, error) {
	peer := "CreateSession at " + s.scheme + "://" + s.host
	return withRetries(ctx, s.pause, func() (*Credentials, error) {
		now := s.now.read()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.scheme+"://"+s.host+"/?session", nil)
		if err != nil {
			return nil, fmt.Errorf("CreateSession request: %w", err)
		}
		req.Header.Set(headerCreateSessionMode, createSessionMode)
		req.Header.Set("User-Agent", sessionUserAgent)
		// The query is sent as "session", signed as "session=" (SigV4
		// gives a parameter without a value an empty one).
		in := &signingRequest{method: http.MethodGet, host: s.host, uri: "/", query: "session=",
			headers: []headerField{{lowerCreateSessionMode, createSessionMode}}}
		(&Signer{Region: s.region, Service: serviceS3Express}).Sign(req.Header, in, base, now)
		client := &http.Client{Transport: s.transport, Timeout: fetchTimeout,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		resp, body, err := readAnswer(client, req, peer)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode != http.StatusOK {
			var answer struct{ Code, Message string }
			xml.Unmarshal(body, &answer) // a body that is no XML error leaves both empty
			cerr := &createSessionError{bucket: s.bucket.name, region: s.region, status: resp.StatusCode,
				code: plainWord([]byte(answer.Code)), message: printable(strings.TrimSpace(answer.Message))}
			if resp.StatusCode >= 500 || cerr.code == "SlowDown" {
				return nil, transientError{cerr}
			}
			return nil, cerr
		}
		return parseCreateSession(body, s.now.read())
	})
}

// zoneCannotServe reports whether err, from a session cache's Get, says
// that the bucket's zonal endpoint could not answer CreateSession (a
// network error, a timeout, a 5xx or SlowDown) rather than that S3 refused
// it: for failing over to a replica, that is a request the zone could not
// serve, not a want of credentials.
func zoneCannotServe(err error) bool {
	var te transientError
	return errors.As(err, &te)
}

// createSessionResult is the part of CreateSession's answer s3-helper
// uses: <CreateSessionResult><Credentials>…</Credentials></CreateSessionResult>.
type createSessionResult struct {
	XMLName     xml.Name `xml:"CreateSessionResult"`
	Credentials struct {
		AccessKeyID     string `xml:"AccessKeyId"`
		SecretAccessKey string
		SessionToken    string
		Expiration      string
	}
}

// parseCreateSession validates a CreateSession answer before it is used,
// as every credential document is (validCredentials: the four fields
// present, Expiration an RFC 3339 time), and with more than
// minSessionLeft to run. Its errors name fields, never their values.
func parseCreateSession(body []byte, now time.Time) (*Credentials, error) {
	var answer createSessionResult
	if err := xml.Unmarshal(body, &answer); err != nil {
		return nil, fmt.Errorf("CreateSession answer is not a CreateSessionResult document (%d bytes)", len(body))
	}
	c := answer.Credentials
	creds, err := validCredentials(credentialFields{c.AccessKeyID, c.SecretAccessKey, c.SessionToken, c.Expiration}, now, sourceS3Express)
	if err != nil {
		return nil, fmt.Errorf("CreateSession answer: %w", err)
	}
	if left := creds.Expires.Sub(now); left <= minSessionLeft {
		return nil, fmt.Errorf("CreateSession answered a session that expires at %s, in %v: is this host's clock ahead of S3's?",
			creds.Expires.UTC().Format(time.RFC3339), left.Round(time.Second))
	}
	return creds, nil
}

// createSessionError is S3's refusal of a CreateSession.
type createSessionError struct {
	bucket, region string
	status         int
	// code is S3's error code (a plain word) and message its message
	// (bounded, printable); either may be empty.
	code, message string
}

// Error names the bucket, S3's answer and, for the usual refusals, the fix.
func (e *createSessionError) Error() string {
	text := fmt.Sprintf("CreateSession for %s: S3 answered %d %s", e.bucket, e.status, cmp.Or(e.code, "(no error code)"))
	if e.message != "" {
		text += ": " + e.message
	}
	if hint := e.hint(); hint != "" {
		text += "; " + hint
	}
	return text
}

// accessDenied reports a refusal for want of permission.
func (e *createSessionError) accessDenied() bool {
	return e.code == "AccessDenied" || e.code == "" && e.status == http.StatusForbidden
}

// bucketARN is the resource s3express:CreateSession must be allowed on;
// ACCOUNT stands for the bucket owner's account ID, which S3 does not say.
func (e *createSessionError) bucketARN() string {
	return "arn:aws:s3express:" + e.region + ":ACCOUNT:bucket/" + e.bucket
}

// hint is the usual cause of a refusal, or "".
func (e *createSessionError) hint() string {
	switch {
	case e.accessDenied():
		return "the role needs s3express:CreateSession on " + e.bucketARN() +
			" (ACCOUNT: the bucket owner's), and the bucket policy must allow it when the bucket is another account's"
	case e.code == "NoSuchBucket":
		return "no directory bucket of that name in its zone: check the name (its zone ID) and the region"
	case e.code == "SignatureDoesNotMatch":
		return "the secret key does not belong to the access key ID"
	case credentialsRejected(e.code):
		return "S3 refused the role's credentials themselves"
	}
	return ""
}
