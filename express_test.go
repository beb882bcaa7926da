package main

// Directory buckets where a bucket goes: their names, their zonal
// endpoints and what -endpoint means for one, the routes and the signer of
// their data requests, checked against expressVerify (express_fake_test.go).

import (
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"testing"
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

// proxyFor is newProxy for cfg with its static credentials.
func proxyFor(t *testing.T, cfg config) *Proxy {
	t.Helper()
	discard := slog.New(slog.DiscardHandler)
	p := newProxy(cfg, &credentialCache{provider: staticProvider{cfg.static}, log: discard}, nil, discard)
	return p
}

// TestNewProxyDirectoryBuckets: a route to a directory bucket reaches its
// zonal endpoint virtual-hosted (whatever -path-style says), is signed for
// s3express in its region; other routes do not change.
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
	if ads.signer != nil || ads.uriPrefix != "/media" || ads.directory != nil {
		t.Errorf("a general purpose bucket's route changed: %+v", ads)
	}
	replica := ads.replicas[0]
	if replica.host != "media--usw2-az1--x-s3.s3express-usw2-az1.us-west-2.amazonaws.com" ||
		replica.signer.(*expressSigner).Region != "us-west-2" {
		t.Errorf("a directory bucket replica: host %q, signer %+v", replica.host, replica.signer)
	}
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
