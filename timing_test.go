package main

// The clock, pauses bounded by their context, backoff limits and full
// jitter, and durations as logs read them.

import (
	"context"
	"testing"
	"testing/synctest"
	"time"
)

func TestClockRead(t *testing.T) {
	fixed := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	if got := clock(func() time.Time { return fixed }).read(); !got.Equal(fixed) {
		t.Errorf("injected clock = %v", got)
	}
	synctest.Test(t, func(t *testing.T) {
		if got := clock(nil).read(); !got.Equal(time.Now()) {
			t.Errorf("nil clock = %v, want time.Now()", got)
		}
	})
}

func TestBackoff(t *testing.T) {
	b := backoff{base: 50 * time.Millisecond, ceiling: time.Second}
	for n, want := range map[int]time.Duration{0: 50 * time.Millisecond, 1: 50 * time.Millisecond, 2: 100 * time.Millisecond,
		3: 200 * time.Millisecond, 5: 800 * time.Millisecond, 6: time.Second, 100: time.Second} {
		if got := b.limit(n); got != want {
			t.Errorf("limit(%d) = %v, want %v", n, got, want)
		}
	}
	for _, tt := range []struct {
		n    int
		u    float64
		want time.Duration
	}{{1, 0, 0}, {1, 0.5, 25 * time.Millisecond}, {3, 0.25, 50 * time.Millisecond}, {40, 0.999, 999 * time.Millisecond}} {
		if got := b.fullJitter(tt.n, tt.u); got != tt.want {
			t.Errorf("fullJitter(%d, %v) = %v, want %v", tt.n, tt.u, got, tt.want)
		}
	}
}

func TestSleepCtx(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		if err := sleepCtx(t.Context(), 3*time.Second); err != nil || time.Since(start) != 3*time.Second {
			t.Errorf("sleepCtx(3s) = %v after %v", err, time.Since(start))
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		start = time.Now()
		if err := sleepCtx(ctx, time.Hour); err != context.DeadlineExceeded || time.Since(start) != time.Second {
			t.Errorf("sleepCtx past its context = %v after %v", err, time.Since(start))
		}
		if err := sleepCtx(ctx, 0); err != context.DeadlineExceeded {
			t.Errorf("sleepCtx(0) on an ended context = %v", err)
		}
	})
}

func TestDurationTexts(t *testing.T) {
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct{ got, want string }{
		{durationText(0), "never"},
		{durationText(90*time.Minute + 400*time.Millisecond), "1h30m0s"},
		{untilText(time.Time{}, now), "never"},
		{untilText(now.Add(5*time.Hour+59*time.Minute+54*time.Second), now), "5h59m54s"},
		{expiryText(timeLeft(time.Time{}, now)), "never expire"},
		{expiryText(timeLeft(now.Add(time.Hour), now)), "expire in 1h0m0s"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}
