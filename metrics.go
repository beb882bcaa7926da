package main

// The one set of measurements every output reads: the proxy and the
// credential cache record events here, and each event is counted in
// aggregates over bounded label sets (for Prometheus text on the admin
// listener and New Relic pushes) and sent as a statsd line. An output that
// is off costs nothing: without statsd no line is formatted, and without
// an aggregating output no aggregate is kept. A nil *Metrics does nothing.

import (
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Metrics records every measurement. Its methods never block and never
// return errors; they are safe for concurrent use.
type Metrics struct {
	// statsd sends one line per event; nil when -statsd is off.
	statsd *statsdEmitter
	// agg holds the aggregates; nil when no output reads them.
	agg *aggregates

	gaugesMu sync.Mutex // guards gauges
	gauges   []gauge
}

// gauge is a value read when an output reports, not recorded per event.
type gauge struct {
	statsdName, promName, help string
	read                       func() int64
}

// newMetrics returns measurements feeding statsd (when statsd is not nil)
// and the aggregating outputs (when aggregate is set); nil when both are off.
func newMetrics(statsd *statsdEmitter, aggregate bool) *Metrics {
	if statsd == nil && !aggregate {
		return nil
	}
	m := &Metrics{statsd: statsd}
	if aggregate {
		m.agg = &aggregates{}
	}
	return m
}

// Close flushes and stops the statsd emitter.
func (m *Metrics) Close() error {
	if m == nil {
		return nil
	}
	return m.statsd.Close()
}

// latencyBuckets are the histogram bounds for request and upstream times:
// S3 answers a ranged GET in 10–100 ms and throttles or stalls for seconds.
var latencyBuckets = [...]time.Duration{
	5 * time.Millisecond, 10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond,
	100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond,
	time.Second, 2500 * time.Millisecond, 5 * time.Second, 10 * time.Second,
}

// metricMethods and metricStatuses are the label values of requests; any
// other status is counted as other (the last index).
var (
	metricMethods  = [...]string{"GET", "HEAD", labelOther}
	metricStatuses = [...]int{200, 206, 304, 400, 403, 404, 405, 412, 416, 431, 499, 500, 502, 503, 504}
)

// upstreamErrorKinds are the kinds of failed upstream attempts; proxy.go
// names them and nothing else.
var upstreamErrorKinds = [...]string{"connect", "timeout", "transport", "body",
	"status_500", "status_502", "status_503", "status_504", labelOther}

// aggregates are the cumulative totals outputs read. Every label set is
// fixed, so memory is bounded whatever clients and S3 send.
type aggregates struct {
	requests        [len(metricMethods)][len(metricStatuses) + 1]atomic.Int64
	bytesOut        atomic.Int64
	requestDuration histogram
	upstreamTTFB    histogram
	retries         atomic.Int64
	resumes         atomic.Int64
	upstreamErrors  [len(upstreamErrorKinds)]atomic.Int64
	// s3Errors is indexed by s3ErrorIndex: known codes, then statuses, then other.
	s3Errors             [len(knownS3ErrorCodes) + len(metricStatuses) + 1]atomic.Int64
	credentialRefreshes  atomic.Int64
	credentialFailures   atomic.Int64
	credentialExtensions atomic.Int64
}

// histogram counts durations into latencyBuckets (cumulatively at read
// time) and tracks the extremes of the current push interval.
type histogram struct {
	buckets  [len(latencyBuckets) + 1]atomic.Int64 // the last is +Inf
	count    atomic.Int64
	sumNanos atomic.Int64
	// minNanos and maxNanos cover the New Relic interval; swapped out by
	// each push. minNanos is 0 when nothing was observed.
	minNanos, maxNanos atomic.Int64
}

// observe records one duration.
func (h *histogram) observe(d time.Duration) {
	i := 0
	for i < len(latencyBuckets) && d > latencyBuckets[i] {
		i++
	}
	h.buckets[i].Add(1)
	h.count.Add(1)
	h.sumNanos.Add(int64(d))
	n := max(int64(d), 1) // 0 marks "none yet"
	for cur := h.minNanos.Load(); cur == 0 || n < cur; cur = h.minNanos.Load() {
		if h.minNanos.CompareAndSwap(cur, n) {
			break
		}
	}
	for cur := h.maxNanos.Load(); n > cur; cur = h.maxNanos.Load() {
		if h.maxNanos.CompareAndSwap(cur, n) {
			break
		}
	}
}

// Request records one answered request. method is the client's text and
// is reduced to GET, HEAD or other here.
func (m *Metrics) Request(method string, status int, bodyBytes int64, dur time.Duration) {
	if m == nil {
		return
	}
	mi, si := methodIndex(method), statusIndex(status)
	if a := m.agg; a != nil {
		a.requests[mi][si].Add(1)
		a.bytesOut.Add(bodyBytes)
		a.requestDuration.observe(dur)
	}
	m.statsd.CountBy(metricRequests, metricMethods[mi], statusLabel(si), 1)
	m.statsd.Count(metricBytesOut, bodyBytes)
	m.statsd.Timing(metricRequestDuration, dur)
}

// UpstreamTTFB records S3's time to response headers for one attempt.
func (m *Metrics) UpstreamTTFB(d time.Duration) {
	if m == nil {
		return
	}
	if m.agg != nil {
		m.agg.upstreamTTFB.observe(d)
	}
	m.statsd.Timing(metricUpstreamTTFB, d)
}

// Retry records a retried upstream attempt.
func (m *Metrics) Retry() {
	m.count(metricRetries, func(a *aggregates) *atomic.Int64 { return &a.retries })
}

// Resume records a mid-body resume.
func (m *Metrics) Resume() {
	m.count(metricResumes, func(a *aggregates) *atomic.Int64 { return &a.resumes })
}

// CredentialRefresh records a new credential set.
func (m *Metrics) CredentialRefresh() {
	m.count(metricCredentialRefreshes, func(a *aggregates) *atomic.Int64 { return &a.credentialRefreshes })
}

// CredentialFailure records a failed credential fetch.
func (m *Metrics) CredentialFailure() {
	m.count(metricCredentialFailures, func(a *aggregates) *atomic.Int64 { return &a.credentialFailures })
}

// CredentialExtension records a static-stability extension.
func (m *Metrics) CredentialExtension() {
	m.count(metricCredentialExtensions, func(a *aggregates) *atomic.Int64 { return &a.credentialExtensions })
}

// count adds one to an unlabelled counter in every output.
func (m *Metrics) count(statsdName string, counter func(*aggregates) *atomic.Int64) {
	if m == nil {
		return
	}
	if m.agg != nil {
		counter(m.agg).Add(1)
	}
	m.statsd.Count(statsdName, 1)
}

// UpstreamError records a failed upstream attempt of a kind from
// upstreamErrorKinds.
func (m *Metrics) UpstreamError(kind string) {
	if m == nil {
		return
	}
	i := len(upstreamErrorKinds) - 1
	for j, k := range upstreamErrorKinds {
		if k == kind {
			i = j
			break
		}
	}
	if m.agg != nil {
		m.agg.upstreamErrors[i].Add(1)
	}
	m.statsd.CountBy(metricUpstreamErrors, upstreamErrorKinds[i], "", 1)
}

// S3Error records an error answer from S3: its code (text from S3's body)
// or, without one, its status.
func (m *Metrics) S3Error(code string, status int) {
	if m == nil {
		return
	}
	i := s3ErrorIndex(code, status)
	if m.agg != nil {
		m.agg.s3Errors[i].Add(1)
	}
	m.statsd.CountBy(metricS3Errors, s3ErrorLabelAt(i), "", 1)
}

// Gauge registers a value read whenever an output reports; an empty
// statsdName keeps it out of statsd.
func (m *Metrics) Gauge(statsdName, promName, help string, read func() int64) {
	if m == nil {
		return
	}
	m.gaugesMu.Lock()
	m.gauges = append(m.gauges, gauge{statsdName, promName, help, read})
	m.gaugesMu.Unlock()
	if statsdName != "" {
		m.statsd.GaugeFunc(statsdName, read)
	}
}

// readGauges returns the registered gauges.
func (m *Metrics) readGauges() []gauge {
	m.gaugesMu.Lock()
	defer m.gaugesMu.Unlock()
	return append([]gauge(nil), m.gauges...)
}

// methodIndex is the index in metricMethods of a client's method.
func methodIndex(method string) int {
	switch method {
	case "GET":
		return 0
	case "HEAD":
		return 1
	}
	return 2
}

// statusIndex is the index in metricStatuses, or len(metricStatuses) for other.
func statusIndex(status int) int {
	for i, s := range metricStatuses {
		if s == status {
			return i
		}
	}
	return len(metricStatuses)
}

// statusLabels are metricStatuses as text, formatted once.
var statusLabels = func() (labels [len(metricStatuses) + 1]string) {
	for i, s := range metricStatuses {
		labels[i] = strconv.Itoa(s)
	}
	labels[len(metricStatuses)] = labelOther
	return labels
}()

// statusLabel names a statusIndex.
func statusLabel(i int) string { return statusLabels[i] }

// s3ErrorIndex places an S3 error in aggregates.s3Errors: a known code, else
// the status when S3 sent no code, else other.
func s3ErrorIndex(code string, status int) int {
	if code == "" {
		return len(knownS3ErrorCodes) + statusIndex(status)
	}
	for i, known := range knownS3ErrorCodes {
		if code == known {
			return i
		}
	}
	return len(knownS3ErrorCodes) + len(metricStatuses)
}

// s3ErrorLabelAt names an s3ErrorIndex.
func s3ErrorLabelAt(i int) string {
	if i < len(knownS3ErrorCodes) {
		return knownS3ErrorCodes[i]
	}
	return statusLabel(i - len(knownS3ErrorCodes))
}

// s3ErrorLabel names an S3 error for a metric.
func s3ErrorLabel(code string, status int) string { return s3ErrorLabelAt(s3ErrorIndex(code, status)) }

// methodLabel reduces a request method to GET, HEAD or other: the method is
// client text, and every distinct value would otherwise be a new metric.
func methodLabel(method string) string { return metricMethods[methodIndex(method)] }

// labelOther stands for every value outside a label's bounded set, so text
// chosen by a client or by S3 can never mint a new metric name.
const labelOther = "other"

// knownS3ErrorCodes are the S3 error codes a GET or HEAD can meet
// (https://docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html);
// any other code is counted as other.
var knownS3ErrorCodes = [...]string{
	"AccessDenied", "AccountProblem", "AllAccessDisabled", "AuthorizationHeaderMalformed",
	"ExpiredToken", "InternalError", "InvalidAccessKeyId", "InvalidArgument", "InvalidBucketName",
	"InvalidObjectState", "InvalidRange", "InvalidRequest", "InvalidToken", "InvalidURI",
	"KeyTooLongError", "MethodNotAllowed", "NoSuchBucket", "NoSuchKey", "NoSuchVersion",
	"NotImplemented", "PermanentRedirect", "PreconditionFailed", "RequestTimeTooSkewed",
	"RequestTimeout", "ServiceUnavailable", "SignatureDoesNotMatch", "SlowDown",
	"TemporaryRedirect", "TokenRefreshRequired",
}
