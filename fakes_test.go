package main

// The peers the unit tests talk to, each answering as the real service
// does: a strict S3 that verifies every signature, IMDS, the container
// credentials endpoint, STS, and credential providers with scripted
// results.

import (
	"bytes"
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeS3 is an S3 stand-in that checks every request's signature, serves
// objects with Range and conditional requests (via http.ServeContent),
// answers like S3 (x-amz-* headers, Server, XML errors) and records what
// it received. fault, if set, may take over a request.
type fakeS3 struct {
	secret string
	region string
	// rejectAKID is an access key S3 no longer knows (revoked early).
	rejectAKID string
	// clockAhead is how far this S3's clock runs ahead of the test's; it
	// enforces SigV4's 15-minute window against its own clock.
	clockAhead time.Duration
	// noListBucket answers a missing key with 403 AccessDenied, as S3 does
	// when the role lacks s3:ListBucket.
	noListBucket bool
	// now is this S3's clock before clockAhead; nil means time.Now.
	now clock

	mu       sync.Mutex // guards every field below
	objects  map[string]fakeObject
	requests []*http.Request
	// fault sees each request first (with its attempt number, 1-based)
	// and returns true when it answered.
	fault func(w http.ResponseWriter, r *http.Request, n int) bool
}

type fakeObject struct {
	body []byte
	etag string
}

func newFakeS3(t *testing.T) (*fakeS3, *httptest.Server) {
	t.Helper()
	f := &fakeS3{secret: testSecret, region: "us-east-1", objects: map[string]fakeObject{}}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, srv
}

func (f *fakeS3) put(key string, body []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.objects[key] = fakeObject{body: body, etag: fmt.Sprintf(`"%x"`, rand.Uint64())}
}

func (f *fakeS3) received() []*http.Request {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*http.Request(nil), f.requests...)
}

func (f *fakeS3) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.requests = append(f.requests, r)
	n, fault, serverNow := len(f.requests), f.fault, f.now.read().Add(f.clockAhead)
	f.mu.Unlock()
	w.Header().Set("Date", serverNow.UTC().Format(http.TimeFormat))
	if signed, err := time.Parse(amzDateFormat, r.Header.Get(headerAmzDate)); err == nil && serverNow.Sub(signed).Abs() > 15*time.Minute {
		s3Error(w, http.StatusForbidden, "RequestTimeTooSkewed", "The difference between the request time and the current time is too large.")
		return
	}
	w.Header().Set("Server", "AmazonS3")
	w.Header().Set("X-Amz-Request-Id", "REQ123")
	w.Header().Set("X-Amz-Id-2", "id2")
	if f.rejectAKID != "" && strings.Contains(r.Header.Get("Authorization"), "Credential="+f.rejectAKID+"/") {
		s3Error(w, http.StatusForbidden, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.")
		return
	}
	if err := verifySignature(r, f.secret, f.region); err != nil {
		s3Error(w, http.StatusForbidden, "SignatureDoesNotMatch", err.Error())
		return
	}
	if fault != nil && fault(w, r, n) {
		return
	}
	path, _, _ := strings.Cut(r.RequestURI, "?")
	if !strings.HasPrefix(path, "/"+testBucket+"/") {
		s3Error(w, http.StatusNotFound, "NoSuchBucket", "The specified bucket does not exist.")
		return
	}
	key, err := percentDecode(strings.TrimPrefix(path, "/"+testBucket+"/"))
	if err != nil {
		s3Error(w, http.StatusBadRequest, "InvalidURI", err.Error())
		return
	}
	f.mu.Lock()
	obj, ok := f.objects[key]
	f.mu.Unlock()
	if !ok && f.noListBucket {
		s3Error(w, http.StatusForbidden, "AccessDenied", "Access Denied")
		return
	}
	if !ok {
		s3Error(w, http.StatusNotFound, "NoSuchKey", "The specified key does not exist.")
		return
	}
	w.Header().Set("Etag", obj.etag)
	w.Header().Set("X-Amz-Meta-Owner", "someone")
	w.Header().Set("Content-Type", "video/mp4")
	http.ServeContent(w, r, "", time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), bytes.NewReader(obj.body))
}

func s3Error(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(status)
	fmt.Fprintf(w, "<?xml version=\"1.0\"?>\n<Error><Code>%s</Code><Message>%s</Message><RequestId>REQ123</RequestId></Error>", code, msg)
}

// verifySignature recomputes the SigV4 header signature of a received
// request from what arrived on the wire.
func verifySignature(r *http.Request, secret, region string) error {
	auth := r.Header.Get("Authorization")
	rest, ok := strings.CutPrefix(auth, signingAlgorithm+" Credential=")
	if !ok {
		return errors.New("no SigV4 Authorization header")
	}
	cred, rest, _ := strings.Cut(rest, ", SignedHeaders=")
	signed, sig, _ := strings.Cut(rest, ", Signature=")
	akid, _, _ := strings.Cut(cred, "/")
	when, err := time.Parse(amzDateFormat, r.Header.Get(headerAmzDate))
	if err != nil {
		return fmt.Errorf("X-Amz-Date: %w", err)
	}
	path, rawQuery, _ := strings.Cut(r.RequestURI, "?")
	params, err := parseCanonicalQuery(rawQuery)
	if err != nil {
		return err
	}
	var extra []headerField
	for name := range strings.SplitSeq(signed, ";") {
		switch name {
		case lowerHost, lowerAmzDate, lowerContentSHA256, lowerSecurityToken:
		default:
			extra = append(extra, headerField{name, r.Header.Get(name)})
		}
	}
	for name := range r.Header {
		if lower := strings.ToLower(name); strings.HasPrefix(lower, "x-amz-") && !strings.Contains(";"+signed+";", ";"+lower+";") {
			return fmt.Errorf("unsigned header %s", name)
		}
	}
	creds := newCredentials(akid, secret, r.Header.Get(headerSecurityToken), time.Time{}, sourceEnvironment)
	s := &Signer{Region: region}
	want := s.explain(&signingRequest{method: r.Method, host: r.Host, uri: path, query: canonicalQuery(params),
		headers: extra, payloadHash: r.Header.Get(headerContentSHA256)}, creds, when, true)
	if want.signature != sig || want.signedHeaders != signed {
		return fmt.Errorf("signature mismatch for %s", path)
	}
	return nil
}

// testProxy is a Proxy over a fakeS3 with static credentials.
type testProxy struct {
	*Proxy
	s3   *fakeS3
	logs *syncBuffer
	url  string // the proxy's own URL
}

func newTestProxy(t *testing.T) *testProxy {
	t.Helper()
	f, srv := newFakeS3(t)
	endpoint, _ := url.Parse(srv.URL)
	logs := &syncBuffer{}
	creds := newCredentials(testAKID, testSecret, testToken, time.Time{}, sourceEnvironment)
	cache := &credentialCache{provider: staticProvider{creds}, log: slog.New(slog.DiscardHandler)}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	p := &Proxy{
		routes: buildRoutes([]routeSpec{{"/", testBucket, ""}, {"/avod/", testBucket, "ads/"}}, endpoint, false, false),
		upstream: &s3Client{
			scheme:    "http",
			signer:    &Signer{Region: "us-east-1"},
			creds:     cache,
			transport: newUpstreamTransport(time.Second),
			log:       log,
			policy:    retryPolicy{limit: 3, pause: func(int) time.Duration { return 0 }},
			timeout:   time.Second,
		},
		log:       log,
		accessLog: true,
	}
	front := httptest.NewServer(p)
	t.Cleanup(front.Close)
	return &testProxy{Proxy: p, s3: f, logs: logs, url: front.URL}
}

// fakeIMDS is an IMDSv2 emulator: tokens with TTL, 401 for unknown or
// expired tokens, role listing, credentials JSON, and failures injected per
// call.
type fakeIMDS struct {
	mu sync.Mutex // guards every field below
	// now is the emulator's clock; nil means time.Now.
	now    clock
	tokens map[string]time.Time
	role   string
	// body is the credentials document served for role.
	body []byte
	// fail holds statuses returned by the next calls, in order.
	fail      []int
	tokenPuts int
	credGets  int
	// hangPUT makes the token PUT wait for the client to give up.
	hangPUT bool
}

func newFakeIMDS(t *testing.T, expires time.Time) (*fakeIMDS, *httptest.Server) {
	t.Helper()
	f := &fakeIMDS{tokens: map[string]time.Time{}, role: "sidecar-role"}
	f.setCredentials("ASIAFIRST", testSecret, testToken, expires)
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, srv
}

func (f *fakeIMDS) setCredentials(akid, secret, token string, expires time.Time) {
	doc, _ := json.Marshal(map[string]string{
		"Code": "Success", "LastUpdated": "2026-11-27T00:00:00Z", "Type": "AWS-HMAC",
		"AccessKeyId": akid, "SecretAccessKey": secret, "Token": token,
		"Expiration": expires.UTC().Format(time.RFC3339),
	})
	f.mu.Lock()
	f.body = doc
	f.mu.Unlock()
}

func (f *fakeIMDS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	if r.Method == http.MethodPut && r.URL.Path == imdsTokenPath && f.hangPUT {
		f.mu.Unlock()
		<-r.Context().Done()
		return
	}
	defer f.mu.Unlock()
	if len(f.fail) > 0 {
		status := f.fail[0]
		f.fail = f.fail[1:]
		http.Error(w, "injected", status)
		return
	}
	if r.Method == http.MethodPut && r.URL.Path == imdsTokenPath {
		if r.Header.Get("X-Forwarded-For") != "" { // IMDSv2 refuses forwarded token requests
			http.Error(w, "forbidden", http.StatusForbidden)
			return
		}
		ttl, err := strconv.Atoi(r.Header.Get(imdsTokenTTLHeader))
		if err != nil || ttl < 1 || ttl > 21600 {
			http.Error(w, "bad ttl", http.StatusBadRequest)
			return
		}
		f.tokenPuts++
		token := fmt.Sprintf("imds-token-%d", f.tokenPuts)
		f.tokens[token] = f.now.read().Add(time.Duration(ttl) * time.Second)
		fmt.Fprint(w, token)
		return
	}
	if r.Method != http.MethodGet {
		http.Error(w, "method", http.StatusMethodNotAllowed)
		return
	}
	if exp, ok := f.tokens[r.Header.Get(imdsTokenHeader)]; !ok || !f.now.read().Before(exp) {
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	switch r.URL.Path {
	case imdsCredentialsPath:
		fmt.Fprintln(w, f.role)
	case imdsCredentialsPath + f.role:
		f.credGets++
		w.Write(f.body)
	case imdsRegionPath:
		fmt.Fprint(w, "eu-west-1")
	default:
		http.NotFound(w, r)
	}
}

func (f *fakeIMDS) counts() (tokenPuts, credGets int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.tokenPuts, f.credGets
}

// fakeProvider returns scripted results and counts calls.
type fakeProvider struct {
	mu    sync.Mutex // guards every field below
	calls int
	// next returns the result of call n (1-based).
	next func(n int) (*Credentials, error)
	// gate, if set, is waited on before answering.
	gate chan struct{}
}

func (p *fakeProvider) Retrieve(ctx context.Context) (*Credentials, error) {
	p.mu.Lock()
	p.calls++
	n, next, gate := p.calls, p.next, p.gate
	p.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return next(n)
}

func (p *fakeProvider) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls
}

func newTestCache(p credentialProvider, logs *syncBuffer, jitter float64) *credentialCache {
	return &credentialCache{
		provider: p,
		rand:     func() float64 { return jitter },
		log:      slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

func imdsCreds(akid string, expires time.Time) *Credentials {
	return newCredentials(akid, testSecret, testToken, expires, sourceIMDS)
}

// fakeContainerEndpoint answers like the ECS agent or the EKS Pod Identity
// agent: it requires the Authorization token and serves a credentials
// document, or an error document while fail is set.
type fakeContainerEndpoint struct {
	mu        sync.Mutex // guards every field below
	wantAuth  string
	akid      string
	expires   time.Time
	failWith  int // status to answer with, 0 for success
	requests  int
	seenAuths []string
	// secret and token are served with akid; empty means the test constants.
	secret, token string
}

func (f *fakeContainerEndpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests++
	f.seenAuths = append(f.seenAuths, r.Header.Get("Authorization"))
	w.Header().Set("Content-Type", "application/json")
	switch {
	case f.wantAuth != "" && r.Header.Get("Authorization") != f.wantAuth:
		w.WriteHeader(http.StatusUnauthorized)
		json.NewEncoder(w).Encode(map[string]string{"code": "InvalidToken", "message": "Authorization token is invalid\nsecond line"})
	case f.failWith != 0:
		w.WriteHeader(f.failWith)
		json.NewEncoder(w).Encode(map[string]string{"code": "InternalError", "message": "agent unavailable"})
	default:
		json.NewEncoder(w).Encode(map[string]string{"AccessKeyId": f.akid, "SecretAccessKey": cmp.Or(f.secret, testSecret), "Token": cmp.Or(f.token, testToken),
			"Expiration": f.expires.UTC().Format(time.RFC3339), "RoleArn": "arn:aws:iam::1:role/task"})
	}
}

func (f *fakeContainerEndpoint) set(fn func(f *fakeContainerEndpoint)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

// fakeSTS answers AssumeRoleWithWebIdentity and AssumeRole like STS. For
// AssumeRole it verifies the SigV4 signature with the base credentials it
// knows, using referenceSignature (written independently of the signer).
type fakeSTS struct {
	mu sync.Mutex // guards every field below
	// wantToken is the web identity token STS accepts.
	wantToken string
	// baseSecrets are the base credentials AssumeRole accepts, by key id.
	baseSecrets map[string]string
	// errors are answered first, one per request: code names an STS error.
	errors []string
	akid   string
	calls  []url.Values
	// secret and token are served with akid; empty means the test constants.
	secret, token string
}

func (f *fakeSTS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	form, _ := url.ParseQuery(string(body))
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, form)
	fail := func(status int, code string) {
		w.WriteHeader(status)
		fmt.Fprintf(w, `<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type><Code>%s</Code><Message>%s failed</Message></Error><RequestId>r</RequestId></ErrorResponse>`, code, code)
	}
	if len(f.errors) > 0 {
		code := f.errors[0]
		f.errors = f.errors[1:]
		status := http.StatusBadRequest
		if code == "AccessDenied" {
			status = http.StatusForbidden
		}
		fail(status, code)
		return
	}
	if r.Method != http.MethodPost || form.Get("Version") != stsVersion || r.Header.Get("Content-Type") != stsContentType {
		fail(400, "InvalidAction")
		return
	}
	action := form.Get("Action")
	switch action {
	case "AssumeRoleWithWebIdentity":
		if r.Header.Get("Authorization") != "" {
			fail(400, "UnsignedRequestExpected")
			return
		}
		if form.Get("WebIdentityToken") != f.wantToken {
			fail(400, "InvalidIdentityToken")
			return
		}
	case "AssumeRole":
		if err := f.verify(r, body); err != nil {
			fail(403, "SignatureDoesNotMatch")
			return
		}
	default:
		fail(400, "InvalidAction")
		return
	}
	if !validSessionName(form.Get("RoleSessionName")) || !isRoleARN(form.Get("RoleArn")) {
		fail(400, "ValidationError")
		return
	}
	fmt.Fprintf(w, `<%[1]sResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><%[1]sResult>
<Credentials><AccessKeyId>%[2]s</AccessKeyId><SecretAccessKey>%[3]s</SecretAccessKey><SessionToken>%[4]s</SessionToken><Expiration>%[5]s</Expiration></Credentials>
<AssumedRoleUser><Arn>%[6]s/s</Arn><AssumedRoleId>AROA:s</AssumedRoleId></AssumedRoleUser></%[1]sResult>
<ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></%[1]sResponse>`,
		action, f.akid, cmp.Or(f.secret, testSecret), cmp.Or(f.token, testToken), time.Now().Add(time.Hour).UTC().Format(time.RFC3339), form.Get("RoleArn"))
}

// verify checks an AssumeRole request's Authorization header.
func (f *fakeSTS) verify(r *http.Request, body []byte) error {
	auth := r.Header.Get("Authorization")
	rest, ok := strings.CutPrefix(auth, "AWS4-HMAC-SHA256 Credential=")
	if !ok {
		return errors.New("not signed")
	}
	cred, rest, _ := strings.Cut(rest, ", SignedHeaders=")
	signed, sig, _ := strings.Cut(rest, ", Signature=")
	parts := strings.Split(cred, "/")
	if len(parts) != 5 || parts[3] != "sts" {
		return fmt.Errorf("credential scope %q", cred)
	}
	secret, ok := f.baseSecrets[parts[0]]
	if !ok {
		return errors.New("unknown base access key")
	}
	sum := sha256.Sum256(body)
	// STS hashes the body itself; x-amz-content-sha256 is S3's header,
	// and a client that sends it anyway must send the right one.
	if v := r.Header.Get("X-Amz-Content-Sha256"); v != "" && v != hex.EncodeToString(sum[:]) {
		return errors.New("payload hash does not match the body")
	}
	want := referenceSignature(r, strings.Split(signed, ";"), hex.EncodeToString(sum[:]), secret, parts[1], parts[2], parts[3])
	if want != sig {
		return errors.New("signature mismatch")
	}
	return nil
}

// referenceSignature is SigV4 written plainly from the AWS documentation,
// independent of sigv4.go: strings, sorting and crypto/hmac only.
func referenceSignature(r *http.Request, signed []string, payloadHash, secret, date, region, service string) string {
	var lines []string
	for _, name := range signed {
		v := r.Header.Get(name)
		if name == "host" {
			v = r.Host
		}
		lines = append(lines, name+":"+strings.Join(strings.Fields(v), " "))
	}
	slices.Sort(lines)
	creq := strings.Join([]string{r.Method, r.URL.EscapedPath(), r.URL.RawQuery, strings.Join(lines, "\n") + "\n", strings.Join(signed, ";"), payloadHash}, "\n")
	creqSum := sha256.Sum256([]byte(creq))
	scope := date + "/" + region + "/" + service + "/aws4_request"
	sts := "AWS4-HMAC-SHA256\n" + r.Header.Get("X-Amz-Date") + "\n" + scope + "\n" + hex.EncodeToString(creqSum[:])
	mac := func(key []byte, msg string) []byte {
		h := hmac.New(sha256.New, key)
		h.Write([]byte(msg))
		return h.Sum(nil)
	}
	key := mac([]byte("AWS4"+secret), date)
	for _, part := range []string{region, service, "aws4_request"} {
		key = mac(key, part)
	}
	return hex.EncodeToString(mac(key, sts))
}

func newTestSTS(t *testing.T) (*fakeSTS, *stsClient) {
	t.Helper()
	f := &fakeSTS{wantToken: "jwt-1", akid: "ASIASTS1", baseSecrets: map[string]string{"AKIABASE": "base/secret+key"}}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, &stsClient{endpoint: srv.URL, pause: func(int) time.Duration { return 0 }}
}

// scriptedS3 is an in-memory S3 for tests under testing/synctest: answer
// gives attempt n (1-based, in arrival order) its response, and may pause
// or wait on the request's context, which fake time makes exact. It records
// when each request arrived and the headers that steer an answer.
type scriptedS3 struct {
	answer func(n int, r *http.Request) (*http.Response, error)

	mu       sync.Mutex // guards requests
	requests []scriptedRequest
}

type scriptedRequest struct {
	at                         time.Time
	method, host, rng, ifMatch string
	cancelled, completed       bool
}

func (s *scriptedS3) RoundTrip(r *http.Request) (*http.Response, error) {
	s.mu.Lock()
	s.requests = append(s.requests, scriptedRequest{at: time.Now(), method: r.Method, host: r.Host, rng: r.Header.Get("Range"), ifMatch: r.Header.Get("If-Match")})
	n := len(s.requests)
	s.mu.Unlock()
	resp, err := s.answer(n, r)
	s.mu.Lock()
	s.requests[n-1].cancelled = r.Context().Err() != nil
	s.requests[n-1].completed = err == nil
	s.mu.Unlock()
	return resp, err
}

// seen returns the requests so far.
func (s *scriptedS3) seen() []scriptedRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]scriptedRequest(nil), s.requests...)
}

// hold waits d, or until the request is cancelled: false then.
func hold(r *http.Request, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.Context().Done():
		return false
	}
}

// objectAnswer is S3's answer for body under etag: ranges and conditions
// as http.ServeContent applies them; the body ends with the request.
func objectAnswer(r *http.Request, body []byte, etag string) *http.Response {
	rec := httptest.NewRecorder()
	rec.Header().Set("Etag", etag)
	http.ServeContent(rec, r, "", time.Time{}, bytes.NewReader(body))
	resp := rec.Result()
	resp.Body = &ctxBody{ctx: r.Context(), r: resp.Body}
	return resp
}

// s3ErrorBody is the S3-shaped error body s3-helper answers with.
func s3ErrorBody(code, message string) string {
	return `<?xml version="1.0" encoding="UTF-8"?>` + "\n<Error><Code>" + code + "</Code><Message>" + message + "</Message></Error>\n"
}

// errorAnswer is an S3 error answer, with S3's Date (date, if not zero).
func errorAnswer(status int, code string, date time.Time) *http.Response {
	rec := httptest.NewRecorder()
	if !date.IsZero() {
		rec.Header().Set("Date", date.UTC().Format(http.TimeFormat))
	}
	s3Error(rec, status, code, "scripted")
	return rec.Result()
}

// scriptedProxy is a production-shaped Proxy (budget, hedge cap, stall
// watch) over s, with aggregated metrics and its log in logs.
func scriptedProxy(s *scriptedS3, hedge hedgePolicy, logs *syncBuffer) *Proxy {
	p := benchProxy(nil)
	p.upstream.transport = s
	p.metrics = newMetrics(nil, true)
	p.log = slog.New(slog.NewTextHandler(logs, nil))
	p.upstream.metrics, p.upstream.log = p.metrics, p.log
	p.upstream.policy.budget = newRetryBudget(defaultRetryBudget, p.log)
	p.upstream.policy.hedge = hedge
	p.accessLog = true
	return p
}

// serveOne runs one request through p's handler.
func serveOne(p *Proxy, r *http.Request) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	func() {
		defer func() {
			if v := recover(); v != nil && v != http.ErrAbortHandler {
				panic(v)
			}
		}()
		p.ServeHTTP(w, r)
	}()
	return w
}

// rotatingProvider hands out a new set on every fetch, as IMDS does after
// a role session was revoked.
type rotatingProvider struct{ n atomic.Int64 }

func (p *rotatingProvider) Retrieve(context.Context) (*Credentials, error) {
	return newCredentials(fmt.Sprintf("ASIAROTATE%010d", p.n.Add(1)), testSecret, testToken, time.Time{}, sourceIMDS), nil
}

// fakeAccessPoint is an S3 Multi-Region Access Point stand-in that checks
// every SigV4A signature itself, header or query, with a key derived by
// referenceV4APublicKey (written apart from the signer), and serves objects
// keyed by the path (no bucket segment), with Range and HEAD.
type fakeAccessPoint struct {
	akid, secret string

	mu       sync.Mutex // guards objects and verified
	objects  map[string][]byte
	verified int
}

func newFakeAccessPoint(t *testing.T) (*fakeAccessPoint, *httptest.Server) {
	t.Helper()
	f := &fakeAccessPoint{akid: testAKID, secret: testSecret, objects: map[string][]byte{}}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, srv
}

func (f *fakeAccessPoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := f.verify(r); err != nil {
		s3Error(w, http.StatusForbidden, "SignatureDoesNotMatch", err.Error())
		return
	}
	f.mu.Lock()
	f.verified++
	body, ok := f.objects[strings.TrimPrefix(r.URL.Path, "/")]
	f.mu.Unlock()
	if !ok {
		s3Error(w, http.StatusNotFound, "NoSuchKey", "The specified key does not exist.")
		return
	}
	w.Header().Set("Etag", `"ap"`)
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(body))
}

// verify checks a SigV4A request as S3 does for an access point: the
// algorithm, a scope without a region, region set "*" signed, the payload
// hash and the session token signed, and the ECDSA signature.
func (f *fakeAccessPoint) verify(r *http.Request) error {
	q := r.URL.Query()
	var algorithm, credential, signedList, signature, amzDate, regionSet, payloadHash string
	query := r.URL.RawQuery
	if auth := r.Header.Get("Authorization"); auth != "" {
		algorithm, rest, _ := strings.Cut(auth, " Credential=")
		if algorithm != "AWS4-ECDSA-P256-SHA256" {
			return fmt.Errorf("algorithm %q", algorithm)
		}
		credential, rest, _ = strings.Cut(rest, ", SignedHeaders=")
		signedList, signature, _ = strings.Cut(rest, ", Signature=")
		amzDate, regionSet, payloadHash = r.Header.Get("X-Amz-Date"), r.Header.Get("X-Amz-Region-Set"), r.Header.Get("X-Amz-Content-Sha256")
		for _, must := range []string{"host", "x-amz-date", "x-amz-region-set", "x-amz-content-sha256", "x-amz-security-token"} {
			if !slices.Contains(strings.Split(signedList, ";"), must) {
				return fmt.Errorf("%s is not signed", must)
			}
		}
	} else {
		algorithm, credential, signedList, signature = q.Get("X-Amz-Algorithm"), q.Get("X-Amz-Credential"), q.Get("X-Amz-SignedHeaders"), q.Get("X-Amz-Signature")
		amzDate, regionSet, payloadHash = q.Get("X-Amz-Date"), q.Get("X-Amz-Region-Set"), "UNSIGNED-PAYLOAD"
		if algorithm != "AWS4-ECDSA-P256-SHA256" {
			return fmt.Errorf("algorithm %q", algorithm)
		}
		query = query[:strings.Index(query, "&X-Amz-Signature=")]
	}
	parts := strings.Split(credential, "/")
	if len(parts) != 4 || parts[0] != f.akid || parts[2] != "s3" || parts[3] != "aws4_request" || !strings.HasPrefix(amzDate, parts[1]) {
		return fmt.Errorf("credential %q: want AKID/DATE/s3/aws4_request, no region", credential)
	}
	if regionSet != "*" {
		return fmt.Errorf("region set %q, want *", regionSet)
	}
	params, err := parseCanonicalQuery(query)
	if err != nil {
		return err
	}
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var pairs []string
	for _, k := range keys {
		for _, v := range params[k] {
			pairs = append(pairs, url.QueryEscape(k)+"="+strings.ReplaceAll(url.QueryEscape(v), "+", "%20"))
		}
	}
	var lines []string
	for _, name := range strings.Split(signedList, ";") {
		v := r.Header.Get(name)
		if name == "host" {
			v = r.Host
		}
		lines = append(lines, name+":"+strings.Join(strings.Fields(v), " "))
	}
	path, _, _ := strings.Cut(r.RequestURI, "?")
	creq := strings.Join([]string{r.Method, path, strings.Join(pairs, "&"), strings.Join(lines, "\n") + "\n", signedList, payloadHash}, "\n")
	sum := sha256.Sum256([]byte(creq))
	sts := "AWS4-ECDSA-P256-SHA256\n" + amzDate + "\n" + strings.Join(parts[1:], "/") + "\n" + hex.EncodeToString(sum[:])
	der, err := hex.DecodeString(signature)
	digest := sha256.Sum256([]byte(sts))
	if err != nil || !ecdsa.VerifyASN1(referenceV4APublicKey(f.akid, f.secret), digest[:], der) {
		return errors.New("the ECDSA signature does not verify")
	}
	return nil
}

// referenceV4APublicKey derives a SigV4A public key from the description
// in AWS's test suite, apart from the signer's code: the first counter
// whose HMAC is at most n-2 gives the private scalar HMAC+1.
func referenceV4APublicKey(akid, secret string) *ecdsa.PublicKey {
	curve := elliptic.P256()
	n := curve.Params().N
	for counter := byte(1); counter < 255; counter++ {
		input := append([]byte{0, 0, 0, 1}, "AWS4-ECDSA-P256-SHA256"...)
		input = append(input, 0)
		input = append(input, akid...)
		input = append(input, counter, 0, 0, 1, 0)
		m := hmac.New(sha256.New, []byte("AWS4A"+secret))
		m.Write(input)
		k := new(big.Int).SetBytes(m.Sum(nil))
		if k.Cmp(new(big.Int).Sub(n, big.NewInt(2))) > 0 {
			continue
		}
		d := k.Add(k, big.NewInt(1))
		x, y := curve.ScalarBaseMult(d.FillBytes(make([]byte, 32)))
		return &ecdsa.PublicKey{Curve: curve, X: x, Y: y}
	}
	return nil
}
