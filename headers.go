package main

// What crosses s3-helper in each direction. Everything is an allowlist:
// a header or parameter not named here never passes.

import (
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
)

// forwardedRequestHeaders are the client headers sent on to S3, unsigned
// (S3 allows unsigned Range and conditional headers). Everything else stays
// behind: nginx-vod-module passes the player's Authorization, Cookie and
// X-Forwarded-For upstream, and a client X-Amz-* header would either be
// rejected by S3 as unsigned or change what our signature means.
var forwardedRequestHeaders = [...]string{
	"Range",               // nginx-vod-module reads mp4s in ranges
	"If-Match",            // conditional GET; also how a resume pins the object version
	"If-None-Match",       // revalidation: 304
	"If-Modified-Since",   // revalidation: 304
	"If-Unmodified-Since", // 412 when the object changed
}

// singleValuedRequestHeaders may appear at most once: two Range headers have
// no defined meaning (RFC 9110 §14.2), and S3 would see only one of them.
var singleValuedRequestHeaders = [...]string{"Range", "If-Modified-Since", "If-Unmodified-Since"}

// returnedResponseHeaders are the S3 response headers the client sees.
// Every x-amz-* header (request IDs, storage class, server-side encryption,
// user metadata), Server and hop-by-hop headers stay behind.
var returnedResponseHeaders = [...]string{
	"Content-Length",      // nginx checks it against the body
	"Content-Range",       // 206: which bytes these are
	"Content-Type",        // the object's type
	"Etag",                // canonical form of ETag; caches and resumes use it
	"Last-Modified",       // revalidation
	"Accept-Ranges",       // tells clients ranges work
	"Cache-Control",       // object metadata set by the uploader
	"Content-Encoding",    // object metadata set by the uploader
	"Content-Disposition", // object metadata, or response-content-disposition
	"Content-Language",    // object metadata
	"Expires",             // object metadata
}

// allowedQueryParams are the GetObject parameters that pass
// (https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObject.html). Any
// other parameter is dropped, so subresources (?acl, ?tagging, ?list-type,
// ?uploads, ?torrent …) are unreachable.
var allowedQueryParams = [...]string{
	"versionId",
	"partNumber",
	"response-content-type",
	"response-content-disposition",
	"response-content-encoding",
	"response-content-language",
	"response-cache-control",
	"response-expires",
}

// maxRequestHeaderBytes bounds a request's header block (request line and
// header fields as sent); larger ones get 431. nginx's default
// large_client_header_buffers (4 × 8 KiB) stays well inside it.
const maxRequestHeaderBytes = 32 << 10

// errHeaderTooLarge is the cause of a 431.
var errHeaderTooLarge = errors.New("request header block too large")

// requestHeaderBytes is the size of r's request line and header fields as
// they were sent, near enough: each field is "Name: value\r\n".
func requestHeaderBytes(r *http.Request) int {
	n := len(r.Method) + len(r.RequestURI) + len(r.Proto) + 4
	for name, values := range r.Header {
		for _, v := range values {
			n += len(name) + len(v) + 4
		}
	}
	return n
}

// errBadRequestHeader is wrapped when a client header cannot be forwarded.
var errBadRequestHeader = errors.New("invalid request header")

// errBadQuery is wrapped when the query string cannot be parsed.
var errBadQuery = errors.New("invalid query string")

// checkRequestHeaders rejects client headers that cannot be forwarded as
// they are.
func checkRequestHeaders(src http.Header) error {
	for _, name := range singleValuedRequestHeaders {
		if len(src[name]) > 1 {
			return fmt.Errorf("%w: %d %s headers", errBadRequestHeader, len(src[name]), name)
		}
	}
	return nil
}

// copyRequestHeaders copies the forwarded client headers from src (checked
// by checkRequestHeaders) to dst. Headers the client lists in Connection
// are hop-by-hop (RFC 9110 §7.6.1) and are not forwarded. src is not
// modified.
func copyRequestHeaders(dst, src http.Header) {
	conn := src["Connection"]
	for _, name := range forwardedRequestHeaders {
		vs := src[name]
		if len(vs) == 0 || listedInConnection(conn, name) {
			continue
		}
		if len(vs) > 1 { // If-Match and If-None-Match are lists (RFC 9110 §5.3)
			dst[name] = []string{strings.Join(vs, ", ")}
			continue
		}
		dst[name] = vs
	}
}

// copyResponseHeaders copies the returned S3 headers from src to dst.
func copyResponseHeaders(dst, src http.Header) {
	conn := src["Connection"]
	for _, name := range returnedResponseHeaders {
		if vs := src[name]; len(vs) > 0 && !listedInConnection(conn, name) {
			dst[name] = vs
		}
	}
}

// listedInConnection reports whether the Connection header values name the
// canonical header name.
func listedInConnection(conn []string, name string) bool {
	for _, v := range conn {
		for f := range strings.SplitSeq(v, ",") {
			if textproto.CanonicalMIMEHeaderKey(strings.TrimSpace(f)) == name {
				return true
			}
		}
	}
	return false
}

// maxLoggedQueryBytes bounds a query parameter's name in an error.
const maxLoggedQueryBytes = 64

// filterQuery parses a raw query string ('+' is a space, as browsers and
// nginx encode it) and keeps the GetObject parameters. dropped counts the
// rest.
func filterQuery(raw string) (kept url.Values, dropped int, err error) {
	if raw == "" {
		return nil, 0, nil
	}
	for part := range strings.SplitSeq(raw, "&") {
		if part == "" {
			continue
		}
		rawName, rawValue, _ := strings.Cut(part, "=")
		name, err := url.QueryUnescape(rawName)
		if err != nil {
			return nil, 0, fmt.Errorf("%w: parameter %q: %w", errBadQuery, clip(rawName, maxLoggedQueryBytes), err)
		}
		if !isAllowedQueryParam(name) {
			dropped++
			continue
		}
		value, err := url.QueryUnescape(rawValue)
		if err != nil {
			return nil, 0, fmt.Errorf("%w: value of %s: %w", errBadQuery, name, err)
		}
		if kept == nil {
			kept = url.Values{}
		}
		kept.Add(name, value)
	}
	return kept, dropped, nil
}

// isAllowedQueryParam reports whether a GetObject parameter may pass.
func isAllowedQueryParam(name string) bool {
	for _, p := range allowedQueryParams {
		if p == name {
			return true
		}
	}
	return false
}
