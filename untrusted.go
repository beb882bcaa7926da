package main

// Text that comes from outside the process (a client's method, key or
// Range, an S3 error body, an STS or container endpoint's message, a
// metrics service's answer) is bounded here before it reaches a log line,
// an error or a metric label. Nothing here depends on another file.

import (
	"bytes"
	"strings"
)

// maxErrorTextBytes bounds a remote service's error message quoted in our
// errors.
const maxErrorTextBytes = 200

// clip bounds text that came from outside the process before it reaches a
// log line, marking the cut.
func clip(s string, maxBytes int) string {
	if len(s) <= maxBytes {
		return s
	}
	return s[:maxBytes] + "…"
}

// printable bounds text a remote service sent before it reaches an error or
// a log: at most maxErrorTextBytes, control characters replaced.
func printable(s string) string {
	s = clip(s, maxErrorTextBytes)
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, s)
}

// xmlWord returns the text of the first <tag> element when it is a plain
// word, or "".
func xmlWord(body []byte, tag string) string {
	_, rest, ok := bytes.Cut(body, []byte("<"+tag+">"))
	if !ok {
		return ""
	}
	word, _, ok := bytes.Cut(rest, []byte("</"+tag+">"))
	if !ok {
		return ""
	}
	return plainWord(word)
}

// plainWord returns w when it is 1 to 64 letters, digits or '-', else "".
func plainWord(w []byte) string {
	if len(w) == 0 || len(w) > 64 {
		return ""
	}
	for _, c := range w {
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return ""
		}
	}
	return string(w)
}
