package main

// Time in one place: the injectable clock every component reads, pauses that
// end with their context, exponential backoff with full jitter, how a
// duration reads in a log line, and the count of goroutines that outlive
// a request (backgroundWork). Nothing here depends on another file.

import (
	"context"
	"sync"
	"time"
)

// clock reads the time; a nil clock is time.Now. Components take one so
// tests (and testing/synctest) fix the instants they assert.
type clock func() time.Time

// read returns the current time.
func (c clock) read() time.Time {
	if c == nil {
		return time.Now()
	}
	return c()
}

// fetchTimeout bounds one shared fetch from a credential source (token,
// role and credentials together) and every wait for one.
const fetchTimeout = 10 * time.Second

// sleepCtx pauses for d unless ctx ends first.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// backoff is exponential: base for the first retry, doubling, capped.
type backoff struct {
	base, ceiling time.Duration
}

// limit is the longest pause before retry n (1-based).
func (b backoff) limit(n int) time.Duration {
	if n < 1 {
		n = 1
	}
	return min(b.base<<min(n-1, 30), b.ceiling)
}

// fullJitter is the pause before retry n with u uniform in [0, 1): anywhere
// from zero to the limit, which spreads a fleet's retries the most
// (https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/).
func (b backoff) fullJitter(n int, u float64) time.Duration {
	return time.Duration(u * float64(b.limit(n)))
}

// durationText formats a time left for logs and health text; zero reads
// "never" (credentials that never expire, a refresh never planned). It is
// the one place "never" is written.
func durationText(d time.Duration) string {
	if d == 0 {
		return "never"
	}
	return d.Round(time.Second).String()
}

// timeLeft is t-now; zero for a zero t (never).
func timeLeft(t, now time.Time) time.Duration {
	if t.IsZero() {
		return 0
	}
	return t.Sub(now)
}

// untilText formats t-now like durationText; a zero t is "never".
func untilText(t, now time.Time) string { return durationText(timeLeft(t, now)) }

// expiryText says when credentials with d left expire: "expire in
// 5h59m54s", or "never expire" for zero.
func expiryText(d time.Duration) string {
	if d == 0 {
		return durationText(d) + " expire"
	}
	return "expire in " + durationText(d)
}

// backgroundWork counts the goroutines that outlive a request (probes,
// witnesses' deadlines), so Close can end them and wait. The zero value is
// ready to use.
type backgroundWork struct {
	mu sync.Mutex // guards closed and closing, so no start follows close's wait
	// closing is closed by close; made on first use.
	closing chan struct{}
	closed  bool
	running sync.WaitGroup
}

// start counts one goroutine in and returns the channel that tells it to
// end, or false once close has begun.
func (b *backgroundWork) start() (<-chan struct{}, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, false
	}
	if b.closing == nil {
		b.closing = make(chan struct{})
	}
	b.running.Add(1)
	return b.closing, true
}

// done counts one goroutine out.
func (b *backgroundWork) done() { b.running.Done() }

// close tells every goroutine to end and waits for them.
func (b *backgroundWork) close() {
	b.mu.Lock()
	if !b.closed {
		b.closed = true
		if b.closing != nil {
			close(b.closing)
		}
	}
	b.mu.Unlock()
	b.running.Wait()
}
