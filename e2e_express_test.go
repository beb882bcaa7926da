package main

// End to end for S3 Express One Zone: the real binary against the
// directory bucket stand-in (express_fake_test.go) on a socket of the test
// process, with credentials from the environment. No open-source S3 server
// implements CreateSession, so the stand-in is the only S3 here; it checks
// every request with its own SigV4 verifier, as it does in memory.

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The base credentials the stand-in knows, handed to s3-helper in
// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN.
const (
	e2eExpressAKID   = "ASIAE2EEXPRESSBASE01"
	e2eExpressSecret = "e2e-express-base-secret/0123456789abcdef"
	e2eExpressToken  = "IQoJe2e-express-base-session-token/0123456789+abc=="
)

// expressWire counts what reached the stand-in, before it checks anything:
// CreateSessions and data requests, and which token header each carried.
type expressWire struct {
	creates, createsWithSecurityToken             atomic.Int64
	data, dataWithSecurityToken, dataWithSessions atomic.Int64
}

// wrap counts r and passes it to h.
func (w *expressWire) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		security := r.Header.Get(headerSecurityToken) != "" || r.URL.Query().Has(headerSecurityToken)
		if r.URL.RawQuery == "session" {
			w.creates.Add(1)
			if security {
				w.createsWithSecurityToken.Add(1)
			}
		} else {
			w.data.Add(1)
			if security {
				w.dataWithSecurityToken.Add(1)
			}
			if r.Header.Get(headerS3SessionToken) != "" {
				w.dataWithSessions.Add(1)
			}
		}
		h.ServeHTTP(rw, r)
	})
}

// TestE2EExpress: the real binary serves a directory bucket from the
// stand-in, dialled at -endpoint with the zonal name as Host, signed with
// sessions the stand-in verifies with its own verifier:
//   - a first burst of 64 concurrent requests, all held in s3-helper until
//     CreateSession answers: exactly one CreateSession, all 64 byte-exact;
//   - GET, Range (and a suffix range) and HEAD byte-exact, ETag passed on;
//     a missing key 404 with S3's code NoSuchKey in s3-helper's own body;
//   - sessions of 90 s and 20 Range GETs a second for 40 s: nothing fails,
//     each session is replaced 19 to 31 s after the one before (60 to 70 s
//     before its Expiration, truncated to the second), so the count is as
//     that schedule predicts for the time elapsed; no data request signed
//     with under 5 s of its session left, none with x-amz-security-token;
//   - /healthz names the session's state; -check exits 0;
//   - nothing s3-helper printed holds a secret or a session token.
func TestE2EExpress(t *testing.T) {
	env := needE2E(t)
	const bucket = testDirectoryBucket
	object := make([]byte, 4<<20)
	rng := rand.New(rand.NewPCG(26, 26))
	for i := range object {
		object[i] = byte(rng.Uint32())
	}
	f := newFakeExpress(bucket, "us-east-1", e2eExpressAKID, e2eExpressSecret)
	f.life = 90 * time.Second
	f.put("videos/big.bin", object)
	var wire expressWire
	srv := httptest.NewServer(wire.wrap(f))
	t.Cleanup(srv.Close)
	credsEnv := []string{"AWS_ACCESS_KEY_ID=" + e2eExpressAKID, "AWS_SECRET_ACCESS_KEY=" + e2eExpressSecret, "AWS_SESSION_TOKEN=" + e2eExpressToken}
	flags := []string{"-bucket", bucket, "-region", "us-east-1", "-endpoint", srv.URL, "-imds-endpoint", "http://127.0.0.1:1"}
	h := startHelperEnv(t, env, "127.0.0.1:0", credsEnv, append(flags, "-access-log=false")...)
	if n := wire.creates.Load(); n != 0 {
		t.Fatalf("%d CreateSessions before the first request, want none", n)
	}
	if _, health := get(t, "GET", "http://"+h.admin+"/healthz", nil); !strings.Contains(string(health), "session "+bucket+": none: no session made yet") {
		t.Errorf("/healthz before any request:\n%s", health)
	}

	t.Run("first burst", func(t *testing.T) {
		gate := make(chan struct{})
		f.set(func(f *fakeExpress) { f.gate = gate })
		client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 30 * time.Second}
		defer client.CloseIdleConnections()
		failed := make([]string, 64)
		var wg sync.WaitGroup
		for i := range failed {
			first := i * 65536
			wg.Go(func() {
				req, _ := http.NewRequest(http.MethodGet, h.url("/videos/big.bin"), nil)
				req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", first, first+4095))
				resp, err := client.Do(req)
				if err != nil {
					failed[i] = err.Error()
					return
				}
				var body bytes.Buffer
				_, err = body.ReadFrom(resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body.Bytes(), object[first:first+4096]) {
					failed[i] = fmt.Sprintf("%d, %d bytes, %v", resp.StatusCode, body.Len(), err)
				}
			})
		}
		// All 64 wait in s3-helper for the one CreateSession, which the
		// stand-in holds until then.
		waiting := ""
		for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
			_, metrics := get(t, "GET", "http://"+h.admin+"/metrics", nil)
			if waiting = promSamples(t, string(metrics))["s3helper_requests_in_flight"]; waiting == "64" {
				break
			}
		}
		close(gate)
		wg.Wait()
		f.set(func(f *fakeExpress) { f.gate = nil })
		if waiting != "64" {
			t.Errorf("requests in flight while CreateSession was held = %s, want 64", waiting)
		}
		for i, why := range failed {
			if why != "" {
				t.Errorf("burst request %d: %s", i, why)
			}
		}
		t.Logf("a burst of 64: %d CreateSession, %d data requests", wire.creates.Load(), wire.data.Load())
		if n := f.createCount(); n != 1 {
			t.Errorf("CreateSessions for the first burst of 64 = %d, want 1", n)
		}
	})

	t.Run("objects", func(t *testing.T) {
		f.mu.Lock()
		etag := f.objects["videos/big.bin"].etag
		f.mu.Unlock()
		for _, tt := range []struct {
			name, method, rng string
			status            int
			want              []byte
			contentRange      string
		}{
			{"GET", http.MethodGet, "", http.StatusOK, object, ""},
			{"Range", http.MethodGet, "bytes=1000-1999", http.StatusPartialContent, object[1000:2000], "bytes 1000-1999/4194304"},
			{"suffix Range", http.MethodGet, "bytes=-10", http.StatusPartialContent, object[len(object)-10:], "bytes 4194294-4194303/4194304"},
			{"HEAD", http.MethodHead, "", http.StatusOK, nil, ""},
		} {
			header := http.Header{}
			if tt.rng != "" {
				header.Set("Range", tt.rng)
			}
			resp, body := get(t, tt.method, h.url("/videos/big.bin"), header)
			length := fmt.Sprint(len(tt.want))
			if tt.method == http.MethodHead {
				length = fmt.Sprint(len(object))
			}
			if resp.StatusCode != tt.status || !bytes.Equal(body, tt.want) || resp.Header.Get("Content-Length") != length ||
				resp.Header.Get("Content-Range") != tt.contentRange || resp.Header.Get("Etag") != etag {
				t.Errorf("%s = %d, %d bytes, Content-Length %s, Content-Range %q, ETag %s; want %d, %d bytes, %s, %q, %s", tt.name,
					resp.StatusCode, len(body), resp.Header.Get("Content-Length"), resp.Header.Get("Content-Range"), resp.Header.Get("Etag"),
					tt.status, len(tt.want), length, tt.contentRange, etag)
			}
		}
		resp, body := get(t, http.MethodGet, h.url("/videos/no-such.mp4"), nil)
		if resp.StatusCode != http.StatusNotFound || resp.Header.Get("Content-Type") != "application/xml" ||
			!bytes.Contains(body, []byte("<Error><Code>NoSuchKey</Code>")) || bytes.Contains(body, []byte("RequestId")) {
			t.Errorf("a missing key = %d %s %q, want 404 with S3's code NoSuchKey in s3-helper's own body", resp.StatusCode, resp.Header.Get("Content-Type"), body)
		}
	})

	t.Run("sessions of 90 s under steady load", func(t *testing.T) {
		const rate, d = 20, 40 * time.Second
		res := rangeLoadAt(t, h.url("/videos/big.bin"), object, rate, d)
		end := time.Now()
		f.mu.Lock()
		creates := append([]fakeCreate(nil), f.creates...)
		verified, minLeft, rejected := f.dataRequests, f.minLeft, append([]string(nil), f.rejected...)
		f.mu.Unlock()
		// The stand-in's Expiration is made+90 s truncated to the second,
		// and s3-helper starts the next session on the first request
		// after Expiration-60..70 s: 19 to 30 s after the last one, and a
		// request (50 ms apart) and a CreateSession's round trip later.
		const shortest, longest = 19 * time.Second, 31 * time.Second
		var gaps []string
		for i, c := range creates {
			if c.status != http.StatusOK {
				t.Errorf("CreateSession %d answered %d", i, c.status)
			}
			if i > 0 {
				gap := c.at.Sub(creates[i-1].at)
				gaps = append(gaps, gap.Round(100*time.Millisecond).String())
				if gap < shortest || gap > longest {
					t.Errorf("session %d made %v after the one before, want %v to %v", i+1, gap, shortest, longest)
				}
			}
		}
		span := end.Sub(creates[0].at)
		fewest, most := 1+int(span/longest), 1+int(span/shortest)
		t.Logf("%d Range GETs at %d/s over %v: %d failed (statuses %v, p99 %v); %d sessions in %v (between them %s; %d to %d predicted); "+
			"%d data requests verified, the least session time left on one %v, %d with x-amz-security-token, %d with x-amz-s3session-token",
			res.requests, rate, d, res.failed, res.statuses, res.quantile(0.99).Round(time.Millisecond), len(creates), span.Round(time.Second),
			strings.Join(gaps, ", "), fewest, most, verified, minLeft, wire.dataWithSecurityToken.Load(), wire.dataWithSessions.Load())
		if res.failed != 0 || len(rejected) != 0 {
			t.Errorf("%d of %d requests failed; the stand-in refused: %v", res.failed, res.requests, rejected)
		}
		if res.requests < rate*int(d/time.Second)*9/10 {
			t.Errorf("%d requests sent, want about %d", res.requests, rate*int(d/time.Second))
		}
		if n := len(creates); n < fewest || n > most {
			t.Errorf("%d sessions in %v, the refresh schedule predicts %d to %d", n, span, fewest, most)
		}
		if minLeft < minSessionLeft {
			t.Errorf("a data request was signed with %v of its session left, want at least %v", minLeft, minSessionLeft)
		}
		if n := wire.dataWithSecurityToken.Load(); n != 0 {
			t.Errorf("%d data requests carried x-amz-security-token", n)
		}
		if all, signed := wire.data.Load(), wire.dataWithSessions.Load(); signed != all || int64(verified) != all {
			t.Errorf("%d data requests reached the stand-in, %d with x-amz-s3session-token, %d verified", all, signed, verified)
		}
		if n := wire.createsWithSecurityToken.Load(); n != int64(len(creates)) {
			t.Errorf("%d of %d CreateSessions carried the role's session token", n, len(creates))
		}
		_, metrics := get(t, "GET", "http://"+h.admin+"/metrics", nil)
		samples := promSamples(t, string(metrics))
		if got, want := samples["s3helper_express_sessions_total"], fmt.Sprint(len(creates)); got != want {
			t.Errorf("s3helper_express_sessions_total = %s, want %s", got, want)
		}
		if got := samples["s3helper_express_session_failures_total"]; got != "0" {
			t.Errorf("s3helper_express_session_failures_total = %s, want 0", got)
		}
		resp, health := get(t, "GET", "http://"+h.admin+"/healthz", nil)
		t.Logf("/healthz:\n%s", health)
		if resp.StatusCode != http.StatusOK || !regexp.MustCompile(`(?m)^session `+bucket+`: (fresh|refreshing), expires in [0-9ms]+s$`).Match(health) {
			t.Errorf("/healthz = %d, want 200 with the session's state:\n%s", resp.StatusCode, health)
		}
	})

	t.Run("-check", func(t *testing.T) {
		before := f.createCount()
		out, code := runCheckBinary(t, env, credsEnv, append(flags, "-check-key", "/videos/big.bin")...)
		t.Logf("-check:\n%s", out)
		if code != 0 || strings.Contains(out, "FAIL") {
			t.Errorf("-check exited %d:\n%s", code, out)
		}
		for _, want := range []string{"PASS  session for " + bucket + ": CreateSession (ReadOnly) at http://" + testZonalHost,
			"PASS  bucket " + bucket + ": exists in zone use1-az4", "PASS  read /videos/big.bin: HEAD s3://" + bucket + "/videos/big.bin answered 200 (with a session)"} {
			if !strings.Contains(out, want) {
				t.Errorf("-check output lacks %q", want)
			}
		}
		if n := f.createCount() - before; n != 1 {
			t.Errorf("-check made %d sessions, want 1", n)
		}
		f.checkNoSecrets(t, "-check", out, e2eExpressSecret, e2eExpressToken)
	})
	f.checkNoSecrets(t, "the log", h.logs.String(), e2eExpressSecret, e2eExpressToken)
}
