package main

// An S3 Express One Zone stand-in: no open-source S3 server implements
// CreateSession, so the tests use this one. It checks every request by the
// spec with expressVerify, a SigV4 verifier written here apart from
// sigv4.go (its own canonical request, string to sign and key derivation).

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeExpress stands in for one directory bucket's zonal endpoint. It
// answers CreateSession (GET /?session, SigV4 for s3express with base
// credentials it knows, read-only) with sessions of life, checks each data
// request's session signature (x-amz-s3session-token signed, no
// x-amz-security-token, the session unexpired), and serves objects (GET,
// Range, HEAD, 404) with random ETags, as S3 Express's are no MD5s.
type fakeExpress struct {
	host, region string
	// baseSecrets are the base credentials CreateSession accepts, by
	// access key ID.
	baseSecrets map[string]string
	// life is how long a session lasts; zero means 5 minutes.
	life time.Duration
	// now is the stand-in's clock; nil means time.Now.
	now clock

	mu      sync.Mutex // guards every field below
	objects map[string]fakeObject
	// sessions are every session handed out, by access key ID.
	sessions map[string]fakeSession
	creates  []fakeCreate
	// refuse, when set, is the error code CreateSession answers with
	// (AccessDenied is a 403, others a 400 or, for InternalError, a 500).
	refuse string
	// gate, when set, holds each CreateSession until it is closed (or
	// the request is cancelled).
	gate chan struct{}
	// revoked sessions are answered ExpiredToken before their Expiration.
	revoked map[string]bool
	// dataRequests counts data requests whose signature verified;
	// minLeft is the least session time left at one's X-Amz-Date; and
	// rejected says why each refused data request was refused.
	dataRequests int
	minLeft      time.Duration
	rejected     []string
}

// fakeSession is one session the stand-in handed out.
type fakeSession struct {
	secret, token string
	expires       time.Time
}

// fakeCreate is one CreateSession the stand-in received.
type fakeCreate struct {
	at     time.Time
	baseID string
	status int
}

// newFakeExpress serves bucket in region to the base credentials AKIDs
// given as akid, secret pairs.
func newFakeExpress(bucket, region string, baseKeys ...string) *fakeExpress {
	d, _, _ := parseDirectoryBucket(bucket)
	f := &fakeExpress{host: zonalHost(d, region), region: region, baseSecrets: map[string]string{},
		objects: map[string]fakeObject{}, sessions: map[string]fakeSession{}, revoked: map[string]bool{}, minLeft: time.Duration(1<<63 - 1)}
	for i := 0; i+1 < len(baseKeys); i += 2 {
		f.baseSecrets[baseKeys[i]] = baseKeys[i+1]
	}
	return f
}

func (f *fakeExpress) put(key string, body []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.objects[key] = fakeObject{body: body, etag: fmt.Sprintf(`"%016x%016x"`, rand.Uint64(), rand.Uint64())}
}

// set changes the stand-in's behaviour under its lock.
func (f *fakeExpress) set(fn func(f *fakeExpress)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

// createCount is how many CreateSessions arrived.
func (f *fakeExpress) createCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.creates)
}

func (f *fakeExpress) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Date", f.now.read().UTC().Format(http.TimeFormat))
	w.Header().Set("Server", "AmazonS3")
	if r.Host != f.host {
		s3Error(w, http.StatusNotFound, "NoSuchBucket", "The specified bucket does not exist.")
		return
	}
	path, query, _ := strings.Cut(r.RequestURI, "?")
	switch {
	case r.Method == http.MethodGet && path == "/" && query == "session":
		f.createSession(w, r)
	case r.Method == http.MethodGet || r.Method == http.MethodHead:
		f.serveObject(w, r, path)
	default:
		s3Error(w, http.StatusMethodNotAllowed, "MethodNotAllowed", "The specified method is not allowed against this resource.")
	}
}

// createSession answers CreateSession.
func (f *fakeExpress) createSession(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	gate := f.gate
	f.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-r.Context().Done():
			return
		}
	}
	now := f.now.read()
	f.mu.Lock()
	defer f.mu.Unlock()
	create := fakeCreate{at: now}
	status, code, msg := f.checkCreateSession(r, &create)
	if status == 0 && f.refuse != "" {
		status, code, msg = http.StatusBadRequest, f.refuse, "refused by the test"
		switch f.refuse {
		case "AccessDenied":
			status = http.StatusForbidden
		case "InternalError":
			status = http.StatusInternalServerError
		}
	}
	create.status = cmpOr(status, http.StatusOK)
	f.creates = append(f.creates, create)
	if status != 0 {
		s3Error(w, status, code, msg)
		return
	}
	n := len(f.sessions) + 1
	akid := fmt.Sprintf("ASIAEXPRESS%09d", n)
	life := cmpOr(f.life, 5*time.Minute)
	s := fakeSession{secret: fmt.Sprintf("express/secret+%d/%x", n, rand.Uint64()),
		token:   fmt.Sprintf("S3EXPRESS-%d-", n) + strings.Repeat("IQoJb3JpZ2luX2VjE", 40),
		expires: now.Add(life).Truncate(time.Second)}
	f.sessions[akid] = s
	w.Header().Set("Content-Type", "application/xml")
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?>
<CreateSessionResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Credentials><SessionToken>%s</SessionToken><SecretAccessKey>%s</SecretAccessKey><AccessKeyId>%s</AccessKeyId><Expiration>%s</Expiration></Credentials></CreateSessionResult>`,
		s.token, s.secret, akid, s.expires.UTC().Format(time.RFC3339))
}

// checkCreateSession checks a CreateSession as S3 would; status 0 means
// it passed. f.mu must be held.
func (f *fakeExpress) checkCreateSession(r *http.Request, create *fakeCreate) (int, string, string) {
	if r.Header.Get(headerS3SessionToken) != "" {
		return http.StatusBadRequest, "InvalidRequest", "CreateSession takes no session token"
	}
	if mode := r.Header.Get("X-Amz-Create-Session-Mode"); mode != "ReadOnly" {
		return http.StatusBadRequest, "InvalidArgument", "s3-helper asks for ReadOnly sessions, got " + mode
	}
	unknown := false
	akid, signed, err := expressVerify(r, "s3express", f.region, func(id string) (string, bool) {
		secret, ok := f.baseSecrets[id]
		unknown = !ok
		return secret, ok
	}, f.now.read())
	create.baseID = akid
	if unknown {
		return http.StatusForbidden, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records."
	}
	if err != nil {
		return http.StatusForbidden, "SignatureDoesNotMatch", err.Error()
	}
	must := []string{"host", "x-amz-content-sha256", "x-amz-create-session-mode", "x-amz-date"}
	if r.Header.Get("X-Amz-Security-Token") != "" {
		must = append(must, "x-amz-security-token")
	}
	for _, name := range must {
		if !slices.Contains(signed, name) {
			return http.StatusForbidden, "AccessDenied", name + " is not signed"
		}
	}
	return 0, "", ""
}

// serveObject answers a data request signed with a session.
func (f *fakeExpress) serveObject(w http.ResponseWriter, r *http.Request, path string) {
	now := f.now.read()
	f.mu.Lock()
	status, code, msg := f.checkData(r, now)
	if status != 0 {
		f.rejected = append(f.rejected, code+": "+msg)
	}
	key, err := url.PathUnescape(strings.TrimPrefix(path, "/"))
	obj, ok := f.objects[key]
	f.mu.Unlock()
	switch {
	case status != 0:
		s3Error(w, status, code, msg)
	case err != nil:
		s3Error(w, http.StatusBadRequest, "InvalidURI", err.Error())
	case !ok:
		s3Error(w, http.StatusNotFound, "NoSuchKey", "The specified key does not exist.")
	default:
		w.Header().Set("Etag", obj.etag)
		w.Header().Set("X-Amz-Storage-Class", "EXPRESS_ONEZONE")
		http.ServeContent(w, r, "", time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), bytes.NewReader(obj.body))
	}
}

// checkData checks a data request's session signature; status 0 means it
// passed. f.mu must be held.
func (f *fakeExpress) checkData(r *http.Request, now time.Time) (int, string, string) {
	if r.Header.Get("X-Amz-Security-Token") != "" || r.URL.Query().Get("X-Amz-Security-Token") != "" {
		return http.StatusBadRequest, "InvalidRequest", "x-amz-security-token is not accepted with a session"
	}
	akid, signed, err := expressVerify(r, "s3express", f.region, func(id string) (string, bool) {
		s, ok := f.sessions[id]
		return s.secret, ok
	}, now)
	if err != nil {
		return http.StatusForbidden, "SignatureDoesNotMatch", err.Error()
	}
	s := f.sessions[akid]
	token := r.Header.Get(headerS3SessionToken)
	if r.Header.Get("Authorization") == "" {
		token = r.URL.Query().Get(headerS3SessionToken)
	} else if !slices.Contains(signed, lowerS3SessionToken) {
		return http.StatusForbidden, "AccessDenied", "x-amz-s3session-token is not signed"
	}
	if token != s.token {
		return http.StatusBadRequest, "InvalidToken", "The provided token is malformed or otherwise invalid."
	}
	signedAt, _ := time.Parse(amzDateFormat, cmpOr(r.Header.Get("X-Amz-Date"), r.URL.Query().Get("X-Amz-Date")))
	if !now.Before(s.expires) || f.revoked[akid] {
		return http.StatusBadRequest, "ExpiredToken", "The provided token has expired."
	}
	f.dataRequests++
	f.minLeft = min(f.minLeft, s.expires.Sub(signedAt))
	return 0, "", ""
}

// checkNoSecrets fails the test when text, what s3-helper showed in
// where, holds a session's secret or token, or one of base (the base
// credentials' secret and token).
func (f *fakeExpress) checkNoSecrets(t *testing.T, where, text string, base ...string) {
	t.Helper()
	f.mu.Lock()
	secrets := base
	for _, s := range f.sessions {
		secrets = append(secrets, s.secret, s.token)
	}
	f.mu.Unlock()
	for _, s := range secrets {
		if strings.Contains(text, s) {
			t.Errorf("%s shows a secret (%d bytes, starting %.4s…)", where, len(s), s)
		}
	}
}

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

// handlerTransport sends requests to a handler in memory, as a server
// would receive them (RequestURI, Host), so tests under testing/synctest
// need no sockets.
type handlerTransport struct{ h http.Handler }

func (t handlerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	sr := req.Clone(req.Context())
	sr.RequestURI = req.URL.RequestURI()
	u, err := url.ParseRequestURI(sr.RequestURI)
	if err != nil {
		return nil, err
	}
	sr.URL, sr.Host = u, cmpOr(req.Host, req.URL.Host)
	rec := httptest.NewRecorder()
	t.h.ServeHTTP(rec, sr)
	if err := req.Context().Err(); err != nil {
		return nil, err
	}
	resp := rec.Result()
	resp.Request = req
	return resp, nil
}

// staticBase is a credentialGetter whose set the test swaps (a rotation);
// Refresh hands out next, when set.
type staticBase struct {
	mu        sync.Mutex // guards every field below
	cur       *Credentials
	next      *Credentials
	refreshes int
}

func (b *staticBase) Get(context.Context, time.Time) (*Credentials, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.cur, nil
}

func (b *staticBase) Refresh(_ context.Context, dead *Credentials) (*Credentials, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refreshes++
	if b.next == nil || b.cur != dead {
		return b.cur, nil
	}
	b.cur, b.next = b.next, nil
	return b.cur, nil
}

func (b *staticBase) rotate(to *Credentials) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.cur = to
}
