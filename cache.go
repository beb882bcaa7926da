package main

// The one credential cache every source sits behind: the request path reads
// the current set without locks or network; a background refresher replaces
// it at a jittered moment before expiry, single-flight; through an outage
// the last good set is kept, and past its expiry extended (static
// stability), so no request waits on a failing source.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// defaultRefreshBefore is how long before Expiration a refresh starts.
	defaultRefreshBefore = 15 * time.Minute
	// unchangedRetry is the pause when IMDS still serves the set we have:
	// new role credentials appear at least 5 minutes before the old expire.
	unchangedRetry = 30 * time.Second
	// minBackoff and maxBackoff bound the retry delay after a failed fetch.
	minBackoff = time.Second
	maxBackoff = 30 * time.Second
	// minExtension and maxExtension bound the static-stability extension of
	// an expired set while IMDS is down (the AWS SDKs use 5 to 15 minutes).
	minExtension = 5 * time.Minute
	maxExtension = 15 * time.Minute
	// minForcedRefreshInterval limits fetches forced by S3 rejecting the
	// credentials, so a persistent rejection cannot hammer IMDS.
	minForcedRefreshInterval = 10 * time.Second
)

// cachedCredentials is one cached set and how long it may still be used.
type cachedCredentials struct {
	creds   *Credentials
	fetched time.Time
	// usableUntil is creds.Expires, or later while an extension is in force;
	// zero means forever (static credentials).
	usableUntil time.Time
	extended    bool
}

// usable reports whether the set may sign requests at now.
func (cc *cachedCredentials) usable(now time.Time) bool {
	return cc != nil && (cc.usableUntil.IsZero() || now.Before(cc.usableUntil))
}

// credentialCache holds one credential set, refreshes it in the background
// before it expires and keeps serving it through provider outages.
type credentialCache struct {
	// provider fetches new sets; it must be set.
	provider credentialProvider
	// refreshBefore is how long before expiry a refresh starts; zero means
	// 15 minutes. The refresh moment is uniform between refreshBefore and
	// two thirds of it before expiry: the earliest third of the window.
	refreshBefore time.Duration
	// now is the clock; nil means time.Now.
	now clock
	// rand returns jitter in [0, 1); nil means math/rand/v2.
	rand func() float64
	// log receives refresh events; nil means slog.Default().
	log *slog.Logger
	// metrics counts refreshes and failures; nil means none.
	metrics *Metrics

	current atomic.Pointer[cachedCredentials]
	// wg tracks the refresher and fetch goroutines so Close can wait.
	wg sync.WaitGroup

	mu sync.Mutex // guards every field below
	// inflight is closed when the running fetch ends; nil when none runs.
	inflight    chan struct{}
	lastErr     error
	lastErrAt   time.Time
	failStreak  int
	refreshes   int64
	failures    int64
	nextRefresh time.Time
	lastForced  time.Time
	started     bool
	// wake tells the refresher that nextRefresh moved.
	wake chan struct{}
	// ready is closed once the first set is in; made by Ready.
	ready chan struct{}
	stop  chan struct{}
}

// jitter returns a uniform number in [0, 1) from the injected source.
func (c *credentialCache) jitter() float64 {
	if c.rand == nil {
		return rand.Float64()
	}
	return c.rand()
}

// logger returns the injected logger or the default.
func (c *credentialCache) logger() *slog.Logger {
	if c.log == nil {
		return slog.Default()
	}
	return c.log
}

// window returns -refresh-before, 15 minutes by default.
func (c *credentialCache) window() time.Duration {
	if c.refreshBefore <= 0 {
		return defaultRefreshBefore
	}
	return c.refreshBefore
}

// Get returns usable credentials. now is the caller's clock reading (the
// proxy reads the clock once per request). While any set is cached it never
// waits on the provider: a set past its expiry is kept by keepExpired.
// Only before the first set arrives does it join the shared fetch, bounded
// by ctx.
func (c *credentialCache) Get(ctx context.Context, now time.Time) (*Credentials, error) {
	if cc := c.current.Load(); cc.usable(now) {
		return cc.creds, nil
	}
	if cc := c.keepExpired(now); cc != nil {
		return cc.creds, nil
	}
	return c.waitForFirst(ctx)
}

// waitForFirst joins or starts the shared fetch when no set is cached yet,
// unless the last fetch failed so recently that the refresher's backoff
// forbids another.
func (c *credentialCache) waitForFirst(ctx context.Context) (*Credentials, error) {
	c.mu.Lock()
	if c.inflight == nil && c.failStreak > 0 && c.now.read().Before(c.nextRefresh) {
		err := c.lastErr
		c.mu.Unlock()
		return nil, fmt.Errorf("%w: %w", errCredentialsUnavailable, err)
	}
	done := c.startFetchLocked(ctx)
	c.mu.Unlock()
	if err := awaitFetch(ctx, done); err != nil {
		return nil, err
	}
	if cc := c.current.Load(); cc.usable(c.now.read()) {
		return cc.creds, nil
	}
	c.mu.Lock()
	err := c.lastErr
	c.mu.Unlock()
	if err == nil {
		err = errors.New("no credentials fetched yet")
	}
	return nil, fmt.Errorf("%w: %w", errCredentialsUnavailable, err)
}

// awaitFetch waits for the shared fetch to end, or for the caller's ctx.
func awaitFetch(ctx context.Context, done <-chan struct{}) error {
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", errCredentialsUnavailable, ctx.Err())
	}
}

// startFetchLocked starts the shared fetch unless one runs, and returns the
// channel closed when it ends. The fetch runs on a context detached from
// ctx's cancellation, so one waiter giving up does not fail it for the
// others. c.mu must be held.
func (c *credentialCache) startFetchLocked(ctx context.Context) <-chan struct{} {
	if c.inflight != nil {
		return c.inflight
	}
	done := make(chan struct{})
	c.inflight = done
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), fetchTimeout)
		creds, err := c.provider.Retrieve(fctx)
		cancel()
		c.finishFetch(creds, err)
		close(done)
	}()
	return done
}

// finishFetch records a fetch's result and schedules the next one.
func (c *credentialCache) finishFetch(creds *Credentials, err error) {
	now := c.now.read()
	c.mu.Lock()
	defer c.mu.Unlock()
	defer func() {
		c.inflight = nil
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}()
	if err != nil {
		c.failures++
		c.failStreak++
		c.lastErr, c.lastErrAt = err, now
		c.nextRefresh = now.Add(c.backoff(c.failStreak))
		c.metrics.Inc(mCredentialFailures)
		c.logger().Warn("credential refresh failed", "err", err, "failures_in_a_row", c.failStreak,
			"retry_in", c.nextRefresh.Sub(now).Round(time.Millisecond))
		c.keepExpiredLocked(now) // so health reports the extension without waiting for a request
		return
	}
	c.refreshes++
	c.failStreak = 0
	c.lastErr = nil
	prev := c.current.Load()
	if prev != nil && prev.creds.AccessKeyID == creds.AccessKeyID && prev.creds.SessionToken == creds.SessionToken &&
		!prev.extended && creds.Expires.Equal(prev.creds.Expires) {
		// IMDS still serves the set we hold; the next one appears at
		// least 5 minutes before this one expires.
		c.nextRefresh = now.Add(c.jittered(unchangedRetry))
		c.logger().Debug("credentials unchanged", "access_key_id", creds.AccessKeyID,
			"retry_in", c.nextRefresh.Sub(now).Round(time.Millisecond))
		return
	}
	c.current.Store(&cachedCredentials{creds: creds, fetched: now, usableUntil: creds.Expires})
	if prev == nil && c.ready != nil {
		close(c.ready)
	}
	c.nextRefresh = c.refreshMoment(creds.Expires, now)
	c.metrics.Inc(mCredentialRefreshes)
	c.logger().Info("credentials refreshed", "source", creds.Source, "access_key_id", creds.AccessKeyID,
		"expires_in", untilText(creds.Expires, now), "next_refresh_in", untilText(c.nextRefresh, now))
}

// refreshMoment is uniform between refreshBefore and two thirds of it
// before expires. A set shorter-lived than that is refreshed halfway
// through its remaining life.
func (c *credentialCache) refreshMoment(expires, now time.Time) time.Time {
	if expires.IsZero() {
		return time.Time{}
	}
	w := c.window()
	at := expires.Add(-w + time.Duration(c.jitter()*float64(w/3)))
	if at.Before(now) {
		at = now.Add(max(expires.Sub(now)/2, minBackoff))
	}
	return at
}

// backoff is exponential from 1 s to 30 s with jitter over its upper half
// ("equal jitter", not full): the refresher is the only caller, and a
// retry at once after a failed fetch would only meet the same failure,
// while the half that is jittered still spreads a fleet's retries.
func (c *credentialCache) backoff(failures int) time.Duration {
	d := backoff{base: minBackoff, ceiling: maxBackoff}.limit(failures)
	return d/2 + time.Duration(c.jitter()*float64(d/2))
}

// jittered spreads d uniformly over [d/2, 3d/2).
func (c *credentialCache) jittered(d time.Duration) time.Duration {
	return d/2 + time.Duration(c.jitter()*float64(d))
}

// keepExpired is the one static-stability decision: a cached set past its
// expiry is kept for a random 5 to 15 minutes more, and S3 decides whether
// it still works, rather than a request waiting on a provider that has
// already failed to replace it in the 10 to 15 minutes before expiry. The
// refresher goes on trying meanwhile. It returns the usable or extended
// set, or nil when none was ever fetched.
func (c *credentialCache) keepExpired(now time.Time) *cachedCredentials {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.keepExpiredLocked(now)
}

// keepExpiredLocked is keepExpired with c.mu held.
func (c *credentialCache) keepExpiredLocked(now time.Time) *cachedCredentials {
	cc := c.current.Load()
	if cc == nil || cc.usable(now) {
		return cc
	}
	ext := minExtension + time.Duration(c.jitter()*float64(maxExtension-minExtension))
	next := &cachedCredentials{creds: cc.creds, fetched: cc.fetched, usableUntil: now.Add(ext), extended: true}
	c.current.Store(next)
	c.metrics.Inc(mCredentialExtensions)
	lastErr := "none yet: the provider still serves this set"
	if c.lastErr != nil {
		lastErr = c.lastErr.Error()
	}
	c.logger().Warn("credentials expired and no new set was fetched; extending their use, S3 may reject them",
		"access_key_id", cc.creds.AccessKeyID, "expired_ago", now.Sub(cc.creds.Expires).Round(time.Second),
		"extension", ext.Round(time.Second), "last_err", lastErr)
	return next
}

// errSameCredentials is returned by Refresh when no other set is available.
var errSameCredentials = errors.New("no other credentials available yet")

// Ready is closed once the first credential set is in: from then on a
// request never waits for credentials.
func (c *credentialCache) Ready() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ready == nil {
		c.ready = make(chan struct{})
		if c.current.Load() != nil {
			close(c.ready)
		}
	}
	return c.ready
}

// Refresh is called when S3 rejected dead (revoked, or expired before its
// Expiration). It joins or starts a fetch, at most one forced fetch per
// 10 s, and returns the set that replaced dead, or errSameCredentials.
func (c *credentialCache) Refresh(ctx context.Context, dead *Credentials) (*Credentials, error) {
	now := c.now.read()
	c.mu.Lock()
	if cc := c.current.Load(); cc != nil && cc.creds != dead && cc.usable(now) {
		c.mu.Unlock()
		return cc.creds, nil // already replaced
	}
	if c.inflight == nil && !c.lastForced.IsZero() && now.Sub(c.lastForced) < minForcedRefreshInterval {
		c.mu.Unlock()
		return nil, errSameCredentials
	}
	if c.inflight == nil {
		c.lastForced = now
	}
	done := c.startFetchLocked(ctx)
	c.mu.Unlock()
	if err := awaitFetch(ctx, done); err != nil {
		return nil, err
	}
	if cc := c.current.Load(); cc != nil && cc.creds != dead && cc.usable(c.now.read()) {
		return cc.creds, nil
	}
	return nil, errSameCredentials
}

// Start fetches the first set in the background and starts the refresher.
// ctx supplies values only; Close stops the refresher.
func (c *credentialCache) Start(ctx context.Context) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.started {
		return
	}
	c.started = true
	c.wake = make(chan struct{}, 1)
	c.stop = make(chan struct{})
	c.startFetchLocked(ctx)
	c.wg.Add(1)
	go c.refresher(ctx)
}

// refresher sleeps until the next refresh moment, fetches, and repeats.
func (c *credentialCache) refresher(ctx context.Context) {
	defer c.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		c.mu.Lock()
		next, inflight := c.nextRefresh, c.inflight
		c.mu.Unlock()
		if inflight != nil {
			select {
			case <-inflight:
				continue
			case <-c.stop:
				return
			}
		}
		var tick <-chan time.Time
		if !next.IsZero() {
			timer.Reset(max(next.Sub(c.now.read()), 0))
			tick = timer.C
		}
		select {
		case <-c.stop:
			return
		case <-c.wake:
			timer.Stop()
			continue
		case <-tick:
		}
		c.mu.Lock()
		c.startFetchLocked(ctx)
		c.mu.Unlock()
	}
}

// Close stops the refresher and waits for it and any running fetch.
func (c *credentialCache) Close() {
	c.mu.Lock()
	if c.started && c.stop != nil {
		select {
		case <-c.stop:
		default:
			close(c.stop)
		}
	}
	c.mu.Unlock()
	c.wg.Wait()
}

// credentialStatus is what the health endpoint and metrics report.
type credentialStatus struct {
	Source      string
	AccessKeyID string
	Valid       bool
	Extended    bool
	Age         time.Duration
	// ExpiresIn is zero for credentials that never expire.
	ExpiresIn time.Duration
	LastError string
	Refreshes int64
	Failures  int64
}

// Status reports the cache's state at now.
func (c *credentialCache) Status(now time.Time) credentialStatus {
	c.mu.Lock()
	status := credentialStatus{Refreshes: c.refreshes, Failures: c.failures}
	if c.lastErr != nil {
		status.LastError = c.lastErr.Error()
	}
	c.mu.Unlock()
	if cc := c.current.Load(); cc != nil {
		status.Source, status.AccessKeyID = cc.creds.Source, cc.creds.AccessKeyID
		status.Valid = cc.usable(now)
		status.Extended = cc.extended
		status.Age = now.Sub(cc.fetched)
		if !cc.creds.Expires.IsZero() {
			status.ExpiresIn = cc.creds.Expires.Sub(now)
		}
	}
	return status
}

// Healthy reports whether requests are signed with a valid, unextended set,
// and if not, why.
func (cs credentialStatus) Healthy() (bool, string) {
	switch {
	case cs.Source == "" && cs.LastError != "":
		return false, "no credentials yet: " + cs.LastError
	case cs.Source == "":
		return false, "no credentials yet"
	case cs.Extended:
		return false, "credentials expired; running on the static-stability extension: " + cs.LastError
	case !cs.Valid:
		return false, "credentials expired"
	}
	return true, fmt.Sprintf("credentials from %s, %s", cs.Source, expiryText(cs.ExpiresIn))
}
