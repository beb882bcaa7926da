package main

// The request path against a strict S3 stand-in: headers both ways,
// rejections, statuses, retries, credentials S3 rejects, and benchmarks.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"
)

func TestProxyHeadersBothDirections(t *testing.T) {
	tp := newTestProxy(t)
	body := bytes.Repeat([]byte("0123456789"), 100)
	tp.s3.put("videos/a.mp4", body)
	clientHeader := http.Header{
		"Authorization":        {"Bearer player-token"},
		"Cookie":               {"sess=abc"},
		"X-Amz-Security-Token": {"client-token"},
		"X-Amz-Date":           {"20000101T000000Z"},
		"X-Forwarded-For":      {"10.9.9.9"},
		"User-Agent":           {"Player/1.0"},
		"X-Custom":             {"hello"},
		"Range":                {"bytes=10-19"},
		"If-None-Match":        {`"other"`},
	}
	resp, got := get(t, "GET", tp.url+"/videos/a.mp4", clientHeader)
	if resp.StatusCode != http.StatusPartialContent || string(got) != "0123456789" {
		t.Fatalf("GET = %d %q, want 206 0123456789", resp.StatusCode, got)
	}
	for name := range resp.Header {
		if strings.HasPrefix(strings.ToLower(name), "x-amz-") || name == "Server" {
			t.Errorf("response carries %s", name)
		}
	}
	for _, name := range []string{"Content-Range", "Content-Type", "Etag", "Last-Modified", "Accept-Ranges", "Content-Length"} {
		if resp.Header.Get(name) == "" {
			t.Errorf("response lacks %s", name)
		}
	}
	reqs := tp.s3.received()
	if len(reqs) != 1 {
		t.Fatalf("upstream requests = %d, want 1", len(reqs))
	}
	up := reqs[0]
	allowed := map[string]bool{"Range": true, "If-None-Match": true, "User-Agent": true, "Authorization": true,
		"X-Amz-Date": true, "X-Amz-Content-Sha256": true, "X-Amz-Security-Token": true, "Accept-Encoding": false}
	for name := range up.Header {
		if !allowed[name] {
			t.Errorf("upstream received %s: %q", name, up.Header[name])
		}
	}
	if up.Header.Get("X-Amz-Security-Token") != testToken || up.Header.Get("User-Agent") != userAgent ||
		!strings.HasPrefix(up.Header.Get("Authorization"), signingAlgorithm+" Credential="+testAKID+"/") {
		t.Errorf("upstream credentials headers wrong: %v", up.Header)
	}
	if up.Header.Get("Range") != "bytes=10-19" || up.RequestURI != "/media/videos/a.mp4" {
		t.Errorf("upstream got Range %q target %q", up.Header.Get("Range"), up.RequestURI)
	}
}

func TestProxyLeavesInboundRequestUntouched(t *testing.T) {
	tp := newTestProxy(t)
	tp.s3.put("k", []byte("x"))
	req := httptest.NewRequest("GET", "/k?acl&versionId=1", nil)
	req.Header.Set("Range", "bytes=0-0")
	req.Header.Set("Authorization", "Bearer x")
	before := req.Header.Clone()
	rec := httptest.NewRecorder()
	tp.ServeHTTP(rec, req)
	if rec.Code != http.StatusPartialContent {
		t.Fatalf("status = %d", rec.Code)
	}
	if fmt.Sprint(req.Header) != fmt.Sprint(before) || req.URL.RawQuery != "acl&versionId=1" {
		t.Errorf("inbound request changed: %v (was %v), query %q", req.Header, before, req.URL.RawQuery)
	}
}

func TestProxyRejections(t *testing.T) {
	tp := newTestProxy(t)
	long := strings.Repeat("k", maxKeyBytes+1)
	tests := []struct {
		name, method, target string
		header               http.Header
		status               int
	}{
		{"PUT", "PUT", "/k", nil, 405},
		{"POST", "POST", "/k", nil, 405},
		{"DELETE", "DELETE", "/k", nil, 405},
		{"bucket root", "GET", "/", nil, 404},
		{"bucket root listing", "GET", "/?list-type=2", nil, 404},
		{"route root", "GET", "/avod/", nil, 404},
		{"dot-dot", "GET", "/a/../b", nil, 400},
		{"encoded dot-dot", "GET", "/%2e%2e/secret", nil, 400},
		{"dot segment", "GET", "/a/./b", nil, 400},
		{"escape prefix", "GET", "/avod/%2E%2E/private", nil, 400},
		{"NUL", "GET", "/a%00b", nil, 400},
		{"control character", "GET", "/a%0Ab", nil, 400},
		{"DEL", "GET", "/a%7Fb", nil, 400},
		{"C1 NEL", "GET", "/a%C2%85b", nil, 400},
		{"C1 CSI", "GET", "/a%C2%9B31m", nil, 400},
		{"C1 first", "GET", "/%C2%80", nil, 400},
		{"C1 last", "GET", "/a%C2%9Fb", nil, 400},
		{"invalid UTF-8", "GET", "/a%FFb", nil, 400},
		{"overlong UTF-8", "GET", "/%C0%AE%C0%AE/x", nil, 400},
		{"key too long", "GET", "/" + long, nil, 400},
		{"two Range headers", "GET", "/k", http.Header{"Range": {"bytes=0-1", "bytes=2-3"}}, 400},
		{"bad query escape", "GET", "/k?versionId=%zz", nil, 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := get(t, tt.method, tp.url+tt.target, tt.header)
			if resp.StatusCode != tt.status {
				t.Fatalf("%s %s = %d %q, want %d", tt.method, tt.target, resp.StatusCode, body, tt.status)
			}
			if tt.status == 405 && resp.Header.Get("Allow") != "GET, HEAD" {
				t.Errorf("405 without Allow: GET, HEAD")
			}
			if bytes.Contains(body, []byte("secret")) || bytes.Contains(body, []byte("%")) {
				t.Errorf("error body %q echoes the input", body)
			}
		})
	}
	if n := len(tp.s3.received()); n != 0 {
		t.Errorf("rejected requests reached S3 %d times", n)
	}
	if !tp.logs.waitFor("invalid object key") {
		t.Errorf("no log line names the cause:\n%s", tp.logs)
	}
}

func TestProxyQueryFilter(t *testing.T) {
	tp := newTestProxy(t)
	tp.s3.put("k", []byte("x"))
	resp, _ := get(t, "GET", tp.url+"/k?acl&tagging&list-type=2&versionId=v%2F1&response-content-type=video/mp4&uploads&torrent&response-content-disposition=attachment%3B+filename%3D%22a+b.mp4%22", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status = %d", resp.StatusCode)
	}
	up := tp.s3.received()[0]
	const want = "/media/k?response-content-disposition=attachment%3B%20filename%3D%22a%20b.mp4%22&response-content-type=video%2Fmp4&versionId=v%2F1"
	if up.RequestURI != want {
		t.Errorf("upstream target = %q, want %q", up.RequestURI, want)
	}
}

func TestProxyStatusPassthrough(t *testing.T) {
	tp := newTestProxy(t)
	body := []byte("abcdefghijklmnopqrstuvwxyz")
	tp.s3.put("v.mp4", body)
	tp.s3.mu.Lock()
	etag := tp.s3.objects["v.mp4"].etag
	tp.s3.mu.Unlock()
	tests := []struct {
		name   string
		method string
		header http.Header
		key    string
		status int
		body   string
	}{
		{"full", "GET", nil, "v.mp4", 200, string(body)},
		{"first bytes", "GET", http.Header{"Range": {"bytes=0-3"}}, "v.mp4", 206, "abcd"},
		{"middle", "GET", http.Header{"Range": {"bytes=10-12"}}, "v.mp4", 206, "klm"},
		{"suffix", "GET", http.Header{"Range": {"bytes=-3"}}, "v.mp4", 206, "xyz"},
		{"open-ended", "GET", http.Header{"Range": {"bytes=23-"}}, "v.mp4", 206, "xyz"},
		{"past the end", "GET", http.Header{"Range": {"bytes=100-"}}, "v.mp4", 416, s3ErrorBody("InvalidRange", "The requested range is not satisfiable.")},
		{"not modified", "GET", http.Header{"If-None-Match": {etag}}, "v.mp4", 304, ""},
		{"precondition failed", "GET", http.Header{"If-Match": {`"nope"`}}, "v.mp4", 412, s3ErrorBody("PreconditionFailed", "At least one of the preconditions you specified did not hold.")},
		{"missing", "GET", nil, "nope.mp4", 404, s3ErrorBody("NoSuchKey", "The specified key does not exist.")},
		{"HEAD", "HEAD", nil, "v.mp4", 200, ""},
		{"HEAD missing", "HEAD", nil, "nope.mp4", 404, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, got := get(t, tt.method, tp.url+"/"+tt.key, tt.header)
			if resp.StatusCode != tt.status || string(got) != tt.body {
				t.Fatalf("%s = %d %q, want %d %q", tt.name, resp.StatusCode, got, tt.status, tt.body)
			}
			if tt.method == "HEAD" && tt.status == 200 && resp.ContentLength != int64(len(body)) {
				t.Errorf("HEAD Content-Length = %d, want %d", resp.ContentLength, len(body))
			}
			if bytes.Contains(got, []byte("RequestId")) {
				t.Error("S3's own XML error body reached the client")
			}
		})
	}
	if !tp.logs.waitFor("s3_code=NoSuchKey") {
		t.Errorf("the S3 error code is not logged:\n%s", tp.logs)
	}
}

// TestProxyErrorTextWithoutCode: S3 sends no body (and so no code) to a
// HEAD; the logged cause has no dangling separator.
func TestProxyErrorTextWithoutCode(t *testing.T) {
	tp := newTestProxy(t)
	if resp, _ := get(t, "HEAD", tp.url+"/missing", nil); resp.StatusCode != 404 {
		t.Fatalf("HEAD missing = %d", resp.StatusCode)
	}
	if !tp.logs.waitFor(`err="S3 answered 404"`) {
		t.Errorf("log lacks the exact cause:\n%s", tp.logs)
	}
}

func TestProxyWrongSecretIs403WithCodeLogged(t *testing.T) {
	tp := newTestProxy(t)
	tp.s3.secret = "another secret"
	resp, body := get(t, "GET", tp.url+"/k", nil)
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "<Code>SignatureDoesNotMatch</Code>") {
		t.Fatalf("GET = %d %q, want 403", resp.StatusCode, body)
	}
	if !tp.logs.waitFor("s3_code=SignatureDoesNotMatch") {
		t.Errorf("log lacks the S3 error code:\n%s", tp.logs)
	}
}

func TestProxyRetries(t *testing.T) {
	tests := []struct {
		name       string
		failures   int
		retries    int
		status     int
		wantUpReqs int
	}{
		{"SlowDown twice then OK", 2, 3, 200, 3},
		{"budget spent", 5, 2, 503, 3},
		{"no retries", 1, 0, 503, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tp := newTestProxy(t)
			tp.upstream.policy.limit = tt.retries
			tp.s3.put("k", []byte("payload"))
			tp.s3.fault = func(w http.ResponseWriter, r *http.Request, n int) bool {
				if n <= tt.failures {
					s3Error(w, http.StatusServiceUnavailable, "SlowDown", "Please reduce your request rate.")
					return true
				}
				return false
			}
			resp, body := get(t, "GET", tp.url+"/k", nil)
			if resp.StatusCode != tt.status {
				t.Fatalf("status = %d %q, want %d", resp.StatusCode, body, tt.status)
			}
			reqs := tp.s3.received()
			if len(reqs) != tt.wantUpReqs {
				t.Errorf("upstream requests = %d, want %d", len(reqs), tt.wantUpReqs)
			}
		})
	}
}

func TestProxyInternalErrorRetried(t *testing.T) {
	tp := newTestProxy(t)
	tp.s3.put("k", []byte("payload"))
	tp.s3.fault = func(w http.ResponseWriter, r *http.Request, n int) bool {
		if n == 1 {
			s3Error(w, http.StatusInternalServerError, "InternalError", "We encountered an internal error.")
			return true
		}
		return false
	}
	if resp, body := get(t, "GET", tp.url+"/k", nil); resp.StatusCode != 200 || string(body) != "payload" {
		t.Fatalf("GET = %d %q", resp.StatusCode, body)
	}
}

func TestProxyOwnErrors(t *testing.T) {
	tests := []struct {
		name      string
		transport http.RoundTripper
		creds     credentialGetter
		status    int
		logWord   string
	}{
		{"connect refused", roundTripperFunc(func(*http.Request) (*http.Response, error) {
			return nil, &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}
		}), nil, 502, "connection refused"},
		{"header timeout", roundTripperFunc(func(*http.Request) (*http.Response, error) {
			return nil, timeoutError{}
		}), nil, 504, "timeout awaiting response headers"},
		{"no credentials", nil, &credentialCache{provider: &fakeProvider{next: func(int) (*Credentials, error) {
			return nil, errors.New("IMDS unreachable")
		}}, log: slog.New(slog.DiscardHandler)}, 503, "IMDS unreachable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tp := newTestProxy(t)
			attempts := 0
			if tt.transport != nil {
				tp.upstream.transport = roundTripperFunc(func(r *http.Request) (*http.Response, error) {
					attempts++
					return tt.transport.RoundTrip(r)
				})
			}
			if tt.creds != nil {
				tp.upstream.creds = tt.creds
			}
			resp, body := get(t, "GET", tp.url+"/k", nil)
			if resp.StatusCode != tt.status {
				t.Fatalf("status = %d %q, want %d", resp.StatusCode, body, tt.status)
			}
			if tt.transport != nil && attempts != 4 {
				t.Errorf("attempts = %d, want 4 (1 + 3 retries)", attempts)
			}
			if !tp.logs.waitFor(tt.logWord) || !tp.logs.waitFor("level=ERROR") {
				t.Errorf("no error log line names %q:\n%s", tt.logWord, tp.logs)
			}
		})
	}
}

func TestProxyClientCancelStopsUpstream(t *testing.T) {
	tp := newTestProxy(t)
	upstreamDone := make(chan error, 1)
	tp.s3.fault = func(w http.ResponseWriter, r *http.Request, n int) bool {
		w.Header().Set("Content-Length", "100000000")
		w.WriteHeader(200)
		chunk := make([]byte, 32<<10)
		for {
			if _, err := w.Write(chunk); err != nil {
				upstreamDone <- err
				return true
			}
			select {
			case <-r.Context().Done():
				upstreamDone <- r.Context().Err()
				return true
			default:
			}
		}
	}
	ctx, cancel := context.WithCancel(t.Context())
	req, _ := http.NewRequestWithContext(ctx, "GET", tp.url+"/big", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.CopyN(io.Discard, resp.Body, 1<<20)
	cancel()
	resp.Body.Close()
	select {
	case <-upstreamDone:
	case <-time.After(5 * time.Second):
		t.Fatal("upstream kept sending after the client went away")
	}
	// The handler returned (its access log line is written last) with the
	// client's disconnect as the cause.
	if !tp.logs.waitFor("status=499") || !tp.logs.waitFor("client went away") {
		t.Errorf("the exchange did not end as a client disconnect:\n%s", tp.logs)
	}
}

func TestProxyIgnoresHostAndAbsoluteTarget(t *testing.T) {
	tp := newTestProxy(t)
	tp.s3.put("latest/meta-data/iam/security-credentials/role", []byte("object, not credentials"))
	conn, err := net.Dial("tcp", strings.TrimPrefix(tp.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprint(conn, "GET http://169.254.169.254/latest/meta-data/iam/security-credentials/role HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(got) != "object, not credentials" {
		t.Errorf("absolute-form GET = %d %q, want the bucket's object", resp.StatusCode, got)
	}
	resp2, body := get(t, "GET", tp.url+"/latest/meta-data/iam/security-credentials/role", http.Header{"Host": {"evil.example"}})
	if resp2.StatusCode != 200 || string(body) != "object, not credentials" {
		t.Errorf("forged Host GET = %d %q", resp2.StatusCode, body)
	}
	for _, r := range tp.s3.received() {
		if !strings.HasPrefix(r.RequestURI, "/"+testBucket+"/") {
			t.Errorf("upstream request outside the bucket: %s", r.RequestURI)
		}
	}
}

func TestProxyRoutes(t *testing.T) {
	tp := newTestProxy(t)
	tp.s3.put("ads/spot.mp4", []byte("ad"))
	tp.s3.put("avod/spot.mp4", []byte("not an ad"))
	if _, body := get(t, "GET", tp.url+"/avod/spot.mp4", nil); string(body) != "ad" {
		t.Errorf("/avod/spot.mp4 = %q, want the ads/ object", body)
	}
}

// FuzzProxyRequest: any path, query and Range gets a 2xx/3xx/4xx, never a
// 5xx of our own or a panic, and never reaches outside the bucket and prefix.
func FuzzProxyRequest(f *testing.F) {
	for _, seed := range []struct{ path, query, rng string }{
		{"/a.mp4", "", "bytes=0-1"},
		{"/%00", "", ""},
		{"/%2e%2e/x", "acl", ""},
		{"//", "list-type=2", ""},
		{"/a\\b", "versionId=%zz", ""},
		{"/%C0%AF", "", "bytes=" + strings.Repeat("1-2,", 1000) + "3-4"},
		{"/" + strings.Repeat("a", 8192), "", ""},
		{"/avod/../x", "response-content-type=a%2Fb", "bytes=-5"},
	} {
		f.Add(seed.path, seed.query, seed.rng)
	}
	var upstreamTargets []string
	var mu sync.Mutex
	p := &Proxy{
		routes: buildRoutes([]routeSpec{{"/", testBucket, "videos/"}, {"/avod/", "ads", ""}},
			&url.URL{Scheme: "http", Host: "s3.test"}, true, false),
		upstream: &s3Client{
			scheme: "http",
			signer: &Signer{Region: "us-east-1"},
			creds:  &credentialCache{provider: staticProvider{newCredentials(testAKID, testSecret, "", time.Time{}, sourceEnvironment)}, log: slog.New(slog.DiscardHandler)},
			transport: roundTripperFunc(func(r *http.Request) (*http.Response, error) {
				mu.Lock()
				upstreamTargets = append(upstreamTargets, r.URL.Opaque)
				mu.Unlock()
				return &http.Response{StatusCode: 200, Header: http.Header{}, Body: io.NopCloser(strings.NewReader("ok"))}, nil
			}),
			log: slog.New(slog.DiscardHandler),
		},
		log: slog.New(slog.DiscardHandler),
	}
	f.Fuzz(func(t *testing.T, path, query, rng string) {
		target := path
		if query != "" {
			target += "?" + query
		}
		req, err := http.NewRequest("GET", "http://proxy"+target, nil)
		if err != nil || !strings.HasPrefix(req.URL.Path, "/") {
			return // net/http's server would have answered 400 itself
		}
		if rng != "" {
			req.Header.Set("Range", rng)
		}
		mu.Lock()
		upstreamTargets = upstreamTargets[:0]
		mu.Unlock()
		rec := httptest.NewRecorder()
		p.ServeHTTP(rec, req)
		if rec.Code >= 500 {
			t.Fatalf("%q: status %d", target, rec.Code)
		}
		mu.Lock()
		defer mu.Unlock()
		for _, u := range upstreamTargets {
			if !strings.HasPrefix(u, "/"+testBucket+"/videos/") && !strings.HasPrefix(u, "/ads/") {
				t.Fatalf("%q reached %q, outside the bucket and prefix", target, u)
			}
			if strings.Contains(u, "/../") || strings.Contains(u, "/./") {
				t.Fatalf("%q reached %q with a dot segment", target, u)
			}
		}
	})
}

// discardResponse is a ResponseWriter that keeps nothing, so benchmarks
// measure the proxy, not the recorder.
type discardResponse struct {
	h      http.Header
	status int
	n      int64
}

func (d *discardResponse) Header() http.Header         { return d.h }
func (d *discardResponse) WriteHeader(status int)      { d.status = status }
func (d *discardResponse) Write(p []byte) (int, error) { d.n += int64(len(p)); return len(p), nil }

// staticUpstream answers every request with a 206 of body, from memory.
func staticUpstream(body []byte) http.RoundTripper {
	header := http.Header{
		"Content-Length":   {fmt.Sprint(len(body))},
		"Content-Range":    {fmt.Sprintf("bytes 0-%d/%d", len(body)-1, 10*len(body))},
		"Content-Type":     {"video/mp4"},
		"Etag":             {`"abc"`},
		"Last-Modified":    {"Fri, 02 Jan 2026 03:04:05 GMT"},
		"Accept-Ranges":    {"bytes"},
		"Server":           {"AmazonS3"},
		"X-Amz-Request-Id": {"REQ"},
		"X-Amz-Id-2":       {"ID2"},
	}
	return roundTripperFunc(func(r *http.Request) (*http.Response, error) {
		return &http.Response{StatusCode: 206, Header: header, ContentLength: int64(len(body)),
			Body: io.NopCloser(bytes.NewReader(body)), Request: r}, nil
	})
}

func benchProxy(body []byte) *Proxy {
	creds := newCredentials("ASIAY34FZKBOKMUTVV7A", testSecret, strings.Repeat("IQoJb3JpZ2luX2VjE", 40), time.Time{}, sourceIMDS)
	return &Proxy{
		routes: buildRoutes([]routeSpec{{"/", "media-bucket", ""}}, &url.URL{Scheme: "https", Host: "s3.eu-west-1.amazonaws.com"}, false, false),
		upstream: &s3Client{
			scheme:    "https",
			signer:    &Signer{Region: "eu-west-1"},
			creds:     &credentialCache{provider: staticProvider{creds}, log: slog.New(slog.DiscardHandler)},
			transport: staticUpstream(body),
			log:       slog.New(slog.DiscardHandler),
			// As in production: a retry budget, hedges after the adaptive
			// delay, and each upstream body watched for stalls.
			policy:  retryPolicy{limit: 3, budget: newRetryBudget(defaultRetryBudget, slog.New(slog.DiscardHandler)), hedges: newHedgeAllowance()},
			timeout: 5 * time.Second,
		},
		log: slog.New(slog.DiscardHandler),
	}
}

// BenchmarkProxy is ServeHTTP end to end over an in-memory upstream: the
// whole request path (mapping, scrubbing, signing, streaming, metrics
// bookkeeping), without the network.
func BenchmarkProxy(b *testing.B) {
	for _, size := range []int{4 << 10, 256 << 10} {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			benchServe(b, benchProxy(make([]byte, size)), size)
		})
	}
}

// benchServe measures p serving a player's Range GET of size bytes, and
// checks the last answer.
func benchServe(b *testing.B, p *Proxy, size int) {
	b.Helper()
	req := httptest.NewRequest("GET", "/videos/2026/11/some-show/episode-01/video_1080p_h264.mp4", nil)
	req.Header.Set("Range", fmt.Sprintf("bytes=0-%d", size-1))
	req.Header.Set("Authorization", "Bearer player")
	w := &discardResponse{h: make(http.Header, 8)}
	b.SetBytes(int64(size))
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		w.n = 0
		p.ServeHTTP(w, req)
	}
	if w.status != 206 || w.n != int64(size) {
		b.Fatalf("status %d, %d bytes", w.status, w.n)
	}
}

// BenchmarkReverseProxyBaseline is the standard library's
// httputil.ReverseProxy over the same in-memory upstream, with no signing:
// the direct path BenchmarkProxy is compared with.
func BenchmarkReverseProxyBaseline(b *testing.B) {
	for _, size := range []int{4 << 10, 256 << 10} {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			target, _ := url.Parse("https://media-bucket.s3.eu-west-1.amazonaws.com")
			rp := httputil.NewSingleHostReverseProxy(target)
			rp.Transport = staticUpstream(make([]byte, size))
			req := httptest.NewRequest("GET", "/videos/2026/11/some-show/episode-01/video_1080p_h264.mp4", nil)
			req.Header.Set("Range", fmt.Sprintf("bytes=0-%d", size-1))
			w := &discardResponse{h: make(http.Header, 8)}
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				clear(w.h)
				rp.ServeHTTP(w, req)
			}
		})
	}
}

// BenchmarkMapAndScrub is key mapping, query filtering and header copying
// in both directions.
func BenchmarkMapAndScrub(b *testing.B) {
	p := benchProxy(nil)
	in := http.Header{"Range": {"bytes=0-4095"}, "Authorization": {"Bearer x"}, "Cookie": {"a=b"}, "User-Agent": {"Player"}}
	s3 := http.Header{"Content-Length": {"4096"}, "Content-Range": {"bytes 0-4095/100000"}, "Etag": {`"e"`},
		"X-Amz-Request-Id": {"r"}, "Server": {"AmazonS3"}, "Content-Type": {"video/mp4"}}
	out, back := make(http.Header, 8), make(http.Header, 8)
	b.ReportAllocs()
	for b.Loop() {
		clear(out)
		clear(back)
		rt, key, err := mapPath(p.routes, "/videos/2026/11/some-show/episode-01/video_1080p_h264.mp4")
		if err != nil {
			b.Fatal(err)
		}
		_ = rt.uri(key)
		if _, _, err := filterQuery(""); err != nil {
			b.Fatal(err)
		}
		if err := checkRequestHeaders(in); err != nil {
			b.Fatal(err)
		}
		copyRequestHeaders(out, in)
		copyResponseHeaders(back, s3)
	}
}

func TestProxyStallBeforeHeadersIsRetried(t *testing.T) {
	tp := newTestProxy(t)
	tp.upstream.transport = newUpstreamTransport(100 * time.Millisecond)
	tp.s3.put("k", []byte("after a stall"))
	tp.s3.fault = func(w http.ResponseWriter, r *http.Request, n int) bool {
		if n == 1 {
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
			return true
		}
		return false
	}
	resp, body := get(t, "GET", tp.url+"/k", nil)
	if resp.StatusCode != 200 || string(body) != "after a stall" || len(tp.s3.received()) != 2 {
		t.Errorf("GET = %d %q after %d attempts; want 200 on the second", resp.StatusCode, body, len(tp.s3.received()))
	}
}

// faultyTCP is a TCP proxy in front of an upstream whose connections can be
// reset: resetAfter(i) for the i-th connection (0-based) returns how many
// upstream bytes pass before a reset; 0 resets at once, -1 never.
type faultyTCP struct {
	ln         net.Listener
	target     string
	resetAfter func(i int) int64
	resets     atomic.Int64
}

func newFaultyTCP(t *testing.T, target string, resetAfter func(int) int64) *faultyTCP {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &faultyTCP{ln: ln, target: target, resetAfter: resetAfter}
	t.Cleanup(func() { ln.Close() })
	go f.serve()
	return f
}

func (f *faultyTCP) serve() {
	for i := 0; ; i++ {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		go f.handle(c.(*net.TCPConn), f.resetAfter(i))
	}
}

func (f *faultyTCP) reset(c *net.TCPConn) {
	f.resets.Add(1)
	c.SetLinger(0) // close with RST
	c.Close()
}

func (f *faultyTCP) handle(c *net.TCPConn, after int64) {
	if after == 0 {
		f.reset(c)
		return
	}
	up, err := net.Dial("tcp", f.target)
	if err != nil {
		c.Close()
		return
	}
	go func() { io.Copy(up, c); up.Close() }()
	if after < 0 {
		io.Copy(c, up)
		c.Close()
		return
	}
	io.CopyN(c, up, after)
	up.Close()
	f.reset(c)
}

func TestProxyResetBeforeHeadersIsRetried(t *testing.T) {
	tp := newTestProxy(t)
	tp.s3.put("k", []byte("after a reset"))
	s3Addr := tp.routes[0].host
	faulty := newFaultyTCP(t, s3Addr, func(i int) int64 {
		if i == 0 {
			return 0
		}
		return -1
	})
	for i := range tp.routes {
		tp.routes[i].host = faulty.ln.Addr().String()
	}
	// The signature covers the Host, which is now the fault proxy's.
	resp, body := get(t, "GET", tp.url+"/k", nil)
	if resp.StatusCode != 200 || string(body) != "after a reset" || faulty.resets.Load() != 1 {
		t.Errorf("GET = %d %q with %d resets; want 200 after one reset", resp.StatusCode, body, faulty.resets.Load())
	}
}

func TestProxyManyHeadersServed(t *testing.T) {
	tp := newTestProxy(t)
	tp.s3.put("k", []byte("ok"))
	h := http.Header{}
	for i := range 200 {
		h.Set(fmt.Sprintf("X-Header-%d", i), "value")
	}
	if resp, body := get(t, "GET", tp.url+"/k", h); resp.StatusCode != 200 || string(body) != "ok" {
		t.Errorf("GET with 200 headers = %d %q", resp.StatusCode, body)
	}
	if up := tp.s3.received()[0]; len(up.Header) > 8 {
		t.Errorf("upstream received %d headers, want only ours", len(up.Header))
	}
}

func TestProxyRedirectIsAConfigurationError(t *testing.T) {
	tp := newTestProxy(t)
	tp.s3.fault = func(w http.ResponseWriter, r *http.Request, n int) bool {
		w.Header().Set("X-Amz-Bucket-Region", "eu-west-1")
		s3Error(w, http.StatusMovedPermanently, "PermanentRedirect", "The bucket you are attempting to access must be addressed using the specified endpoint.")
		return true
	}
	resp, body := get(t, "GET", tp.url+"/k", nil)
	if resp.StatusCode != http.StatusBadGateway || resp.Header.Get("Location") != "" {
		t.Errorf("S3 301 = %d %q, want 502", resp.StatusCode, body)
	}
	if !tp.logs.waitFor("the bucket is in eu-west-1 (S3 says so): set -region eu-west-1") || !tp.logs.waitFor("PermanentRedirect") {
		t.Errorf("log does not name the bucket's region:\n%s", tp.logs)
	}
}

// TestProxyWrongRegionNamesTheRegion: S3's 400 AuthorizationHeaderMalformed
// for a wrong signing region names the bucket's region in its body; the log
// line names it and the flag that fixes it.
func TestProxyWrongRegionNamesTheRegion(t *testing.T) {
	tp := newTestProxy(t)
	tp.s3.fault = func(w http.ResponseWriter, r *http.Request, n int) bool {
		w.Header().Set("Content-Type", "application/xml")
		w.WriteHeader(http.StatusBadRequest)
		io.WriteString(w, `<Error><Code>AuthorizationHeaderMalformed</Code><Message>The authorization header is malformed; the region 'us-east-1' is wrong; expecting 'ap-south-1'</Message><Region>ap-south-1</Region><RequestId>R</RequestId></Error>`)
		return true
	}
	if resp, _ := get(t, "GET", tp.url+"/k", nil); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("status = %d, want S3's 400 passed through", resp.StatusCode)
	}
	if !tp.logs.waitFor("set -region ap-south-1") {
		t.Errorf("log does not name the region:\n%s", tp.logs)
	}
}

// TestProxyRefreshesRejectedCredentials: when S3 says the set in use is
// no longer valid, s3-helper fetches another once and retries.
func TestProxyRefreshesRejectedCredentials(t *testing.T) {
	tp := newTestProxy(t)
	tp.s3.put("k", []byte("fresh"))
	tp.s3.rejectAKID = "ASIAREVOKED"
	p := &fakeProvider{next: func(n int) (*Credentials, error) {
		if n == 1 {
			return newCredentials("ASIAREVOKED", testSecret, testToken, time.Now().Add(time.Hour), sourceIMDS), nil
		}
		return newCredentials("ASIAFRESH", testSecret, testToken, time.Now().Add(time.Hour), sourceIMDS), nil
	}}
	tp.upstream.creds = &credentialCache{provider: p, log: slog.New(slog.DiscardHandler)}
	resp, body := get(t, "GET", tp.url+"/k", nil)
	if resp.StatusCode != 200 || string(body) != "fresh" {
		t.Fatalf("GET = %d %q, want 200 after a credential refresh", resp.StatusCode, body)
	}
	if p.count() != 2 || len(tp.s3.received()) != 2 {
		t.Errorf("fetches = %d, upstream requests = %d; want 2 and 2", p.count(), len(tp.s3.received()))
	}
	if !tp.logs.waitFor("retrying with a fresh set") {
		t.Errorf("log does not say why it retried:\n%s", tp.logs)
	}
}

// TestProxyRejectedCredentialsDoNotHammerIMDS: when IMDS still serves the
// rejected set, the 403 passes through and further requests force no fetch.
func TestProxyRejectedCredentialsDoNotHammerIMDS(t *testing.T) {
	tp := newTestProxy(t)
	tp.s3.rejectAKID = "ASIAREVOKED"
	expires := time.Now().Add(time.Hour)
	p := &fakeProvider{next: func(int) (*Credentials, error) {
		return newCredentials("ASIAREVOKED", testSecret, testToken, expires, sourceIMDS), nil
	}}
	tp.upstream.creds = &credentialCache{provider: p, log: slog.New(slog.DiscardHandler)}
	for range 5 {
		if resp, _ := get(t, "GET", tp.url+"/k", nil); resp.StatusCode != 403 {
			t.Fatalf("GET = %d, want S3's 403", resp.StatusCode)
		}
	}
	if p.count() != 2 {
		t.Errorf("fetches = %d, want 2 (the first and one forced refresh)", p.count())
	}
	if !tp.logs.waitFor("s3_code=InvalidAccessKeyId") {
		t.Errorf("log lacks the S3 code:\n%s", tp.logs)
	}
}

// TestProxyClientTextInErrorsIsBounded: a 30,000-byte query parameter name
// with a bad escape gets its 400, and the log line stays short.
func TestProxyClientTextInErrorsIsBounded(t *testing.T) {
	tp := newTestProxy(t)
	resp, _ := get(t, "GET", tp.url+"/hello.txt?"+strings.Repeat("A", 30000)+"%zz=1", nil)
	if resp.StatusCode != 400 {
		t.Fatalf("GET with a bad query = %d, want 400", resp.StatusCode)
	}
	if !tp.logs.waitFor("invalid query string") {
		t.Fatalf("no log line for the bad query:\n%.2000s", tp.logs)
	}
	for line := range strings.SplitSeq(tp.logs.String(), "\n") {
		if len(line) > 1024 {
			t.Errorf("log line of %d bytes: %.300s…", len(line), line)
		}
	}
}

// count reads one cell of an aggregated counter.
func count(p *Proxy, id metricID, cell int) int64 { return p.metrics.agg.counts[id][cell].Load() }

// TestHedgeFiresAtTheDelay: S3 holds the first answer back; the hedge is
// sent at exactly the delay, its answer is the client's, and the first
// attempt is cancelled. An answer one millisecond inside the delay sends
// no hedge.
func TestHedgeFiresAtTheDelay(t *testing.T) {
	body := []byte("a video segment")
	for _, tt := range []struct {
		name       string
		firstAfter time.Duration
		requests   int
		took       time.Duration
	}{
		{"held back", 2 * time.Second, 2, 100 * time.Millisecond},
		{"inside the delay", 99 * time.Millisecond, 1, 99 * time.Millisecond},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				s := &scriptedS3{answer: func(n int, r *http.Request) (*http.Response, error) {
					if n == 1 && !hold(r, tt.firstAfter) {
						return nil, r.Context().Err()
					}
					return objectAnswer(r, body, `"v1"`), nil
				}}
				p := scriptedProxy(s, hedgePolicy{mode: hedgeFixed, fixed: 100 * time.Millisecond}, &syncBuffer{})
				start := time.Now()
				w := serveOne(p, httptest.NewRequest("GET", "/k", nil))
				if w.Code != 200 || w.Body.String() != string(body) || time.Since(start) != tt.took {
					t.Errorf("client got %d %q after %v, want 200 after %v", w.Code, w.Body, time.Since(start), tt.took)
				}
				seen := s.seen()
				if len(seen) != tt.requests {
					t.Fatalf("S3 saw %d requests, want %d", len(seen), tt.requests)
				}
				if tt.requests == 2 {
					if at := seen[1].at.Sub(start); at != 100*time.Millisecond {
						t.Errorf("hedge sent at %v, want exactly the delay", at)
					}
					if !seen[0].cancelled {
						t.Error("the held-back first attempt was not cancelled")
					}
				}
				hedges := int64(tt.requests - 1)
				if count(p, mHedges, 0) != hedges || count(p, mHedgesWon, 0) != hedges || count(p, mHedgeCancels, 0) != hedges {
					t.Errorf("hedges %d, won %d, cancels %d; want %d each", count(p, mHedges, 0), count(p, mHedgesWon, 0), count(p, mHedgeCancels, 0), hedges)
				}
				// A winning hedge is a retry that succeeded: its cost comes back.
				if tokens := p.upstream.policy.budget.Tokens(); tokens != defaultRetryBudget {
					t.Errorf("retry budget after the request = %d, want it full (%d)", tokens, defaultRetryBudget)
				}
			})
		})
	}
}

// TestHedgeDelayAdapts: the automatic delay follows S3's time to first
// byte: the floor while S3 answers in 10 ms, the p95's bucket once it
// answers in 80 ms, and a request slower than that is hedged at it.
func TestHedgeDelayAdapts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ttfb := 10 * time.Millisecond
		var slowFirst atomic.Bool
		s := &scriptedS3{answer: func(n int, r *http.Request) (*http.Response, error) {
			d := ttfb
			if slowFirst.Swap(false) {
				d = time.Second
			}
			if !hold(r, d) {
				return nil, r.Context().Err()
			}
			return objectAnswer(r, []byte("x"), `"v1"`), nil
		}}
		p := scriptedProxy(s, hedgePolicy{mode: hedgeAuto}, &syncBuffer{})
		window := p.routes[0].latency
		if d, _ := p.upstream.policy.hedge.delay(window); d != hedgeCeiling {
			t.Errorf("delay before any sample = %v, want the ceiling %v", d, hedgeCeiling)
		}
		for range 200 {
			serveOne(p, httptest.NewRequest("GET", "/k", nil))
		}
		if d, _ := p.upstream.policy.hedge.delay(window); d != hedgeFloor {
			t.Errorf("delay while S3 answers in 10 ms = %v, want the floor %v", d, hedgeFloor)
		}
		ttfb = 80 * time.Millisecond
		for range 2 * ttfbGeneration {
			serveOne(p, httptest.NewRequest("GET", "/k", nil))
		}
		want := ttfbBucketTop(ttfbBucket(80 * time.Millisecond))
		if d, _ := p.upstream.policy.hedge.delay(window); d != want {
			t.Fatalf("delay once S3 answers in 80 ms = %v, want %v", d, want)
		}
		before := len(s.seen())
		slowFirst.Store(true)
		start := time.Now()
		serveOne(p, httptest.NewRequest("GET", "/k", nil))
		seen := s.seen()[before:]
		if len(seen) != 2 || seen[1].at.Sub(start) != want || time.Since(start) != want+ttfb {
			t.Errorf("a slow request: %d S3 requests, hedge at %v, answered after %v; want the hedge at %v", len(seen), seen[len(seen)-1].at.Sub(start), time.Since(start), want)
		}
	})
}

// TestHedgeClientCancels: the client goes away while both attempts wait
// on S3; both are cancelled at that instant and nothing is left running
// (synctest fails a test whose goroutines outlive it).
func TestHedgeClientCancels(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &scriptedS3{answer: func(n int, r *http.Request) (*http.Response, error) {
			<-r.Context().Done()
			return nil, r.Context().Err()
		}}
		logs := &syncBuffer{}
		p := scriptedProxy(s, hedgePolicy{mode: hedgeFixed, fixed: 50 * time.Millisecond}, logs)
		ctx, cancel := context.WithCancel(t.Context())
		time.AfterFunc(200*time.Millisecond, cancel)
		start := time.Now()
		serveOne(p, httptest.NewRequest("GET", "/k", nil).WithContext(ctx))
		if took := time.Since(start); took != 200*time.Millisecond {
			t.Errorf("the handler returned after %v, want the client's 200 ms", took)
		}
		seen := s.seen()
		if len(seen) != 2 || !seen[0].cancelled || !seen[1].cancelled {
			t.Errorf("S3 requests %+v: want two, both cancelled", seen)
		}
		if !strings.Contains(logs.String(), "status=499") || !strings.Contains(logs.String(), "hedged=true") {
			t.Errorf("want a 499 with a hedge in the access log:\n%s", logs)
		}
	})
}

// TestHedgeOneAttemptRejected: one attempt of a hedged pair meets
// ExpiredToken or RequestTimeTooSkewed while the other succeeds; whichever
// answers first, the client gets the object. A rejection is a failure the
// policy would correct, so it does not commit the race: the other attempt
// runs on, and S3 sees the pair only.
func TestHedgeOneAttemptRejected(t *testing.T) {
	body := []byte("the object")
	for _, code := range []string{"ExpiredToken", "RequestTimeTooSkewed"} {
		for _, rejectedFirst := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s first %v", code, rejectedFirst), func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					rejected := func() *http.Response {
						status := http.StatusBadRequest
						if code == "RequestTimeTooSkewed" {
							status = http.StatusForbidden
						}
						return errorAnswer(status, code, time.Now().Add(2*time.Hour))
					}
					s := &scriptedS3{answer: func(n int, r *http.Request) (*http.Response, error) {
						switch {
						case n == 1 && rejectedFirst: // the hedge's rejection comes first
							if !hold(r, 2*time.Second) {
								return nil, r.Context().Err()
							}
						case n == 1:
							if !hold(r, 150*time.Millisecond) {
								return nil, r.Context().Err()
							}
							return rejected(), nil
						case n == 2 && rejectedFirst:
							return rejected(), nil
						}
						return objectAnswer(r, body, `"v1"`), nil
					}}
					p := scriptedProxy(s, hedgePolicy{mode: hedgeFixed, fixed: 50 * time.Millisecond}, &syncBuffer{})
					p.upstream.creds = &credentialCache{provider: &rotatingProvider{}, log: slog.New(slog.DiscardHandler)}
					w := serveOne(p, httptest.NewRequest("GET", "/k", nil))
					if w.Code != 200 || w.Body.String() != string(body) {
						t.Errorf("client got %d %q, want the object", w.Code, w.Body)
					}
					if n := len(s.seen()); n != 2 {
						t.Errorf("S3 saw %d requests, want the pair", n)
					}
				})
			})
		}
	}
}

// TestHedgeRacingAnAnswerThatIsNotTheObject: 304, 412 and 416 are the
// answer whichever attempt of a hedged pair gets them first.
func TestHedgeRacingAnAnswerThatIsNotTheObject(t *testing.T) {
	body := bytes.Repeat([]byte("v"), 1000)
	for _, tt := range []struct {
		name   string
		header http.Header
		status int
	}{
		{"304", http.Header{"If-None-Match": {`"v1"`}}, 304},
		{"412", http.Header{"If-Match": {`"v0"`}}, 412},
		{"416", http.Header{"Range": {"bytes=5000-6000"}}, 416},
	} {
		var answers []string
		for _, firstWins := range []bool{true, false} {
			synctest.Test(t, func(t *testing.T) {
				s := &scriptedS3{answer: func(n int, r *http.Request) (*http.Response, error) {
					wait := 2 * time.Second // the loser's
					if n == 1 && firstWins {
						wait = 60 * time.Millisecond
					} else if n == 2 && !firstWins {
						wait = 0
					}
					if !hold(r, wait) {
						return nil, r.Context().Err()
					}
					return objectAnswer(r, body, `"v1"`), nil
				}}
				p := scriptedProxy(s, hedgePolicy{mode: hedgeFixed, fixed: 50 * time.Millisecond}, &syncBuffer{})
				r := httptest.NewRequest("GET", "/k", nil)
				maps.Copy(r.Header, tt.header)
				w := serveOne(p, r)
				if w.Code != tt.status {
					t.Errorf("%s, first wins %v: client got %d", tt.name, firstWins, w.Code)
				}
				if n := len(s.seen()); n != 2 {
					t.Errorf("%s: S3 saw %d requests, want a hedged pair", tt.name, n)
				}
				// The hedge cost 5; a 304 that passes on is a success: the first
				// try's adds 1, a winning hedge's refunds its 5.
				want := int64(defaultRetryBudget - retryCost)
				if tt.status == 304 && firstWins {
					want += firstTrySuccess
				} else if tt.status == 304 {
					want += retryCost
				}
				if tokens := p.upstream.policy.budget.Tokens(); tokens != want {
					t.Errorf("%s, first wins %v: retry budget %d, want %d", tt.name, firstWins, tokens, want)
				}
				answers = append(answers, fmt.Sprint(w.Code, w.Header(), w.Body.String()))
			})
		}
		if answers[0] != answers[1] {
			t.Errorf("%s: the answer depends on which attempt won:\n%s\n%s", tt.name, answers[0], answers[1])
		}
	}
}

// TestHedgeWinnerResumed: the hedge wins, its body fails mid-way, and the
// rest comes from a resume pinned to the hedge's ETag; a resume is never
// hedged, however slow.
func TestHedgeWinnerResumed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		body := bytes.Repeat([]byte("0123456789"), 10_000)
		s := &scriptedS3{answer: func(n int, r *http.Request) (*http.Response, error) {
			switch n {
			case 1:
				if !hold(r, 2*time.Second) {
					return nil, r.Context().Err()
				}
			case 2: // the hedge: cut after 30,000 bytes
				resp := objectAnswer(r, body, `"v1"`)
				resp.Body = &cutReader{r: resp.Body, left: 30_000}
				return resp, nil
			case 3: // the resume, slower than the hedge delay
				if !hold(r, 200*time.Millisecond) {
					return nil, r.Context().Err()
				}
			}
			return objectAnswer(r, body, `"v1"`), nil
		}}
		p := scriptedProxy(s, hedgePolicy{mode: hedgeFixed, fixed: 50 * time.Millisecond}, &syncBuffer{})
		w := serveOne(p, httptest.NewRequest("GET", "/k", nil))
		if w.Code != 200 || !bytes.Equal(w.Body.Bytes(), body) {
			t.Fatalf("client got %d and %d bytes, want 200 and all %d", w.Code, w.Body.Len(), len(body))
		}
		seen := s.seen()
		if len(seen) != 3 || seen[2].rng != "bytes=30000-99999" || seen[2].ifMatch != `"v1"` {
			t.Errorf("S3 requests %+v: want the pair, then one resume of bytes 30000- pinned to \"v1\"", seen)
		}
	})
}

// cutReader fails after left bytes, as a reset connection does.
type cutReader struct {
	r    io.ReadCloser
	left int
}

func (c *cutReader) Read(p []byte) (int, error) {
	if c.left <= 0 {
		return 0, io.ErrUnexpectedEOF
	}
	n, err := c.r.Read(p[:min(len(p), c.left)])
	c.left -= n
	return n, err
}

func (c *cutReader) Close() error { return c.r.Close() }

// TestRetriesZeroMeansNoneAtAll: -retries 0 sends one request per client
// request: no retry of a 503, no hedge of a slow answer, no resume.
func TestRetriesZeroMeansNoneAtAll(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		body := bytes.Repeat([]byte("x"), 50_000)
		s := &scriptedS3{answer: func(n int, r *http.Request) (*http.Response, error) {
			switch n {
			case 1:
				if !hold(r, 300*time.Millisecond) {
					return nil, r.Context().Err()
				}
				return errorAnswer(503, "SlowDown", time.Time{}), nil
			default:
				resp := objectAnswer(r, body, `"v1"`)
				resp.Body = &cutReader{r: resp.Body, left: 1000}
				return resp, nil
			}
		}}
		p := scriptedProxy(s, hedgePolicy{mode: hedgeFixed, fixed: 50 * time.Millisecond}, &syncBuffer{})
		p.upstream.policy.limit = 0
		if w := serveOne(p, httptest.NewRequest("GET", "/k", nil)); w.Code != 503 {
			t.Errorf("a slow 503 = %d, want S3's 503 passed on", w.Code)
		}
		if w := serveOne(p, httptest.NewRequest("GET", "/k", nil)); w.Body.Len() != 1000 {
			t.Errorf("a body cut at 1000 bytes: the client got %d bytes, want 1000 and an aborted response", w.Body.Len())
		}
		if n := len(s.seen()); n != 2 {
			t.Errorf("S3 saw %d requests for 2 client requests, want 2", n)
		}
	})
}

// TestHedgeClientCancelsClosesBothConnections: over real connections, a
// client that goes away while both attempts of a hedged pair wait on S3
// leaves no connection open: S3 sees both closed.
func TestHedgeClientCancelsClosesBothConnections(t *testing.T) {
	tp := newTestProxy(t)
	arrived, closed := make(chan struct{}, 2), make(chan struct{}, 4)
	tp.s3.fault = func(w http.ResponseWriter, r *http.Request, n int) bool {
		arrived <- struct{}{}
		<-r.Context().Done()
		return true
	}
	srv := httptest.NewUnstartedServer(tp.s3)
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateClosed {
			closed <- struct{}{}
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	endpoint, _ := url.Parse(srv.URL)
	tp.routes = buildRoutes([]routeSpec{{"/", testBucket, ""}}, endpoint, false, false)
	tp.upstream.policy.hedge = hedgePolicy{mode: hedgeFixed, fixed: 20 * time.Millisecond}
	ctx, cancel := context.WithCancel(t.Context())
	go func() {
		<-arrived
		<-arrived // both attempts wait on S3
		cancel()
	}()
	req, _ := http.NewRequestWithContext(ctx, "GET", tp.url+"/k", nil)
	if _, err := http.DefaultClient.Do(req); err == nil {
		t.Fatal("the request succeeded although the client went away")
	}
	for i := range 2 {
		select {
		case <-closed:
		case <-time.After(5 * time.Second):
			t.Fatalf("%d of the 2 upstream connections closed after the client went away", i)
		}
	}
	if !tp.logs.waitFor("status=499") || !strings.Contains(tp.logs.String(), "hedged=true") {
		t.Errorf("want a 499 with a hedge logged:\n%s", tp.logs)
	}
}

// replicaProxy is scriptedProxy whose bucket media-bucket (eu-west-1) has
// a replica media-west in us-west-2, both at AWS's regional endpoints.
func replicaProxy(s *scriptedS3) (*Proxy, *syncBuffer) {
	logs := &syncBuffer{}
	p := scriptedProxy(s, hedgePolicy{mode: hedgeOff}, logs)
	p.upstream.policy.pause = func(int) time.Duration { return 0 }
	p.routes = withReplicas(buildRoutes([]routeSpec{{"/", "media-bucket", ""}}, &url.URL{Scheme: "https", Host: "s3.eu-west-1.amazonaws.com"}, false, false),
		map[string][]replicaSpec{"media-bucket": {{"media-west", "us-west-2"}}}, nil, false)
	for i := range p.routes { // exact probe instants
		p.routes[i].health.rand = func() float64 { return 0.5 }
		for j := range p.routes[i].replicas {
			p.routes[i].replicas[j].health.rand = func() float64 { return 0.5 }
		}
	}
	return p, logs
}

// lastTo is the last request s saw at a host starting with prefix.
func lastTo(s *scriptedS3, prefix string) scriptedRequest {
	var last scriptedRequest
	for _, r := range s.seen() {
		if strings.HasPrefix(r.host, prefix) {
			last = r
		}
	}
	return last
}

// hostCounts counts the requests each bucket's host saw.
func hostCounts(s *scriptedS3) (primary, replica int) {
	for _, r := range s.seen() {
		switch {
		case strings.HasPrefix(r.host, "media-bucket."):
			primary++
		case strings.HasPrefix(r.host, "media-west."):
			replica++
		}
	}
	return primary, replica
}

// TestFailoverToTheReplica: while the primary's region answers 503 to
// everything, clients get the replica's copy; after three failed fetches
// the primary is marked down and requests go straight to the replica; one
// probe in the background, a HEAD a probe interval later, finds it still
// down while the request that found the probe due is served by the
// replica; when it answers again the next probe brings it back and it
// takes the traffic back.
func TestFailoverToTheReplica(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var primaryUp atomic.Bool
		var replicaScope atomic.Value
		s := &scriptedS3{answer: func(n int, r *http.Request) (*http.Response, error) {
			if strings.HasPrefix(r.Host, "media-west.") {
				replicaScope.Store(r.Header.Get("Authorization"))
				return objectAnswer(r, []byte("the replica's copy"), `"west"`), nil
			}
			if !primaryUp.Load() {
				return errorAnswer(503, "ServiceUnavailable", time.Time{}), nil
			}
			return objectAnswer(r, []byte("the primary's copy"), `"east"`), nil
		}}
		p, logs := replicaProxy(s)
		get := func() string { return serveOne(p, httptest.NewRequest("GET", "/k", nil)).Body.String() }
		for i := range markDownAfter {
			if got := get(); got != "the replica's copy" {
				t.Fatalf("request %d while the primary fails: %q", i, got)
			}
		}
		if primary, replica := hostCounts(s); primary != markDownAfter*4 || replica != markDownAfter {
			t.Errorf("before the mark-down: primary saw %d (want %d: each fetch and its 3 retries), replica %d", primary, markDownAfter*4, replica)
		}
		if auth, _ := replicaScope.Load().(string); !strings.Contains(auth, "/us-west-2/s3/aws4_request") {
			t.Errorf("the replica was not signed for its own region: %s", auth)
		}
		before, _ := hostCounts(s)
		for range 10 {
			get()
		}
		if primary, _ := hostCounts(s); primary != before {
			t.Errorf("the primary, marked down, saw %d more requests; want none", primary-before)
		}
		time.Sleep(probeInterval)
		if got := get(); got != "the replica's copy" {
			t.Errorf("the request that found the probe due got %q, want the replica's", got)
		}
		synctest.Wait() // the probe: still failing
		if primary, _ := hostCounts(s); primary != before+1 || lastTo(s, "media-bucket.").method != http.MethodHead {
			t.Errorf("the probe cost the primary %d requests, want one HEAD", primary-before)
		}
		primaryUp.Store(true)
		if got := get(); got != "the replica's copy" {
			t.Errorf("before the next probe: %q, want the replica's", got)
		}
		time.Sleep(probeInterval)
		if got := get(); got != "the replica's copy" {
			t.Errorf("the request that found the next probe due got %q, want the replica's", got)
		}
		synctest.Wait() // the probe finds the primary back
		if got := get(); got != "the primary's copy" {
			t.Errorf("after the recovery: %q, want the primary's copy", got)
		}
		if n := count(p, mFailovers, 0); n != markDownAfter {
			t.Errorf("failovers counted %d, want %d", n, markDownAfter)
		}
		for _, want := range []string{"bucket marked down", "bucket back up"} {
			if n := strings.Count(logs.String(), want); n != 1 {
				t.Errorf("%q logged %d times, want once per transition", want, n)
			}
		}
	})
}

// TestNoFailoverForS3sWord: a 404, 403 or 412 from the primary is the
// answer; the replica is never asked.
func TestNoFailoverForS3sWord(t *testing.T) {
	for _, status := range []int{404, 403, 412} {
		synctest.Test(t, func(t *testing.T) {
			s := &scriptedS3{answer: func(n int, r *http.Request) (*http.Response, error) {
				if strings.HasPrefix(r.Host, "media-west.") {
					return objectAnswer(r, []byte("replica"), `"west"`), nil
				}
				return errorAnswer(status, map[int]string{404: "NoSuchKey", 403: "AccessDenied", 412: "PreconditionFailed"}[status], time.Time{}), nil
			}}
			p, _ := replicaProxy(s)
			if w := serveOne(p, httptest.NewRequest("GET", "/k", nil)); w.Code != status {
				t.Errorf("the primary's %d came to the client as %d", status, w.Code)
			}
			if _, replica := hostCounts(s); replica != 0 {
				t.Errorf("the replica was asked after the primary's %d", status)
			}
		})
	}
}

// TestFailoverOnConnectErrorsButNotMidBody: a primary that refuses
// connections fails over; a response that started at the primary resumes
// at the primary (the ETag pins the object there), and when that fails the
// client's response is aborted, never spliced with the replica's copy.
func TestFailoverOnConnectErrorsButNotMidBody(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		refuse := true
		body := bytes.Repeat([]byte("p"), 10_000)
		s := &scriptedS3{answer: func(n int, r *http.Request) (*http.Response, error) {
			switch {
			case strings.HasPrefix(r.Host, "media-west."):
				return objectAnswer(r, bytes.Repeat([]byte("w"), 10_000), `"west"`), nil
			case refuse:
				return nil, &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
			case r.Header.Get("If-Match") != "":
				return errorAnswer(503, "ServiceUnavailable", time.Time{}), nil // the resume fails
			}
			resp := objectAnswer(r, body, `"east"`)
			resp.Body = &cutReader{r: resp.Body, left: 4000}
			return resp, nil
		}}
		p, _ := replicaProxy(s)
		if w := serveOne(p, httptest.NewRequest("GET", "/k", nil)); w.Code != 200 || w.Body.String() != strings.Repeat("w", 10_000) {
			t.Errorf("with the primary refusing connections: %d, %d bytes", w.Code, w.Body.Len())
		}
		refuse = false
		before := len(s.seen())
		w := serveOne(p, httptest.NewRequest("GET", "/k", nil))
		if w.Body.Len() != 4000 || strings.Contains(w.Body.String(), "w") {
			t.Errorf("a response cut at the primary: the client got %d bytes (%q…); want 4000 of the primary's and an abort", w.Body.Len(), w.Body.String()[:10])
		}
		for _, r := range s.seen()[before:] {
			if strings.HasPrefix(r.host, "media-west.") {
				t.Errorf("the resume went to the replica: %+v", r)
			}
		}
	})
}

// TestAccessLogNamesTheObject: the access log line names the bucket and
// the whole key S3 was asked for, beside the client's key.
func TestAccessLogNamesTheObject(t *testing.T) {
	tp := newTestProxy(t)
	tp.s3.put("ads/spot.mp4", []byte("an ad"))
	if resp, _ := get(t, "GET", tp.url+"/avod/spot.mp4", nil); resp.StatusCode != 200 {
		t.Fatalf("GET = %d", resp.StatusCode)
	}
	if !tp.logs.waitFor("key=spot.mp4 bucket=media s3_key=ads/spot.mp4") {
		t.Errorf("the access log does not name the object:\n%s", tp.logs)
	}
}
