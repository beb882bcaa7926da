package main

// What S3's times to first byte are doing now, for the hedge delay: a
// log-scale histogram over the last 512 to 1024 attempts of one route,
// whose 95th percentile is recomputed every few samples and read with one
// atomic load. Nothing here depends on another file.

import (
	"math"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// ttfbBucketCount buckets of a quarter octave each, from 100 µs:
	// 100 µs·2^(i/4) to 100 µs·2^((i+1)/4), the last up to about 6.5 s.
	ttfbBucketCount = 64
	ttfbFirstBound  = 100 * time.Microsecond
	// ttfbGeneration is how many samples a generation holds; the window
	// is the current generation and the one before.
	ttfbGeneration = 512
	// ttfbMinSamples is how many samples the window needs before it
	// names a percentile.
	ttfbMinSamples = 64
	// ttfbRecomputeEvery is how often (in samples) the percentile is
	// recomputed.
	ttfbRecomputeEvery = 16
)

// latencyWindow is a concurrency-safe estimate of a latency distribution's
// 95th percentile. The zero value is ready to use.
type latencyWindow struct {
	mu        sync.Mutex // guards cur, prev and n
	cur, prev [ttfbBucketCount]uint32
	n         int
	// p95 is the last computed percentile in nanoseconds; 0 until the
	// window holds ttfbMinSamples.
	p95 atomic.Int64
}

// ttfbBucket is the bucket of d.
func ttfbBucket(d time.Duration) int {
	if d < ttfbFirstBound {
		return 0
	}
	i := int(4 * math.Log2(float64(d)/float64(ttfbFirstBound)))
	return min(i, ttfbBucketCount-1)
}

// ttfbBucketTop is the upper bound of bucket i.
func ttfbBucketTop(i int) time.Duration {
	return time.Duration(float64(ttfbFirstBound) * math.Exp2(float64(i+1)/4))
}

// observe adds one sample.
func (w *latencyWindow) observe(d time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.cur[ttfbBucket(d)]++
	w.n++
	if w.n == ttfbGeneration {
		w.prev, w.cur, w.n = w.cur, [ttfbBucketCount]uint32{}, 0
	}
	if w.n%ttfbRecomputeEvery == 0 {
		w.p95.Store(int64(w.quantileLocked(0.95)))
	}
}

// quantileLocked is the upper bound of the bucket holding quantile q, or
// 0 with too few samples. w.mu must be held.
func (w *latencyWindow) quantileLocked(q float64) time.Duration {
	var total uint32
	for i := range w.cur {
		total += w.cur[i] + w.prev[i]
	}
	if total < ttfbMinSamples {
		return 0
	}
	rank := uint32(math.Ceil(q * float64(total)))
	var seen uint32
	for i := range w.cur {
		seen += w.cur[i] + w.prev[i]
		if seen >= rank {
			return ttfbBucketTop(i)
		}
	}
	return ttfbBucketTop(ttfbBucketCount - 1)
}

// percentile95 is the last computed 95th percentile; 0 while the window
// has too few samples.
func (w *latencyWindow) percentile95() time.Duration { return time.Duration(w.p95.Load()) }
