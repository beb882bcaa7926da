package main

// The decision table row by row, the retry policy's counts, and two
// attempts of one exchange in flight at once through the seam.

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

func TestDecide(t *testing.T) {
	ok := &http.Response{StatusCode: 200}
	gone := clientGone(context.Canceled)
	noCreds := &proxyError{kind: kindCredentials, err: errors.New("no credentials yet")}
	reset := classifyTransport(errors.New("connection reset by peer"))
	skewed := skewReading{adopt: true, offset: time.Hour, code: "RequestTimeTooSkewed"}
	tests := []struct {
		name    string
		facts   attemptFacts
		tried   retryState
		verdict verdict
		fix     fix
		kind    string // the decision's error kind, "" for none
	}{
		{"a 2xx passes on", attemptFacts{resp: ok, status: 200}, retryState{}, passOn, noFix, ""},
		{"a 304 passes on", attemptFacts{resp: &http.Response{StatusCode: 304}, status: 304}, retryState{}, passOn, noFix, ""},
		{"client gone", attemptFacts{err: gone}, retryState{}, passOn, noFix, kindClientGone},
		{"no credentials", attemptFacts{err: noCreds}, retryState{}, passOn, noFix, kindCredentials},
		{"transport failure", attemptFacts{err: reset}, retryState{}, retryLater, noFix, "transport"},
		{"skewed clock", attemptFacts{status: 403, s3: s3ErrorDetails{code: "RequestTimeTooSkewed"}, skew: skewed}, retryState{}, signAgain, adoptClock, ""},
		{"skewed again after correcting", attemptFacts{status: 403, s3: s3ErrorDetails{code: "RequestTimeTooSkewed"}, skew: skewed}, retryState{reclocked: true}, passOn, noFix, ""},
		{"expired token", attemptFacts{status: 400, s3: s3ErrorDetails{code: "ExpiredToken"}}, retryState{}, signAgain, refreshCredentials, ""},
		{"unknown key ID", attemptFacts{status: 403, s3: s3ErrorDetails{code: "InvalidAccessKeyId"}}, retryState{}, signAgain, refreshCredentials, ""},
		{"rejected after a refresh", attemptFacts{status: 403, s3: s3ErrorDetails{code: "InvalidAccessKeyId"}}, retryState{refreshed: true}, passOn, noFix, ""},
		{"SlowDown", attemptFacts{status: 503, s3: s3ErrorDetails{code: "SlowDown"}}, retryState{}, retryLater, noFix, "status_503"},
		{"503 without a code (HEAD)", attemptFacts{status: 503}, retryState{}, retryLater, noFix, "status_503"},
		{"InternalError", attemptFacts{status: 500, s3: s3ErrorDetails{code: "InternalError"}}, retryState{}, retryLater, noFix, "status_500"},
		{"502", attemptFacts{status: 502}, retryState{}, retryLater, noFix, "status_502"},
		{"504", attemptFacts{status: 504}, retryState{}, retryLater, noFix, "status_504"},
		{"404 is the answer", attemptFacts{status: 404, s3: s3ErrorDetails{code: "NoSuchKey"}}, retryState{}, passOn, noFix, ""},
		{"403 AccessDenied is the answer", attemptFacts{status: 403, s3: s3ErrorDetails{code: "AccessDenied"}}, retryState{}, passOn, noFix, ""},
		{"412 is the answer", attemptFacts{status: 412, s3: s3ErrorDetails{code: "PreconditionFailed"}}, retryState{}, passOn, noFix, ""},
		{"416 is the answer", attemptFacts{status: 416, s3: s3ErrorDetails{code: "InvalidRange"}}, retryState{}, passOn, noFix, ""},
		{"a redirect is the answer", attemptFacts{status: 301, s3: s3ErrorDetails{code: "PermanentRedirect"}}, retryState{}, passOn, noFix, ""},
		{"retries spent: still retryLater, the policy refuses", attemptFacts{status: 503}, retryState{retries: 3}, retryLater, noFix, "status_503"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := decide(&tt.facts, tt.tried)
			kind := ""
			if d.err != nil {
				kind = d.err.kind
			}
			if d.verdict != tt.verdict || d.fix != tt.fix || kind != tt.kind {
				t.Errorf("decide = {%v %v %q}, want {%v %v %q}", d.verdict, d.fix, kind, tt.verdict, tt.fix, tt.kind)
			}
		})
	}
}

func TestRetryPolicyCounts(t *testing.T) {
	rp := retryPolicy{limit: 2}
	var tried retryState
	for i := 1; i <= 2; i++ {
		if !rp.retry(&tried) || tried.retries != i {
			t.Fatalf("retry %d refused or miscounted (%d)", i, tried.retries)
		}
	}
	if rp.retry(&tried) || tried.retries != 2 {
		t.Errorf("a third retry was allowed (retries %d) with limit 2", tried.retries)
	}
	if !rp.resume(1) || rp.resume(2) {
		t.Error("resume: want 2 resumes allowed, the third refused")
	}
	none := retryPolicy{limit: 0}
	if none.retry(&retryState{}) || none.resume(0) {
		t.Error("limit 0 allowed a retry or a resume")
	}
	for n := 1; n <= 12; n++ {
		if d := rp.wait(n, false); d < 0 || d > retryBackoff.limit(n) {
			t.Errorf("wait(%d) = %v, outside [0, %v]", n, d, retryBackoff.limit(n))
		}
		if d := rp.wait(n, true); d < 0 || d > throttleBackoff.limit(n) {
			t.Errorf("throttled wait(%d) = %v, outside [0, %v]", n, d, throttleBackoff.limit(n))
		}
	}
}

// TestTwoAttemptsInFlight runs two attempts of one upstream request at once:
// S3 holds each answer until both requests arrived. Under -race this proves
// an attempt shares nothing writable; the fetch's record then takes both
// into its trace.
func TestTwoAttemptsInFlight(t *testing.T) {
	tp := newTestProxy(t)
	tp.s3.put("k", []byte("both ways"))
	var arrived sync.WaitGroup
	arrived.Add(2)
	tp.s3.fault = func(w http.ResponseWriter, r *http.Request, n int) bool {
		arrived.Done()
		arrived.Wait()
		return false
	}
	r := httptest.NewRequest("GET", "/k", nil)
	r.Header.Set("Range", "bytes=0-3")
	var x exchange
	up, err := tp.upstreamFor(r, &x)
	if err != nil {
		t.Fatal(err)
	}
	var tr fetchTrace
	facts := make([]attemptFacts, 2)
	var done sync.WaitGroup
	for i := range facts {
		done.Go(func() { facts[i] = tp.upstream.attempt(t.Context(), &up, nil) })
	}
	done.Wait()
	for i := range facts {
		f := &facts[i]
		if f.err != nil || f.resp == nil || f.status != 206 {
			t.Fatalf("attempt %d: status %d, err %v", i, f.status, f.err)
		}
		body, _ := io.ReadAll(f.resp.Body)
		f.resp.Body.Close()
		if string(body) != "both" {
			t.Errorf("attempt %d body %q, want %q", i, body, "both")
		}
		tp.upstream.record(&tr, &up, f)
	}
	if tr.attempts != 2 || tr.status != 206 {
		t.Errorf("record: attempts %d, upstream status %d; want 2 and 206", tr.attempts, tr.status)
	}
	if n := len(tp.s3.received()); n != 2 {
		t.Errorf("S3 saw %d requests, want 2", n)
	}
}

// TestRetryBudgetArithmetic is the SDKs' standard-mode quota row by row.
func TestRetryBudgetArithmetic(t *testing.T) {
	logs := &syncBuffer{}
	b := newRetryBudget(20, slog.New(slog.NewTextHandler(logs, nil)))
	var retry, timeout, first budgetToken
	pay := func(tok *budgetToken, cost int64) func() bool {
		return func() bool {
			var ok bool
			*tok, ok = b.spend(cost)
			return ok
		}
	}
	steps := []struct {
		name   string
		do     func() bool
		ok     bool
		tokens int64
	}{
		{"a retry costs 5", pay(&retry, retryCostOf(&proxyError{kind: "status_503"})), true, 15},
		{"a timeout retry costs 10", pay(&timeout, retryCostOf(&proxyError{kind: kindTimeout})), true, 5},
		{"a retry that succeeds: its release refunds its cost", func() bool { retry.release(); return true }, true, 10},
		{"a first try that succeeds adds 1", func() bool { first = b.firstTry(); first.release(); return true }, true, 11},
		{"a timeout retry", pay(&timeout, timeoutRetryCost), true, 1},
		{"an empty budget refuses", pay(&retry, retryCost), false, 1},
		{"and again", pay(&retry, retryCost), false, 1},
		{"never above the capacity", func() bool { b.give(1000); return true }, true, 20},
	}
	for _, s := range steps {
		if ok := s.do(); ok != s.ok || b.Tokens() != s.tokens {
			t.Errorf("%s: ok %v, tokens %d; want %v, %d", s.name, ok, b.Tokens(), s.ok, s.tokens)
		}
	}
	// The capacity 20 never reaches budgetRefilled (100): refilled is logged
	// only in TestBrownoutIsNotMultiplied. Empty is logged once.
	if n := strings.Count(logs.String(), "retry budget empty"); n != 1 {
		t.Errorf("empty logged %d times, want once:\n%s", n, logs)
	}
	var none *retryBudget
	if tok, ok := none.spend(1000); !ok || none.Tokens() != 0 {
		t.Error("no budget must never refuse")
	} else if tok.release(); none.Tokens() != 0 {
		t.Error("no budget must never refuse")
	}
	if newRetryBudget(0, nil) != nil {
		t.Error("-retry-budget 0 must mean no budget")
	}
}

func TestHedgeAllowance(t *testing.T) {
	a := newHedgeAllowance()
	for i := range maxHedgeBurst {
		if !a.take() {
			t.Fatalf("hedge %d of the burst refused", i+1)
		}
	}
	if a.take() {
		t.Fatal("a hedge beyond the burst was allowed")
	}
	a.giveBack() // one the budget refused: it was never sent
	if !a.take() || a.take() {
		t.Fatal("a hedge given back is not exactly one hedge to take again")
	}
	for range 9 {
		a.earn()
	}
	if a.take() {
		t.Error("9 requests earned a hedge; it takes 10 (a tenth each)")
	}
	a.earn()
	if !a.take() {
		t.Error("10 requests did not earn a hedge")
	}
	for range 1000 {
		a.earn()
	}
	n := 0
	for a.take() {
		n++
	}
	if n != maxHedgeBurst {
		t.Errorf("after 1000 requests %d hedges are saved up, want the burst %d", n, maxHedgeBurst)
	}
}

func TestThrottling(t *testing.T) {
	for _, tt := range []struct {
		status int
		code   string
		want   bool
	}{{503, "SlowDown", true}, {503, "", true}, {503, "ServiceUnavailable", false}, {500, "InternalError", false}, {502, "", false}} {
		if got := decide(&attemptFacts{status: tt.status, s3: s3ErrorDetails{code: tt.code}}, retryState{}).throttled; got != tt.want {
			t.Errorf("%d %q: throttled %v, want %v", tt.status, tt.code, got, tt.want)
		}
	}
}

// TestBrownoutIsNotMultiplied: S3 answers every request SlowDown for 1600
// requests (8 s at 200/s), then recovers. The budget pays for 100 retries
// (500 tokens at 5), then every client gets S3's own 503 after one request;
// each gets it within 2 s; once S3 recovers nothing fails, and the budget
// logs its emptying and its refilling once each.
func TestBrownoutIsNotMultiplied(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var healthy atomic.Bool
		s := &scriptedS3{answer: func(n int, r *http.Request) (*http.Response, error) {
			if !healthy.Load() {
				return errorAnswer(503, "SlowDown", time.Time{}), nil
			}
			return objectAnswer(r, []byte("ok"), `"v1"`), nil
		}}
		logs := &syncBuffer{}
		p := scriptedProxy(s, hedgePolicy{mode: hedgeAuto}, logs)
		const storm, after = 1600, 200
		var slowest time.Duration
		for range storm {
			start := time.Now()
			if w := serveOne(p, httptest.NewRequest("GET", "/k", nil)); w.Code != 503 {
				t.Fatalf("during the storm a client got %d, want S3's 503", w.Code)
			}
			slowest = max(slowest, time.Since(start))
		}
		if n, limit := len(s.seen()), storm+defaultRetryBudget/retryCost; n != limit {
			t.Errorf("S3 saw %d requests for %d client requests, want %d (%.3f per client request)", n, storm, limit, float64(n)/storm)
		}
		if slowest > 2*time.Second {
			t.Errorf("the slowest 503 took %v, want under 2 s", slowest)
		}
		// Requests 1 to 33 retry 3 times (495 tokens), request 34 once
		// (the last 5) and is refused its second; every later one is
		// refused its first.
		if got, want := count(p, mBudgetRefused, refusedRetry), int64(1+storm-34); got != want {
			t.Errorf("retries refused = %d, want %d", got, want)
		}
		healthy.Store(true)
		for range after {
			if w := serveOne(p, httptest.NewRequest("GET", "/k", nil)); w.Code != 200 {
				t.Fatalf("after the storm a client got %d", w.Code)
			}
		}
		if p.upstream.policy.budget.Tokens() != after {
			t.Errorf("tokens after %d successes = %d, want %d", after, p.upstream.policy.budget.Tokens(), after)
		}
		for _, msg := range []string{"retry budget empty", "retry budget refilled"} {
			if n := strings.Count(logs.String(), msg); n != 1 {
				t.Errorf("%q logged %d times, want once", msg, n)
			}
		}
	})
}

// TestBudgetEmptiedByOneBucket: one budget serves the process. A bucket in
// a SlowDown storm spends it; another bucket's requests still succeed on
// their first try (they never needed a retry) and their successes refill
// the budget, which the sick bucket may then spend again, 1 retry per 5
// successes at most.
func TestBudgetEmptiedByOneBucket(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &scriptedS3{answer: func(n int, r *http.Request) (*http.Response, error) {
			if strings.HasPrefix(r.Host, "sick-bucket.") {
				return errorAnswer(503, "SlowDown", time.Time{}), nil
			}
			return objectAnswer(r, []byte("ok"), `"v1"`), nil
		}}
		p := scriptedProxy(s, hedgePolicy{mode: hedgeOff}, &syncBuffer{})
		p.routes = buildRoutes([]routeSpec{{"/", "media-bucket", ""}, {"/sick/", "sick-bucket", ""}},
			&url.URL{Scheme: "https", Host: "s3.eu-west-1.amazonaws.com"}, false, false)
		requestsTo := func(host string) (n int) {
			for _, r := range s.seen() {
				if strings.HasPrefix(r.host, host) {
					n++
				}
			}
			return n
		}
		for range 100 {
			serveOne(p, httptest.NewRequest("GET", "/sick/k", nil))
		}
		if n := requestsTo("sick-bucket."); n != 100+defaultRetryBudget/retryCost {
			t.Errorf("the sick bucket got %d requests for 100, want %d", n, 100+defaultRetryBudget/retryCost)
		}
		for range 50 {
			if w := serveOne(p, httptest.NewRequest("GET", "/k", nil)); w.Code != 200 {
				t.Fatalf("the healthy bucket answered %d", w.Code)
			}
		}
		if n := requestsTo("media-bucket."); n != 50 {
			t.Errorf("the healthy bucket got %d requests for 50", n)
		}
		if tokens := p.upstream.policy.budget.Tokens(); tokens != 50 {
			t.Errorf("tokens after 50 successes = %d, want 50", tokens)
		}
		for range 10 {
			serveOne(p, httptest.NewRequest("GET", "/sick/k", nil))
		}
		if n := requestsTo("sick-bucket."); n != 100+defaultRetryBudget/retryCost+10+50/retryCost {
			t.Errorf("the sick bucket got %d requests in all, want %d", n, 100+defaultRetryBudget/retryCost+10+50/retryCost)
		}
	})
}
