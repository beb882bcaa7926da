package main

// Directory buckets where a bucket goes: their names, their zonal
// endpoints and what -endpoint means for one, the routes and the signer of
// their data requests, checked against expressVerify (express_fake_test.go).

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

const (
	testDirectoryBucket = "media--use1-az4--x-s3"
	testZonalHost       = "media--use1-az4--x-s3.s3express-use1-az4.us-east-1.amazonaws.com"
)

func TestParseDirectoryBucket(t *testing.T) {
	tests := []struct {
		name, bucket string
		isDirectory  bool
		zone, err    string
	}{
		{"availability zone", "media--use1-az4--x-s3", true, "use1-az4", ""},
		{"local zone", "hot-titles--usw2-lax1-az1--x-s3", true, "usw2-lax1-az1", ""},
		{"'--' inside the base name", "a--b--apne1-az2--x-s3", true, "apne1-az2", ""},
		{"general purpose bucket", "media", false, "", ""},
		{"no zone", "media--x-s3", true, "", "a directory bucket is BASE--ZONEID--x-s3"},
		{"not a zone ID", "media--useast1--x-s3", true, "", `"useast1" is not a zone ID`},
		{"upper case", "Media--use1-az4--x-s3", true, "", "starts with a lower-case letter or a digit"},
		{"dot", "my.media--use1-az4--x-s3", true, "", "lower-case letters, digits and '-' only"},
		{"too long", strings.Repeat("m", 50) + "--use1-az4--x-s3", true, "", "at most 63 characters"},
		{"starts with '-'", "-media--use1-az4--x-s3", true, "", "starts with a lower-case letter"},
	}
	for _, tt := range tests {
		d, ok, err := parseDirectoryBucket(tt.bucket)
		if ok != tt.isDirectory || d.zone != tt.zone || (err == nil) != (tt.err == "") || err != nil && !strings.Contains(err.Error(), tt.err) {
			t.Errorf("%s: parseDirectoryBucket(%q) = %+v, %v, %v; want zone %q, directory %v, error %q", tt.name, tt.bucket, d, ok, err, tt.zone, tt.isDirectory, tt.err)
		}
		if checkErr := checkBucket(tt.bucket); (checkErr == nil) != (tt.err == "") {
			t.Errorf("%s: checkBucket(%q) = %v", tt.name, tt.bucket, checkErr)
		}
	}
}

func TestRegionZonePrefix(t *testing.T) {
	for region, want := range map[string]string{"us-east-1": "use1", "us-west-2": "usw2", "eu-north-1": "eun1",
		"ap-northeast-1": "apne1", "ap-southeast-2": "apse2", "ca-central-1": "cac1", "us-gov-west-1": "usgw1", "mars-up-1": ""} {
		if got, ok := regionZonePrefix(region); got != want || ok != (want != "") {
			t.Errorf("regionZonePrefix(%q) = %q, %v; want %q", region, got, ok, want)
		}
	}
}

// TestZonalAddress: what -endpoint means for a directory bucket.
func TestZonalAddress(t *testing.T) {
	d, _, _ := parseDirectoryBucket(testDirectoryBucket)
	tests := []struct {
		name, endpoint         string
		host, dialAddr, scheme string
	}{
		{"no -endpoint: the zonal endpoint", "", testZonalHost, "", "https"},
		{"a zonal endpoint's host (FIPS): the bucket is its first label", "https://s3express-fips-use1-az4.us-east-1.amazonaws.com",
			"media--use1-az4--x-s3.s3express-fips-use1-az4.us-east-1.amazonaws.com", "", "https"},
		{"an IP address: only where to connect", "http://127.0.0.1:7070", testZonalHost, "127.0.0.1:7070", "http"},
		{"an IPv6 address without a port", "https://[::1]", testZonalHost, "[::1]:443", "https"},
		{"a host name that is no zonal endpoint", "http://localhost", testZonalHost, "localhost:80", "http"},
	}
	for _, tt := range tests {
		var custom *url.URL
		if tt.endpoint != "" {
			var err error
			if custom, err = parseEndpoint(tt.endpoint); err != nil {
				t.Fatal(err)
			}
		}
		host, dialAddr, scheme := zonalAddress(d, "us-east-1", custom)
		if host != tt.host || dialAddr != tt.dialAddr || scheme != tt.scheme {
			t.Errorf("%s: zonalAddress = %q, %q, %q; want %q, %q, %q", tt.name, host, dialAddr, scheme, tt.host, tt.dialAddr, tt.scheme)
		}
	}
}

// TestConfigDirectoryBuckets: a directory bucket is valid as -bucket, a
// -route bucket and a -replica, and its zone must be in the region that
// signs for it.
func TestConfigDirectoryBuckets(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string // a problem; "" for none
	}{
		{"-bucket", []string{"-bucket", testDirectoryBucket}, ""},
		{"-route", []string{"-bucket", "media", "-route", "/hot/=" + testDirectoryBucket + "/vod/"}, ""},
		{"a replica of a directory bucket", []string{"-bucket", testDirectoryBucket, "-replica", testDirectoryBucket + "=media-west@us-west-2"}, ""},
		{"a directory bucket as a replica", []string{"-bucket", "media", "-replica", "media=media--usw2-az1--x-s3@us-west-2"}, ""},
		{"a bad name", []string{"-bucket", "media--east--x-s3"}, `-bucket "media--east--x-s3": a directory bucket is BASE--ZONEID--x-s3`},
		{"zone outside -region", []string{"-bucket", "media--euw1-az1--x-s3"},
			`-bucket "media--euw1-az1--x-s3": its zone euw1-az1 is not in region us-east-1 (whose zone IDs start use1-)`},
		{"a route's zone outside -region", []string{"-bucket", "media", "-route", "/hot/=media--usw2-az1--x-s3"},
			`-route "/hot/=media--usw2-az1--x-s3": its zone usw2-az1 is not in region us-east-1`},
		{"a replica's zone outside its region", []string{"-bucket", "media", "-replica", "media=media--use1-az4--x-s3@us-west-2"},
			`-replica "media--use1-az4--x-s3@us-west-2": its zone use1-az4 is not in region us-west-2`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := loadConfig(append([]string{"-region", "us-east-1"}, tt.args...), envFrom(staticEnv()), io.Discard)
			if (err == nil) != (tt.want == "") || err != nil && !strings.Contains(err.Error(), tt.want) {
				t.Errorf("loadConfig = %v, want %q", err, tt.want)
			}
		})
	}
}

// testExpressConfig is a resolved configuration for args, in us-east-1.
func testExpressConfig(t *testing.T, args ...string) config {
	t.Helper()
	cfg, err := loadConfig(append([]string{"-region", "us-east-1"}, args...), envFrom(staticEnv()), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.discoverRegion(t.Context()); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// proxyFor is newProxy for cfg with its static credentials; the session
// caches close at the end of the test.
func proxyFor(t *testing.T, cfg config) *Proxy {
	t.Helper()
	discard := slog.New(slog.DiscardHandler)
	p := newProxy(cfg, &credentialCache{provider: staticProvider{cfg.static}, log: discard}, nil, discard)
	t.Cleanup(func() { closeSessions(p.routes) })
	return p
}

// serveExpress is the stand-in for testDirectoryBucket on a socket,
// knowing the test credentials, with videos/hello.txt, and a proxy for
// -bucket testDirectoryBucket with -endpoint the socket's address.
func serveExpress(t *testing.T) (*fakeExpress, *httptest.Server, *Proxy) {
	t.Helper()
	f := newFakeExpress(testDirectoryBucket, "us-east-1", testAKID, testSecret)
	f.put("videos/hello.txt", []byte("hello, express"))
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, srv, proxyFor(t, testExpressConfig(t, "-bucket", testDirectoryBucket, "-endpoint", srv.URL))
}

// TestNewProxyDirectoryBuckets: a route to a directory bucket reaches its
// zonal endpoint virtual-hosted (whatever -path-style says), is signed for
// s3express in its region and has its bucket's session cache, shared by
// every route to the bucket; other routes do not change.
func TestNewProxyDirectoryBuckets(t *testing.T) {
	cfg := testExpressConfig(t, "-bucket", testDirectoryBucket, "-route", "/ads/=media", "-route", "/hot/="+testDirectoryBucket+"/vod/",
		"-replica", "media=media--usw2-az1--x-s3@us-west-2", "-path-style")
	p := proxyFor(t, cfg)
	byPrefix := map[string]route{}
	for _, r := range p.routes {
		byPrefix[r.pathPrefix] = r
	}
	root, hot, ads := byPrefix["/"], byPrefix["/hot/"], byPrefix["/ads/"]
	for _, r := range []route{root, hot} {
		signer, ok := r.signer.(*expressSigner)
		if r.host != testZonalHost || r.uriPrefix != "" || r.scheme != "https" || r.dialAddr != "" || !ok ||
			signer.Region != "us-east-1" || signer.Service != serviceS3Express || signer.SessionTokenHeader != headerS3SessionToken {
			t.Errorf("route %s: host %q, prefix %q, scheme %q, dial %q, signer %+v", r.pathPrefix, r.host, r.uriPrefix, r.scheme, r.dialAddr, r.signer)
		}
	}
	if root.creds == nil || root.creds != hot.creds {
		t.Errorf("routes to one directory bucket have session caches %p and %p, want one", root.creds, hot.creds)
	}
	if ads.creds != nil || ads.signer != nil || ads.uriPrefix != "/media" || ads.directory != nil {
		t.Errorf("a general purpose bucket's route changed: %+v", ads)
	}
	replica := ads.replicas[0]
	if replica.host != "media--usw2-az1--x-s3.s3express-usw2-az1.us-west-2.amazonaws.com" || replica.creds == nil ||
		replica.signer.(*expressSigner).Region != "us-west-2" {
		t.Errorf("a directory bucket replica: host %q, creds %v, signer %+v", replica.host, replica.creds, replica.signer)
	}
}

// TestExpressEndpointIsTheDialAddress: with -endpoint an IP address, a
// directory bucket's requests are dialled there with the zonal name as
// Host (and signed so): CreateSession and a data request over a real
// socket reach the stand-in, whose own verifier accepts both.
func TestExpressEndpointIsTheDialAddress(t *testing.T) {
	f, srv, p := serveExpress(t)
	rt := p.routes[0]
	if rt.host != testZonalHost || rt.dialAddr != strings.TrimPrefix(srv.URL, "http://") || rt.scheme != "http" {
		t.Fatalf("route host %q dial %q scheme %q", rt.host, rt.dialAddr, rt.scheme)
	}
	now := time.Now()
	session, err := rt.creds.Get(t.Context(), now)
	if err != nil || session.Source != sourceS3Express || f.createCount() != 1 {
		t.Fatalf("Get = %v, %v after %d CreateSessions", session, err, f.createCount())
	}
	up := upstreamRequest{route: rt, method: http.MethodGet, client: http.Header{"Range": {"bytes=7-"}}, uri: rt.uri("videos/hello.txt")}
	if status, body := roundTripBody(t, p.upstream.transport, p.upstream.newRequest(t.Context(), &up, session, now)); status != http.StatusPartialContent || body != "express" {
		t.Errorf("GET through the dial address = %d %q; rejected: %v", status, body, f.rejected)
	}
}

// roundTripBody sends req over rt and returns the status and the body.
func roundTripBody(t *testing.T, rt http.RoundTripper, req *http.Request) (int, string) {
	t.Helper()
	resp, err := rt.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

// TestExpressSignerIndependentVerifier: a data request signed for a
// directory bucket carries the session token in x-amz-s3session-token,
// signed, and no x-amz-security-token; expressVerify, which shares no code
// with the signer, accepts it and refuses it tampered with. The default
// Signer still signs x-amz-security-token.
func TestExpressSignerIndependentVerifier(t *testing.T) {
	session := newCredentials("ASIAEXPRESS000000001", "express/secret+KEY", "S3EXPRESS-1-"+strings.Repeat("IQoJb3Jp", 60), time.Time{}, sourceS3Express)
	secretOf := func(id string) (string, bool) { return session.SecretAccessKey, id == session.AccessKeyID }
	at := time.Date(2026, 11, 27, 4, 0, 0, 0, time.UTC)
	key := "videos/2026/a b+c~(1).mp4"
	sign := func(s *Signer) *http.Request {
		h := http.Header{"Range": {"bytes=0-1023"}, headerSecurityToken: {"left over from elsewhere"}}
		s.Sign(h, &signingRequest{method: http.MethodGet, host: testZonalHost, uri: canonicalURI(key), query: "versionId=v%2B1"}, session, at)
		return &http.Request{Method: http.MethodGet, RequestURI: canonicalURI(key) + "?versionId=v%2B1", Host: testZonalHost, Header: h,
			URL: &url.URL{Path: "/" + key, RawQuery: "versionId=v%2B1"}}
	}
	express := &Signer{Region: "us-east-1", Service: serviceS3Express, SessionTokenHeader: headerS3SessionToken}
	r := sign(express)
	if got := r.Header.Get(headerS3SessionToken); got != session.SessionToken {
		t.Errorf("x-amz-s3session-token = %q, want the session token", got)
	}
	if _, ok := r.Header[headerSecurityToken]; ok {
		t.Error("a directory bucket's request carries X-Amz-Security-Token")
	}
	akid, signed, err := expressVerify(r, "s3express", "us-east-1", secretOf, at)
	if err != nil || akid != session.AccessKeyID || strings.Join(signed, ";") != "host;x-amz-content-sha256;x-amz-date;x-amz-s3session-token" {
		t.Errorf("expressVerify = %q, %v, %v", akid, signed, err)
	}
	r.Header.Set(headerS3SessionToken, "another token")
	if _, _, err := expressVerify(r, "s3express", "us-east-1", secretOf, at); err == nil {
		t.Error("expressVerify accepted a request whose session token was changed after signing")
	}
	if _, _, err := expressVerify(sign(&Signer{Region: "us-east-1", Service: "s3"}), "s3express", "us-east-1", secretOf, at); err == nil {
		t.Error("expressVerify accepted a signature for service s3")
	}
	plain := sign(&Signer{Region: "us-east-1", Service: serviceS3Express})
	if _, signed, err := expressVerify(plain, "s3express", "us-east-1", secretOf, at); err != nil || plain.Header.Get(headerSecurityToken) != session.SessionToken ||
		plain.Header.Get(headerS3SessionToken) != "" || !strings.Contains(strings.Join(signed, ";"), "x-amz-security-token") {
		t.Errorf("the default token header: signed %v, err %v, headers %v", signed, err, plain.Header)
	}
}

// TestExpressPresign: a directory bucket's URL is signed with a session,
// X-Amz-S3session-Token in the query, and accepted by expressVerify and
// the stand-in; the role's credentials and an expiry past the session's are
// refused with what to do.
func TestExpressPresign(t *testing.T) {
	f, srv, p := serveExpress(t)
	rt := p.routes[0]
	now := time.Now()
	session, err := rt.creds.Get(t.Context(), now)
	if err != nil {
		t.Fatal(err)
	}
	in := signingRequest{method: http.MethodGet, host: rt.host, uri: rt.uri("videos/hello.txt")}
	role := newCredentials(testAKID, testSecret, testToken, time.Time{}, sourceEnvironment)
	if _, err := rt.signer.Presign(in, role, now, time.Minute); !errors.Is(err, errPresignNeedsSession) {
		t.Errorf("Presign with the role's credentials = %v, want errPresignNeedsSession", err)
	}
	if _, err := rt.signer.Presign(in, session, now, 15*time.Minute); err == nil || !strings.Contains(err.Error(), "give -presign-expires 4m0s or less") {
		t.Errorf("Presign for 15m with a 5-minute session = %v", err)
	}
	query, err := rt.signer.Presign(in, session, now, 4*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(query, "X-Amz-S3session-Token=") || strings.Contains(query, "X-Amz-Security-Token") ||
		!strings.Contains(query, "%2Fs3express%2Faws4_request") {
		t.Errorf("presigned query %s", query)
	}
	req, _ := http.NewRequest(http.MethodGet, srv.URL+in.uri+"?"+query, nil)
	req.Host = rt.host
	if status, body := roundTripBody(t, http.DefaultTransport, req); status != http.StatusOK || body != "hello, express" {
		t.Errorf("the presigned URL = %d %q; rejected: %v", status, body, f.rejected)
	}
}

// BenchmarkSignExpress signs BenchmarkSign's request for a directory
// bucket with a cached session: the session cache's Get (over the role's
// credential cache, both lock-free) and Sign, with a session token as long
// as BenchmarkSign's; run the two together to compare.
func BenchmarkSignExpress(b *testing.B) {
	f := newFakeExpress(testDirectoryBucket, "eu-west-1", testAKID, testSecret)
	d, _, _ := parseDirectoryBucket(testDirectoryBucket)
	sessions := &sessionCache{bucket: d, region: "eu-west-1", host: f.host, scheme: "https", transport: handlerTransport{f},
		base: &credentialCache{provider: staticProvider{newCredentials(testAKID, testSecret, testToken, time.Time{}, sourceEnvironment)}},
		log:  slog.New(slog.DiscardHandler)}
	defer sessions.Close()
	s := &Signer{Region: "eu-west-1", Service: serviceS3Express, SessionTokenHeader: headerS3SessionToken}
	in := &signingRequest{method: "GET", host: f.host, uri: canonicalURI("videos/2026/11/some-show/episode-01/video_1080p_h264.mp4")}
	h := make(http.Header, 8)
	h["Range"] = []string{"bytes=4096-262143"}
	now := time.Now()
	if _, err := sessions.Get(b.Context(), now); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		creds, _ := sessions.Get(b.Context(), now)
		s.Sign(h, in, creds, now)
	}
}

// TestCheckDirectoryBucket: -check makes a session (naming the permission
// to add when CreateSession is refused), probes the bucket with it and
// HEADs -check-key with it.
func TestCheckDirectoryBucket(t *testing.T) {
	tests := []struct {
		name     string
		setup    func(f *fakeExpress)
		checkKey string
		wantErr  bool
		want     []string
	}{
		{"healthy", nil, "/videos/hello.txt", false, []string{
			"PASS  session for " + testDirectoryBucket + ": CreateSession (ReadOnly) at http://" + testZonalHost + " (dialled at 127.0.0.1:",
			"PASS  bucket " + testDirectoryBucket + ": exists in zone use1-az4 and accepts the session's signature",
			"PASS  clock: within",
			"PASS  read /videos/hello.txt: HEAD s3://" + testDirectoryBucket + "/videos/hello.txt answered 200 (with a session)",
		}},
		{"CreateSession refused", func(f *fakeExpress) { f.refuse = "AccessDenied" }, "", true, []string{
			"FAIL  session for " + testDirectoryBucket + ": CreateSession for " + testDirectoryBucket + ": S3 answered 403 AccessDenied",
			`fix: add to the role's policy {"Effect": "Allow", "Action": "s3express:CreateSession", "Resource": "arn:aws:s3express:us-east-1:ACCOUNT:bucket/` + testDirectoryBucket + `"}`,
		}},
		{"missing key", nil, "/videos/nope.mp4", true, []string{
			"PASS  bucket " + testDirectoryBucket + ": exists in zone use1-az4",
			"FAIL  read /videos/nope.mp4: s3://" + testDirectoryBucket + "/videos/nope.mp4 does not exist (HEAD 404)",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeExpress(testDirectoryBucket, "us-east-1", testAKID, testSecret)
			f.put("videos/hello.txt", []byte("hello"))
			if tt.setup != nil {
				tt.setup(f)
			}
			srv := httptest.NewServer(f)
			defer srv.Close()
			args := []string{"-check", "-bucket", testDirectoryBucket, "-region", "us-east-1", "-endpoint", srv.URL, "-listen", "127.0.0.1:0"}
			if tt.checkKey != "" {
				args = append(args, "-check-key", tt.checkKey)
			}
			var out bytes.Buffer
			err := run(t.Context(), args, envFrom(staticEnv()), &out, &bytes.Buffer{})
			if (err != nil) != tt.wantErr || err != nil && !errors.Is(err, errCheckFailed) {
				t.Errorf("run -check = %v, want failure %v\n%s", err, tt.wantErr, out.String())
			}
			for _, want := range tt.want {
				if !strings.Contains(out.String(), want) {
					t.Errorf("output lacks %q:\n%s", want, out.String())
				}
			}
			if strings.Contains(out.String(), testSecret) || strings.Contains(out.String(), testToken) || strings.Contains(out.String(), "S3EXPRESS-") {
				t.Error("the output contains a secret")
			}
		})
	}
}

// newExpressProxy is the proxy newProxy builds for -bucket
// testDirectoryBucket, sending to f in memory (requests and CreateSession
// alike), with aggregated metrics, for tests under testing/synctest.
func newExpressProxy(t *testing.T, f *fakeExpress) *Proxy {
	t.Helper()
	cfg := testExpressConfig(t, "-bucket", testDirectoryBucket)
	log := slog.New(slog.DiscardHandler)
	p := newProxy(cfg, &staticBase{cur: baseCreds(baseA)}, newMetrics(nil, true), log)
	p.upstream.transport, p.upstream.fronts = handlerTransport{f}, nil // the stand-in in memory, not its name's addresses
	p.upstream.policy.pause = func(int) time.Duration { return 0 }
	sc := p.routes[0].creds.(*sessionCache)
	sc.transport, sc.rand = handlerTransport{f}, rand.New(rand.NewPCG(26, 1)).Float64
	t.Cleanup(func() { closeSessions(p.routes) })
	return p
}

// TestExpressThroughProxy: the targets through the real handler,
// over the stand-in in memory: a first burst of 64 concurrent requests
// makes exactly one CreateSession and all 64 are answered; GET, Range and
// HEAD are byte-exact and a missing key is 404; a session S3 rejects is
// replaced once and the request signed again; 100 s at 20 Range GETs a
// second with 90 s sessions fail nothing, make 2 to 6 sessions, and sign
// none with under 5 s of session left or with x-amz-security-token.
func TestExpressThroughProxy(t *testing.T) {
	body := make([]byte, 1<<20)
	for i := range body {
		body[i] = byte(i * 7)
	}
	t.Run("burst and objects", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newTestExpress(0)
			f.put("videos/seg.mp4", body)
			gate := make(chan struct{})
			f.gate = gate
			p := newExpressProxy(t, f)
			codes := make([]int, 64)
			var wg sync.WaitGroup
			for i := range codes {
				wg.Go(func() {
					r := httptest.NewRequest(http.MethodGet, "/videos/seg.mp4", nil)
					r.Header.Set("Range", "bytes=0-4095")
					codes[i] = serveOne(p, r).Code
				})
			}
			synctest.Wait()
			close(gate)
			wg.Wait()
			for i, code := range codes {
				if code != http.StatusPartialContent {
					t.Fatalf("burst request %d = %d, want 206", i, code)
				}
			}
			if n := f.createCount(); n != 1 {
				t.Errorf("CreateSessions for a burst of 64 = %d, want 1", n)
			}
			for _, tt := range []struct {
				method, rng string
				status      int
				want        []byte
			}{
				{http.MethodGet, "", http.StatusOK, body},
				{http.MethodGet, "bytes=1000-1999", http.StatusPartialContent, body[1000:2000]},
				{http.MethodGet, "bytes=-10", http.StatusPartialContent, body[len(body)-10:]},
				{http.MethodHead, "", http.StatusOK, nil},
			} {
				r := httptest.NewRequest(tt.method, "/videos/seg.mp4", nil)
				if tt.rng != "" {
					r.Header.Set("Range", tt.rng)
				}
				w := serveOne(p, r)
				if w.Code != tt.status || !bytes.Equal(w.Body.Bytes(), tt.want) || tt.method == http.MethodHead && w.Header().Get("Content-Length") != "1048576" {
					t.Errorf("%s %q = %d, %d bytes; want %d, %d bytes", tt.method, tt.rng, w.Code, w.Body.Len(), tt.status, len(tt.want))
				}
			}
			if w := serveOne(p, httptest.NewRequest(http.MethodGet, "/videos/nope.mp4", nil)); w.Code != http.StatusNotFound {
				t.Errorf("a missing key = %d, want 404", w.Code)
			}
			// S3 rejects the session before its Expiration: signed again
			// once, with one new session.
			f.set(func(f *fakeExpress) {
				for id := range f.sessions {
					f.revoked[id] = true
				}
			})
			if w := serveOne(p, httptest.NewRequest(http.MethodGet, "/videos/seg.mp4", nil)); w.Code != http.StatusOK || f.createCount() != 2 {
				t.Errorf("after S3 rejected the session: %d after %d CreateSessions; want 200 after 2", w.Code, f.createCount())
			}
		})
	})
	t.Run("100 s with 90 s sessions", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newTestExpress(90 * time.Second)
			f.put("videos/seg.mp4", body)
			p := newExpressProxy(t, f)
			failed := 0
			for i := range 2000 {
				r := httptest.NewRequest(http.MethodGet, "/videos/seg.mp4", nil)
				from := i * 4099 % (len(body) - 65536)
				r.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", from, from+65535))
				if w := serveOne(p, r); w.Code != http.StatusPartialContent || !bytes.Equal(w.Body.Bytes(), body[from:from+65536]) {
					failed++
				}
				time.Sleep(50 * time.Millisecond)
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			t.Logf("2000 requests over 100 s: %d sessions, the least session time left on a request %v", len(f.creates), f.minLeft)
			if failed != 0 || len(f.rejected) != 0 {
				t.Errorf("%d failed; rejected: %v", failed, f.rejected)
			}
			if n := len(f.creates); n < 2 || n > 6 {
				t.Errorf("%d sessions in 100 s, want 2 to 6", n)
			}
			if f.minLeft < minSessionLeft {
				t.Errorf("a request was signed with %v of its session left", f.minLeft)
			}
		})
	})
}

// TestExpressZoneDownFailsOver: a directory bucket whose zonal endpoint
// cannot answer CreateSession is the zone failing: with a general purpose
// replica the client gets the replica's copy and, after markDownAfter such
// requests, the bucket is marked down; without one, 502. A CreateSession
// S3 refuses is no zone failure: 503, and the replica is not asked.
func TestExpressZoneDownFailsOver(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		refuse     bool
		wantStatus int
		wantBody   string
	}{
		{"zone unreachable, a replica", []string{"-replica", testDirectoryBucket + "=media@us-east-1"}, false, http.StatusOK, "the replica's copy"},
		{"zone unreachable, no replica", nil, false, http.StatusBadGateway, "<Code>BadGateway</Code>"},
		{"CreateSession refused, a replica", []string{"-replica", testDirectoryBucket + "=media@us-east-1"}, true, http.StatusServiceUnavailable, "<Code>ServiceUnavailable</Code>"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newTestExpress(0)
				f.put("k", []byte("the zone's copy"))
				f.refuse = map[bool]string{true: "AccessDenied"}[tt.refuse]
				replica := &scriptedS3{answer: func(n int, r *http.Request) (*http.Response, error) {
					if r.Host == testZonalHost {
						return handlerTransport{f}.RoundTrip(r)
					}
					return objectAnswer(r, []byte("the replica's copy"), `"regional"`), nil
				}}
				cfg := testExpressConfig(t, append([]string{"-bucket", testDirectoryBucket}, tt.args...)...)
				p := newProxy(cfg, &staticBase{cur: baseCreds(baseA)}, newMetrics(nil, true), slog.New(slog.DiscardHandler))
				t.Cleanup(func() { closeSessions(p.routes) })
				p.upstream.transport, p.upstream.fronts = replica, nil // in memory, not the names' addresses
				p.upstream.policy.pause = func(int) time.Duration { return 0 }
				sc := p.routes[0].creds.(*sessionCache)
				sc.pause = func(int) time.Duration { return 0 }
				if !tt.refuse {
					sc.transport = unreachable{}
				} else {
					sc.transport = handlerTransport{f}
				}
				for i := range markDownAfter + 1 {
					w := serveOne(p, httptest.NewRequest(http.MethodGet, "/k", nil))
					if w.Code != tt.wantStatus || !strings.Contains(w.Body.String(), tt.wantBody) {
						t.Fatalf("request %d = %d %q, want %d %q", i, w.Code, w.Body, tt.wantStatus, tt.wantBody)
					}
					time.Sleep(maxSessionBackoff) // past the backoff: each request tries CreateSession again
				}
				states, _ := p.bucketStates()
				zoneDown := len(states) > 0 && !states[0].up
				if want := !tt.refuse && tt.args != nil; zoneDown != want {
					t.Errorf("the directory bucket marked down = %v, want %v (states %+v)", zoneDown, want, states)
				}
				askedReplica := false
				for _, r := range replica.seen() {
					askedReplica = askedReplica || r.host != testZonalHost
				}
				if want := tt.wantStatus == http.StatusOK; askedReplica != want {
					t.Errorf("the replica asked = %v, want %v", askedReplica, want)
				}
			})
		})
	}
}
