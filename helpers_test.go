package main

// Helpers the tests share: parsing what arrives on the wire, independently
// of the code under test.

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// parseCanonicalQuery splits a raw query on '&' and '=' and percent-decodes
// each part without treating '+' as space.
func parseCanonicalQuery(raw string) (url.Values, error) {
	params := url.Values{}
	if raw == "" {
		return params, nil
	}
	for part := range strings.SplitSeq(raw, "&") {
		name, value, _ := strings.Cut(part, "=")
		n, err := percentDecode(name)
		if err != nil {
			return nil, err
		}
		v, err := percentDecode(value)
		if err != nil {
			return nil, err
		}
		params.Add(n, v)
	}
	return params, nil
}

// errBadEscape reports a '%' not followed by two hex digits.
var errBadEscape = errors.New("invalid percent-encoding")

// percentDecode decodes %XX sequences once and leaves every other byte,
// '+' included, as it is.
func percentDecode(s string) (string, error) {
	i := strings.IndexByte(s, '%')
	if i < 0 {
		return s, nil
	}
	b := make([]byte, 0, len(s))
	b = append(b, s[:i]...)
	for ; i < len(s); i++ {
		if s[i] != '%' {
			b = append(b, s[i])
			continue
		}
		if i+2 >= len(s) {
			return "", fmt.Errorf("%w at byte %d of %q", errBadEscape, i, s)
		}
		hi, ok1 := unhex(s[i+1])
		lo, ok2 := unhex(s[i+2])
		if !ok1 || !ok2 {
			return "", fmt.Errorf("%w at byte %d of %q", errBadEscape, i, s)
		}
		b = append(b, hi<<4|lo)
		i += 2
	}
	return string(b), nil
}

// unhex decodes one hex digit.
func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}
