package main

// Signing with S3's time when this host's clock is off.

import (
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestProxyAdoptsS3ClockWhenSkewed: against an S3 whose clock is two hours
// ahead, the first request is refused, signed again with S3's time and
// served; later ones are served at once; when S3's clock moves back the
// offset is re-learned.
func TestProxyAdoptsS3ClockWhenSkewed(t *testing.T) {
	tp := newTestProxy(t)
	// One fixed instant for both clocks, on a whole second as a Date
	// header is: every offset below is exact.
	base := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	tp.now = func() time.Time { return base }
	tp.upstream.now = tp.now
	tp.s3.now = func() time.Time { return base }
	tp.s3.put("k", []byte("on time"))
	setAhead := func(d time.Duration) {
		tp.s3.mu.Lock()
		tp.s3.clockAhead = d
		tp.s3.mu.Unlock()
	}
	upstreamRequest := func() int { return len(tp.s3.received()) }
	setAhead(2 * time.Hour)
	if resp, body := get(t, "GET", tp.url+"/k", nil); resp.StatusCode != 200 || string(body) != "on time" {
		t.Fatalf("first GET with S3 2 h ahead = %d %q, want 200 after one retry", resp.StatusCode, body)
	}
	if n := upstreamRequest(); n != 2 {
		t.Errorf("upstream requests for the first GET = %d, want 2 (refused, then signed with S3's time)", n)
	}
	if off, want := tp.upstream.clockFix.Offset(base), 2*time.Hour+dateResolution/2; off != want {
		t.Errorf("learned offset = %v, want %v (S3's Date plus half its resolution)", off, want)
	}
	for range 3 {
		if resp, _ := get(t, "GET", tp.url+"/k", nil); resp.StatusCode != 200 {
			t.Fatalf("later GET = %d", resp.StatusCode)
		}
	}
	if n := upstreamRequest(); n != 5 {
		t.Errorf("upstream requests after 3 more GETs = %d, want 5: one each", n)
	}
	setAhead(0) // S3's clock moves back (or ours was fixed)
	if resp, _ := get(t, "GET", tp.url+"/k", nil); resp.StatusCode != 200 {
		t.Fatalf("GET after S3's clock moved back = %d", resp.StatusCode)
	}
	if off, want := tp.upstream.clockFix.Offset(base), dateResolution/2; off != want {
		t.Errorf("offset after S3's clock moved back = %v, want %v", off, want)
	}
	if n := strings.Count(tp.logs.String(), "clock is off"); n != 2 {
		t.Errorf("clock corrections logged %d times, want 2 (learned, then changed by 2 h):\n%s", n, tp.logs)
	}
}

func TestClockCorrectionBounds(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	log := slog.New(slog.DiscardHandler)
	tests := []struct {
		name, code string
		serverTime time.Time
		adopt      bool
	}{
		{"too skewed", "RequestTimeTooSkewed", now.Add(-3 * time.Hour), true},
		{"bad signature, clock far off", "SignatureDoesNotMatch", now.Add(20 * time.Minute), true},
		{"bad signature, clock close", "SignatureDoesNotMatch", now.Add(time.Minute), false},
		{"other code", "AccessDenied", now.Add(3 * time.Hour), false},
		{"more than a day", "RequestTimeTooSkewed", now.Add(25 * time.Hour), false},
	}
	// learn is what the proxy's loop does with an S3 error answer.
	learn := func(c *clockCorrection, date, code string, now time.Time, log *slog.Logger) bool {
		r := c.judge(date, code, now)
		if r.adopt {
			c.adopt(r, now, log)
		}
		return r.adopt
	}
	for _, tt := range tests {
		var c clockCorrection
		if got := learn(&c, tt.serverTime.Format(http.TimeFormat), tt.code, now, log); got != tt.adopt {
			t.Errorf("%s: learn = %v, want %v", tt.name, got, tt.adopt)
		}
		if tt.adopt {
			if got, want := c.apply(now), tt.serverTime.Add(dateResolution/2); !got.Equal(want) {
				t.Errorf("%s: apply = %v, want %v (S3's Date plus half its resolution)", tt.name, got, want)
			}
			if got := c.apply(now.Add(clockOffsetTTL)); !got.Equal(now.Add(clockOffsetTTL)) {
				t.Errorf("%s: the offset is still applied after %v", tt.name, clockOffsetTTL)
			}
		}
	}
	var c clockCorrection
	if learn(&c, "not a date", "RequestTimeTooSkewed", now, log) {
		t.Error("adopted an unparsable Date")
	}
}
