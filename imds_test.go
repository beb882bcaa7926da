package main

// The IMDSv2 client against an in-process IMDS: tokens, 401s, validation,
// the hop-limit and 403 explanations, and the credential type's redaction.

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestIMDSRetrieveReusesToken(t *testing.T) {
	expires := time.Now().Add(time.Hour).Truncate(time.Second)
	f, srv := newFakeIMDS(t, expires)
	c := &imdsClient{endpoint: srv.URL}
	for range 3 {
		creds, err := c.Retrieve(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if creds.AccessKeyID != "ASIAFIRST" || creds.SecretAccessKey != testSecret || creds.SessionToken != testToken ||
			!creds.Expires.Equal(expires) || creds.Source != sourceIMDS {
			t.Fatalf("Retrieve = %v, want ASIAFIRST expiring %v", creds, expires)
		}
	}
	if puts, gets := f.counts(); puts != 1 || gets != 3 {
		t.Errorf("token PUTs = %d, credential GETs = %d; want 1 and 3 (token reused)", puts, gets)
	}
}

func TestIMDSTokenExpiryAndTTL(t *testing.T) {
	now := time.Now()
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	f, srv := newFakeIMDS(t, now.Add(24*time.Hour))
	f.now = clock
	c := &imdsClient{endpoint: srv.URL, tokenTTL: 100 * time.Second, now: clock}
	if _, err := c.Retrieve(t.Context()); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	now = now.Add(89 * time.Second) // inside the TTL less the 10% early renewal
	mu.Unlock()
	if _, err := c.Retrieve(t.Context()); err != nil {
		t.Fatal(err)
	}
	if puts, _ := f.counts(); puts != 1 {
		t.Fatalf("token PUTs = %d before expiry, want 1", puts)
	}
	mu.Lock()
	now = now.Add(2 * time.Second) // past TTL-10%: renew before IMDS would refuse it
	mu.Unlock()
	if _, err := c.Retrieve(t.Context()); err != nil {
		t.Fatal(err)
	}
	if puts, _ := f.counts(); puts != 2 {
		t.Errorf("token PUTs = %d after expiry, want 2", puts)
	}
}

func TestIMDS401FetchesNewTokenAndRetriesOnce(t *testing.T) {
	f, srv := newFakeIMDS(t, time.Now().Add(time.Hour))
	c := &imdsClient{endpoint: srv.URL}
	if _, err := c.Retrieve(t.Context()); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	clear(f.tokens) // IMDS restarted: every token is unknown
	f.mu.Unlock()
	if _, err := c.Retrieve(t.Context()); err != nil {
		t.Fatalf("Retrieve after token loss: %v", err)
	}
	if puts, _ := f.counts(); puts != 2 {
		t.Errorf("token PUTs = %d, want 2 (one new token after the 401)", puts)
	}
	// A 401 storm: the retry is made once, then the error is returned.
	f.mu.Lock()
	f.fail = []int{401, 401, 401}
	f.mu.Unlock()
	_, err := c.Retrieve(t.Context())
	var se *imdsStatusError
	if !errors.As(err, &se) || se.status != 401 {
		t.Errorf("Retrieve in a 401 storm = %v, want an IMDS 401 error", err)
	}
}

func TestIMDSFixedRoleAndRegion(t *testing.T) {
	f, srv := newFakeIMDS(t, time.Now().Add(time.Hour))
	f.role = "other-role"
	c := &imdsClient{endpoint: srv.URL, role: "other-role"}
	if _, err := c.Retrieve(t.Context()); err != nil {
		t.Fatal(err)
	}
	wrong := &imdsClient{endpoint: srv.URL, role: "missing-role"}
	if _, err := wrong.Retrieve(t.Context()); err == nil || !strings.Contains(err.Error(), `"missing-role"`) {
		t.Errorf("Retrieve for an unknown role = %v, want an error naming it", err)
	}
	region, err := c.Region(t.Context())
	if err != nil || region != "eu-west-1" {
		t.Errorf("Region = %q, %v; want eu-west-1", region, err)
	}
}

func TestIMDSValidation(t *testing.T) {
	now := time.Now()
	valid := map[string]string{"Code": "Success", "AccessKeyId": "ASIAX", "SecretAccessKey": testSecret,
		"Token": testToken, "Expiration": now.Add(time.Hour).UTC().Format(time.RFC3339)}
	with := func(k, v string) []byte {
		m := map[string]string{}
		for kk, vv := range valid {
			m[kk] = vv
		}
		if v == "" {
			delete(m, k)
		} else {
			m[k] = v
		}
		b, _ := json.Marshal(m)
		return b
	}
	tests := []struct {
		name string
		body []byte
		want string
	}{
		{"code not Success", with("Code", "Failure"), `Code "Failure"`},
		{"missing key id", with("AccessKeyId", ""), "lacks AccessKeyId"},
		{"missing secret", with("SecretAccessKey", ""), "lacks SecretAccessKey"},
		{"missing token", with("Token", ""), "lacks Token"},
		{"expiration past", with("Expiration", now.Add(-time.Minute).UTC().Format(time.RFC3339)), "expired at"},
		{"expiration garbage", with("Expiration", "tomorrow"), `Expiration "tomorrow"`},
		{"not JSON", []byte("<html>503 Service Unavailable</html>"), "not JSON"},
		{"oversized", bytes.Repeat([]byte("x"), maxIMDSBodyBytes+1), "exceeds"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, srv := newFakeIMDS(t, now.Add(time.Hour))
			f.mu.Lock()
			f.body = tt.body
			f.mu.Unlock()
			creds, err := (&imdsClient{endpoint: srv.URL}).Retrieve(t.Context())
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Retrieve = %v, %v; want an error containing %q", creds, err, tt.want)
			}
			if strings.Contains(err.Error(), testSecret) || strings.Contains(err.Error(), testToken) {
				t.Errorf("error %q leaks a secret", err)
			}
		})
	}
}

func TestIMDSTokenTimeoutNamesHopLimit(t *testing.T) {
	f, srv := newFakeIMDS(t, time.Now().Add(time.Hour))
	f.hangPUT = true
	client := newIMDSHTTPClient()
	client.Transport.(*http.Transport).ResponseHeaderTimeout = 50 * time.Millisecond
	_, err := (&imdsClient{endpoint: srv.URL, client: client}).Retrieve(t.Context())
	if !errors.Is(err, errHopLimit) || !strings.Contains(err.Error(), "http-put-response-hop-limit") {
		t.Errorf("Retrieve with an unanswered token PUT = %v, want the hop-limit explanation", err)
	}
}

// TestIMDSForbiddenNamesCauses: a 403 from IMDS, here because a proxy in
// between added X-Forwarded-For, is reported with its likely causes and
// fixes; so is an injected 403 on the credentials GET.
func TestIMDSForbiddenNamesCauses(t *testing.T) {
	f, srv := newFakeIMDS(t, time.Now().Add(time.Hour))
	target, _ := url.Parse(srv.URL)
	sidecar := httptest.NewServer(httputil.NewSingleHostReverseProxy(target)) // adds X-Forwarded-For
	t.Cleanup(sidecar.Close)
	_, err := (&imdsClient{endpoint: sidecar.URL}).Retrieve(t.Context())
	for _, want := range []string{"403", "X-Forwarded-For", "--http-endpoint enabled"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Retrieve through a forwarding proxy = %v, want it to name %q", err, want)
		}
	}
	f.mu.Lock()
	f.fail = []int{http.StatusForbidden}
	f.mu.Unlock()
	if _, err := (&imdsClient{endpoint: srv.URL}).Retrieve(t.Context()); err == nil || !strings.Contains(err.Error(), "metadata endpoint is turned off") {
		t.Errorf("Retrieve after a 403 = %v, want the causes named", err)
	}
}

// TestCacheWithIMDSEmulator runs the cache over the IMDS client against
// the emulator: rotation is picked up by the refresher.
func TestCacheWithIMDSEmulator(t *testing.T) {
	f, srv := newFakeIMDS(t, time.Now().Add(2*time.Second))
	logs := &syncBuffer{}
	c := &credentialCache{provider: &imdsClient{endpoint: srv.URL}, refreshBefore: 1500 * time.Millisecond, log: slog.New(slog.NewTextHandler(logs, nil))}
	c.Start(t.Context())
	defer c.Close()
	creds, err := c.Get(t.Context(), time.Now())
	if err != nil || creds.AccessKeyID != "ASIAFIRST" {
		t.Fatalf("Get = %v, %v", creds, err)
	}
	f.setCredentials("ASIASECOND", testSecret, testToken, time.Now().Add(time.Hour))
	if !logs.waitFor(`msg="credentials refreshed" source=imds access_key_id=ASIASECOND`) {
		t.Fatalf("the refresher did not pick up the rotated set:\n%s", logs)
	}
	if creds, err := c.Get(t.Context(), time.Now()); err != nil || creds.AccessKeyID != "ASIASECOND" {
		t.Errorf("Get after the refresh = %v, %v", creds, err)
	}
}
