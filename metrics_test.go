package main

// The measurements and their outputs: statsd lines on a real socket, bounded
// labels, and Prometheus counts equal to the traffic.

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"
)

func TestMetricsNilIsNoOp(t *testing.T) {
	var e *statsdEmitter
	e.Count("upstream.retries", 1)
	e.Count("requests.GET.200", 1)
	e.Timing("request_ms", time.Second)
	e.Gauge("in_flight", 1)
	e.GaugeFunc("in_flight", func() int64 { return 0 })
	if err := e.Close(); err != nil || e.Dropped() != 0 {
		t.Errorf("nil statsdEmitter: Close = %v, Dropped = %d", err, e.Dropped())
	}
	var m *Metrics
	m.Request("GET", 200, 1, time.Second)
	for id := range metricTable {
		switch metricTable[id].kind {
		case counterKind:
			m.Inc(metricID(id))
		case durationKind:
			m.Observe(metricID(id), time.Second)
		default:
			m.Gauge(metricID(id), func() int64 { return 0 })
		}
	}
	m.UpstreamError("connect")
	m.S3Error("NoSuchKey", 404)
	if err := m.Close(); err != nil {
		t.Errorf("nil Metrics: Close = %v", err)
	}
	if newMetrics(nil, false) != nil {
		t.Error("newMetrics with every output off is not nil: an output that is off must cost nothing")
	}
}

// TestMetricNames checks every declared name and label value: statsd breaks
// on ':', '|', '@', '#' and spaces; Prometheus names are [a-zA-Z_:][a-zA-Z0-9_:]*;
// New Relic names stay under 255 characters; no name is declared twice.
func TestMetricNames(t *testing.T) {
	promName := func(s string) bool {
		for i, c := range s {
			if !(c == '_' || c == ':' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || i > 0 && '0' <= c && c <= '9') {
				return false
			}
		}
		return s != ""
	}
	seen := map[string]bool{}
	for id := range metricTable {
		d := &metricTable[id]
		if d.name == "" || d.prom == "" || d.help == "" || d.outputs == 0 {
			t.Errorf("metric %d is declared incompletely: %+v", id, d)
		}
		if seen["s:"+d.name] || seen["p:"+d.prom] {
			t.Errorf("metric %q / %q is declared twice", d.name, d.prom)
		}
		seen["s:"+d.name], seen["p:"+d.prom] = true, true
		if !promName(promPrefix + d.prom) {
			t.Errorf("Prometheus name %q is not valid", d.prom)
		}
		if (d.kind == counterKind || d.kind == totalKind) != strings.HasSuffix(d.prom, "_total") {
			t.Errorf("Prometheus name %q: counters, and only counters, end in _total", d.prom)
		}
		if len(newRelicPrefix+d.name) >= 255 || len(d.labels) > 2 {
			t.Errorf("metric %q: name too long or more than two labels", d.name)
		}
		for _, name := range statsdCellNames[id] {
			if strings.ContainsAny(name, ":|@# \n") {
				t.Errorf("statsd name %q is not statsd-safe", name)
			}
		}
		for _, l := range d.labels {
			// A gauge's one label may take its values from the configuration
			// (GaugeSet); every other label has a fixed set.
			if !promName(l.name) || len(l.values) == 0 && !(d.kind == gaugeKind && len(d.labels) == 1) {
				t.Errorf("metric %q: label %q is not a valid bounded label", d.name, l.name)
			}
			for _, v := range l.values {
				if strings.ContainsAny(v, "\"\\\n.:|@# ") {
					t.Errorf("metric %q: label value %q would need escaping", d.name, v)
				}
			}
		}
	}
	if len(statsdCellNames[mRequests]) != len(metricMethods)*len(statusLabels) || statsdCellNames[mRequests][1] != "requests.GET.206" {
		t.Errorf("requests cells: %d, second %q", len(statsdCellNames[mRequests]), statsdCellNames[mRequests][1])
	}
}

// promSamples parses Prometheus text into sample name{labels} → value, for
// exact-count checks (promtool checks the format itself, end to end).
func promSamples(t *testing.T, text string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for line := range strings.SplitSeq(text, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			t.Fatalf("bad sample line %q", line)
		}
		out[line[:i]] = line[i+1:]
	}
	return out
}

// TestPrometheusCountsEqualTraffic: after known traffic through the proxy,
// every counter and histogram count equals the requests made.
func TestPrometheusCountsEqualTraffic(t *testing.T) {
	tp := newTestProxy(t)
	tp.metrics = newMetrics(nil, true)
	tp.upstream.metrics = tp.metrics
	tp.metrics.Gauge(mInFlight, tp.InFlight)
	tp.s3.put("k", []byte("12345"))
	for range 7 {
		get(t, "GET", tp.url+"/k", nil)
	}
	for range 3 {
		get(t, "HEAD", tp.url+"/k", nil)
	}
	for range 2 {
		get(t, "GET", tp.url+"/missing", nil)
	}
	get(t, "GET|ms|#evil", tp.url+"/k", nil)
	get(t, "GET", tp.url+"/k", http.Header{"Range": {"bytes=1-2"}})
	if !tp.logs.waitFor("status=206") {
		t.Fatal("the last request was not logged")
	}
	rec := httptest.NewRecorder()
	tp.metrics.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Errorf("Content-Type = %q", ct)
	}
	got := promSamples(t, rec.Body.String())
	for sample, want := range map[string]string{
		`s3helper_requests_total{method="GET",status="200"}`:   "7",
		`s3helper_requests_total{method="HEAD",status="200"}`:  "3",
		`s3helper_requests_total{method="GET",status="404"}`:   "2",
		`s3helper_requests_total{method="other",status="405"}`: "1",
		`s3helper_requests_total{method="GET",status="206"}`:   "1",
		`s3helper_response_body_bytes_total`:                   fmt.Sprint(7*5 + 2),
		`s3helper_request_duration_seconds_count`:              "14",
		`s3helper_request_duration_seconds_bucket{le="+Inf"}`:  "14",
		`s3helper_upstream_ttfb_seconds_count`:                 "13",
		`s3helper_s3_errors_total{code="NoSuchKey"}`:           "2",
		`s3helper_upstream_errors_total{kind="connect"}`:       "0",
		`s3helper_requests_in_flight`:                          "0",
		`s3helper_credential_refreshes_total`:                  "0", // the test cache has no metrics of its own
	} {
		if got[sample] != want {
			t.Errorf("%s = %q, want %s", sample, got[sample], want)
		}
	}
}

// TestProxyEmitsMetrics checks the proxy's statsd lines on a real socket.
func TestProxyEmitsMetrics(t *testing.T) {
	tp := newTestProxy(t)
	ln, conn := udpListener(t)
	tp.metrics = newMetrics(newStatsdEmitter(conn, "s3helper", "", time.Hour), false)
	tp.upstream.metrics = tp.metrics
	tp.s3.put("k", []byte("12345"))
	get(t, "GET", tp.url+"/k", nil)
	get(t, "GET", tp.url+"/missing", nil)
	tp.metrics.Close()
	var got strings.Builder
	for _, p := range readPackets(t, ln, 8) {
		got.WriteString(p)
	}
	for _, want := range []string{"s3helper.requests.GET.200:1|c\n", "s3helper.bytes_out:5|c\n", "s3helper.requests.GET.404:1|c\n",
		"s3helper.upstream.s3_errors.NoSuchKey:1|c\n", "s3helper.request_ms:", "s3helper.upstream_ttfb_ms:"} {
		if !strings.Contains(got.String(), want) {
			t.Errorf("metrics lack %q:\n%s", want, got.String())
		}
	}
}

func TestStatusLabels(t *testing.T) {
	for _, status := range []int{200, 206, 304, 400, 403, 404, 405, 412, 416, 431, 499, 500, 502, 503, 504} {
		if got := statusLabels[statusIndex(status)]; got != fmt.Sprint(status) {
			t.Errorf("statusLabel(%d) = %q", status, got)
		}
	}
	for _, status := range []int{0, 201, 418, 1000} {
		if got := statusLabels[statusIndex(status)]; got != "other" {
			t.Errorf("statusLabel(%d) = %q, want other", status, got)
		}
	}
}

// TestProxyMetricNamesAreBounded: client methods and S3 error codes never
// become metric name segments; they are reduced to a fixed set.
func TestProxyMetricNamesAreBounded(t *testing.T) {
	tp := newTestProxy(t)
	ln, conn := udpListener(t)
	tp.metrics = newMetrics(newStatsdEmitter(conn, "s3helper", "", time.Hour), false)
	tp.upstream.metrics = tp.metrics
	tp.s3.fault = func(w http.ResponseWriter, r *http.Request, n int) bool {
		switch r.URL.Path {
		case "/" + testBucket + "/new-code":
			s3Error(w, http.StatusForbidden, "BrandNewCode"+strings.Repeat("X", 40), "a code no list knows")
		case "/" + testBucket + "/hostile-code":
			s3Error(w, http.StatusForbidden, "Evil|ms|#tag:1\nx", "punctuation in the code")
		default:
			return false
		}
		return true
	}
	for _, m := range []string{"GET|ms|#evil", "PROPFIND", "get", "X" + strings.Repeat("Y", 200)} {
		if resp, _ := get(t, m, tp.url+"/k", nil); resp.StatusCode != 405 {
			t.Errorf("%.20s = %d, want 405", m, resp.StatusCode)
		}
	}
	get(t, "GET", tp.url+"/new-code", nil)
	get(t, "GET", tp.url+"/hostile-code", nil)
	tp.metrics.Close()
	var got strings.Builder
	for _, p := range readPackets(t, ln, 10) {
		got.WriteString(p)
	}
	for line := range strings.SplitSeq(strings.TrimSpace(got.String()), "\n") {
		name, _, _ := strings.Cut(line, ":")
		for _, c := range name {
			if !(c == '.' || c == '_' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
				t.Errorf("metric name %q has %q", name, c)
			}
		}
	}
	for _, want := range []string{"s3helper.requests.other.405:1|c\n", "s3helper.upstream.s3_errors.other:1|c\n",
		"s3helper.upstream.s3_errors.403:1|c\n"} {
		if !strings.Contains(got.String(), want) {
			t.Errorf("metrics lack %q:\n%s", want, got.String())
		}
	}
	if strings.Contains(got.String(), "BrandNewCode") || strings.Contains(got.String(), "Evil") {
		t.Errorf("an S3 error code reached a metric name:\n%s", got.String())
	}
}

func TestMetricLabels(t *testing.T) {
	method := func(m string) string { return methodDim.values[methodIndex(m)] }
	s3Error := func(code string, status int) string { return s3ErrorDim.values[s3ErrorIndex(code, status)] }
	tests := []struct{ got, want string }{
		{method("GET"), "GET"}, {method("HEAD"), "HEAD"}, {method("get"), "other"},
		{method("GET|ms|#evil"), "other"},
		{s3Error("NoSuchKey", 404), "NoSuchKey"}, {s3Error("", 404), "404"},
		{s3Error("Whatever", 403), "other"}, {s3Error("", 1000), "other"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("label = %q, want %q", tt.got, tt.want)
		}
	}
}

// TestREADMEMetricTable: the README's table of metrics is the one
// metricTable renders, row for row.
func TestREADMEMetricTable(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	want := renderMetricTable()
	header, _, _ := strings.Cut(want, "\n")
	_, rest, found := strings.Cut(string(readme), header+"\n")
	if !found {
		t.Fatalf("README.md has no metrics table starting %q; it should read:\n%s", header, want)
	}
	got, _, _ := strings.Cut(rest, "\n\n")
	if header+"\n"+got+"\n" != want {
		t.Errorf("README.md's metrics table differs from metricTable; it should read:\n%s", want)
	}
}

// renderMetricTable is the README's table made from metricTable.
func renderMetricTable() string {
	var b strings.Builder
	b.WriteString("| measurement | statsd (`s3helper.` prefix) | Prometheus (`s3helper_` prefix) | New Relic (`s3helper.` prefix) |\n")
	b.WriteString("|---|---|---|---|\n")
	statsdKind := map[metricKind]string{counterKind: "counter", durationKind: "timer", gaugeKind: "gauge", totalKind: "counter"}
	promKind := map[metricKind]string{counterKind: "counter", durationKind: "histogram", gaugeKind: "gauge", totalKind: "counter"}
	newRelicKind := map[metricKind]string{counterKind: "count", durationKind: "summary", gaugeKind: "gauge", totalKind: "gauge"}
	for id := range metricTable {
		d := &metricTable[id]
		var names []string
		segments := d.name
		for _, l := range d.labels {
			names = append(names, l.name)
			segments += "." + strings.ToUpper(l.name)
		}
		cell := func(to outputSet, name, kind string) string {
			if d.outputs&to == 0 {
				return " "
			}
			return " `" + name + "` " + kind + " "
		}
		prom := d.prom
		nrLabels := ""
		if len(names) > 0 {
			prom += "{" + strings.Join(names, ",") + "}"
			nrLabels = " {" + strings.Join(names, ", ") + "}"
		}
		fmt.Fprintf(&b, "| %s |%s|%s|%s|\n", d.help,
			cell(toStatsd, segments, statsdKind[d.kind]),
			cell(toPrometheus, prom, promKind[d.kind]),
			cell(toNewRelic, d.name, newRelicKind[d.kind]+nrLabels))
	}
	return b.String()
}
