package main

// How S3's front ends look from outside: each address's state for
// /healthz and -check, and the counts the gauges report. Nothing here
// changes a front end.

import (
	"cmp"
	"fmt"
	"net/netip"
	"time"
)

// frontEndState is one address as /healthz and -check list it.
type frontEndState struct {
	addr              netip.AddrPort
	leftOut           bool
	inFlight          int64
	median            time.Duration
	reason            string
	probation, tested bool
}

// frontStates lists the name's addresses; one whose rest is over reads as
// in use on probation, as the next request will find it.
func (fs *frontEnds) frontStates() []frontEndState {
	now := fs.door.now.read()
	fs.mu.Lock()
	defer fs.mu.Unlock()
	out := make([]frontEndState, 0, len(fs.addrs))
	for _, fe := range fs.addrs {
		st := frontEndState{addr: fe.addr, leftOut: fe.leftOut && now.Before(fe.until), inFlight: fe.inFlight.Load(),
			reason: fe.reason, probation: fe.probation || fe.leftOut}
		if fe.n > 0 {
			st.median, st.tested = medianTTFB(fe.samples[:fe.n]), true
		}
		out = append(out, st)
	}
	return out
}

// tally is how many addresses the name has, in use and left out.
func (fs *frontEnds) tally() (known, inUse, leftOut int) {
	for _, st := range fs.frontStates() {
		if st.leftOut {
			leftOut++
		}
		known++
	}
	return known, known - leftOut, leftOut
}

// describeLines is one /healthz line per address of the name.
func (fs *frontEnds) describeLines() []string {
	var lines []string
	for _, st := range fs.frontStates() {
		state := "in use"
		switch {
		case st.leftOut:
			state = "left out: " + st.reason
		case st.probation:
			state = "in use, on probation"
		}
		line := fmt.Sprintf("front end %s %s: %s, %d in flight", fs.name, st.addr, state, st.inFlight)
		if st.tested {
			line += ", median time to first byte " + st.median.Round(time.Millisecond).String()
		}
		lines = append(lines, line)
	}
	if len(lines) == 0 {
		lines = append(lines, "front end "+fs.name+": no address yet: "+cmp.Or(errorText(fs.lastErrLocked()), "not resolved yet"))
	}
	return lines
}

// lastErrLocked is the last resolution's error.
func (fs *frontEnds) lastErrLocked() error {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.lastErr
}

// errorText is err's text, "" for nil.
func errorText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
