package main

// What crosses s3-helper in each direction. Everything is an allowlist:
// a header or parameter not named here never passes.

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
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
var singleValuedRequestHeaders = [...]string{"Range", "If-Range", "If-Modified-Since", "If-Unmodified-Since"}

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
		if len(vs) == 0 || headerHasToken(conn, name) {
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
		if vs := src[name]; len(vs) > 0 && !headerHasToken(conn, name) {
			dst[name] = vs
		}
	}
}

// headerHasToken reports whether a comma-separated header's values
// (Connection's, in either direction) hold token, in any case.
func headerHasToken(values []string, token string) bool {
	for _, v := range values {
		for f := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.Trim(f, " \t"), token) {
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

// ifRange is the client's If-Range (RFC 9110 §13.1.5). S3's GetObject does
// not evaluate it, and passing Range on without it would give a client
// holding a stale validator a 206 of the new object where the whole of it
// (200) is due; so s3-helper asks S3 for the range on the condition that
// the validator still holds, and for the whole object when it does not.
// The zero value is no If-Range.
type ifRange struct {
	// etag is a strong entity tag, or date an HTTP-date; at most one is set.
	etag string
	date time.Time
}

// parseIfRange reads the client's If-Range; whole reports a Range to
// ignore at once, since the validator can never match (a weak entity tag,
// or a value that is neither a tag nor a date). If-Range without one Range
// is ignored, as the RFC requires.
func parseIfRange(h http.Header) (ir ifRange, whole bool) {
	vs := h["If-Range"]
	if len(vs) != 1 || len(h["Range"]) != 1 {
		return ifRange{}, false
	}
	v := strings.TrimSpace(vs[0])
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		return ifRange{etag: v}, false
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return ifRange{}, true // W/"…" included: a weak tag never matches
	}
	return ifRange{date: t}, false
}

// condition adds to h, the upstream request's header, the precondition
// under which S3 answers the range: If-Match for a tag, If-Unmodified-Since
// for a date; see ours.
func (ir ifRange) condition(h http.Header) {
	switch {
	case !ir.ours(h):
	case ir.etag != "":
		h["If-Match"] = []string{ir.etag}
	case !ir.date.IsZero():
		h["If-Unmodified-Since"] = []string{ir.date.UTC().Format(http.TimeFormat)}
	}
}

// ours reports whether s3-helper adds If-Range's precondition to a request
// with the client's header h: only when the client sent neither If-Match
// nor If-Unmodified-Since. S3 (RFC 9110 §13.2.2) ignores
// If-Unmodified-Since beside If-Match, so either one of ours would switch
// off, or be switched off by, the client's own; then the client's decides
// a 412, and holds checks a 206's validator instead.
func (ir ifRange) ours(h http.Header) bool {
	return (ir.etag != "" || !ir.date.IsZero()) && len(h["If-Match"]) == 0 && len(h["If-Unmodified-Since"]) == 0
}

// holds reports whether S3's answer to the ranged request passes on: the
// validator matched. status is S3's; header is its response's, nil for an
// error answer. A 412 to the precondition ours added means the validator
// did not match; so does a 206 whose ETag, or Last-Modified, is not
// exactly the validator (If-Unmodified-Since also passes an older object).
func (ir ifRange) holds(client http.Header, status int, header http.Header) bool {
	switch {
	case ir.etag == "" && ir.date.IsZero():
		return true
	case status == http.StatusPreconditionFailed:
		return !ir.ours(client) // the client's own condition failed: its 412
	case status != http.StatusPartialContent:
		return true
	case ir.etag != "":
		return header.Get("Etag") == ir.etag
	}
	modified, err := http.ParseTime(header.Get("Last-Modified"))
	return err == nil && modified.Equal(ir.date)
}
