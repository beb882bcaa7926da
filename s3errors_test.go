package main

// What S3's answers mean: the code and region read from an error body
// (bounded, plain words only), retryable statuses, dead credentials, region
// hints.

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

func TestReadS3Error(t *testing.T) {
	answer := func(status int, h http.Header, body string) *http.Response {
		if h == nil {
			h = http.Header{}
		}
		return &http.Response{StatusCode: status, Header: h, Body: io.NopCloser(strings.NewReader(body))}
	}
	tests := []struct {
		name string
		resp *http.Response
		want s3ErrorDetails
	}{
		{"code", answer(404, nil, "<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message></Error>"), s3ErrorDetails{code: "NoSuchKey"}},
		{"region in the body", answer(400, nil, "<Error><Code>AuthorizationHeaderMalformed</Code><Region>eu-west-1</Region></Error>"),
			s3ErrorDetails{code: "AuthorizationHeaderMalformed", region: "eu-west-1"}},
		{"region header wins", answer(301, http.Header{"X-Amz-Bucket-Region": {"ap-south-1"}}, "<Error><Code>PermanentRedirect</Code><Region>x</Region></Error>"),
			s3ErrorDetails{code: "PermanentRedirect", region: "ap-south-1"}},
		{"no body (HEAD)", answer(403, nil, ""), s3ErrorDetails{}},
		{"a code that is no plain word", answer(403, nil, "<Error><Code>Evil|ms#\n</Code></Error>"), s3ErrorDetails{}},
		{"a code past the read limit", answer(500, nil, strings.Repeat(" ", maxErrorBodyBytes)+"<Code>InternalError</Code>"), s3ErrorDetails{}},
		{"success is no error", answer(200, nil, "<Code>NoSuchKey</Code>"), s3ErrorDetails{}},
	}
	for _, tt := range tests {
		closed := &closeRecorder{Reader: tt.resp.Body}
		tt.resp.Body = closed
		if got := readS3Error(tt.resp); got != tt.want {
			t.Errorf("%s: %+v, want %+v", tt.name, got, tt.want)
		}
		if !closed.closed {
			t.Errorf("%s: the body was not closed", tt.name)
		}
	}
}

// closeRecorder notes that a body was closed.
type closeRecorder struct {
	io.Reader
	closed bool
}

func (c *closeRecorder) Close() error { c.closed = true; return nil }

func TestS3AnswerClasses(t *testing.T) {
	for status, want := range map[int]bool{500: true, 502: true, 503: true, 504: true, 501: false, 400: false, 403: false, 404: false, 429: false, 200: false} {
		if retryableStatus(status) != want {
			t.Errorf("retryableStatus(%d) = %v", status, !want)
		}
	}
	for code, want := range map[string]bool{"ExpiredToken": true, "InvalidToken": true, "TokenRefreshRequired": true, "InvalidAccessKeyId": true,
		"SignatureDoesNotMatch": false, "AccessDenied": false, "": false} {
		if credentialsRejected(code) != want {
			t.Errorf("credentialsRejected(%q) = %v", code, !want)
		}
	}
}

func TestRegionHint(t *testing.T) {
	tests := []struct {
		status int
		d      s3ErrorDetails
		want   string // a part of the hint; "" for none
	}{
		{400, s3ErrorDetails{code: "AuthorizationHeaderMalformed", region: "eu-west-1"}, "set -region eu-west-1"},
		{400, s3ErrorDetails{code: "AuthorizationHeaderMalformed"}, "-region is not the bucket's region"},
		{301, s3ErrorDetails{}, "or -endpoint is wrong"},
		{307, s3ErrorDetails{region: "us-west-2"}, "set -region us-west-2"},
		{404, s3ErrorDetails{code: "NoSuchKey"}, ""},
		{403, s3ErrorDetails{code: "AccessDenied", region: "x"}, ""},
	}
	for _, tt := range tests {
		got := regionHint(tt.status, tt.d)
		if tt.want == "" && got != "" || tt.want != "" && !strings.Contains(got, tt.want) {
			t.Errorf("regionHint(%d, %+v) = %q, want %q", tt.status, tt.d, got, tt.want)
		}
	}
}
