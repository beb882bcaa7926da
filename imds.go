package main

// Credentials: static ones from the environment, or the instance role's from
// the EC2 instance metadata service, IMDSv2 only
// (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instancedata-data-retrieval.html),
// held in one cache that the request path reads without waiting on the
// network.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// defaultIMDSEndpoint is the link-local metadata address.
	defaultIMDSEndpoint = "http://169.254.169.254"
	imdsTokenPath       = "/latest/api/token"
	imdsCredentialsPath = "/latest/meta-data/iam/security-credentials/"
	imdsRegionPath      = "/latest/meta-data/placement/region"
	// imdsTokenTTLHeader asks for a token lifetime on the token PUT.
	imdsTokenTTLHeader = "X-Aws-Ec2-Metadata-Token-Ttl-Seconds"
	// imdsTokenHeader carries the token on metadata GETs.
	imdsTokenHeader = "X-Aws-Ec2-Metadata-Token"
	// defaultIMDSTokenTTL is the longest lifetime IMDS grants.
	defaultIMDSTokenTTL = 6 * time.Hour
	// imdsTokenEarlyRenewal renews a token this long before it lapses, so a
	// token never expires between our check and IMDS's.
	imdsTokenEarlyRenewal = time.Minute
	// maxIMDSBodyBytes caps every IMDS answer; a credentials document is
	// about 1.5 KiB, so anything near this is not one.
	maxIMDSBodyBytes = 64 << 10
	// imdsDialTimeout and imdsResponseTimeout fail fast: IMDS is a
	// link-local service that answers in milliseconds or not at all.
	imdsDialTimeout     = time.Second
	imdsResponseTimeout = 2 * time.Second

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
	// fetchTimeout bounds one shared fetch (token, role and credentials).
	fetchTimeout = 10 * time.Second
	// minForcedRefreshInterval limits fetches forced by S3 rejecting the
	// credentials, so a persistent rejection cannot hammer IMDS.
	minForcedRefreshInterval = 10 * time.Second

	sourceEnvironment = "environment"
	sourceIMDS        = "imds"
)

// errCredentialsUnavailable is wrapped when no usable credentials exist; the
// proxy maps it to 503.
var errCredentialsUnavailable = errors.New("credentials unavailable")

// Credentials is one AWS credential set. It is immutable once built by
// newCredentials. It redacts its secrets in every fmt verb, in slog and in
// JSON, so that no code path can print them by accident.
type Credentials struct {
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string
	// Expires is when S3 stops accepting the set; zero means never.
	Expires time.Time
	// Source is sourceEnvironment or sourceIMDS.
	Source string

	// tokenValues is the X-Amz-Security-Token header value, built once.
	tokenValues []string
	// tokenCanonical records that the token needs no SigV4 trimming.
	tokenCanonical bool
}

// newCredentials returns a credential set with its header value prebuilt.
func newCredentials(accessKeyID, secret, token string, expires time.Time, source string) *Credentials {
	c := &Credentials{AccessKeyID: accessKeyID, SecretAccessKey: secret, SessionToken: token, Expires: expires, Source: source}
	if token != "" {
		c.tokenValues = []string{token}
		c.tokenCanonical = !needsTrim(token)
	}
	return c
}

// tokenIsCanonical reports whether the session token can be signed as is.
func (c *Credentials) tokenIsCanonical() bool {
	return c.tokenValues != nil && c.tokenCanonical
}

// tokenHeader returns the X-Amz-Security-Token header value. Callers must
// not modify it.
func (c *Credentials) tokenHeader() []string {
	if c.tokenValues == nil {
		return []string{c.SessionToken}
	}
	return c.tokenValues
}

// String returns the set without its secret key and session token.
func (c Credentials) String() string {
	var b strings.Builder
	b.WriteString("Credentials{AccessKeyID: ")
	b.WriteString(c.AccessKeyID)
	b.WriteString(", SecretAccessKey: REDACTED")
	if c.SessionToken != "" {
		b.WriteString(", SessionToken: REDACTED")
	}
	if !c.Expires.IsZero() {
		b.WriteString(", Expires: ")
		b.WriteString(c.Expires.UTC().Format(time.RFC3339))
	}
	b.WriteString(", Source: ")
	b.WriteString(c.Source)
	b.WriteString("}")
	return b.String()
}

// GoString redacts like String, for %#v.
func (c Credentials) GoString() string { return c.String() }

// Format redacts in every verb, including %d and %x, which would otherwise
// print the fields raw.
func (c Credentials) Format(f fmt.State, _ rune) { io.WriteString(f, c.String()) }

// LogValue redacts for log/slog.
func (c Credentials) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("access_key_id", c.AccessKeyID),
		slog.String("source", c.Source),
		slog.Time("expires", c.Expires),
	)
}

// MarshalJSON redacts for encoding/json.
func (c Credentials) MarshalJSON() ([]byte, error) { return json.Marshal(c.String()) }

// credentialProvider fetches a fresh credential set.
type credentialProvider interface {
	Retrieve(ctx context.Context) (*Credentials, error)
}

// staticProvider serves fixed credentials, e.g. from AWS_ACCESS_KEY_ID.
type staticProvider struct{ creds *Credentials }

// Retrieve returns the fixed set.
func (p staticProvider) Retrieve(context.Context) (*Credentials, error) { return p.creds, nil }

// imdsClient talks IMDSv2. It is safe for concurrent use, but the
// credential cache calls it from one goroutine at a time.
type imdsClient struct {
	// endpoint is the base URL, e.g. http://169.254.169.254.
	endpoint string
	// role is the instance role; empty means the first listed role.
	role string
	// tokenTTL is the requested token lifetime; zero means 6 hours.
	tokenTTL time.Duration
	// client sends the requests; nil means one with short timeouts and no
	// HTTP proxy (IMDS must never be reached through one).
	client *http.Client
	// now is the clock; nil means time.Now.
	now func() time.Time

	clientOnce sync.Once
	mu         sync.Mutex // guards token and tokenExpires
	// token is the IMDSv2 session token; it is a secret.
	token        string
	tokenExpires time.Time
}

// imdsStatusError is a non-2xx answer from IMDS.
type imdsStatusError struct {
	op     string
	status int
}

// Error names the operation and the status.
func (e *imdsStatusError) Error() string {
	return fmt.Sprintf("%s: IMDS answered %d %s", e.op, e.status, http.StatusText(e.status))
}

// HTTPStatusCode returns the status IMDS answered.
func (e *imdsStatusError) HTTPStatusCode() int { return e.status }

// errHopLimit is wrapped when the token PUT gets no answer in time.
var errHopLimit = errors.New("no answer to the IMDSv2 token PUT: inside a container the instance's " +
	"IMDSv2 hop limit is probably too low; raise it with " +
	"'aws ec2 modify-instance-metadata-options --instance-id ID --http-put-response-hop-limit 2' " +
	"or use host networking")

// newIMDSHTTPClient fails fast and never uses an HTTP proxy or follows a redirect.
func newIMDSHTTPClient() *http.Client {
	return &http.Client{
		Timeout: fetchTimeout,
		Transport: &http.Transport{
			Proxy:                 nil,
			DialContext:           (&net.Dialer{Timeout: imdsDialTimeout}).DialContext,
			ResponseHeaderTimeout: imdsResponseTimeout,
			MaxIdleConns:          2,
			IdleConnTimeout:       30 * time.Second,
		},
		// IMDS never redirects; following one could send the token elsewhere.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// httpClient returns c.client, creating the default once.
func (c *imdsClient) httpClient() *http.Client {
	c.clientOnce.Do(func() {
		if c.client == nil {
			c.client = newIMDSHTTPClient()
		}
	})
	return c.client
}

// clock reads the injected clock.
func (c *imdsClient) clock() time.Time {
	if c.now == nil {
		return time.Now()
	}
	return c.now()
}

// sessionToken returns a cached IMDSv2 token, or fetches a new one.
func (c *imdsClient) sessionToken(ctx context.Context) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.clock()
	if c.token != "" && now.Before(c.tokenExpires) {
		return c.token, nil
	}
	ttl := c.tokenTTL
	if ttl <= 0 {
		ttl = defaultIMDSTokenTTL
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, c.endpoint+imdsTokenPath, nil)
	if err != nil {
		return "", fmt.Errorf("build IMDS token request: %w", err)
	}
	req.Header.Set(imdsTokenTTLHeader, strconv.Itoa(int(ttl/time.Second)))
	body, err := c.do(req, "fetch IMDSv2 token")
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded) {
			return "", fmt.Errorf("%w: %w", errHopLimit, err)
		}
		return "", err
	}
	token := strings.TrimSpace(string(body))
	if token == "" {
		return "", errors.New("fetch IMDSv2 token: empty token")
	}
	c.token = token
	c.tokenExpires = now.Add(ttl - min(imdsTokenEarlyRenewal, ttl/10))
	return token, nil
}

// dropToken forgets the IMDS token after IMDS refused it.
func (c *imdsClient) dropToken() {
	c.mu.Lock()
	c.token = ""
	c.mu.Unlock()
}

// get fetches a metadata path with the token. A 401 means IMDS no longer
// knows the token (it expired or IMDS restarted): fetch a new one and retry
// once.
func (c *imdsClient) get(ctx context.Context, path string) ([]byte, error) {
	for attempt := 0; ; attempt++ {
		token, err := c.sessionToken(ctx)
		if err != nil {
			return nil, err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.endpoint+path, nil)
		if err != nil {
			return nil, fmt.Errorf("build IMDS request: %w", err)
		}
		req.Header.Set(imdsTokenHeader, token)
		body, err := c.do(req, "GET "+path)
		var se *imdsStatusError
		if attempt == 0 && errors.As(err, &se) && se.status == http.StatusUnauthorized {
			c.dropToken()
			continue
		}
		return body, err
	}
}

// do sends req and returns the body of a 200 answer, read whole (capped) so
// that a timeout cannot race the read.
func (c *imdsClient) do(req *http.Request, op string) ([]byte, error) {
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxIMDSBodyBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%s: read body: %w", op, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, &imdsStatusError{op: op, status: resp.StatusCode}
	}
	if len(body) > maxIMDSBodyBytes {
		return nil, fmt.Errorf("%s: answer exceeds %d bytes", op, maxIMDSBodyBytes)
	}
	return body, nil
}

// roleName returns the configured role or the first one IMDS lists.
func (c *imdsClient) roleName(ctx context.Context) (string, error) {
	if c.role != "" {
		return c.role, nil
	}
	body, err := c.get(ctx, imdsCredentialsPath)
	if err != nil {
		return "", fmt.Errorf("discover instance role: %w", err)
	}
	role, _, _ := strings.Cut(strings.TrimSpace(string(body)), "\n")
	role = strings.TrimSpace(role)
	if role == "" {
		return "", errors.New("discover instance role: IMDS lists no role (is an instance profile attached?)")
	}
	return role, nil
}

// imdsCredentialsDocument is the JSON IMDS serves for a role.
type imdsCredentialsDocument struct {
	Code            string
	LastUpdated     string
	Type            string
	AccessKeyID     string `json:"AccessKeyId"`
	SecretAccessKey string
	Token           string
	Expiration      string
}

// Retrieve fetches the role's current credentials and validates them; a set
// that fails validation is an error, never a cached value.
func (c *imdsClient) Retrieve(ctx context.Context) (*Credentials, error) {
	role, err := c.roleName(ctx)
	if err != nil {
		return nil, err
	}
	body, err := c.get(ctx, imdsCredentialsPath+role)
	if err != nil {
		return nil, fmt.Errorf("fetch credentials of role %q: %w", role, err)
	}
	creds, err := parseIMDSCredentials(body, c.clock())
	if err != nil {
		return nil, fmt.Errorf("fetch credentials of role %q: %w", role, err)
	}
	return creds, nil
}

// parseIMDSCredentials validates a credentials document. Its errors never
// quote the document, which holds secrets.
func parseIMDSCredentials(body []byte, now time.Time) (*Credentials, error) {
	var doc imdsCredentialsDocument
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("credentials document is not JSON (%d bytes)", len(body))
	}
	var missing []string
	for _, f := range []struct{ name, value string }{
		{"AccessKeyId", doc.AccessKeyID}, {"SecretAccessKey", doc.SecretAccessKey},
		{"Token", doc.Token}, {"Expiration", doc.Expiration},
	} {
		if f.value == "" {
			missing = append(missing, f.name)
		}
	}
	switch {
	case doc.Code != "Success":
		return nil, fmt.Errorf("credentials document has Code %q, want \"Success\"", doc.Code)
	case len(missing) > 0:
		return nil, fmt.Errorf("credentials document lacks %s", strings.Join(missing, ", "))
	}
	expires, err := time.Parse(time.RFC3339, doc.Expiration)
	if err != nil {
		return nil, fmt.Errorf("credentials Expiration %q: %w", doc.Expiration, err)
	}
	if !expires.After(now) {
		return nil, fmt.Errorf("credentials expired at %s", doc.Expiration)
	}
	return newCredentials(doc.AccessKeyID, doc.SecretAccessKey, doc.Token, expires, sourceIMDS), nil
}

// Region returns the instance's region from IMDS.
func (c *imdsClient) Region(ctx context.Context) (string, error) {
	body, err := c.get(ctx, imdsRegionPath)
	if err != nil {
		return "", fmt.Errorf("discover region: %w", err)
	}
	region := strings.TrimSpace(string(body))
	if region == "" {
		return "", errors.New("discover region: IMDS answered an empty region")
	}
	return region, nil
}

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
	now func() time.Time
	// rand returns jitter in [0, 1); nil means math/rand/v2.
	rand func() float64
	// log receives refresh events; nil means slog.Default().
	log *slog.Logger
	// metrics counts refreshes and failures; nil means none.
	metrics *Metrics

	current atomic.Pointer[cachedCredentials]

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
	stop chan struct{}
	// wg tracks the refresher and fetch goroutines so Close can wait.
	wg sync.WaitGroup
}

// clock reads the injected clock.
func (c *credentialCache) clock() time.Time {
	if c.now == nil {
		return time.Now()
	}
	return c.now()
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
	if c.inflight == nil && c.failStreak > 0 && c.clock().Before(c.nextRefresh) {
		err := c.lastErr
		c.mu.Unlock()
		return nil, fmt.Errorf("%w: %w", errCredentialsUnavailable, err)
	}
	done := c.startFetchLocked(ctx)
	c.mu.Unlock()
	if err := awaitFetch(ctx, done); err != nil {
		return nil, err
	}
	if cc := c.current.Load(); cc.usable(c.clock()) {
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
	now := c.clock()
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
		c.metrics.Count(metricCredentialFailures, 1)
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
	c.nextRefresh = c.refreshMoment(creds.Expires, now)
	c.metrics.Count(metricCredentialRefreshes, 1)
	c.logger().Info("credentials refreshed", "source", creds.Source, "access_key_id", creds.AccessKeyID,
		"expires_in", durationOrNever(creds.Expires, now), "next_refresh_in", durationOrNever(c.nextRefresh, now))
}

// durationOrNever formats t-now for logs; zero t is "never".
func durationOrNever(t, now time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.Sub(now).Round(time.Second).String()
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

// backoff is exponential from 1 s to 30 s with jitter over its upper half,
// so retries from many hosts spread out but never come back-to-back.
func (c *credentialCache) backoff(failures int) time.Duration {
	d := maxBackoff
	if failures < 6 {
		d = min(minBackoff<<(failures-1), maxBackoff)
	}
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
	c.metrics.Count(metricCredentialExtensions, 1)
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

// Refresh is called when S3 rejected dead (revoked, or expired before its
// Expiration). It joins or starts a fetch, at most one forced fetch per
// 10 s, and returns the set that replaced dead, or errSameCredentials.
func (c *credentialCache) Refresh(ctx context.Context, dead *Credentials) (*Credentials, error) {
	now := c.clock()
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
	if cc := c.current.Load(); cc != nil && cc.creds != dead && cc.usable(c.clock()) {
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
			timer.Reset(max(next.Sub(c.clock()), 0))
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
	st := credentialStatus{Refreshes: c.refreshes, Failures: c.failures}
	if c.lastErr != nil {
		st.LastError = c.lastErr.Error()
	}
	c.mu.Unlock()
	if cc := c.current.Load(); cc != nil {
		st.Source, st.AccessKeyID = cc.creds.Source, cc.creds.AccessKeyID
		st.Valid = cc.usable(now)
		st.Extended = cc.extended
		st.Age = now.Sub(cc.fetched)
		if !cc.creds.Expires.IsZero() {
			st.ExpiresIn = cc.creds.Expires.Sub(now)
		}
	}
	return st
}

// Healthy reports whether requests are signed with a valid, unextended set,
// and if not, why.
func (st credentialStatus) Healthy() (bool, string) {
	switch {
	case st.Source == "" && st.LastError != "":
		return false, "no credentials yet: " + st.LastError
	case st.Source == "":
		return false, "no credentials yet"
	case st.Extended:
		return false, "credentials expired; running on the static-stability extension: " + st.LastError
	case !st.Valid:
		return false, "credentials expired"
	}
	return true, fmt.Sprintf("credentials from %s, expire in %s", st.Source, expiresText(st.ExpiresIn))
}

// expiresText formats a time to expiry; zero is "never".
func expiresText(d time.Duration) string {
	if d == 0 {
		return "never"
	}
	return d.Round(time.Second).String()
}
