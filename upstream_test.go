package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// setPause makes every retry pause d.
func setPause(p *Proxy, d time.Duration) {
	p.upstream.policy.pause = func(int) time.Duration { return d }
}

// emptyBudget leaves p a retry budget that cannot pay for one retry.
func emptyBudget(p *Proxy) {
	p.upstream.policy.budget = newRetryBudget(1, slog.New(slog.DiscardHandler))
}

// budgetTokens is what the proxy's retry budget holds.
func budgetTokens(p *Proxy) int64 { return p.upstream.policy.budget.Tokens() }

// bucketIsUp reports whether bucket is up in p's health.
func bucketIsUp(t *testing.T, p *Proxy, bucket string) bool {
	t.Helper()
	states, _ := p.bucketStates()
	for _, s := range states {
		if s.bucket == bucket {
			return s.up
		}
	}
	t.Fatalf("bucket %s has no health", bucket)
	return false
}

// impatient is a GET whose client gives up after patience.
func impatient(patience time.Duration) *http.Request {
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	time.AfterFunc(patience+time.Second, cancel)
	return httptest.NewRequest("GET", "/k", nil).WithContext(ctx)
}

// clientsGiveUp sends n GETs at once whose clients give up after patience,
// and waits until their handlers returned.
func clientsGiveUp(p *Proxy, n int, patience time.Duration) {
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() { serveOne(p, impatient(patience)) })
	}
	wg.Wait()
}

// hangingPrimary is S3 whose primary region accepts every request and
// never answers while hung is set; the replica serves.
func hangingPrimary(hung func() bool) *scriptedS3 {
	return &scriptedS3{answer: func(n int, r *http.Request) (*http.Response, error) {
		if strings.HasPrefix(r.Host, "media-west.") {
			return objectAnswer(r, []byte("the replica's copy"), `"west"`), nil
		}
		if hung() {
			<-r.Context().Done()
			return nil, r.Context().Err()
		}
		return objectAnswer(r, []byte("the primary's copy"), `"east"`), nil
	}}
}

// TestHangingRegionMarkedDownWhateverTheClientsPatience: the primary
// accepts and never answers; clients give up after 3 s, sooner than the
// 5 s timeout. The first clients fail, but the region is marked down as
// surely as one that refuses, and the next client gets the replica's copy
// at once.
func TestHangingRegionMarkedDownWhateverTheClientsPatience(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, logs := replicaProxy(hangingPrimary(func() bool { return true }))
		defer p.Close()
		clientsGiveUp(p, markDownAfter, 3*time.Second)
		time.Sleep(5 * time.Second)
		start := time.Now()
		w := serveOne(p, impatient(3*time.Second))
		if w.Body.String() != "the replica's copy" || time.Since(start) != 0 {
			t.Errorf("after %d clients gave up on a hanging region: %d %q after %v, want the replica's copy at once\n%s",
				markDownAfter, w.Code, w.Body, time.Since(start), logs)
		}
		if bucketIsUp(t, p, "media-bucket") {
			t.Error("the hanging primary is still up")
		}
	})
}

// TestLeavingClientsAreNoEvidence: clients that leave a healthy but slow
// region (answers in 2 s, clients patient 1 s, the timeout 5 s) never mark
// it down, and a client that leaves never marks a dead region back up.
func TestLeavingClientsAreNoEvidence(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &scriptedS3{answer: func(n int, r *http.Request) (*http.Response, error) {
			if !hold(r, 2*time.Second) {
				return nil, r.Context().Err()
			}
			return objectAnswer(r, []byte("slow"), `"east"`), nil
		}}
		p, _ := replicaProxy(s)
		for range 2 * markDownAfter {
			serveOne(p, impatient(time.Second))
			time.Sleep(2 * time.Second)
		}
		if !bucketIsUp(t, p, "media-bucket") {
			t.Error("a slow region whose clients left was marked down")
		}
	})
}

// TestBackgroundProbesBringEveryCopyBack: both copies fail until they are
// marked down, then both heal. Each is probed in the background and comes
// back, so when the primary fails again the replica serves at once.
func TestBackgroundProbesBringEveryCopyBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		primaryOK, replicaOK := false, false
		s := &scriptedS3{answer: func(n int, r *http.Request) (*http.Response, error) {
			mu.Lock()
			ok, copyName := primaryOK, "the primary's copy"
			if strings.HasPrefix(r.Host, "media-west.") {
				ok, copyName = replicaOK, "the replica's copy"
			}
			mu.Unlock()
			if !ok {
				return errorAnswer(503, "ServiceUnavailable", time.Time{}), nil
			}
			return objectAnswer(r, []byte(copyName), `"v"`), nil
		}}
		p, _ := replicaProxy(s)
		for range markDownAfter {
			serveOne(p, httptest.NewRequest("GET", "/k", nil))
		}
		if bucketIsUp(t, p, "media-bucket") || bucketIsUp(t, p, "media-west") {
			t.Fatal("both copies failing: want both marked down")
		}
		mu.Lock()
		primaryOK, replicaOK = true, true
		mu.Unlock()
		for range 4 {
			time.Sleep(probeInterval)
			serveOne(p, httptest.NewRequest("GET", "/k", nil))
			synctest.Wait()
		}
		if !bucketIsUp(t, p, "media-bucket") || !bucketIsUp(t, p, "media-west") {
			t.Fatalf("both healed 40 s ago: primary up %v, replica up %v", bucketIsUp(t, p, "media-bucket"), bucketIsUp(t, p, "media-west"))
		}
		mu.Lock()
		primaryOK = false
		mu.Unlock()
		if w := serveOne(p, httptest.NewRequest("GET", "/k", nil)); w.Code != 200 || w.Body.String() != "the replica's copy" {
			t.Errorf("the primary failing again: %d %q, want the replica's copy", w.Code, w.Body)
		}
	})
}

// TestProbeNeverHoldsARequest: the primary is marked down and still hangs
// when its probe is due; the request that finds the probe due is served by
// the replica at once, never made to wait on the probe.
func TestProbeNeverHoldsARequest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, _ := replicaProxy(hangingPrimary(func() bool { return true }))
		defer p.Close()
		clientsGiveUp(p, markDownAfter, 3*time.Second)
		time.Sleep(2 * probeInterval)
		for range 3 {
			start := time.Now()
			w := serveOne(p, impatient(3*time.Second))
			if w.Body.String() != "the replica's copy" || time.Since(start) != 0 {
				t.Errorf("with a probe due: %d %q after %v, want the replica's copy at once", w.Code, w.Body, time.Since(start))
			}
		}
	})
}

// TestBudgetRefusalIsNoEvidence: with the retry budget empty, a primary
// answering 503 fails over to the replica on every request, but a fetch
// the budget cut short says nothing of the region, so the primary is
// never marked down on it.
func TestBudgetRefusalIsNoEvidence(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &scriptedS3{answer: func(n int, r *http.Request) (*http.Response, error) {
			if strings.HasPrefix(r.Host, "media-west.") {
				return objectAnswer(r, []byte("the replica's copy"), `"west"`), nil
			}
			return errorAnswer(503, "SlowDown", time.Time{}), nil
		}}
		p, _ := replicaProxy(s)
		emptyBudget(p)
		for range 2 * markDownAfter {
			if w := serveOne(p, httptest.NewRequest("GET", "/k", nil)); w.Body.String() != "the replica's copy" {
				t.Fatalf("client got %d %q, want the replica's copy", w.Code, w.Body)
			}
		}
		if !bucketIsUp(t, p, "media-bucket") {
			t.Error("fetches the budget refused marked the primary down")
		}
	})
}

// objectAt is S3's answer for body under etag, last modified at modified:
// Range, If-Match and If-Unmodified-Since as S3 applies them. Like S3's
// GetObject, it ignores If-Range (s3-helper never sends it).
func objectAt(r *http.Request, body []byte, etag string, modified time.Time) *http.Response {
	rec := httptest.NewRecorder()
	rec.Header().Set("Etag", etag)
	req := r.Clone(r.Context())
	req.Header.Del("If-Range")
	http.ServeContent(rec, req, "", modified, strings.NewReader(string(body)))
	return rec.Result()
}

// TestIfRange: RFC 9110 §13.1.5. S3's GetObject does not evaluate
// If-Range, so s3-helper does: a validator that still matches gets the
// range, a stale one (or a weak tag, or a date that is not exactly the
// object's) gets the whole object as 200, and If-Range without Range is
// ignored. The client's own If-Match still decides.
func TestIfRange(t *testing.T) {
	body := []byte("0123456789abcdef")
	modified := time.Date(2026, 11, 2, 3, 4, 5, 0, time.UTC)
	date := func(t time.Time) string { return t.Format(http.TimeFormat) }
	for _, tt := range []struct {
		name   string
		header http.Header
		status int
		body   string
	}{
		{"the entity tag matches", http.Header{"Range": {"bytes=0-3"}, "If-Range": {`"v2"`}}, 206, "0123"},
		{"a stale entity tag", http.Header{"Range": {"bytes=0-3"}, "If-Range": {`"v1"`}}, 200, string(body)},
		{"a weak entity tag never matches", http.Header{"Range": {"bytes=0-3"}, "If-Range": {`W/"v2"`}}, 200, string(body)},
		{"the date matches", http.Header{"Range": {"bytes=4-7"}, "If-Range": {date(modified)}}, 206, "4567"},
		{"an older date", http.Header{"Range": {"bytes=4-7"}, "If-Range": {date(modified.Add(-time.Hour))}}, 200, string(body)},
		{"a later date is no exact match", http.Header{"Range": {"bytes=4-7"}, "If-Range": {date(modified.Add(time.Hour))}}, 200, string(body)},
		{"a date that is not one", http.Header{"Range": {"bytes=4-7"}, "If-Range": {"yesterday"}}, 200, string(body)},
		{"without Range it is ignored", http.Header{"If-Range": {`"v1"`}}, 200, string(body)},
		{"the client's own If-Match decides", http.Header{"Range": {"bytes=0-3"}, "If-Range": {`"v1"`}, "If-Match": {`"v1"`}}, 412, ""},
		{"the client's own If-Unmodified-Since decides", http.Header{"Range": {"bytes=0-3"}, "If-Range": {`"v2"`}, "If-Unmodified-Since": {date(modified.Add(-time.Hour))}}, 412, ""},
		{"a stale tag beside the client's own condition that holds", http.Header{"Range": {"bytes=0-3"}, "If-Range": {`"v1"`}, "If-Unmodified-Since": {date(modified.Add(time.Hour))}}, 200, string(body)},
		{"a date beside the client's own If-Match that holds", http.Header{"Range": {"bytes=4-7"}, "If-Range": {date(modified)}, "If-Match": {`"v2"`}}, 206, "4567"},
		{"a stale date beside the client's own If-Match that holds", http.Header{"Range": {"bytes=4-7"}, "If-Range": {date(modified.Add(-time.Hour))}, "If-Match": {`"v2"`}}, 200, string(body)},
	} {
		for _, hedged := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s hedged %v", tt.name, hedged), func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					s := &scriptedS3{answer: func(n int, r *http.Request) (*http.Response, error) {
						if hedged && n == 1 && !hold(r, time.Second) {
							return nil, r.Context().Err()
						}
						if r.Header.Get("If-Range") != "" {
							return nil, errors.New("If-Range reached S3")
						}
						return objectAt(r, body, `"v2"`, modified), nil
					}}
					hedge := hedgePolicy{mode: hedgeOff}
					if hedged {
						hedge = hedgePolicy{mode: hedgeFixed, fixed: 50 * time.Millisecond}
					}
					p := scriptedProxy(s, hedge, &syncBuffer{})
					r := httptest.NewRequest("GET", "/k", nil)
					maps.Copy(r.Header, tt.header)
					w := serveOne(p, r)
					if w.Code != tt.status || tt.body != "" && w.Body.String() != tt.body {
						t.Errorf("client got %d %q, want %d %q", w.Code, w.Body, tt.status, tt.body)
					}
					if tt.status == 200 && (w.Header().Get("Content-Range") != "" || w.Header().Get("Etag") != `"v2"`) {
						t.Errorf("the whole object came with Content-Range %q, ETag %q", w.Header().Get("Content-Range"), w.Header().Get("Etag"))
					}
				})
			})
		}
	}
}

// headerTimeout is the transport's own timeout awaiting S3's headers.
type headerTimeout struct{}

func (headerTimeout) Error() string   { return "net/http: timeout awaiting response headers" }
func (headerTimeout) Timeout() bool   { return true }
func (headerTimeout) Temporary() bool { return true }

// TestBudgetRefusalAfterATimeoutIsEvidence: with the budget empty, a
// primary whose every attempt times out (clients patient enough to wait,
// so no witness) is marked down all the same: a timeout is the region's
// doing whether or not a retry followed it.
func TestBudgetRefusalAfterATimeoutIsEvidence(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &scriptedS3{answer: func(n int, r *http.Request) (*http.Response, error) {
			if strings.HasPrefix(r.Host, "media-west.") {
				return objectAnswer(r, []byte("the replica's copy"), `"west"`), nil
			}
			if !hold(r, 5*time.Second) {
				return nil, r.Context().Err()
			}
			return nil, headerTimeout{}
		}}
		p, _ := replicaProxy(s)
		emptyBudget(p)
		for range markDownAfter {
			serveOne(p, httptest.NewRequest("GET", "/k", nil))
		}
		if bucketIsUp(t, p, "media-bucket") {
			t.Fatal("three timeouts with the budget empty left the primary up")
		}
		start := time.Now()
		if w := serveOne(p, httptest.NewRequest("GET", "/k", nil)); w.Body.String() != "the replica's copy" || time.Since(start) != 0 {
			t.Errorf("after the mark-down: %q after %v, want the replica's copy at once", w.Body, time.Since(start))
		}
	})
}

// TestWitnessesWeighNo5xx: S3 answers each first attempt 503 after 1.5 s
// and its retry at once; clients leave after 1 s. A witness sees only the
// 503, never the retry S3 would have served, so it is no evidence: the
// primary stays up.
func TestWitnessesWeighNo5xx(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		tries := map[string]int{}
		s := &scriptedS3{answer: func(n int, r *http.Request) (*http.Response, error) {
			mu.Lock()
			tries[r.URL.Opaque]++
			first := tries[r.URL.Opaque] == 1
			mu.Unlock()
			if first {
				if !hold(r, 1500*time.Millisecond) {
					return nil, r.Context().Err()
				}
				return errorAnswer(503, "SlowDown", time.Time{}), nil
			}
			return objectAnswer(r, []byte("ok"), `"v"`), nil
		}}
		p, _ := replicaProxy(s)
		defer p.Close()
		for i := range 2 * markDownAfter {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			serveOne(p, httptest.NewRequest("GET", fmt.Sprintf("/k%d", i), nil).WithContext(ctx))
			cancel()
		}
		if !bucketIsUp(t, p, "media-bucket") {
			t.Error("503s that a retry would have served, seen only by witnesses, marked the primary down")
		}
	})
}

// TestWitnessDeadlineFromItsAttempt: a client gone before its fetch sent
// anything leaves a witness whose deadline runs from the attempt that is
// sent, not from the zero time, so the region is not failed at once.
func TestWitnessDeadlineFromItsAttempt(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, _ := replicaProxy(hangingPrimary(func() bool { return true }))
		defer p.Close()
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		w := p.upstream.witness(ctx, p.routes[0].health)
		defer w.end()
		synctest.Wait() // clientLeft has run
		w.attemptSent(time.Now())
		time.Sleep(p.upstream.timeout - time.Millisecond)
		if cause := context.Cause(w.wctx); cause != nil {
			t.Fatalf("the witness ended %v after its attempt was sent: %v", p.upstream.timeout-time.Millisecond, cause)
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
		if cause := context.Cause(w.wctx); !errors.Is(cause, errOwnTimeout) {
			t.Errorf("at the timeout the witness ended with %v, want errOwnTimeout", cause)
		}
	})
}

// TestOwnTimeoutIsATimeout: an attempt ended by s3-helper's own timeout (a
// probe's, a witness's) is a timeout, not a client gone.
func TestOwnTimeoutIsATimeout(t *testing.T) {
	ctx, cancel := context.WithTimeoutCause(context.Background(), 0, errOwnTimeout)
	defer cancel()
	<-ctx.Done()
	if e := endedBy(ctx); e.kind != kindTimeout {
		t.Errorf("endedBy(own timeout) = %s, want %s", e.kind, kindTimeout)
	}
	gone, cancelGone := context.WithCancel(context.Background())
	cancelGone()
	if e := endedBy(gone); e.kind != kindClientGone {
		t.Errorf("endedBy(a client gone) = %s, want %s", e.kind, kindClientGone)
	}
}
