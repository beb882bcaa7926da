package main

// The decision table row by row, the retry policy's counts, and two
// attempts of one exchange in flight at once through the seam.

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

func TestDecide(t *testing.T) {
	ok := &http.Response{StatusCode: 200}
	gone := clientGone(context.Canceled)
	noCreds := &proxyError{status: 503, kind: kindCredentials, err: errors.New("no credentials yet")}
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
// an attempt shares nothing writable; the loop's record then takes both.
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
	facts := make([]attemptFacts, 2)
	var done sync.WaitGroup
	for i := range facts {
		done.Go(func() { facts[i] = tp.attempt(t.Context(), &up) })
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
		tp.record(&x, &up, f)
	}
	if x.attempts != 2 || x.upstreamStatus != 206 {
		t.Errorf("record: attempts %d, upstream status %d; want 2 and 206", x.attempts, x.upstreamStatus)
	}
	if n := len(tp.s3.received()); n != 2 {
		t.Errorf("S3 saw %d requests, want 2", n)
	}
}
