package main

// Whether a configured bucket's region can serve, for failing over to its
// replicas. Only what the region did moves a bucket (an answer, a refusal,
// a timeout of our own), never what the client did or what s3-helper
// refused:
//
//	state  evidence                                       next
//	up     a fetch failed for the region's sake           failures+1; down at markDownAfter in a row
//	up     a fetch served (the object or S3's 4xx word)   failures reset
//	down   a request finds the probe due                  one background probe is sent
//	down   the probe (or any fetch) served                up: it takes its traffic back
//	down   the probe failed                               the next probe in probeInterval, jittered
//	any    client gone (no witness stayed), no           nothing
//	       credentials, the budget refusing the retry of
//	       a 5xx, an attempt the hedge race cancelled
//
// A region that hangs is found whatever the clients' patience: when a
// client leaves while its attempt waits on S3, up to markDownAfter such
// attempts per bucket stay on as witnesses until s3-helper's own timeout.
// Nothing here sends a request or logs: the S3 client asks and reports.

import (
	"math/rand/v2"
	"sync"
	"time"
)

const (
	// markDownAfter is how many fetches in a row must fail for the
	// region's sake (connect errors, timeouts, 5xx after the retries)
	// before a bucket is marked down; it is also how many witnesses a
	// bucket keeps at once.
	markDownAfter = 3
	// probeInterval is the mean wait between probes of a bucket marked
	// down, jittered over half to one and a half times it, so a fleet's
	// probes spread and a recovered region takes its traffic back within
	// seconds.
	probeInterval = 10 * time.Second
)

// evidence is what a fetch says of its bucket's region.
type evidence int

const (
	// noEvidence: the client went away (and no witness stayed), there were
	// no credentials, the budget refused the retry of a 5xx, or the race
	// cancelled the attempt: nothing the region did.
	noEvidence evidence = iota
	// regionServed: S3 answered, with the object or its own 4xx word.
	regionServed
	// regionFailed: a connect error, a timeout or a transport failure, or
	// a 500, 502, 503 or 504 once the retries were spent (or at a probe).
	regionFailed
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
	// nextProbe is when a bucket marked down is probed again; probing
	// is set while that probe runs.
	nextProbe time.Time
	probing   bool
	// witnesses is how many attempts whose client left stay on.
	witnesses int
}

// admit reports whether a request may use the bucket at now, and whether
// the caller must send its probe (in the background, reporting it with
// probe set): the bucket is down and its probe is due.
func (h *bucketHealth) admit(now time.Time) (up, probe bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case !h.down:
		return true, false
	case h.probing || now.Before(h.nextProbe):
		return false, false
	}
	h.probing = true
	return false, true
}

// takeWitness claims a witness's place, if one is free.
func (h *bucketHealth) takeWitness() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.witnesses >= markDownAfter {
		return false
	}
	h.witnesses++
	return true
}

// endWitness frees a place takeWitness claimed.
func (h *bucketHealth) endWitness() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.witnesses--
}

// report records what a fetch from the bucket, or its probe (probe set),
// says of the region.
func (h *bucketHealth) report(ev evidence, probe bool, now time.Time) healthChange {
	h.mu.Lock()
	defer h.mu.Unlock()
	if probe {
		h.probing = false
	}
	switch ev {
	case noEvidence:
		if probe && h.down {
			h.nextProbe = now.Add(h.jittered())
		}
		return noChange
	case regionServed:
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
