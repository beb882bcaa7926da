package main

// An independent SigV4 verifier for S3 Express One Zone's requests: its own
// canonical request, string to sign and key derivation, written from the
// AWS documentation apart from sigv4.go.

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// cmpOr is cmp.Or, spelled out so this file reads on its own.
func cmpOr[T comparable](v, otherwise T) T {
	var zero T
	if v == zero {
		return otherwise
	}
	return v
}

// expressVerify checks a request's SigV4 signature, in the Authorization
// header or in the query (a presigned URL), as S3 does, written from the
// AWS documentation apart from sigv4.go: the canonical request from what
// arrived (the URI as sent, the query decoded, re-encoded and sorted, each
// signed header's values trimmed), the string to sign, and the key derived
// with crypto/hmac. secretOf gives an access key's secret. It returns the
// access key ID and the signed header names.
func expressVerify(r *http.Request, service, region string, secretOf func(akid string) (string, bool), now time.Time) (string, []string, error) {
	path, rawQuery, _ := strings.Cut(r.RequestURI, "?")
	var credential, signedList, signature, amzDate, payloadHash string
	if auth := r.Header.Get("Authorization"); auth != "" {
		rest, ok := strings.CutPrefix(auth, "AWS4-HMAC-SHA256 Credential=")
		if !ok {
			return "", nil, errors.New("not a SigV4 Authorization header")
		}
		credential, rest, _ = strings.Cut(rest, ", SignedHeaders=")
		signedList, signature, _ = strings.Cut(rest, ", Signature=")
		amzDate, payloadHash = r.Header.Get("X-Amz-Date"), r.Header.Get("X-Amz-Content-Sha256")
		if payloadHash != "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" {
			return "", nil, fmt.Errorf("payload hash %q is not the empty body's", payloadHash)
		}
	} else {
		q := r.URL.Query()
		if q.Get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256" {
			return "", nil, errors.New("neither an Authorization header nor a presigned URL")
		}
		credential, signedList, signature, amzDate = q.Get("X-Amz-Credential"), q.Get("X-Amz-SignedHeaders"), q.Get("X-Amz-Signature"), q.Get("X-Amz-Date")
		payloadHash = "UNSIGNED-PAYLOAD"
		at, err := time.Parse("20060102T150405Z", amzDate)
		seconds, _ := strconv.Atoi(q.Get("X-Amz-Expires"))
		if err != nil || !now.Before(at.Add(time.Duration(seconds)*time.Second)) {
			return "", nil, errors.New("the presigned URL has expired")
		}
		var kept []string
		for pair := range strings.SplitSeq(rawQuery, "&") {
			if !strings.HasPrefix(pair, "X-Amz-Signature=") {
				kept = append(kept, pair)
			}
		}
		rawQuery = strings.Join(kept, "&")
	}
	scope := strings.Split(credential, "/")
	if len(scope) != 5 || scope[2] != region || scope[3] != service || scope[4] != "aws4_request" || !strings.HasPrefix(amzDate, scope[1]) {
		return "", nil, fmt.Errorf("credential scope %q: want AKID/DATE/%s/%s/aws4_request", credential, region, service)
	}
	secret, ok := secretOf(scope[0])
	if !ok {
		return "", nil, fmt.Errorf("unknown access key %s", scope[0])
	}
	signed := strings.Split(signedList, ";")
	if !slices.IsSorted(signed) || !slices.Contains(signed, "host") {
		return "", nil, fmt.Errorf("SignedHeaders %q: sorted, with host", signedList)
	}
	for name := range r.Header {
		if lower := strings.ToLower(name); strings.HasPrefix(lower, "x-amz-") && !slices.Contains(signed, lower) {
			return "", nil, fmt.Errorf("%s is sent but not signed", lower)
		}
	}
	var pairs []string
	for pair := range strings.SplitSeq(rawQuery, "&") {
		if pair == "" {
			continue
		}
		k, v, _ := strings.Cut(pair, "=")
		dk, err1 := url.PathUnescape(k)
		dv, err2 := url.PathUnescape(v)
		if err1 != nil || err2 != nil {
			return "", nil, fmt.Errorf("query %q does not decode", pair)
		}
		pairs = append(pairs, specEncode(dk)+"="+specEncode(dv))
	}
	slices.Sort(pairs)
	var lines []string
	for _, name := range signed {
		value := strings.Join(r.Header.Values(name), ",")
		if name == "host" {
			value = r.Host
		}
		lines = append(lines, name+":"+strings.Join(strings.Fields(value), " "))
	}
	creq := strings.Join([]string{r.Method, path, strings.Join(pairs, "&"), strings.Join(lines, "\n") + "\n", signedList, payloadHash}, "\n")
	creqSum := sha256.Sum256([]byte(creq))
	stringToSign := "AWS4-HMAC-SHA256\n" + amzDate + "\n" + strings.Join(scope[1:], "/") + "\n" + hex.EncodeToString(creqSum[:])
	mac := func(key []byte, msg string) []byte {
		h := hmac.New(sha256.New, key)
		h.Write([]byte(msg))
		return h.Sum(nil)
	}
	key := []byte("AWS4" + secret)
	for _, part := range scope[1:] {
		key = mac(key, part)
	}
	if want := hex.EncodeToString(mac(key, stringToSign)); !hmac.Equal([]byte(want), []byte(signature)) {
		return "", nil, errors.New("the signature does not match")
	}
	return scope[0], signed, nil
}

// specEncode is SigV4's URI encoding of a query name or value: every byte
// but A-Z a-z 0-9 - _ . ~ as %XX, upper-case hex.
func specEncode(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || strings.IndexByte("-_.~", c) >= 0 {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}
