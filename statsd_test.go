package main

// The statsd emitter on a real UDP socket: line format, packets split on
// size and ticker, never blocking, drops counted.

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestMetricsLineFormat(t *testing.T) {
	ln, conn := udpListener(t)
	m := newStatsdEmitter(conn, "s3helper", "env:test,host:a", time.Hour)
	m.Count("requests.GET.206", 1)
	m.Timing("request_ms", 1500*time.Millisecond)
	m.Gauge("in_flight", 7)
	m.Count("bytes_out", 4096)
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	got := strings.Join(readPackets(t, ln, 4), "")
	want := "s3helper.requests.GET.206:1|c|#env:test,host:a\n" +
		"s3helper.request_ms:1500|ms|#env:test,host:a\n" +
		"s3helper.in_flight:7|g|#env:test,host:a\n" +
		"s3helper.bytes_out:4096|c|#env:test,host:a\n"
	if got != want {
		t.Errorf("packet:\n%s\nwant:\n%s", got, want)
	}
}

func TestMetricsFlushOnSize(t *testing.T) {
	ln, conn := udpListener(t)
	m := newStatsdEmitter(conn, "p", "", time.Hour)
	defer m.Close()
	const lines = 200 // ~20 bytes each: more than one packet
	for range lines {
		m.Count("upstream.retries", 1)
	}
	packets := readPackets(t, ln, 1) // the first full packet, sent without waiting for a tick
	for _, p := range packets {
		if len(p) > maxPacketBytes {
			t.Errorf("packet of %d bytes exceeds %d", len(p), maxPacketBytes)
		}
		if !strings.HasSuffix(p, "\n") || strings.Contains(p, "\n\n") {
			t.Errorf("packet splits a line: %q", p)
		}
	}
}

func TestMetricsFlushOnTicker(t *testing.T) {
	ln, conn := udpListener(t)
	m := newStatsdEmitter(conn, "p", "", 20*time.Millisecond)
	defer m.Close()
	var inFlight int64 = 3
	m.GaugeFunc("in_flight", func() int64 { return inFlight })
	m.Count("upstream.retries", 2)
	got := strings.Join(readPackets(t, ln, 2), "")
	if !strings.Contains(got, "p.upstream.retries:2|c\n") || !strings.Contains(got, "p.in_flight:3|g\n") {
		t.Errorf("ticker flush sent %q", got)
	}
}

// blockedWriter never returns from Write until released, like a stalled
// socket.
type blockedWriter struct {
	release chan struct{}
	once    sync.Once
}

func (w *blockedWriter) Write(p []byte) (int, error) { <-w.release; return len(p), nil }

func (w *blockedWriter) Close() error { w.once.Do(func() { close(w.release) }); return nil }

func TestMetricsNeverBlockAndCountDrops(t *testing.T) {
	w := &blockedWriter{release: make(chan struct{})}
	m := newStatsdEmitter(w, "p", "", time.Hour)
	done := make(chan struct{})
	go func() {
		for range 100_000 { // far more than the queue holds
			m.Count("requests.GET.200", 1)
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("emitting blocked on a stalled socket")
	}
	if m.Dropped() == 0 {
		t.Error("no drops counted although the socket was stalled")
	}
	w.Close()
	m.Close()
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("connection refused") }

func (failingWriter) Close() error { return nil }

func TestMetricsWriteErrorsCounted(t *testing.T) {
	m := newStatsdEmitter(failingWriter{}, "p", "", time.Hour)
	m.Count("upstream.retries", 1)
	m.Close()
	if m.Dropped() != 1 {
		t.Errorf("Dropped = %d, want 1", m.Dropped())
	}
}

func BenchmarkMetricsAppend(b *testing.B) {
	m := newStatsdEmitter(failingWriter{}, "s3helper", "", time.Hour)
	defer m.Close()
	b.ReportAllocs()
	for b.Loop() {
		m.Count("requests.GET.206", 1)
	}
}

// TestStatsdSegment: a configured value becomes one statsd name segment
// of A-Z a-z 0-9 _ - only, whatever the bucket or access point is called.
func TestStatsdSegment(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"plain", "media", "media"},
		{"dots", "my.media.bucket", "my_media_bucket"},
		{"directory bucket", "media--use1-az4--x-s3", "media--use1-az4--x-s3"},
		{"legacy name", "Legacy_Bucket", "Legacy_Bucket"},
		{"Multi-Region Access Point ARN", "arn:aws:s3::111122223333:accesspoint/mfzwi23gnjvgw.mrap",
			"arn_aws_s3__111122223333_accesspoint_mfzwi23gnjvgw_mrap"},
		{"line format bytes", "a|b@c#d e\nf", "a_b_c_d_e_f"},
		{"past ASCII, byte by byte", "caf\u00e9", "caf__"},
	}
	for _, tt := range tests {
		if got := statsdSegment(tt.in); got != tt.want {
			t.Errorf("%s: statsdSegment(%q) = %q, want %q", tt.name, tt.in, got, tt.want)
		}
	}
}

// TestStatsdGaugeSetNames: bucket gauges named after an access point's ARN
// and a directory bucket are well-formed statsd lines, one segment each.
func TestStatsdGaugeSetNames(t *testing.T) {
	ln, conn := udpListener(t)
	m := newMetrics(newStatsdEmitter(conn, "s3helper", "", time.Hour), false)
	buckets := []string{"arn:aws:s3::111122223333:accesspoint/mfzwi23gnjvgw.mrap", "media--use1-az4--x-s3"}
	m.GaugeSet(mBucketUp, buckets, func(int) int64 { return 1 })
	if err := m.statsd.Close(); err != nil {
		t.Fatal(err)
	}
	got := strings.Join(readPackets(t, ln, 2), "")
	want := "s3helper.upstream.bucket_up.arn_aws_s3__111122223333_accesspoint_mfzwi23gnjvgw_mrap:1|g\n" +
		"s3helper.upstream.bucket_up.media--use1-az4--x-s3:1|g\n"
	if got != want {
		t.Errorf("packet:\n%s\nwant:\n%s", got, want)
	}
}
