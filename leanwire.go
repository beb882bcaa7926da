package main

// HTTP/1.1's wire format as the lean client needs it: a request's head
// written, a response's head and a chunk-size line parsed, strictly.

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
)

// maxRequestHeadBytes bounds the request line and header fields sent.
const maxRequestHeadBytes = 32 << 10

// errMalformedResponse is a response that breaks HTTP/1.1's rules.
var errMalformedResponse = errors.New("malformed HTTP response")

// parseChunkSize reads a chunk-size line: hex digits, then optional
// extensions after ';', which are ignored.
func parseChunkSize(line []byte) (int64, error) {
	digits := line
	if i := bytes.IndexByte(line, ';'); i >= 0 {
		digits = bytes.TrimRight(line[:i], " \t")
		if !validFieldValue(line[i+1:]) {
			return 0, fmt.Errorf("%w: chunk extension %q", errMalformedResponse, clip(string(line), 64))
		}
	}
	if len(digits) == 0 || len(digits) > 15 {
		return 0, fmt.Errorf("%w: chunk size %q", errMalformedResponse, clip(string(line), 64))
	}
	var n int64
	for _, d := range digits {
		switch {
		case '0' <= d && d <= '9':
			d -= '0'
		case 'a' <= d && d <= 'f':
			d -= 'a' - 10
		case 'A' <= d && d <= 'F':
			d -= 'A' - 10
		default:
			return 0, fmt.Errorf("%w: chunk size %q", errMalformedResponse, clip(string(line), 64))
		}
		n = n<<4 | int64(d)
	}
	return n, nil
}

// responseHead is a response's status line and header fields, parsed.
type responseHead struct {
	status     int
	statusText string // "206 Partial Content"
	proto      string // "HTTP/1.1"
	minor      int
	header     http.Header
	// contentLength is -1 when the head gives none.
	contentLength int64
	chunked       bool
	// close is set when the connection must close after the response.
	close bool
}

// parse reads a head: the status line and header fields, each ending in
// CRLF, and the empty line. Field names are put in canonical form in
// place. Transfer-Encoding moves out of the header into chunked; a
// Content-Length given twice must agree; both together are refused (RFC
// 9112 §6.3: they "ought to be handled as an error").
func (h *responseHead) parse(block []byte, slab []string) error {
	lines := bytes.Count(block, []byte("\r\n")) - 2 // header fields
	if lines < 0 {
		return fmt.Errorf("%w: no status line", errMalformedResponse)
	}
	s := string(block) // one allocation; every field is a part of it
	eol := strings.Index(s, "\r\n")
	status := s[:eol]
	if len(status) < 12 || !strings.HasPrefix(status, "HTTP/1.") || status[8] != ' ' || status[7] != '0' && status[7] != '1' ||
		len(status) > 12 && status[12] != ' ' {
		return fmt.Errorf("%w: status line %q", errMalformedResponse, clip(status, 64))
	}
	code := 0
	for i := 9; i < 12; i++ {
		if d := status[i]; d < '0' || d > '9' {
			return fmt.Errorf("%w: status line %q", errMalformedResponse, clip(status, 64))
		}
		code = code*10 + int(status[i]-'0')
	}
	if code < 100 {
		return fmt.Errorf("%w: status line %q", errMalformedResponse, clip(status, 64))
	}
	if !validFieldValue(status[9:]) {
		return fmt.Errorf("%w: status line %q", errMalformedResponse, clip(status, 64))
	}
	h.status, h.statusText, h.proto, h.minor = code, status[9:], status[:8], int(status[7]-'0')
	h.header = make(http.Header, lines)
	h.contentLength = -1
	values := slab // one backing array for every value
	if len(values) < lines {
		values = make([]string, lines)
	}
	var te, connection []string
	rest := s[eol+2 : len(s)-2]
	pos := eol + 2 // where rest starts in block
	for rest != "" {
		eol := strings.Index(rest, "\r\n")
		line := rest[:eol]
		colon := strings.IndexByte(line, ':')
		if colon <= 0 || !isToken(line[:colon]) {
			return fmt.Errorf("%w: header line %q", errMalformedResponse, clip(line, 64))
		}
		value := strings.Trim(line[colon+1:], " \t")
		if !validFieldValue(value) {
			return fmt.Errorf("%w: header field %q", errMalformedResponse, clip(line[:colon], 64))
		}
		key := canonicalKey(block[pos:pos+colon], s[pos:pos+colon])
		switch key {
		case "Transfer-Encoding":
			te = append(te, value)
			rest, pos = rest[eol+2:], pos+eol+2
			continue
		case "Connection":
			connection = append(connection, value)
		}
		values[0] = value
		if vs := h.header[key]; vs != nil {
			h.header[key] = append(vs, value)
		} else {
			h.header[key] = values[:1:1]
		}
		values = values[1:]
		rest, pos = rest[eol+2:], pos+eol+2
	}
	if h.minor == 0 {
		h.close = !headerHasToken(connection, "keep-alive") || headerHasToken(connection, "close")
	} else {
		h.close = headerHasToken(connection, "close")
	}
	if cls := h.header["Content-Length"]; len(cls) > 0 {
		n, err := parseContentLength(cls[0])
		if err != nil {
			return err
		}
		for _, v := range cls[1:] {
			if v != cls[0] {
				return fmt.Errorf("%w: Content-Length %q", errMalformedResponse, clip(strings.Join(cls, ", "), 64))
			}
		}
		h.contentLength = n
	}
	if len(te) > 0 {
		if len(te) > 1 || !strings.EqualFold(te[0], "chunked") || h.minor == 0 {
			return fmt.Errorf("%w: unsupported Transfer-Encoding %q", errMalformedResponse, clip(strings.Join(te, ", "), 64))
		}
		if h.contentLength >= 0 {
			return fmt.Errorf("%w: both Transfer-Encoding and Content-Length", errMalformedResponse)
		}
		h.chunked = true
	}
	return nil
}

// parseContentLength reads a Content-Length: decimal digits only.
func parseContentLength(v string) (int64, error) {
	if v == "" || len(v) > 18 {
		return 0, fmt.Errorf("%w: Content-Length %q", errMalformedResponse, clip(v, 64))
	}
	var n int64
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			return 0, fmt.Errorf("%w: Content-Length %q", errMalformedResponse, clip(v, 64))
		}
		n = n*10 + int64(v[i]-'0')
	}
	return n, nil
}

// commonResponseKeys are the header names S3 sends, interned so each
// response's header map shares them.
var commonResponseKeys = map[string]string{
	"Accept-Ranges": "Accept-Ranges", "Cache-Control": "Cache-Control", "Connection": "Connection",
	"Content-Disposition": "Content-Disposition", "Content-Encoding": "Content-Encoding",
	"Content-Language": "Content-Language", "Content-Length": "Content-Length", "Content-Range": "Content-Range",
	"Content-Type": "Content-Type", "Date": "Date", "Etag": "Etag", "Expires": "Expires", "Keep-Alive": "Keep-Alive",
	"Last-Modified": "Last-Modified", "Server": "Server", "Transfer-Encoding": "Transfer-Encoding",
	"X-Amz-Bucket-Region": "X-Amz-Bucket-Region", "X-Amz-Id-2": "X-Amz-Id-2", "X-Amz-Request-Id": "X-Amz-Request-Id",
	"X-Amz-Server-Side-Encryption": "X-Amz-Server-Side-Encryption", "X-Amz-Storage-Class": "X-Amz-Storage-Class",
	"X-Amz-Version-Id": "X-Amz-Version-Id",
}

// canonicalKey is the canonical form of the field name s, whose bytes in
// the buffer are b: a common name interned, s itself when it is canonical
// already; b is put in canonical form in place.
func canonicalKey(b []byte, s string) string {
	canonicalizeKey(b)
	if k, ok := commonResponseKeys[string(b)]; ok {
		return k
	}
	if string(b) == s {
		return s
	}
	return string(b)
}

// canonicalizeKey puts a header name in canonical form in place: a capital
// at the start and after each '-', lower case elsewhere.
func canonicalizeKey(b []byte) {
	upper := true
	for i, ch := range b {
		switch {
		case upper && 'a' <= ch && ch <= 'z':
			b[i] = ch - ('a' - 'A')
		case !upper && 'A' <= ch && ch <= 'Z':
			b[i] = ch + ('a' - 'A')
		}
		upper = ch == '-'
	}
}

// isToken reports whether b is an RFC 9110 token (a field name).
func isToken[T string | []byte](b T) bool {
	if len(b) == 0 {
		return false
	}
	for i := 0; i < len(b); i++ {
		switch ch := b[i]; {
		case 'a' <= ch && ch <= 'z', 'A' <= ch && ch <= 'Z', '0' <= ch && ch <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", ch) >= 0:
		default:
			return false
		}
	}
	return true
}

// validFieldValue reports whether b holds no control character but
// horizontal tab (RFC 9110 §5.5).
func validFieldValue[T string | []byte](b T) bool {
	for i := 0; i < len(b); i++ {
		if ch := b[i]; ch < ' ' && ch != '\t' || ch == 0x7f {
			return false
		}
	}
	return true
}

// appendRequestHead appends req's request line and header fields to b:
// the target as req.URL gives it (an opaque one as is), Host first, the
// other fields sorted by name. A target with a space or a control
// character, a name that is no token or a value with a control character
// (but tab) is refused: net/http refuses the same names and values.
func appendRequestHead(b []byte, req *http.Request) ([]byte, error) {
	u := req.URL
	b = append(append(b, req.Method...), ' ')
	target := len(b)
	switch {
	case u.Opaque != "" && strings.HasPrefix(u.Opaque, "//"):
		b = append(append(append(b, u.Scheme...), ':'), u.Opaque...)
	case u.Opaque != "":
		b = append(b, u.Opaque...)
	default:
		path := u.EscapedPath()
		if path == "" {
			path = "/"
		}
		b = append(b, path...)
	}
	if u.ForceQuery || u.RawQuery != "" {
		b = append(append(b, '?'), u.RawQuery...)
	}
	if !validFieldValue(b[target:]) || bytes.IndexByte(b[target:], ' ') >= 0 || bytes.IndexByte(b[target:], '\t') >= 0 {
		return nil, errors.New("lean client: a space or a control character in the request target")
	}
	host := req.Host
	if host == "" {
		host = u.Host
	}
	if !validFieldValue(host) || strings.ContainsAny(host, " \t/") {
		return nil, fmt.Errorf("lean client: invalid host %q", host)
	}
	b = append(append(append(b, " HTTP/1.1\r\nHost: "...), host...), "\r\n"...)
	var keysArray [24]string
	keys := keysArray[:0]
	for k := range req.Header {
		switch k {
		case "Host", "Content-Length", "Transfer-Encoding", "Trailer", "Connection":
			continue
		}
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if !isToken(k) {
			return nil, fmt.Errorf("lean client: invalid header field name %q", k)
		}
		for _, v := range req.Header[k] {
			if !validFieldValue(v) {
				return nil, fmt.Errorf("lean client: invalid header field value for %q", k)
			}
			b = append(append(append(append(b, k...), ": "...), v...), "\r\n"...)
		}
	}
	if req.Close {
		b = append(b, "Connection: close\r\n"...)
	}
	b = append(b, "\r\n"...)
	if len(b) > maxRequestHeadBytes {
		return nil, fmt.Errorf("lean client: request head of %d bytes, limit %d", len(b), maxRequestHeadBytes)
	}
	return b, nil
}
