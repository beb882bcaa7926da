package main

// The down/probe state of a bucket with replicas, at exact instants.

import (
	"testing"
	"testing/synctest"
	"time"
)

func TestBucketHealthMarkDownAndProbe(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := &bucketHealth{rand: func() float64 { return 0.5 }} // probes exactly probeInterval apart
		now := time.Now
		for i := 1; i < markDownAfter; i++ {
			if ch := h.report(false, false, now()); ch != noChange || !h.Up() {
				t.Fatalf("after %d failures: %v, up %v; want still up", i, ch, h.Up())
			}
		}
		if ch := h.report(false, false, now()); ch != markedDown || h.Up() {
			t.Fatalf("after %d failures: %v; want marked down", markDownAfter, ch)
		}
		if ok, _ := h.admit(now()); ok {
			t.Error("a bucket just marked down admitted a request")
		}
		time.Sleep(probeInterval - time.Millisecond)
		if ok, _ := h.admit(now()); ok {
			t.Error("admitted a probe before the probe moment")
		}
		time.Sleep(time.Millisecond)
		ok, probe := h.admit(now())
		if !ok || !probe {
			t.Fatalf("at the probe moment: admit %v probe %v; want one probe", ok, probe)
		}
		if ok, _ := h.admit(now()); ok {
			t.Error("a second request was admitted while the probe runs")
		}
		if ch := h.report(false, true, now()); ch != noChange || h.Up() {
			t.Fatalf("a failed probe: %v; want still down", ch)
		}
		time.Sleep(probeInterval)
		if ok, probe := h.admit(now()); !ok || !probe {
			t.Fatal("no second probe one interval after the failed one")
		}
		if ch := h.report(true, true, now()); ch != cameBack || !h.Up() {
			t.Fatalf("a successful probe: %v; want back up", ch)
		}
		if ok, probe := h.admit(now()); !ok || probe {
			t.Error("a bucket back up is not used as usual")
		}
		// A success resets the count of failures in a row.
		h.report(false, false, now())
		h.report(true, false, now())
		h.report(false, false, now())
		if !h.Up() {
			t.Error("failures that were not in a row marked the bucket down")
		}
	})
}

func TestBucketHealthJitter(t *testing.T) {
	for _, u := range []float64{0, 0.5, 0.999} {
		h := &bucketHealth{rand: func() float64 { return u }}
		if d := h.jittered(); d < probeInterval/2 || d >= probeInterval*3/2 {
			t.Errorf("jittered(%v) = %v, outside [%v, %v)", u, d, probeInterval/2, probeInterval*3/2)
		}
	}
}
