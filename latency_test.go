package main

// The latency window: bucket bounds, the percentile over two generations,
// and how it follows a shifted distribution.

import (
	"testing"
	"time"
)

func TestTTFBBuckets(t *testing.T) {
	for _, d := range []time.Duration{0, 50 * time.Microsecond, time.Millisecond, 10 * time.Millisecond, 80 * time.Millisecond, time.Second, time.Hour} {
		i := ttfbBucket(d)
		if d >= ttfbFirstBound && d < ttfbBucketTop(ttfbBucketCount-1) && (d >= ttfbBucketTop(i) || i > 0 && d < ttfbBucketTop(i-1)) {
			t.Errorf("%v in bucket %d [%v, %v)", d, i, ttfbBucketTop(i-1), ttfbBucketTop(i))
		}
		if i < 0 || i >= ttfbBucketCount {
			t.Errorf("%v: bucket %d out of range", d, i)
		}
	}
	// A quarter octave: each bound is 2^(1/4) ≈ 1.19 times the one before.
	if r := float64(ttfbBucketTop(10)) / float64(ttfbBucketTop(9)); r < 1.18 || r > 1.20 {
		t.Errorf("bucket ratio %v", r)
	}
}

func TestLatencyWindowFollowsTheDistribution(t *testing.T) {
	var w latencyWindow
	for range ttfbMinSamples - 1 {
		w.observe(10 * time.Millisecond)
	}
	if p := w.percentile95(); p != 0 {
		t.Errorf("p95 with %d samples = %v, want none yet", ttfbMinSamples-1, p)
	}
	// 95 fast samples in each hundred, 5 slow: the p95 is the fast ones'
	// bucket, and moves to the slow ones' once they are 6 in 100.
	for i := range 400 {
		d := 10 * time.Millisecond
		if i%100 >= 95 {
			d = 200 * time.Millisecond
		}
		w.observe(d)
	}
	if p, want := w.percentile95(), ttfbBucketTop(ttfbBucket(10*time.Millisecond)); p != want {
		t.Errorf("p95 of 95%% at 10 ms = %v, want %v", p, want)
	}
	// The distribution shifts to 80 ms: after two generations nothing of
	// the old one is left.
	for range 2 * ttfbGeneration {
		w.observe(80 * time.Millisecond)
	}
	if p, want := w.percentile95(), ttfbBucketTop(ttfbBucket(80*time.Millisecond)); p != want {
		t.Errorf("p95 after the shift to 80 ms = %v, want %v", p, want)
	}
}

func TestHedgeDelayClamps(t *testing.T) {
	fill := func(d time.Duration) *latencyWindow {
		w := &latencyWindow{}
		for range ttfbGeneration {
			w.observe(d)
		}
		return w
	}
	tests := []struct {
		name   string
		policy hedgePolicy
		w      *latencyWindow
		want   time.Duration
		ok     bool
	}{
		{"off", hedgePolicy{mode: hedgeOff}, fill(time.Millisecond), 0, false},
		{"fixed", hedgePolicy{mode: hedgeFixed, fixed: 150 * time.Millisecond}, fill(time.Millisecond), 150 * time.Millisecond, true},
		{"auto, no samples yet: the ceiling", hedgePolicy{}, &latencyWindow{}, hedgeCeiling, true},
		{"auto, a fast S3: the floor", hedgePolicy{}, fill(2 * time.Millisecond), hedgeFloor, true},
		{"auto, the p95", hedgePolicy{}, fill(120 * time.Millisecond), ttfbBucketTop(ttfbBucket(120 * time.Millisecond)), true},
		{"auto, a slow S3: the ceiling", hedgePolicy{}, fill(3 * time.Second), hedgeCeiling, true},
	}
	for _, tt := range tests {
		got, ok := tt.policy.delay(tt.w)
		if got != tt.want || ok != tt.ok {
			t.Errorf("%s: delay = %v %v, want %v %v", tt.name, got, ok, tt.want, tt.ok)
		}
	}
}
