package main

// What crosses in each direction, function by function: the allowlists,
// Connection-listed headers, repeated headers, the query filter, the size
// of a header block.

import (
	"errors"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"testing"
)

func TestCopyRequestHeaders(t *testing.T) {
	tests := []struct {
		name     string
		src, out http.Header
	}{
		{"only the allowlist passes",
			http.Header{"Range": {"bytes=0-9"}, "Authorization": {"Bearer x"}, "Cookie": {"a=b"}, "X-Amz-Date": {"20260101T000000Z"},
				"X-Forwarded-For": {"10.0.0.1"}, "If-None-Match": {`"e"`}, "User-Agent": {"Player"}},
			http.Header{"Range": {"bytes=0-9"}, "If-None-Match": {`"e"`}}},
		{"a header the client lists in Connection is hop-by-hop",
			http.Header{"Range": {"bytes=0-9"}, "If-Match": {`"e"`}, "Connection": {"keep-alive, if-match"}},
			http.Header{"Range": {"bytes=0-9"}}},
		{"list headers are joined",
			http.Header{"If-None-Match": {`"a"`, `"b"`}},
			http.Header{"If-None-Match": {`"a", "b"`}}},
		{"nothing to forward", http.Header{"Accept": {"*/*"}}, http.Header{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := tt.src.Clone()
			out := http.Header{}
			copyRequestHeaders(out, tt.src)
			if !reflect.DeepEqual(out, tt.out) {
				t.Errorf("forwarded %v, want %v", out, tt.out)
			}
			if !reflect.DeepEqual(tt.src, before) {
				t.Errorf("the client's header was changed: %v", tt.src)
			}
		})
	}
}

func TestCopyResponseHeaders(t *testing.T) {
	src := http.Header{"Content-Length": {"10"}, "Content-Range": {"bytes 0-9/100"}, "Etag": {`"e"`}, "Content-Type": {"video/mp4"},
		"X-Amz-Request-Id": {"r"}, "X-Amz-Id-2": {"i"}, "X-Amz-Meta-Owner": {"o"}, "Server": {"AmazonS3"},
		"X-Amz-Server-Side-Encryption": {"aws:kms"}, "Cache-Control": {"max-age=60"}, "Connection": {"Cache-Control"}}
	out := http.Header{}
	copyResponseHeaders(out, src)
	want := http.Header{"Content-Length": {"10"}, "Content-Range": {"bytes 0-9/100"}, "Etag": {`"e"`}, "Content-Type": {"video/mp4"}}
	if !reflect.DeepEqual(out, want) {
		t.Errorf("returned %v, want %v", out, want)
	}
}

func TestCheckRequestHeaders(t *testing.T) {
	tests := []struct {
		name string
		h    http.Header
		ok   bool
	}{
		{"one Range", http.Header{"Range": {"bytes=0-1"}}, true},
		{"two Range headers", http.Header{"Range": {"bytes=0-1", "bytes=5-6"}}, false},
		{"two If-Modified-Since", http.Header{"If-Modified-Since": {"a", "b"}}, false},
		{"two If-None-Match is a list", http.Header{"If-None-Match": {`"a"`, `"b"`}}, true},
	}
	for _, tt := range tests {
		err := checkRequestHeaders(tt.h)
		if (err == nil) != tt.ok || err != nil && !errors.Is(err, errBadRequestHeader) {
			t.Errorf("%s: %v", tt.name, err)
		}
	}
}

func TestFilterQuery(t *testing.T) {
	tests := []struct {
		raw     string
		kept    url.Values
		dropped int
		bad     bool
	}{
		{"", nil, 0, false},
		{"versionId=abc", url.Values{"versionId": {"abc"}}, 0, false},
		{"acl", nil, 1, false},
		{"X-Amz-Signature=x&versionId=a%2Fb&list-type=2", url.Values{"versionId": {"a/b"}}, 2, false},
		{"response-content-disposition=attachment%3B+filename%3Dx.mp4", url.Values{"response-content-disposition": {"attachment; filename=x.mp4"}}, 0, false},
		{"&&versionId=1&", url.Values{"versionId": {"1"}}, 0, false},
		{"%zz=1", nil, 0, true},
		{"versionId=%zz", nil, 0, true},
		{"unknown=%zz", nil, 1, false}, // a dropped parameter's value is never parsed
	}
	for _, tt := range tests {
		kept, dropped, err := filterQuery(tt.raw)
		if (err != nil) != tt.bad || err != nil && !errors.Is(err, errBadQuery) {
			t.Errorf("filterQuery(%q) error %v, want bad=%v", tt.raw, err, tt.bad)
			continue
		}
		if !tt.bad && (!reflect.DeepEqual(kept, tt.kept) || dropped != tt.dropped) {
			t.Errorf("filterQuery(%q) = %v, %d dropped; want %v, %d", tt.raw, kept, dropped, tt.kept, tt.dropped)
		}
	}
	_, _, err := filterQuery(strings.Repeat("A", 30000) + "%zz=1")
	if err == nil || len(err.Error()) > 200 {
		t.Errorf("a 30,000-byte parameter name: error of %d bytes, want a bounded one", len(err.Error()))
	}
}

func TestRequestHeaderBytes(t *testing.T) {
	r, _ := http.NewRequest("GET", "http://x/k", nil)
	r.RequestURI, r.Proto = "/k", "HTTP/1.1"
	r.Header = http.Header{"Range": {"bytes=0-1"}}
	// "GET /k HTTP/1.1\r\n" is 17 bytes, "Range: bytes=0-1\r\n" 18.
	if n := requestHeaderBytes(r); n != 17+18 {
		t.Errorf("requestHeaderBytes = %d, want 35", n)
	}
	r.Header["X-Big"] = []string{strings.Repeat("b", maxRequestHeaderBytes)}
	if n := requestHeaderBytes(r); n <= maxRequestHeaderBytes {
		t.Errorf("requestHeaderBytes with a 32 KiB field = %d, want over the limit", n)
	}
}
