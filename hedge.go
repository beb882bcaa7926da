package main

// A hedged race: one attempt, and a second beside it when the first has
// not ended within a delay. The race commits on an answer, not on an
// ending (gRPC's hedging design, proposal A6): the first outcome that
// commits wins and the other attempt is cancelled; an outcome that does not
// commit (a failure the caller would retry or correct) lets the other
// attempt run on, and the race fails only when every attempt in it failed.
// No hedge starts once the first attempt has ended. Nothing here knows the
// proxy, the exchange or S3: the caller gives the attempts and says which
// outcomes commit.

import (
	"context"
	"sync"
	"time"
)

// racers are the attempts of one race, as the caller defines them.
type racers[T any] interface {
	// sendAttempt sends attempt n (1, or 2 for the hedge) on actx, which
	// cancel ends. From then on it owns cancel: an outcome that outlives
	// it (a body still to read) must call cancel when done.
	sendAttempt(actx context.Context, cancel context.CancelFunc, n int) T
	// wins reports whether an outcome commits the race. Outcomes pass by
	// value: a pointer through the interface would move each to the heap.
	wins(T) bool
	// allowHedge is asked once the delay passed with the first attempt
	// still in flight; false means no hedge (a cap or a budget refused it).
	allowHedge() bool
	// drop releases what a committed outcome that lost the race holds.
	drop(T)
}

// raceResult is how a race ended.
type raceResult[T any] struct {
	// outcome is the winner's; when every attempt failed, the failure
	// that ended last (the most recent word on the matter).
	outcome T
	// other is the other attempt's outcome when a hedge was sent.
	other T
	// hedged is set when a hedge was sent.
	hedged bool
	// winner is the attempt whose outcome committed: 1, 2 (the hedge), or
	// 0 when none did.
	winner int
	// cancelled is set when the race cancelled the other attempt in
	// flight: its outcome says nothing of S3.
	cancelled bool
}

// hedgeRace is the state of one race. It is meant to be pooled inside the
// caller's own state: after init, a race whose hedge never fires allocates
// nothing but the first attempt's context. It is not safe for two races at
// once.
type hedgeRace[T any] struct {
	timer *time.Timer // runs fire
	// fired receives once each time fire has run.
	fired chan struct{}
	// hedgeDone receives the hedge's outcome once it ended.
	hedgeDone chan T
	// ctx is the request's, for the hedge; rs the caller's attempts. Both
	// are cleared when the race ends.
	ctx context.Context
	rs  racers[T]

	mu sync.Mutex // guards the fields below
	// ended and committed are per attempt (0 the first, 1 the hedge).
	ended, committed [2]bool
	// winner is 1 or 2 once an outcome committed; 0 before.
	winner int
	// last is the attempt that ended last (1 or 2).
	last      int
	started   bool
	cancelled bool
	cancel    [2]context.CancelFunc
}

// prepare makes the timer and channels once.
func (r *hedgeRace[T]) prepare() {
	if r.timer != nil {
		return
	}
	r.fired, r.hedgeDone = make(chan struct{}, 1), make(chan T, 1)
	r.timer = time.AfterFunc(time.Hour, r.fire)
	r.timer.Stop()
}

// runHedged races rs's attempts on ctx, the hedge after delay. Both attempts
// have ended when it returns; a winner's body may still be read.
func (r *hedgeRace[T]) runHedged(ctx context.Context, delay time.Duration, rs racers[T]) raceResult[T] {
	r.prepare()
	defer r.reset()
	actx, cancel := context.WithCancel(ctx)
	r.mu.Lock()
	r.ctx, r.rs, r.cancel[0] = ctx, rs, cancel
	r.mu.Unlock()
	r.timer.Reset(delay)
	first := rs.sendAttempt(actx, cancel, 1)
	r.attemptEnded(0, rs.wins(first))
	if !r.timer.Stop() {
		<-r.fired // fire ran: a hedge was started, or not
	}
	r.mu.Lock()
	started := r.started
	r.mu.Unlock()
	if !started {
		return raceResult[T]{outcome: first}
	}
	hedge := <-r.hedgeDone
	r.mu.Lock()
	defer r.mu.Unlock()
	res := raceResult[T]{hedged: true, cancelled: r.cancelled, winner: r.winner}
	switch {
	case r.winner == 2:
		res.outcome, res.other = hedge, first
		if r.committed[0] {
			rs.drop(first)
		}
	case r.winner == 1:
		res.outcome, res.other = first, hedge
		if r.committed[1] {
			rs.drop(hedge)
		}
	case r.last == 2:
		res.outcome, res.other = hedge, first
	default:
		res.outcome, res.other = first, hedge
	}
	return res
}

// attemptEnded records that attempt i (0 or 1) ended; a committed outcome wins when
// none has and cancels the other attempt if it is still in flight.
func (r *hedgeRace[T]) attemptEnded(i int, committed bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ended[i], r.committed[i], r.last = true, committed, i+1
	if !committed || r.winner != 0 {
		return
	}
	r.winner = i + 1
	if other := 1 - i; (other == 0 || r.started) && !r.ended[other] {
		r.cancel[other]()
		r.cancelled = true
	}
}

// fire starts the hedge, unless the first attempt has ended or the caller
// does not admit one.
func (r *hedgeRace[T]) fire() {
	defer func() { r.fired <- struct{}{} }()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ended[0] || !r.rs.allowHedge() {
		return
	}
	hctx, cancel := context.WithCancel(r.ctx)
	r.cancel[1], r.started = cancel, true
	rs := r.rs
	go func() {
		hedge := rs.sendAttempt(hctx, cancel, 2)
		r.attemptEnded(1, rs.wins(hedge))
		r.hedgeDone <- hedge
	}()
}

// reset readies the race for its next use, dropping the request's context
// and the caller's attempts so the pool holds neither.
func (r *hedgeRace[T]) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ctx, r.rs = nil, nil
	r.ended, r.committed, r.cancel = [2]bool{}, [2]bool{}, [2]context.CancelFunc{}
	r.winner, r.last, r.started, r.cancelled = 0, 0, false, false
}
