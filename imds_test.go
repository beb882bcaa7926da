package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

func TestIMDSRetrieveReusesToken(t *testing.T) {
	expires := time.Now().Add(time.Hour).Truncate(time.Second)
	f, srv := newFakeIMDS(t, expires)
	c := &imdsClient{endpoint: srv.URL}
	for range 3 {
		creds, err := c.Retrieve(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if creds.AccessKeyID != "ASIAFIRST" || creds.SecretAccessKey != testSecret || creds.SessionToken != testToken ||
			!creds.Expires.Equal(expires) || creds.Source != sourceIMDS {
			t.Fatalf("Retrieve = %v, want ASIAFIRST expiring %v", creds, expires)
		}
	}
	if puts, gets := f.counts(); puts != 1 || gets != 3 {
		t.Errorf("token PUTs = %d, credential GETs = %d; want 1 and 3 (token reused)", puts, gets)
	}
}

func TestIMDSTokenExpiryAndTTL(t *testing.T) {
	now := time.Now()
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	f, srv := newFakeIMDS(t, now.Add(24*time.Hour))
	f.now = clock
	c := &imdsClient{endpoint: srv.URL, tokenTTL: 100 * time.Second, now: clock}
	if _, err := c.Retrieve(t.Context()); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	now = now.Add(89 * time.Second) // inside the TTL less the 10% early renewal
	mu.Unlock()
	if _, err := c.Retrieve(t.Context()); err != nil {
		t.Fatal(err)
	}
	if puts, _ := f.counts(); puts != 1 {
		t.Fatalf("token PUTs = %d before expiry, want 1", puts)
	}
	mu.Lock()
	now = now.Add(2 * time.Second) // past TTL-10%: renew before IMDS would refuse it
	mu.Unlock()
	if _, err := c.Retrieve(t.Context()); err != nil {
		t.Fatal(err)
	}
	if puts, _ := f.counts(); puts != 2 {
		t.Errorf("token PUTs = %d after expiry, want 2", puts)
	}
}

func TestIMDS401FetchesNewTokenAndRetriesOnce(t *testing.T) {
	f, srv := newFakeIMDS(t, time.Now().Add(time.Hour))
	c := &imdsClient{endpoint: srv.URL}
	if _, err := c.Retrieve(t.Context()); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	clear(f.tokens) // IMDS restarted: every token is unknown
	f.mu.Unlock()
	if _, err := c.Retrieve(t.Context()); err != nil {
		t.Fatalf("Retrieve after token loss: %v", err)
	}
	if puts, _ := f.counts(); puts != 2 {
		t.Errorf("token PUTs = %d, want 2 (one new token after the 401)", puts)
	}
	// A 401 storm: the retry is made once, then the error is returned.
	f.mu.Lock()
	f.fail = []int{401, 401, 401}
	f.mu.Unlock()
	_, err := c.Retrieve(t.Context())
	var se *imdsStatusError
	if !errors.As(err, &se) || se.HTTPStatusCode() != 401 {
		t.Errorf("Retrieve in a 401 storm = %v, want an IMDS 401 error", err)
	}
}

func TestIMDSFixedRoleAndRegion(t *testing.T) {
	f, srv := newFakeIMDS(t, time.Now().Add(time.Hour))
	f.role = "other-role"
	c := &imdsClient{endpoint: srv.URL, role: "other-role"}
	if _, err := c.Retrieve(t.Context()); err != nil {
		t.Fatal(err)
	}
	wrong := &imdsClient{endpoint: srv.URL, role: "missing-role"}
	if _, err := wrong.Retrieve(t.Context()); err == nil || !strings.Contains(err.Error(), `"missing-role"`) {
		t.Errorf("Retrieve for an unknown role = %v, want an error naming it", err)
	}
	region, err := c.Region(t.Context())
	if err != nil || region != "eu-west-1" {
		t.Errorf("Region = %q, %v; want eu-west-1", region, err)
	}
}

func TestIMDSValidation(t *testing.T) {
	now := time.Now()
	valid := map[string]string{"Code": "Success", "AccessKeyId": "ASIAX", "SecretAccessKey": testSecret,
		"Token": testToken, "Expiration": now.Add(time.Hour).UTC().Format(time.RFC3339)}
	with := func(k, v string) []byte {
		m := map[string]string{}
		for kk, vv := range valid {
			m[kk] = vv
		}
		if v == "" {
			delete(m, k)
		} else {
			m[k] = v
		}
		b, _ := json.Marshal(m)
		return b
	}
	tests := []struct {
		name string
		body []byte
		want string
	}{
		{"code not Success", with("Code", "Failure"), `Code "Failure"`},
		{"missing key id", with("AccessKeyId", ""), "lacks AccessKeyId"},
		{"missing secret", with("SecretAccessKey", ""), "lacks SecretAccessKey"},
		{"missing token", with("Token", ""), "lacks Token"},
		{"expiration past", with("Expiration", now.Add(-time.Minute).UTC().Format(time.RFC3339)), "expired at"},
		{"expiration garbage", with("Expiration", "tomorrow"), `Expiration "tomorrow"`},
		{"not JSON", []byte("<html>503 Service Unavailable</html>"), "not JSON"},
		{"oversized", bytes.Repeat([]byte("x"), maxIMDSBodyBytes+1), "exceeds"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, srv := newFakeIMDS(t, now.Add(time.Hour))
			f.mu.Lock()
			f.body = tt.body
			f.mu.Unlock()
			creds, err := (&imdsClient{endpoint: srv.URL}).Retrieve(t.Context())
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Retrieve = %v, %v; want an error containing %q", creds, err, tt.want)
			}
			if strings.Contains(err.Error(), testSecret) || strings.Contains(err.Error(), testToken) {
				t.Errorf("error %q leaks a secret", err)
			}
		})
	}
}

func TestIMDSTokenTimeoutNamesHopLimit(t *testing.T) {
	f, srv := newFakeIMDS(t, time.Now().Add(time.Hour))
	f.hangPUT = true
	client := newIMDSHTTPClient()
	client.Transport.(*http.Transport).ResponseHeaderTimeout = 50 * time.Millisecond
	_, err := (&imdsClient{endpoint: srv.URL, client: client}).Retrieve(t.Context())
	if !errors.Is(err, errHopLimit) || !strings.Contains(err.Error(), "http-put-response-hop-limit") {
		t.Errorf("Retrieve with an unanswered token PUT = %v, want the hop-limit explanation", err)
	}
}

// TestIMDSForbiddenNamesCauses: a 403 from IMDS, here because a proxy in
// between added X-Forwarded-For, is reported with its likely causes and
// fixes; so is an injected 403 on the credentials GET.
func TestIMDSForbiddenNamesCauses(t *testing.T) {
	f, srv := newFakeIMDS(t, time.Now().Add(time.Hour))
	target, _ := url.Parse(srv.URL)
	sidecar := httptest.NewServer(httputil.NewSingleHostReverseProxy(target)) // adds X-Forwarded-For
	t.Cleanup(sidecar.Close)
	_, err := (&imdsClient{endpoint: sidecar.URL}).Retrieve(t.Context())
	for _, want := range []string{"403", "X-Forwarded-For", "--http-endpoint enabled"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Retrieve through a forwarding proxy = %v, want it to name %q", err, want)
		}
	}
	f.mu.Lock()
	f.fail = []int{http.StatusForbidden}
	f.mu.Unlock()
	if _, err := (&imdsClient{endpoint: srv.URL}).Retrieve(t.Context()); err == nil || !strings.Contains(err.Error(), "metadata endpoint is turned off") {
		t.Errorf("Retrieve after a 403 = %v, want the causes named", err)
	}
}

func TestCredentialsRedaction(t *testing.T) {
	c := newCredentials("ASIAREDACT", testSecret, testToken, time.Now().Add(time.Hour), sourceIMDS)
	var out bytes.Buffer
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%d", "%x", "%q"} {
		fmt.Fprintf(&out, verb+"\n", c)
		fmt.Fprintf(&out, verb+"\n", *c)
	}
	slog.New(slog.NewTextHandler(&out, nil)).Info("creds", "c", c, "v", *c)
	slog.New(slog.NewJSONHandler(&out, nil)).Info("creds", "c", c, "v", *c)
	j, _ := json.Marshal(c)
	out.Write(j)
	for _, secret := range []string{testSecret, testToken} {
		if strings.Contains(out.String(), secret) {
			t.Fatalf("a secret leaked through formatting:\n%s", out.String())
		}
	}
	if !strings.Contains(out.String(), "ASIAREDACT") {
		t.Errorf("the access key ID should stay visible for debugging:\n%s", out.String())
	}
}

// TestCacheRefreshesInsideJitterWindow: with jitter u the refresh happens
// at Expiration − 15m + u·5m, exactly.
func TestCacheRefreshesInsideJitterWindow(t *testing.T) {
	for _, u := range []float64{0, 0.5, 0.999} {
		t.Run(fmt.Sprint(u), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				start := time.Now()
				p := &fakeProvider{next: func(n int) (*Credentials, error) {
					return imdsCreds(fmt.Sprintf("ASIA%d", n), time.Now().Add(time.Hour)), nil
				}}
				c := newTestCache(p, &syncBuffer{}, u)
				c.Start(t.Context())
				defer c.Close()
				synctest.Wait()
				want := start.Add(time.Hour - 15*time.Minute + time.Duration(u*float64(5*time.Minute)))
				time.Sleep(want.Sub(time.Now()) - time.Millisecond)
				synctest.Wait()
				if got := p.count(); got != 1 {
					t.Fatalf("fetches before the refresh moment = %d, want 1", got)
				}
				time.Sleep(time.Millisecond)
				synctest.Wait()
				if got := p.count(); got != 2 {
					t.Fatalf("fetches at the refresh moment = %d, want 2", got)
				}
				creds, err := c.Get(t.Context(), time.Now())
				if err != nil || creds.AccessKeyID != "ASIA2" {
					t.Errorf("Get after refresh = %v, %v; want ASIA2", creds, err)
				}
			})
		})
	}
}

// TestCacheRetriesWhileIMDSServesTheSameSet: new role credentials appear
// at least 5 minutes before the old expire; until then retry every ~30 s.
func TestCacheRetriesWhileIMDSServesTheSameSet(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		expires := time.Now().Add(time.Hour)
		p := &fakeProvider{next: func(n int) (*Credentials, error) {
			if n < 4 {
				return imdsCreds("ASIAOLD", expires), nil
			}
			return imdsCreds("ASIANEW", expires.Add(time.Hour)), nil
		}}
		c := newTestCache(p, &syncBuffer{}, 0.5)
		c.Start(t.Context())
		defer c.Close()
		time.Sleep(time.Hour - 15*time.Minute + 150*time.Second) // the refresh moment with u=0.5
		synctest.Wait()
		if got := p.count(); got != 2 {
			t.Fatalf("fetches at the refresh moment = %d, want 2", got)
		}
		time.Sleep(30 * time.Second) // jittered 30 s with u=0.5 is exactly 30 s
		synctest.Wait()
		time.Sleep(30 * time.Second)
		synctest.Wait()
		if got := p.count(); got != 4 {
			t.Fatalf("fetches after two retries = %d, want 4", got)
		}
		creds, _ := c.Get(t.Context(), time.Now())
		if creds.AccessKeyID != "ASIANEW" {
			t.Errorf("Get = %s, want the new set", creds.AccessKeyID)
		}
	})
}

// startGatedCache starts a cache whose first fetch waits until p.gate is
// closed, then serves ASIAONE for an hour.
func startGatedCache(t *testing.T) (*fakeProvider, *credentialCache) {
	p := &fakeProvider{gate: make(chan struct{}), next: func(int) (*Credentials, error) {
		return imdsCreds("ASIAONE", time.Now().Add(time.Hour)), nil
	}}
	c := newTestCache(p, &syncBuffer{}, 0.5)
	c.Start(t.Context())
	t.Cleanup(c.Close)
	return p, c
}

// TestCacheSingleFlight: a thousand callers arriving before the first
// fetch ends cause one fetch.
func TestCacheSingleFlight(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, c := startGatedCache(t)
		var wg sync.WaitGroup
		var failed atomic.Int64
		for range 1000 {
			wg.Go(func() {
				if _, err := c.Get(t.Context(), time.Now()); err != nil {
					failed.Add(1)
				}
			})
		}
		synctest.Wait()
		close(p.gate)
		wg.Wait()
		if n := p.count(); n != 1 || failed.Load() != 0 {
			t.Errorf("fetches = %d, failed callers = %d; want 1 and 0", n, failed.Load())
		}
	})
}

// TestCacheWaiterCancellation: one waiter giving up does not cancel the
// shared fetch for the others.
func TestCacheWaiterCancellation(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, c := startGatedCache(t)
		ctx, cancel := context.WithCancel(t.Context())
		errc := make(chan error, 1)
		go func() { _, err := c.Get(ctx, time.Now()); errc <- err }()
		got := make(chan *Credentials, 1)
		go func() { creds, _ := c.Get(t.Context(), time.Now()); got <- creds }()
		synctest.Wait()
		cancel()
		if err := <-errc; !errors.Is(err, errCredentialsUnavailable) || !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled waiter got %v, want credentials unavailable: context canceled", err)
		}
		close(p.gate)
		if creds := <-got; creds == nil || creds.AccessKeyID != "ASIAONE" {
			t.Errorf("other waiter got %v, want ASIAONE", creds)
		}
		if n := p.count(); n != 1 {
			t.Errorf("fetches = %d, want 1", n)
		}
	})
}

// TestCacheStartupOutage: IMDS down at start-up gives errors (503 in the
// proxy) without hammering IMDS, then recovers by itself.
func TestCacheStartupOutage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var down atomic.Bool
		down.Store(true)
		p := &fakeProvider{next: func(int) (*Credentials, error) {
			if down.Load() {
				return nil, errors.New("connect: connection refused")
			}
			return imdsCreds("ASIAUP", time.Now().Add(time.Hour)), nil
		}}
		logs := &syncBuffer{}
		c := newTestCache(p, logs, 0.5)
		c.Start(t.Context())
		defer c.Close()
		synctest.Wait()
		for range 100 {
			if _, err := c.Get(t.Context(), time.Now()); !errors.Is(err, errCredentialsUnavailable) {
				t.Fatalf("Get during outage = %v, want errCredentialsUnavailable", err)
			}
		}
		if n := p.count(); n != 1 {
			t.Fatalf("fetches after 100 requests inside the backoff = %d, want 1", n)
		}
		if ok, reason := c.Status(time.Now()).Healthy(); ok || !strings.Contains(reason, "connection refused") {
			t.Errorf("Healthy = %v, %q; want false naming the cause", ok, reason)
		}
		down.Store(false)
		time.Sleep(time.Second) // first backoff: 0.5 s + 0.5·0.5 s
		synctest.Wait()
		if creds, err := c.Get(t.Context(), time.Now()); err != nil || creds.AccessKeyID != "ASIAUP" {
			t.Errorf("Get after recovery = %v, %v", creds, err)
		}
		if !strings.Contains(logs.String(), "credential refresh failed") {
			t.Errorf("no log line names the failure:\n%s", logs)
		}
	})
}

// TestCacheOutageWithValidCache: IMDS failing after a successful fetch
// fails no request while the set is valid; retries back off exponentially.
func TestCacheOutageWithValidCache(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		p := &fakeProvider{next: func(n int) (*Credentials, error) {
			if n == 1 {
				return imdsCreds("ASIAONE", start.Add(time.Hour)), nil
			}
			return nil, errors.New("IMDS answered 500")
		}}
		c := newTestCache(p, &syncBuffer{}, 0.5)
		c.Start(t.Context())
		defer c.Close()
		time.Sleep(47*time.Minute + 30*time.Second) // refresh moment
		synctest.Wait()
		// Backoffs with u=0.5 are 0.75·(1,2,4,8,16,30,30…) s.
		wantFetches := []struct {
			after time.Duration
			n     int
		}{{750 * time.Millisecond, 3}, {1500 * time.Millisecond, 4}, {3 * time.Second, 5}, {6 * time.Second, 6}}
		if n := p.count(); n != 2 {
			t.Fatalf("fetches at the refresh moment = %d, want 2", n)
		}
		for _, w := range wantFetches {
			time.Sleep(w.after)
			synctest.Wait()
			if n := p.count(); n != w.n {
				t.Fatalf("fetches after another %v = %d, want %d", w.after, n, w.n)
			}
			if _, err := c.Get(t.Context(), time.Now()); err != nil {
				t.Fatalf("Get during the outage with a valid cache: %v", err)
			}
		}
	})
}

// TestCacheOutagePastExpiry: when IMDS stays down past Expiration the set
// is used for a 5–15 minute extension, logged, and health turns 503.
func TestCacheOutagePastExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		var up atomic.Bool
		p := &fakeProvider{next: func(n int) (*Credentials, error) {
			if n == 1 {
				return imdsCreds("ASIAONE", start.Add(time.Hour)), nil
			}
			if up.Load() {
				return imdsCreds("ASIATWO", time.Now().Add(time.Hour)), nil
			}
			return nil, errors.New("IMDS unreachable")
		}}
		logs := &syncBuffer{}
		c := newTestCache(p, logs, 0.5)
		c.Start(t.Context())
		defer c.Close()
		time.Sleep(time.Hour + time.Second)
		synctest.Wait()
		creds, err := c.Get(t.Context(), time.Now())
		if err != nil || creds.AccessKeyID != "ASIAONE" {
			t.Fatalf("Get past expiry during an outage = %v, %v; want the extended set", creds, err)
		}
		st := c.Status(time.Now())
		if !st.Extended {
			t.Error("Status.Extended = false past expiry")
		}
		if ok, reason := st.Healthy(); ok || !strings.Contains(reason, "extension") {
			t.Errorf("Healthy = %v, %q; want false, naming the extension", ok, reason)
		}
		if !strings.Contains(logs.String(), "extending their use") {
			t.Errorf("the extension was not logged:\n%s", logs)
		}
		up.Store(true)
		time.Sleep(maxBackoff)
		synctest.Wait()
		if creds, _ := c.Get(t.Context(), time.Now()); creds.AccessKeyID != "ASIATWO" {
			t.Errorf("Get after recovery = %s, want ASIATWO", creds.AccessKeyID)
		}
		if ok, _ := c.Status(time.Now()).Healthy(); !ok {
			t.Error("still unhealthy after recovery")
		}
	})
}

// TestCacheWithIMDSEmulator runs the cache over the IMDS client against
// the emulator: rotation is picked up by the refresher.
func TestCacheWithIMDSEmulator(t *testing.T) {
	f, srv := newFakeIMDS(t, time.Now().Add(2*time.Second))
	logs := &syncBuffer{}
	c := &credentialCache{provider: &imdsClient{endpoint: srv.URL}, refreshBefore: 1500 * time.Millisecond, log: slog.New(slog.NewTextHandler(logs, nil))}
	c.Start(t.Context())
	defer c.Close()
	creds, err := c.Get(t.Context(), time.Now())
	if err != nil || creds.AccessKeyID != "ASIAFIRST" {
		t.Fatalf("Get = %v, %v", creds, err)
	}
	f.setCredentials("ASIASECOND", testSecret, testToken, time.Now().Add(time.Hour))
	if !logs.waitFor(`msg="credentials refreshed" source=imds access_key_id=ASIASECOND`) {
		t.Fatalf("the refresher did not pick up the rotated set:\n%s", logs)
	}
	if creds, err := c.Get(t.Context(), time.Now()); err != nil || creds.AccessKeyID != "ASIASECOND" {
		t.Errorf("Get after the refresh = %v, %v", creds, err)
	}
}

// BenchmarkCredentials is the request-path read of cached credentials.
func BenchmarkCredentials(b *testing.B) {
	c := &credentialCache{provider: staticProvider{imdsCreds("ASIA", time.Now().Add(time.Hour))}, log: slog.New(slog.DiscardHandler)}
	ctx := context.Background()
	if _, err := c.Get(ctx, time.Now()); err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.Get(ctx, now); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestCacheSlowIMDSDoesNotDelayRequests: while a refresh hangs on a slow
// IMDS, requests keep getting the cached set at once.
func TestCacheSlowIMDSDoesNotDelayRequests(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		gate := make(chan struct{})
		p := &fakeProvider{next: func(n int) (*Credentials, error) {
			if n > 1 {
				<-gate // IMDS answers slowly
			}
			return imdsCreds(fmt.Sprintf("ASIA%d", n), time.Now().Add(time.Hour)), nil
		}}
		c := newTestCache(p, &syncBuffer{}, 0)
		c.Start(t.Context())
		defer c.Close()
		time.Sleep(45 * time.Minute) // the refresh moment with u=0; it now hangs
		synctest.Wait()
		before := time.Now()
		for range 100 {
			creds, err := c.Get(t.Context(), time.Now())
			if err != nil || creds.AccessKeyID != "ASIA1" {
				t.Fatalf("Get during a slow refresh = %v, %v", creds, err)
			}
		}
		if waited := time.Since(before); waited != 0 {
			t.Errorf("requests waited %v for a slow IMDS", waited)
		}
		close(gate)
		synctest.Wait()
		if creds, _ := c.Get(t.Context(), time.Now()); creds.AccessKeyID != "ASIA2" {
			t.Errorf("after the slow refresh: %s, want ASIA2", creds.AccessKeyID)
		}
	})
}

// TestCacheNoWaitAtExpiry: when the provider is failing slowly at the
// moment the cached set expires, no request waits on it: each gets the
// extended set at once.
func TestCacheNoWaitAtExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		p := &fakeProvider{next: func(n int) (*Credentials, error) {
			if n == 1 {
				return imdsCreds("ASIAONE", start.Add(time.Hour)), nil
			}
			time.Sleep(3 * time.Second) // a fetch that hangs, then fails
			return nil, errors.New("IMDS answered 500")
		}}
		c := newTestCache(p, &syncBuffer{}, 0.5)
		c.refreshBefore = 2 * time.Second // the refresh starts 1.67 s before expiry
		c.Start(t.Context())
		defer c.Close()
		time.Sleep(time.Hour)
		if p.count() != 2 {
			t.Fatalf("fetches at expiry = %d, want 2 (the second still running)", p.count())
		}
		at := time.Now()
		var wg sync.WaitGroup
		for range 100 {
			wg.Go(func() {
				creds, err := c.Get(t.Context(), time.Now())
				if err != nil || creds.AccessKeyID != "ASIAONE" {
					t.Errorf("Get at expiry = %v, %v; want the extended set", creds, err)
				}
				if waited := time.Since(at); waited != 0 {
					t.Errorf("Get at expiry waited %v on a failing provider", waited)
				}
			})
		}
		wg.Wait()
		if !c.Status(time.Now()).Extended {
			t.Error("Status.Extended = false after requests at expiry")
		}
	})
}
