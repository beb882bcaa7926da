package main

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// TestAnswerFor is the one mapping from an error to the client's status,
// code and message, row by row.
func TestAnswerFor(t *testing.T) {
	tests := []struct {
		name    string
		err     error
		cutting bool
		status  int
		code    string
	}{
		{"S3's 404", &s3Refusal{404, s3ErrorDetails{code: "NoSuchKey"}}, false, 404, "NoSuchKey"},
		{"S3's 404 to a HEAD, no code", &s3Refusal{404, s3ErrorDetails{}}, false, 404, "NoSuchKey"},
		{"S3's 403", &s3Refusal{403, s3ErrorDetails{code: "AccessDenied"}}, false, 403, "AccessDenied"},
		{"S3's 412", &s3Refusal{412, s3ErrorDetails{code: "PreconditionFailed"}}, false, 412, "PreconditionFailed"},
		{"S3's 416", &s3Refusal{416, s3ErrorDetails{code: "InvalidRange"}}, false, 416, "InvalidRange"},
		{"S3's 503 after the retries", &s3Refusal{503, s3ErrorDetails{code: "SlowDown"}}, false, 503, "SlowDown"},
		{"S3's redirect: the bucket is elsewhere", &s3Refusal{301, s3ErrorDetails{code: "PermanentRedirect", region: "us-west-2"}}, false, 502, "InternalError"},
		{"S3's 307 without a code", &s3Refusal{307, s3ErrorDetails{}}, false, 502, "InternalError"},
		{"an unknown code passes", &s3Refusal{409, s3ErrorDetails{code: "SomethingNew"}}, false, 409, "SomethingNew"},
		{"a method", badRequest(fmt.Errorf("%w: %q", errMethodNotAllowed, "PUT")), false, 405, "MethodNotAllowed"},
		{"a header block too large", badRequest(errHeaderTooLarge), false, 431, "RequestHeaderSectionTooLarge"},
		{"a listing", badRequest(errNoKey), false, 404, "NoSuchKey"},
		{"a bad key", badRequest(fmt.Errorf("%w: dot segment", errInvalidKey)), false, 400, "InvalidArgument"},
		{"a bad query", badRequest(errBadQuery), false, 400, "InvalidArgument"},
		{"a bad header", badRequest(errBadRequestHeader), false, 400, "InvalidArgument"},
		{"no credentials", &proxyError{kind: kindCredentials, err: errors.New("IMDS unreachable")}, false, 503, "ServiceUnavailable"},
		{"a timeout", &proxyError{kind: kindTimeout, err: errors.New("awaiting headers")}, false, 504, "GatewayTimeout"},
		{"refused", &proxyError{kind: kindConnect, err: errors.New("refused")}, false, 502, "BadGateway"},
		{"reset", &proxyError{kind: kindTransport, err: errors.New("reset")}, false, 502, "BadGateway"},
		{"anything else", errors.New("surprise"), false, 502, "InternalError"},
		{"the client left", clientGone(context.Canceled), false, statusClientGone, ""},
		{"cut at shutdown", clientGone(context.Canceled), true, 503, "ServiceUnavailable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := answerFor(tt.err, tt.cutting, 42)
			if a.status != tt.status || a.code != tt.code {
				t.Errorf("answerFor = %d %q, want %d %q", a.status, a.code, tt.status, tt.code)
			}
			if tt.code != "" && a.message == "" {
				t.Error("no message")
			}
			if a.cause == nil {
				t.Error("no cause for the log line")
			}
		})
	}
	if a := answerFor(clientGone(context.Canceled), true, 42); !strings.Contains(a.cause.Error(), "cut at shutdown after 42 bytes") {
		t.Errorf("a cut logs %q", a.cause)
	}
}

// s3ErrorDocument is what an S3 client reads of an error body.
type s3ErrorDocument struct {
	Code, Message, RequestId, HostId, StringToSign, CanonicalRequest string
}

// TestErrorBodiesAsS3ClientsReadThem: every error a GET gets is an
// S3-shaped XML document whose Code an S3 client branches on (botocore
// reads Error.Code), carrying S3's code for S3's answers and none of S3's
// request IDs or signing details, which can hold the session token; a HEAD
// gets the status and no body.
func TestErrorBodiesAsS3ClientsReadThem(t *testing.T) {
	tp := newTestProxy(t)
	tp.s3.put("v.mp4", []byte("0123456789"))
	tp.s3.fault = func(w http.ResponseWriter, r *http.Request, n int) bool {
		if !strings.HasSuffix(r.URL.Path, "/signed") {
			return false
		}
		w.Header().Set("Content-Type", "application/xml")
		w.WriteHeader(http.StatusForbidden)
		fmt.Fprintf(w, "<Error><Code>SignatureDoesNotMatch</Code><Message>no</Message><StringToSign>AWS4-HMAC-SHA256 %s</StringToSign><CanonicalRequest>x-amz-security-token:%s</CanonicalRequest><RequestId>REQ</RequestId><HostId>HOST</HostId></Error>", testToken, testToken)
		return true
	}
	for _, tt := range []struct {
		name, method, path string
		header             http.Header
		status             int
		code               string
	}{
		{"missing key", "GET", "/nope.mp4", nil, 404, "NoSuchKey"},
		{"stale If-Match", "GET", "/v.mp4", http.Header{"If-Match": {`"stale"`}}, 412, "PreconditionFailed"},
		{"range past the end", "GET", "/v.mp4", http.Header{"Range": {"bytes=100-"}}, 416, "InvalidRange"},
		{"S3 refused the signature", "GET", "/signed", nil, 403, "SignatureDoesNotMatch"},
		{"a write", "PUT", "/v.mp4", nil, 405, "MethodNotAllowed"},
		{"a listing", "GET", "/", nil, 404, "NoSuchKey"},
		{"a dot segment", "GET", "/a/%2e%2e/b", nil, 400, "InvalidArgument"},
		{"HEAD of a missing key", "HEAD", "/nope.mp4", nil, 404, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := get(t, tt.method, tp.url+tt.path, tt.header)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tt.status)
			}
			if tt.method == "HEAD" {
				if len(body) != 0 {
					t.Errorf("a HEAD got a body: %q", body)
				}
				return
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/xml" {
				t.Errorf("Content-Type %q, want application/xml", ct)
			}
			var doc s3ErrorDocument
			if err := xml.Unmarshal(body, &doc); err != nil {
				t.Fatalf("not XML: %v\n%s", err, body)
			}
			if doc.Code != tt.code || doc.Message == "" {
				t.Errorf("Code %q Message %q, want Code %q", doc.Code, doc.Message, tt.code)
			}
			if doc.RequestId != "" || doc.HostId != "" || doc.StringToSign != "" || doc.CanonicalRequest != "" || strings.Contains(string(body), testToken) {
				t.Errorf("S3's own error details reached the client: %s", body)
			}
		})
	}
}
