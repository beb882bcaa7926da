package main

// The outputs: New Relic payloads checked against the Metric API's documented
// schema and limits, through an outage and a rejected key.

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

const testLicenseKey = "eu01xxTESTLICENSEKEY0123456789abcdefNRAL"

// fakeNewRelic is a Metric API stand-in: it checks every payload against
// the documented schema and limits and answers with status() (202 when
// nil). Counts are summed by name and attributes.
type fakeNewRelic struct {
	t      *testing.T
	status func(n int) int

	mu       sync.Mutex // guards every field below
	requests int
	accepted int
	counts   map[string]int64
	summary  map[string]int64 // summary counts by name
	gauges   map[string]float64
}

func newFakeNewRelic(t *testing.T, status func(n int) int) *fakeNewRelic {
	return &fakeNewRelic{t: t, status: status, counts: map[string]int64{}, summary: map[string]int64{}, gauges: map[string]float64{}}
}

func (f *fakeNewRelic) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests++
	status := http.StatusAccepted
	if f.status != nil {
		status = f.status(f.requests)
	}
	if status != http.StatusAccepted {
		w.WriteHeader(status)
		// Echoing the key, as a careless endpoint might: it must not
		// reach the log.
		fmt.Fprintf(w, `{"error":{"type":"standard","message":"injected %d for key %s"}}`, status, r.Header.Get("Api-Key"))
		return
	}
	if err := f.check(r); err != nil {
		f.t.Errorf("payload %d breaks the Metric API's rules: %v", f.requests, err)
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	f.accepted++
	w.WriteHeader(http.StatusAccepted)
	io.WriteString(w, `{"requestId":"f0e7bfff-001a-b000-0000-01682bcf4565"}`)
}

// check validates one request (https://docs.newrelic.com/docs/data-apis/ingest-apis/metric-api/report-metrics-metric-api/)
// and records its metrics.
func (f *fakeNewRelic) check(r *http.Request) error {
	switch {
	case r.Method != http.MethodPost:
		return fmt.Errorf("method %s", r.Method)
	case r.Header.Get("Content-Type") != "application/json":
		return fmt.Errorf("Content-Type %q", r.Header.Get("Content-Type"))
	case !strings.EqualFold(r.Header.Get("Content-Encoding"), "gzip"):
		return fmt.Errorf("Content-Encoding %q", r.Header.Get("Content-Encoding"))
	case r.Header.Get("Api-Key") != testLicenseKey:
		return fmt.Errorf("Api-Key missing or wrong")
	}
	compressed, _ := io.ReadAll(r.Body)
	if len(compressed) >= 1_000_000 {
		return fmt.Errorf("payload %d bytes, limit 10^6", len(compressed))
	}
	zr, err := gzip.NewReader(bytes.NewReader(compressed))
	if err != nil {
		return err
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		return err
	}
	var batches []struct {
		Common *struct {
			Timestamp  *int64         `json:"timestamp"`
			IntervalMS *int64         `json:"interval.ms"`
			Attributes map[string]any `json:"attributes"`
		} `json:"common"`
		Metrics []map[string]json.RawMessage `json:"metrics"`
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&batches); err != nil {
		return fmt.Errorf("not a JSON array of batches: %w", err)
	}
	if len(batches) == 0 {
		return fmt.Errorf("empty array")
	}
	for _, b := range batches {
		if len(b.Metrics) == 0 {
			return fmt.Errorf("a batch with no metrics")
		}
		var commonTS, commonInterval int64
		if b.Common != nil {
			if b.Common.Timestamp != nil {
				commonTS = *b.Common.Timestamp
			}
			if b.Common.IntervalMS != nil {
				commonInterval = *b.Common.IntervalMS
			}
			if err := checkAttributes(b.Common.Attributes); err != nil {
				return fmt.Errorf("common: %w", err)
			}
		}
		for _, m := range b.Metrics {
			var name, kind string
			json.Unmarshal(m["name"], &name)
			json.Unmarshal(m["type"], &kind)
			if name == "" || len(name) >= 255 {
				return fmt.Errorf("metric name %q", name)
			}
			ts, interval := commonTS, commonInterval
			if v, ok := m["timestamp"]; ok {
				json.Unmarshal(v, &ts)
			}
			if v, ok := m["interval.ms"]; ok {
				json.Unmarshal(v, &interval)
			}
			if now := time.Now(); ts < now.Add(-48*time.Hour).UnixMilli() || ts > now.Add(24*time.Hour).UnixMilli() {
				return fmt.Errorf("%s: timestamp %d outside [now-48h, now+24h]", name, ts)
			}
			var attrs map[string]any
			if v, ok := m["attributes"]; ok {
				if err := json.Unmarshal(v, &attrs); err != nil {
					return fmt.Errorf("%s: attributes: %w", name, err)
				}
			}
			if err := checkAttributes(attrs); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			key := name + attrKey(attrs)
			switch kind {
			case "count":
				var v int64
				if err := json.Unmarshal(m["value"], &v); err != nil || interval <= 0 {
					return fmt.Errorf("count %s: value %s, interval.ms %d", name, m["value"], interval)
				}
				f.counts[key] += v
			case "summary":
				var v struct{ Count, Sum, Min, Max *float64 }
				if err := json.Unmarshal(m["value"], &v); err != nil || v.Count == nil || v.Sum == nil || v.Min == nil || v.Max == nil || interval <= 0 {
					return fmt.Errorf("summary %s: value %s, interval.ms %d", name, m["value"], interval)
				}
				if *v.Min > *v.Max || *v.Sum < *v.Min {
					return fmt.Errorf("summary %s: min %v max %v sum %v", name, *v.Min, *v.Max, *v.Sum)
				}
				f.summary[key] += int64(*v.Count)
			case "gauge":
				var v float64
				if err := json.Unmarshal(m["value"], &v); err != nil {
					return fmt.Errorf("gauge %s: value %s", name, m["value"])
				}
				f.gauges[key] = v
			default:
				return fmt.Errorf("metric %s: type %q", name, kind)
			}
		}
	}
	return nil
}

// checkAttributes applies the documented attribute rules.
func checkAttributes(attrs map[string]any) error {
	for k, v := range attrs {
		if k == "" || len(k) >= 255 {
			return fmt.Errorf("attribute name %q", k)
		}
		switch v := v.(type) {
		case string:
			if len(v) > 4096 {
				return fmt.Errorf("attribute %s: %d bytes", k, len(v))
			}
		case float64, bool, json.Number:
		default:
			return fmt.Errorf("attribute %s: %T", k, v)
		}
	}
	return nil
}

func attrKey(attrs map[string]any) string {
	if len(attrs) == 0 {
		return ""
	}
	return fmt.Sprintf("%v", attrs)
}

// inMemory sends requests straight to h, so synctest can run the pusher.
func inMemory(h http.Handler) *http.Client {
	return &http.Client{Transport: roundTripperFunc(func(r *http.Request) (*http.Response, error) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		return rec.Result(), nil
	})}
}

func newTestPusher(m *Metrics, nr *fakeNewRelic, logs *syncBuffer) *newRelicPusher {
	return &newRelicPusher{metrics: m, endpoint: "https://metric-api.newrelic.com/metric/v1", key: testLicenseKey,
		interval: defaultNewRelicInterval, client: inMemory(nr),
		attributes: map[string]any{"service.name": "s3-helper", "host.name": "packager-1", "instance": "127.0.0.1:8080"},
		log:        slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
}

// TestNewRelicPushesDeltas: every interval one payload that passes the
// schema checks; counts are the changes since the last push, so their sum
// equals the traffic.
func TestNewRelicPushesDeltas(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := newMetrics(nil, true)
		m.Gauge(mInFlight, func() int64 { return 3 })
		nr := newFakeNewRelic(t, nil)
		logs := &syncBuffer{}
		p := newTestPusher(m, nr, logs)
		p.start()
		for range 5 {
			m.Request("GET", 200, 100, 20*time.Millisecond)
		}
		m.Request("PROPFIND", 405, 0, time.Millisecond)
		m.S3Error("NoSuchKey", 404)
		time.Sleep(defaultNewRelicInterval)
		synctest.Wait()
		for range 3 {
			m.Request("GET", 200, 100, 40*time.Millisecond)
		}
		time.Sleep(defaultNewRelicInterval)
		synctest.Wait()
		p.close()
		nr.mu.Lock()
		defer nr.mu.Unlock()
		if nr.accepted != 3 { // two intervals, then the final push of close
			t.Fatalf("payloads accepted = %d, want 3", nr.accepted)
		}
		for key, want := range map[string]int64{
			"s3helper.requests" + attrKey(map[string]any{"method": "GET", "status": "200"}):   8,
			"s3helper.requests" + attrKey(map[string]any{"method": "other", "status": "405"}): 1,
			"s3helper.bytes_out": 800,
			"s3helper.upstream.s3_errors" + attrKey(map[string]any{"code": "NoSuchKey"}): 1,
		} {
			if nr.counts[key] != want {
				t.Errorf("count %s = %d, want %d (all: %v)", key, nr.counts[key], want, nr.counts)
			}
		}
		if nr.summary["s3helper.request_ms"] != 9 || nr.gauges["s3helper.in_flight"] != 3 {
			t.Errorf("summary count %d, in_flight gauge %v", nr.summary["s3helper.request_ms"], nr.gauges["s3helper.in_flight"])
		}
		if strings.Contains(logs.String(), testLicenseKey) {
			t.Error("the license key reached a log line")
		}
	})
}

// TestNewRelicOutage: while New Relic answers 503, payloads wait (at most
// maxPendingPayloads, the oldest dropped and counted) and are retried with
// backoff; when it recovers they are delivered in order.
func TestNewRelicOutage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := newMetrics(nil, true)
		var down = true
		var mu sync.Mutex
		nr := newFakeNewRelic(t, func(int) int {
			mu.Lock()
			defer mu.Unlock()
			if down {
				return http.StatusServiceUnavailable
			}
			return http.StatusAccepted
		})
		p := newTestPusher(m, nr, &syncBuffer{})
		p.start()
		const intervals = maxPendingPayloads + 5
		for range intervals {
			m.Request("GET", 200, 1, time.Millisecond)
			time.Sleep(defaultNewRelicInterval)
			synctest.Wait()
		}
		nr.mu.Lock()
		tries := nr.requests
		nr.mu.Unlock()
		// The first interval's push is retried after 1, 2, 4 and 8 s (the
		// 16 s one would land past the next push); from then on each
		// interval's push is one try, its retry past the next push.
		if want := intervals + 4; tries != want {
			t.Errorf("attempts during the outage = %d over %d intervals, want %d", tries, intervals, want)
		}
		if n := p.waiting.Load(); n != maxPendingPayloads {
			t.Errorf("pending payloads = %d, want the bound %d", n, maxPendingPayloads)
		}
		if d := p.dropped.Load(); d != intervals-maxPendingPayloads {
			t.Errorf("dropped = %d, want %d", d, intervals-maxPendingPayloads)
		}
		mu.Lock()
		down = false
		mu.Unlock()
		time.Sleep(defaultNewRelicInterval)
		synctest.Wait()
		p.close()
		key := "s3helper.requests" + attrKey(map[string]any{"method": "GET", "status": "200"})
		nr.mu.Lock()
		defer nr.mu.Unlock()
		// The payloads kept are the newest; each carries one request but
		// the one after recovery, which carries none.
		if got, want := nr.counts[key], int64(maxPendingPayloads-1); got != want {
			t.Errorf("requests delivered after recovery = %d, want %d", got, want)
		}
	})
}

// TestNewRelicRejectedKey: a 403 is logged once with the reason, never
// retried, and the key appears nowhere.
func TestNewRelicRejectedKey(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := newMetrics(nil, true)
		nr := newFakeNewRelic(t, func(int) int { return http.StatusForbidden })
		logs := &syncBuffer{}
		p := newTestPusher(m, nr, logs)
		p.start()
		for range 4 {
			m.Request("GET", 200, 1, time.Millisecond)
			time.Sleep(defaultNewRelicInterval)
			synctest.Wait()
		}
		p.close()
		nr.mu.Lock()
		requests := nr.requests
		nr.mu.Unlock()
		if requests != 5 { // four intervals and the final push at close
			t.Errorf("requests = %d, want 5: a rejected payload is not retried", requests)
		}
		if n := strings.Count(logs.String(), "level=ERROR"); n != 1 || !strings.Contains(logs.String(), "status=403") || !strings.Contains(logs.String(), "injected 403") {
			t.Errorf("want one error line naming the status and reason:\n%s", logs)
		}
		if strings.Contains(logs.String(), testLicenseKey) {
			t.Error("the license key reached a log line")
		}
		if p.dropped.Load() != 5 {
			t.Errorf("dropped = %d, want 5", p.dropped.Load())
		}
	})
}

// TestNewRelicHangingEndpoint: an endpoint that accepts pushes and never
// answers costs each push newRelicTimeout; payloads wait (bounded) and
// close still returns. Recording never waits on it.
func TestNewRelicHangingEndpoint(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := newMetrics(nil, true)
		var attempts atomic.Int64
		logs := &syncBuffer{}
		p := newTestPusher(m, nil, logs)
		p.client = &http.Client{Transport: roundTripperFunc(func(r *http.Request) (*http.Response, error) {
			attempts.Add(1)
			<-r.Context().Done() // a connection that never answers, as a client sees it
			return nil, r.Context().Err()
		})}
		p.start()
		const intervals = maxPendingPayloads + 5
		for range intervals {
			start := time.Now()
			m.Request("GET", 200, 1, time.Millisecond)
			if time.Since(start) != 0 {
				t.Fatal("recording a request waited on New Relic")
			}
			time.Sleep(defaultNewRelicInterval)
			synctest.Wait()
		}
		if n := p.waiting.Load(); n != maxPendingPayloads {
			t.Errorf("pending payloads = %d, want the bound %d", n, maxPendingPayloads)
		}
		if d := p.dropped.Load(); d != intervals-maxPendingPayloads {
			t.Errorf("dropped = %d, want %d", d, intervals-maxPendingPayloads)
		}
		// Each try hangs for newRelicTimeout. The first interval's push
		// is tried at +0, +11 s and +23 s (retries after 1 s and 2 s);
		// the second's at +0 and +18 s; the rest once each, since every
		// later retry would land past the next push.
		if n, want := attempts.Load(), int64(intervals+3); n != want {
			t.Errorf("push attempts = %d over %d intervals of a hanging endpoint, want %d", n, intervals, want)
		}
		closed := make(chan struct{})
		go func() { p.close(); close(closed) }()
		time.Sleep(newRelicTimeout)
		synctest.Wait()
		select {
		case <-closed:
		default:
			t.Fatal("close did not return within one push timeout")
		}
		if !strings.Contains(logs.String(), "New Relic push failed") || strings.Contains(logs.String(), testLicenseKey) {
			t.Errorf("want the failure logged, without the key:\n%s", logs)
		}
	})
}
