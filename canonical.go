package main

// SigV4's canonical forms
// (https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html#create-canonical-request):
// URI and query encoding as S3 wants it (encoded once, '/' kept in paths,
// never normalised), and the whitespace trimming of header values.

import (
	"net/url"
	"strings"
)

// isUnreserved reports whether c is in RFC 3986's unreserved set, the only
// bytes SigV4 leaves unencoded.
func isUnreserved(c byte) bool {
	return 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' ||
		c == '-' || c == '_' || c == '.' || c == '~'
}

// appendURIEncoded appends s with every byte outside the unreserved set
// written as %XX in upper-case hex. With keepSlash, '/' stays literal (S3
// canonical URIs); without it '/' is %2F (query names and values). Unlike
// url.PathEscape it escapes $ & + : = @, and unlike url.QueryEscape it writes
// space as %20.
func appendURIEncoded(dst []byte, s string, keepSlash bool) []byte {
	const upperHex = "0123456789ABCDEF"
	for i := 0; i < len(s); i++ {
		c := s[i]
		if isUnreserved(c) || c == '/' && keepSlash {
			dst = append(dst, c)
			continue
		}
		dst = append(dst, '%', upperHex[c>>4], upperHex[c&15])
	}
	return dst
}

// canonicalURI returns the S3 canonical URI of an object key: "/" plus the
// key encoded exactly once, with no path normalisation ("." and ".." and "//"
// are literal parts of S3 keys). The same string is sent on the wire.
func canonicalURI(key string) string {
	b := make([]byte, 0, len(key)+1+len(key)/4)
	b = append(b, '/')
	return string(appendURIEncoded(b, key, true))
}

// queryParam is one encoded query parameter.
type queryParam struct {
	name, value string
}

// canonicalQuery encodes each name and value, sorts by encoded name and then
// by encoded value, and joins them as name=value with '&'. A parameter with
// no value is written "name=". The result is both the canonical query string
// and a valid wire query.
func canonicalQuery(params url.Values) string {
	if len(params) == 0 {
		return ""
	}
	var encoded []queryParam
	for name, values := range params {
		for _, value := range values {
			encoded = append(encoded, queryParam{
				name:  string(appendURIEncoded(nil, name, false)),
				value: string(appendURIEncoded(nil, value, false)),
			})
		}
	}
	// Insertion sort: GetObject queries have a handful of parameters.
	for i := 1; i < len(encoded); i++ {
		for j := i; j > 0 && queryLess(encoded[j], encoded[j-1]); j-- {
			encoded[j], encoded[j-1] = encoded[j-1], encoded[j]
		}
	}
	var b strings.Builder
	for i, p := range encoded {
		if i > 0 {
			b.WriteByte('&')
		}
		b.WriteString(p.name)
		b.WriteByte('=')
		b.WriteString(p.value)
	}
	return b.String()
}

// queryLess orders encoded parameters by name, then value.
func queryLess(a, b queryParam) bool {
	if a.name != b.name {
		return a.name < b.name
	}
	return a.value < b.value
}

// appendTrimmed appends v without leading and trailing whitespace and with
// inner runs of whitespace collapsed to one space (SigV4 "Trimall"; it
// applies inside quoted strings too, see the get-header-value-trim vector).
func appendTrimmed(dst []byte, v string) []byte {
	if !needsTrim(v) { // the usual case: one copy, no per-byte appends
		return append(dst, v...)
	}
	space, wrote := false, false
	for i := 0; i < len(v); i++ {
		c := v[i]
		if isSpace(c) {
			space = true
			continue
		}
		if space && wrote {
			dst = append(dst, ' ')
		}
		space, wrote = false, true
		dst = append(dst, c)
	}
	return dst
}

// needsTrim reports whether appendTrimmed would change v.
func needsTrim(v string) bool {
	if v == "" {
		return false
	}
	if isSpace(v[0]) || isSpace(v[len(v)-1]) {
		return true
	}
	for i := 1; i < len(v)-1; i++ {
		if c := v[i]; c <= ' ' && isSpace(c) && (c != ' ' || isSpace(v[i+1])) {
			return true
		}
	}
	return false
}

// isSpace reports the whitespace bytes SigV4 trims.
func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'
}
