package main

// Whether a configured bucket's region can serve, for failing over to its
// replicas: a bucket whose fetches keep failing for the region's sake is
// marked down, so requests go straight to a replica without spending
// retries and backoff on it; one real request at a time, at a jittered
// moment, probes it, and the first that succeeds brings it back. Nothing
// here sends a request or logs: the proxy asks and reports.

import (
	"math/rand/v2"
	"sync"
	"time"
)

const (
	// markDownAfter is how many fetches in a row must fail for the
	// region's sake (connect errors, timeouts, 5xx after the retries)
	// before a bucket is marked down.
	markDownAfter = 3
	// probeInterval is the mean wait between probes of a bucket marked
	// down, jittered over half to one and a half times it, so a fleet's
	// probes spread and a recovered region takes its traffic back within
	// seconds.
	probeInterval = 10 * time.Second
)

// healthChange is what a report changed.
type healthChange int

const (
	noChange healthChange = iota
	markedDown
	cameBack
)

// bucketHealth is one configured bucket's state. Its methods are safe for
// concurrent use.
type bucketHealth struct {
	// rand returns jitter in [0, 1); nil means math/rand/v2.
	rand func() float64

	mu       sync.Mutex // guards the fields below
	down     bool
	failures int
	// nextProbe is when a bucket marked down may be tried again; probing
	// is set while that one request runs.
	nextProbe time.Time
	probing   bool
}

// admit reports whether a request may use the bucket at now, and whether
// it is the probe of a bucket marked down (which the caller must report).
func (h *bucketHealth) admit(now time.Time) (ok, probe bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case !h.down:
		return true, false
	case h.probing || now.Before(h.nextProbe):
		return false, false
	}
	h.probing = true
	return true, true
}

// report records how a fetch from the bucket ended: served, or failed for
// the region's sake. probe says it was admitted as the probe.
func (h *bucketHealth) report(served, probe bool, now time.Time) healthChange {
	h.mu.Lock()
	defer h.mu.Unlock()
	if probe {
		h.probing = false
	}
	if served {
		h.failures = 0
		if h.down {
			h.down = false
			return cameBack
		}
		return noChange
	}
	h.failures++
	if h.down {
		h.nextProbe = now.Add(h.jittered())
		return noChange
	}
	if h.failures >= markDownAfter {
		h.down, h.nextProbe = true, now.Add(h.jittered())
		return markedDown
	}
	return noChange
}

// Up reports whether the bucket is not marked down.
func (h *bucketHealth) Up() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return !h.down
}

// jittered is probeInterval spread over [1/2, 3/2) of it.
func (h *bucketHealth) jittered() time.Duration {
	u := rand.Float64()
	if h.rand != nil {
		u = h.rand()
	}
	return probeInterval/2 + time.Duration(u*float64(probeInterval))
}
