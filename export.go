package main

// The outputs that read the aggregates in metrics.go: Prometheus text on the
// admin listener, scraped on demand, and New Relic's Metric API, pushed
// every interval. Neither touches the request path: they read atomics.

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"sync/atomic"
	"time"
)

// promPrefix starts every Prometheus metric name.
const promPrefix = "s3helper_"

// promWriter writes the Prometheus text exposition format 0.0.4
// (https://prometheus.io/docs/instrumenting/exposition_formats/).
type promWriter struct{ w *bufio.Writer }

// family writes a metric family's HELP and TYPE lines.
func (p promWriter) family(name, kind, help string) {
	p.w.WriteString("# HELP " + promPrefix + name + " " + help + "\n")
	p.w.WriteString("# TYPE " + promPrefix + name + " " + kind + "\n")
}

// sample writes one sample; labels are name="value" pairs already escaped
// (every label value here comes from a fixed set).
func (p promWriter) sample(name, labels string, value int64) {
	p.w.WriteString(promPrefix + name)
	if labels != "" {
		p.w.WriteString("{" + labels + "}")
	}
	p.w.WriteByte(' ')
	p.w.WriteString(strconv.FormatInt(value, 10))
	p.w.WriteByte('\n')
}

// sampleFloat writes one sample with a float value.
func (p promWriter) sampleFloat(name, labels string, value float64) {
	p.w.WriteString(promPrefix + name)
	if labels != "" {
		p.w.WriteString("{" + labels + "}")
	}
	p.w.WriteByte(' ')
	p.w.WriteString(strconv.FormatFloat(value, 'g', -1, 64))
	p.w.WriteByte('\n')
}

// counter writes a one-sample counter family.
func (p promWriter) counter(name, help string, value int64) {
	p.family(name, "counter", help)
	p.sample(name, "", value)
}

// histogram writes a histogram family in seconds.
func (p promWriter) histogram(name, help string, h *histogram) {
	p.family(name, "histogram", help)
	var cumulative int64
	for i, bound := range latencyBuckets {
		cumulative += h.buckets[i].Load()
		p.sample(name+"_bucket", `le="`+strconv.FormatFloat(bound.Seconds(), 'g', -1, 64)+`"`, cumulative)
	}
	cumulative += h.buckets[len(latencyBuckets)].Load()
	p.sample(name+"_bucket", `le="+Inf"`, cumulative)
	p.sampleFloat(name+"_sum", "", time.Duration(h.sumNanos.Load()).Seconds())
	p.sample(name+"_count", "", cumulative)
}

// ServeHTTP writes every measurement in the Prometheus text format. It reads
// atomics only, so a scrape never holds up a request.
func (m *Metrics) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	bw := bufio.NewWriter(w)
	defer bw.Flush()
	p := promWriter{bw}
	a := m.agg

	p.family("requests_total", "counter", "Requests answered, by method (GET, HEAD or other) and status sent to the client (499: the client went away).")
	for mi, method := range metricMethods {
		for si := range a.requests[mi] {
			if n := a.requests[mi][si].Load(); n > 0 || mi == 0 && si == 0 {
				p.sample("requests_total", `method="`+method+`",status="`+statusLabel(si)+`"`, n)
			}
		}
	}
	p.counter("response_body_bytes_total", "Response body bytes sent to clients.", a.bytesOut.Load())
	p.histogram("request_duration_seconds", "Time from a request's arrival to its last byte.", &a.requestDuration)
	p.histogram("upstream_ttfb_seconds", "Time from sending an upstream attempt to S3's response headers.", &a.upstreamTTFB)
	p.counter("upstream_retries_total", "Upstream attempts retried (connect errors, timeouts, 5xx).", a.retries.Load())
	p.counter("upstream_resumes_total", "Responses continued with a ranged request after S3 failed mid-body.", a.resumes.Load())
	p.family("upstream_errors_total", "counter", "Failed upstream attempts by kind.")
	for i, kind := range upstreamErrorKinds {
		p.sample("upstream_errors_total", `kind="`+kind+`"`, a.upstreamErrors[i].Load())
	}
	p.family("s3_errors_total", "counter", "Error answers from S3 by code (a fixed list, else other), or by status when S3 sent no code.")
	for i := range a.s3Errors {
		if n := a.s3Errors[i].Load(); n > 0 {
			p.sample("s3_errors_total", `code="`+s3ErrorLabelAt(i)+`"`, n)
		}
	}
	p.counter("credential_refreshes_total", "New credential sets fetched.", a.credentialRefreshes.Load())
	p.counter("credential_failures_total", "Failed credential fetches.", a.credentialFailures.Load())
	p.counter("credential_extensions_total", "Expired credential sets kept in use while no new one could be fetched.", a.credentialExtensions.Load())
	for _, g := range m.readGauges() {
		kind := "gauge"
		if len(g.promName) > len("_total") && g.promName[len(g.promName)-len("_total"):] == "_total" {
			kind = "counter"
		}
		p.family(g.promName, kind, g.help)
		p.sample(g.promName, "", g.read())
	}
}

const (
	// defaultNewRelicEndpoint is New Relic's US Metric API; EU accounts use
	// https://metric-api.eu.newrelic.com/metric/v1 and FedRAMP ones
	// https://gov-metric-api.newrelic.com/metric/v1.
	defaultNewRelicEndpoint = "https://metric-api.newrelic.com/metric/v1"
	// defaultNewRelicInterval is how often aggregates are pushed.
	defaultNewRelicInterval = 30 * time.Second
	// maxPendingPayloads bounds what waits while New Relic is down (ten
	// minutes at the default interval); older payloads are dropped first.
	maxPendingPayloads = 20
	// maxNewRelicPayloadBytes is the Metric API's limit (10^6 bytes).
	maxNewRelicPayloadBytes = 1_000_000
	// newRelicTimeout bounds one push.
	newRelicTimeout = 10 * time.Second
)

// newRelicPusher sends the aggregates' changes to New Relic's Metric API
// every interval (https://docs.newrelic.com/docs/data-apis/ingest-apis/metric-api/report-metrics-metric-api/):
// counters as count metrics, durations as summary metrics, gauges as
// gauges. It never blocks a request, holds at most maxPendingPayloads, and
// never puts the key in a log line or an error.
type newRelicPusher struct {
	metrics  *Metrics
	endpoint string
	// key is the license key; a secret.
	key        string
	attributes map[string]any
	interval   time.Duration
	// client sends the pushes; nil means one with newRelicTimeout.
	client *http.Client
	log    *slog.Logger
	// now is the clock; nil means time.Now.
	now clock

	// Only the run goroutine uses the fields below.
	last           map[string]int64
	lastPush       time.Time
	pending        [][]byte
	failures       int
	loggedRejected bool

	dropped atomic.Int64 // payloads dropped: rejected, or pushed out of pending
	// waiting mirrors len(pending) for readers outside the run goroutine.
	waiting atomic.Int64
	// stopping is cancelled by close: it ends a push in flight, so a
	// hanging endpoint cannot hold up shutdown beyond the final push.
	stopping context.Context
	stop     context.CancelFunc
	done     chan struct{}
}

// nrMetric is one Metric API data point.
type nrMetric struct {
	Name       string         `json:"name"`
	Type       string         `json:"type"`
	Value      any            `json:"value"`
	Attributes map[string]any `json:"attributes,omitempty"`
}

// nrSummary is a summary metric's value.
type nrSummary struct {
	Count int64   `json:"count"`
	Sum   float64 `json:"sum"`
	Min   float64 `json:"min"`
	Max   float64 `json:"max"`
}

// nrBatch is one element of the Metric API's top-level array.
type nrBatch struct {
	Common struct {
		Timestamp  int64          `json:"timestamp"`
		IntervalMS int64          `json:"interval.ms"`
		Attributes map[string]any `json:"attributes"`
	} `json:"common"`
	Metrics []nrMetric `json:"metrics"`
}

// start runs the pusher until close.
func (p *newRelicPusher) start() {
	p.stopping, p.stop = context.WithCancel(context.Background())
	p.done = make(chan struct{})
	p.last = map[string]int64{}
	p.lastPush = p.now.read()
	go p.pushLoop()
}

// close ends the push in flight, pushes what is left (one try, at most
// newRelicTimeout) and stops.
func (p *newRelicPusher) close() {
	p.stop()
	<-p.done
}

// pushLoop collects every interval and sends, retrying a failed send with
// backoff until it succeeds or the next interval adds another payload.
func (p *newRelicPusher) pushLoop() {
	defer close(p.done)
	ticker := time.NewTicker(p.interval)
	defer ticker.Stop()
	var retry *time.Timer
	for {
		var retryC <-chan time.Time
		if retry != nil {
			retryC = retry.C
		}
		select {
		case <-p.stopping.Done():
			p.enqueue(p.collect())
			p.flush(context.Background())
			return
		case <-ticker.C:
			p.enqueue(p.collect())
		case <-retryC:
		}
		if retry != nil {
			retry.Stop()
			retry = nil
		}
		if !p.flush(p.stopping) {
			p.failures++
			retry = time.NewTimer(min(time.Second<<min(p.failures-1, 10), p.interval))
		} else {
			p.failures = 0
		}
	}
}

// enqueue adds a payload, dropping the oldest beyond maxPendingPayloads.
func (p *newRelicPusher) enqueue(payload []byte) {
	if payload == nil {
		return
	}
	p.pending = append(p.pending, payload)
	if over := len(p.pending) - maxPendingPayloads; over > 0 {
		p.dropped.Add(int64(over))
		p.pending = append(p.pending[:0], p.pending[over:]...)
	}
	p.waiting.Store(int64(len(p.pending)))
}

// flush sends pending payloads oldest first, each push bounded by
// newRelicTimeout within ctx; false means a retryable failure left some
// pending.
func (p *newRelicPusher) flush(ctx context.Context) bool {
	for len(p.pending) > 0 {
		status, reason, err := p.send(ctx, p.pending[0])
		switch {
		case err == nil && status == http.StatusAccepted:
		case err != nil || status >= 500 || status == http.StatusRequestTimeout || status == http.StatusTooManyRequests:
			p.log.Warn("New Relic push failed; will retry", "status", status, "err", err, "pending", len(p.pending))
			return false
		default: // 4xx: the payload or the key is wrong; another try changes nothing
			p.dropped.Add(1)
			level := slog.LevelDebug
			if !p.loggedRejected {
				p.loggedRejected, level = true, slog.LevelError
			}
			p.log.Log(context.Background(), level, "New Relic rejected a metrics payload; not retrying (check the license key and -newrelic-endpoint)",
				"status", status, "reason", reason)
		}
		p.pending = p.pending[1:]
		p.waiting.Store(int64(len(p.pending)))
	}
	return true
}

// send POSTs one gzipped payload; reason is New Relic's answer, bounded.
func (p *newRelicPusher) send(ctx context.Context, payload []byte) (status int, reason string, err error) {
	ctx, cancel := context.WithTimeout(ctx, newRelicTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.endpoint, bytes.NewReader(payload))
	if err != nil {
		return 0, "", fmt.Errorf("New Relic request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Content-Encoding", "gzip")
	req.Header.Set("Api-Key", p.key)
	client := p.client
	if client == nil {
		client = &http.Client{Timeout: newRelicTimeout}
	}
	resp, err := client.Do(req)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err // the URL is ours; the error text stays short
		}
		return 0, "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	return resp.StatusCode, printable(string(body)), nil
}

// collect turns the changes since the last push into a gzipped payload, or
// nil when nothing happened and no gauge is registered.
func (p *newRelicPusher) collect() []byte {
	now := p.now.read()
	a := p.metrics.agg
	var batch nrBatch
	batch.Common.Timestamp = p.lastPush.UnixMilli()
	batch.Common.IntervalMS = max(now.Sub(p.lastPush).Milliseconds(), 1)
	batch.Common.Attributes = p.attributes
	p.lastPush = now
	count := func(name string, attrs map[string]any, cumulative int64) {
		key := name + fmt.Sprint(attrs)
		if delta := cumulative - p.last[key]; delta > 0 {
			batch.Metrics = append(batch.Metrics, nrMetric{Name: name, Type: "count", Value: delta, Attributes: attrs})
		}
		p.last[key] = cumulative
	}
	for mi, method := range metricMethods {
		for si := range a.requests[mi] {
			count("s3helper.requests", map[string]any{"method": method, "status": statusLabel(si)}, a.requests[mi][si].Load())
		}
	}
	count("s3helper.bytes_out", nil, a.bytesOut.Load())
	count("s3helper.upstream.retries", nil, a.retries.Load())
	count("s3helper.upstream.resumes", nil, a.resumes.Load())
	for i, kind := range upstreamErrorKinds {
		count("s3helper.upstream.errors", map[string]any{"kind": kind}, a.upstreamErrors[i].Load())
	}
	for i := range a.s3Errors {
		count("s3helper.upstream.s3_errors", map[string]any{"code": s3ErrorLabelAt(i)}, a.s3Errors[i].Load())
	}
	count("s3helper.credentials.refreshes", nil, a.credentialRefreshes.Load())
	count("s3helper.credentials.failures", nil, a.credentialFailures.Load())
	count("s3helper.credentials.extensions", nil, a.credentialExtensions.Load())
	p.summary(&batch, "s3helper.request_ms", &a.requestDuration)
	p.summary(&batch, "s3helper.upstream_ttfb_ms", &a.upstreamTTFB)
	for _, g := range p.metrics.readGauges() {
		if g.statsdName != "" {
			batch.Metrics = append(batch.Metrics, nrMetric{Name: "s3helper." + g.statsdName, Type: "gauge", Value: g.read()})
		}
	}
	batch.Metrics = append(batch.Metrics, nrMetric{Name: "s3helper.newrelic.dropped_payloads", Type: "gauge", Value: p.dropped.Load()})
	return gzipJSON([]nrBatch{batch})
}

// summary adds a histogram's interval as a summary in milliseconds.
func (p *newRelicPusher) summary(batch *nrBatch, name string, h *histogram) {
	countKey, sumKey := name+".count", name+".sum"
	n, sum := h.count.Load(), h.sumNanos.Load()
	minNanos, maxNanos := h.minNanos.Swap(0), h.maxNanos.Swap(0)
	delta, deltaSum := n-p.last[countKey], sum-p.last[sumKey]
	p.last[countKey], p.last[sumKey] = n, sum
	if delta <= 0 {
		return
	}
	ms := func(nanos int64) float64 { return float64(nanos) / float64(time.Millisecond) }
	batch.Metrics = append(batch.Metrics, nrMetric{Name: name, Type: "summary",
		Value: nrSummary{Count: delta, Sum: ms(deltaSum), Min: ms(minNanos), Max: ms(maxNanos)}})
}

// gzipJSON encodes v as gzipped JSON.
func gzipJSON(v any) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if err := json.NewEncoder(zw).Encode(v); err != nil {
		panic("metrics payload cannot be encoded: " + err.Error()) // only numbers and fixed strings
	}
	zw.Close()
	return buf.Bytes()
}
