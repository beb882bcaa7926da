package main

// The down/probe state of a bucket with replicas, at exact instants.

import (
	"testing"
	"testing/synctest"
	"time"
)

// TestBucketHealthMarkDownAndProbe walks the transitions table of
// health.go row by row, at exact instants.
func TestBucketHealthMarkDownAndProbe(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := &bucketHealth{rand: func() float64 { return 0.5 }} // probes exactly probeInterval apart
		now := time.Now
		for i := 1; i < markDownAfter; i++ {
			if ch := h.report(regionFailed, false, now()); ch != noChange || !h.Up() {
				t.Fatalf("after %d failures: %v, up %v; want still up", i, ch, h.Up())
			}
			if ch := h.report(noEvidence, false, now()); ch != noChange || !h.Up() {
				t.Fatalf("no evidence after %d failures: %v; want nothing changed", i, ch)
			}
		}
		if ch := h.report(regionFailed, false, now()); ch != markedDown || h.Up() {
			t.Fatalf("after %d failures: %v; want marked down", markDownAfter, ch)
		}
		if up, probe := h.admit(now()); up || probe {
			t.Error("a bucket just marked down admitted a request or a probe")
		}
		time.Sleep(probeInterval - time.Millisecond)
		if _, probe := h.admit(now()); probe {
			t.Error("a probe before the probe moment")
		}
		time.Sleep(time.Millisecond)
		up, probe := h.admit(now())
		if up || !probe {
			t.Fatalf("at the probe moment: up %v probe %v; want one probe and no request", up, probe)
		}
		if _, probe := h.admit(now()); probe {
			t.Error("a second probe while the first runs")
		}
		if ch := h.report(regionFailed, true, now()); ch != noChange || h.Up() {
			t.Fatalf("a failed probe: %v; want still down", ch)
		}
		time.Sleep(probeInterval)
		if _, probe := h.admit(now()); !probe {
			t.Fatal("no second probe one interval after the failed one")
		}
		if ch := h.report(noEvidence, true, now()); ch != noChange || h.Up() {
			t.Fatalf("a probe that said nothing: %v; want still down", ch)
		}
		time.Sleep(probeInterval)
		if _, probe := h.admit(now()); !probe {
			t.Fatal("a probe that said nothing kept its place: no third probe")
		}
		if ch := h.report(regionServed, true, now()); ch != cameBack || !h.Up() {
			t.Fatalf("a successful probe: %v; want back up", ch)
		}
		if up, probe := h.admit(now()); !up || probe {
			t.Error("a bucket back up is not used as usual")
		}
		// A success resets the count of failures in a row; no evidence
		// neither counts nor resets.
		h.report(regionFailed, false, now())
		h.report(regionServed, false, now())
		h.report(regionFailed, false, now())
		h.report(noEvidence, false, now())
		h.report(regionFailed, false, now())
		if !h.Up() {
			t.Error("failures that were not in a row marked the bucket down")
		}
		h.report(regionFailed, false, now())
		if h.Up() {
			t.Error("three failures in a row, with no evidence between, left the bucket up")
		}
	})
}

// TestBucketHealthWitnesses: a bucket keeps at most markDownAfter
// witnesses at once; an ended one frees its place.
func TestBucketHealthWitnesses(t *testing.T) {
	h := &bucketHealth{}
	for i := range markDownAfter {
		if !h.takeWitness() {
			t.Fatalf("witness %d refused", i+1)
		}
	}
	if h.takeWitness() {
		t.Fatal("a witness beyond markDownAfter")
	}
	h.endWitness()
	if !h.takeWitness() {
		t.Error("an ended witness did not free its place")
	}
}

func TestBucketHealthJitter(t *testing.T) {
	for _, u := range []float64{0, 0.5, 0.999} {
		h := &bucketHealth{rand: func() float64 { return u }}
		if d := h.jittered(); d < probeInterval/2 || d >= probeInterval*3/2 {
			t.Errorf("jittered(%v) = %v, outside [%v, %v)", u, d, probeInterval/2, probeInterval*3/2)
		}
	}
}
