package main

// The credential cache: refresh at exact instants, single flight, outages
// and static stability, all under testing/synctest.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

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

// TestHealthyNeverExpiring: credentials that never expire (the
// environment's) read "never expire", not "expire in never".
func TestHealthyNeverExpiring(t *testing.T) {
	ok, reason := credentialStatus{Source: sourceEnvironment, Valid: true}.Healthy()
	if !ok || !strings.HasSuffix(reason, ", never expire") {
		t.Errorf("Healthy() = %v %q, want healthy and \"…, never expire\"", ok, reason)
	}
}
