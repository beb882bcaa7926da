package main

// The one set of measurements every output reads, declared once in
// metricTable: its names (statsd and New Relic, Prometheus), kind, help and
// bounded labels. The proxy and the credential cache record events here;
// each is counted in aggregates over the bounded label sets (for Prometheus
// text on the admin listener and New Relic pushes) and sent as a statsd
// line. An output that is off costs nothing: without statsd no line is
// formatted, and without an aggregating output no aggregate is kept. A nil
// *Metrics does nothing.

import (
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// metricID names one measurement of metricTable.
type metricID int

const (
	mRequests metricID = iota
	mBytesOut
	mRequestDuration
	mUpstreamTTFB
	mRetries
	mResumes
	mUpstreamErrors
	mS3Errors
	mHedges
	mHedgesWon
	mHedgeCancels
	mBudgetRefused
	mRetryBudgetTokens
	mFailovers
	mBucketUp
	mAllCopiesDown
	mFrontEnds
	mFrontEndsInUse
	mFrontEndsResting
	mFrontEndsLeftOut
	mCredentialRefreshes
	mCredentialFailures
	mCredentialExtensions
	mCredentialTTL
	mExpressSessions
	mExpressSessionFailures
	mInFlight
	mClockOffset
	mStatsdDropped
	mNewRelicDropped
	metricCount
)

// metricKind is how a measurement is recorded and reported.
type metricKind int

const (
	// counterKind counts events: a statsd counter, a Prometheus counter,
	// a New Relic count of the change since the last push.
	counterKind metricKind = iota
	// durationKind observes durations: a statsd timer (ms), a Prometheus
	// histogram (s), a New Relic summary (ms).
	durationKind
	// gaugeKind is a value read when an output reports.
	gaugeKind
	// totalKind is a running total read when an output reports: a
	// Prometheus counter, a New Relic gauge.
	totalKind
)

// outputSet is the outputs a measurement goes to.
type outputSet uint8

const (
	toStatsd outputSet = 1 << iota
	toPrometheus
	toNewRelic
	allOutputs = toStatsd | toPrometheus | toNewRelic
)

// labelDim is one label with its fixed values: a statsd name segment, a
// Prometheus label and a New Relic attribute.
type labelDim struct {
	name   string
	values []string
}

// metricDef declares one measurement.
type metricDef struct {
	// name follows the "s3helper." prefix in statsd and New Relic; label
	// values follow it as statsd name segments.
	name string
	// prom follows the "s3helper_" prefix in Prometheus.
	prom string
	kind metricKind
	help string
	// labels are at most two, each from a fixed set.
	labels []labelDim
	// outputs is where it goes.
	outputs outputSet
}

// The label sets. Every value outside a set is labelOther, so text chosen
// by a client or by S3 never mints a new name.
var (
	methodDim        = labelDim{"method", metricMethods[:]}
	statusDim        = labelDim{"status", statusLabels[:]}
	upstreamErrorDim = labelDim{"kind", upstreamErrorKinds[:]}
	s3ErrorDim       = labelDim{"code", append(append([]string(nil), knownS3ErrorCodes[:]...), statusLabels[:]...)}
	refusedDim       = labelDim{"what", []string{"retry", "resume", "hedge", "hedge_rate"}}
)

// The cells of mBudgetRefused, in refusedDim's order.
const (
	refusedRetry = iota
	refusedResume
	refusedHedge
	refusedHedgeRate
)

// metricTable declares every measurement once; the outputs, the metric
// tests and the README's table are made from it.
var metricTable = [metricCount]metricDef{
	mRequests: {name: "requests", prom: "requests_total", kind: counterKind, outputs: allOutputs, labels: []labelDim{methodDim, statusDim},
		help: "Requests answered, by method (GET, HEAD or other) and status sent to the client (499: the client went away)."},
	mBytesOut: {name: "bytes_out", prom: "response_body_bytes_total", kind: counterKind, outputs: allOutputs,
		help: "Response body bytes sent to clients."},
	mRequestDuration: {name: "request_ms", prom: "request_duration_seconds", kind: durationKind, outputs: allOutputs,
		help: "Time from a request's arrival to its last byte."},
	mUpstreamTTFB: {name: "upstream_ttfb_ms", prom: "upstream_ttfb_seconds", kind: durationKind, outputs: allOutputs,
		help: "Time from sending an upstream attempt to S3's response headers."},
	mRetries: {name: "upstream.retries", prom: "upstream_retries_total", kind: counterKind, outputs: allOutputs,
		help: "Upstream attempts retried (connect errors, timeouts, 5xx)."},
	mResumes: {name: "upstream.resumes", prom: "upstream_resumes_total", kind: counterKind, outputs: allOutputs,
		help: "Responses continued with a ranged request after S3 failed mid-body."},
	mUpstreamErrors: {name: "upstream.errors", prom: "upstream_errors_total", kind: counterKind, outputs: allOutputs, labels: []labelDim{upstreamErrorDim},
		help: "Failed upstream attempts by kind."},
	mS3Errors: {name: "upstream.s3_errors", prom: "s3_errors_total", kind: counterKind, outputs: allOutputs, labels: []labelDim{s3ErrorDim},
		help: "Error answers from S3 by code (a fixed list, else other), or by status when S3 sent no code."},
	mHedges: {name: "upstream.hedges", prom: "upstream_hedges_total", kind: counterKind, outputs: allOutputs,
		help: "Hedges sent: a second attempt beside one that had no response headers within the hedge delay."},
	mHedgesWon: {name: "upstream.hedges_won", prom: "upstream_hedges_won_total", kind: counterKind, outputs: allOutputs,
		help: "Hedges whose answer won the race (the first answer that passes on; a failure lets the other attempt go on)."},
	mHedgeCancels: {name: "upstream.hedge_cancels", prom: "upstream_hedge_cancels_total", kind: counterKind, outputs: allOutputs,
		help: "Attempts cancelled in flight because the other of a hedged pair won with an answer; each closes a connection that must be dialled (with TLS, handshaken) again."},
	mBudgetRefused: {name: "upstream.budget_refused", prom: "upstream_budget_refused_total", kind: counterKind, outputs: allOutputs, labels: []labelDim{refusedDim},
		help: "Retries, resumes and hedges not sent: the retry budget was empty (retry, resume, hedge) or hedges reached their share of requests (hedge_rate)."},
	mRetryBudgetTokens: {name: "upstream.retry_budget_tokens", prom: "retry_budget_tokens", kind: gaugeKind, outputs: allOutputs,
		help: "Tokens left in the retry budget (500 when full; a retry costs 5, a timeout retry 10)."},
	mFailovers: {name: "upstream.failovers", prom: "upstream_failovers_total", kind: counterKind, outputs: allOutputs,
		help: "Fetches sent on to a replica because a bucket's region could not serve (connect errors, timeouts, 5xx after the retries)."},
	mBucketUp: {name: "upstream.bucket_up", prom: "bucket_up", kind: gaugeKind, outputs: allOutputs, labels: []labelDim{{name: "bucket"}},
		help: "1 while a bucket with replicas, or a replica, is up; 0 while it is marked down (one series per configured bucket)."},
	mAllCopiesDown: {name: "upstream.all_copies_down", prom: "all_copies_down", kind: gaugeKind, outputs: allOutputs,
		help: "1 while some bucket with replicas has no copy that can serve (it and every replica are marked down; /healthz answers 503), else 0."},
	mFrontEnds: {name: "upstream.front_ends", prom: "front_ends", kind: gaugeKind, outputs: allOutputs, labels: []labelDim{{name: "bucket"}},
		help: "Addresses S3's DNS names for a bucket's endpoint (its front-end hosts), as last resolved."},
	mFrontEndsInUse: {name: "upstream.front_ends_in_use", prom: "front_ends_in_use", kind: gaugeKind, outputs: allOutputs, labels: []labelDim{{name: "bucket"}},
		help: "Addresses of a bucket's endpoint that requests are spread over."},
	mFrontEndsResting: {name: "upstream.front_ends_left_out", prom: "front_ends_left_out", kind: gaugeKind, outputs: allOutputs, labels: []labelDim{{name: "bucket"}},
		help: "Addresses of a bucket's endpoint left out for now: clearly slower than the others, or failing to connect or to reply."},
	mFrontEndsLeftOut: {name: "upstream.front_end_leave_outs", prom: "front_end_leave_outs_total", kind: counterKind, outputs: allOutputs,
		help: "Times an address was left out (each is logged with the address and the reason)."},
	mCredentialRefreshes: {name: "credentials.refreshes", prom: "credential_refreshes_total", kind: counterKind, outputs: allOutputs,
		help: "New credential sets fetched."},
	mCredentialFailures: {name: "credentials.failures", prom: "credential_failures_total", kind: counterKind, outputs: allOutputs,
		help: "Failed credential fetches."},
	mCredentialExtensions: {name: "credentials.extensions", prom: "credential_extensions_total", kind: counterKind, outputs: allOutputs,
		help: "Expired credential sets kept in use while no new one could be fetched."},
	mCredentialTTL: {name: "credentials.seconds_to_expiry", prom: "credential_expiry_seconds", kind: gaugeKind, outputs: allOutputs,
		help: "Seconds until the credentials in use expire (0: they never do)."},
	mExpressSessions: {name: "express.sessions", prom: "express_sessions_total", kind: counterKind, outputs: allOutputs,
		help: "S3 Express One Zone sessions made (CreateSession), one per directory bucket before the last one runs out."},
	mExpressSessionFailures: {name: "express.session_failures", prom: "express_session_failures_total", kind: counterKind, outputs: allOutputs,
		help: "CreateSession calls that failed (refused, unreachable or a bad answer); the log names the cause and the remedy."},
	mInFlight: {name: "in_flight", prom: "requests_in_flight", kind: gaugeKind, outputs: allOutputs,
		help: "Requests being served."},
	mClockOffset: {name: "clock.offset_seconds", prom: "clock_offset_seconds", kind: gaugeKind, outputs: allOutputs,
		help: "Seconds added to this host's clock when signing, learned from S3's Date header (0: the clock is right)."},
	// The statsd emitter counts its own drops under this name.
	mStatsdDropped: {name: statsdDroppedName, prom: "statsd_dropped_lines_total", kind: totalKind, outputs: toStatsd | toPrometheus,
		help: "statsd lines dropped because the socket or the queue was full."},
	mNewRelicDropped: {name: "newrelic.dropped_payloads", prom: "newrelic_dropped_payloads_total", kind: totalKind, outputs: toPrometheus | toNewRelic,
		help: "New Relic payloads dropped: rejected, or pushed out while New Relic was unreachable."},
}

// cells is how many label combinations d has.
func (d *metricDef) cells() int {
	n := 1
	for _, l := range d.labels {
		n *= len(l.values)
	}
	return n
}

// cellValues returns the label values of one cell, first label first.
func (d *metricDef) cellValues(cell int) []string {
	values := make([]string, len(d.labels))
	for i := len(d.labels) - 1; i >= 0; i-- {
		n := len(d.labels[i].values)
		values[i] = d.labels[i].values[cell%n]
		cell /= n
	}
	return values
}

// statsdCellNames are every cell's statsd name ("requests.GET.200"),
// formatted once so recording never concatenates.
var statsdCellNames = func() (names [metricCount][]string) {
	for id := range metricTable {
		d := &metricTable[id]
		names[id] = make([]string, d.cells())
		for cell := range names[id] {
			name := d.name
			for _, v := range d.cellValues(cell) {
				name += "." + v
			}
			names[id][cell] = name
		}
	}
	return names
}()

// Metrics records every measurement. Its methods never block and never
// return errors; they are safe for concurrent use.
type Metrics struct {
	// statsd sends one line per event; nil when -statsd is off.
	statsd *statsdEmitter
	// agg holds the aggregates; nil when no output reads them.
	agg *aggregates

	readsMu sync.Mutex // guards reads and sets
	// reads are the registered gauges and totals.
	reads [metricCount]func() int64
	// sets are the gauges whose label values come from the configuration.
	sets [metricCount]gaugeSet
}

// gaugeSet is a gauge with one series per configured value (a bucket
// name): the values come from the configuration only, never a request.
type gaugeSet struct {
	values []string
	read   func(i int) int64
}

// aggregates are the cumulative totals outputs read, one slot per label
// cell, so memory is bounded whatever clients and S3 send.
type aggregates struct {
	counts     [metricCount][]atomic.Int64
	histograms [metricCount]*histogram
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
		for id, d := range metricTable {
			switch d.kind {
			case counterKind:
				m.agg.counts[id] = make([]atomic.Int64, d.cells())
			case durationKind:
				m.agg.histograms[id] = &histogram{}
			}
		}
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

// Count adds v to a counter's label cell (0 when it has no labels).
func (m *Metrics) Count(id metricID, cell int, v int64) {
	if m == nil {
		return
	}
	if m.agg != nil {
		m.agg.counts[id][cell].Add(v)
	}
	if metricTable[id].outputs&toStatsd != 0 {
		m.statsd.Count(statsdCellNames[id][cell], v)
	}
}

// Inc adds one to a counter without labels.
func (m *Metrics) Inc(id metricID) { m.Count(id, 0, 1) }

// Observe records one duration.
func (m *Metrics) Observe(id metricID, d time.Duration) {
	if m == nil {
		return
	}
	if m.agg != nil {
		m.agg.histograms[id].observe(d)
	}
	m.statsd.Timing(metricTable[id].name, d)
}

// Request records one answered request. method is the client's text and
// is reduced to GET, HEAD or other here.
func (m *Metrics) Request(method string, status int, bodyBytes int64, dur time.Duration) {
	if m == nil {
		return
	}
	m.Count(mRequests, methodIndex(method)*len(statusLabels)+statusIndex(status), 1)
	m.Count(mBytesOut, 0, bodyBytes)
	m.Observe(mRequestDuration, dur)
}

// UpstreamError records a failed upstream attempt of a kind from
// upstreamErrorKinds; any other kind counts as other.
func (m *Metrics) UpstreamError(kind string) {
	i := len(upstreamErrorKinds) - 1
	for j, k := range upstreamErrorKinds {
		if k == kind {
			i = j
			break
		}
	}
	m.Count(mUpstreamErrors, i, 1)
}

// S3Error records an error answer from S3: its code (text from S3's body)
// or, without one, its status.
func (m *Metrics) S3Error(code string, status int) { m.Count(mS3Errors, s3ErrorIndex(code, status), 1) }

// Gauge registers the function that reads a gauge or a total whenever an
// output reports.
func (m *Metrics) Gauge(id metricID, read func() int64) {
	if m == nil {
		return
	}
	m.readsMu.Lock()
	m.reads[id] = read
	m.readsMu.Unlock()
	// A total in statsd is its own counter (the emitter's drops), never
	// a gauge line.
	if d := &metricTable[id]; d.kind == gaugeKind && d.outputs&toStatsd != 0 {
		m.statsd.GaugeFunc(d.name, read)
	}
}

// GaugeSet registers a gauge with one series per value of its one label,
// read whenever an output reports. values come from the configuration.
func (m *Metrics) GaugeSet(id metricID, values []string, read func(i int) int64) {
	if m == nil || len(values) == 0 {
		return
	}
	m.readsMu.Lock()
	m.sets[id] = gaugeSet{values, read}
	m.readsMu.Unlock()
	for i, v := range values {
		m.statsd.GaugeFunc(metricTable[id].name+"."+statsdSegment(v), func() int64 { return read(i) })
	}
}

// statsdSegment makes a configured value (a bucket name, an access
// point's ARN) one statsd name segment: every byte outside A-Z a-z 0-9 _ -
// becomes '_'. '.' would split the segment, and ':', '|', '@' and '#' end
// the name in the line format; a Multi-Region Access Point ARN
// (arn:aws:s3::111122223333:accesspoint/mfzwi23gnjvgw.mrap) has ':' and
// '/', and bytes past ASCII mean nothing to a statsd server either.
func statsdSegment(v string) string {
	b := []byte(v)
	for i, c := range b {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			b[i] = '_'
		}
	}
	return string(b)
}

// gaugeSetOf returns the registered set of id.
func (m *Metrics) gaugeSetOf(id metricID) gaugeSet {
	m.readsMu.Lock()
	defer m.readsMu.Unlock()
	return m.sets[id]
}

// reader returns the registered read function of id, or nil.
func (m *Metrics) reader(id metricID) func() int64 {
	m.readsMu.Lock()
	defer m.readsMu.Unlock()
	return m.reads[id]
}

// latencyBuckets are the histogram bounds for request and upstream times:
// S3 answers a ranged GET in 10–100 ms and throttles or stalls for seconds.
var latencyBuckets = [...]time.Duration{
	5 * time.Millisecond, 10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond,
	100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond,
	time.Second, 2500 * time.Millisecond, 5 * time.Second, 10 * time.Second,
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

// metricMethods and metricStatuses are the label values of requests; any
// other status is counted as other (the last index).
var (
	metricMethods  = [...]string{"GET", "HEAD", labelOther}
	metricStatuses = [...]int{200, 206, 304, 400, 403, 404, 405, 412, 416, 431, 499, 500, 502, 503, 504}
)

// upstreamErrorKinds are the kinds of failed upstream attempts; policy.go
// names them (its kind constants, and "status_" with S3's 5xx) and nothing
// else.
var upstreamErrorKinds = [...]string{"connect", "timeout", "transport", "body",
	"status_500", "status_502", "status_503", "status_504", labelOther}

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

// statusLabels are metricStatuses as text, formatted once, then other.
var statusLabels = func() (labels [len(metricStatuses) + 1]string) {
	for i, s := range metricStatuses {
		labels[i] = strconv.Itoa(s)
	}
	labels[len(metricStatuses)] = labelOther
	return labels
}()

// s3ErrorIndex places an S3 error in s3ErrorDim: a known code, else the
// status when S3 sent no code, else other.
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
