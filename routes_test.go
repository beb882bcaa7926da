package main

// How a path becomes a bucket, key and host: addressing styles, the key
// rules, the request target.

import (
	"errors"
	"net/url"
	"strings"
	"testing"
)

func TestBuildRoutesAddressing(t *testing.T) {
	aws := &url.URL{Scheme: "https", Host: "s3.eu-west-1.amazonaws.com"}
	tests := []struct {
		name, bucket string
		endpoint     *url.URL
		force        bool
		host, prefix string
	}{
		{"virtual-hosted", "media", aws, false, "media.s3.eu-west-1.amazonaws.com", ""},
		{"dots use path style", "my.media", aws, false, "s3.eu-west-1.amazonaws.com", "/my.media"},
		{"forced path style", "media", aws, true, "s3.eu-west-1.amazonaws.com", "/media"},
		{"IP endpoint", "media", &url.URL{Scheme: "http", Host: "127.0.0.1:7070"}, false, "127.0.0.1:7070", "/media"},
		{"legacy name", "Legacy_Bucket", aws, false, "s3.eu-west-1.amazonaws.com", "/Legacy_Bucket"},
	}
	for _, tt := range tests {
		r := buildRoutes([]routeSpec{{"/", tt.bucket, ""}}, tt.endpoint, tt.force, false)[0]
		if r.host != tt.host || r.uriPrefix != tt.prefix {
			t.Errorf("%s: host %q prefix %q, want %q %q", tt.name, r.host, r.uriPrefix, tt.host, tt.prefix)
		}
	}
	u, err := parseEndpoint("https://s3.example.com:443/")
	if err != nil || u.Host != "s3.example.com" {
		t.Errorf("parseEndpoint dropped nothing: %v, %v", u, err)
	}
}

func TestValidateKey(t *testing.T) {
	tests := []struct {
		name, key string
		ok        bool
	}{
		{"plain", "videos/a.mp4", true},
		{"unicode", "é中😀", true},
		{"max length", strings.Repeat("a", 1024), true},
		{"too long", strings.Repeat("a", 1025), false},
		{"empty", "", false},
		{"NUL", "a\x00b", false},
		{"invalid UTF-8", "a\xffb", false},
		{"overlong UTF-8", "\xc0\xaf", false},
	}
	for _, tt := range tests {
		err := validateKey(tt.key)
		if (err == nil) != tt.ok || err != nil && !errors.Is(err, errInvalidKey) {
			t.Errorf("%s: validateKey = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}

func TestRouteURIAndURL(t *testing.T) {
	endpoint, _ := url.Parse("https://s3.eu-west-1.amazonaws.com")
	routes := buildRoutes([]routeSpec{{"/", "media", ""}, {"/ads/", "my.dotted.bucket", "pre roll/"}}, endpoint, false, false)
	virtual, path := routes[1], routes[0] // longest prefix first
	if got := virtual.uri("a b/c+d.mp4"); got != "/a%20b/c%2Bd.mp4" {
		t.Errorf("virtual-hosted uri = %q", got)
	}
	if got := path.uri("x.mp4"); got != "/my.dotted.bucket/pre%20roll/x.mp4" {
		t.Errorf("path-style uri with key prefix = %q", got)
	}
	u := upstreamURL("https", virtual.host, virtual.uri("k"), "versionId=a%2Fb")
	if got := u.RequestURI(); u.Host != virtual.host || got != "/k?versionId=a%2Fb" {
		t.Errorf("upstreamURL: host %q, request target %q", u.Host, got)
	}
	if got := upstreamURL("https", virtual.host, virtual.uri("/lead"), "").RequestURI(); got != "https://media.s3.eu-west-1.amazonaws.com//lead" {
		t.Errorf("a key starting with '/': request target %q, want the absolute form", got)
	}
}

func TestMapPath(t *testing.T) {
	endpoint, _ := url.Parse("http://127.0.0.1:9000")
	routes := buildRoutes([]routeSpec{{"/", "media", ""}, {"/avod/", "media", "ads/"}}, endpoint, false, false)
	tests := []struct {
		path, bucketPrefix, key string
		err                     error
	}{
		{"/v/1.mp4", "", "v/1.mp4", nil},
		{"/avod/x.mp4", "ads/", "x.mp4", nil},
		{"/", "", "", errNoKey},
		{"/avod/", "ads/", "", errNoKey},
		{"/v/../etc", "", "", errInvalidKey},
		{"/v/./x", "", "", errInvalidKey},
		{"/v/a\x01b", "", "", errInvalidKey},
		{"/" + strings.Repeat("k", maxKeyBytes+1), "", "", errInvalidKey},
	}
	for _, tt := range tests {
		rt, key, err := mapPath(routes, tt.path)
		if !errors.Is(err, tt.err) || err == nil && (rt.keyPrefix != tt.bucketPrefix || key != tt.key) {
			t.Errorf("mapPath(%.40q) = %q %q %v, want %q %q %v", tt.path, rt.keyPrefix, key, err, tt.bucketPrefix, tt.key, tt.err)
		}
	}
}

func TestMultiRegionAccessPointARN(t *testing.T) {
	for _, tt := range []struct {
		arn, alias string
		isARN, ok  bool
	}{
		{"media-bucket", "", false, true},
		{"arn:aws:s3::123456789012:accesspoint/mfzwi23gnjvgw.mrap", "mfzwi23gnjvgw.mrap", true, true},
		{"arn:aws:s3::12345678901:accesspoint/mfzwi23gnjvgw.mrap", "", true, false},           // an 11-digit account
		{"arn:aws:s3::123456789012:accesspoint/my-ap", "", true, false},                       // a regional access point
		{"arn:aws-cn:s3::123456789012:accesspoint/mfzwi23gnjvgw.mrap", "", true, false},       // no MRAP there
		{"arn:aws:s3::123456789012:accesspoint/Upper.mrap", "", true, false},                  // aliases are lower case
		{"arn:aws:s3:us-east-1:123456789012:accesspoint/mfzwi23gnjvgw.mrap", "", true, false}, // a region in the ARN
	} {
		alias, isARN, err := mrapAlias(tt.arn)
		if alias != tt.alias || isARN != tt.isARN || (err == nil) != tt.ok {
			t.Errorf("mrapAlias(%q) = %q %v %v", tt.arn, alias, isARN, err)
		}
		if err := checkBucket(tt.arn); (err == nil) != tt.ok {
			t.Errorf("checkBucket(%q) = %v", tt.arn, err)
		}
	}
	spec, err := parseRoute("/global/=arn:aws:s3::123456789012:accesspoint/mfzwi23gnjvgw.mrap/vod/")
	if err != nil || spec.bucket != "arn:aws:s3::123456789012:accesspoint/mfzwi23gnjvgw.mrap" || spec.keyPrefix != "vod/" {
		t.Errorf("parseRoute with an access point = %+v, %v", spec, err)
	}
	endpoint, _ := url.Parse("https://s3.us-east-1.amazonaws.com")
	rt := buildRoutes([]routeSpec{spec}, endpoint, false, false)[0]
	if rt.host != "mfzwi23gnjvgw.mrap.accesspoint.s3-global.amazonaws.com" || rt.uri("k.mp4") != "/vod/k.mp4" || rt.signer == nil {
		t.Errorf("access point route: host %q, uri %q, signer %v", rt.host, rt.uri("k.mp4"), rt.signer)
	}
	private, _ := url.Parse("https://mrap.vpce.example:8443")
	if rt := buildRoutes([]routeSpec{spec}, private, false, true)[0]; rt.host != "mrap.vpce.example:8443" || rt.uri("k.mp4") != "/vod/k.mp4" {
		t.Errorf("access point behind -endpoint: host %q, uri %q", rt.host, rt.uri("k.mp4"))
	}
}

// TestReplicaInTheRegionUsesTheEndpoint: a replica in -region is reached
// at -endpoint (a VPC endpoint serves the region), unless
// -region-endpoint names the region; one in another region at its own.
func TestReplicaInTheRegionUsesTheEndpoint(t *testing.T) {
	for _, tt := range []struct {
		name string
		args []string
		host string
	}{
		{"same region: -endpoint", []string{"-endpoint", "http://10.0.0.5:9000", "-replica", "media=media-copy@us-east-1"}, "10.0.0.5:9000"},
		{"same region, -region-endpoint wins", []string{"-endpoint", "http://10.0.0.5:9000", "-replica", "media=media-copy@us-east-1",
			"-region-endpoint", "us-east-1=http://10.0.0.6:9000"}, "10.0.0.6:9000"},
		{"another region: its own", []string{"-endpoint", "http://10.0.0.5:9000", "-replica", "media=media-copy@us-west-2"}, "media-copy.s3.us-west-2.amazonaws.com"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testExpressConfig(t, append([]string{"-bucket", "media"}, tt.args...)...)
			routes := newRoutes(cfg)
			if got := routes[0].replicas[0].host; got != tt.host {
				t.Errorf("the replica is reached at %s, want %s", got, tt.host)
			}
		})
	}
}

// TestCheckClientKey: control characters are refused in all three ranges
// (C0, DEL, C1), and the characters just past them are keys like others.
func TestCheckClientKey(t *testing.T) {
	tests := []struct {
		name, key string
		ok        bool
	}{
		{"plain", "videos/a.mp4", true},
		{"space", "a b.mp4", true},
		{"tilde", "a~b", true},
		{"no-break space U+00A0", "a\u00a0b", true},
		{"latin U+00E9", "caf\u00e9.mp4", true},
		{"C0 line feed", "a\nb", false},
		{"C0 unit separator", "a\x1fb", false},
		{"DEL", "a\x7fb", false},
		{"C1 first U+0080", "a\u0080b", false},
		{"C1 NEL U+0085", "a\u0085b", false},
		{"C1 CSI U+009B", "a\u009b31m", false},
		{"C1 last U+009F", "a\u009fb", false},
		{"dot-dot", "a/../b", false},
		{"invalid UTF-8", "a\xffb", false},
	}
	for _, tt := range tests {
		err := checkClientKey(tt.key)
		if (err == nil) != tt.ok || err != nil && !errors.Is(err, errInvalidKey) {
			t.Errorf("%s: checkClientKey(%q) = %v, want ok=%v", tt.name, tt.key, err, tt.ok)
		}
	}
	if err := checkClientKey("a\u0085b"); err == nil || !strings.Contains(err.Error(), "U+0085 at byte 1") {
		t.Errorf("checkClientKey(NEL) = %v, want it to name U+0085 at byte 1", err)
	}
}
