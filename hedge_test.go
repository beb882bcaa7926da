package main

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"syscall"
	"testing"
	"testing/synctest"
	"time"
)

// refused is a dial that found no one listening.
func refused() error { return &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED} }

// reset is a connection S3's side reset before any response byte.
func reset() error { return &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET} }

// TestHedgeRaceCommitsOnlyOnAnAnswer: a hedged pair in which one attempt
// fails fast (refused at connect, or reset) while the other answers: the
// failure lets the other attempt run on, the client gets its answer, S3
// saw exactly the two requests, and no retry is charged. When both fail,
// the race fails once and the fetch retries.
func TestHedgeRaceCommitsOnlyOnAnAnswer(t *testing.T) {
	body := []byte("the segment")
	for _, tt := range []struct {
		name string
		// first and hedge script the two attempts: after how long each
		// ends, and with what failure (nil: the object).
		firstAfter, hedgeAfter time.Duration
		firstErr, hedgeErr     func() error
		requests               int
		retries                int64
		took                   time.Duration
	}{
		{"the hedge refused at connect, the first answers after the delay", 200 * time.Millisecond, 0, nil, refused, 2, 0, 200 * time.Millisecond},
		{"the hedge reset, the first answers", 200 * time.Millisecond, 10 * time.Millisecond, nil, reset, 2, 0, 200 * time.Millisecond},
		{"the first reset after the hedge started, the hedge answers", 100 * time.Millisecond, 100 * time.Millisecond, reset, nil, 2, 0, 150 * time.Millisecond},
		{"both fail: one retry answers", 100 * time.Millisecond, 100 * time.Millisecond, reset, refused, 3, 1, 150 * time.Millisecond},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				s := &scriptedS3{answer: func(n int, r *http.Request) (*http.Response, error) {
					after, fail := tt.firstAfter, tt.firstErr
					if n == 2 {
						after, fail = tt.hedgeAfter, tt.hedgeErr
					}
					if n > 2 {
						after, fail = 0, nil
					}
					if !hold(r, after) {
						return nil, r.Context().Err()
					}
					if fail != nil {
						return nil, fail()
					}
					return objectAnswer(r, body, `"v1"`), nil
				}}
				p := scriptedProxy(s, hedgePolicy{mode: hedgeFixed, fixed: 50 * time.Millisecond}, &syncBuffer{})
				setPause(p, 0)
				start := time.Now()
				w := serveOne(p, httptest.NewRequest("GET", "/k", nil))
				if w.Code != 200 || w.Body.String() != string(body) {
					t.Fatalf("client got %d %q, want the object", w.Code, w.Body)
				}
				if took := time.Since(start); took != tt.took {
					t.Errorf("answered after %v, want %v", took, tt.took)
				}
				if n := len(s.seen()); n != tt.requests {
					t.Errorf("S3 saw %d requests, want %d", n, tt.requests)
				}
				if n := count(p, mRetries, 0); n != tt.retries {
					t.Errorf("retries counted %d, want %d", n, tt.retries)
				}
				for i, r := range s.seen() {
					if r.cancelled {
						t.Errorf("request %d was cancelled: no attempt that was answering should be", i+1)
					}
				}
			})
		})
	}
}

// TestNoHedgeAfterTheAnswer: an answer that arrives at the very instant
// the hedge delay ends leaves no hedge behind it, whichever of the two
// the scheduler runs first.
func TestNoHedgeAfterTheAnswer(t *testing.T) {
	for range 20 {
		synctest.Test(t, func(t *testing.T) {
			s := &scriptedS3{answer: func(n int, r *http.Request) (*http.Response, error) {
				if !hold(r, 50*time.Millisecond) {
					return nil, r.Context().Err()
				}
				return objectAnswer(r, []byte("x"), `"v1"`), nil
			}}
			p := scriptedProxy(s, hedgePolicy{mode: hedgeFixed, fixed: 50 * time.Millisecond}, &syncBuffer{})
			w := serveOne(p, httptest.NewRequest("GET", "/k", nil))
			if w.Code != 200 {
				t.Fatalf("client got %d", w.Code)
			}
			synctest.Wait()
			if n := len(s.seen()); n > 2 {
				t.Fatalf("S3 saw %d requests", n)
			}
			if n := len(s.seen()); n == 2 && !s.seen()[1].at.Equal(s.seen()[0].at.Add(50*time.Millisecond)) {
				t.Errorf("a hedge was sent at %v, after the answer was in", s.seen()[1].at)
			}
		})
	}
}

// TestHedgeBodyReadAfterTheRace: the winner's body is read after the race
// returned, and the loser's connection is closed; nothing is left open.
func TestHedgeBodyReadAfterTheRace(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		body := bytes.Repeat([]byte("b"), 100_000)
		s := &scriptedS3{answer: func(n int, r *http.Request) (*http.Response, error) {
			if n == 1 && !hold(r, time.Second) {
				return nil, r.Context().Err()
			}
			return objectAnswer(r, body, `"v1"`), nil
		}}
		p := scriptedProxy(s, hedgePolicy{mode: hedgeFixed, fixed: 50 * time.Millisecond}, &syncBuffer{})
		w := serveOne(p, httptest.NewRequest("GET", "/k", nil))
		got, _ := io.ReadAll(w.Result().Body)
		if w.Code != 200 || !bytes.Equal(got, body) {
			t.Fatalf("client got %d and %d bytes", w.Code, len(got))
		}
		if seen := s.seen(); len(seen) != 2 || !seen[0].cancelled {
			t.Errorf("S3 requests %+v: want the first cancelled once the hedge answered", seen)
		}
	})
}
