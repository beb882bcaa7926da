package main

// Signing with S3's time when this host's clock is off: the offset is
// learned from S3's Date header when S3 refuses a signature as too skewed,
// bounded, and trusted only for a while.

import (
	"context"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// maxClockOffset bounds a learned clock offset: a larger one means a
	// broken Date header, not a skewed clock.
	maxClockOffset = 24 * time.Hour
	// clockOffsetTTL is how long a learned offset is trusted; then the
	// local clock is tried again, and a remaining skew is re-learned at
	// the cost of one retried request.
	clockOffsetTTL = 10 * time.Minute
	// skewedSignatureThreshold is how far S3's Date must be from our clock
	// before a SignatureDoesNotMatch is taken for a skewed clock.
	skewedSignatureThreshold = 5 * time.Minute
	// dateResolution is the precision of an HTTP Date header, which is
	// truncated to the second: S3's time is Date plus half of it, on average.
	dateResolution = time.Second
	// relogClockOffsetChange is how much a learned offset must move to be
	// logged again.
	relogClockOffsetChange = time.Minute
)

// clockCorrection is the offset between S3's clock and this host's,
// learned from S3's Date header when S3 refuses a signature as too skewed
// (SigV4 allows 15 minutes). While no offset is learned, apply costs one
// atomic load.
type clockCorrection struct {
	current atomic.Pointer[clockOffset]

	mu sync.Mutex // guards logged
	// logged is the offset last logged.
	logged time.Duration
}

// clockOffset is one learned offset and when it stops being trusted.
type clockOffset struct {
	offset time.Duration
	until  time.Time
}

// apply returns the signing time for the local time now.
func (c *clockCorrection) apply(now time.Time) time.Time {
	if o := c.current.Load(); o != nil && now.Before(o.until) {
		return now.Add(o.offset)
	}
	return now
}

// Offset returns the offset in force at now, zero when none.
func (c *clockCorrection) Offset(now time.Time) time.Duration {
	if o := c.current.Load(); o != nil && now.Before(o.until) {
		return o.offset
	}
	return 0
}

// skewReading is what one S3 error reply says of this host's clock.
type skewReading struct {
	// adopt: S3's clock should be used for signing, at offset.
	adopt  bool
	offset time.Duration
	code   string
	// implausible: S3's Date is more than a day away, so it is not
	// adopted; date is that header, clipped, for the log.
	implausible bool
	date        string
}

// judge reads S3's error reply: the code is RequestTimeTooSkewed, or
// SignatureDoesNotMatch while S3's Date is more than 5 minutes from now,
// and the offset is not the one already in force. It changes nothing.
func (c *clockCorrection) judge(date, code string, now time.Time) skewReading {
	if code != "RequestTimeTooSkewed" && code != "SignatureDoesNotMatch" {
		return skewReading{}
	}
	serverTime, err := http.ParseTime(date)
	if err != nil {
		return skewReading{}
	}
	offset := serverTime.Add(dateResolution / 2).Sub(now)
	if offset.Abs() > maxClockOffset {
		return skewReading{implausible: true, date: clip(date, 40)}
	}
	if code == "SignatureDoesNotMatch" && offset.Abs() < skewedSignatureThreshold {
		return skewReading{}
	}
	if prev := c.current.Load(); code == "RequestTimeTooSkewed" && prev != nil && (prev.offset-offset).Abs() < 2*dateResolution && now.Before(prev.until) {
		return skewReading{} // signed with this very offset and still refused: not a clock problem
	}
	return skewReading{adopt: true, offset: offset, code: code}
}

// adopt signs with the offset r read from now on, for clockOffsetTTL, and
// logs it when it is new or moved by more than a minute.
func (c *clockCorrection) adopt(r skewReading, now time.Time, log *slog.Logger) {
	c.current.Store(&clockOffset{offset: r.offset, until: now.Add(clockOffsetTTL)})
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.logged == 0 || (r.offset-c.logged).Abs() > relogClockOffsetChange {
		c.logged = r.offset
		log.Warn("this host's clock is off from S3's; signing with S3's time (set the clock right: NTP, chrony or systemd-timesyncd)",
			"offset", r.offset, "s3_code", r.code)
	}
}

// reportImplausible logs a Date header too far off to adopt.
func reportImplausible(r skewReading, log *slog.Logger) {
	log.Log(context.Background(), slog.LevelError, "S3's Date header is more than a day from this host's clock; not adopting it", "s3_date", r.date)
}
