package main

// The session cache of a directory bucket under testing/synctest, against
// the S3 Express stand-in in memory: the burst, the refresh instant, the
// expiry edge, the rotation of base credentials, a refused CreateSession,
// a session S3 rejects, and 100 s of steady traffic.

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// The base credential sets the stand-in knows.
const (
	baseA, baseASecret = "ASIABASEAAAAAAAAAAAA", "base/secret+A"
	baseB, baseBSecret = "ASIABASEBBBBBBBBBBBB", "base/secret+B"
	baseToken          = "IQoJbase-role-session-token"
)

func baseCreds(id string) *Credentials {
	secret := map[string]string{baseA: baseASecret, baseB: baseBSecret}[id]
	return newCredentials(id, secret, baseToken+id, time.Time{}, sourceIMDS)
}

// newTestSessions is a session cache for the stand-in's bucket over it in
// memory: jitter u, no pause between attempts, debug logs into logs and
// aggregated metrics. Close runs at the end of the test.
func newTestSessions(t *testing.T, f *fakeExpress, base credentialGetter, u float64, logs *syncBuffer) *sessionCache {
	t.Helper()
	d, _, _ := parseDirectoryBucket(testDirectoryBucket)
	sc := &sessionCache{bucket: d, region: f.region, host: f.host, scheme: "https", transport: handlerTransport{f}, base: base,
		rand: func() float64 { return u }, pause: func(int) time.Duration { return 0 },
		log: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})), metrics: newMetrics(nil, true)}
	t.Cleanup(sc.Close)
	return sc
}

// newTestExpress is the stand-in for testDirectoryBucket in us-east-1,
// knowing base sets A and B, with sessions of life.
func newTestExpress(life time.Duration) *fakeExpress {
	f := newFakeExpress(testDirectoryBucket, "us-east-1", baseA, baseASecret, baseB, baseBSecret)
	f.life = life
	return f
}

// counted is a counter's total in m.
func counted(m *Metrics, id metricID) int64 { return m.agg.counts[id][0].Load() }

// TestSessionBurstSingleFlight: 64 requests arriving together before any
// session exists cause exactly one CreateSession, and all get its session.
func TestSessionBurstSingleFlight(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newTestExpress(0)
		gate := make(chan struct{})
		f.gate = gate
		sc := newTestSessions(t, f, &staticBase{cur: baseCreds(baseA)}, 0.5, &syncBuffer{})
		got := make([]*Credentials, 64)
		errs := make([]error, 64)
		var wg sync.WaitGroup
		for i := range got {
			wg.Go(func() { got[i], errs[i] = sc.Get(t.Context(), time.Now()) })
		}
		synctest.Wait() // all 64 wait on the one CreateSession held at the gate
		close(gate)
		wg.Wait()
		if n := f.createCount(); n != 1 {
			t.Errorf("CreateSessions = %d, want 1", n)
		}
		for i := range got {
			if errs[i] != nil || got[i] == nil || got[i] != got[0] || got[i].Source != sourceS3Express {
				t.Fatalf("request %d got %v, %v; want the one session", i, got[i], errs[i])
			}
		}
		if n := counted(sc.metrics, mExpressSessions); n != 1 {
			t.Errorf("express.sessions = %d, want 1", n)
		}
	})
}

// TestSessionRefreshInstant: with 90 s sessions and jitter 0.5 the next
// session is made exactly 65 s before the current one expires, 25 s after
// it was made, by the first request from that instant, which is still
// served the current session without waiting.
func TestSessionRefreshInstant(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		f := newTestExpress(90 * time.Second)
		sc := newTestSessions(t, f, &staticBase{cur: baseCreds(baseA)}, 0.5, &syncBuffer{})
		first, err := sc.Get(t.Context(), start)
		if err != nil || !first.Expires.Equal(start.Add(90*time.Second)) {
			t.Fatalf("first Get = %v, %v", first, err)
		}
		for round, made := range []*Credentials{first, nil, nil} {
			if made == nil {
				made, _ = sc.Get(t.Context(), time.Now())
			}
			refreshAt := made.Expires.Add(-65 * time.Second)
			time.Sleep(time.Until(refreshAt) - time.Nanosecond)
			if got, _ := sc.Get(t.Context(), time.Now()); got != made {
				t.Fatalf("round %d: Get just before the refresh instant = %v, want the current session", round, got)
			}
			synctest.Wait()
			if n := f.createCount(); n != round+1 {
				t.Fatalf("round %d: CreateSessions before the refresh instant = %d, want %d", round, n, round+1)
			}
			time.Sleep(time.Nanosecond)
			if got, _ := sc.Get(t.Context(), time.Now()); got != made {
				t.Fatalf("round %d: Get at the refresh instant = %v, want the current session (no wait)", round, got)
			}
			synctest.Wait()
			f.mu.Lock()
			n, at := len(f.creates), f.creates[len(f.creates)-1].at
			f.mu.Unlock()
			if n != round+2 || !at.Equal(refreshAt) {
				t.Fatalf("round %d: CreateSessions = %d, the last at %v; want %d at %v", round, n, at.Sub(start), round+2, refreshAt.Sub(start))
			}
		}
	})
}

// TestSessionExpiryEdge: no session is handed out with less than 5 s
// left. While CreateSession keeps failing the current session serves until
// expires−5 s and not a nanosecond longer; when the next one is slow, a
// request at expires−5 s waits for it instead.
func TestSessionExpiryEdge(t *testing.T) {
	t.Run("refresh keeps failing", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			start := time.Now()
			f := newTestExpress(90 * time.Second)
			sc := newTestSessions(t, f, &staticBase{cur: baseCreds(baseA)}, 0.5, &syncBuffer{})
			first, _ := sc.Get(t.Context(), start)
			f.set(func(f *fakeExpress) { f.refuse = "InternalError" })
			edge := first.Expires.Add(-minSessionLeft)
			for time.Now().Add(time.Second).Before(edge) {
				time.Sleep(time.Second)
				now := time.Now()
				got, err := sc.Get(t.Context(), now)
				if err != nil || got != first || got.Expires.Sub(now) < minSessionLeft {
					t.Fatalf("Get at %v = %v, %v; want the first session, with at least 5 s left", now.Sub(start), got, err)
				}
			}
			time.Sleep(time.Until(edge) - time.Nanosecond)
			if got, err := sc.Get(t.Context(), time.Now()); got != first {
				t.Fatalf("Get 1 ns before expires−5 s = %v, %v; want the first session", got, err)
			}
			time.Sleep(time.Nanosecond)
			got, err := sc.Get(t.Context(), time.Now())
			if got != nil || !errors.Is(err, errCredentialsUnavailable) || !strings.Contains(err.Error(), "500 InternalError") || !zoneCannotServe(err) {
				t.Errorf("Get at expires−5 s = %v, %v; want no session, naming CreateSession's failure, the zone's", got, err)
			}
		})
	})
	t.Run("a slow refresh is waited for", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			start := time.Now()
			f := newTestExpress(90 * time.Second)
			sc := newTestSessions(t, f, &staticBase{cur: baseCreds(baseA)}, 0.5, &syncBuffer{})
			first, _ := sc.Get(t.Context(), start)
			gate := make(chan struct{})
			f.set(func(f *fakeExpress) { f.gate = gate })
			time.Sleep(84 * time.Second) // no request since the refresh instant: this one starts it
			if got, _ := sc.Get(t.Context(), time.Now()); got != first {
				t.Fatalf("Get at 84 s = %v, want the first session", got)
			}
			time.Sleep(time.Second) // expires−5 s: the first session is out
			done := make(chan *Credentials, 1)
			go func() { got, _ := sc.Get(t.Context(), time.Now()); done <- got }()
			synctest.Wait()
			select {
			case got := <-done:
				t.Fatalf("Get at expires−5 s returned %v without waiting for the next session", got)
			default:
			}
			time.Sleep(time.Second)
			close(gate)
			if got := <-done; got == nil || got == first || !got.Expires.Equal(start.Add(86*time.Second+90*time.Second)) {
				t.Errorf("Get at expires−5 s = %v, want the session made at 86 s", got)
			}
		})
	})
}

// TestSessionRotation: new base credentials mean a new session, signed
// with them; requests meanwhile keep the current session without waiting,
// and the session of the old set is dropped once the new one is in.
func TestSessionRotation(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newTestExpress(0)
		base := &staticBase{cur: baseCreds(baseA)}
		sc := newTestSessions(t, f, base, 0.5, &syncBuffer{})
		first, _ := sc.Get(t.Context(), time.Now())
		time.Sleep(10 * time.Second)
		gate := make(chan struct{})
		f.set(func(f *fakeExpress) { f.gate = gate })
		base.rotate(baseCreds(baseB))
		if got, err := sc.Get(t.Context(), time.Now()); got != first {
			t.Fatalf("Get right after the rotation = %v, %v; want the current session, at once", got, err)
		}
		close(gate)
		synctest.Wait()
		second, _ := sc.Get(t.Context(), time.Now())
		again, _ := sc.Get(t.Context(), time.Now())
		f.mu.Lock()
		creates := append([]fakeCreate(nil), f.creates...)
		f.mu.Unlock()
		if second == first || again != second || len(creates) != 2 || creates[0].baseID != baseA || creates[1].baseID != baseB {
			t.Errorf("after the rotation: %v then %v; CreateSessions %+v; want one new session, made with %s", second, again, creates, baseB)
		}
		if cur := sc.current.Load(); cur.base.AccessKeyID != baseB {
			t.Errorf("the cache holds a session of %s, want only %s's", cur.base.AccessKeyID, baseB)
		}
	})
}

// TestSessionRefusedCreateSession: a 403 names the permission to add, on
// the bucket's ARN; requests inside the backoff send nothing more; the
// retries back off (0.75 s, then 1.5 s with jitter 0.5); failures are
// counted and logged without a secret; the first success ends it.
func TestSessionRefusedCreateSession(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newTestExpress(0)
		f.refuse = "AccessDenied"
		logs := &syncBuffer{}
		sc := newTestSessions(t, f, &staticBase{cur: baseCreds(baseA)}, 0.5, logs)
		_, refusal := sc.Get(t.Context(), time.Now())
		var cerr *createSessionError
		if !errors.Is(refusal, errCredentialsUnavailable) || !errors.As(refusal, &cerr) || !cerr.accessDenied() ||
			!strings.Contains(refusal.Error(), "S3 answered 403 AccessDenied") ||
			!strings.Contains(refusal.Error(), "the role needs s3express:CreateSession on arn:aws:s3express:us-east-1:ACCOUNT:bucket/"+testDirectoryBucket) {
			t.Fatalf("Get = %v; want a refusal naming s3express:CreateSession on the bucket's ARN", refusal)
		}
		if zoneCannotServe(refusal) {
			t.Errorf("zoneCannotServe(%v) = true, want false: S3 answered, and refused", refusal)
		}
		for range 100 {
			sc.Get(t.Context(), time.Now())
		}
		if n := f.createCount(); n != 1 {
			t.Fatalf("CreateSessions after 100 requests inside the backoff = %d, want 1", n)
		}
		for i, pause := range []time.Duration{750 * time.Millisecond, 1500 * time.Millisecond} {
			time.Sleep(pause - time.Nanosecond)
			sc.Get(t.Context(), time.Now())
			if n := f.createCount(); n != i+1 {
				t.Fatalf("CreateSessions 1 ns before retry %d = %d, want %d", i+1, n, i+1)
			}
			time.Sleep(time.Nanosecond)
			sc.Get(t.Context(), time.Now())
			if n := f.createCount(); n != i+2 {
				t.Fatalf("CreateSessions at retry %d = %d, want %d", i+1, n, i+2)
			}
		}
		f.set(func(f *fakeExpress) { f.refuse = "" })
		time.Sleep(3 * time.Second)
		session, err := sc.Get(t.Context(), time.Now())
		if err != nil || counted(sc.metrics, mExpressSessionFailures) != 3 || counted(sc.metrics, mExpressSessions) != 1 {
			t.Errorf("after the fix: %v, %v; failures %d, sessions %d; want a session after 3 failures",
				session, err, counted(sc.metrics, mExpressSessionFailures), counted(sc.metrics, mExpressSessions))
		}
		text := logs.String()
		if !strings.Contains(text, "CreateSession failed") || !strings.Contains(text, "s3express:CreateSession") || !strings.Contains(text, "session made") {
			t.Errorf("the log does not tell the story:\n%s", text)
		}
		for _, secret := range []string{baseASecret, baseToken, session.SecretAccessKey, session.SessionToken} {
			if strings.Contains(text, secret) || strings.Contains(refusal.Error(), secret) || strings.Contains(fmt.Sprint(session), secret) {
				t.Errorf("a secret reached the log, an error or the credentials' text")
			}
		}
	})
}

// TestSessionRejectedByS3: when S3 rejects a session, however many
// requests report it at once, one CreateSession replaces it and the dead
// session is never handed out again; a second rejection within 10 s makes
// none (errSameCredentials), one after 10 s does.
func TestSessionRejectedByS3(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newTestExpress(0)
		sc := newTestSessions(t, f, &staticBase{cur: baseCreds(baseA)}, 0.5, &syncBuffer{})
		dead, _ := sc.Get(t.Context(), time.Now())
		got := make([]*Credentials, 10)
		var wg sync.WaitGroup
		for i := range got {
			wg.Go(func() { got[i], _ = sc.Refresh(t.Context(), dead) })
		}
		wg.Wait()
		for i := range got {
			if got[i] == nil || got[i] == dead || got[i] != got[0] {
				t.Fatalf("Refresh %d = %v, want the one new session", i, got[i])
			}
		}
		if cur, _ := sc.Get(t.Context(), time.Now()); cur != got[0] || f.createCount() != 2 {
			t.Fatalf("Get after the refresh = %v after %d CreateSessions; want the new session after 2", cur, f.createCount())
		}
		if again, err := sc.Refresh(t.Context(), got[0]); again != nil || !errors.Is(err, errSameCredentials) || f.createCount() != 2 {
			t.Errorf("a second rejection within 10 s = %v, %v after %d CreateSessions; want errSameCredentials and none", again, err, f.createCount())
		}
		time.Sleep(minForcedRefreshInterval)
		if third, err := sc.Refresh(t.Context(), got[0]); err != nil || third == got[0] || f.createCount() != 3 {
			t.Errorf("a rejection 10 s later = %v, %v after %d CreateSessions; want a third session", third, err, f.createCount())
		}
	})
}

// TestSessionBaseCredentialsRefused: when S3 refuses the base set itself
// (revoked early), the base cache is asked for another once and the
// session is made with that.
func TestSessionBaseCredentialsRefused(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newTestExpress(0)
		f.baseSecrets = map[string]string{baseB: baseBSecret} // A was revoked
		base := &staticBase{cur: baseCreds(baseA), next: baseCreds(baseB)}
		sc := newTestSessions(t, f, base, 0.5, &syncBuffer{})
		session, err := sc.Get(t.Context(), time.Now())
		f.mu.Lock()
		defer f.mu.Unlock()
		if err != nil || base.refreshes != 1 || len(f.creates) != 2 || f.creates[1].baseID != baseB || sc.current.Load().base.AccessKeyID != baseB {
			t.Errorf("Get = %v, %v; base refreshes %d, CreateSessions %+v; want one with %s after a refresh", session, err, base.refreshes, f.creates, baseB)
		}
	})
}

// TestSessionCloseWaits: Close waits for the CreateSession in flight; after
// it no CreateSession starts.
func TestSessionCloseWaits(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newTestExpress(90 * time.Second)
		gate := make(chan struct{})
		f.gate = gate
		sc := newTestSessions(t, f, &staticBase{cur: baseCreds(baseA)}, 0.5, &syncBuffer{})
		got := make(chan *Credentials, 1)
		go func() { creds, _ := sc.Get(t.Context(), time.Now()); got <- creds }()
		synctest.Wait()
		closed := make(chan struct{})
		go func() { sc.Close(); close(closed) }()
		synctest.Wait()
		select {
		case <-closed:
			t.Fatal("Close returned while a CreateSession was in flight")
		default:
		}
		close(gate)
		<-closed
		if creds := <-got; creds == nil {
			t.Error("the waiting request got no session")
		}
		time.Sleep(90 * time.Second)
		if _, err := sc.Get(t.Context(), time.Now()); !errors.Is(err, errSessionsClosed) || f.createCount() != 1 {
			t.Errorf("Get after Close = %v after %d CreateSessions; want errSessionsClosed and no more", err, f.createCount())
		}
	})
}

// TestParseCreateSession: an answer is used only when complete; errors
// name fields, never values.
func TestParseCreateSession(t *testing.T) {
	now := time.Date(2026, 11, 27, 4, 0, 0, 0, time.UTC)
	doc := func(akid, secret, token, expiration string) []byte {
		return fmt.Appendf(nil, `<CreateSessionResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Credentials><SessionToken>%s</SessionToken><SecretAccessKey>%s</SecretAccessKey><AccessKeyId>%s</AccessKeyId><Expiration>%s</Expiration></Credentials></CreateSessionResult>`,
			token, secret, akid, expiration)
	}
	tests := []struct {
		name string
		body []byte
		want string
	}{
		{"complete", doc("ASIAS", "sekrit", "tokn", "2026-11-27T04:05:00Z"), ""},
		{"no secret", doc("ASIAS", "", "tokn", "2026-11-27T04:05:00Z"), "CreateSession answer: credentials document lacks SecretAccessKey"},
		{"nothing", []byte(`<CreateSessionResult/>`), "lacks AccessKeyId, SecretAccessKey, Token, Expiration"},
		{"bad expiration", doc("ASIAS", "sekrit", "tokn", "tomorrow"), `Expiration "tomorrow" is not an RFC 3339 time`},
		{"expired", doc("ASIAS", "sekrit", "tokn", "2026-11-27T03:59:00Z"), "credentials expired at 2026-11-27T03:59:00Z"},
		{"about to expire", doc("ASIAS", "sekrit", "tokn", "2026-11-27T04:00:05Z"), "expires at 2026-11-27T04:00:05Z, in 5s: is this host's clock ahead"},
		{"not XML", []byte("<html>proxy error</html>"), "is not a CreateSessionResult document"},
	}
	for _, tt := range tests {
		creds, err := parseCreateSession(tt.body, now)
		if (err == nil) != (tt.want == "") || err != nil && (!strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "sekrit") || strings.Contains(err.Error(), "tokn")) {
			t.Errorf("%s: parseCreateSession = %v, %v; want %q", tt.name, creds, err, tt.want)
		}
		if err == nil && (creds.Source != sourceS3Express || creds.SessionToken != "tokn") {
			t.Errorf("%s: %v", tt.name, creds)
		}
	}
}

// TestSessionsUnderLoad: the target without the network, 20 Range
// GETs a second for 100 s with 90 s sessions and random jitter, each
// signed with the session Get hands out and checked by the stand-in:
// nothing fails, 2 to 6 sessions in all, none signed with under 5 s left
// (in fact never under the refresh lead), no X-Amz-Security-Token.
func TestSessionsUnderLoad(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newTestExpress(90 * time.Second)
		body := make([]byte, 1<<20)
		rng := rand.New(rand.NewPCG(26, 26))
		for i := range body {
			body[i] = byte(rng.Uint32())
		}
		f.put("videos/seg.mp4", body)
		sc := newTestSessions(t, f, &staticBase{cur: baseCreds(baseA)}, 0, &syncBuffer{})
		sc.rand = rand.New(rand.NewPCG(1, 26)).Float64 // called under the cache's lock only
		signer := &expressSigner{Signer: Signer{Region: "us-east-1", Service: serviceS3Express, SessionTokenHeader: headerS3SessionToken}}
		transport := handlerTransport{f}
		failed := 0
		for range 2000 {
			now := time.Now()
			creds, err := sc.Get(t.Context(), now)
			if err != nil {
				failed++
				continue
			}
			from := rng.IntN(len(body) - 1024)
			h := http.Header{"Range": {fmt.Sprintf("bytes=%d-%d", from, from+1023)}}
			signer.Sign(h, &signingRequest{method: http.MethodGet, host: f.host, uri: "/videos/seg.mp4"}, creds, now)
			req := &http.Request{Method: http.MethodGet, URL: &url.URL{Scheme: "https", Host: f.host, Opaque: "/videos/seg.mp4"}, Host: f.host, Header: h}
			resp, err := transport.RoundTrip(req.WithContext(t.Context()))
			if err != nil || resp.StatusCode != http.StatusPartialContent || resp.ContentLength != 1024 {
				failed++
			}
			time.Sleep(50 * time.Millisecond)
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		t.Logf("2000 requests over 100 s: %d sessions, the least session time left on a request %v", len(f.creates), f.minLeft)
		if failed != 0 || len(f.rejected) != 0 || f.dataRequests != 2000 {
			t.Errorf("%d failed, %d verified; rejected: %v", failed, f.dataRequests, f.rejected)
		}
		if n := len(f.creates); n < 2 || n > 6 {
			t.Errorf("%d sessions in 100 s, want 2 to 6", n)
		}
		if f.minLeft < sessionRefreshLead-time.Second {
			t.Errorf("a request was signed with %v of its session left, want at least the refresh lead", f.minLeft)
		}
	})
}

// unreachable is a transport to a zone that cannot be reached.
type unreachable struct{}

func (unreachable) RoundTrip(*http.Request) (*http.Response, error) {
	return nil, errors.New("dial tcp 10.0.0.5:443: connect: connection refused")
}

// TestSessionZoneUnreachable: CreateSession that cannot reach the zonal
// endpoint is tried three times, then fails as the zone's failure, not a
// refusal.
func TestSessionZoneUnreachable(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sc := newTestSessions(t, newTestExpress(0), &staticBase{cur: baseCreds(baseA)}, 0.5, &syncBuffer{})
		sc.transport = unreachable{}
		_, err := sc.Get(t.Context(), time.Now())
		if !errors.Is(err, errCredentialsUnavailable) || !zoneCannotServe(err) || !strings.Contains(err.Error(), "connection refused") {
			t.Errorf("Get = %v; want the zone's failure, named", err)
		}
	})
}

// TestSessionStatusOnHealthz: /healthz has one line per directory bucket's
// session cache, in each state (none and why, fresh, refreshing and a
// failing refresh), and never a key's secret or a token.
func TestSessionStatusOnHealthz(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newTestExpress(90 * time.Second)
		f.put("videos/seg.mp4", []byte("segment"))
		p := newExpressProxy(t, f)
		base := &credentialCache{provider: staticProvider{baseCreds(baseA)}, log: slog.New(slog.DiscardHandler)}
		if _, err := base.Get(t.Context(), time.Now()); err != nil {
			t.Fatal(err)
		}
		admin := adminHandler(base, nil, "environment", false, p)
		healthz := func() string {
			t.Helper()
			w := httptest.NewRecorder()
			admin.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/healthz", nil))
			if w.Code != http.StatusOK {
				t.Errorf("/healthz = %d, want 200:\n%s", w.Code, w.Body)
			}
			return w.Body.String()
		}
		get := func() {
			t.Helper()
			if w := serveOne(p, httptest.NewRequest(http.MethodGet, "/videos/seg.mp4", nil)); w.Code != http.StatusOK {
				t.Fatalf("GET = %d", w.Code)
			}
		}
		const accessDenied = "CreateSession for " + testDirectoryBucket + ": S3 answered 403 AccessDenied: refused by the test; the role needs s3express:CreateSession on arn:aws:s3express:us-east-1:ACCOUNT:bucket/" + testDirectoryBucket
		line := "session " + testDirectoryBucket + ": "
		gate, first := make(chan struct{}), make(chan int)
		var seen []string
		for _, step := range []struct {
			name, want string
			before     func()
		}{
			{"before any request", line + "none: no session made yet\n", nil},
			{"while the first CreateSession is held", line + "none: CreateSession in flight\n", func() {
				f.set(func(f *fakeExpress) { f.gate = gate })
				go func() { first <- serveOne(p, httptest.NewRequest(http.MethodGet, "/videos/seg.mp4", nil)).Code }()
				synctest.Wait()
			}},
			{"a new session", line + "fresh, expires in 1m30s\n", func() {
				f.set(func(f *fakeExpress) { f.gate = nil })
				close(gate)
				if code := <-first; code != http.StatusOK {
					t.Errorf("the first GET = %d", code)
				}
			}},
			{"past its refresh moment", line + "refreshing, expires in 59s\n", func() { time.Sleep(31 * time.Second) }},
			{"the refresh refused", line + "refreshing, expires in 59s; CreateSession failing (1 in a row): " + accessDenied, func() {
				f.set(func(f *fakeExpress) { f.refuse = "AccessDenied" })
				get()
				synctest.Wait()
			}},
			{"the session ran out", line + "none: " + accessDenied, func() { time.Sleep(55 * time.Second) }},
			{"made again, then idle past its end", line + "none: the last session ran out or S3 rejected it; the next request makes one\n", func() {
				f.set(func(f *fakeExpress) { f.refuse = "" })
				time.Sleep(maxSessionBackoff)
				get()
				if got := healthz(); !strings.Contains(got, line+"fresh, expires in 1m30s\n") {
					t.Errorf("after a session was made again:\n%s", got)
				}
				time.Sleep(90 * time.Second)
			}},
		} {
			if step.before != nil {
				step.before()
			}
			got := healthz()
			seen = append(seen, got)
			if !strings.Contains(got, step.want) || strings.Count(got, "session "+testDirectoryBucket) != 1 {
				t.Errorf("%s: /healthz lacks %q (once):\n%s", step.name, step.want, got)
			}
		}
		f.checkNoSecrets(t, "/healthz", strings.Join(seen, ""), baseASecret, baseToken+baseA)
	})
}

// TestSessionStatesOncePerBucket: routes to one directory bucket share its
// session cache and /healthz lists it once; a directory bucket replica has
// its own line; general purpose buckets have none.
func TestSessionStatesOncePerBucket(t *testing.T) {
	p := proxyFor(t, testExpressConfig(t, "-bucket", testDirectoryBucket, "-route", "/hot/="+testDirectoryBucket+"/vod/",
		"-route", "/ads/=media", "-replica", "media=media--usw2-az1--x-s3@us-west-2"))
	var got []string
	for _, st := range sessionStates(p.routes, time.Now()) {
		got = append(got, st.String())
	}
	want := []string{"session " + testDirectoryBucket + ": none: no session made yet", "session media--usw2-az1--x-s3: none: no session made yet"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("sessionStates = %q, want %q", got, want)
	}
}
