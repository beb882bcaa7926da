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
	"strings"
	"sync/atomic"
	"time"
)

// promPrefix starts every Prometheus metric name, newRelicPrefix every New
// Relic one.
const (
	promPrefix     = "s3helper_"
	newRelicPrefix = "s3helper."
)

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

// ServeHTTP writes every measurement of metricTable that goes to Prometheus,
// in the table's order. It reads atomics only, so a scrape never holds up
// a request.
func (m *Metrics) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	bw := bufio.NewWriter(w)
	defer bw.Flush()
	p := promWriter{bw}
	for id := range metricTable {
		d := &metricTable[id]
		if d.outputs&toPrometheus == 0 {
			continue
		}
		switch d.kind {
		case counterKind:
			p.counters(d, m.agg.counts[id])
		case durationKind:
			p.histogram(d.prom, d.help, m.agg.histograms[id])
		case gaugeKind, totalKind:
			if set := m.gaugeSetOf(metricID(id)); set.read != nil {
				p.family(d.prom, "gauge", d.help)
				for i, v := range set.values {
					p.sample(d.prom, d.labels[0].name+`="`+v+`"`, set.read(i))
				}
			}
			if read := m.reader(metricID(id)); read != nil {
				kind := "gauge"
				if d.kind == totalKind {
					kind = "counter"
				}
				p.family(d.prom, kind, d.help)
				p.sample(d.prom, "", read())
			}
		}
	}
}

// maxPromZeroSamples is the label-set size up to which every sample is
// written, zeros too; a larger set writes only those that happened (and its
// first, so the family always has a sample).
const maxPromZeroSamples = 16

// counters writes a counter family, one sample per label cell.
func (p promWriter) counters(d *metricDef, counts []atomic.Int64) {
	p.family(d.prom, "counter", d.help)
	for cell := range counts {
		n := counts[cell].Load()
		if n == 0 && cell > 0 && len(counts) > maxPromZeroSamples {
			continue
		}
		labels := ""
		for i, v := range d.cellValues(cell) {
			if i > 0 {
				labels += ","
			}
			labels += d.labels[i].name + `="` + v + `"`
		}
		p.sample(d.prom, labels, n)
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
	// maxNewRelicPayloadBytes is the Metric API's limit on a compressed
	// payload (10^6 bytes); fixed label sets keep ours near 2 KB.
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

	// Only the pushLoop goroutine uses the fields below.
	last           map[lastKey]int64
	lastPush       time.Time
	pending        [][]byte
	failures       int
	loggedRejected bool

	dropped atomic.Int64 // payloads dropped: rejected, or pushed out of pending
	// waiting mirrors len(pending) for readers outside the pushLoop goroutine.
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
	p.last = map[lastKey]int64{}
	p.lastPush = p.now.read()
	p.metrics.Gauge(mNewRelicDropped, p.dropped.Load)
	go p.pushLoop()
}

// close ends the push in flight, pushes what is left (one try, at most
// newRelicTimeout) and stops.
func (p *newRelicPusher) close() {
	p.stop()
	<-p.done
}

// pushLoop collects every interval and sends, retrying a failed send with
// backoff until it succeeds or the next interval's push takes over.
func (p *newRelicPusher) pushLoop() {
	defer close(p.done)
	next := time.Now().Add(p.interval)
	tick := time.NewTimer(p.interval)
	defer tick.Stop()
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
		case <-tick.C:
			p.enqueue(p.collect())
			next = next.Add(p.interval)
			tick.Reset(time.Until(next))
		case <-retryC:
		}
		if retry != nil {
			retry.Stop()
			retry = nil
		}
		if p.flush(p.stopping) {
			p.failures = 0
			continue
		}
		p.failures++
		// Doubling from 1 s, without jitter: one pusher per host, whose
		// pushes are already spread by each host's start time, and the
		// Metric API gives no Retry-After to follow. A retry that would
		// land on or after the next push leaves the sending to it.
		if d := (backoff{base: time.Second, ceiling: p.interval}).limit(p.failures); time.Now().Add(d).Before(next) {
			retry = time.NewTimer(d)
		}
	}
}

// enqueue adds a payload, dropping the oldest beyond maxPendingPayloads,
// and one the Metric API would refuse for its size.
func (p *newRelicPusher) enqueue(payload []byte) {
	if len(payload) > maxNewRelicPayloadBytes {
		p.dropped.Add(1)
		p.log.Error("metrics payload exceeds the Metric API's limit; dropped", "bytes", len(payload), "limit", maxNewRelicPayloadBytes)
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
	// An endpoint that echoes the license key must not put it in the log.
	reason = strings.ReplaceAll(printable(string(body)), p.key, "[license key]")
	return resp.StatusCode, reason, nil
}

// collect turns the changes since the last push, and the gauges' values,
// into one gzipped payload.
func (p *newRelicPusher) collect() []byte {
	now := p.now.read()
	a := p.metrics.agg
	var batch nrBatch
	batch.Common.Timestamp = p.lastPush.UnixMilli()
	batch.Common.IntervalMS = max(now.Sub(p.lastPush).Milliseconds(), 1)
	batch.Common.Attributes = p.attributes
	p.lastPush = now
	for id := range metricTable {
		d := &metricTable[id]
		if d.outputs&toNewRelic == 0 {
			continue
		}
		name := newRelicPrefix + d.name
		switch d.kind {
		case counterKind:
			for cell := range a.counts[id] {
				key := lastKey{metricID(id), cell}
				cumulative := a.counts[id][cell].Load()
				if delta := cumulative - p.last[key]; delta > 0 {
					batch.Metrics = append(batch.Metrics, nrMetric{Name: name, Type: "count", Value: delta, Attributes: newRelicAttributes(d, cell)})
				}
				p.last[key] = cumulative
			}
		case durationKind:
			p.summary(&batch, metricID(id), a.histograms[id])
		case gaugeKind, totalKind:
			if set := p.metrics.gaugeSetOf(metricID(id)); set.read != nil {
				for i, v := range set.values {
					batch.Metrics = append(batch.Metrics, nrMetric{Name: name, Type: "gauge", Value: set.read(i), Attributes: map[string]any{d.labels[0].name: v}})
				}
			}
			if read := p.metrics.reader(metricID(id)); read != nil {
				batch.Metrics = append(batch.Metrics, nrMetric{Name: name, Type: "gauge", Value: read()})
			}
		}
	}
	return gzipJSON([]nrBatch{batch})
}

// summary adds a histogram's interval as a summary in milliseconds.
func (p *newRelicPusher) summary(batch *nrBatch, id metricID, h *histogram) {
	countKey, sumKey := lastKey{id, 0}, lastKey{id, 1}
	n, sum := h.count.Load(), h.sumNanos.Load()
	minNanos, maxNanos := h.minNanos.Swap(0), h.maxNanos.Swap(0)
	delta, deltaSum := n-p.last[countKey], sum-p.last[sumKey]
	p.last[countKey], p.last[sumKey] = n, sum
	if delta <= 0 {
		return
	}
	ms := func(nanos int64) float64 { return float64(nanos) / float64(time.Millisecond) }
	batch.Metrics = append(batch.Metrics, nrMetric{Name: newRelicPrefix + metricTable[id].name, Type: "summary",
		Value: nrSummary{Count: delta, Sum: ms(deltaSum), Min: ms(minNanos), Max: ms(maxNanos)}})
}

// lastKey names what the last push reported of one measurement: a
// counter's label cell, or a histogram's count (0) and sum (1).
type lastKey struct {
	id   metricID
	cell int
}

// newRelicAttributes are a counter cell's labels as attributes, or nil.
func newRelicAttributes(d *metricDef, cell int) map[string]any {
	if len(d.labels) == 0 {
		return nil
	}
	attrs := make(map[string]any, len(d.labels))
	for i, v := range d.cellValues(cell) {
		attrs[d.labels[i].name] = v
	}
	return attrs
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
